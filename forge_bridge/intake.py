"""Carry out a decision about a ForgeEvent inside a job: create the task, set labels, enqueue the agent run."""
from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from forge_bridge import queue
from forge_bridge.config import Settings
from forge_bridge.forges import ForgeClient, IssueInfo
from forge_bridge.models import ForgeEvent, IssueRef, Session, TaskAction
from forge_bridge.report import Reporter
from forge_bridge.sessions import Store
from forge_bridge.triggers import Skip, StartFromLabel, decide


@dataclass
class Intake:
    settings: Settings
    store: Store
    client: ForgeClient
    conn: Redis

    def handle(self, event: ForgeEvent) -> str:
        decision = decide(event, self.settings)
        if isinstance(decision, Skip):
            return f"ignored: {decision.reason}"
        if isinstance(decision, StartFromLabel):
            return self.start_from_label(event)
        raise AssertionError(f"unhandled decision {decision!r}")

    def _active_task(self, session: Session | None) -> bool:
        tasks = self.store.tasks(session.task_ids[-1:]) if session else []
        return bool(tasks) and not tasks[-1].state.finished

    def start_from_label(self, event: ForgeEvent) -> str:
        """The label is consumed under the issue's lock: whoever sees it first (webhook or poller)
        starts the task and removes it; everyone after finds it gone and starts nothing."""
        todo = self.settings.label("todo")
        with self.store.issue_lock(event.issue):
            issue = self.client.get_issue(event.issue)
            if todo not in issue.labels:
                return f"ignored: {todo} is no longer on the issue"
            session = self.store.session(event.issue)
            if self._active_task(session):
                self.client.remove_label(event.issue, todo)
                return "ignored: the issue already has a task in progress"
            message = f"{issue.title}\n\n{issue.body}".strip()
            task = self.store.new_task(event.issue, forge=event.forge, action=TaskAction.START,
                                       message=message, requested_by=event.sender)
            session = session or Session(issue=str(event.issue), forge=event.forge)
            session.title = issue.title
            session.task_ids.append(task.id)
            self.store.save_session(session)
            try:
                self.report_queued(event.issue, session, issue)
            finally:
                # Queued even when the forge would not take the report: the work is never lost, and the
                # runner (which starts after this, so it sees the status comment id) reports again.
                queue.enqueue_agent_run(self.conn, task.id, max_agents=self.settings.max_concurrent_agents,
                                        task_timeout=self.settings.task_timeout)
        return f"queued task {task.id}"

    def report_queued(self, ref: IssueRef, session: Session, issue: IssueInfo) -> None:
        Reporter(self.client, self.settings).report(ref, session, self.store.tasks(session.task_ids),
                                                    labels=issue.labels)
        self.store.save_session(session)
