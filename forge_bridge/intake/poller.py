"""Scan polled repositories — issues carrying a trigger label, comments since a stored cursor, and (with
ci_feedback) failed checks on the bridge's pull requests — and hand over the same events webhooks produce."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

from redis import Redis
from redis.exceptions import RedisError

from forge_bridge.store import queue
from forge_bridge.intake.admission import admit_check
from forge_bridge.config import RepoConfig, Settings
from forge_bridge.forges import ForgeClient, ForgeError, IssueInfo, RepoComment
from forge_bridge.models import CheckFailed, EventKind, ForgeEvent, IssueRef, RepoRef
from forge_bridge.store.sessions import PREFIX, Store
from forge_bridge.intake.triggers import Skip, decide, meaning_key

log = logging.getLogger(__name__)
STATE_KEY = f"{PREFIX}:poller"
MAX_BACKOFF = 300.0
CURSOR_OVERLAP = timedelta(seconds=1)  # `since` is inclusive at a second's grain; meaning keys drop repeats
# Labelled issues are asked for by "changed since the last scan", but all of them this often: an issue whose
# label is still there (its intake job failed for good) is found again, never dropped.
FULL_LABEL_SCAN = timedelta(minutes=10)


def _label_event(forge: str, ref: IssueRef, issue: IssueInfo, label: str, actor: str) -> ForgeEvent:
    return ForgeEvent(forge=forge, kind=EventKind.LABELS_CHANGED, issue=ref, sender=actor, source="poller",
                      sender_is_bot=actor.endswith("[bot]"), action="polled", labels=issue.labels, label=label,
                      title=issue.title, body=issue.body)


def _comment_event(forge: str, repo: RepoRef, comment: RepoComment) -> ForgeEvent:
    return ForgeEvent(forge=forge, kind=EventKind.COMMENT, issue=IssueRef(repo, comment.number),
                      sender=comment.author, source="poller", action="polled", is_pull=comment.is_pull,
                      sender_is_bot=comment.author_is_bot or comment.author.endswith("[bot]"),
                      comment_id=comment.id, comment_body=comment.body)


class Poller:
    def __init__(self, settings: Settings, conn: Redis, client_for: Callable[[str], ForgeClient]) -> None:
        self.settings, self.conn, self.client_for = settings, conn, client_for
        self.store = Store(conn)

    def label_events(self, repo: RepoConfig, ref_repo: RepoRef) -> Iterator[ForgeEvent]:
        """Issues carrying a trigger label: `todo` (start) or `plan` (a plan only), changed since the last scan
        (a label added changes the issue; the first scan reads them all)."""
        client = self.client_for(repo.forge)
        name = f"labels:{repo.forge}:{ref_repo}"
        scanned = datetime.now(timezone.utc).replace(microsecond=0)
        since = self._labels_since(name, scanned)
        for label in (self.settings.label("todo"), self.settings.label("plan")):
            for issue in client.list_labeled_issues(ref_repo, label, since=since):
                if issue.is_pull:
                    continue
                ref = IssueRef(ref_repo, issue.number)
                # Intake decides under the issue's lock; this claim only keeps one pending job per sighting.
                if not self.store.claim(f"poll:{ref}:{label}", ttl=max(int(self.settings.poll_interval), 30)):
                    continue
                actor = client.label_actor(ref, label)  # authorized like a webhook: whoever added the label
                yield _label_event(repo.forge, ref, issue, label, actor)
        self.store.set_cursor(name, scanned.isoformat())   # only once every labelled issue was handed over
        if since is None:
            self.store.set_cursor(f"{name}:full", scanned.isoformat())

    def _labels_since(self, name: str, now: datetime) -> datetime | None:
        """Since the last scan; None (all of them) on the first scan and every FULL_LABEL_SCAN."""
        cursor, full = self.store.cursor(name), self.store.cursor(f"{name}:full")
        if cursor is None or full is None or now - datetime.fromisoformat(full) >= FULL_LABEL_SCAN:
            return None
        return datetime.fromisoformat(cursor) - CURSOR_OVERLAP

    def comment_events(self, repo: RepoConfig, ref_repo: RepoRef) -> Iterator[ForgeEvent]:
        name = f"comments:{repo.forge}:{ref_repo}"
        cursor = self.store.cursor(name)
        if cursor is None:  # the first scan starts now (forges count in whole seconds): history is not replayed
            self.store.set_cursor(name, datetime.now(timezone.utc).replace(microsecond=0).isoformat())
            return
        floor = datetime.fromisoformat(cursor)
        comments = [c for c in self.client_for(repo.forge).comments_since(ref_repo, floor - CURSOR_OVERLAP)
                    if c.created_at >= floor]
        for comment in comments:
            yield _comment_event(repo.forge, ref_repo, comment)
        if comments:
            self.store.set_cursor(name, max(c.created_at for c in comments).isoformat())

    def poll_once(self) -> int:
        """One scan of every polled repository; returns how many events were handed to intake."""
        handed = 0
        for repo in self.settings.polled_repos():
            if any(ch in repo.name for ch in "*?["):
                log.warning("poll: %s is a pattern; polling needs a concrete owner/repo", repo.name)
                continue
            owner, name = repo.name.rsplit("/", 1)
            ref_repo = RepoRef(self.settings.forge(repo.forge).host, owner, name)
            for event in [*self.label_events(repo, ref_repo), *self.comment_events(repo, ref_repo)]:
                handed += self.hand_over(event)
            if self.settings.ci_feedback:
                handed += sum(self.hand_over_check(change) for change in self.check_failures(repo, ref_repo))
        return handed

    def check_failures(self, repo: RepoConfig, ref_repo: RepoRef) -> Iterator[CheckFailed]:
        """Failed checks on the heads the bridge pushed last for its open pull requests in this repository."""
        client = self.client_for(repo.forge)
        for issue in self.store.session_ids():
            session = self.store.session(issue)
            if session is None or not session.pull_request_number or session.merged or session.archived \
                    or not issue.startswith(f"{ref_repo}#"):
                continue
            head = self.store.last_push(issue)
            if not head:
                continue
            suite_id, checks = client.failed_checks(ref_repo, head)
            if checks:
                yield CheckFailed(forge=repo.forge, repo=str(ref_repo), sha=head, delivery=f"poll-{head}",
                                  suite_id=suite_id, checks=tuple(checks))

    def hand_over_check(self, change: CheckFailed) -> int:
        """Claimed under the same meaning as the webhook's (the commit), so either brings it once."""
        return int(admit_check(self.settings, self.store, change, endpoint="poller").status == "queued")

    def hand_over(self, event: ForgeEvent) -> int:
        if isinstance(decide(event, self.settings), Skip):
            return 0
        if event.kind is EventKind.COMMENT and not self.store.claim(f"event:{meaning_key(event)}"):
            return 0  # the webhook brought it already
        queue.enqueue_event(self.conn, event.to_json())
        return 1

    def run(self, stop: threading.Event | None = None) -> None:
        """Poll every poll_interval; forge or Redis failures back off and recover by themselves."""
        stop = stop or threading.Event()
        backoff = self.settings.poll_interval
        while not stop.is_set():
            started = time.time()
            try:
                handed = self.poll_once()
                self.conn.hset(STATE_KEY, mapping={"last_run": started, "last_error": "",
                                                   "next_run": started + self.settings.poll_interval})
                backoff = self.settings.poll_interval
                log.info("poll: %d event(s) handed to intake", handed)
            except (ForgeError, RedisError, OSError) as error:
                log.warning("poll failed (%s); retrying in %.0fs", error, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            stop.wait(self.settings.poll_interval)
