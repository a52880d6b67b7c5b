"""Agents reach only the hosts they need: `agent.network = "none"` leaves the sandbox no network, `"allowlist"`
gives it only the bridge's proxy, which opens connections to listed hosts and refuses the rest (counted, listed,
logged). And an agent program the sandbox would hide is named, not a bare `execvp` error. Real bubblewrap, real
sockets, real HTTP servers on 127.0.0.1."""
from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from helpers import wait_for

from forge_bridge.agents import allowlist, egress, sandbox
from forge_bridge.config import ConfigError, settings_from_dict
from forge_bridge.store import metrics
from test_end_to_end import _branch_file, _settled

EGRESS_AGENT = Path(__file__).resolve().parent / "agents" / "egress_agent.py"


class _Server:
    """An HTTP server on 127.0.0.1 that answers its name and remembers every request it saw."""

    def __init__(self, name: str) -> None:
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append(self.path)
                body = name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hello"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    made = [_Server("allowed"), _Server("other")]
    yield made
    for server in made:
        server.stop()


# Deciding, without a network
@pytest.mark.parametrize("pattern, host, port, admitted", [
    ("api.example.com", "api.example.com", 443, True), ("api.example.com", "API.Example.com", 443, True),
    ("api.example.com", "api.example.com", 80, False), ("api.example.com:8080", "api.example.com", 8080, True),
    ("*.example.com", "pypi.example.com", 443, True), ("*.example.com", "example.com", 443, False),
    ("*.example.com", "evilexample.com", 443, False), ("127.0.0.1:9000", "127.0.0.1", 9000, True),
    ("[::1]:8080", "::1", 8080, True),
])
def test_allowed_hosts_match_names_wildcards_and_ports(pattern, host, port, admitted):
    assert allowlist.admitted((allowlist.parse(pattern),), host, port) is admitted


def test_each_preset_reaches_its_model_api_and_the_base_url_it_is_given():
    claude = allowlist.allowed_hosts("claude", (), {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9999/v1"})
    assert allowlist.admitted(claude, "api.anthropic.com", 443) and allowlist.admitted(claude, "127.0.0.1", 9999)
    assert not allowlist.admitted(claude, "api.openai.com", 443)
    assert allowlist.no_proxy(claude) == ""   # the host's loopback is reached through the proxy only
    assert allowlist.no_proxy(allowlist.allowed_hosts("codex", (), {})) == "localhost,127.0.0.1,::1"
    assert allowlist.allowed_hosts("command", (), {}) == ()


@pytest.mark.parametrize("agent, message", [
    ({"network": "closed"}, "agent.network must be open, allowlist or none"),
    ({"allow_hosts": "pypi.org"}, "agent.allow_hosts must be a list of host names"),
    ({"allow_hosts": ["https://pypi.org"]}, "'https://pypi.org' is not a host name"),
    ({"allow_hosts": ["pypi.org:99999"]}, "'pypi.org:99999' is not a host name"),
])
def test_bad_network_settings_are_one_clear_error(agent, message):
    with pytest.raises(ConfigError, match=message):
        settings_from_dict({"agent": agent}, source="t.toml", environ={})


# The proxy, on real sockets
def _ask(path: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        client.sendall(request)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


def test_the_proxy_opens_only_allowed_hosts_and_tells_of_each_refusal(servers):
    allowed, other = servers
    refusals = []
    with egress.running((allowlist.parse(f"127.0.0.1:{allowed.port}"),), refusals.append) as path:
        plain = _ask(path, f"GET {allowed.url} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        assert plain.startswith(b"HTTP/1.0 200") and plain.endswith(b"allowed") and allowed.seen == ["/hello"]

        refused = _ask(path, f"GET {other.url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert refused.startswith(b"HTTP/1.1 403 Forbidden") and other.seen == []
        assert f"127.0.0.1:{other.port} is not in agent.allow_hosts".encode() in refused
        tunnel = _ask(path, f"CONNECT 127.0.0.1:{other.port} HTTP/1.1\r\n\r\n".encode())
        assert tunnel.startswith(b"HTTP/1.1 403") and other.seen == []

        with socket.socket(socket.AF_UNIX) as client:   # CONNECT to an allowed host: a tunnel to it
            client.connect(str(path))
            client.sendall(f"CONNECT 127.0.0.1:{allowed.port} HTTP/1.1\r\n\r\n".encode())
            assert client.recv(1024) == b"HTTP/1.1 200 Connection Established\r\n\r\n"
            client.sendall(b"GET /through HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        assert answer.endswith(b"allowed") and allowed.seen == ["/hello", "/through"]
        assert _ask(path, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert refusals == [f"127.0.0.1:{other.port}"] * 2
    assert not path.exists()   # the socket goes with the run


# Through serve, confined by real bubblewrap
def _readable() -> list[str]:
    """The checkout (the agent script) and the interpreter the venv links to (pyenv keeps it under the HOME the
    sandbox hides), as agent.sandbox_paths lets a confined agent read them."""
    return [str(Path(__file__).resolve().parents[1]), str(Path(sys.executable).resolve().parents[1])]


def _toml(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


@pytest.fixture
def bwrap():
    if sandbox.bwrap_works():
        pytest.skip(sandbox.bwrap_works())   # .ci/run installs bubblewrap; a host without user namespaces cannot


def _egress_run(github, start_bridge, servers, network: str):
    allowed, other = servers
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "Try the network", "b")
    argv = [sys.executable, str(EGRESS_AGENT), allowed.url, other.url, f"127.0.0.1:{allowed.port}"]
    bridge = start_bridge([github], agent={
        "argv": _toml(argv), "session_id": '"none"', "sandbox": '"bwrap"', "sandbox_paths": _toml(_readable()),
        "network": f'"{network}"', "allow_hosts": _toml([f"127.0.0.1:{allowed.port}"])})
    github.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:review"), timeout=90, what="the confined run")
    [pull] = repo.pulls.values()
    return bridge, json.loads(_branch_file(repo, pull.head, "EGRESS.json"))


def test_with_an_allowlist_the_agent_reaches_listed_hosts_through_the_proxy_only(github, start_bridge, servers,
                                                                                  bwrap):
    allowed, other = servers
    bridge, found = _egress_run(github, start_bridge, servers, "allowlist")
    assert found["allowed"] == "200 allowed" and allowed.seen == ["/hello"]
    assert found["refused"] == "403" and other.seen == []      # the other server never saw the agent
    assert found["direct"].startswith("failed") and found["proxy"] == f"http://127.0.0.1:{egress.INSIDE_PORT}"
    address = f"127.0.0.1:{other.port}"
    assert bridge.redis.hget(metrics.EGRESS_REFUSED, address) == b"1"
    assert f'forge_bridge_agent_egress_refused_total{{host="{address}"}} 1.0' in \
        requests.get(f"{bridge.url}/metrics", timeout=10).text
    assert address in requests.get(f"{bridge.url}/", timeout=10).text   # listed on the status page
    log = next((bridge.data_dir / "logs").rglob("*.log")).read_text()
    assert f"forge-bridge: refused a connection to {address} (not in agent.allow_hosts)" in log
    assert f"127.0.0.1:{allowed.port}" not in log.replace(allowed.url, "")   # allowed ones are not logged


def test_with_no_network_every_connection_fails_and_the_work_is_still_pushed(github, start_bridge, servers, bwrap):
    allowed, other = servers
    bridge, found = _egress_run(github, start_bridge, servers, "none")   # pushed: the pull request has EGRESS.json
    assert found["allowed"].startswith("failed") and found["refused"].startswith("failed")
    assert found["direct"].startswith("failed") and found["proxy"] == ""
    assert allowed.seen == [] and other.seen == []


def test_an_agent_program_the_sandbox_hides_is_named_with_the_fix(github, start_bridge, tmp_path, bwrap):
    from forge_bridge.store.sessions import Store

    hidden = tmp_path / "tools" / "bin" / "my-agent"   # under /tmp, which the sandbox replaces with its own
    hidden.parent.mkdir(parents=True)
    hidden.write_text(f"#!{sys.executable}\nprint('never runs')\n")
    hidden.chmod(0o755)
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "Run a hidden CLI", "b")
    bridge = start_bridge([github], agent={"argv": _toml([str(hidden)]), "session_id": '"none"',
                                           "sandbox": '"bwrap"', "sandbox_paths": _toml(_readable())})
    github.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:failed"), timeout=90, what="the refused run")
    store = Store(bridge.redis)
    [task] = store.tasks(store.session(f"127.0.0.1:{github.port}/alice/widgets#1").task_ids)
    assert task.outcome.startswith(f"the agent's program {hidden} lies under /tmp, which the sandbox hides")
    assert f'agent.sandbox_paths = ["{tmp_path / "tools"}"]' in task.outcome and "execvp" not in task.outcome

    checked = subprocess.run([sys.executable, "-m", "forge_bridge", "--config", str(bridge.config), "check"],
                             capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert f"FAIL agent command: the agent's program {hidden} lies under /tmp" in checked.stdout, checked.stdout


def test_a_network_policy_without_a_sandbox_stops_check_and_the_worker(tmp_path):
    config = tmp_path / "forge-bridge.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\nredis_url = "redis://127.0.0.1:1/0"\n'
                      '[agent]\npreset = "command"\nargv = ["true"]\nsandbox = "none"\nnetwork = "allowlist"\n')
    run = lambda *words: subprocess.run([sys.executable, "-m", "forge_bridge", "--config", str(config), *words],
                                        capture_output=True, text=True, timeout=60)
    checked = run("check")
    assert checked.returncode == 1
    assert "FAIL network: agent.network = 'allowlist' needs bubblewrap, and agents here would run without it" \
        in checked.stdout
    worker = run("worker")
    assert worker.returncode == 2 and "Traceback" not in worker.stderr
    assert "`forge-bridge worker` will not start: agent.network = 'allowlist' needs bubblewrap" in worker.stderr


def test_the_setup_script_runs_under_the_same_network_policy(github, start_bridge, servers, bwrap):
    from helpers import commit_to

    allowed, _ = servers
    repo = github.create_repo("alice", "widgets")
    probe = (f"#!/bin/bash\nif (exec 3<>/dev/tcp/127.0.0.1/{allowed.port}) 2>/dev/null; then echo reached; "
             "else echo 'no network'; fi > .setup-trace\n")
    commit_to(repo.bare, "main", {".forge-bridge/setup.sh": probe, ".gitignore": ".setup-trace\n"})
    issue = github.create_issue(repo, "Set up offline", "b")
    argv = [sys.executable, str(Path(__file__).resolve().parent / "agents" / "fake_agent.py"), "--include",
            ".setup-trace"]
    start_bridge([github], agent={"argv": _toml(argv), "session_id": '"none"', "sandbox": '"bwrap"',
                                  "sandbox_paths": _toml(_readable()), "network": '"none"'})
    github.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:review"), timeout=90, what="the confined run")
    [pull] = repo.pulls.values()
    assert ".setup-trace: no network" in _branch_file(repo, pull.head, "AGENT_WORK.md") and allowed.seen == []
