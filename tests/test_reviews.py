"""Reviews are read whole: a review on the bridge's pull request is one `continue` whose message carries every
inline comment with its file, line and the end of its diff hunk — through `serve`, the fake forges' review
endpoints and webhooks (from GitHub's and Gitea's published descriptions) and the fake agent, which commits
each prompt it is given."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import wait_for

from forge_bridge.config import settings_from_dict
from forge_bridge.forges import make_client
from forge_bridge.forges.base import ReviewCommentInfo, ReviewInfo, line_from_hunk
from forge_bridge.intake.reviews import HUNK_LINES, MAX_COMMENTS, asks_for_work, review_message
from forge_bridge.models import IssueRef, RepoRef
from forge_bridge.store.sessions import Store

sys.path.insert(0, str(Path(__file__).parent))
from test_end_to_end import BODY, TITLE, _branch_file, _settled  # noqa: E402

HUNK = "@@ -10,3 +10,4 @@ def list_names():\n     names = []\n     for row in rows:\n+        names.append(row)\n     return names"
THREE = [
    {"path": "src/names.py", "line": 13, "hunk": HUNK, "body": "Return a sorted list here."},
    {"path": "src/names.py", "line": 13, "hunk": HUNK, "body": "And skip empty rows."},
    {"path": "README.md", "line": 2, "hunk": "@@ -1,1 +1,2 @@\n # widgets\n+Lists names.", "body": "Say how."},
]


# What the message says, without a forge
def _review(state="changes_requested", body=""):
    return ReviewInfo(id=1, author="alice", state=state, body=body)


def _inline(body="fix", line=12, start=0, hunk=HUNK, path="a.py", id_=1):
    return ReviewCommentInfo(id=id_, path=path, line=line, start_line=start, diff_hunk=hunk, body=body)


@pytest.mark.parametrize("review, comments, asks", [
    (_review(), [], True),
    (_review("approved"), [_inline()], False),
    (_review("approved", "LGTM @kugetsu-bot, also bump the version"), [], True),
    (_review("commented"), [_inline("@kugetsu-bot rename this")], True),
    (_review("commented"), [_inline("nice")], False),
    (_review("commented"), [_inline("mail kugetsu-bot@example.com")], False),
])
def test_a_review_asks_for_work_when_it_requests_changes_or_mentions_the_bot(review, comments, asks):
    assert asks_for_work(review, comments, "kugetsu-bot") is asks


def test_the_message_has_every_inline_comment_with_its_place_and_code_in_order():
    message = review_message(_review(body="Two things."), [
        _inline("first", line=13, path="src/names.py"), _inline("second", line=7, start=5, path="b.py"),
        _inline("third", line=0, path="c.py")])
    assert message.index("first") < message.index("second") < message.index("third")
    assert "@alice requests changes" in message and "Two things." in message and "3 inline comments" in message
    assert "1. `src/names.py` line 13:" in message and "2. `b.py` lines 5–7:" in message
    assert "3. `c.py` (on lines that have since changed):" in message
    assert "+        names.append(row)" in message and "```diff" in message


def test_the_message_stays_bounded():
    long_hunk = "@@ -1,40 +1,41 @@\n" + "\n".join(f" line {n}" for n in range(40)) + "\n+the commented line"
    fence_inside = _inline("see", hunk="@@ -1 +1 @@\n+```\n+code")
    message = review_message(_review(), [_inline("x", hunk=long_hunk), fence_inside,
                                         *[_inline(f"c{n}") for n in range(MAX_COMMENTS + 10)]])
    assert "line 0\n" not in message and "line 39" in message and "+the commented line" in message
    assert message.count(" line ") - message.count("`a.py` line ") <= HUNK_LINES + 1
    assert "````diff\n@@ -1 +1 @@\n+```\n+code\n````" in message          # a fence the hunk cannot close
    assert "(12 more inline comments left out" in message and "c47" in message and "c48" not in message


@pytest.mark.parametrize("hunk, line", [(HUNK, 13), ("@@ -1 +1 @@\n-old\n+new", 1), ("@@ -5,2 +7,1 @@\n a\n-b", 7),
                                        ("no header", 0)])
def test_the_line_of_a_comment_is_read_from_its_hunk(hunk, line):
    assert line_from_hunk(hunk) == line


# The forge clients against the fake forges' review endpoints
def test_the_clients_read_a_review_and_its_comments_and_react(forge):
    repo = forge.create_repo("alice", "widgets")
    pull = forge.state.create_pull(repo, title="t", body="", head="main", base="main", author=forge.bot_login)
    review = forge.state.add_review(pull, author="alice", state="COMMENTED", body="hm", comments=THREE[:2])
    settings = settings_from_dict({"forges": [{"name": "f", "kind": forge.kind, "url": forge.url, "token_env": "T",
                                               "write_interval": 0}]}, source="t", environ={"T": forge.token})
    client = make_client(settings.forge("f"))
    ref = RepoRef(forge.host, "alice", "widgets")

    by_id = client.review(ref, pull.number, review.id if forge.kind == "github" else 0, author="alice",
                          state="commented")
    assert by_id == ReviewInfo(id=review.id, author="alice", state="commented", body="hm")
    comments = client.review_comments(ref, pull.number, review.id)
    assert [(c.path, c.line, c.body) for c in comments] == [("src/names.py", 13, "Return a sorted list here."),
                                                            ("src/names.py", 13, "And skip empty rows.")]
    assert comments[0].diff_hunk == HUNK
    client.add_review_comment_reaction(IssueRef(ref, pull.number), comments[1].id, "eyes")
    assert forge.state.review_comments[comments[1].id].reactions == [(forge.bot_login, "eyes")]
    assert forge.violations == []


# End to end through serve
def _pull_after_a_first_run(forge, start_bridge, **kwargs):
    """The bridge's pull request after the issue's first run (`kwargs` go to start_bridge)."""
    repo = forge.create_repo("alice", "widgets")
    repo.permissions["bob"] = "read"
    issue = forge.create_issue(repo, TITLE, BODY)
    bridge = start_bridge([forge], **kwargs)
    forge.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: _settled(forge, repo, issue, "kugetsu:review"), timeout=90, what="the pull request")
    [pull] = repo.pulls.values()
    return bridge, repo, issue, pull


def _tasks(bridge, forge, issue) -> list:
    store = Store(bridge.redis)
    return store.tasks(store.session(f"127.0.0.1:{forge.port}/alice/widgets#{issue.number}").task_ids)


def _all_done(bridge, forge, issue, count: int) -> bool:
    tasks = _tasks(bridge, forge, issue)
    return len(tasks) >= count and all(t.state.finished for t in tasks)


def test_github_a_review_is_one_run_with_all_its_comments(github, start_bridge):
    bridge, repo, issue, pull = _pull_after_a_first_run(github, start_bridge)

    github.review(repo, pull, state="APPROVED", body="Looks good.", comments=[THREE[0]])        # approving: none
    github.review(repo, pull, author="bob", state="CHANGES_REQUESTED", body="No.", comments=THREE)  # a reader: none
    github.review(repo, pull, state="CHANGES_REQUESTED", body="", comments=THREE)               # one task

    wait_for(lambda: _all_done(bridge, github, issue, 2), timeout=90, what="the review's run")
    work = _branch_file(repo, pull.head, "AGENT_WORK.md")
    assert "A review of the pull request by @alice requests changes." in work
    assert "1. `src/names.py` line 13:" in work and "Return a sorted list here." in work
    assert "2. `src/names.py` line 13:" in work and "And skip empty rows." in work
    assert "3. `README.md` line 2:" in work and "+Lists names." in work and "+        names.append(row)" in work
    requested = [r for r in pull.reviews if r.author == "alice" and r.state == "CHANGES_REQUESTED"][0]
    assert all(c.reactions == [(github.bot_login, "eyes")] for c in requested.comments)
    assert all(not c.reactions for r in pull.reviews if r is not requested for c in r.comments)
    assert "No." not in work and "Looks good." not in work

    mention = {**THREE[2], "body": f"@{github.bot_login} please also add a test"}
    github.review(repo, pull, state="COMMENTED", comments=[mention])   # a one-comment review that mentions the bot
    wait_for(lambda: _all_done(bridge, github, issue, 3), timeout=90, what="the mention's run")
    assert "please also add a test" in _branch_file(repo, pull.head, "AGENT_WORK.md")
    assert [t.action.value for t in _tasks(bridge, github, issue)] == ["start", "continue", "continue"]
    assert github.violations == []


def test_gitea_a_rejecting_review_is_one_run_with_its_comments(gitea, start_bridge):
    bridge, repo, issue, pull = _pull_after_a_first_run(gitea, start_bridge)

    [answer] = gitea.review(repo, pull, state="CHANGES_REQUESTED", body="Please fix.", comments=THREE[:2])

    assert answer.status_code == 202, answer.text
    wait_for(lambda: _all_done(bridge, gitea, issue, 2), timeout=90, what="the review's run")
    work = _branch_file(repo, pull.head, "AGENT_WORK.md")
    assert "Please fix." in work and "Return a sorted list here." in work and "And skip empty rows." in work
    assert "2 inline comments" in work and "`src/names.py` line 13" in work
    assert len(_tasks(bridge, gitea, issue)) == 2
    assert gitea.violations == []


def test_a_redelivered_review_is_one_task(github, start_bridge):
    bridge, repo, issue, pull = _pull_after_a_first_run(github, start_bridge)
    review = github.state.add_review(pull, author="alice", state="CHANGES_REQUESTED", body="Again?", comments=[])
    [(event, event_type, payload)] = github.face.review_payloads(github, repo, pull, review)
    for delivery in ("first", "redelivered-as-new"):   # GitHub's redelivery keeps its id; a replay may not
        [answer] = github.deliver(event, event_type, payload, delivery=delivery)
        assert answer.status_code in (200, 202), answer.text
    github.comment(repo, repo.issues[pull.number], f"@{github.bot_login} and one more thing")   # a later message
    wait_for(lambda: "one more thing" in _branch_file(repo, pull.head, "AGENT_WORK.md"), timeout=90,
             what="the later message's run")
    wait_for(lambda: _all_done(bridge, github, issue, 2), timeout=90, what="every task to end")
    assert _branch_file(repo, pull.head, "AGENT_WORK.md").count("Again?") == 1


def test_a_review_while_the_agent_runs_waits_for_the_next_turn_merged_with_other_messages(github, start_bridge,
                                                                                          tmp_path):
    """Behind a running task, a review and a later comment are one next `continue`, in the order they came."""
    go_ahead = tmp_path / "go-ahead"
    bridge, repo, issue, pull = _pull_after_a_first_run(github, start_bridge,
                                                        agent_args=["--gate", "take your time", str(go_ahead)])
    github.comment(repo, repo.issues[pull.number], f"@{github.bot_login} take your time")
    wait_for(lambda: any(t.state.value == "running" for t in _tasks(bridge, github, issue)), timeout=60,
             what="the second run to start")
    github.review(repo, pull, state="CHANGES_REQUESTED", body="Rename it.", comments=[THREE[0]])
    github.comment(repo, repo.issues[pull.number], f"@{github.bot_login} and keep the old name as an alias")
    wait_for(lambda: len([c for c in github.comments_of(repo, repo.issues[pull.number])
                          if "queued for the next turn" in c]) == 2, timeout=30, what="both told they wait")
    go_ahead.touch()
    wait_for(lambda: _all_done(bridge, github, issue, 3), timeout=120, what="the merged turn")
    tasks = _tasks(bridge, github, issue)
    assert len(tasks) == 3   # start, the slow continue, and one turn for the review and the comment together
    merged = tasks[-1].message
    assert merged.index("Rename it.") < merged.index("Return a sorted list here.") < merged.index("old name")
    assert "kugetsu/1-fix-the-emoji-names" == pull.head and "old name" in _branch_file(repo, pull.head,
                                                                                         "AGENT_WORK.md")
