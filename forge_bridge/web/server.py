"""Run the Flask app under gunicorn from inside the process, so `forge-bridge web` needs no import string."""
from __future__ import annotations

from flask import Flask
from gunicorn.app.base import BaseApplication

WORKERS = 2
THREADS = 32   # threads are cheap; more of them keep /healthz answered while slow clients send their bodies


class _App(BaseApplication):
    def __init__(self, app: Flask, options: dict) -> None:
        self.application, self.options = app, options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        # gunicorn 25.1 and later open a control socket ($XDG_RUNTIME_DIR or ~/.gunicorn/gunicorn.ctl) through
        # which any process of the user may change the worker count or stop the server: an agent running
        # unsandboxed as the same user, for one; and every bridge of one user would share its path.
        if "control_socket_disable" in self.cfg.settings:
            self.cfg.set("control_socket_disable", True)

    def load(self) -> Flask:
        return self.application


def run_gunicorn(app: Flask, *, bind: str) -> None:
    _App(app, {"bind": bind, "workers": WORKERS, "threads": THREADS, "worker_class": "gthread",
               "graceful_timeout": 10, "accesslog": "-"}).run()
