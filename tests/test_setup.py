"""The repository prepares its workspace: `.forge-bridge/setup.sh` runs before the agent — once per worktree and
version of the script, ahead of need in spares — and a setup that fails, hangs or is not a file fails the task
without running the agent. Through `serve`, real git repositories and the fake agent, which commits its prompt and
the trace the setup script left."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from helpers import commit_to, wait_for

from forge_bridge.config import settings_from_dict
from forge_bridge.work import setup
from forge_bridge.work.report import STATUS_MARKER
from forge_bridge.workspace import worktrees
from test_end_to_end import BODY, TITLE, _branch_file, _settled

SCRIPT = ".forge-bridge/setup.sh"
TRACING = "#!/bin/bash\necho \"setup v1 in $(basename \"$PWD\") as HOME=${HOME:+set}\" >> .setup-trace\n"
IGNORE = {".gitignore": ".setup-trace\n"}


# Finding the script, without a forge
def test_a_script_is_found_only_as_a_regular_file_of_the_worktree(tmp_path):
    worktree = tmp_path / "w"
    (worktree / ".forge-bridge").mkdir(parents=True)
    assert setup.find(worktree, SCRIPT) is None
    (worktree / SCRIPT).write_text("echo hi\n")
    assert setup.find(worktree, SCRIPT).digest == setup.find(worktree, SCRIPT).digest != ""
    (worktree / SCRIPT).unlink()
    (worktree / SCRIPT).symlink_to("/etc/hostname")
    with pytest.raises(setup.SetupFailed, match="^setup: .forge-bridge/setup.sh is not a regular file"):
        setup.find(worktree, SCRIPT)
    (worktree / SCRIPT).unlink()
    (worktree / SCRIPT).mkdir()
    with pytest.raises(setup.SetupFailed, match="not a regular file"):
        setup.find(worktree, SCRIPT)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "setup.sh").write_text("echo out\n")
    (worktree / ".forge-bridge" / "setup.sh").rmdir()
    (worktree / ".forge-bridge").rmdir()
    (worktree / ".forge-bridge").symlink_to(outside)   # a folder on the way that leads out
    with pytest.raises(setup.SetupFailed, match="not a regular file"):
        setup.find(worktree, SCRIPT)


@pytest.mark.parametrize("raw, message", [
    ({"setup_script": "/etc/setup.sh"}, "agent.setup_script must be a path inside the repository"),
    ({"setup_script": "../setup.sh"}, "agent.setup_script must be a path inside the repository"),
    ({"setup_timeout": "soon"}, "agent.setup_timeout: expected a duration"),
])
def test_bad_setup_settings_are_one_clear_error(raw, message):
    from forge_bridge.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        settings_from_dict({"agent": raw}, source="t.toml", environ={})


# Through serve
def _issue_run(forge, start_bridge, files, *, links=None, agent_args=(), agent=None, title=TITLE):
    repo = forge.create_repo("alice", "widgets")
    commit_to(repo.bare, "main", files, links=links, message="add a setup script")
    issue = forge.create_issue(repo, title, BODY)
    bridge = start_bridge([forge], agent_args=["--include", ".setup-trace", *agent_args], agent=agent or {})
    forge.add_label(repo, issue, "kugetsu:todo")
    return bridge, repo, issue


def _status(forge, repo, issue) -> str:
    return next(body for body in forge.comments_of(repo, issue) if STATUS_MARKER in body)


def test_setup_runs_before_the_agent_once_per_version_and_ahead_in_spares(github, start_bridge):
    bridge, repo, issue = _issue_run(github, start_bridge, {SCRIPT: TRACING, **IGNORE})
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:review"), timeout=90, what="the first run")
    [pull] = repo.pulls.values()
    work = _branch_file(repo, pull.head, "AGENT_WORK.md")
    assert work.count("setup v1 in 127.0.0.1_") == 1 and "HOME=set" in work   # before the agent, in its worktree
    assert re.search(r"\(waited [0-9]+ s for \.forge-bridge/setup\.sh\)", _status(github, repo, issue))
    log = next((bridge.data_dir / "logs").rglob("*.log")).read_text()
    assert f"forge-bridge: preparing the workspace with {SCRIPT}" in log

    github.comment(repo, repo.issues[pull.number], f"@{github.bot_login} now sort the list")   # not again
    wait_for(lambda: "now sort the list" in _branch_file(repo, pull.head, "AGENT_WORK.md"), timeout=90,
             what="the continue")
    assert _branch_file(repo, pull.head, "AGENT_WORK.md").count(".setup-trace: setup v1") == 2   # one line, twice read
    assert _branch_file(repo, pull.head, "AGENT_WORK.md").endswith(".setup-trace: setup v1 in "
                                                                   f"127.0.0.1_{github.port}-alice-widgets-1 as HOME=set\n")

    commit_to(repo.bare, pull.head, {SCRIPT: TRACING.replace("v1", "v2")}, message="a new setup")   # changed: again
    github.comment(repo, repo.issues[pull.number], f"@{github.bot_login} and add a test")
    wait_for(lambda: "and add a test" in _branch_file(repo, pull.head, "AGENT_WORK.md"), timeout=90,
             what="the run after the script changed")
    assert _branch_file(repo, pull.head, "AGENT_WORK.md").rstrip().endswith("as HOME=set") and \
        "setup v2" in _branch_file(repo, pull.head, "AGENT_WORK.md").splitlines()[-1]

    # The repository's spare is set up ahead (worker housekeeping); the next issue's agent does not wait for it.
    spare = worktrees.spare_dir(worktrees.mirror_dir(bridge.data_dir, _repo_ref(github)))
    wait_for(lambda: (spare.with_name(f"{spare.name}.git") / setup.DONE).is_file(), timeout=120, interval=0.2,
             what="the spare's setup")
    second = github.create_issue(repo, "Second thing", "body")
    github.add_label(repo, second, "kugetsu:todo")
    wait_for(lambda: _settled(github, repo, second, "kugetsu:review"), timeout=90, what="the second issue's run")
    assert "waited" not in _status(github, repo, second)
    pull2 = next(p for p in repo.pulls.values() if p.number != pull.number)
    assert f"setup v1 in {spare.name} as HOME=set" in _branch_file(repo, pull2.head, "AGENT_WORK.md")


def _last_task(bridge):
    from forge_bridge.store.sessions import Store

    store = Store(bridge.redis)
    return store.tasks([task_id for issue in store.session_ids() for task_id in store.session(issue).task_ids])[-1]


def _repo_ref(forge):
    from forge_bridge.models import RepoRef

    return RepoRef(forge.host, "alice", "widgets")


@pytest.mark.parametrize("script, timeout, expected", [
    ("#!/bin/bash\nprintf 'installing \\xff\\xfe deps\\n'\necho 'error: no such package' >&2\nexit 3\n", "10m",
     ["exited with 3", "error: no such package", "installing \ufffd\ufffd deps"]),
    ("#!/bin/bash\necho 'waiting for a server'\nsleep 3001 &\nwait\n", "2s", ["timed out after 2 s",
                                                                               "waiting for a server"]),
], ids=["fails", "times out"])
def test_a_failing_setup_fails_the_task_without_running_the_agent(github, start_bridge, script, timeout, expected):
    bridge, repo, issue = _issue_run(github, start_bridge, {SCRIPT: script, **IGNORE},
                                     agent={"setup_timeout": f'"{timeout}"'})
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:failed"), timeout=90, what="the failed label")
    status = _status(github, repo, issue)
    assert f"setup: {SCRIPT} {expected[0]}" in status
    outcome = _last_task(bridge).outcome
    assert outcome.startswith(f"setup: {SCRIPT} {expected[0]}; the agent was not run")
    assert all(line in outcome for line in expected[1:])
    assert not repo.pulls and repo.branch_sha("kugetsu/1-fix-the-emoji-names") is None   # the agent never ran
    left = subprocess.run(["pgrep", "-f", "sleep 3001"], capture_output=True, text=True).stdout.split()
    assert left == []   # the script's whole process group was killed


def test_a_setup_script_that_is_a_link_is_refused(github, start_bridge):
    bridge, repo, issue = _issue_run(github, start_bridge, IGNORE, links={SCRIPT: "/etc/hostname"})
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:failed"), timeout=90, what="the failed label")
    assert _last_task(bridge).outcome.startswith(f"setup: {SCRIPT} is not a regular file of the repository")
    assert not repo.pulls


def test_setup_runs_in_the_agents_sandbox(github, start_bridge, tmp_path):
    import sys

    from forge_bridge.agents.sandbox import bwrap_works

    if bwrap_works():
        pytest.skip(bwrap_works())   # .ci/run installs bubblewrap; a host without user namespaces cannot run it
    data_dir = tmp_path / "bridge0" / "data"   # where start_bridge puts the first bridge's data
    probe = (f"#!/bin/bash\nif [ -e {data_dir / 'valkey'} ]; then echo 'saw the bridge'; else echo confined; fi"
             " >> .setup-trace\n")
    readable = [str(Path(__file__).resolve().parents[1]), str(Path(sys.executable).resolve().parents[1])]
    bridge, repo, issue = _issue_run(github, start_bridge, {SCRIPT: probe, **IGNORE},
                                     agent={"sandbox": '"bwrap"', "sandbox_paths": _toml(readable)})
    assert bridge.data_dir == data_dir and (data_dir / "valkey").exists()
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:review"), timeout=90, what="the confined run")
    [pull] = repo.pulls.values()
    assert ".setup-trace: confined" in _branch_file(repo, pull.head, "AGENT_WORK.md")


def _toml(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def test_the_aider_preset_reads_the_worktrees_agents_md():
    from forge_bridge.agents import presets
    from forge_bridge.config import AgentConfig
    from forge_bridge.models import TaskAction

    aider = AgentConfig(preset="aider")
    argv = presets.build_argv(aider, TaskAction.START, {"message_file": "/m", "history_file": "/h"})
    read = presets.with_instructions(aider, argv, has_agents_md=True)
    assert read[:3] == ["aider", "--read", "AGENTS.md"] and read[3:] == argv[1:]
    assert presets.with_instructions(aider, argv, has_agents_md=False) == argv
    claude = presets.build_argv(AgentConfig(preset="claude"), TaskAction.START, {"prompt": "p", "session_id": "s"})
    assert presets.with_instructions(AgentConfig(preset="claude"), claude, has_agents_md=True) == claude
