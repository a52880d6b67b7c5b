"""A scripted model server on 127.0.0.1 for the real agent CLIs: Anthropic Messages, OpenAI Responses and OpenAI
Chat Completions, streamed (SSE) as the CLIs ask. It records every request, and answers from a script: the
test says which file the agent should write and what it should say; a conversation that already holds the
tool's result gets the final answer. While `fail_with` is set, every request is that API error."""
from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.serving import make_server

INPUT_TOKENS, OUTPUT_TOKENS = 300, 50


@dataclass
class Script:
    answer: str = "I wrote the file."
    fail_with: tuple[int, str] | None = None  # (status, message): every request fails so while it is set
    writes: int = 0                          # files written so far: each run writes a new one, WORK-<n>.md


@dataclass
class Recorded:
    path: str
    body: dict[str, Any]


@dataclass
class ModelServer:
    script: Script = field(default_factory=Script)
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.app = self._build()
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ModelServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()

    def main_requests(self) -> list[Recorded]:
        """The agent's own conversation: requests that offer tools (Claude Code), or aider's chat requests — not
        titles, summaries, commit messages or quota probes."""
        return [r for r in self.requests if (r.body.get("tools") and not r.path.endswith("chat/completions")) or
                (r.path.endswith("chat/completions") and "commit message" not in json.dumps(r.body).lower())]

    def _build(self) -> Flask:
        app = Flask("models")

        @app.post("/v1/messages")
        def messages():
            body = request.get_json(force=True)
            self.requests.append(Recorded(request.path, body))
            if failure := self.script.fail_with:
                return jsonify(type="error", error={"type": "invalid_request_error", "message": failure[1]}), \
                    failure[0]
            return _sse(anthropic_events(self.script, body), named=True)

        @app.post("/v1/chat/completions")
        @app.post("/chat/completions")
        def chat_completions():
            body = request.get_json(force=True)
            self.requests.append(Recorded(request.path, body))
            if failure := self.script.fail_with:
                return jsonify(error={"type": "invalid_request_error", "message": failure[1]}), failure[0]
            message = {"role": "assistant", "content": chat_answer(self.script, body)}
            answer = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": 0,
                      "model": body.get("model", "scripted"), "choices": [
                          {"index": 0, "message": message, "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": INPUT_TOKENS, "completion_tokens": OUTPUT_TOKENS,
                                "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS}}
            if not body.get("stream"):
                return jsonify(answer)
            chunk = {**answer, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": message, "finish_reason": "stop"}]}
            return _sse([("", chunk)], named=False)

        @app.post("/v1/responses")
        @app.post("/responses")
        def responses():
            body = request.get_json(force=True)
            self.requests.append(Recorded(request.path, body))
            if failure := self.script.fail_with:
                return jsonify(error={"type": "invalid_request_error", "code": "model_not_found",
                                      "message": failure[1]}), failure[0]
            return _sse(responses_events(self.script, body), named=True)

        @app.post("/v1/messages/count_tokens")
        def count_tokens():
            return jsonify(input_tokens=INPUT_TOKENS)

        @app.errorhandler(404)
        def unknown(error):
            self.requests.append(Recorded(request.path, {}))
            return jsonify(error={"message": f"no such endpoint {request.path}"}), 404

        return app


def _sse(events: list[tuple[str, dict]], *, named: bool) -> Response:
    def lines():
        for name, data in events:
            yield (f"event: {name}\n" if named else "") + f"data: {json.dumps(data)}\n\n"
    return Response(lines(), mimetype="text/event-stream")


# Where the CLI runs, as its system prompt says (Claude Code, then opencode)
WORKDIR_RE = re.compile(r"(?:Primary working directory|Working directory): ([^\s\\\"]+)")


def _has_tool_result(messages: list[dict]) -> bool:
    last = messages[-1] if messages else {}
    content = last.get("content")
    return isinstance(content, list) and any(part.get("type") == "tool_result" for part in content)


def anthropic_events(script: Script, body: dict) -> list[tuple[str, dict]]:
    message = {"id": f"msg_{uuid.uuid4().hex[:12]}", "type": "message", "role": "assistant",
               "model": body.get("model", "claude"), "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1}}
    events = [("message_start", {"type": "message_start", "message": message})]
    if body.get("tools") and not _has_tool_result(body.get("messages", [])):
        script.writes += 1   # both write tools take an absolute path: the prompt names the working directory
        workdir = WORKDIR_RE.search(json.dumps(body))
        path = f"{workdir[1] if workdir else '.'}/WORK-{script.writes}.md"
        opencode = any(tool.get("name") == "write" for tool in body["tools"])   # else Claude Code's Write
        arguments = json.dumps({"filePath" if opencode else "file_path": path, "content": f"work {script.writes}\n"})
        events += [("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
                       "type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:12]}",
                       "name": "write" if opencode else "Write", "input": {}}}),
                   ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                   ("content_block_stop", {"type": "content_block_stop", "index": 0})]
        stop = "tool_use"
    else:
        text = script.answer if body.get("tools") else "ok"
        events += [("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}}),
                   ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": text}}),
                   ("content_block_stop", {"type": "content_block_stop", "index": 0})]
        stop = "end_turn"
    events += [("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                  "usage": {"output_tokens": OUTPUT_TOKENS}}),
               ("message_stop", {"type": "message_stop"})]
    return events


def chat_answer(script: Script, body: dict) -> str:
    """aider's whole-file edit format: the file's name on a line, then its whole content fenced. Its own
    side requests (commit messages, summaries) get a plain line."""
    said = json.dumps(body.get("messages", []))
    if "commit message" in said.lower():
        return "Add the work file"
    script.writes += 1
    return f"{script.answer}\n\nWORK-{script.writes}.md\n```\nwork {script.writes}\n```\n"


def _responses_done(items: list[dict]) -> bool:
    """Whether the tool call made for the latest user message already has its result (a resumed thread holds
    earlier turns' results too)."""
    users = [i for i, item in enumerate(items) if item.get("role") == "user"]
    latest = items[users[-1] + 1:] if users else items
    return any(item.get("type") in ("function_call_output", "custom_tool_call_output") for item in latest)


def responses_events(script: Script, body: dict) -> list[tuple[str, dict]]:
    items = body.get("input") if isinstance(body.get("input"), list) else []
    response = {"id": f"resp_{uuid.uuid4().hex[:12]}", "object": "response", "created_at": 0, "status": "in_progress",
                "model": body.get("model", "scripted"), "output": []}
    events = [("response.created", {"type": "response.created", "response": response})]
    if body.get("tools") and not _responses_done(items):
        script.writes += 1
        command = f"printf 'work {script.writes}\\n' > WORK-{script.writes}.md"   # Codex's exec_command tool
        item = {"type": "function_call", "id": f"fc_{uuid.uuid4().hex[:12]}", "call_id": f"call_{script.writes}",
                "name": "exec_command", "arguments": json.dumps({"cmd": command}), "status": "completed"}
    else:
        item = {"type": "message", "id": f"msg_{uuid.uuid4().hex[:12]}", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": script.answer, "annotations": []}]}
    events += [("response.output_item.added", {"type": "response.output_item.added", "output_index": 0,
                                                "item": {**item, "status": "in_progress"}}),
               ("response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": item}),
               ("response.completed", {"type": "response.completed", "response": {
                   **response, "status": "completed", "output": [item],
                   "usage": {"input_tokens": INPUT_TOKENS, "input_tokens_details": {"cached_tokens": 0},
                             "output_tokens": OUTPUT_TOKENS, "output_tokens_details": {"reasoning_tokens": 0},
                             "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS}}})]
    return events
