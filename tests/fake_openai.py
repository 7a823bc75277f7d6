"""A fake OpenAI-compatible chat-completions server on 127.0.0.1, for the real HTTP path.

It answers with the offline model's `respond`, so a crew talking to it through CrewAI's own `LLM`
and the openai SDK gets realistic tool calls and structured JSON. Faults can be injected: latency,
a queue of HTTP errors to return first (429 with Retry-After, 500 ...), hangs, malformed JSON.
It records every request so tests can assert on what the client really sent.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from crews.offline import respond


@dataclass
class Faults:
    latency_s: float = 0.0
    errors: list[int] = field(default_factory=list)   # statuses returned before any success
    retry_after_s: int = 1
    hang_s: float = 0.0                               # sleep this long on the next request
    malformed: int = 0                                # next N successful answers are broken JSON


class FakeOpenAI:
    def __init__(self, faults: Faults | None = None):
        self.faults = faults or Faults()
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake-model",
                                                                 "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                status, payload, headers = server.handle(self.path, body,
                                                         dict(self.headers.items()))
                self._send(status, payload, headers)

            def _send(self, status, payload, headers=None):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, path: str, body: dict, headers: dict):
        with self._lock:
            self.requests.append({"path": path, "body": body, "headers": headers})
            error = self.faults.errors.pop(0) if self.faults.errors else None
            hang, self.faults.hang_s = self.faults.hang_s, 0.0
            malformed = self.faults.malformed > 0
            if malformed and error is None:
                self.faults.malformed -= 1
        if self.faults.latency_s:
            time.sleep(self.faults.latency_s)
        if hang:
            time.sleep(hang)
        if error is not None:
            extra = {"Retry-After": str(self.faults.retry_after_s)} if error == 429 else {}
            return error, {"error": {"message": f"injected {error}", "type": "server_error"}}, extra
        if not path.rstrip("/").endswith("/chat/completions"):
            return 404, {"error": {"message": f"no route {path}"}}, {}
        messages = body.get("messages", [])
        tools = [t["function"]["name"] for t in body.get("tools") or []]
        fmt = body.get("response_format") or {}
        schema = (fmt.get("json_schema") or {}).get("name") if fmt.get("type") == "json_schema" \
            else None
        answer = respond(messages, tools, schema)
        message: dict = {"role": "assistant", "content": None}
        finish = "stop"
        if isinstance(answer, list):
            message["tool_calls"] = answer
            finish = "tool_calls"
        else:
            message["content"] = answer[: len(answer) // 2] if malformed else answer
        prompt_tokens = sum(len(str(m.get("content") or "")) for m in messages) // 4 + 1
        completion_tokens = len(json.dumps(answer)) // 4 + 1
        return 200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", "fake-model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": 0}},
        }, {}
