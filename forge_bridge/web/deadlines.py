"""Cut off a request body still arriving at its deadline: gunicorn's reads wait for every byte asked for, and
each recv only BODY_TIMEOUT, so a client sending a byte now and then would otherwise hold a thread for ever."""
from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

CHECK_EVERY = 0.5   # seconds: how late past its deadline a body may be cut off


class Deadlines:
    """One watcher thread per process shuts the reading side of each watched socket at its deadline (checked
    every CHECK_EVERY while any is watched); a read waiting on it then ends at once, and the connection closes."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.watched: dict[int, tuple[float, socket.socket]] = {}
        self.watcher_pid = 0
        self.idle = False   # the watcher waits for a first socket, not for the next check

    @contextmanager
    def cut_off(self, client: socket.socket, deadline: float) -> Iterator[None]:
        """While inside, `client` stops being readable at `deadline` (by time.monotonic())."""
        key = id(client)   # the socket is alive, so its id is its own, while it is watched
        with self.changed:
            if self.watcher_pid != os.getpid():   # a forked web worker starts its own
                self.watcher_pid = os.getpid()
                threading.Thread(target=self._watch, name="body-deadlines", daemon=True).start()
            if self.idle:   # woken only from idleness: waking it for every request cost the hot path dearly
                self.idle = False
                self.changed.notify()
            self.watched[key] = (deadline, client)
        try:
            yield
        finally:
            with self.changed:
                self.watched.pop(key, None)

    def _watch(self) -> None:
        with self.changed:
            while True:
                if not self.watched:
                    self.idle = True
                    self.changed.wait_for(lambda: not self.idle)
                self.changed.wait(CHECK_EVERY)
                now = time.monotonic()
                for key, (deadline, client) in list(self.watched.items()):
                    if deadline <= now:
                        del self.watched[key]
                        _stop_reading(client)


def _stop_reading(client: socket.socket) -> None:
    try:
        client.shutdown(socket.SHUT_RD)
    except OSError:   # already closed by the other side
        pass


DEADLINES = Deadlines()
