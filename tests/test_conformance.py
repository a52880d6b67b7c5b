"""Conformance: presets run the real agent CLIs (installed from their registries at the pinned versions, see
realclis.py) through `forge-bridge serve`, each CLI talking to the scripted model server on 127.0.0.1. For each:
a start writes a file that reaches the pull request; a continue resumes the same session (the model sees the
earlier turns); a lost session falls back to a new one carrying the issue's history; a model error fails with
the model's message; usage is per run."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import wait_for
from models.server import ModelServer
from realclis import PINS, cache_root, install
from test_end_to_end import _settled, _status_comments

from forge_bridge.store.sessions import Store


@pytest.fixture
def models():
    server = ModelServer().start()
    yield server
    server.stop()


def _files_on(repo, branch: str) -> list[str]:
    done = subprocess.run(["git", "ls-tree", "--name-only", branch], cwd=repo.bare, capture_output=True, text=True)
    return sorted(name for name in done.stdout.split() if name.startswith("WORK-"))


def _texts(request) -> str:
    """The conversation the CLI sent: Messages and Chat Completions `messages`, Responses `input`."""
    return json.dumps(request.body.get("messages") or request.body.get("input") or [])


def _ends_as(forge, repo, issue, label: str, *, timeout: float) -> None:
    """The run settles, and with `label` (else the status comment says why it did not)."""
    wait_for(lambda: _settled(forge, repo, issue, label) or _settled(forge, repo, issue, "kugetsu:failed"),
             timeout=timeout, what=f"the run to end ({label})")
    assert label in forge.labels_of(repo, issue), _status_comments(forge, repo, issue)[0]


def _task_rows(status: str) -> list[str]:
    return [line for line in status.splitlines() if line.startswith("| ") and " | @" in line]


def _claude(models, home):
    bin_dir = install("claude")
    agent = {"pass_env": json.dumps(["ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY",
                                     "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"])}
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "ANTHROPIC_BASE_URL": models.url,
           "ANTHROPIC_API_KEY": "sk-scripted", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    return agent, env, lambda session: shutil.rmtree(home / ".claude" / "projects")


def _aider(models, home):
    bin_dir = install("aider")
    agent = {"pass_env": json.dumps(["OPENAI_API_KEY", "OPENAI_API_BASE"]),
             "extra_args": json.dumps(["--model", "openai/scripted", "--edit-format", "whole"])}
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "OPENAI_API_BASE": f"{models.url}/v1",
           "OPENAI_API_KEY": "sk-scripted"}
    return agent, env, lambda session: Path(session).unlink()   # its session is the chat history file


def _codex(models, home):
    bin_dir = install("codex")
    # Codex puts the helper its own sandbox runs (codex-linux-sandbox) in its home, and refuses to under /tmp,
    # where pytest's folders are: its home goes beside the installed CLIs instead (inside the agent's HOME when
    # that is not under /tmp, so a confined Codex may write it).
    codex_home = home / ".codex" if not home.is_relative_to("/tmp") else cache_root() / "homes" / home.parent.name / \
        "codex"
    shutil.rmtree(codex_home, ignore_errors=True)
    codex_home.mkdir(parents=True)
    (codex_home / "config.toml").write_text(   # a provider of its own: Codex reads no base URL variable
        'model = "scripted"\nmodel_provider = "scripted"\n[model_providers.scripted]\nname = "scripted"\n'
        f'base_url = "{models.url}/v1"\nenv_key = "OPENAI_API_KEY"\nwire_api = "responses"\n')
    agent = {"pass_env": json.dumps(["OPENAI_API_KEY", "CODEX_HOME"])}
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "OPENAI_API_KEY": "sk-scripted",
           "CODEX_HOME": str(codex_home)}
    return agent, env, lambda session: shutil.rmtree(codex_home / "sessions")


def _opencode(models, home):
    bin_dir = install("opencode")
    config = home / ".config" / "opencode"
    config.mkdir(parents=True)
    (config / "opencode.json").write_text(json.dumps({   # its Anthropic provider, pointed at the scripted server
        "model": "anthropic/claude-sonnet-4-5", "autoupdate": False, "share": "disabled",
        "provider": {"anthropic": {"options": {"baseURL": f"{models.url}/v1", "apiKey": "sk-scripted"}}}}))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home)}
    return {}, env, lambda session: shutil.rmtree(home / ".local" / "share" / "opencode")


CLIS = {"claude": _claude, "aider": _aider, "codex": _codex, "opencode": _opencode}


def _agent_setup(preset: str, network: str, models, tmp_path: Path):
    """The CLI's HOME, [agent] keys, environment and a way to lose its session. With `network = "allowlist"` it
    runs confined by bubblewrap, with the scripted model server the only host allowed: its HOME then lies beside
    the installed CLIs (Codex will not keep its helper under /tmp), which the sandbox shows it read-only."""
    import sys

    from forge_bridge.agents.sandbox import bwrap_works

    if network == "open":
        home = tmp_path / "home"
    elif bwrap_works():
        pytest.skip(bwrap_works())
    else:
        home = cache_root() / "homes" / f"{tmp_path.parent.name}-{tmp_path.name}"
        shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    agent, env, lose_session = CLIS[preset](models, home)
    agent["home"] = json.dumps(str(home))   # the agent's HOME, where each CLI keeps its configuration and sessions
    if network == "allowlist":
        readable = [str(cache_root() / f"{preset}-{PINS[preset][2]}"), str(Path(sys.executable).resolve().parents[1]),
                    str(Path(__file__).parents[1])]
        agent |= {"sandbox": '"bwrap"', "network": '"allowlist"', "sandbox_paths": json.dumps(readable),
                  "allow_hosts": json.dumps([models.url.removeprefix("http://")])}
    return home, agent, env, lose_session


@pytest.mark.parametrize("network", ["open", "allowlist"])
@pytest.mark.parametrize("preset", sorted(CLIS))
def test_real_cli(preset, network, github, start_bridge, models, tmp_path):
    """With `network = "allowlist"` too: each CLI honours the proxy variables, reaching its model (the only host
    allowed) through the bridge's proxy from a sandbox with no network of its own."""
    home, agent, env, lose_session = _agent_setup(preset, network, models, tmp_path)
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "Sort the list", "alphabetically")
    bridge = start_bridge([github], preset=preset, agent=agent, env=env)
    ref = f"{github.host}/alice/widgets#1"

    github.add_label(repo, issue, "kugetsu:todo")   # start: the file it writes reaches the pull request
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:review"), timeout=120, what="the first run")
    [pull] = repo.pulls.values()
    assert _files_on(repo, pull.head) == ["WORK-1.md"]
    session = Store(bridge.redis).session(ref).agent_session_id
    assert session

    github.comment(repo, issue, "@kugetsu-bot descending please")   # continue: the same session, earlier turns seen
    wait_for(lambda: _files_on(repo, pull.head) == ["WORK-1.md", "WORK-2.md"], timeout=120, what="the resume")
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:review") and
             len(_task_rows(_status_comments(github, repo, issue)[0])) == 2, timeout=60, what="the second report")
    assert Store(bridge.redis).session(ref).agent_session_id == session
    resumed = [r for r in models.main_requests() if "descending please" in _texts(r)][0]
    assert "alphabetically" in _texts(resumed) and "WORK-1.md" in _texts(resumed)
    first_row, second_row = _task_rows(_status_comments(github, repo, issue)[0])
    usage = first_row.split(" | ")[-2]
    assert "tokens" in usage and second_row.split(" | ")[-2] == usage   # per run, not the session's total

    lose_session(session)   # as on another host
    github.comment(repo, issue, "@kugetsu-bot then drop duplicates")
    wait_for(lambda: len(_files_on(repo, pull.head)) == 3, timeout=120, what="the run in a new session")
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:review"), timeout=60, what="the third run to settle")
    retold = [r for r in models.main_requests() if "then drop duplicates" in _texts(r)][0]
    assert "descending please" in _texts(retold)   # the new session was told the issue's history
    assert "new session" in _status_comments(github, repo, issue)[0]

    models.script.fail_with = (400, "model: unknown model 'nope'")   # a model error: its message
    github.comment(repo, issue, "@kugetsu-bot one more thing")
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:failed"), timeout=120, what="the failed run")
    models.script.fail_with = None
    assert "unknown model 'nope'" in _status_comments(github, repo, issue)[0]
    if network == "allowlist":
        shutil.rmtree(home, ignore_errors=True)   # beside the installed CLIs, not in pytest's folders


def test_a_real_cli_with_a_home_per_issue_has_its_settings_and_resumes_its_session(github, start_bridge, models,
                                                                                    tmp_path):
    """opencode reads its provider from its HOME: with agent.home_per_issue the issue's copy has it, and keeps the
    session the next turn resumes, while the HOME it was copied from gains nothing."""
    from forge_bridge.workspace import worktrees
    from forge_bridge.refs import parse_issue_ref

    home = tmp_path / "home"
    home.mkdir()
    agent, env, _ = _opencode(models, home)
    agent |= {"home": json.dumps(str(home)), "home_per_issue": "true"}
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "Sort the list", "alphabetically")
    bridge = start_bridge([github], preset="opencode", agent=agent, env=env)
    ref = f"{github.host}/alice/widgets#1"

    github.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:review"), timeout=120, what="the first run")
    [pull] = repo.pulls.values()
    session = Store(bridge.redis).session(ref).agent_session_id
    github.comment(repo, issue, "@kugetsu-bot descending please")
    wait_for(lambda: _files_on(repo, pull.head) == ["WORK-1.md", "WORK-2.md"], timeout=120, what="the resume")
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:review"), timeout=60, what="the second run to settle")

    assert session and Store(bridge.redis).session(ref).agent_session_id == session
    resumed = [r for r in models.main_requests() if "descending please" in _texts(r)][0]
    assert "alphabetically" in _texts(resumed)
    own = worktrees.home_dir(bridge.data_dir, parse_issue_ref(ref))
    assert (own / ".config" / "opencode" / "opencode.json").is_file()
    assert (own / ".local" / "share" / "opencode").is_dir() and not (home / ".local" / "share" / "opencode").exists()


def test_check_prints_the_installed_version_and_the_tested_range(tmp_path):
    from test_cli import run_cli

    bin_dir = install("claude")
    (tmp_path / "forge-bridge.toml").write_text('[agent]\npreset = "claude"\n')
    done = run_cli("check", cwd=tmp_path, env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)})
    from realclis import PINS

    version = PINS["claude"][2]
    assert f"ok   agent claude: claude is {bin_dir / 'claude'}, version {version} (tested: 2.1.197 to {version})" \
        in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("preset", sorted(CLIS))
def test_real_cli_plans_in_its_read_only_mode(preset, github, start_bridge, models, tmp_path):
    """The read-only flag each preset adds for a plan is one the real CLI takes: it answers with the model's
    text, its attempt to write a file is refused or undone, and nothing is pushed."""
    home = tmp_path / "home"
    home.mkdir()
    agent, env, _ = CLIS[preset](models, home)
    agent["home"] = json.dumps(str(home))
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "Sort the list", "alphabetically")
    models.script.answer = "Plan: sort with a stable key, then test it."
    bridge = start_bridge([github], preset=preset, agent=agent, env=env)
    github.add_label(repo, issue, "kugetsu:plan")
    _ends_as(github, repo, issue, "kugetsu:planned", timeout=120)
    [plan] = [c for c in github.comments_of(repo, issue) if c.startswith("### Plan")]
    assert "sort with a stable key" in plan
    assert not repo.pulls and repo.branch_sha("kugetsu/1-sort-the-list") is None
    worktree = bridge.data_dir / "worktrees" / f"127.0.0.1_{github.port}-alice-widgets-1"
    assert not list(worktree.glob("WORK-*.md"))
