"""The program's own types — repository and issue refs, normalized forge events, tasks, sessions; no I/O."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum

# A path segment we accept from a forge: it becomes part of a directory name under data_dir,
# so it can never be empty, "." or "..", nor hold a slash, a NUL or a leading dot/dash.
SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")
HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}(:[0-9]{1,5})?$")


class InvalidRef(ValueError):
    """A repository or issue reference that is malformed or could name a path outside data_dir."""


class ForgeKind(StrEnum):
    GITHUB = "github"
    GITEA = "gitea"
    FORGEJO = "forgejo"
    GITLAB = "gitlab"


class EventKind(StrEnum):
    LABELS_CHANGED = "labels_changed"   # label set now known; `label` says which was added (GitHub)
    COMMENT = "comment"
    REVIEW = "review"
    PULL_CLOSED = "pull_closed"
    ISSUE_CLOSED = "issue_closed"


class TaskAction(StrEnum):
    START = "start"
    CONTINUE = "continue"


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (TaskState.QUEUED, TaskState.RUNNING)


def _check_segment(value: str, what: str) -> str:
    if not isinstance(value, str) or not SEGMENT_RE.match(value) or ".." in value:
        raise InvalidRef(f"invalid {what}: {value!r}")
    return value


# GitLab numbers merge requests apart from issues (issue 3 and merge request !3 both exist). Inside the bridge a
# merge request's number is its iid above this base, so one number names one thing everywhere (sessions, links,
# events); the GitLab client and parser add and remove it. GitHub's and Gitea's numbers stay far below it.
MERGE_REQUEST_BASE = 1_000_000_000


def is_merge_request(number: int) -> bool:
    return number > MERGE_REQUEST_BASE


def forge_number(number: int) -> int:
    """The number as the forge writes it: a merge request's iid, or the issue's (pull request's) number."""
    return number - MERGE_REQUEST_BASE if is_merge_request(number) else number


def bridge_number(number: int, *, merge_request: bool) -> int:
    """The forge's number as the bridge keeps it; raises InvalidRef for a merge request's iid it cannot hold."""
    if not merge_request:
        return number
    if not 0 < number < MERGE_REQUEST_BASE:
        raise InvalidRef(f"invalid merge request number: {number}")
    return MERGE_REQUEST_BASE + number


def shown_number(number: int) -> str:
    """`#7` for an issue or pull request, `!7` for a GitLab merge request, as the forge writes them."""
    return f"!{forge_number(number)}" if is_merge_request(number) else f"#{number}"


MAX_NAMESPACE_DEPTH = 20   # GitLab's groups nest at most 20 deep


def _check_namespace(value: str) -> str:
    """An owner: a user or organization, or (GitLab) a group path `group/sub/…`, each part a safe segment."""
    if not isinstance(value, str) or not 0 < value.count("/") + 1 <= MAX_NAMESPACE_DEPTH:
        raise InvalidRef(f"invalid owner: {value!r}")
    for part in value.split("/"):
        _check_segment(part, "owner")
    return value


@dataclass(frozen=True, order=True)
class RepoRef:
    host: str
    owner: str
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not HOST_RE.match(self.host) or ".." in self.host:
            raise InvalidRef(f"invalid host: {self.host!r}")
        _check_namespace(self.owner)
        _check_segment(self.name, "repository name")

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def dir_name(self) -> str:
        """A file-system-safe name, one path component: a host's port is kept as `_port` (`127.0.0.1_3000`), a
        group path's slashes as `+` (no segment may hold one, so no two repositories share a name)."""
        return f"{self.host.replace(':', '_')}-{self.owner.replace('/', '+')}-{self.name}"

    def __str__(self) -> str:
        return f"{self.host}/{self.full_name}"


@dataclass(frozen=True, order=True)
class IssueRef:
    repo: RepoRef
    number: int

    def __post_init__(self) -> None:
        if not isinstance(self.number, int) or isinstance(self.number, bool) or not 0 < self.number < 2**31:
            raise InvalidRef(f"invalid issue number: {self.number!r}")

    @property
    def dir_name(self) -> str:
        return f"{self.repo.dir_name}-{self.number}"

    def __str__(self) -> str:
        return f"{self.repo}{shown_number(self.number)}"

    @classmethod
    def from_str(cls, text: str) -> IssueRef:
        """The ref as `str()` wrote it (`host/owner/repo#N`, `…!M` for a merge request), read back from storage;
        every part checked again. (Refs as people write them are refs.parse_issue_ref's job.)"""
        mark = "!" if "!" in text else "#"
        repo, _, number = text.rpartition(mark)
        parts = repo.split("/")
        if len(parts) < 3 or not number.isdigit():
            raise InvalidRef(f"not a stored issue ref: {text!r}")
        return cls(RepoRef(parts[0].lower(), "/".join(parts[1:-1]), parts[-1]),
                   bridge_number(int(number), merge_request=mark == "!"))


CI_SENDER = "ci"   # who a CI round's task is "asked by": no person, so never credited nor asked to review
FAILING_CONCLUSIONS = ("failure", "timed_out", "action_required", "startup_failure")   # GitHub checks that failed


@dataclass(frozen=True)
class FailedCheck:
    name: str
    conclusion: str                # failure, error, timed_out…
    summary: str = ""
    url: str = ""


@dataclass(frozen=True)
class CheckFailed:
    """A check on a commit failed (GitHub check suites and statuses, Gitea and Forgejo statuses): the forge's
    own event, about a head commit rather than an issue."""
    forge: str
    repo: str                      # canonical host/owner/name
    sha: str
    delivery: str = ""
    branch: str = ""
    suite_id: int = 0              # GitHub: the suite whose failed runs to list
    checks: tuple[FailedCheck, ...] = ()
    updated_at: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> CheckFailed:
        data = json.loads(text)
        data["checks"] = tuple(FailedCheck(**check) for check in data.get("checks", []))
        return cls(**data)


@dataclass(frozen=True)
class ForgeEvent:
    """One thing that happened on a forge, the same whether a webhook or the poller saw it."""

    forge: str                     # configured forge name
    kind: EventKind
    issue: IssueRef
    sender: str
    delivery: str = ""             # webhook delivery id; "" from the poller
    source: str = "webhook"        # webhook | poller | cli
    action: str = ""               # the forge's own action word, kept for logs
    sender_is_bot: bool = False
    labels: tuple[str, ...] = ()   # the issue's whole label set after the event
    label: str = ""                # the label this event added, when the forge says so
    added: tuple[str, ...] = ()    # the labels this event added, when the forge lists several (GitLab)
    title: str = ""
    body: str = ""
    comment_id: int = 0
    comment_body: str = ""
    is_pull: bool = False
    merged: bool = False
    head_branch: str = ""
    updated_at: str = ""           # the forge's own timestamp of the change; part of the event's meaning
    review_state: str = ""         # a review's verdict: changes_requested | approved | commented ("" unknown yet)

    def to_json(self) -> str:
        # Its fields are flat (asdict would walk and deep-copy each one: a quarter of the webhook's own time).
        return json.dumps({**vars(self), "issue": str(self.issue)})

    @classmethod
    def from_json(cls, text: str) -> ForgeEvent:
        data = json.loads(text)
        data["issue"] = IssueRef.from_str(data["issue"])
        data["kind"] = EventKind(data["kind"])
        data["labels"] = tuple(data["labels"])
        data["added"] = tuple(data.get("added", ()))
        return cls(**data)


@dataclass
class Task:
    """One agent run for one issue."""

    id: str
    issue: str                     # canonical issue ref
    forge: str
    action: TaskAction
    message: str
    requested_by: str
    state: TaskState = TaskState.QUEUED
    queued_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    outcome: str = ""              # one line: why it ended as it did
    commits: int = 0
    summary: str = ""
    host: str = ""                 # where the agent runs, and its process group, to reap what a dead worker left
    agent_pid: int = 0
    cost_usd: float = 0.0          # what the agent says the run cost, when it says
    tokens: int = 0
    turns: int = 0
    session_note: str = ""         # why the run began a new agent session instead of resuming ("" when it did not)
    setup_note: str = ""           # how long the run waited for the repository's setup script ("" when it did not)
    mode: str = ""                 # "plan": the agent only plans, read-only; its answer is posted, nothing pushed

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Task:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        task = cls(**{k: v for k, v in data.items() if k in known})
        return replace(task, action=TaskAction(task.action), state=TaskState(task.state))

    @property
    def duration(self) -> float:
        if not self.started_at:
            return 0.0
        return max(0.0, (self.finished_at or self.started_at) - self.started_at)


@dataclass
class Session:
    """What the bridge keeps per issue: where its work lives and what came of it."""

    issue: str
    forge: str
    worktree: str = ""
    branch: str = ""
    agent_session_id: str = ""
    agent: str = ""                # the preset that made agent_session_id, and the host it lives on: a session
    agent_host: str = ""           # is resumed only by the same agent on the same host
    agent_totals: dict[str, float] = field(default_factory=dict)   # the CLI's running totals (cost, tokens) so
                                   # far in agent_session_id, for CLIs that report those on a resume
    pull_request_url: str = ""
    pull_request_number: int = 0
    pull_request_draft: bool = False   # opened as a draft for partial work; made ready by the next success
    status_comment_id: int = 0
    status_digest: str = ""        # of the status comment's last text, so an unchanged status is not rewritten
    task_ids: list[str] = field(default_factory=list)
    title: str = ""
    archived: bool = False
    merged: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Session:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class InstallationChange:
    """What a GitHub App can reach changed: repositories added to or removed from one installation."""
    installation: int
    account: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    gone: bool            # the whole installation was deleted or suspended: all its repositories are out of reach
