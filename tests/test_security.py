"""An agent is untrusted code: a hostile agent tries every route to run code as the bridge (git config in its
worktree that lands in the shared mirror — hooks, fsmonitor, filters —, a rewritten `.git` file) or to send the
bridge's push elsewhere (pushurl, insteadOf), and none of it works: no trap runs, the capture server hears
nothing, the work reaches the forge, and the next issue of the repository runs on a clean mirror."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from flask import Flask, request
from helpers import FAKE_AGENT, SECRET, wait_for
from test_end_to_end import _settled
from werkzeug.serving import make_server

from forge_bridge.workspace.worktrees import CANONICAL_CONFIG

HOSTILE = FAKE_AGENT.parent / "hostile_agent.py"


@pytest.fixture
def capture():
    """An HTTP server that records whatever reaches it (a push sent to the wrong place)."""
    heard: list[str] = []
    app = Flask("capture")

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
    @app.route("/<path:path>", methods=["GET", "POST"])
    def anything(path):
        heard.append(f"{request.method} /{path} {request.headers.get('Authorization', '')}")
        return "", 404

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", heard
    server.shutdown()


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def test_a_hostile_agent_cannot_make_the_bridge_git_run_its_code_or_push_elsewhere(github, start_bridge, capture,
                                                                                   tmp_path):
    capture_url, heard = capture
    traps = tmp_path / "traps"
    repo = github.create_repo("alice", "widgets")
    first, second = github.create_issue(repo, "One", "x"), github.create_issue(repo, "Two", "y")
    bridge = start_bridge([github], agent={"argv": _toml_list([sys.executable, str(HOSTILE), str(traps), capture_url]),
                                           "session_id": '"none"'})

    for issue in (first, second):
        github.add_label(repo, issue, "kugetsu:todo")
        wait_for(lambda issue=issue: _settled(github, repo, issue, "kugetsu:review"), timeout=90,
                 what=f"issue {issue.number}")

    assert sorted(p.name for p in traps.glob("ran-*")) == []   # no hook, fsmonitor or filter ever ran
    seen = json.loads((traps / "seen.json").read_text())      # its parent's environment holds no secret
    [parent] = [value for key, value in seen.items() if key.startswith("environ-")]
    assert "FAKE_FORGE_TOKEN" not in parent and "fake-forge-token" not in parent and SECRET not in parent
    assert "FORGE_BRIDGE_REDIS_URL" not in parent
    assert heard == []                                        # no push went to the capture server
    assert len(repo.pulls) == 2                               # the work reached the forge itself
    for pull in repo.pulls.values():
        shown = subprocess.run(["git", "show", f"{pull.head}:AGENT_WORK.md"], cwd=repo.bare, capture_output=True,
                               text=True)
        assert shown.stdout == "an honest-looking edit\n"
    mirror = next((bridge.data_dir / "mirrors").glob("*.git"))
    assert (mirror / "config").read_text() == CANONICAL_CONFIG   # nothing the agents set survives their task
    for worktree in (bridge.data_dir / "worktrees").glob("*[0-9]"):   # each links to its own git directory
        assert (worktree / ".git").read_text() == f"gitdir: {worktree}.git\n"


def test_the_bridge_git_carries_no_inherited_secret(monkeypatch, tmp_path):
    from forge_bridge.workspace import worktrees

    monkeypatch.setenv("SOME_FORGE_TOKEN", "s3cret-token")
    env = worktrees.git_env("https://git.example.com/o/r.git", "")
    assert "SOME_FORGE_TOKEN" not in env and "s3cret-token" not in str(env)
    assert Path(env["GIT_CONFIG_GLOBAL"]) == Path("/dev/null") and env["GIT_CONFIG_NOSYSTEM"] == "1"


def test_in_the_sandbox_the_agent_sees_none_of_the_bridge(github, start_bridge, capture, tmp_path):
    from forge_bridge.agents.sandbox import bwrap_works

    if bwrap_works():
        pytest.skip(bwrap_works())   # .ci/run installs bubblewrap; a host without user namespaces cannot run it
    capture_url, heard = capture
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "One", "x")
    # The checkout (with its .venv) and the interpreter the venv links to (pyenv keeps it under the HOME the
    # sandbox hides): readable, as agent.sandbox_paths allows.
    readable = [str(Path(__file__).resolve().parents[1]), str(Path(sys.executable).resolve().parents[1])]
    data_dir = tmp_path / "bridge0" / "data"   # where start_bridge puts the first bridge's data
    traps = data_dir / "agent-home" / "traps"   # the agent's HOME: writable inside, readable here
    probes = [str(data_dir / "valkey"), str(data_dir / "logs"), str(data_dir / "mirrors"), str(Path.home())]
    bridge = start_bridge([github], agent={
        "argv": _toml_list([sys.executable, str(HOSTILE), str(traps), capture_url, *probes]),
        "session_id": '"none"', "sandbox": '"bwrap"', "sandbox_paths": _toml_list(readable)})
    assert bridge.data_dir == data_dir

    github.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:review"), timeout=90, what="the confined run")

    seen = json.loads((traps / "seen.json").read_text())
    assert seen[f"path-{data_dir / 'valkey'}"] is False and seen[f"path-{data_dir / 'logs'}"] is False
    # The bridge user's HOME is an empty tmpfs but for the way to a readable path under it
    allowed = {Path(p).relative_to(Path.home()).parts[0] for p in readable if Path(p).is_relative_to(Path.home())}
    assert seen[f"path-{Path.home()}"] is False or set(seen[f"path-{Path.home()}"]) <= allowed
    mirrors = sorted(p.name for p in (data_dir / "mirrors").iterdir() if p.suffix == ".git")
    assert seen[f"path-{data_dir / 'mirrors'}"] == mirrors       # its own repository's mirror, nothing else
    [parent] = [value for key, value in seen.items() if key.startswith("environ-")]
    assert "fake-forge-token" not in parent and SECRET not in parent
    assert sorted(p.name for p in traps.glob("ran-*")) == [] and heard == []
    [pull] = repo.pulls.values()
    assert subprocess.run(["git", "show", f"{pull.head}:AGENT_WORK.md"], cwd=repo.bare, capture_output=True,
                          text=True).stdout == "an honest-looking edit\n"


def test_a_secret_the_agent_prints_is_redacted_everywhere_it_is_shown(github, start_bridge):
    import requests

    from test_end_to_end import _status_comments

    key = "sk-live-0123456789"
    script = ("import os, json, sys; sys.stdin.read(); k = os.environ['AGENT_KEY']; print('using key', k); "
              "print(json.dumps({'session_id': 's-1', 'summary': 'the key was ' + k})); sys.exit(3)")
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "Leak it", "x")
    bridge = start_bridge([github], env={"AGENT_KEY": key}, agent={
        "argv": _toml_list([sys.executable, "-c", script]), "pass_env": '["AGENT_KEY"]'})
    github.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:failed"), timeout=90, what="the failed run")

    [status] = _status_comments(github, repo, issue)
    assert key not in status and "using key [redacted]" in status
    shown = requests.get(f"{bridge.url}/", timeout=10).text + requests.get(f"{bridge.url}/api/tasks", timeout=10).text
    assert key not in shown and "the key was [redacted]" in shown
    [task] = requests.get(f"{bridge.url}/api/tasks", timeout=10).json()["tasks"]
    tail = requests.get(f"{bridge.url}/api/tasks/{task['id']}/log", timeout=10).json()["tail"]
    assert "using key [redacted]" in tail and key not in tail


def test_a_sandbox_apparmor_stops_is_reported_with_the_way_out():
    from forge_bridge.agents.sandbox import why_bwrap_fails

    denied = "bwrap: setting up uid map: Permission denied\n"
    restricted = why_bwrap_fails(denied, userns_restricted=True)
    assert restricted.startswith("bwrap does not run here: bwrap: setting up uid map: Permission denied; AppArmor")
    assert "AppArmor profile" in restricted
    assert why_bwrap_fails(denied, userns_restricted=False) == \
        "bwrap does not run here: bwrap: setting up uid map: Permission denied"


def test_the_sandbox_masks_the_configuration_app_keys_and_a_redis_socket_wherever_they_are(tmp_path):
    """data_dir and the HOME are hidden whole; the configuration file (redis_url may hold a password), a GitHub
    App's key file and a Redis socket can lie anywhere else (a socket on a read-only mount still connects)."""
    import socket
    import tempfile

    from forge_bridge.agents import sandbox
    from forge_bridge.config import load_settings
    from forge_bridge.models import IssueRef, RepoRef

    if sandbox.bwrap_works():
        pytest.skip(sandbox.bwrap_works())
    with tempfile.TemporaryDirectory(dir="/var/tmp") as folder:   # not /tmp: the agent gets a /tmp of its own
        outside = Path(folder)
        config, key, neighbour, redis_socket = (outside / name for name in
                                                ("forge-bridge.toml", "app.pem", "notes.txt", "redis.sock"))
        interpreter = Path(sys.executable).resolve()
        config.write_text(f'data_dir = "{tmp_path / "data"}"\nredis_url = "unix://{redis_socket}"\n'
                          f'[agent]\nsandbox = "bwrap"\nsandbox_paths = ["{interpreter.parents[1]}"]\n'
                          '[[forges]]\nname = "github"\nkind = "github"\nurl = "https://github.com"\n'
                          f'app_id = 1\nprivate_key_file = "{key}"\n')
        key.write_text("-----BEGIN PRIVATE KEY-----\n")
        neighbour.write_text("not a secret\n")
        listening = socket.socket(socket.AF_UNIX)
        listening.bind(str(redis_socket))
        listening.listen(1)
        settings = load_settings(config, environ={})
        assert set(sandbox.secret_files(settings)) == {config, key, redis_socket}
        issue = IssueRef(RepoRef("github.com", "alice", "widgets"), 1)
        where = sandbox.confinement(settings, worktree=tmp_path / "w", mirror=tmp_path / "m",
                                    session_dir=tmp_path / "s", home=sandbox.agent_home(settings, issue))
        for folder in (where.worktree, where.gitdir, where.mirror, where.session_dir):
            folder.mkdir()
        probe = ("import json, socket, sys\n"
                 "seen = {name: open(name).read() for name in sys.argv[2:]}\n"
                 "client = socket.socket(socket.AF_UNIX)\n"
                 "try:\n    client.connect(sys.argv[1]); seen['socket'] = 'connected'\n"
                 "except OSError as error:\n    seen['socket'] = type(error).__name__\n"
                 "print(json.dumps(seen))\n")
        try:
            done = subprocess.run(sandbox.wrap([str(interpreter), "-c", probe, str(redis_socket), str(config),
                                                str(key), str(neighbour)], where),
                                  capture_output=True, text=True, timeout=60)
        finally:
            listening.close()
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    # An empty file where the socket was: root is refused by it; any other user may not even write to it.
    assert seen.pop("socket") in ("ConnectionRefusedError", "PermissionError")
    assert seen == {str(config): "", str(key): "", str(neighbour): "not a secret\n"}


AGENT_THAT_PLANTS = """
import json, os, sys
sys.stdin.read()
home, number = os.environ["HOME"], os.environ["FORGE_BRIDGE_ISSUE_REF"].rsplit("#", 1)[1]
seen = {"issue": int(number), "home": home, "seed": os.path.exists(os.path.join(home, "seed.txt")),
        "planted": sorted(name for name in os.listdir(home) if name.startswith("planted-"))}
open(os.path.join(home, "planted-" + number), "w").write("a hook for whoever runs next")
open(os.path.join(home, f"seen-{number}.json"), "w").write(json.dumps(seen))
open("AGENT_WORK.md", "w").write("done\\n")
"""


@pytest.mark.parametrize("per_issue", [False, True])
def test_with_home_per_issue_what_an_agent_leaves_in_its_home_never_reaches_another_issue(github, start_bridge,
                                                                                        tmp_path, per_issue):
    from forge_bridge.agents.sandbox import bwrap_works

    repo = github.create_repo("alice", "widgets")
    first, second = github.create_issue(repo, "One", "x"), github.create_issue(repo, "Two", "y")
    data_dir = tmp_path / "bridge0" / "data"   # where start_bridge puts the first bridge's data
    (data_dir / "agent-home").mkdir(parents=True)
    (data_dir / "agent-home" / "seed.txt").write_text("a login the operator made")
    agent = {"argv": json.dumps([sys.executable, "-c", AGENT_THAT_PLANTS]), "session_id": '"none"',
             "home_per_issue": str(per_issue).lower()}
    if not bwrap_works():   # confined where bubblewrap runs: the case this is for
        agent |= {"sandbox": '"bwrap"', "sandbox_paths": _toml_list(
            [str(Path(__file__).resolve().parents[1]), str(Path(sys.executable).resolve().parents[1])])}
    bridge = start_bridge([github], agent=agent)
    assert bridge.data_dir == data_dir

    for issue in (first, second):   # one after the other: the second runs where the first left its plant
        github.add_label(repo, issue, "kugetsu:todo")
        wait_for(lambda issue=issue: _settled(github, repo, issue, "kugetsu:review"), timeout=90,
                 what=f"issue {issue.number}")

    seen = {entry["issue"]: entry for entry in
            (json.loads(path.read_text()) for path in data_dir.rglob("seen-*.json"))}
    assert seen[first.number]["planted"] == [] and all(entry["seed"] for entry in seen.values())
    if per_issue:
        assert seen[second.number]["planted"] == []   # the first issue's plant stayed in its own HOME
        assert seen[first.number]["home"] != seen[second.number]["home"]
        assert not list((data_dir / "agent-home").glob("planted-*"))
        [pull] = [p for p in repo.pulls.values() if p.head.startswith(f"kugetsu/{first.number}-")]
        github.merge_pull(repo, pull)   # the issue is done: its worktree is destroyed, and its HOME with it
        wait_for(lambda: not Path(seen[first.number]["home"]).exists(), timeout=60, what="the first HOME gone")
        assert Path(seen[second.number]["home"]).exists()
    else:   # the default, one HOME for all agents: what the README warns about
        assert seen[second.number]["planted"] == [f"planted-{first.number}"]


AGENT_THAT_REACHES_FOR_THE_MIRROR = """
import json, os, sys
from pathlib import Path
sys.stdin.read()
number = os.environ["FORGE_BRIDGE_ISSUE_REF"].rsplit("#", 1)[1]
gitdir = Path(Path(".git").read_text().split(":", 1)[1].strip())
objects = Path((gitdir / "objects" / "info" / "alternates").read_text().strip())   # the mirror's, borrowed
mirror = objects.parent
tried = {}
def attempt(name, action):
    try:
        action()
        tried[name] = "done"
    except OSError as error:
        tried[name] = error.strerror
attempt("another issue's branch", lambda: (mirror / "refs" / "heads" / "planted").write_text("0" * 40 + "\\n"))
attempt("the shared refs", lambda: (mirror / "packed-refs").write_text("0" * 40 + " refs/heads/planted\\n"))
attempt("a shared object", lambda: (objects / "info" / "planted").write_text("x"))
def link_out():   # its branches' folder made a link into the mirror, for the bridge's own git to write through
    (gitdir / "refs" / "heads" / "kugetsu").rename(gitdir / "moved")
    (gitdir / "refs" / "heads" / "kugetsu").symlink_to(mirror / "refs" / "heads")
attempt("a link out of its own", link_out)
Path("AGENT_WORK.md").write_text(f"the work of issue {number}\\n")
Path(os.environ["HOME"], f"tried-{number}.json").write_text(json.dumps(tried))
"""


def test_a_confined_agent_cannot_change_what_another_issue_of_its_repository_commits(github, start_bridge,
                                                                                      tmp_path):
    """Each issue's repository borrows the mirror's objects read-only: an agent cannot write the mirror's
    branches, refs or objects that other issues' tasks read, and a link it leaves in its own git directory is
    dropped before the bridge's git writes there."""
    from forge_bridge.agents.sandbox import bwrap_works

    if bwrap_works():
        pytest.skip(bwrap_works())
    repo = github.create_repo("alice", "widgets")
    first, second = github.create_issue(repo, "One", "x"), github.create_issue(repo, "Two", "y")
    bridge = start_bridge([github], agent={
        "argv": json.dumps([sys.executable, "-c", AGENT_THAT_REACHES_FOR_THE_MIRROR]), "session_id": '"none"',
        "sandbox": '"bwrap"', "sandbox_paths": _toml_list([str(Path(__file__).resolve().parents[1]),
                                                           str(Path(sys.executable).resolve().parents[1])])})
    for issue in (first, second):
        github.add_label(repo, issue, "kugetsu:todo")
        wait_for(lambda issue=issue: _settled(github, repo, issue, "kugetsu:review"), timeout=90,
                 what=f"issue {issue.number}")

    tried = json.loads((bridge.data_dir / "agent-home" / f"tried-{first.number}.json").read_text())
    assert tried == {"another issue's branch": "Read-only file system", "the shared refs": "Read-only file system",
                     "a shared object": "Read-only file system", "a link out of its own": "done"}
    mirror = next((bridge.data_dir / "mirrors").glob("*.git"))
    assert not (mirror / "refs" / "heads" / "planted").exists() and not (mirror / "packed-refs").exists()
    assert list((mirror / "refs" / "heads").iterdir()) == []   # nor did the bridge's own git write one there
    for issue in (first, second):   # each pull request holds its own issue's work, on its own branch
        [pull] = [p for p in repo.pulls.values() if p.head.startswith(f"kugetsu/{issue.number}-")]
        shown = subprocess.run(["git", "show", f"{pull.head}:AGENT_WORK.md"], cwd=repo.bare, capture_output=True,
                               text=True)
        assert shown.stdout == f"the work of issue {issue.number}\n"
    worktree = next(p for p in (bridge.data_dir / "worktrees").glob("*-1"))
    assert not (Path(f"{worktree}.git") / "refs" / "heads" / "kugetsu").is_symlink()   # dropped by the bridge


def test_a_secret_file_in_a_folder_the_sandbox_hides_but_shows_again_is_still_masked(tmp_path):
    """agent.sandbox_paths can show a folder inside one the sandbox hides (the bridge user's HOME): a
    configuration file kept there must read empty all the same."""
    import tempfile

    from forge_bridge.agents import sandbox

    if sandbox.bwrap_works():
        pytest.skip(sandbox.bwrap_works())
    with tempfile.TemporaryDirectory(dir="/var/tmp") as folder:   # not /tmp: the agent gets a /tmp of its own
        hidden = Path(folder)
        shown = hidden / "project"
        shown.mkdir()
        (shown / "forge-bridge.toml").write_text('redis_url = "redis://:s3cret@db:6379"\n')
        (shown / "README").write_text("readable\n")
        where = sandbox.Confinement(worktree=tmp_path, gitdir=tmp_path, mirror=tmp_path, session_dir=tmp_path,
                                    home=tmp_path, hidden=(hidden,), readable=(shown,),
                                    masked=((shown / "forge-bridge.toml").resolve(),), empty=tmp_path / "empty")
        where.empty.touch()
        done = subprocess.run(sandbox.wrap(["cat", str(shown / "forge-bridge.toml"), str(shown / "README")], where),
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "readable\n"
