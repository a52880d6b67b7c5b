"""Carry out a decision about a ForgeEvent inside a job: authorize the sender, then start, continue, stop,
retry, refresh or destroy — and answer on the forge."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from forge_bridge import redact
from forge_bridge.agents import budget
from forge_bridge.workspace import worktrees
from forge_bridge.intake.commands import Command, Verb
from forge_bridge.intake.reviews import asks_for_work, review_message
from forge_bridge.config import Settings
from forge_bridge.forges import BOT_WITH_WRITE, WRITE_PERMISSIONS, ForgeClient, ForgeError
from forge_bridge.work.lifecycle import safe_destroy
from forge_bridge.store.line import Line
from forge_bridge.models import (
    CI_SENDER,
    CheckFailed,
    EventKind,
    FailedCheck,
    ForgeEvent,
    IssueRef,
    Session,
    Task,
    TaskAction,
    TaskState,
)
from forge_bridge.store.queue import Scheduler, slots_in_use
from forge_bridge.refs import parse_issue_ref, parse_repo_ref
from forge_bridge.work.report import Reporter
from forge_bridge.store.sessions import CLAIM_TTL, Store
from forge_bridge.intake.triggers import (
    Act,
    Answer,
    IssueClosed,
    PullClosed,
    ReadReview,
    Skip,
    StartFromLabel,
    decide,
)

log = logging.getLogger(__name__)
PERMISSION_TTL = 300
RETRYABLE = (TaskState.FAILED, TaskState.TIMED_OUT, TaskState.CANCELLED)


def opening_message(issue, message: str) -> str:
    """A new session's first prompt: the issue's title and body, then what the command added."""
    return "\n\n".join(part for part in (issue.title, issue.body, message) if part)


def ci_message(change: CheckFailed, checks: tuple[FailedCheck, ...], *, round_: int, limit: int) -> str:
    lines = [f"- {check.name}: {check.conclusion}" + (f" — {check.summary}" if check.summary else "") +
             (f" ({check.url})" if check.url else "") for check in checks]
    return (f"CI failed: continuing (round {round_} of {limit})\n\nChecks failing on {change.sha[:7]}:\n"
            + "\n".join(lines) + "\n\nFind out why they fail and fix it.")


@dataclass
class Intake:
    settings: Settings
    store: Store
    client: ForgeClient
    scheduler: Scheduler

    def handle(self, event: ForgeEvent) -> str:
        # The webhook or poller already decided a label was *added*; deciding again here must not compare
        # against the label set the webhook handler has since remembered.
        decision = decide(event, self.settings, known_labels=None)
        if isinstance(decision, Skip):
            return f"ignored: {decision.reason}"
        ref = self._target(event, decision)
        if ref is None:
            return "ignored: not a pull request the bridge opened"
        if isinstance(decision, PullClosed):
            return self.pull_closed(ref, merged=decision.merged)
        if isinstance(decision, IssueClosed):
            return self.issue_closed(event, ref)
        if isinstance(decision, ReadReview):
            return self.read_review(event, ref)
        if not self.authorized(event):
            return self.deny(event, ref)
        self.acknowledge(event)
        if isinstance(decision, StartFromLabel):
            return self.start_from_label(event, decision)
        if isinstance(decision, Answer):
            self.client.create_comment(event.issue, decision.text)
            return "answered"
        return self.act(decision.command, event, ref)

    def _target(self, event: ForgeEvent, decision: object) -> IssueRef | None:
        """The issue an event is about: a pull request of the bridge's maps back to its issue."""
        if not ((isinstance(decision, Act) and decision.on_pull) or isinstance(decision, (PullClosed, ReadReview))):
            return event.issue
        linked = self.store.issue_for_pull(event.issue.repo, event.issue.number)
        return parse_issue_ref(linked) if linked else None

    # who may trigger
    def authorized(self, event: ForgeEvent) -> bool:
        if self.settings.user_allowed(event.forge, event.sender):
            return True
        key = f"perm:{event.forge}:{event.issue.repo}:{event.sender}"
        permission = self.store.cached(key)
        if permission is None:
            permission = self.client.permission(event.issue.repo, event.sender) if event.sender else "none"
            self.store.cache(key, permission, ttl=PERMISSION_TTL)
        if permission == BOT_WITH_WRITE:   # GitLab: a bot user with write access, only when allow_bots lists it
            return self.settings.bot_allowed(event.forge, event.sender)
        return permission in WRITE_PERMISSIONS

    def deny(self, event: ForgeEvent, ref: IssueRef) -> str:
        if self.store.claim(f"denied:{ref}"):  # at most one short reply per issue
            self.client.create_comment(event.issue, f"@{event.sender} only people with write access to this "
                                                    "repository can start or steer the agent here.")
        return f"denied: {event.sender} may not trigger the agent"

    def read_review(self, event: ForgeEvent, ref: IssueRef) -> str:
        """A review on the bridge's pull request, read whole: one `continue` when it asks for work. GitHub sends
        the review and each of its inline comments as deliveries of their own; the review's id makes them one."""
        repo, number = event.issue.repo, event.issue.number
        review = self.client.review(repo, number, event.comment_id, author=event.sender, state=event.review_state)
        if review is None:
            return "ignored: the review is not on the forge (deleted, or still pending)"
        comments = self.client.review_comments(repo, number, review.id)
        if not asks_for_work(review, comments, self.settings.forge(event.forge).bot_login):
            return f"ignored: the review ({review.state}) neither requests changes nor mentions the bot"
        taken = f"review:{event.forge}:{repo}:{review.id}"
        if not self.store.claim(taken):
            return f"ignored: review {review.id} was taken already"
        try:
            if not self.authorized(event):
                return self.deny(event, ref)
            for comment in comments:
                self._react(lambda c=comment: self.client.add_review_comment_reaction(event.issue, c.id, "eyes"),
                            comment.id)
            return self.act(Command(Verb.CONTINUE, message=review_message(review, comments)), event, ref)
        except BaseException:   # the job runs again: the review must still be there to take
            self.store.release_quietly(taken)
            raise

    def acknowledge(self, event: ForgeEvent) -> None:
        """👀 on an accepted command comment; a forge that refuses it does not stop the command."""
        if event.kind is not EventKind.COMMENT or not event.comment_id:
            return
        self._react(lambda: self.client.add_reaction(event.issue, event.comment_id, "eyes"), event.comment_id)

    def _react(self, react, comment_id: int) -> None:
        if not self.client.supports_reactions:
            return
        try:
            react()
        except ForgeError as error:
            log.warning("could not react to comment %s: %s", comment_id, error)

    # starting work
    def start_from_label(self, event: ForgeEvent, decision: StartFromLabel) -> str:
        """The label is consumed under the issue's lock: whoever sees it first (webhook or poller)
        starts the task and removes it; everyone after finds it gone and starts nothing."""
        label = decision.label
        with self.store.issue_lock(event.issue):
            issue = self.client.get_issue(event.issue)
            if label not in issue.labels:
                return f"ignored: {label} is no longer on the issue"
            latest = self.store.latest_task(self.store.session(event.issue))
            if latest and not latest.state.finished:
                self.client.remove_label(event.issue, label)
                return "ignored: the issue already has a task in progress"
            task = self.enqueue_task(event.issue, event, TaskAction.START, f"{issue.title}\n\n{issue.body}".strip(),
                                     labels=issue.labels, mode=decision.mode)
        return f"queued task {task.id}"

    def act(self, command: Command, event: ForgeEvent, ref: IssueRef) -> str:
        handlers = {Verb.START: self.start, Verb.CONTINUE: self.continue_, Verb.STOP: self.stop,
                    Verb.RETRY: self.retry, Verb.STATUS: self.refresh, Verb.DESTROY: self.destroy,
                    Verb.BUDGET: self.budget, Verb.PLAN: self.plan, Verb.APPROVE: self.approve}
        with self.store.issue_lock(ref):
            return handlers[command.verb](command, event, ref)

    def start(self, command: Command, event: ForgeEvent, ref: IssueRef) -> str:
        issue = self.client.get_issue(ref)
        message = opening_message(issue, command.message)
        return f"queued task {self.enqueue_task(ref, event, TaskAction.START, message, labels=issue.labels).id}"

    def continue_(self, command: Command, event: ForgeEvent, ref: IssueRef) -> str:
        session = self.store.session(ref)
        if session is None or not session.task_ids:
            return self.start(command, event, ref)
        line = self.store.tasks(self.scheduler.waiting(str(ref)))
        running = any(task.state is TaskState.RUNNING for task in line)
        waiting = line[-1] if len(line) > 1 else None   # behind another task: not started, and cannot yet
        if waiting and waiting.state is TaskState.QUEUED and waiting.action is TaskAction.CONTINUE \
                and self.store.append_message(waiting.id, command.message, requested_by=event.sender):
            if event.source != "ci":
                self.acknowledge_next_turn(event, running=running, merged=True)
            self.report(ref, session, self.client.get_issue(ref).labels)
            return f"merged into task {waiting.id}"
        labels = self.client.get_issue(ref).labels
        task = self.enqueue_task(ref, event, TaskAction.CONTINUE, command.message, labels=labels)
        if line and event.source != "ci":
            self.acknowledge_next_turn(event, running=running, merged=False)
        return f"queued task {task.id}"

    def plan(self, command: Command, event: ForgeEvent, ref: IssueRef) -> str:
        """A plan only, read-only: in the issue's session when it has one, else a new one on the issue's text."""
        session = self.store.session(ref)
        issue = self.client.get_issue(ref)
        if session is not None and session.task_ids:
            message = command.message or "Propose a plan for the issue's next step. Change no files."
            task = self.enqueue_task(ref, event, TaskAction.CONTINUE, message, labels=issue.labels, mode="plan")
        else:
            task = self.enqueue_task(ref, event, TaskAction.START, opening_message(issue, command.message),
                                     labels=issue.labels, mode="plan")
        return f"queued plan task {task.id}"

    def approve(self, command: Command, event: ForgeEvent, ref: IssueRef) -> str:
        """Carry out the plan: a `continue` of the same session, with the approver's notes."""
        latest = self.store.latest_task(self.store.session(ref))
        if latest is None or latest.mode != "plan":
            self.client.create_comment(event.issue, f"@{event.sender} there is no plan to approve: ask for one with "
                                                    f"`{self.settings.command} plan`.")
            return "ignored: no plan to approve"
        message = "The plan is approved: carry it out now." + (f"\n\n{command.message}" if command.message else "")
        return self.continue_(Command(Verb.CONTINUE, message=message), event, ref)

    # failed checks on the bridge's pull request (ci_feedback)
    def check_failed(self, change: CheckFailed) -> str:
        """Checks failed on a head: when the bridge pushed it and rounds are left, a `continue` naming each failed
        check. The forge's own event: no sender to authorize."""
        linked = self.store.pushed_by_bridge(change.repo, change.sha)
        if linked is None:
            return f"ignored: {change.sha[:7]} is not a head the bridge pushed"
        ref = parse_issue_ref(linked)
        session = self.store.session(ref)
        if session is None or not session.pull_request_number or session.merged:
            return "ignored: no open pull request of the bridge's for this head"
        limit = self.settings.ci_feedback
        with self.store.issue_lock(ref):
            round_ = self.store.next_ci_round(ref, session.pull_request_number)
            if round_ > limit:
                if round_ == limit + 1:
                    self.client.create_comment(ref, f"CI still fails on {change.sha[:7]} after {limit} round(s) "
                                                    "of fixes by the agent; over to you.")
                return f"ignored: all {limit} CI round(s) used"
            message = ci_message(change, self.failed_checks(change), round_=round_, limit=limit)
            event = ForgeEvent(forge=change.forge, kind=EventKind.COMMENT, issue=ref, sender=CI_SENDER,
                               delivery=change.delivery, source="ci")
            return self.continue_(Command(Verb.CONTINUE, message=message), event, ref)

    def failed_checks(self, change: CheckFailed) -> tuple[FailedCheck, ...]:
        """Each failed check: a GitHub check suite's runs, asked of the forge; a status names its own."""
        if not change.suite_id:
            return change.checks
        try:
            runs = self.client.failed_check_runs(parse_repo_ref(change.repo), change.suite_id)
        except ForgeError as error:
            log.warning("could not list the failed runs of check suite %s: %s", change.suite_id, error)
            return change.checks
        return tuple(runs) or change.checks

    def acknowledge_next_turn(self, event: ForgeEvent, *, running: bool, merged: bool) -> None:
        """A message that cannot run yet is told so, where it was written (the issue or its pull request)."""
        why = "the agent is still working on this issue" if running else "another task for this issue is ahead of it"
        joined = ", together with the messages already waiting" if merged else ""
        self.client.create_comment(event.issue, f"@{event.sender} queued for the next turn: {why}, so your message "
                                                f"becomes its next `continue`{joined}.")

    def retry(self, command: Command, event: ForgeEvent, ref: IssueRef) -> str:
        latest = self.store.latest_task(self.store.session(ref))
        if latest is None or latest.state not in RETRYABLE:
            state = latest.state.value if latest else "no task yet"
            self.client.create_comment(ref, f"Nothing to retry: the last task is {state}.")
            return "ignored: nothing to retry"
        labels = self.client.get_issue(ref).labels
        task = self.enqueue_task(ref, event, latest.action, latest.message, labels=labels, mode=latest.mode)
        return f"queued task {task.id}"

    def enqueue_task(self, ref: IssueRef, event: ForgeEvent, action: TaskAction, message: str, *,
                     labels: tuple[str, ...], mode: str = "") -> Task:
        """One event makes at most one task: when a later step fails (a comment the forge would not take) and
        the event job runs again, the task it already made is reported, not made twice."""
        made = f"event-task:{event.forge}:{event.delivery}" if event.delivery else ""
        earlier = self.store.task(self.store.cached(made) or "") if made else None
        if earlier is not None:
            self.report(ref, self.store.session(ref), labels)
            return earlier
        task = self.store.new_task(ref, forge=event.forge, action=action, message=message,
                                   requested_by=event.sender, mode=mode)
        if made:
            self.store.cache(made, task.id, ttl=CLAIM_TTL)
        session = self.store.add_task_to_session(ref, event.forge, task.id)
        # Handed to the agents first: the agent never waits for the report's forge writes, and the work is never
        # lost when the forge will not take them. The runner's own report waits for this issue's lock, which
        # every caller of this holds, so it comes after this one on the forge.
        self.scheduler.submit(task.id, str(ref))
        self.report(ref, session, labels)
        return task

    # steering work
    def stop(self, command: Command, event: ForgeEvent, ref: IssueRef) -> str:
        session = self.store.session(ref)
        latest = self.store.latest_task(session)
        if latest is None or latest.state.finished:
            self.client.create_comment(ref, "Nothing to stop: no task is queued or running.")
            return "ignored: nothing to stop"
        for task in self.store.tasks(self.scheduler.waiting(str(ref))):
            self.store.request_cancel(task.id)  # a running task's runner sees this and kills the agent
        self._cancel_queued(ref, f"cancelled by @{event.sender} before it started")
        self.report(ref, session, self.client.get_issue(ref).labels)
        return f"cancelling task {latest.id}"

    def refresh(self, command: Command, event: ForgeEvent, ref: IssueRef) -> str:
        session = self.store.session(ref)
        if session is None:
            self.client.create_comment(ref, "No agent has worked on this issue yet.")
            return "ignored: no session"
        self.report(ref, session, self.client.get_issue(ref).labels, force=True)
        return "status refreshed"

    def budget(self, command: Command, event: ForgeEvent, ref: IssueRef) -> str:
        """`budget`: what the issue and its repository spent, against their limits; `budget <usd>`: this issue's
        own limit, which only a repository admin (or the operator, from the command line) may set."""
        ledger = budget.Ledger(self.store.conn)
        if command.amount is None:
            self.client.create_comment(ref, budget.describe(ledger.spend(self.settings.budget, ref),
                                                            ref.repo.full_name))
            return "answered: budget"
        if event.source != "cli" and self.client.permission(ref.repo, event.sender) != "admin":
            self.client.create_comment(event.issue, f"@{event.sender} only repository admins can set this issue's "
                                                    "budget.")
            return f"denied: {event.sender} may not set the budget"
        ledger.set_issue_limit(ref, command.amount)
        spend = ledger.spend(self.settings.budget, ref)
        self.client.create_comment(ref, f"@{event.sender} set this issue's budget to "
                                        f"{budget.money(command.amount) if command.amount else 'no limit'}. "
                                        f"{budget.describe(spend, ref.repo.full_name)}")
        return f"budget set to {command.amount}"

    def destroy(self, command: Command, event: ForgeEvent, ref: IssueRef) -> str:
        outcome = safe_destroy(self.settings, self.store, self.client, ref, force=command.force)
        self.client.create_comment(ref, outcome.message)
        return outcome.message

    # the pull request's and the issue's end
    def pull_closed(self, ref: IssueRef, *, merged: bool) -> str:
        with self.store.issue_lock(ref):
            session = self.store.session(ref)
            if session is None:
                return "ignored: no session"
            if merged:
                return self._merged(ref, session)
            outcome = safe_destroy(self.settings, self.store, self.client, ref, force=False)
            if not outcome.destroyed:
                self.client.create_comment(ref, f"The pull request was closed without merging. {outcome.message}")
            return outcome.message

    def _merged(self, ref: IssueRef, session: Session) -> str:
        """Merged: the work is on the base branch, so the worktree goes (unless an agent still runs in it)."""
        outcome = safe_destroy(self.settings, self.store, self.client, ref, force=True)
        session = self.store.session(ref) or session
        if self.settings.delete_branch_on_merge and session.branch:
            self.client.delete_branch(ref.repo, session.branch)
        session.archived, session.merged = session.archived or outcome.destroyed, True
        self.store.save_session(session)
        self.report(ref, session, self.client.get_issue(ref).labels)
        return f"merged: {outcome.message}"

    def issue_closed(self, event: ForgeEvent, ref: IssueRef) -> str:
        with self.store.issue_lock(ref):
            session = self.store.session(ref)
            if session is None:
                return "ignored: no session"
            cancelled = self._cancel_queued(ref, f"the issue was closed by @{event.sender}")
            outcome = safe_destroy(self.settings, self.store, self.client, ref, force=False)
            return f"cancelled {cancelled} queued task(s); {outcome.message}"

    def _cancel_queued(self, ref: IssueRef, why: str) -> int:
        cancelled = 0
        for task in self.store.tasks(self.scheduler.waiting(str(ref))):
            if task.state is TaskState.QUEUED:
                self.store.request_cancel(task.id)
                self.scheduler.cancel(task.id)
                task.state, task.outcome, task.finished_at = TaskState.CANCELLED, why, time.time()
                self.store.save_task(task)
                self.scheduler.finish(task.id, str(ref))
                cancelled += 1
        return cancelled

    def report(self, ref: IssueRef, session: Session, labels: tuple[str, ...], *, force: bool = False) -> None:
        tasks = self.store.tasks(session.task_ids)
        log_tail = redact.log_tail(self.settings, worktrees.log_path(self.settings.data_dir, ref, tasks[-1].id)) \
            if tasks else ""
        Reporter(self.client, self.settings, self.store).report(ref, session, tasks, labels=labels,
                                                                log_tail=log_tail, force=force,
                                                                waiting=self.where_it_stands(ref, tasks))
        self.store.save_status(session)

    def where_it_stands(self, ref: IssueRef, tasks: list[Task]) -> str:
        """For the issue's first queued task, its place in the line for agent slots."""
        queued = [task for task in tasks if task.state is TaskState.QUEUED]
        if not queued:
            return ""
        issue_line, order = self.scheduler.waiting(str(ref)), self.scheduler.agent_line()
        known = {task.id: task for task in self.store.tasks(list(dict.fromkeys([*order, *issue_line])))}
        snapshot = Line(order, {**known, **{task.id: task for task in tasks}}, slots_in_use(self.store.conn),
                        self.settings.max_concurrent_agents, self.scheduler.waits_on([queued[0].id]))
        return snapshot.stands(queued[0], issue_line)
