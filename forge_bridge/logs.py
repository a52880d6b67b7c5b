"""Logging: text or one JSON object a line, with the task id and issue ref on every line logged for a task."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_TASK: ContextVar[tuple[str, str]] = ContextVar("forge_bridge_task", default=("", ""))
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s%(task_suffix)s"
QUIET = ("httpx", "urllib3", "werkzeug")   # one line per HTTP request is noise at INFO


@contextmanager
def task_context(task_id: str, issue: str) -> Iterator[None]:
    token = _TASK.set((task_id, issue))
    try:
        yield
    finally:
        _TASK.reset(token)


class _TaskFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.task_id, record.issue = _TASK.get()
        record.task_suffix = f" [task {record.task_id} {record.issue}]" if record.task_id else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if getattr(record, "task_id", ""):
            line.update(task_id=record.task_id, issue=record.issue)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure(log_format: str, *, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_TaskFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
