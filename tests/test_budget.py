"""Budgets per task, issue and repository, and the queued task's place in line: the decisions as pure functions,
the meter over each CLI's own usage lines, and end to end through `serve` on the fake forge."""
from __future__ import annotations

import json
import re
import time

import pytest
import requests
from helpers import wait_for

from forge_bridge.agents.budget import Ledger, RunMeter, Spend, describe, run_over_budget, start_refused
from forge_bridge.config import AgentConfig, BudgetConfig
from forge_bridge.store.line import Line, ordinal
from forge_bridge.models import IssueRef, RepoRef, Task, TaskAction, TaskState
from forge_bridge.work.report import STATUS_MARKER

ISSUE = IssueRef(RepoRef("forge.example", "alice", "widgets"), 7)


def test_a_run_over_its_task_budget_is_named_with_the_spend_and_the_limit():
    limits = BudgetConfig(task_usd=0.5, task_tokens=10_000)
    assert run_over_budget(limits, 0.5, 10_000) == ""
    assert run_over_budget(limits, 0.52, 0) == "budget: $0.52 of $0.50 for this task"
    assert run_over_budget(limits, 0.1, 12_345) == "budget: 12,345 of 10,000 tokens for this task"
    assert run_over_budget(BudgetConfig(), 1e6, 10**9) == ""   # 0: no limit


def test_a_task_may_not_start_once_its_issue_or_repository_has_spent_its_budget():
    spent = Spend(issue_usd=0.6, issue_limit=0.5, issue_limit_own=False, repo_today_usd=0.6, repo_limit=10)
    assert start_refused(spent, "alice/widgets").startswith("budget: $0.60 of $0.50 spent on this issue")
    today = Spend(issue_usd=0.6, issue_limit=0, issue_limit_own=True, repo_today_usd=3, repo_limit=3)
    assert start_refused(today, "alice/widgets").startswith("budget: $3.00 of $3.00 spent on alice/widgets today")
    assert start_refused(Spend(0.6, 1, False, 2.9, 3), "alice/widgets") == ""
    assert describe(spent, "alice/widgets") == ("Spent on this issue: $0.60 (limit $0.50). Spent on alice/widgets "
                                                "today (UTC): $0.60 (limit $10.00 a day).")


@pytest.mark.parametrize("preset, lines, over", [
    # Claude Code: tokens from each assistant message while it runs; its final result names cost and tokens.
    ("claude", [json.dumps({"type": "assistant", "message": {"usage": {"input_tokens": 4000, "output_tokens": 2000}}}),
                json.dumps({"type": "assistant", "message": {"usage": {"input_tokens": 3000, "output_tokens": 2000}}})],
     "budget: 11,000 of 10,000 tokens for this task"),
    ("codex", [json.dumps({"type": "turn.completed", "usage": {"input_tokens": 9000, "output_tokens": 1500}})],
     "budget: 10,500 of 10,000 tokens for this task"),
    ("opencode", [json.dumps({"type": "step_finish", "part": {"cost": 0.3, "tokens": {"input": 10, "output": 5}}}),
                  json.dumps({"type": "step_finish", "part": {"cost": 0.25, "tokens": {"input": 10, "output": 5}}})],
     "budget: $0.55 of $0.50 for this task"),
    ("aider", ["Tokens: 2.1k sent, 300 received. Cost: $0.31 message, $0.31 session.",
               "Tokens: 2.5k sent, 200 received. Cost: $0.29 message, $0.60 session."],
     "budget: $0.60 of $0.50 for this task"),
])
def test_the_meter_reads_each_clis_own_usage_lines(preset, lines, over):
    meter = RunMeter(AgentConfig(preset=preset), BudgetConfig(task_usd=0.5, task_tokens=10_000))
    assert meter(lines[:-1]) == ""
    assert meter(["some chatter", *lines[-1:]]) == over


def test_the_meter_counts_only_this_run_of_a_resumed_session_and_what_the_task_spent_before():
    agent = AgentConfig(preset="codex")   # Codex reports the thread's running token total
    meter = RunMeter(agent, BudgetConfig(task_tokens=10_000), task_tokens=2_000, session_totals={"tokens": 50_000})
    line = json.dumps({"type": "turn.completed", "usage": {"input_tokens": 57_000, "output_tokens": 0}})
    assert meter([line]) == ""   # 7,000 this run + 2,000 before
    line = json.dumps({"type": "turn.completed", "usage": {"input_tokens": 59_000, "output_tokens": 0}})
    assert meter([line]) == "budget: 11,000 of 10,000 tokens for this task"
    command = AgentConfig(preset="command", argv=("x",), cost="json:spent")
    assert RunMeter(command, BudgetConfig(task_usd=1))([json.dumps({"spent": 1.5})]).startswith("budget: $1.50")


def test_the_ledger_adds_up_per_issue_and_per_repository_day_and_keeps_an_issues_own_limit(conn):
    ledger, noon = Ledger(conn), 1_780_000_000.0
    ledger.add(ISSUE, 0.25, now=noon)
    ledger.add(IssueRef(ISSUE.repo, 8), 0.5, now=noon)
    ledger.add(ISSUE, 0.25, now=noon + 86_400)   # the next UTC day
    spend = ledger.spend(BudgetConfig(issue_usd=2, repo_daily_usd=3), ISSUE, now=noon)
    assert (spend.issue_usd, spend.issue_limit, spend.issue_limit_own, spend.repo_today_usd) == (0.5, 2, False, 0.75)
    ledger.set_issue_limit(ISSUE, 0.0)
    assert ledger.spend(BudgetConfig(issue_usd=2), ISSUE).issue_limit == 0 and ledger.spend(
        BudgetConfig(issue_usd=2), ISSUE).issue_limit_own
    assert ledger.repos_today(now=noon) == {"forge.example/alice/widgets": 0.75}


def _task(task_id: str, state: TaskState, issue: str = "forge.example/alice/a#1") -> Task:
    return Task(id=task_id, issue=issue, forge="f", action=TaskAction.START, message="", requested_by="alice",
                state=state)


def test_where_a_queued_task_stands():
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st"]
    tasks = {t.id: t for t in [_task("run", TaskState.RUNNING), _task("b", TaskState.QUEUED),
                               _task("c", TaskState.QUEUED), _task("next", TaskState.QUEUED)]}
    line = Line(["run", "b", "c"], tasks, slots_busy=1, slots=1)
    assert line.stands(tasks["b"], ["b"]) == "1st in line · 1 of 1 agent slots busy"
    assert line.stands(tasks["c"], ["c"]) == "2nd in line · 1 of 1 agent slots busy"
    assert line.stands(tasks["next"], ["run", "next"]) == "waits for the running task of this issue · 1 of 1 agent " \
                                                          "slots busy"
    assert line.stands(tasks["next"], ["b", "next"]).startswith("waits for an earlier task of this issue")
    assert line.stands(tasks["run"], ["run"]) == ""
    for_host = Line(["run"], tasks, slots_busy=1, slots=2, hosts={"b": "host-a"})
    assert for_host.stands(tasks["b"], ["b"]) == ("waits for a free agent on host-a, which keeps its agent session · "
                                                  "1 of 2 agent slots busy")


# end to end --------------------------------------------------------------------------------------------------

def _status(forge, repo, issue) -> str:
    found = [body for body in forge.comments_of(repo, issue) if STATUS_MARKER in body]
    return found[0] if found else ""


def _task_records(bridge) -> list[dict]:
    return [json.loads(bridge.redis.get(key)) for key in bridge.redis.keys("fb:task:*")]


def test_a_run_passing_its_budget_is_stopped_and_the_issue_budget_then_holds_further_tasks(github, start_bridge):
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "Spend some")
    bridge = start_bridge([github], agent_args=["--ticks", "60", "--cost-per-tick", "0.1"],
                          agent={"cost": '"json:cost"', "tokens": '"json:tokens"'},
                          tables="\n[budget]\ntask_usd = 0.5\nissue_usd = 0.5\n")
    github.add_label(repo, issue, "kugetsu:todo")
    failed = wait_for(lambda: [t for t in _task_records(bridge) if t["state"] == "failed"], timeout=60,
                      what="the task to fail on its budget")
    [task] = failed
    # Read every half second, the line that passed the limit (0.60) or the next (0.70) stops it.
    assert re.fullmatch(r"budget: \$0\.[67]0 of \$0\.50 for this task", task["outcome"]), task["outcome"]
    log = next(bridge.data_dir.rglob(f"{task['id']}.log")).read_text()
    ticks = [int(n) for n in re.findall(r"^tick (\d+)$", log, re.M)]
    assert 5 in ticks and max(ticks) <= 5 + 4   # stopped within a second (ticks come every 0.3 s)
    assert f"agent stopped ({task['outcome']})" in log
    wait_for(lambda: task["outcome"] in _status(github, repo, issue), timeout=30,
             what="the outcome in the status comment")
    spent = f"${task['cost_usd']:.2f}"
    # Now the issue has spent its budget: the next task fails at once, saying so.
    github.comment(repo, issue, "/kugetsu start again")
    refused = wait_for(lambda: [t for t in _task_records(bridge) if t["outcome"].startswith(
        f"budget: {spent} of $0.50 spent on this issue")], timeout=60, what="the second task to be refused")
    assert refused[0]["started_at"] and not next(bridge.data_dir.rglob(f"{refused[0]['id']}.log"), None)
    metrics = requests.get(f"{bridge.url}/metrics", timeout=10).text
    found = re.search(r'forge_bridge_agent_cost_usd_total\{forge="github",preset="command",repository="[^"]+/alice/'
                      r'widgets"\} ([0-9.]+)', metrics)
    assert found and float(found[1]) == pytest.approx(task["cost_usd"]), metrics
    assert "forge_bridge_agent_tokens_total" in metrics
    page = requests.get(bridge.url, timeout=10).text
    assert f"alice/widgets: {spent}" in page


def test_budget_command_shows_spend_and_only_an_admin_sets_the_issues_limit(github, start_bridge):
    repo = github.create_repo("alice", "widgets")
    repo.permissions["bob"] = "write"
    issue = github.create_issue(repo, "Spend some")
    start_bridge([github], tables="\n[budget]\nissue_usd = 2\nrepo_daily_usd = 10\n")
    github.comment(repo, issue, "/kugetsu budget", author="bob")
    answer = wait_for(lambda: [c for c in github.comments_of(repo, issue) if c.startswith("Spent on this issue")],
                      timeout=30, what="the budget answer")
    assert answer == ["Spent on this issue: $0.00 (limit $2.00). Spent on alice/widgets today (UTC): $0.00 "
                      "(limit $10.00 a day)."]
    github.comment(repo, issue, "/kugetsu budget 5", author="bob")
    wait_for(lambda: "@bob only repository admins can set this issue's budget." in github.comments_of(repo, issue),
             timeout=30, what="the refusal")
    github.comment(repo, issue, "/kugetsu budget 1e308", author="alice")
    wait_for(lambda: any(c.startswith("`/kugetsu budget` takes one amount in USD") for c in
                         github.comments_of(repo, issue)), timeout=30, what="the bad amount's reply")
    github.comment(repo, issue, "/kugetsu budget $5", author="alice")
    wait_for(lambda: any(c.startswith("@alice set this issue's budget to $5.00. Spent on this issue: $0.00 (limit "
                                      "$5.00 (set on this issue))") for c in github.comments_of(repo, issue)),
             timeout=30, what="the new limit")


def test_a_queued_task_says_where_it_stands_and_the_page_shows_the_line(github, start_bridge):
    repo = github.create_repo("alice", "widgets")
    first, second, third = (github.create_issue(repo, f"Issue {n}") for n in (1, 2, 3))
    bridge = start_bridge([github], agent_args=["--mode", "hang"],
                          settings={"max_concurrent_agents": "1", "workers": "2"})
    github.add_label(repo, first, "kugetsu:todo")
    wait_for(lambda: any(t["state"] == "running" for t in _task_records(bridge)), timeout=60, what="the first agent")
    github.add_label(repo, second, "kugetsu:todo")
    wait_for(lambda: "1st in line · 1 of 1 agent slots busy" in _status(github, repo, second), timeout=60,
             what="the second issue's place")
    # RQ's rate limiter orders waiting jobs by whole seconds (ties by job id): the third is queued a second later.
    queued_second = int(time.time())
    wait_for(lambda: int(time.time()) > queued_second, timeout=5, what="the next second")
    github.add_label(repo, third, "kugetsu:todo")
    wait_for(lambda: "2nd in line · 1 of 1 agent slots busy" in _status(github, repo, third), timeout=60,
             what=lambda: f"the third issue's place, in: {_status(github, repo, third)}")
    github.comment(repo, first, "/kugetsu continue and then this")
    wait_for(lambda: "waits for the running task of this issue" in _status(github, repo, first), timeout=60,
             what="the continue waiting behind its issue's running task")
    page = requests.get(bridge.url, timeout=10).text
    line = re.findall(r'<li data-task="\w+">(\S+) — .*?<em class="stands">([^<]*)</em>', page)
    assert [(ref.rsplit("#", 1)[1], stands.split(" · ")[0]) for ref, stands in line] == [
        ("2", "1st in line"), ("3", "2nd in line"), ("1", "waits for the running task of this issue")]
    # The first issue's agent is stopped: the second starts, and the third, asked, says it is first now.
    github.comment(repo, first, "/kugetsu stop")
    wait_for(lambda: "running" in github.labels_of(repo, second)[0] if github.labels_of(repo, second) else False,
             timeout=60, what="the second issue's agent")
    github.comment(repo, third, "/kugetsu status")
    wait_for(lambda: "1st in line · 1 of 1 agent slots busy" in _status(github, repo, third), timeout=60,
             what="the third issue's new place")


@pytest.mark.parametrize("agent, limits, expected", [
    (AgentConfig(preset="kugetsu"), BudgetConfig(task_usd=1), (None, "not limited by dollars: kugetsu reports no cost")),
    (AgentConfig(preset="command", argv=("a",)), BudgetConfig(issue_usd=1), (None, 'set agent.cost = "json:<key>"')),
    (AgentConfig(preset="codex"), BudgetConfig(task_tokens=5), (True, "reports what the budget needs")),
    (AgentConfig(preset="codex"), BudgetConfig(repo_daily_usd=5), (None, "codex reports no cost")),
    (AgentConfig(preset="claude"), BudgetConfig(task_usd=1, task_tokens=5), (True, "reports what the budget needs")),
])
def test_check_says_which_budgets_the_agent_cannot_be_held_to(agent, limits, expected):
    from forge_bridge.service.checks import check_budget
    from forge_bridge.config import Settings

    ok, line = check_budget(Settings(agent=agent, budget=limits))
    assert ok is expected[0] and expected[1] in line and line.startswith("budget: ")


def test_claude_code_is_handed_what_is_left_of_the_task_budget_as_its_own_limit():
    from forge_bridge.agents import presets
    from forge_bridge.config import Settings
    from forge_bridge.work.turns import Turns

    task = _task("t", TaskState.RUNNING)
    task.cost_usd = 0.2
    turns = Turns(Settings(agent=AgentConfig(preset="claude"), budget=BudgetConfig(task_usd=0.5)), None, lambda: "")
    argv = presets.build_argv(turns.priced_agent(task), TaskAction.START, {"prompt": "p", "session_id": "s"})
    assert argv[argv.index("--max-budget-usd") + 1] == "0.3"
    configured = Settings(agent=AgentConfig(preset="claude", max_budget_usd=2), budget=BudgetConfig(task_usd=0.5))
    assert Turns(configured, None, lambda: "").priced_agent(task).max_budget_usd == 2
    assert Turns(Settings(agent=AgentConfig(preset="codex"), budget=BudgetConfig(task_usd=0.5)), None,
                 lambda: "").priced_agent(task).max_budget_usd == 0
