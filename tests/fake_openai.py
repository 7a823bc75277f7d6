"""A fake OpenAI-compatible chat-completions server on 127.0.0.1, for tests and the benchmark.

It also answers /v1/embeddings, deterministically (hashed character trigrams), so the knowledge
base's embedding search is tested over HTTP without a network.

It answers with the offline model's `respond`, so a client talking to it through CrewAI's `LLM`,
the openai SDK or LangChain gets realistic tool calls and structured JSON. Faults can be injected
two ways: scripted (a queue of HTTP errors to return first, one hang, the next N answers broken)
for tests that assert exact request counts, and random rates drawn from a seeded RNG (429 with
Retry-After, 500, hangs, malformed structured answers) for the benchmark's fault run. Every request
is recorded, so callers can count and inspect what a client really sent.

It simulates a provider's automatic prompt caching as OpenAI documents it: a request whose first
1,024 tokens or more match a recent request's is served that shared prefix from the cache, counted
in 128-token steps and reported as `usage.prompt_tokens_details.cached_tokens` (`PrefixCache`).

It speaks the Batch API too (`BatchAPI`): `/v1/files` (upload, metadata, content), `/v1/batches`
(create, retrieve, list, cancel) with output and error files. Each line is answered by the same
`handle` as a live request (so outcomes match a live run), after a configurable completion delay;
per-line errors, batches that expire with part of their lines done, failed batches and a limit of
requests enqueued at once (429 on create) are injected through `BatchFaults`. It counts the batches
created and every custom_id submitted, so tests can prove that nothing was submitted twice.

It keeps up with many concurrent clients: a handler thread per connection, HTTP/1.1 keep-alive as
real providers offer, and a listen backlog far above the default 5 — a full backlog drops SYNs and
the client's retransmit adds a whole second to a request, which would masquerade as client overhead.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    from crews.offline import respond
except ModuleNotFoundError:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))
    from crews.offline import respond


def sample_replies():
    """The sample shop's offline sentences (data/knowledge/replies.yaml of this repository), so
    the HTTP path answers as `--offline` does on the sample project."""
    from crews.replies import load_replies
    from crews.settings import load_config

    return load_replies(load_config(ROOT))


@dataclass
class Faults:
    latency_s: float = 0.0
    errors: list[int] = field(default_factory=list)   # statuses returned before any success
    retry_after_s: int = 1
    hang_s: float = 0.0                               # sleep this long on the next request
    malformed: int = 0                                # next N successful answers are broken JSON
    # Random faults: each request draws once from a seeded RNG (shares of all requests).
    rate_429: float = 0.0                             # 429 with Retry-After: retry_after_s
    rate_500: float = 0.0
    rate_hang: float = 0.0                            # sleep random_hang_s, then answer normally
    random_hang_s: float = 10.0
    rate_malformed: float = 0.0                       # share of structured answers cut in half
    seed: int = 0
    # The provider's own limit: past this many requests in any 60 s, 429 (fault "limit").
    requests_per_minute: int = 0


@dataclass
class BatchFaults:
    delay_s: float = 0.0                 # from creation until a batch is done
    delayed_batches: int = 0             # only the first N batches wait delay_s (0: every one)
    # A line's error status (e.g. 500) or None, given {custom_id, body}; errors go to the error file.
    fail_line: Callable[[dict], int | None] | None = None
    # Answer only the first N lines of the next `expire_batches` batches; the batch then ends
    # `expired` and the rest are in its error file as `batch_expired`.
    expire_after: int = 0
    expire_batches: int = 0
    fail_batches: int = 0                # the next N batches end `failed` (no line answered)
    # The next N batches are cancelled (as from the provider's dashboard) after `expire_after`
    # lines: those are in the output file, the rest in the error file as `batch_cancelled`.
    cancel_batches: int = 0
    # Past this many lines in unfinished batches a create is refused: with a 429 (`limit_as`
    # "429"), or, as OpenAI does with its enqueued-token limit, by a batch that fails at once
    # with `token_limit_exceeded` ("fail"); a refused batch's lines are not counted as submitted.
    max_enqueued_requests: int = 0
    limit_as: str = "429"
    max_requests_per_batch: int = 50_000
    max_bytes_per_file: int = 200 * 1024 * 1024


CHARS_PER_TOKEN = 4  # the server's token estimate, for prompt_tokens and the cache alike


class PrefixCache:
    """Which prefix of a request a provider's prompt cache would serve, as OpenAI describes it.

    A request's prompt is its tools and structured-output schema (providers put them ahead of the
    messages, and bill them as input) followed by its messages in order, role and content
    (`prompt_text`): a request with other tools or another schema shares nothing. Prefixes are kept as a chain of hashes, one per
    128-token block (`step` tokens of `CHARS_PER_TOKEN` characters), for the `capacity` most
    recently seen blocks: a request is served the longest chain it shares with any recent request,
    if that is at least `minimum` tokens, and then its own blocks become recent.
    """

    def __init__(self, minimum: int = 1024, step: int = 128, capacity: int = 200_000):
        self.minimum, self.step, self.capacity = minimum, step, capacity
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def serve(self, body: dict) -> int:
        """The cached tokens of this request (0 below the minimum), remembering its prefix."""
        text = prompt_text(body)
        block = self.step * CHARS_PER_TOKEN
        digest = hashlib.sha1(str(body.get("model")).encode()).digest()
        chain = []
        for start in range(0, len(text) - block + 1, block):
            digest = hashlib.sha1(digest + text[start:start + block].encode()).digest()
            chain.append(digest)
        with self._lock:
            shared = 0
            for i, digest in enumerate(chain):
                if digest not in self._seen:
                    break
                shared = i + 1
            for digest in chain:
                self._seen[digest] = None
                self._seen.move_to_end(digest)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
        tokens = shared * self.step
        return tokens if tokens >= self.minimum else 0


def prompt_text(body: dict) -> str:
    """What the provider reads as the prompt: tools and schema first, then every message."""
    head = "".join(json.dumps(body[k], sort_keys=True) for k in ("tools", "response_format")
                   if body.get(k))
    return head + "".join(f"<|{m.get('role')}|>{_content(m)}" for m in body.get("messages", []))


def prompt_tokens_of(body: dict) -> int:
    """The server's input token count: tools and schema (billed as input) and message contents."""
    head = sum(len(json.dumps(body[k], sort_keys=True)) for k in ("tools", "response_format")
               if body.get(k))
    return (head + sum(len(str(m.get("content") or "")) for m in body.get("messages", []))) \
        // CHARS_PER_TOKEN + 1


def _content(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    if message.get("tool_calls"):
        return f"{content or ''}{json.dumps(message['tool_calls'], sort_keys=True)}"
    return str(content or "")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the listen backlog; the default (5) drops bursts of connections


class FakeOpenAI:
    """`with FakeOpenAI(Faults(...)) as server:` then point a client at `server.base_url`.

    `requests` lists every request ({path, body, headers, at, fault}); with `keep_bodies=False`
    bodies are dropped after `on_request` has seen them, so long runs stay small.
    """

    def __init__(self, faults: Faults | None = None, *, keep_bodies: bool = True,
                 on_request: Callable[[dict], None] | None = None, port: int = 0,
                 replies=None, host: str = "127.0.0.1", batch: BatchFaults | None = None,
                 prompt_cache: bool = True):
        self.faults = faults or Faults()
        self.batch_api = BatchAPI(self, batch or BatchFaults())
        self.prompt_cache = prompt_cache
        self.replies = replies if replies is not None else sample_replies()
        self.requests: list[dict] = []
        self.keep_bodies = keep_bodies
        self.on_request = on_request
        self._lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        self._window: deque[float] = deque()  # arrival times, for requests_per_minute
        self.cache = PrefixCache()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real provider
            # Headers and body go out in two writes; with Nagle on, the body waits for the
            # client's delayed ACK and every request gains ~40 ms.
            disable_nagle_algorithm = True

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                routed = server.batch_api.get(self.path)
                if routed is not None:
                    self._send(*routed)
                elif self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake-model",
                                                                 "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                routed = server.batch_api.post(self.path, raw, self.headers.get("Content-Type", ""))
                if routed is not None:
                    self._send(*routed)
                    return
                body = json.loads(raw or b"{}")
                status, payload, headers = server.handle(self.path, body,
                                                         dict(self.headers.items()),
                                                         self.client_address[0])
                self._send(status, payload, headers)

            def _send(self, status, payload, headers=None):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/octet-stream"
                                     if isinstance(payload, bytes) else "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout on a hung call)

        # `host` "0.0.0.0" only for the tests' own network namespaces (tests/test_multihost.py).
        self.httpd = _Server((host, port), Handler)
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

    def forget_cache(self) -> None:
        """Start with an empty prompt cache (a measured system must not reuse another's)."""
        self.cache = PrefixCache()

    def inject(self, faults: Faults) -> None:
        """Switch to other faults mid-run; the random ones restart from `faults.seed`."""
        with self._lock:
            self.faults = faults
            self._rng = random.Random(faults.seed)

    def _draw(self, structured: bool) -> str | None:
        """This request's random fault (called under the lock, so the sequence is seeded)."""
        f = self.faults
        if not (f.rate_429 or f.rate_500 or f.rate_hang or f.rate_malformed):
            return None
        x = self._rng.random()
        for name, rate in (("429", f.rate_429), ("500", f.rate_500), ("hang", f.rate_hang)):
            if x < rate:
                return name
            x -= rate
        if structured and self._rng.random() < f.rate_malformed:
            return "malformed"
        return None

    def handle(self, path: str, body: dict, headers: dict, peer: str = "",
               batched: bool = False):
        fmt = body.get("response_format") or {}
        schema = (fmt.get("json_schema") or {}).get("name") if fmt.get("type") == "json_schema" \
            else None
        with self._lock:
            error = self.faults.errors.pop(0) if self.faults.errors else None
            hang, self.faults.hang_s = self.faults.hang_s, 0.0
            malformed = self.faults.malformed > 0
            if malformed and error is None:
                self.faults.malformed -= 1
            fault = self._draw(schema is not None)
            if self.faults.requests_per_minute and path.endswith("/chat/completions"):
                now = time.monotonic()
                while self._window and now - self._window[0] >= 60:
                    self._window.popleft()
                if len(self._window) >= self.faults.requests_per_minute:
                    fault, error = "limit", 429
                else:
                    self._window.append(now)
            if error is None and fault in ("429", "500"):
                error = int(fault)
            if fault == "hang":
                hang = max(hang, self.faults.random_hang_s)
            malformed = malformed or fault == "malformed"
            record = {"path": path, "body": body, "headers": headers, "at": time.monotonic(),
                      "peer": peer,
                      "fault": fault or (str(error) if error else None)}
            self.requests.append(record)
        if self.on_request is not None:
            self.on_request(record)
        if not self.keep_bodies:
            record["body"] = None
        # Looked up and stored on arrival: a provider caches the prefix when it reads the prompt.
        cached = self.cache.serve(body) if self.prompt_cache and error is None and \
            path.rstrip("/").endswith("/chat/completions") else 0
        if self.faults.latency_s and not batched:
            time.sleep(self.faults.latency_s)
        if hang:
            time.sleep(hang)
        if error is not None:
            extra = {"Retry-After": str(self.faults.retry_after_s)} if error == 429 else {}
            return error, {"error": {"message": f"injected {error}", "type": "server_error"}}, extra
        if path.rstrip("/").endswith("/embeddings"):
            return 200, embeddings(body), {}
        if not path.rstrip("/").endswith("/chat/completions"):
            return 404, {"error": {"message": f"no route {path}"}}, {}
        messages = body.get("messages", [])
        tools = [t["function"]["name"] for t in body.get("tools") or []]
        answer = respond(messages, tools, schema, self.replies)
        message: dict = {"role": "assistant", "content": None}
        finish = "stop"
        if isinstance(answer, list):
            message["tool_calls"] = answer
            finish = "tool_calls"
        else:
            message["content"] = answer[: len(answer) // 2] if malformed else answer
        prompt_tokens = prompt_tokens_of(body)
        completion_tokens = len(json.dumps(answer)) // CHARS_PER_TOKEN + 1
        cached_tokens = min(cached, prompt_tokens)
        record.update(prompt_tokens=prompt_tokens, cached_tokens=cached_tokens,
                      completion_tokens=completion_tokens)
        return 200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", "fake-model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": cached_tokens}},
        }, {}


class BatchAPI:
    """OpenAI's Batch API over the server's own answers: files in memory, batches that complete
    `BatchFaults.delay_s` after creation (their lines are answered by `FakeOpenAI.handle` at once,
    in a thread, and released when the delay has passed)."""

    def __init__(self, server: FakeOpenAI, faults: BatchFaults):
        self.server, self.faults = server, faults
        self._lock = threading.Lock()
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.created = 0                        # batches.create calls that made a batch
        self.refused = 0                        # creates answered 429 (the enqueued limit)
        self.custom_ids: dict[str, int] = {}    # every custom_id submitted, with its count
        self.retrieves = 0

    def inject(self, faults: BatchFaults) -> None:
        with self._lock:
            self.faults = faults

    def finish_now(self, batch_id: str) -> None:
        """Let a pending batch finish at its next look, whatever its delay."""
        with self._lock:
            self.batches[batch_id]["ready_at"] = time.time()

    # --- routing ---------------------------------------------------------------------------------

    def get(self, path: str):
        path = path.split("?", 1)[0].rstrip("/")
        parts = path.split("/")
        if "/files/" in path and path.endswith("/content"):
            f = self.files.get(parts[-2])
            return (200, f["data"]) if f else (404, {"error": {"message": "no such file"}})
        if "/files/" in path:
            f = self.files.get(parts[-1])
            return (200, f["meta"]) if f else (404, {"error": {"message": "no such file"}})
        if path.endswith("/batches"):
            with self._lock:
                data = [self._view(b) for b in sorted(self.batches.values(),
                                                       key=lambda b: -b["seq"])]
            return 200, {"object": "list", "data": data, "has_more": False,
                         "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None}
        if "/batches/" in path:
            with self._lock:
                self.retrieves += 1
                b = self.batches.get(parts[-1])
                return (200, self._view(b)) if b else (404, {"error": {"message": "no batch"}})
        return None

    def post(self, path: str, raw: bytes, content_type: str):
        path = path.split("?", 1)[0].rstrip("/")
        if path.endswith("/files"):
            return self._upload(raw, content_type)
        if path.endswith("/batches"):
            return self._create(json.loads(raw or b"{}"))
        if "/batches/" in path and path.endswith("/cancel"):
            with self._lock:
                b = self.batches.get(path.split("/")[-2])
                if b is None:
                    return 404, {"error": {"message": "no batch"}}
                if b["status"] in ("validating", "in_progress", "finalizing"):
                    b["cancel"] = True
                return 200, self._view(b)
        return None

    # --- files -----------------------------------------------------------------------------------

    def _upload(self, raw: bytes, content_type: str):
        from email.parser import BytesParser
        from email.policy import HTTP

        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        fields = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = (part.get_filename(), part.get_payload(decode=True))
        data = (fields.get("file") or (None, b""))[1] or b""
        if len(data) > self.faults.max_bytes_per_file:
            return 400, {"error": {"message": f"file of {len(data)} bytes exceeds the limit of "
                                              f"{self.faults.max_bytes_per_file}"}}
        return 200, self._store(data, (fields.get("file") or ("input.jsonl",))[0],
                                (fields.get("purpose") or (None, b"batch"))[1].decode())

    def _store(self, data: bytes, filename: str, purpose: str) -> dict:
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        meta = {"id": file_id, "object": "file", "bytes": len(data),
                "created_at": int(time.time()), "filename": filename or "file.jsonl",
                "purpose": purpose, "status": "processed"}
        with self._lock:
            self.files[file_id] = {"meta": meta, "data": data}
        return meta

    # --- batches ---------------------------------------------------------------------------------

    def _create(self, body: dict):
        f = self.files.get(body.get("input_file_id", ""))
        if f is None:
            return 404, {"error": {"message": "no such input file"}}
        lines = [json.loads(x) for x in f["data"].splitlines() if x.strip()]
        with self._lock:
            faults = self.faults
            enqueued = sum(len(b["lines"]) for b in self.batches.values()
                           if b["status"] in ("validating", "in_progress", "finalizing"))
            over = faults.max_enqueued_requests and enqueued + len(lines) > \
                faults.max_enqueued_requests
            if over and faults.limit_as == "429":
                self.refused += 1
                return 429, {"error": {"message": "enqueued request limit reached",
                                       "code": "batch_limit"}}, {"Retry-After": "1"}
            if over:
                self.refused += 1
            else:
                self.created += 1
                for line in lines:
                    self.custom_ids[line["custom_id"]] = \
                        self.custom_ids.get(line["custom_id"], 0) + 1
            batch_id = f"batch_{uuid.uuid4().hex[:24]}"
            fate = "completed"
            if over:
                fate = "failed"
            elif faults.fail_batches:
                faults.fail_batches -= 1
                fate = "failed"
            elif len(lines) > faults.max_requests_per_batch:
                fate = "failed"
            elif faults.expire_batches:
                faults.expire_batches -= 1
                fate = "expired"
            elif faults.cancel_batches:
                faults.cancel_batches -= 1
                fate = "cancelled"
            b = {"id": batch_id, "seq": self.created, "lines": lines, "body": body,
                 "status": "in_progress", "created_at": time.time(), "fate": fate,
                 "ready_at": time.time() + (faults.delay_s if not faults.delayed_batches or
                                            self.created <= faults.delayed_batches else 0),
                 "answers": None, "cancel": False,
                 "expire_after": faults.expire_after, "fail_line": faults.fail_line,
                 "output_file_id": None, "error_file_id": None, "errors": None,
                 "done_at": None}
            if fate == "failed":
                code = ("token_limit_exceeded" if over else "too_many_requests"
                        if len(lines) > faults.max_requests_per_batch else "batch_failed")
                b["errors"] = {"object": "list", "data": [{
                    "code": code, "message": "Enqueued token limit reached" if over else
                    "injected batch failure", "line": None}]}
            self.batches[batch_id] = b
            view = self._view(b)
        threading.Thread(target=self._answer, args=(b,), daemon=True).start()
        return 200, view

    def _answer(self, b: dict) -> None:
        answers = []
        for i, line in enumerate(b["lines"]):
            if b["fate"] == "failed" or (b["fate"] in ("expired", "cancelled")
                                         and i >= b["expire_after"]):
                answers.append(None)
                continue
            status = b["fail_line"](line) if b["fail_line"] else None
            if status:
                answers.append((status, {"error": {"message": f"injected {status}",
                                                   "type": "server_error"}}))
                continue
            code, payload, _ = self.server.handle(line.get("url", "/v1/chat/completions"),
                                                  line["body"], {}, "batch", batched=True)
            answers.append((code, payload))
        with self._lock:
            b["answers"] = answers

    def _finish(self, b: dict, status: str) -> None:
        """Write the output and error files of a batch ending in `status` (under the lock)."""
        out, err = [], []
        counts = {"total": len(b["lines"]), "completed": 0, "failed": 0}
        for line, answer in zip(b["lines"], b["answers"] or [None] * len(b["lines"]),
                                strict=True):
            row = {"id": f"batch_req_{uuid.uuid4().hex[:16]}", "custom_id": line["custom_id"]}
            if answer is None:
                if status == "failed":
                    continue
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                err.append({**row, "response": None, "error": {
                    "code": code, "message": "This request could not be executed before the "
                                             "completion window expired." if code ==
                    "batch_expired" else "This request was cancelled."}})
                continue
            response = {"status_code": answer[0], "request_id": uuid.uuid4().hex,
                        "body": answer[1]}
            if answer[0] == 200:
                out.append({**row, "response": response, "error": None})
                counts["completed"] += 1
            else:
                err.append({**row, "response": response, "error": None})
                counts["failed"] += 1
        if out:
            b["output_file_id"] = self._store_locked(out, "batch_output")
        if err:
            b["error_file_id"] = self._store_locked(err, "batch_output")
        b["status"], b["done_at"], b["counts"] = status, time.time(), counts

    def _store_locked(self, rows: list[dict], purpose: str) -> str:
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        self.files[file_id] = {"data": data, "meta": {
            "id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
            "filename": "output.jsonl", "purpose": purpose, "status": "processed"}}
        return file_id

    def _view(self, b: dict) -> dict:
        """The batch as the API shows it, moving it on first if its time has come (locked)."""
        now = time.time()
        if b["status"] == "in_progress":
            if b["cancel"]:
                if b["answers"] is None:
                    b["answers"] = [None] * len(b["lines"])
                self._finish(b, "cancelled")
            elif b["fate"] == "failed":
                b["answers"] = [None] * len(b["lines"])
                self._finish(b, "failed")
            elif now >= b["ready_at"] and b["answers"] is not None:
                self._finish(b, b["fate"])
        stamp = int(b["created_at"])
        done = int(b["done_at"]) if b["done_at"] else None
        counts = b.get("counts") or {"total": len(b["lines"]), "completed": 0, "failed": 0}
        return {"id": b["id"], "object": "batch", "endpoint": b["body"].get("endpoint"),
                "errors": b["errors"], "input_file_id": b["body"].get("input_file_id"),
                "completion_window": b["body"].get("completion_window", "24h"),
                "status": b["status"], "output_file_id": b["output_file_id"],
                "error_file_id": b["error_file_id"], "created_at": stamp,
                "in_progress_at": stamp,
                "expires_at": stamp + 86400,
                "completed_at": done if b["status"] == "completed" else None,
                "expired_at": done if b["status"] == "expired" else None,
                "failed_at": done if b["status"] == "failed" else None,
                "cancelled_at": done if b["status"] == "cancelled" else None,
                "finalizing_at": None, "cancelling_at": None,
                "request_counts": counts, "metadata": b["body"].get("metadata")}


EMBEDDING_DIM = 256


def hashed_embedding(text: str, dim: int = EMBEDDING_DIM) -> list[float]:
    """A deterministic unit vector from the text's character trigrams, each hashed to a signed
    dimension: texts sharing words (or word parts, in any language) point the same way."""
    import zlib

    vector = [0.0] * dim
    padded = f"  {' '.join(str(text).lower().split())}  "
    for i in range(len(padded) - 2):
        h = zlib.crc32(padded[i:i + 3].encode("utf-8", "surrogatepass"))
        vector[h % dim] += 1.0 if h & 0x80000000 else -1.0
    norm = sum(x * x for x in vector) ** 0.5 or 1.0
    return [x / norm for x in vector]


def embeddings(body: dict) -> dict:
    """The /v1/embeddings answer: a hashed-trigram vector per input, floats or base64."""
    import base64
    import struct

    inputs = body.get("input", [])
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    data = []
    for i, text in enumerate(inputs):
        vector = hashed_embedding(text if isinstance(text, str) else " ".join(map(str, text)))
        if body.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    tokens = sum(len(str(t)) // 4 + 1 for t in inputs)
    return {"object": "list", "data": data, "model": body.get("model", "fake-embedding"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def main(argv: list[str] | None = None) -> None:
    """Serve until Ctrl-C: `python tests/fake_openai.py --port 8000 --latency 0.5`."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    p.add_argument("--batch-delay", type=float, default=0.0,
                   help="seconds from a batch's creation until it is done")
    p.add_argument("--no-prompt-cache", action="store_true",
                   help="report no cached prompt tokens")
    args = p.parse_args(argv)
    with FakeOpenAI(Faults(latency_s=args.latency), keep_bodies=False, port=args.port,
                    batch=BatchFaults(delay_s=args.batch_delay),
                    prompt_cache=not args.no_prompt_cache) as server:
        print(f"OPENAI_BASE_URL={server.base_url} (Ctrl-C stops)", file=sys.stderr)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
