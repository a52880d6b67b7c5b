"""`forge-bridge hooks install|list` on both forge kinds: a hook found by its URL is created or brought up to date
(a wrong secret included), a second run changes nothing, a repository without admin right is one line, and
the installed hook delivers signed events the bridge accepts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import SECRET_ENV, TOKEN_ENV
from fakeforge.state import RepoHook
from helpers import SECRET

from forge_bridge.forges import HookInfo
from forge_bridge.service.hooks import HOOK_EVENTS, plan_hook
from forge_bridge.models import ForgeKind

URL = "https://bridge.example.com/webhooks/github"
EVENTS = HOOK_EVENTS[ForgeKind.GITHUB]


def _hook(hook_id: int = 7, *, url: str = URL, events: tuple[str, ...] = EVENTS, content_type: str = "json",
          active: bool = True) -> HookInfo:
    return HookInfo(id=hook_id, url=url, events=events, content_type=content_type, active=active)


def test_plan_creates_when_no_hook_has_the_url():
    plan = plan_hook([_hook(url="https://ci.example.com/hook")], url=URL, events=EVENTS)
    assert (plan.action, plan.hook_id) == ("create", None)


def test_plan_sends_the_secret_again_to_a_hook_that_looks_right_and_says_what_else_was_wrong():
    again = plan_hook([_hook()], url=URL + "/", events=EVENTS)
    assert (again.action, again.hook_id, again.why) == ("update", 7, "secret sent again")
    stale = plan_hook([_hook(events=("push", "issues"), content_type="form", active=False)], url=URL,
                      events=EVENTS)
    assert (stale.action, stale.hook_id) == ("update", 7)
    assert stale.why == ("inactive; content type form; events missing issue_comment, pull_request, "
                         "pull_request_review, pull_request_review_comment")


def _config(path: Path, forge, data_dir: Path) -> Path:
    path.write_text(
        f'data_dir = "{data_dir}"\n[[forges]]\nname = "f"\nkind = "{forge.kind}"\nurl = "{forge.url}"\n'
        f'token_env = "{TOKEN_ENV}"\nwebhook_secret_env = "{SECRET_ENV}"\nbot_login = "{forge.bot_login}"\n'
        'write_interval = 0\n'
        '[[repos]]\nforge = "f"\nname = "alice/widgets"\n[[repos]]\nforge = "f"\nname = "alice/gadgets"\n'
        '[[repos]]\nforge = "f"\nname = "alice/locked"\n[[repos]]\nforge = "f"\nname = "bob/*"\n')
    return path


def _hooks(config: Path, *args: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_BRIDGE_")}
    environ.update({TOKEN_ENV: "fake-forge-token", SECRET_ENV: SECRET})
    return subprocess.run([sys.executable, "-m", "forge_bridge", "--config", str(config), "hooks", *args],
                          capture_output=True, text=True, env=environ, timeout=120)


def _writes(forge) -> list[str]:
    return [f"{e.method} {e.path}" for e in forge.exchanges if e.method != "GET"]


def test_hooks_install_creates_updates_and_a_second_run_changes_nothing(forge, start_bridge, tmp_path):
    widgets, gadgets = forge.create_repo("alice", "widgets"), forge.create_repo("alice", "gadgets")
    locked = forge.create_repo("alice", "locked")
    for repo in (widgets, gadgets):
        repo.permissions[forge.bot_login] = "admin"
    locked.permissions[forge.bot_login] = "write"   # may push, may not see hooks
    issue = forge.create_issue(widgets, "Fix it", "body")
    bridge = start_bridge([forge], hooks=False)
    url = f"{bridge.url}/webhooks/{forge.kind}"
    # Someone added the bridge's hook by hand, with a secret of their own and only push events.
    widgets.hooks[1] = RepoHook(id=1, url=url, secret="typo", events=["push"])
    config = _config(tmp_path / "hooks.toml", forge, tmp_path / "data")

    preview = _hooks(config, "install", "--url", bridge.url, "--dry-run")
    assert preview.returncode == 1, preview.stdout + preview.stderr
    assert f"f: alice/gadgets: would create a hook → {url}" in preview.stdout
    assert "f: alice/widgets: would update hook 1" in preview.stdout and _writes(forge) == []

    first = _hooks(config, "install", "--url", bridge.url)
    assert first.returncode == 1 and "Traceback" not in first.stderr
    assert "f: alice/widgets: updated hook 1" in first.stdout and "events missing" in first.stdout
    assert "f: alice/gadgets: created hook" in first.stdout
    [refused] = [line for line in first.stdout.splitlines() if "alice/locked" in line]
    assert refused.startswith("FAIL f: alice/locked: no admin right on the repository")
    assert "f: bob/* is a pattern" in first.stdout
    assert SECRET not in first.stdout + first.stderr
    assert list(widgets.hooks) == [1] and widgets.hooks[1].secret == SECRET   # updated, not duplicated
    kind_events = HOOK_EVENTS[ForgeKind(forge.kind)]
    assert widgets.hooks[1].content_type == "json" and set(kind_events) <= set(widgets.hooks[1].events)
    [created] = gadgets.hooks.values()
    assert (created.url, created.secret, created.active) == (url, SECRET, True)
    assert {f"kugetsu:{s}" for s in ("todo", "queued", "running", "review", "failed", "done")} <= set(widgets.labels)

    installed = {(h.id, h.url, tuple(h.events), h.secret, h.active) for r in (widgets, gadgets) for h in r.hooks.values()}
    widgets.hooks[1].secret = "changed by hand"   # forges never show it: only sending it again puts it right
    again = _hooks(config, "install", "--url", bridge.url)
    assert "f: alice/widgets: updated hook 1 → " in again.stdout and "(secret sent again)" in again.stdout
    assert {(h.id, h.url, tuple(h.events), h.secret, h.active) for r in (widgets, gadgets)
            for h in r.hooks.values()} == installed   # no new hook; the same URL, events and secret as before

    listed = _hooks(config, "list", "--url", bridge.url)
    assert f"f: alice/widgets: hook 1 → {url} (this bridge); active, json" in listed.stdout

    # The installed hook is real: the forge signs with the secret it was given, and the bridge queues the label.
    [delivered] = forge.add_label(widgets, issue, "kugetsu:todo")
    assert delivered.status_code == 202, delivered.text


def test_hooks_install_needs_a_public_url(github, tmp_path):
    config = _config(tmp_path / "hooks.toml", github, tmp_path / "data")
    done = _hooks(config, "install")
    assert done.returncode == 2 and "--url" in done.stderr and "public_url" in done.stderr
    bad = _hooks(config, "install", "--url", "bridge.example.com")
    assert bad.returncode == 2 and "--url must look like https://" in bad.stderr


def test_the_hook_subscribes_to_check_events_only_when_ci_feedback_is_on():
    from forge_bridge.config import settings_from_dict
    from forge_bridge.service.hooks import hook_events

    forges = [{"name": "gh", "kind": "github", "url": "https://github.com"},
              {"name": "gt", "kind": "gitea", "url": "https://gitea.example"}]
    off = settings_from_dict({"forges": forges}, source="t", environ={})
    on = settings_from_dict({"forges": forges, "ci_feedback": 2}, source="t", environ={})
    assert hook_events(off, off.forges[0]) == EVENTS
    assert hook_events(on, on.forges[0]) == (*EVENTS, "check_suite", "status")
    assert hook_events(on, on.forges[1])[-1] == "status"
