"""A local stand-in for an OpenAI-compatible chat endpoint, for the chat
graph's tests (no network): ``POST /v1/chat/completions``, streamed as the
real one streams (server-sent events of ``chat.completion.chunk``, tool
calls as ``tool_calls`` deltas, ``data: [DONE]``) or answered whole.

What it answers, from the last message:

- a tool result: ``The answer is <result>.``;
- a user text starting ``calculate: EXPR``: a call of the ``calculate`` tool;
- a user text mentioning ``time``: a call of ``current_time``;
- anything else: ``You said: <text>``.

Text is streamed a word at a time, ``token_delay`` seconds apart. Every
request is kept (``requests``) with its headers, for the tests to check.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    def __init__(self, token_delay: float = 0.005):
        self.token_delay = token_delay
        self.requests: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- what it answers -----------------------------------------------------------------

    @staticmethod
    def answer(messages: list[dict[str, Any]]) -> tuple[str, dict[str, Any] | None]:
        """``(text, tool call)`` for a conversation: one of them is empty."""
        last = messages[-1] if messages else {}
        if last.get("role") == "tool":
            return f"The answer is {last.get('content')}.", None
        text = last.get("content") or ""
        if isinstance(text, list):
            text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
        if text.startswith("calculate:"):
            return "", {"name": "calculate", "arguments": json.dumps({"expression": text.split(":", 1)[1].strip()})}
        if "time" in text.split():
            return "", {"name": "current_time", "arguments": "{}"}
        return f"You said: {text}", None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if not self.path.endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
                    return
                text, call = fake.answer(body.get("messages", []))
                model = body.get("model", "fake")
                if body.get("stream"):
                    self._stream(model, text, call, bool((body.get("stream_options") or {}).get("include_usage")))
                else:
                    message: dict[str, Any] = {"role": "assistant", "content": text or None}
                    if call:
                        message["tool_calls"] = [{"id": "call_1", "type": "function", "function": call}]
                    self._json(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                                     "model": model, "choices": [{"index": 0, "message": message,
                                                                  "finish_reason": "tool_calls" if call else "stop"}],
                                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, model: str, text: str, call: dict[str, Any] | None, usage: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()

                def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
                    payload = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": int(time.time()),
                               "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                               **extra}
                    self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
                    self.wfile.flush()

                chunk({"role": "assistant", "content": ""})
                if call:
                    chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                           "function": {"name": call["name"], "arguments": ""}}]})
                    arguments = call["arguments"]
                    for i in range(0, len(arguments), 8):  # the arguments arrive in pieces, as they do
                        chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[i:i + 8]}}]})
                    chunk({}, "tool_calls")
                else:
                    words = text.split(" ")
                    for i, word in enumerate(words):
                        chunk({"content": word if i == 0 else " " + word})
                        time.sleep(fake.token_delay)
                    chunk({}, "stop")
                if usage:
                    self.wfile.write(("data: " + json.dumps({
                        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": model, "choices": [],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}) + "\n\n").encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        return Handler
