"""One agent turn for a task: resume the issue's agent session, or begin a new one whose prompt carries the issue's
history, and keep the session id the moment the agent names it."""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from forge_bridge.agents import presets, budget, sandbox
from forge_bridge.store import metrics, queue
from forge_bridge.workspace import worktrees
from forge_bridge.config import AgentConfig, Settings
from forge_bridge.forges import IssueInfo
from forge_bridge.work import setup
from forge_bridge.work.history import history_prompt, resume_obstacle
from forge_bridge.models import IssueRef, Session, Task, TaskAction
from forge_bridge.store.sessions import Store
from forge_bridge.agents.streams import Verdict, per_run, reports_sessions

AIDER_HISTORY = "aider.chat.history.md"


@dataclass(frozen=True)
class Turn:
    action: TaskAction        # how the agent is called: start a new session, or continue (resume) one
    prompt: str
    resumes: bool = False


def resumable(agent: AgentConfig) -> bool:
    """Whether the agent has sessions to resume (a command may keep none)."""
    return agent.preset != "command" or agent.session_id != "none"


@dataclass
class Turns:
    settings: Settings
    store: Store
    stop_reason: Callable[[], str]   # why the agent must stop now ("" while it may run on)
    net: sandbox.Network = field(default_factory=sandbox.Network)   # this turn's network (agent.network)

    def run(self, task: Task, session: Session, issue: IssueInfo, ref: IssueRef, checkout: worktrees.Checkout,
            log_file: Path, before: str) -> presets.AgentResult:
        """The agent's turn, after the workspace's setup when it needs one; a resume that fails before naming any
        session is run again as a new session. Both run under the configured network policy."""
        env = self.environment(task, session, issue, ref)
        if sandbox.mode(self.settings.agent)[0] == "bwrap" and \
                (hidden := sandbox.hidden_program(self.settings, env.get("PATH", ""))):
            raise presets.AgentConfigError(hidden)
        count = lambda address: metrics.refused_egress(self.store.conn, str(ref), address)  # noqa: E731
        with sandbox.network(self.settings, env, log_file, count) as self.net:
            return self._run(task, session, issue, ref, checkout, log_file, before, {**env, **self.net.env})

    def _run(self, task: Task, session: Session, issue: IssueInfo, ref: IssueRef, checkout: worktrees.Checkout,
             log_file: Path, before: str, env: dict[str, str]) -> presets.AgentResult:
        prepared = setup.run_if_needed(self.settings, checkout, env=env,
                                       confine=lambda argv: self.confine(argv, ref, checkout.worktree), log=log_file,
                                       should_stop=self.stop_reason)
        if prepared.result is not None:
            task.setup_note = f"waited {prepared.seconds:.0f} s for {self.settings.agent.setup_script}"
            if prepared.result.stopped:
                return prepared.result
        turn = self.plan(task, session, issue, ref)
        result = self.launch(task, session, issue, ref, checkout.worktree, log_file, turn)
        if turn.resumes and self.resume_failed(result) and self.unchanged(checkout, before):
            turn = self.fresh_turn(task, session, issue, ref, f"resuming session {session.agent_session_id} failed")
            result = self.launch(task, session, issue, ref, checkout.worktree, log_file, turn)
        return result

    @staticmethod
    def unchanged(checkout: worktrees.Checkout, before: str) -> bool:
        with worktrees.mirror_lock(checkout.mirror):
            checkout.restore()
        return worktrees.head(checkout) == before

    def plan(self, task: Task, session: Session, issue: IssueInfo, ref: IssueRef) -> Turn:
        agent = self.settings.agent
        if task.action is TaskAction.START or not resumable(agent):
            return Turn(task.action, task.message)
        history_file_exists = agent.preset != "aider" or Path(session.agent_session_id).exists()
        obstacle = resume_obstacle(session, preset=agent.preset, host=self.settings.host,
                                   history_file_exists=history_file_exists)
        if obstacle:
            return self.fresh_turn(task, session, issue, ref, obstacle)
        return Turn(TaskAction.CONTINUE, task.message, resumes=True)

    def fresh_turn(self, task: Task, session: Session, issue: IssueInfo, ref: IssueRef, why: str) -> Turn:
        earlier = [t for t in self.store.tasks(session.task_ids) if t.id != task.id and t.state.finished]
        task.session_note = f"new session: {why}"
        prompt = history_prompt(issue=str(ref), title=issue.title, session=session, earlier=earlier,
                                message=task.message, why=why)
        return Turn(TaskAction.START, prompt)

    def resume_failed(self, result: presets.AgentResult) -> bool:
        """A resume that failed before the agent named any session: the session is unknown where it ran."""
        return (not result.ok and not result.stopped and not result.timed_out and not result.session_id
                and reports_sessions(self.settings.agent))

    def launch(self, task: Task, session: Session, issue: IssueInfo, ref: IssueRef, worktree: Path,
               log_file: Path, turn: Turn) -> presets.AgentResult:
        if turn.action is TaskAction.START:
            self.new_session(session, ref)
        if task.session_note and turn.action is TaskAction.START:
            with open(log_file, "a") as out:
                out.write(f"forge-bridge: starting a {task.session_note}\n")
        files = worktrees.session_dir(self.settings.data_dir, ref)
        message_file = files / f"prompt-{task.id}.md"
        if presets.takes(self.settings.agent, "message_file"):   # aider reads its prompt from a file
            message_file.write_text(turn.prompt)
        values = {"prompt": turn.prompt, "session_id": session.agent_session_id, "issue_ref": str(ref),
                  "worktree": str(worktree), "branch": session.branch, "title": issue.title,
                  "message_file": str(message_file), "history_file": str(files / AIDER_HISTORY)}
        argv = presets.build_argv(self.priced_agent(task), turn.action, values)
        argv = presets.with_instructions(self.settings.agent, argv, has_agents_md=(worktree / "AGENTS.md").is_file())
        if task.mode == "plan":
            argv = presets.plan_argv(self.settings.agent, argv)
        env = self.environment(task, session, issue, ref)
        argv = self.confine(argv, ref, worktree)

        def started(pid: int) -> None:
            task.host, task.agent_pid = self.settings.host, pid
            self.store.save_task(task)
            queue.remember_home(self.store.conn, str(ref), self.settings.host)   # its next task comes here

        limits = self.settings.budget
        meter = budget.RunMeter(self.settings.agent, limits, task.cost_usd, task.tokens,
                                dict(session.agent_totals) if turn.resumes else {}) \
            if limits.task_usd or limits.task_tokens else None
        result = presets.run_agent(argv, prompt=turn.prompt, cwd=worktree, env=env,
                                  timeout=self.settings.task_timeout, log=log_file, agent=self.settings.agent,
                                  should_stop=self.stop_reason, on_start=started,
                                  on_session=lambda found: self.remember_session(session, found), on_lines=meter)
        cost, tokens = self.count_usage(session, result.verdict, resumed=turn.resumes)
        task.cost_usd += cost
        task.tokens += tokens
        task.turns += result.verdict.turns
        self.book(task, ref, cost, tokens)
        return result

    def environment(self, task: Task, session: Session, issue: IssueInfo, ref: IssueRef) -> dict[str, str]:
        """What the agent (and the setup script before it) runs with: its proxy too, under an allowlist."""
        return presets.agent_env(self.settings.agent, {
            "HOME": str(sandbox.agent_home(self.settings, ref)), "FORGE_BRIDGE_ISSUE_REF": str(ref),
            "FORGE_BRIDGE_ISSUE_TITLE": issue.title, "FORGE_BRIDGE_BRANCH": session.branch,
            "FORGE_BRIDGE_SESSION_ID": session.agent_session_id, "FORGE_BRIDGE_TASK_ID": task.id,
            "FORGE_BRIDGE_MODE": task.mode or "build", **self.net.env})

    def confine(self, argv: list[str], ref: IssueRef, worktree: Path) -> list[str]:
        return sandbox.confined(self.settings, argv, worktree=worktree,
                                mirror=worktrees.mirror_dir(self.settings.data_dir, ref.repo),
                                session_dir=worktrees.session_dir(self.settings.data_dir, ref),
                                home=sandbox.agent_home(self.settings, ref), net=self.net)

    def priced_agent(self, task: Task) -> AgentConfig:
        """Claude Code says what a run cost only when it ends, so a task's dollar limit is also handed to it as
        its own `--max-budget-usd` (what is left of it), unless one is configured."""
        agent, limit = self.settings.agent, self.settings.budget.task_usd
        if agent.preset != "claude" or not limit or agent.max_budget_usd:
            return agent
        return replace(agent, max_budget_usd=round(max(0.01, limit - task.cost_usd), 2))

    def book(self, task: Task, ref: IssueRef, cost: float, tokens: int) -> None:
        """A run's spend, to its issue's and repository's budgets and to the metrics."""
        budget.Ledger(self.store.conn).add(ref, cost)
        metrics.add_usage(self.store.conn, task.forge, str(ref.repo), self.settings.agent.preset, cost=cost,
                          tokens=tokens)

    def count_usage(self, session: Session, verdict: Verdict, *, resumed: bool) -> tuple[float, int]:
        """What this run cost. A CLI that reports the session's running totals on a resume is counted as the
        difference from the totals it reported at the end of the session's last run."""
        before = session.agent_totals if resumed else {}
        reported = {"cost": verdict.cost_usd, "tokens": float(verdict.tokens)}
        totals = {key: reported[key] for key in verdict.running if reported[key] > 0}
        if totals:   # a run that reported nothing (it failed early) leaves the last totals in place
            session.agent_totals = {**before, **totals}
            self.store.save_session(session)
        return per_run(verdict.cost_usd, verdict.tokens, verdict.running, before)

    def new_session(self, session: Session, ref: IssueRef) -> None:
        """A start begins a new agent session: the bridge picks its id when the agent takes one (Claude Code,
        a `uuid` command); aider's chat history is set aside; kugetsu keys its own by the issue ref; the others
        name theirs as they run."""
        agent = self.settings.agent
        if agent.preassigned_session:
            session_id = str(uuid.uuid4())
        elif agent.preset == "aider":
            history = worktrees.session_dir(self.settings.data_dir, ref) / AIDER_HISTORY
            if history.exists():
                history.rename(history.with_name(f"{history.stem}.{int(time.time())}.md"))
            session_id = str(history)
        elif agent.preset == "kugetsu":
            session_id = str(ref)
        else:
            session_id = ""
        session.agent_totals = {}
        self.remember_session(session, session_id)

    def remember_session(self, session: Session, session_id: str) -> None:
        """Stored the moment it is known, even if the run then fails, so a continue can resume it."""
        session.agent_session_id, session.agent, session.agent_host = \
            session_id, self.settings.agent.preset, self.settings.host
        self.store.save_session(session)

