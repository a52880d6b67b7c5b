"""Structured logs: one JSON object a line when asked, with the task id and issue ref on a task's lines."""
from __future__ import annotations

import json
import logging

from forge_bridge import logs


def test_json_lines_carry_the_task_and_the_issue(capsys):
    logs.configure("json")
    log = logging.getLogger("forge_bridge.test")
    log.info("outside any task")
    with logs.task_context("t-1", "h.example/o/r#3"):
        log.warning("inside %s", "a task")
    first, second = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert first["message"] == "outside any task" and "task_id" not in first
    assert second == {**second, "level": "WARNING", "message": "inside a task", "task_id": "t-1",
                      "issue": "h.example/o/r#3"}


def test_text_lines_name_the_task_too(capsys):
    logs.configure("text")
    with logs.task_context("t-2", "h.example/o/r#4"):
        logging.getLogger("forge_bridge.test").info("hello")
    assert capsys.readouterr().err.strip().endswith("hello [task t-2 h.example/o/r#4]")
