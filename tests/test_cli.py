"""The command line: one clear line and a non-zero exit for a user's mistake, never a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_BRIDGE_")}
    return subprocess.run([sys.executable, "-m", "forge_bridge", *args], cwd=cwd, capture_output=True, text=True,
                          env={**environ, **(env or {})}, timeout=60)


@pytest.mark.parametrize("role", ["web", "worker", "poll"])
def test_single_roles_need_redis_url_and_point_at_serve(role, tmp_path):
    (tmp_path / "forge-bridge.toml").write_text("")
    done = run_cli(role, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "redis_url" in done.stderr and "serve" in done.stderr


def test_missing_configuration_file_is_one_line(tmp_path):
    done = run_cli("serve", cwd=tmp_path)
    assert done.returncode == 2 and "configuration file not found" in done.stderr and "Traceback" not in done.stderr


def test_serve_refuses_to_start_without_a_webhook_secret(tmp_path):
    (tmp_path / "forge-bridge.toml").write_text(
        f'data_dir = "{tmp_path}/data"\n[[forges]]\nname = "g"\nkind = "github"\nurl = "https://github.com"\n'
        'webhook_secret_env = "NOT_SET_ANYWHERE"\n')
    done = run_cli("serve", cwd=tmp_path)
    assert done.returncode == 2 and "NOT_SET_ANYWHERE" in done.stderr and "insecure_no_signature" in done.stderr
    assert not (tmp_path / "data" / "valkey").exists()  # refused before starting anything


def test_unknown_key_is_named(tmp_path):
    (tmp_path / "forge-bridge.toml").write_text("colour = 'blue'\n")
    done = run_cli("serve", cwd=tmp_path)
    assert done.returncode == 2 and "forge-bridge.toml: unknown key 'colour'" in done.stderr


def test_installed_wheel_ships_the_templates(tmp_path):
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path), str(root)], check=True, capture_output=True, timeout=300)
    import zipfile

    [wheel] = tmp_path.glob("forge_bridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "forge_bridge/templates/status_comment.md.j2" in names and "jobs/tasks.py" in names


@pytest.mark.parametrize("kind", ["github", "gitea"])
def test_check_reaches_each_forge_and_names_what_is_wrong(kind, request, tmp_path):
    forge = request.getfixturevalue(kind)
    repo = forge.create_repo("alice", "widgets")
    forge.create_repo("alice", "locked")
    repo.permissions[forge.bot_login] = "write"
    config = tmp_path / "forge-bridge.toml"
    config.write_text(
        f'[[forges]]\nname = "f"\nkind = "{kind}"\nurl = "{forge.url}"\ntoken_env = "T"\nwebhook_secret_env = "S"\n'
        f'bot_login = "{forge.bot_login}"\nwrite_interval = 0\n'
        '[[repos]]\nforge = "f"\nname = "alice/widgets"\n[[repos]]\nforge = "f"\nname = "alice/locked"\n')
    bin_dir = Path(__file__).resolve().parent / "agents" / "bin"   # a (fake) kugetsu, the default preset
    good = run_cli("check", cwd=tmp_path, env={"T": forge.token, "S": "s3cret",
                                               "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert good.returncode == 1, good.stdout   # alice/locked does not let the bot write
    assert f"ok   f: reached {forge.url}" in good.stdout and "acting as kugetsu-bot" in good.stdout
    assert "ok   f: alice/widgets: kugetsu-bot has write permission" in good.stdout
    assert f"ok   agent kugetsu: kugetsu is {bin_dir / 'kugetsu'}" in good.stdout
    assert "FAIL f: alice/locked: kugetsu-bot has none permission" in good.stdout
    assert "s3cret" not in good.stdout + good.stderr and forge.token not in good.stdout + good.stderr
    bad = run_cli("check", cwd=tmp_path, env={"T": "wrong"})
    assert bad.returncode == 1 and "FAIL f: webhook secret missing (set $S)" in bad.stdout
    assert "FAIL agent kugetsu: kugetsu is not on PATH" in bad.stdout
    assert "token rejected" in bad.stdout and "Traceback" not in bad.stderr


def test_web_listens_on_port_when_set(tmp_path, redis_url):
    from conftest import free_port
    from helpers import healthy, wait_for

    (tmp_path / "forge-bridge.toml").write_text("insecure_no_signature = true\n")
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_BRIDGE_")}
    web = subprocess.Popen([sys.executable, "-m", "forge_bridge", "web"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env={**environ, "PORT": str(port),
                                                           "FORGE_BRIDGE_REDIS_URL": redis_url,
                                                           "FORGE_BRIDGE_UI_TOKEN": "t0ken-for-the-page"})
    try:
        wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), timeout=30, what="web on $PORT")
    finally:
        web.terminate()
        web.wait(timeout=30)


def test_check_says_a_forge_without_a_secret_is_polling_only(github, tmp_path):
    repo = github.create_repo("alice", "widgets")
    repo.permissions[github.bot_login] = "write"
    (tmp_path / "forge-bridge.toml").write_text(
        f'[[forges]]\nname = "f"\nkind = "github"\nurl = "{github.url}"\ntoken_env = "T"\nwrite_interval = 0\n'
        '[[repos]]\nforge = "f"\nname = "alice/widgets"\npoll = true\n')
    done = run_cli("check", cwd=tmp_path, env={"T": github.token})
    assert "ok   f: webhooks off (no webhook_secret_env); the poller finds labelled issues" in done.stdout
    assert "FAIL f:" not in done.stdout


def test_check_says_when_the_agent_version_is_outside_the_tested_range(tmp_path):
    program = tmp_path / "bin" / "claude"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\necho '9.9.9 (Claude Code)'\n")
    program.chmod(0o755)
    (tmp_path / "forge-bridge.toml").write_text('[agent]\npreset = "claude"\n')
    done = run_cli("check", cwd=tmp_path, env={"PATH": f"{program.parent}:/usr/bin:/bin"})
    assert "version 9.9.9: outside the tested range 2.1.197 to 2.1.332" in done.stdout


def test_check_of_an_unreachable_forge_says_so_in_its_own_line_without_retry_noise(tmp_path):
    from conftest import free_port

    (tmp_path / "forge-bridge.toml").write_text(
        f'[[forges]]\nname = "gh"\nkind = "github"\nurl = "http://127.0.0.1:{free_port()}"\ntoken_env = "T"\n')
    done = run_cli("check", cwd=tmp_path, env={"T": "t0ken"})
    assert done.returncode == 1 and "FAIL gh: http://127.0.0.1:" in done.stdout and "not reached" in done.stdout
    assert "Retrying" not in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_check_warns_when_auto_finds_no_working_sandbox_and_fails_when_bwrap_was_asked_for(tmp_path):
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    path = f"{fake.parent}:{os.environ['PATH']}"
    (tmp_path / "forge-bridge.toml").write_text('[agent]\npreset = "claude"\n')
    auto = run_cli("check", cwd=tmp_path, env={"PATH": path})
    assert "warn sandbox auto: agents run without a sandbox: bwrap does not run here: bwrap: No permissions" \
        in auto.stdout
    (tmp_path / "forge-bridge.toml").write_text('[agent]\npreset = "claude"\nsandbox = "bwrap"\n')
    asked = run_cli("check", cwd=tmp_path, env={"PATH": path})
    assert "FAIL sandbox bwrap: bwrap does not run here" in asked.stdout and asked.returncode == 1


def test_check_fails_when_confined_agents_could_write_to_a_redis_without_a_password_and_warns_of_an_open_ui(
        tmp_path):
    from forge_bridge.agents.sandbox import bwrap_works

    if bwrap_works():
        pytest.skip(bwrap_works())   # the line is for confined agents: unconfined ones reach everything anyway
    said = {}
    for url in ("redis://127.0.0.1:6390/0", "redis://:s3cret@127.0.0.1:6390/0"):
        (tmp_path / "forge-bridge.toml").write_text(f'redis_url = "{url}"\n[agent]\npreset = "claude"\n')
        said[url] = run_cli("check", cwd=tmp_path, env={})
    exposed, protected = said.values()
    warning = "warn ui: without $FORGE_BRIDGE_UI_TOKEN the status page and API answer any local process"
    assert warning in exposed.stdout
    with_token = run_cli("check", cwd=tmp_path, env={"FORGE_BRIDGE_UI_TOKEN": "t0ken"})
    assert warning not in with_token.stdout and "t0ken" not in with_token.stdout
    assert "FAIL redis: agents share this host's network, and Redis at 127.0.0.1:6390 asks for no password" \
        in exposed.stdout and exposed.returncode == 1
    assert "redis:" not in protected.stdout and "s3cret" not in protected.stdout + protected.stderr


def test_web_refuses_a_public_bind_without_ui_token_unless_ui_public(tmp_path, redis_url):
    (tmp_path / "forge-bridge.toml").write_text("insecure_no_signature = true\n")
    env = {"FORGE_BRIDGE_REDIS_URL": redis_url, "PORT": "1"}
    refused = run_cli("web", cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "refusing to listen on 0.0.0.0:1 with no ui_token" in refused.stderr
    assert "ui_public = true" in refused.stderr and "Traceback" not in refused.stderr
    served = run_cli("serve", "--bind", "0.0.0.0:1", cwd=tmp_path, env={"FORGE_BRIDGE_REDIS_URL": redis_url})
    assert served.returncode == 2 and "refusing to listen on 0.0.0.0:1" in served.stderr
    from forge_bridge.config import settings_from_dict
    from forge_bridge.web import check_exposure

    public = settings_from_dict({"ui_public": True}, source="t", environ={})
    assert "open to all" in check_exposure(public, "0.0.0.0:8080")
    assert check_exposure(settings_from_dict({}, source="t", environ={}), "127.0.0.1:8080") == ""


@contextmanager
def _web(tmp_path: Path, redis_url: str) -> Iterator[int]:
    """`forge-bridge web` on a free port, signatures waived (its port)."""
    from conftest import free_port
    from helpers import healthy, wait_for

    (tmp_path / "forge-bridge.toml").write_text("insecure_no_signature = true\n")
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_BRIDGE_")}
    web = subprocess.Popen([sys.executable, "-m", "forge_bridge", "web", "--bind", f"127.0.0.1:{port}"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**environ, "FORGE_BRIDGE_REDIS_URL": redis_url})
    try:
        wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), timeout=30, what="web")
        yield port
    finally:
        web.terminate()
        web.wait(timeout=30)


def test_stalled_clients_cannot_keep_health_or_deliveries_from_being_answered(tmp_path, redis_url):
    import socket
    import time

    import requests

    stalled = []
    with _web(tmp_path, redis_url) as port:
        try:
            for _ in range(40):   # each promises a body it never sends
                client = socket.create_connection(("127.0.0.1", port))
                client.sendall(b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: issues\r\n"
                               b"X-GitHub-Delivery: d\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
                stalled.append(client)
            began = time.monotonic()
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
            assert time.monotonic() - began < 5
            stalled[0].settimeout(10)
            assert b"408" in stalled[0].recv(200)   # the stalled delivery itself is answered, not kept waiting
        finally:
            for client in stalled:
                client.close()


def test_a_slow_but_steady_body_holds_a_thread_no_longer_than_the_deadline(tmp_path, redis_url):
    """A byte every half second never trips the per-read timeout: a relevant delivery is answered 408 at the
    deadline, and an ignored one (answered at once) has its connection closed then."""
    import select
    import socket
    import time

    from forge_bridge.web.webhooks import BODY_DEADLINE

    head = ("POST /webhooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: {}\r\nX-GitHub-Delivery: slow\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{")
    with _web(tmp_path, redis_url) as port:
        clients = {event: socket.create_connection(("127.0.0.1", port)) for event in ("issues", "push")}
        heard = {event: b"" for event in clients}
        closed_after = {}
        began = time.monotonic()
        for event, client in clients.items():
            client.sendall(head.format(event).encode())
        while len(closed_after) < len(clients) and time.monotonic() - began < BODY_DEADLINE + 10:
            ready, _, _ = select.select([c for e, c in clients.items() if e not in closed_after], [], [], 0.5)
            for event, client in clients.items():
                if client in ready:
                    got = client.recv(1000)
                    heard[event] += got
                    if not got:
                        closed_after[event] = time.monotonic() - began
                elif event not in closed_after:
                    try:
                        client.send(b" ")   # the trickle: well under BODY_TIMEOUT apart
                    except OSError:
                        closed_after[event] = time.monotonic() - began
        for client in clients.values():
            client.close()
    assert b"408" in heard["issues"] and b'"status":"timeout"' in heard["issues"]
    assert b"200 OK" in heard["push"] and b'"status":"ignored"' in heard["push"]
    assert BODY_DEADLINE - 1 < closed_after["issues"] < BODY_DEADLINE + 8
    assert BODY_DEADLINE - 1 < closed_after["push"] < BODY_DEADLINE + 8


def test_an_ignored_delivery_is_answered_before_its_body_and_keeps_its_connection(tmp_path, redis_url):
    """Answered from the headers; the body is read and dropped after the answer, so a large one (over the 64 KB
    gunicorn drains itself) leaves the connection open for the next delivery."""
    import http.client
    import socket

    from forge_bridge.web.webhooks import BODY_TIMEOUT

    with _web(tmp_path, redis_url) as port:
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n"
                           b"X-GitHub-Delivery: p\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
            client.settimeout(BODY_TIMEOUT / 2)   # answered well before the body would time out
            answer = b""
            while b"}" not in answer:
                answer += client.recv(1000)
            assert b"200 OK" in answer and b'"status":"ignored"' in answer

        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = b'{"pusher": "' + b"x" * 300_000 + b'"}'
        for number in range(3):
            connection.request("POST", "/webhooks/github", body=body, headers={
                "X-GitHub-Event": "push", "X-GitHub-Delivery": f"p-{number}", "Content-Type": "application/json"})
            if number == 0:
                first = connection.sock
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, b'{"delivery":"p-%d","reason":"event \'push\' is not '
                                                                 b'acted on","status":"ignored"}\n' % number)
            assert connection.sock is first
        connection.close()


def test_the_web_server_opens_no_control_socket_another_process_could_command(tmp_path, redis_url):
    """gunicorn's control socket (in ~/.gunicorn or $XDG_RUNTIME_DIR) takes reload, scale and stop commands from
    any process of the user: the bridge's web server must not open one."""
    from conftest import free_port
    from helpers import healthy, wait_for

    home, runtime = tmp_path / "home", tmp_path / "run"
    home.mkdir(), runtime.mkdir()
    (tmp_path / "forge-bridge.toml").write_text("insecure_no_signature = true\n")
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_BRIDGE_")}
    for variables in ({"HOME": str(home)}, {"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}):
        web = subprocess.Popen([sys.executable, "-m", "forge_bridge", "web", "--bind", f"127.0.0.1:{port}"],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**environ, **variables, "FORGE_BRIDGE_REDIS_URL": redis_url})
        try:
            wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), timeout=30, what="web")
        finally:
            web.terminate()
            log = web.communicate(timeout=30)[1]
        assert "Control socket" not in log, log
        assert list(home.iterdir()) == [] and list(runtime.iterdir()) == []
