"""Intake against the fake forge (real HTTP, real Redis): who may trigger, and what each command does.

Events are built the way the forge sends them (the fake's webhook payloads, through our own parser) and handed
to Intake directly; agent runs are only queued here — the end-to-end tests run them."""
from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from fakeforge.server import FakeForge
from fakeforge.state import Comment
from rq import Queue

from forge_bridge.store import queue
from forge_bridge.config import settings_from_dict
from forge_bridge.forges import make_client
from forge_bridge.intake.handler import Intake
from forge_bridge.models import ForgeEvent, ForgeKind, Session, TaskAction, TaskState
from forge_bridge.refs import parse_issue_ref
from forge_bridge.work.report import STATUS_MARKER
from forge_bridge.store.sessions import Store
from forge_bridge.intake.webhooks import DeliveryHeaders, parse_delivery


def make_intake(forge: FakeForge, redis_url: str, data_dir, **top) -> Intake:
    raw = {"redis_url": redis_url, "data_dir": str(data_dir), **top,
           "forges": [{"name": forge.kind, "kind": forge.kind, "url": forge.url, "token_env": "T",
                       "write_interval": 0, "bot_login": forge.bot_login}],
           "repos": [{"forge": forge.kind, "name": "alice/*"}]}
    settings = settings_from_dict(raw, source="test.toml", environ={"T": forge.token})
    conn = queue.connect(redis_url)
    return Intake(settings, Store(conn), make_client(settings.forge(forge.kind)),
                  queue.Scheduler(conn, settings.max_concurrent_agents, settings.task_timeout))


def as_event(forge: FakeForge, delivery: tuple[str, str, dict]) -> ForgeEvent:
    event, event_type, payload = delivery
    headers = DeliveryHeaders(kind=ForgeKind(forge.kind), event=event, event_type=event_type, delivery=uuid.uuid4().hex,
                              signature="")
    return parse_delivery(headers, json.dumps(payload).encode(), forge=forge.kind, host=forge.host)


@pytest.fixture
def world(forge, redis_url, tmp_path):
    repo = forge.create_repo("alice", "widgets")
    issue = forge.create_issue(repo, "Fix the emoji names", "They break.")
    return forge, repo, issue, make_intake(forge, redis_url, tmp_path / "data")


def comment(world, body: str, author: str = "alice", number: int | None = None) -> str:
    forge, repo, issue, intake = world
    target = repo.issues[number] if number else issue
    made: Comment = forge.state.add_comment(repo, target.number, body, author)
    return intake.handle(as_event(forge, forge.face.comment_payload(forge, repo, target, made)))


def tasks(intake: Intake, issue_number: int = 1) -> list:
    session = intake.store.session(f"{intake.settings.forges[0].host}/alice/widgets#{issue_number}")
    return intake.store.tasks(session.task_ids) if session else []


def bot_comments(world) -> list[str]:
    forge, repo, issue, _ = world
    return [c.body for c in forge.state.issue_comments(repo, issue.number)
            if c.author == forge.bot_login and STATUS_MARKER not in c.body]


def agent_jobs(intake: Intake) -> int:
    return Queue(queue.AGENTS_QUEUE, connection=intake.scheduler.conn).count


def test_start_command_queues_a_task_with_the_issue_and_the_message(world):
    forge, repo, issue, intake = world
    assert comment(world, "/kugetsu start and add tests").startswith("queued task")
    [task] = tasks(intake)
    assert task.action is TaskAction.START and task.requested_by == "alice"
    assert task.message == "Fix the emoji names\n\nThey break.\n\nand add tests"
    assert forge.labels_of(repo, issue) == ["kugetsu:queued"] and agent_jobs(intake) == 1
    assert any(STATUS_MARKER in body for body in forge.comments_of(repo, issue))


def test_people_without_write_access_get_one_short_reply_and_no_task(world):
    forge, repo, issue, intake = world
    repo.permissions["bob"] = "read"
    assert comment(world, "/kugetsu start", author="bob").startswith("denied")
    assert comment(world, "/kugetsu start please", author="bob").startswith("denied")
    assert comment(world, "/kugetsu start", author="mallory").startswith("denied")  # not a collaborator at all
    assert tasks(intake) == [] and agent_jobs(intake) == 0
    [reply] = bot_comments(world)
    assert reply.startswith("@bob") and "write access" in reply


@pytest.mark.parametrize("role", ["write", "maintain", "admin"])
def test_write_maintain_and_admin_may_trigger(world, role):
    forge, repo, issue, intake = world
    repo.permissions["carol"] = role
    assert comment(world, "/kugetsu start", author="carol").startswith("queued task")


def test_allow_users_overrides_permission(forge, redis_url, tmp_path):
    repo = forge.create_repo("alice", "widgets")
    issue = forge.create_issue(repo, "T", "B")
    intake = make_intake(forge, redis_url, tmp_path, allow_users=["dave"])
    assert comment((forge, repo, issue, intake), "/kugetsu start", author="dave").startswith("queued task")


def test_permission_answers_are_cached(world):
    forge, repo, issue, intake = world
    comment(world, "/kugetsu status")
    comment(world, "/kugetsu status")
    asked = [e for e in forge.exchanges if e.path.endswith("/collaborators/alice/permission")]
    assert len(asked) == 1


def test_the_bridge_never_triggers_itself(world):
    forge, repo, issue, intake = world
    assert comment(world, "/kugetsu start", author=forge.bot_login).startswith("ignored")
    assert tasks(intake) == []


def test_mention_continues_a_session_or_starts_one(world):
    forge, repo, issue, intake = world
    comment(world, "@kugetsu-bot make it faster")
    comment(world, "@kugetsu-bot and document it")
    first, second = tasks(intake)
    assert (first.action, second.action) == (TaskAction.START, TaskAction.CONTINUE)
    assert second.message == "and document it"


def test_comments_on_the_bridges_pull_request_continue_its_issue(world):
    forge, repo, issue, intake = world
    subprocess.run(["git", "-C", str(repo.bare), "branch", "kugetsu/1-fix", "main"], check=True)
    pull = forge.state.create_pull(repo, title="Fix", body="Closes #1", head="kugetsu/1-fix", base="main",
                                   author=forge.bot_login)
    assert comment(world, "looks good @kugetsu-bot but rename x", number=pull.number) == \
        "ignored: not a pull request the bridge opened"
    intake.store.link_pull(repo_ref(intake), pull.number, f"{forge.host}/alice/widgets#1")
    comment(world, "/kugetsu start")
    comment(world, "looks good @kugetsu-bot but rename x", number=pull.number)
    comment(world, "no mention here", number=pull.number)
    start, follow_up = tasks(intake)
    assert follow_up.action is TaskAction.CONTINUE and follow_up.message == "looks good @kugetsu-bot but rename x"


def repo_ref(intake: Intake):
    from forge_bridge.models import RepoRef

    return RepoRef(intake.settings.forges[0].host, "alice", "widgets")


def test_stop_cancels_a_queued_task(world):
    forge, repo, issue, intake = world
    comment(world, "/kugetsu start")
    assert comment(world, "/kugetsu stop").startswith("cancelling task")
    [task] = tasks(intake)
    assert task.state is TaskState.CANCELLED and agent_jobs(intake) == 0
    assert intake.store.cancel_requested(task.id)
    assert forge.labels_of(repo, issue) == ["kugetsu:failed"]


def test_stop_retry_status_without_work_are_explained(world):
    assert comment(world, "/kugetsu stop") == "ignored: nothing to stop"
    assert comment(world, "/kugetsu retry") == "ignored: nothing to retry"
    assert comment(world, "/kugetsu status") == "ignored: no session"
    replies = bot_comments(world)
    assert "Nothing to stop" in replies[0] and "Nothing to retry" in replies[1] and "No agent" in replies[2]


def test_retry_runs_the_last_failed_task_again(world):
    forge, repo, issue, intake = world
    comment(world, "/kugetsu start carefully")
    [first] = tasks(intake)
    first.state = TaskState.FAILED
    intake.store.save_task(first)
    assert comment(world, "/kugetsu retry").startswith("queued task")
    again = tasks(intake)[-1]
    assert again.id != first.id and again.message == first.message and again.action is first.action


def test_status_refreshes_the_status_comment_in_place(world):
    forge, repo, issue, intake = world
    comment(world, "/kugetsu start")
    status_before = [c for c in forge.state.issue_comments(repo, issue.number) if STATUS_MARKER in c.body]
    forge.state.comments[status_before[0].id].body = f"{STATUS_MARKER}\nedited by hand"
    assert comment(world, "/kugetsu status") == "status refreshed"
    [status] = [c for c in forge.state.issue_comments(repo, issue.number) if STATUS_MARKER in c.body]
    assert status.id == status_before[0].id and "edited by hand" not in status.body


def test_help_and_unknown_verbs_are_answered(world):
    assert comment(world, "/kugetsu help") == "answered"
    assert comment(world, "/kugetsu stpo") == "answered"
    help_text, unknown = bot_comments(world)
    assert "/kugetsu destroy [--force]" in help_text and "Did you mean `/kugetsu stop`?" in unknown


def test_destroy_refuses_with_an_open_pull_request_unless_forced(world):
    forge, repo, issue, intake = world
    data_dir = intake.settings.data_dir
    ref = f"{forge.host}/alice/widgets#1"
    worktree = data_dir / "worktrees" / f"127.0.0.1_{forge.port}-alice-widgets-1"
    worktree.mkdir(parents=True)
    subprocess.run(["git", "-C", str(repo.bare), "branch", "kugetsu/1-fix", "main"], check=True)
    pull = forge.state.create_pull(repo, title="Fix", body="", head="kugetsu/1-fix", base="main", author="x")
    intake.store.save_session(Session(issue=ref, forge=forge.kind, worktree=str(worktree),
                                      pull_request_number=pull.number))
    comment(world, "/kugetsu destroy")
    assert worktree.exists() and f"pull request #{pull.number} is still open" in bot_comments(world)[-1]
    comment(world, "/kugetsu destroy --force")
    assert not worktree.exists() and intake.store.session(ref).archived


def test_bots_trigger_only_when_listed(github, redis_url, tmp_path):
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "T", "B")
    repo.permissions["renovate[bot]"] = "write"
    strict = (github, repo, issue, make_intake(github, redis_url, tmp_path))
    assert comment(strict, "/kugetsu start", author="renovate[bot]") == \
        "ignored: bot 'renovate[bot]' is not in allow_bots"
    allowed = (github, repo, issue, make_intake(github, redis_url, tmp_path, allow_bots=["renovate[bot]"]))
    assert comment(allowed, "/kugetsu start", author="renovate[bot]").startswith("queued task")


def test_a_review_requesting_changes_continues_the_issue(world):
    from forge_bridge.models import EventKind, IssueRef

    forge, repo, issue, intake = world
    comment(world, "/kugetsu start")
    subprocess.run(["git", "-C", str(repo.bare), "branch", "kugetsu/1-fix", "main"], check=True)
    pull = forge.state.create_pull(repo, title="Fix", body="", head="kugetsu/1-fix", base="main", author="x")
    intake.store.link_pull(repo_ref(intake), pull.number, f"{forge.host}/alice/widgets#1")
    submitted = forge.state.add_review(pull, author="alice", state="CHANGES_REQUESTED",
                                       body="Please handle the empty case.", comments=[])
    review = ForgeEvent(forge=forge.kind, kind=EventKind.REVIEW, issue=IssueRef(repo_ref(intake), pull.number),
                        sender="alice", is_pull=True, comment_body="Please handle the empty case.",
                        comment_id=submitted.id if forge.kind == "github" else 0, review_state="changes_requested")
    assert intake.handle(review).startswith("queued task")
    assert tasks(intake)[-1].action is TaskAction.CONTINUE
    assert tasks(intake)[-1].message == ("A review of the pull request by @alice requests changes.\n\n"
                                         "Please handle the empty case.")
    assert intake.handle(review) == f"ignored: review {submitted.id} was taken already"   # the same review again


def _status(forge, repo, issue):
    return [c for c in forge.state.issue_comments(repo, issue.number) if STATUS_MARKER in c.body]


def test_accepted_commands_get_an_eyes_reaction(world):
    forge, repo, issue, intake = world
    comment(world, "/kugetsu start")
    repo.permissions["bob"] = "read"
    comment(world, "/kugetsu start", author="bob")
    command, denied = [c for c in forge.state.issue_comments(repo, issue.number) if c.body == "/kugetsu start"]
    assert command.reactions == [(forge.bot_login, "eyes")] and denied.reactions == []


def test_the_status_comment_is_written_only_when_its_text_changes(world):
    forge, repo, issue, intake = world
    comment(world, "/kugetsu start")
    session = intake.store.session(f"{forge.host}/alice/widgets#1")
    edits = lambda: sum(1 for e in forge.exchanges if e.method == "PATCH")  # noqa: E731
    before = edits()
    intake.report(parse_issue_ref(session.issue), session, ())   # nothing changed: nothing is written
    assert edits() == before
    [task] = tasks(intake)
    task.state = TaskState.RUNNING
    intake.store.save_task(task)
    comment(world, "/kugetsu status")
    assert edits() == before + 1 and "running" in _status(forge, repo, issue)[0].body


def test_a_deleted_status_comment_is_written_again(world):
    forge, repo, issue, intake = world
    comment(world, "/kugetsu start")
    [old] = _status(forge, repo, issue)
    del forge.state.comments[old.id]
    comment(world, "/kugetsu status")
    [new] = _status(forge, repo, issue)
    assert new.id != old.id and "queued" in new.body


def test_a_label_set_by_a_person_is_kept(world):
    forge, repo, issue, intake = world
    forge.state.set_label(repo, issue, "needs-design", actor="alice", added=True)
    comment(world, "/kugetsu start")
    [task] = tasks(intake)
    task.state = TaskState.FAILED
    intake.store.save_task(task)
    comment(world, "/kugetsu status")
    assert sorted(forge.labels_of(repo, issue)) == ["kugetsu:failed", "needs-design"]


def test_garbage_collection_removes_only_unowned_worktrees(world):
    from forge_bridge.work.lifecycle import collect_garbage

    forge, repo, issue, intake = world
    root, homes = intake.settings.data_dir / "worktrees", intake.settings.data_dir / "homes"
    owned, running, stray = root / "owned", root / "running", root / "stray"
    for path in (owned, running, stray, homes / "owned", homes / "stray", homes / "stray.new"):
        path.mkdir(parents=True)
    intake.store.save_session(Session(issue=f"{forge.host}/alice/widgets#1", forge=forge.kind,
                                      worktree=str(owned.resolve())))
    comment(world, "/kugetsu start")  # issue 2 below holds `running` with a queued task, though archived
    second = forge.create_issue(repo, "other", "")
    task = intake.store.new_task(parse_issue_ref(f"{forge.host}/alice/widgets#{second.number}"), forge=forge.kind,
                                 action=TaskAction.START, message="m", requested_by="alice")
    intake.store.save_session(Session(issue=f"{forge.host}/alice/widgets#{second.number}", forge=forge.kind,
                                      worktree=str(running.resolve()), task_ids=[task.id], archived=True))
    assert collect_garbage(intake.settings, intake.store) == [stray, homes / "stray", homes / "stray.new"]
    assert owned.exists() and running.exists() and not stray.exists()
    assert [path.name for path in homes.iterdir()] == ["owned"]   # an issue's own HOME goes with its worktree


def test_garbage_collection_keeps_this_hosts_copy_of_a_worktree_another_host_ran_last(world, tmp_path):
    """With several hosts, a live session names the worktree of the host that ran its last task: this host's
    copy of the issue's worktree is kept all the same (its next task may run here)."""
    from forge_bridge.work.lifecycle import collect_garbage
    from forge_bridge.workspace import worktrees

    forge, repo, issue, intake = world
    ref = parse_issue_ref(f"{forge.host}/alice/widgets#1")
    here = worktrees.worktree_dir(intake.settings.data_dir, ref)
    here.mkdir(parents=True)
    intake.store.save_session(Session(issue=str(ref), forge=forge.kind,
                                      worktree=str(tmp_path / "other-host" / "worktrees" / here.name)))
    assert collect_garbage(intake.settings, intake.store) == [] and here.is_dir()


def test_one_event_makes_at_most_one_task_when_a_later_step_fails_and_the_job_runs_again(world):
    from forge_bridge.forges import ForgeError

    forge, repo, issue, intake = world
    repo.permissions["alice"] = "write"
    made: Comment = forge.state.add_comment(repo, issue.number, "/kugetsu start please", "alice")
    event = as_event(forge, forge.face.comment_payload(forge, repo, issue, made))
    forge.fail_next(20, 500, path="/comments", method="POST")   # the status comment cannot be written
    with pytest.raises(ForgeError):
        intake.handle(event)
    forge.faults.clear()
    intake.handle(event)   # RQ runs the event job again
    assert len(tasks(intake)) == 1
    assert Queue(queue.AGENTS_QUEUE, connection=intake.store.conn).count + \
        len(intake.scheduler.waiting(str(tasks(intake)[0].issue))) >= 1
