"""`serve`'s process tree: the embedded server, then web, workers and poller as children; a child that dies is
replaced; a stop ends every process that uses the server (work horses and RQ schedulers too) before the server.

RQ puts each work horse in a session of its own and forks its scheduler beside the worker, so a worker's exit
does not mean its descendants are gone. `serve` makes itself a child subreaper (Linux): every orphaned
descendant is handed to it, and it waits for the whole tree to end before it stops the server, so nothing
is left talking to a server that is gone."""
from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from forge_bridge.store import embedded
from forge_bridge.config import CONFIG_ENV, Settings

log = logging.getLogger("forge_bridge")
SHUTDOWN_GRACE = 25.0
RESTART_DELAY = 1.0
REAP_INTERVAL = 0.05
PR_SET_CHILD_SUBREAPER = 36
SECRETS_FD_ENV = "FORGE_BRIDGE_SECRETS_FD"
REDIS_URL_ENV = "FORGE_BRIDGE_REDIS_URL"


class Stopping(Exception):
    """SIGTERM or SIGINT arrived."""


class _Signals:
    """The first SIGTERM/SIGINT raises Stopping in the main thread, or, inside `deferred()`, at its end. (Setting
    a threading.Event from a signal handler can deadlock with a wait on the same Event.) Later signals are
    ignored so cleanup runs to its end. Deferring is a flag, not a blocked signal mask, which children would
    inherit."""

    deferring = False
    pending = ""

    def handle(self, signum, frame) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        self.pending = signal.Signals(signum).name
        if not self.deferring:
            raise Stopping(self.pending)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending:
            raise Stopping(self.pending)


_SIGNALS = _Signals()
signals_deferred = _SIGNALS.deferred


def raise_on_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _SIGNALS.handle)


def become_subreaper() -> bool:
    """Orphaned descendants are reparented to this process instead of init, so it can wait for them."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _parents() -> dict[int, int]:
    """pid → parent pid of every process visible in /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue   # gone meanwhile
        # The command name may hold spaces and parentheses: the fields after the last ")" are fixed.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Every living descendant of `pid`, children first."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found, frontier = [], [pid]
    while frontier:
        kin = children.get(frontier.pop(), [])
        found += kin
        frontier += kin
    return found


def reap_orphans(keep: set[int]) -> None:
    """Collect the exit status of reparented descendants (not the children Popen tracks), so no zombie stays."""
    for pid in descendants(os.getpid()):
        if pid in keep:
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass   # not our child (a grandchild still has its parent)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def secret_names(settings: Settings) -> set[str]:
    """The variables that hold the bridge's secrets: forge tokens, GitHub App keys, webhook secrets, the UI token."""
    names = {settings.ui_token_env, REDIS_URL_ENV}
    for forge in settings.forges:
        names |= {forge.token_env, forge.webhook_secret_env, forge.private_key_env} - {""}
    return names


def received_environ() -> dict[str, str]:
    """This process's environment plus the secrets `serve` handed over on a pipe, not in the environment: a
    process's starting environment stays readable in /proc/<pid>/environ, where an agent below would look."""
    environ = dict(os.environ)
    descriptor = os.environ.get(SECRETS_FD_ENV)
    if descriptor and descriptor.isdigit():
        os.environ.pop(SECRETS_FD_ENV)
        with os.fdopen(int(descriptor), "r") as pipe:
            environ.update(json.load(pipe))
        environ.pop(SECRETS_FD_ENV, None)
    return environ


class Supervisor:
    """`serve`: the embedded server, then web, workers and poller as child processes; a child that dies
    is replaced; SIGTERM or Ctrl-C stops them all, then the server, well inside 30 s."""

    def __init__(self, settings: Settings, *, bind: str) -> None:
        self.settings, self.bind = settings, bind
        self.children: dict[str, subprocess.Popen] = {}
        self.server: embedded.EmbeddedServer | None = None
        names = secret_names(settings)
        self.secrets = {name: value for name, value in os.environ.items() if name in names}
        self.env = {name: value for name, value in os.environ.items() if name not in names}
        self.env[CONFIG_ENV] = str(Path(settings.source).resolve())

    def roles(self) -> dict[str, list[str]]:
        # One `worker`: it forks this host's event and agent workers itself, sharing what it imported.
        # Its stop is serve's: agents are stopped at once and their tasks go back (serve exits within 30 s).
        return {"web": ["web", "--bind", self.bind], "poller": ["poll"], "worker": ["worker", "--stop-grace", "0"]}

    def spawn(self, name: str, argv: list[str]) -> None:
        # A session of its own: Ctrl-C reaches `serve` alone, which then stops the children in order. The secrets
        # go on a pipe the child reads once (a JSON object far below the pipe's buffer, so this never blocks).
        read_end, write_end = os.pipe()
        try:
            self.children[name] = subprocess.Popen([sys.executable, "-m", "forge_bridge", *argv],
                                                   env={**self.env, SECRETS_FD_ENV: str(read_end)},
                                                   pass_fds=(read_end,), start_new_session=True)
            with os.fdopen(write_end, "w") as pipe:
                json.dump(self.secrets, pipe)
        finally:
            os.close(read_end)

    def start(self) -> None:
        become_subreaper()
        with signals_deferred():   # a stop while starting must not leave a server or child unrecorded
            redis_url = self.settings.redis_url
            if not redis_url:
                self.server = embedded.EmbeddedServer(self.settings.data_dir)
                redis_url = self.server.start()
            self.secrets[REDIS_URL_ENV] = redis_url
            for name, argv in self.roles().items():
                self.spawn(name, argv)
        print(f"forge-bridge: listening on http://{self.bind} (webhooks at /webhooks/<forge>)", flush=True)
        print(f"forge-bridge: data in {self.settings.data_dir}; redis at {redis_url}"
              f"{' (embedded)' if self.server else ''}", flush=True)
        print("forge-bridge: press Ctrl-C (or send SIGTERM) to stop", flush=True)

    def watch(self) -> None:
        roles = self.roles()
        while True:
            time.sleep(RESTART_DELAY)
            for name, child in list(self.children.items()):
                if child.poll() is not None:
                    log.warning("%s exited with %s; starting a new one", name, child.returncode)
                    self.spawn(name, roles[name])
            reap_orphans({child.pid for child in self.children.values()})

    def shutdown(self) -> None:
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for child in self.children.values():
            if child.poll() is None:
                # The whole group: an RQ worker's scheduler must hear it too; the worker passes it on to its
                # work horse (a session of its own), whose runner stops the agent and requeues the task.
                _signal_group(child.pid, signal.SIGTERM)
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.pid, signal.SIGKILL)
                child.wait()
        self._wait_for_descendants(deadline)
        if self.server:
            self.server.stop()

    def _wait_for_descendants(self, deadline: float) -> None:
        """Every descendant but the server gone (reaping those handed to us); past the deadline, killed."""
        server = self.server.pid if self.server else None
        while True:
            reap_orphans(set())
            remaining = [pid for pid in descendants(os.getpid()) if pid != server]
            if not remaining:
                return
            if time.monotonic() > deadline:
                log.warning("stopping: %d process(es) still running after %.0fs; killing them",
                            len(remaining), SHUTDOWN_GRACE)
                for pid in remaining:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                deadline = float("inf")
            time.sleep(REAP_INTERVAL)
