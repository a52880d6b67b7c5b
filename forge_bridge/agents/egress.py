"""The agents' only way out under `agent.network = "allowlist"`: an HTTP proxy on a unix socket that the sandbox
(which has no network of its own) reaches through a relay inside it. It opens connections only to allowed hosts —
CONNECT for https, plain http by its absolute URL — and answers 403 to the rest, telling `on_refused` of each.

Written here rather than taken from a package: the bridge needs one small thing (a per-run allowlist, the refusals
reported back, a unix socket) that general proxies (tinyproxy, squid) would need a configuration file and a
daemon for. `socat`, a Debian tool, is the relay inside the sandbox."""
from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import socketserver
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from forge_bridge.agents import allowlist

log = logging.getLogger(__name__)
MAX_HEAD = 64 * 1024
CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 600.0            # a tunnel silent this long is closed
INSIDE_PORT = 3128              # where the relay listens inside the sandbox (its own network namespace)
INSIDE_SOCKET = "/tmp/forge-bridge-egress.sock"   # where the proxy's socket is bound inside the sandbox
# Inside the sandbox: relay 127.0.0.1:INSIDE_PORT to the proxy's socket, wait until it listens, run the agent.
# Constant text; the socket, the port and the agent's argv arrive as arguments, never inside the script.
RELAY = ('socat TCP-LISTEN:"$2",bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:"$1" & '
         'for _ in $(seq 250); do (exec 3<>/dev/tcp/127.0.0.1/"$2") 2>/dev/null && break; sleep 0.02; done; '
         'shift 2; exec "$@"')


def _read_head(conn: socket.socket) -> tuple[bytes, bytes] | None:
    """The request's head (up to its blank line) and what came after it; None when the client sent nothing."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > MAX_HEAD:
            return None
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _target(head: bytes) -> tuple[str, str, int, bytes] | None:
    """(method, host, port, what to send upstream first) for CONNECT host:port or an absolute http URL."""
    first, _, headers = head.partition(b"\r\n")
    parts = first.decode("latin-1").split(" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        return (method, host.strip("[]"), int(port), b"") if port.isdigit() and host else None
    address = urlsplit(target)
    if address.scheme != "http" or not address.hostname:
        return None
    path = (address.path or "/") + (f"?{address.query}" if address.query else "")
    kept = [line for line in headers.split(b"\r\n") if line and not line.lower().startswith(b"proxy-")]
    upstream = b"\r\n".join([f"{method} {path} {version}".encode("latin-1"), *kept]) + b"\r\n\r\n"
    return method, address.hostname, address.port or 80, upstream


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both sides have finished (or nothing moved for IDLE_TIMEOUT)."""
    selector, other, open_ = selectors.DefaultSelector(), {a: b, b: a}, {a, b}
    for sock in open_:
        selector.register(sock, selectors.EVENT_READ)
    while open_:
        ready = selector.select(IDLE_TIMEOUT)
        if not ready:
            return
        for key, _ in ready:
            sock = key.fileobj
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if data:
                other[sock].sendall(data)
                continue
            selector.unregister(sock)
            open_.discard(sock)
            with contextlib.suppress(OSError):
                other[sock].shutdown(socket.SHUT_WR)


class Proxy(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, allowed: tuple[allowlist.Allowed, ...],
                 on_refused: Callable[[str], None]) -> None:
        self.allowed, self.on_refused = allowed, on_refused
        super().__init__(path, _Handler)


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        proxy: Proxy = self.server
        read = _read_head(self.request)
        target = _target(read[0]) if read else None
        if target is None:
            if read:
                self.request.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        method, host, port, first = target
        address = f"{host}:{port}"
        if not allowlist.admitted(proxy.allowed, host, port):
            proxy.on_refused(address)
            body = f"forge-bridge: {address} is not in agent.allow_hosts\n".encode()
            self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            return
        try:
            upstream = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except OSError as error:
            self.request.sendall(f"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n"
                                 f"X-Forge-Bridge: {type(error).__name__}\r\n\r\n".encode())
            return
        with upstream:
            upstream.settimeout(None)
            if method == "CONNECT":
                self.request.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            else:
                upstream.sendall(first)
            if read[1]:
                upstream.sendall(read[1])
            _pump(self.request, upstream)


@contextlib.contextmanager
def running(allowed: tuple[allowlist.Allowed, ...], on_refused: Callable[[str], None]) -> Iterator[Path]:
    """A proxy for one run, on a socket in a folder of its own that only this user may enter; gone afterwards."""
    with tempfile.TemporaryDirectory(prefix="fb-egress-") as folder:
        path = Path(folder) / "s"
        proxy = Proxy(str(path), allowed, on_refused)
        thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                                  name="egress-proxy")
        thread.start()
        try:
            yield path
        finally:
            proxy.shutdown()
            proxy.server_close()


def sandbox_args(network: str, socket_path: Path | None) -> list[str]:
    """bwrap's options for the network: its own namespace (only loopback) unless open; the proxy's socket inside."""
    if network == "open":
        return []
    args = ["--unshare-net"]
    if network == "allowlist" and socket_path is not None:
        args += ["--bind", str(socket_path), INSIDE_SOCKET]
    return args


def relayed(argv: list[str]) -> list[str]:
    """The agent's argv behind the relay to the proxy (inside the sandbox)."""
    return ["bash", "-c", RELAY, "forge-bridge-relay", INSIDE_SOCKET, str(INSIDE_PORT), *argv]


def proxy_env(allowed: tuple[allowlist.Allowed, ...]) -> dict[str, str]:
    """The proxy variables, upper and lower case (tools read one or the other)."""
    url = f"http://127.0.0.1:{INSIDE_PORT}"
    values = {"HTTPS_PROXY": url, "HTTP_PROXY": url, "ALL_PROXY": url, "NO_PROXY": allowlist.no_proxy(allowed)}
    return {**values, **{name.lower(): value for name, value in values.items()}}
