"""Run one task: mirror, worktree, agent, push, pull request, and the report on the forge whatever happens."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from forge_bridge.agents import presets, budget
from forge_bridge.workspace import worktrees
from forge_bridge.agents.presets import AgentConfigError
from forge_bridge.config import Settings
from forge_bridge.forges import ForgeClient, ForgeError, IssueInfo, RepoInfo
from forge_bridge.models import CI_SENDER, ForgeKind, IssueRef, Session, Task, TaskState, shown_number
from forge_bridge.store.queue import Scheduler
from forge_bridge.redact import log_tail, redact, secret_values
from forge_bridge.refs import parse_issue_ref
from forge_bridge.work.report import Reporter, render_pull_comment, status_url
from forge_bridge.store.sessions import Store
from forge_bridge.work.turns import Turns
from forge_bridge.work.setup import SetupFailed
from forge_bridge.agents.sandbox import NetworkUnconfined
from forge_bridge.workspace.worktrees import GitError

log = logging.getLogger(__name__)


class BudgetSpent(RuntimeError):
    """The task's issue or repository has spent its budget: the task fails before its agent starts."""


EXPECTED_FAILURES = (GitError, ForgeError, AgentConfigError, OSError, BudgetSpent, SetupFailed, NetworkUnconfined)
PARTIAL_STATES = (TaskState.FAILED, TaskState.TIMED_OUT, TaskState.CANCELLED)   # work that may be worth keeping
PLAN_HEADING = "### Plan"
PLAN_LIMIT = 60_000       # characters of a plan posted (a forge comment holds 65,536)
SHUTDOWN = "shutdown"       # the worker is stopping: the task goes back to the head of its line
CANCELLED = "cancelled"
WORKER_GONE = "worker gone"


@dataclass
class Runner:
    settings: Settings
    store: Store
    client: ForgeClient
    scheduler: Scheduler
    shutting_down: Callable[[], str] = lambda: ""   # the worker's own stop reason ("" while it runs on)
    subjects: list[str] = field(default_factory=list)   # the commits of the run in hand, for the pull request

    def run(self, task_id: str) -> Task | None:
        task = self.store.begin_task(task_id)
        if task is None:
            return self.store.task(task_id)  # cancelled, or another job already ran it: never run twice
        ref = parse_issue_ref(task.issue)
        session = self.store.session(ref) or Session(issue=task.issue, forge=task.forge)
        log_file = worktrees.log_path(self.settings.data_dir, ref, task.id)
        had_pull = bool(session.pull_request_number)   # the run that opens it says its piece in the body
        try:
            self.check_budget(ref)
            issue = self.client.get_issue(ref)
            # "Running" is said alongside the start, not before it: the agent never waits for forge writes.
            saying = threading.Thread(target=self.report_running, args=(task, ref, session, log_file),
                                      name=f"report-{task.id}", daemon=True)
            saying.start()
            try:
                self.execute(task, session, issue, ref, log_file)
            finally:
                saying.join()   # before the final report, which must come after it on the forge
        except EXPECTED_FAILURES as error:
            task.state, task.outcome = TaskState.FAILED, str(error)
            log.warning("task %s for %s failed: %s", task.id, ref, error)
        except Exception as error:  # a bug must still end the task visibly on the forge
            task.state, task.outcome = TaskState.FAILED, f"internal error: {type(error).__name__}: {error}"
            log.exception("task %s for %s crashed", task.id, ref)
        finally:
            task.outcome = redact(task.outcome, secret_values(self.settings))
            self.conclude(task, session, ref, log_file)
            if had_pull and task.state.finished:
                self.comment_on_pull(task, session, ref)
        return task

    def conclude(self, task: Task, session: Session, ref: IssueRef, log_file: Path) -> None:
        self.store.save_session(session)   # first: whoever sees the task end finds its session current
        if task.state is TaskState.QUEUED:   # interrupted by a shutdown: it runs again, first in its line
            task.started_at, task.agent_pid = 0.0, 0
            self.store.save_task(task)
            self.scheduler.resubmit(task.id, task.issue)
        else:
            task.finished_at = time.time()
            self.store.save_task(task)
            self.scheduler.finish(task.id, task.issue)
        self.final_report(ref, session, log_file)

    def execute(self, task: Task, session: Session, issue: IssueInfo, ref: IssueRef, log_file: Path) -> None:
        forge = self.settings.forge(task.forge)
        repo = self.client.get_repo(ref.repo)
        mirror = worktrees.mirror_dir(self.settings.data_dir, ref.repo)
        worktree = worktrees.worktree_dir(self.settings.data_dir, ref)
        checkout = worktrees.Checkout(mirror, worktree)
        session.branch = session.branch or worktrees.branch_name(self.settings.label_prefix, ref.number, issue.title)
        session.worktree = str(worktree)
        self.store.save_session(session)
        with worktrees.mirror_lock(mirror):
            self.with_git_token(ref, lambda env: worktrees.sync_mirror(mirror, repo.clone_url, env), repo.clone_url)
            worktrees.ensure_worktree(checkout, branch=session.branch, base=repo.default_branch)
            worktrees.catch_up(checkout, session.branch)
        before = worktrees.head(checkout)
        result = self.run_turn(task, session, issue, ref, checkout, log_file, before)
        task.summary = redact(result.summary, secret_values(self.settings))
        with worktrees.mirror_lock(mirror):   # the agent has ended: undo what it did to the git metadata
            checkout.restore()
        if task.mode == "plan":
            self.finish_plan(task, result, checkout, before, ref)
            return
        if result.ok:
            worktrees.commit_leftovers(checkout, f"{issue.title} (#{ref.number})\n\n{task.summary}".strip(),
                                       author=forge.bot_login or "forge-bridge")
        self.subjects = worktrees.commit_subjects(checkout, before, worktrees.head(checkout))
        task.commits = len(self.subjects)
        self.judge(task, result)
        if task.state is TaskState.SUCCEEDED:
            self.push(task, checkout, session, ref, repo.clone_url)
            self.open_pull_request(task, session, issue, ref, repo.default_branch)
            self.mark_ready(session, ref)
        elif task.state in PARTIAL_STATES and self.settings.keep_partial_work:
            self.keep_partial_work(task, session, issue, ref, checkout, before, repo)

    def push(self, task: Task, checkout: worktrees.Checkout, session: Session, ref: IssueRef,
             clone_url: str) -> None:
        trailer = self.coauthor_trailer(task, ref)
        with worktrees.mirror_lock(checkout.mirror):
            checkout.restore()
            if trailer:
                worktrees.add_trailer(checkout, trailer)
            self.with_git_token(ref, lambda env: worktrees.push(checkout, session.branch, clone_url, env), clone_url)
            self.store.remember_push(ref.repo, worktrees.head(checkout), ref)

    def requester(self, task: Task) -> str:
        """The person whose trigger started the work ("" for the bridge itself or a CI round)."""
        who = task.requested_by
        return "" if who in ("", CI_SENDER, self.settings.forge(task.forge).bot_login) else who

    def coauthor_trailer(self, task: Task, ref: IssueRef) -> str:
        """Credit for the person whose trigger started the work ("" when the forge cannot say who they are)."""
        if not self.requester(task):
            return ""
        try:
            who = self.client.coauthor(ref.repo, task.requested_by)
        except ForgeError as error:
            log.info("no Co-authored-by for %s on %s: %s", task.requested_by, ref, error)
            return ""
        return f"Co-authored-by: {who}" if who else ""

    def keep_partial_work(self, task: Task, session: Session, issue: IssueInfo, ref: IssueRef,
                          checkout: worktrees.Checkout, before: str, repo: RepoInfo) -> None:
        """A run that ended badly after changing files: its work is committed (`WIP: …`), pushed, and shown in a
        draft pull request, so nothing is lost and the next `continue` goes on from it."""
        forge = self.settings.forge(task.forge)
        try:
            worktrees.commit_leftovers(checkout, f"WIP: {issue.title} (#{ref.number})\n\n{task.outcome}",
                                       author=forge.bot_login or "forge-bridge")
            self.subjects = worktrees.commit_subjects(checkout, before, worktrees.head(checkout))
            if not self.subjects:
                return
            task.commits = len(self.subjects)
            self.push(task, checkout, session, ref, repo.clone_url)
            self.open_pull_request(task, session, issue, ref, repo.default_branch, draft=True)
        except EXPECTED_FAILURES as error:   # keeping the work must not hide why the task failed
            log.warning("could not keep the partial work of task %s on %s: %s", task.id, ref, error)
            task.outcome += f"; its partial work could not be kept ({error})"
            return
        number = shown_number(session.pull_request_number)
        where = f"draft pull request {number}" if session.pull_request_draft else f"pull request {number}"
        task.outcome += (f"; partial work kept: {task.commits} commit(s) pushed to {session.branch} ({where}); "
                         "`/kugetsu continue <what next>` goes on from it")

    def request_review(self, task: Task, ref: IssueRef, number: int) -> None:
        """The person whose trigger started the work reviews it, when the forge lets them (one log line if not)."""
        if not self.requester(task):
            return
        try:
            self.client.request_review(ref.repo, number, task.requested_by)
        except ForgeError as error:
            log.info("could not ask %s to review pull request #%s of %s: %s", task.requested_by, number, ref, error)

    def mark_ready(self, session: Session, ref: IssueRef) -> None:
        """The draft that partial work opened is ready once a task succeeds on it."""
        if not session.pull_request_draft or not session.pull_request_number:
            return
        try:
            self.client.mark_ready(ref.repo, session.pull_request_number)
        except ForgeError as error:
            log.warning("could not mark pull request #%s of %s ready: %s", session.pull_request_number, ref, error)
            return
        session.pull_request_draft = False
        self.store.save_session(session)

    def finish_plan(self, task: Task, result: presets.AgentResult, checkout: worktrees.Checkout, before: str,
                    ref: IssueRef) -> None:
        """A plan changes nothing: whatever the agent touched is undone, nothing is pushed, and its answer is
        posted on the issue for a person to approve."""
        with worktrees.mirror_lock(checkout.mirror):
            worktrees.discard_changes(checkout, before)
        self.subjects, task.commits = [], 0
        self.judge(task, result)
        if task.state is not TaskState.SUCCEEDED:
            return
        command = self.settings.command
        self.client.create_comment(ref, f"{PLAN_HEADING}\n\n{task.summary[:PLAN_LIMIT]}\n\n---\n_Approve with "
                                        f"`{command} approve [notes]`, or ask again with `{command} plan <what to "
                                        "change>`._")

    def check_budget(self, ref: IssueRef) -> None:
        spend = budget.Ledger(self.store.conn).spend(self.settings.budget, ref)
        refused = budget.start_refused(spend, ref.repo.full_name)
        if refused:
            raise BudgetSpent(refused)

    def judge(self, task: Task, result: presets.AgentResult) -> None:
        """The task's end, from how the agent ended, what it said and the commits it left."""
        over = result.stopped if result.stopped.startswith(budget.PREFIX) else \
            budget.run_over_budget(self.settings.budget, task.cost_usd, task.tokens)
        if result.stopped == SHUTDOWN:
            task.state, task.outcome = TaskState.QUEUED, "interrupted by a shutdown; it will run again"
        elif result.stopped == CANCELLED:
            task.state, task.outcome = TaskState.CANCELLED, "stopped on request"
        elif over:   # stopped by its meter, or (a quick agent) done before the meter read the line that passed it
            task.state, task.outcome = TaskState.FAILED, over
        elif result.stopped:
            task.state, task.outcome = TaskState.FAILED, "the worker running it stopped"
        elif result.timed_out:
            task.state = TaskState.TIMED_OUT
            task.outcome = f"the agent ran past task_timeout ({int(self.settings.task_timeout)}s) and was stopped"
        elif result.exit_code is None:
            task.state, task.outcome = TaskState.FAILED, result.failure or "the agent could not be started"
        elif result.exit_code != 0:
            task.state = TaskState.FAILED
            task.outcome = (result.rejected(self.settings.agent.preset) or result.failure
                            or f"the agent exited with code {result.exit_code}")
        elif result.failure:
            task.state, task.outcome = TaskState.FAILED, result.failure
        elif task.mode == "plan":
            task.state, task.outcome = (TaskState.SUCCEEDED, "plan posted") if task.summary.strip() else \
                (TaskState.FAILED, "the agent gave no plan")
        elif task.commits == 0:
            task.state, task.outcome = TaskState.FAILED, "the agent left no new commits"
        else:
            task.state, task.outcome = TaskState.SUCCEEDED, f"{task.commits} new commit(s) pushed"

    def stop_reason(self, task: Task) -> str:
        reason = self.shutting_down()
        if reason:
            return reason
        return CANCELLED if self.store.cancel_requested(task.id) else ""

    def run_turn(self, task: Task, session: Session, issue: IssueInfo, ref: IssueRef,
                 checkout: worktrees.Checkout, log_file: Path, before: str) -> presets.AgentResult:
        turns = Turns(self.settings, self.store, stop_reason=lambda: self.stop_reason(task))
        return turns.run(task, session, issue, ref, checkout, log_file, before)

    def open_pull_request(self, task: Task, session: Session, issue: IssueInfo, ref: IssueRef, base: str, *,
                          draft: bool = False) -> None:
        if session.pull_request_url:
            return  # the push updated it
        pull = self.client.find_open_pull(ref.repo, session.branch)
        if pull is None:
            body = f"Closes #{ref.number}\n\n{task.summary}".strip()
            try:
                pull = self.client.create_pull(ref.repo, head=session.branch, base=base, title=issue.title,
                                               body=body, draft=draft,
                                               delete_on_merge=self.settings.delete_branch_on_merge)
                session.pull_request_draft = draft
                self.request_review(task, ref, pull.number)
            except ForgeError as error:
                # "A pull request already exists" (GitHub 422, Gitea 409) means someone opened it: adopt it.
                pull = self.client.find_open_pull(ref.repo, session.branch) if error.status in (409, 422) else None
                if pull is None:
                    raise
        session.pull_request_url, session.pull_request_number = pull.url, pull.number
        self.store.save_session(session)
        self.store.link_pull(ref.repo, pull.number, ref)

    def with_git_token(self, ref: IssueRef, step: Callable[[dict[str, str]], None], clone_url: str) -> None:
        """A git step against the forge with a token asked for just now (a GitHub App's expire within the hour,
        and a run can take longer); refused for its credentials, it is tried once more with a renewed one."""
        try:
            step(worktrees.git_env(clone_url, self.client.git_token(ref.repo), self.client.git_user))
        except GitError as error:
            if not worktrees.refused_credentials(error):
                raise
            self.client.renew_git_token()
            step(worktrees.git_env(clone_url, self.client.git_token(ref.repo), self.client.git_user))

    def report_running(self, task: Task, ref: IssueRef, session: Session, log_file: Path) -> None:
        """Under the issue's lock, so after the intake's report of this task (which may still be writing when the
        agent starts), with the status comment it made and the labels it left."""
        try:
            with self.store.issue_lock(ref):
                stored = self.store.session(ref)
                if stored is not None and not session.status_comment_id:
                    session.status_comment_id, session.status_digest = stored.status_comment_id, stored.status_digest
                self.report(ref, session, self.client.get_issue(ref).labels, log_file)
        except ForgeError as error:  # saying "running" is not worth failing the run for
            log.warning("could not report task %s running on %s: %s", task.id, ref, error)
        except Exception:   # nor is a bug in saying it: the run goes on, the final report says how it ended
            log.exception("reporting task %s running on %s failed", task.id, ref)

    def report(self, ref: IssueRef, session: Session, labels: tuple[str, ...], log_file: Path) -> None:
        Reporter(self.client, self.settings, self.store).report(ref, session, self.store.tasks(session.task_ids),
                                                                labels=labels, log_tail=log_tail(self.settings, log_file))

    def comment_on_pull(self, task: Task, session: Session, ref: IssueRef) -> None:
        """After each task on an issue with a pull request: what that run did, on the pull request itself."""
        if not session.pull_request_number or session.merged:
            return
        tasks = self.store.tasks(session.task_ids)
        number = next((i for i, t in enumerate(tasks, start=1) if t.id == task.id), len(tasks))
        forge = self.settings.forge(task.forge)
        body = render_pull_comment(task, number=number, subjects=self.subjects,
                                   status_url=status_url(forge.url, ref, session.status_comment_id,
                                                         gitlab=forge.kind is ForgeKind.GITLAB))
        pull = IssueRef(ref.repo, session.pull_request_number)
        try:
            self.client.create_comment(pull, body)
        except ForgeError as error:
            log.error("could not comment on the pull request %s: %s", pull, error)

    def final_report(self, ref: IssueRef, session: Session, log_file: Path) -> None:
        try:
            self.report(ref, session, self.client.get_issue(ref).labels, log_file)
        except ForgeError as error:
            log.error("could not report on %s: %s", ref, error)
        finally:
            self.store.save_session(session)


def fail_abandoned(settings: Settings, store: Store, client: ForgeClient, scheduler: Scheduler, task_id: str,
                   reason: str) -> Task | None:
    """A task whose worker died (or whose job failed outside the runner): mark it failed, reap its agent if it
    ran on this host, free its issue's line and say so on the forge."""
    task = store.task(task_id)
    if task is None or task.state.finished:
        return task
    if task.agent_pid and task.host == settings.host:
        presets.kill_group(task.agent_pid)
    task.state, task.outcome, task.finished_at = TaskState.FAILED, reason, time.time()
    store.save_task(task)
    scheduler.finish(task.id, task.issue)
    ref = parse_issue_ref(task.issue)
    session = store.session(ref) or Session(issue=task.issue, forge=task.forge)
    runner = Runner(settings, store, client, scheduler)
    runner.final_report(ref, session, worktrees.log_path(settings.data_dir, ref, task.id))
    runner.comment_on_pull(task, session, ref)
    return task
