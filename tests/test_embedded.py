"""The embedded Valkey server: append-only persistence across restarts and cleanup of a leftover server."""
from __future__ import annotations

from redis import Redis

from forge_bridge.store.embedded import EmbeddedServer


def test_data_survives_a_restart(tmp_path):
    server = EmbeddedServer(tmp_path)
    Redis.from_url(server.start()).rpush("queue", "task-1")
    server.stop()
    assert (tmp_path / "valkey" / "appendonlydir").is_dir()
    again = EmbeddedServer(tmp_path)
    try:
        assert Redis.from_url(again.start()).lrange("queue", 0, -1) == [b"task-1"]
    finally:
        again.stop()


def test_a_leftover_server_is_shut_down_and_its_data_kept(tmp_path):
    leftover = EmbeddedServer(tmp_path)
    Redis.from_url(leftover.start()).set("k", "v")
    process = leftover._server._process
    leftover._server._process = None  # forget it, as a killed `serve` would
    fresh = EmbeddedServer(tmp_path)
    try:
        conn = Redis.from_url(fresh.start())
        assert process.wait(timeout=10) is not None
        assert conn.get("k") == b"v"
    finally:
        fresh.stop()


def test_a_socket_folder_open_to_others_is_refused(tmp_path):
    import os

    import pytest

    from forge_bridge.store.embedded import private_socket_dir

    shared = tmp_path / "forge-bridge-sock"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)   # as another user on a shared /tmp could have made it first
    with pytest.raises(OSError, match="must be a folder of this user's with mode 0700"):
        private_socket_dir(shared)
    os.chmod(shared, 0o700)
    private_socket_dir(shared)   # its own, private: used
    (tmp_path / "link").symlink_to(shared)
    with pytest.raises(OSError):
        private_socket_dir(tmp_path / "link")
