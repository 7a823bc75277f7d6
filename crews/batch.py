"""`crewbatch run --batch-api`: every model request of a run through the provider's Batch API.

The crew does not change. Each ticket still runs in its own engine thread through the same agents,
tasks, tools and gate; only how a chat request travels does: the HTTP model's openai client gets
a transport (`BatchTransport`) that hands each `POST /chat/completions` body to the process's
one `Collector` instead of the network, and answers with the line the batch's output file holds
for it — a chat.completion body (or the line's error), which the SDK and CrewAI then parse exactly
as a live response (tool calls, structured output, a malformed answer's repair). The collector
gathers the requests of every ticket in flight; once all of them wait (or `max_gather_s` passes),
the wave goes out as one batch per model (split at the file limits), is polled, and each thread
gets its answer. The shape follows inspect_ai's `_openai_batch.py`: concurrent calls gathered into
batch files behind an ordinary model interface.

Exactly once: a request's custom_id is its ticket (the first outcome of its chain of attempts),
round, step, its number in the ticket, its attempt and a hash of its body — the same after a
crash. Batch, input file and custom_ids are in the ledger before anything is submitted; a run that
starts finds the batches an earlier one left open, polls them, and a ticket resumed from its
checkpoints (engine.Checkpoints) asks its in-flight request again under the same custom_id and
waits on that batch.
A downloaded line is stored in the ledger and answers its custom_id from then on. A line the
batch did not answer (expired, cancelled, failed batch) or answered with an error goes back
to the retry policy (calls.py), whose next attempt joins the next wave.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from .calls import request_attempt, request_slot
from .engine import working_outcome

LOG = logging.getLogger("crewbatch.batch")
ENDPOINT = "/v1/chat/completions"
RUNNING_STATES = ("validating", "in_progress", "finalizing", "cancelling")
# The status a line the batch never answered is given (expired, cancelled, a failed batch): a
# 5xx, so the retry policy sends it again in the next wave, up to `retry.max_attempts`.
UNANSWERED = 503
# A batch the provider refused for its limits (OpenAI: the enqueued-token limit fails the batch
# at validation): none of its lines ran, so the same file is made a batch again after `poll_s`,
# without using up an attempt of its requests.
LIMIT_CODES = {"token_limit_exceeded", "request_limit_exceeded", "rate_limit_exceeded"}


class Turns:
    """At most `n` tickets run crew code at once; a ticket gives its turn up while it waits on a
    batch and queues for one again (first come, first served) once its answer is in.

    Under the GIL, 640 tickets woken together by a finished batch all advance a little at a time
    and all reach their next request near the end of the wave's CPU, so nothing can be sent
    before all of it is spent. Taken in turns, tickets finish their CPU one after another and
    their requests come out steadily: a part-wave sent after `max_gather_s` is then waiting at
    the provider while the rest of the wave's CPU runs, instead of after it.
    """

    def __init__(self, n: int):
        self._free = threading.Semaphore(n)
        self._mine = threading.local()

    @contextmanager
    def held(self):
        """Around a ticket's work (pipeline.run)."""
        self._free.acquire()
        self._mine.held = True
        try:
            yield
        finally:
            self._mine.held = False
            self._free.release()

    @contextmanager
    def given_up(self):
        """Around a wait on a batch; a thread without a turn (a warm-up call) just waits."""
        held = getattr(self._mine, "held", False)
        if held:
            self._mine.held = False
            self._free.release()
        try:
            yield
        finally:
            if held:
                self._free.acquire()
                self._mine.held = True


@dataclass
class Waiter:
    custom_id: str
    model: str
    outcome_id: int
    body: dict
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[int, dict] | None = None

    def answer(self, status: int, payload: dict) -> None:
        self.result = (status, payload)
        self.done.set()


@dataclass
class Tracked:
    """A batch at the provider that this process polls."""

    batch_no: int
    batch_id: str
    submitted_s: float
    next_poll_s: float = 0.0
    waiters: list[Waiter] = field(default_factory=list)


def custom_id(outcome_root: int | None, step: str, seq: int, attempt: int, body: dict) -> str:
    """`o<ticket>-<round>-<step>-<n>-a<attempt>-<hash>`: the same request after a crash gets the
    same id; a changed request (another config) another one."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                       ensure_ascii=False).encode("utf-8", "surrogatepass")
                            ).hexdigest()[:12]
    if outcome_root is None:  # not a ticket's request: nothing to resume, never reused
        return f"x-{uuid.uuid4().hex[:16]}-{digest}"
    round_no, _, name = (step or "0:request").partition(":")
    return f"o{outcome_root}-{round_no}-{name or 'request'}-{seq}-a{attempt}-{digest}"


def _epoch(utc: str | None) -> float:
    if not utc:
        return time.time()
    return datetime.fromisoformat(utc.replace("Z", "+00:00")).timestamp()


def unanswered(detail: str) -> dict:
    return {"error": {"message": f"the batch did not answer this request: {detail}",
                      "type": "batch_unanswered", "code": "batch_unanswered"}}


class Collector:
    """The process's requests gathered into Batch API batches (see the module docstring).

    `in_flight()` is how many tickets this process is working (the engine's count): a wave goes
    out once that many wait. `stopping()` says the run is stopping: no new batch is submitted
    (the requests are asked again by the next run), pending ones are still polled.
    """

    def __init__(self, ledger, run_id: str, settings, client, *, in_flight=lambda: 0,
                 stopping=lambda: False):
        self.ledger, self.run_id, self.settings, self.client = ledger, run_id, settings, client
        self.in_flight, self.stopping = in_flight, stopping
        self.turns = Turns(settings.turns)
        self._cond = threading.Condition()
        self._pending: list[Waiter] = []
        self._first_s = self._last_s = 0.0
        self._tracked: dict[int, Tracked] = {}
        # Uploaded, not created yet (a 429, a lost answer, an earlier run's): (batch_no, file id,
        # waiters, when to try, whether a create may have reached the provider already).
        self._to_create: list[tuple[int, str, list[Waiter], float, bool]] = []
        self._roots: dict[int, int] = {}
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed: BaseException | None = None
        self.submitted = 0  # batches this process created at the provider

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Collector:
        """Take over the batches earlier runs left open, then start gathering."""
        self._recover()
        self._thread = threading.Thread(target=self._loop, name="crewbatch-batches", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _recover(self) -> None:
        for b in self.ledger.open_batches():
            if b["state"] == "preparing":
                # Killed before its file reached the provider: nothing was submitted; its
                # requests will be gathered again when their tickets ask.
                self.ledger.abandon_batch(b["batch_no"], "the run died before it was uploaded")
            elif b["state"] == "uploaded":
                self._to_create.append((b["batch_no"], b["input_file_id"], [], 0.0, True))
            else:
                self._tracked[b["batch_no"]] = Tracked(b["batch_no"], b["batch_id"],
                                                       _epoch(b["submitted_utc"]))
        if self._tracked or self._to_create:
            LOG.info("resuming %d pending batch(es) and %d not created yet", len(self._tracked),
                     len(self._to_create))

    # --- a ticket's request ----------------------------------------------------------------------

    def ask(self, body: dict) -> tuple[int, dict]:
        """The answer to one chat request (status, body), waiting for its batch."""
        outcome = working_outcome.get()
        step, seq = request_slot.get() or ("0:request", 0)
        root = None
        if outcome is not None:
            root = self._roots.get(outcome)
            if root is None:
                root = self._roots[outcome] = self.ledger.attempt_root(outcome)
        cid = custom_id(root, step, seq, request_attempt.get(), body)
        waiter = Waiter(cid, str(body.get("model", "")), outcome or 0, body)
        with self.turns.given_up():
            return self._wait(waiter, self.ledger.batch_request(cid) if root is not None
                              else None)

    def _wait(self, waiter: Waiter, row: dict | None) -> tuple[int, dict]:
        cid = waiter.custom_id
        for looks in itertools.count():
            if row is not None and row["status_code"] is not None:
                return self._stored(row)  # downloaded already: never requested again
            with self._cond:
                if self.failed is not None:
                    return 500, unanswered(f"the batch collector failed: {self.failed}")
                if row is None:  # a new request: it joins the next wave
                    now = time.monotonic()
                    if not self._pending:
                        self._first_s = now
                    self._last_s = now
                    self._pending.append(waiter)
                    self._cond.notify_all()
                    break
                # In a batch already (an earlier run's, this request resumed): wait for it.
                tracked = self._tracked.get(row["batch_no"])
                if tracked is not None:
                    tracked.waiters.append(waiter)
                    break
                deferred = next((x for x in self._to_create if x[0] == row["batch_no"]), None)
                if deferred is not None:
                    deferred[2].append(waiter)
                    break
            # Its batch is between two of the collector's lists (being created, or finished
            # and being stored): look again in a moment.
            if looks > 1200:  # a minute: no batch of this process holds it (cannot happen)
                return UNANSWERED, unanswered(f"batch {row['batch_no']} is {row['state']} "
                                              "but not followed by this run")
            time.sleep(0.05)
            row = self.ledger.batch_request(cid)
        waiter.done.wait()
        return waiter.result

    def _stored(self, row: dict) -> tuple[int, dict]:
        if not row["status_code"]:
            return UNANSWERED, unanswered(f"batch {row['batch_id'] or row['batch_no']} ended "
                                          f"{row['state']}")
        return int(row["status_code"]), json.loads(row["response_json"])

    def waiting(self) -> int:
        with self._cond:
            return self._waiting_locked()

    def _waiting_locked(self) -> int:
        return len(self._pending) + sum(len(t.waiters) for t in self._tracked.values()) + \
            sum(len(x[2]) for x in self._to_create)

    def parked(self) -> bool:
        """Every ticket in flight waits on a batch (a stopping run need not wait for them)."""
        active = self.in_flight()
        return active > 0 and self.waiting() >= active

    # --- the collector's thread ------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self._closed.is_set():
                wave = self._take_wave()
                if wave:
                    self._submit(wave)
                self._create_deferred()
                self._poll()
                with self._cond:
                    self._cond.wait(timeout=0.05)
        except BaseException as exc:  # noqa: BLE001 - every waiting ticket must hear of it
            LOG.exception("the batch collector failed")
            with self._cond:
                self.failed = exc
                waiters = self._pending + [w for t in self._tracked.values() for w in t.waiters]
                waiters += [w for x in self._to_create for w in x[2]]
                self._pending = []
            for w in waiters:
                w.answer(500, unanswered(f"the batch collector failed: {exc}"))

    def _take_wave(self) -> list[Waiter]:
        s = self.settings
        with self._cond:
            if not self._pending or self.stopping():
                return []
            now = time.monotonic()
            everyone = self._waiting_locked() >= self.in_flight()
            if (everyone and now - self._last_s >= s.gather_s) or \
                    now - self._first_s >= s.max_gather_s:
                wave, self._pending = self._pending, []
                return wave
        return []

    def _submit(self, wave: list[Waiter]) -> None:
        by_model: dict[str, list[Waiter]] = defaultdict(list)
        for w in wave:
            by_model[w.model].append(w)
        for model, waiters in by_model.items():
            for chunk, lines in self._split(waiters):
                data = b"".join(lines)
                batch_no = self.ledger.prepare_batch(
                    self.run_id, model, [(w.custom_id, w.outcome_id) for w in chunk], len(data))
                try:
                    uploaded = self._retrying(lambda d=data, n=batch_no: self.client.files.create(
                        file=(f"crewbatch-{n}.jsonl", d, "application/jsonl"), purpose="batch"))
                except Exception as exc:  # noqa: BLE001 - the lines go back to the retry policy
                    self.ledger.abandon_batch(batch_no, f"upload failed: {_brief(exc)}")
                    for w in chunk:
                        w.answer(UNANSWERED, unanswered(f"its upload failed: {_brief(exc)}"))
                    continue
                self.ledger.update_batch(batch_no, state="uploaded", input_file_id=uploaded.id)
                self._create(batch_no, uploaded.id, chunk)

    def _split(self, waiters: list[Waiter]):
        """The wave as files within the provider's limits (requests and bytes per file)."""
        s = self.settings
        chunk: list[Waiter] = []
        lines: list[bytes] = []
        size = 0
        for w in waiters:
            line = (json.dumps({"custom_id": w.custom_id, "method": "POST", "url": ENDPOINT,
                                "body": w.body}, ensure_ascii=False) + "\n").encode(
                "utf-8", "surrogatepass")
            if len(line) > s.max_bytes:
                w.answer(400, {"error": {"message": f"the request is {len(line)} bytes, over "
                                                    f"the batch file limit of {s.max_bytes}",
                                         "type": "invalid_request_error"}})
                continue
            if chunk and (len(chunk) >= s.max_requests or size + len(line) > s.max_bytes):
                yield chunk, lines
                chunk, lines, size = [], [], 0
            chunk.append(w)
            lines.append(line)
            size += len(line)
        if chunk:
            yield chunk, lines

    def _create(self, batch_no: int, file_id: str, waiters: list[Waiter],
                maybe_created: bool = False) -> None:
        """Create the batch of an uploaded file, exactly once: after a create whose answer was
        lost (a crash, a timeout, a dropped connection) the provider's batches are looked up
        first."""
        import openai

        found = self._find(file_id) if maybe_created else None
        sent = time.time()  # the wait is counted from the create, as the provider counts it
        try:
            batch = found or self.client.batches.create(
                input_file_id=file_id, endpoint=ENDPOINT,
                completion_window=self.settings.completion_window,
                metadata={"crewbatch_batch": str(batch_no), "crewbatch_run": self.run_id})
        except openai.RateLimitError as exc:
            # The provider's batch queue is full: try again once batches have finished.
            retry_after = _retry_after(exc) or self.settings.poll_s
            LOG.info("batch %d: the provider's batch limit is reached; retrying in %.0fs",
                     batch_no, retry_after)
            with self._cond:
                self._to_create.append((batch_no, file_id, waiters,
                                        time.monotonic() + retry_after, False))
            return
        except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError):
            with self._cond:
                self._to_create.append((batch_no, file_id, waiters,
                                        time.monotonic() + min(5.0, self.settings.poll_s), True))
            return
        except openai.APIStatusError as exc:
            self.ledger.update_batch(batch_no, state="failed", detail=_brief(exc))
            self.ledger.finish_batch(batch_no, "failed", {}, {})
            for w in waiters:
                w.answer(UNANSWERED, unanswered(f"creating its batch failed: {_brief(exc)}"))
            return
        if found is None:
            with self._cond:
                self.submitted += 1
        self.ledger.update_batch(batch_no, state="submitted", batch_id=batch.id,
                                 submitted_utc=_utc())
        with self._cond:
            self._tracked[batch_no] = Tracked(batch_no, batch.id,
                                              float(batch.created_at) if found else sent,
                                              time.monotonic() + self._first_poll(),
                                              list(waiters))
        LOG.info("batch %d (%s): %d request(s) submitted", batch_no, batch.id, len(waiters))

    def _first_poll(self) -> float:
        return min(self.settings.poll_s, 1.0)

    def _find(self, file_id: str):
        """The provider's batch for our file, if one was created (its answer lost in a crash)."""
        try:
            for i, b in enumerate(self.client.batches.list(limit=100)):
                if b.input_file_id == file_id:
                    return b
                if i >= 2000:
                    break
        except Exception as exc:  # noqa: BLE001 - without the list, do not risk a second batch
            raise _Unreachable(exc) from exc
        return None

    def _create_deferred(self) -> None:
        if self.stopping():
            return
        now = time.monotonic()
        with self._cond:
            due = [x for x in self._to_create if x[3] <= now]
            self._to_create = [x for x in self._to_create if x[3] > now]
        for batch_no, file_id, waiters, _, maybe in due:
            try:
                self._create(batch_no, file_id, waiters, maybe)
            except _Unreachable:
                with self._cond:
                    self._to_create.append((batch_no, file_id, waiters,
                                            now + self.settings.poll_s, True))

    def _poll(self) -> None:
        now = time.monotonic()
        with self._cond:
            due = [t for t in self._tracked.values() if t.next_poll_s <= now]
        for t in due:
            try:
                batch = self.client.batches.retrieve(t.batch_id)
            except Exception as exc:  # noqa: BLE001 - polled again at the next interval
                LOG.warning("batch %s: polling failed (%s); trying again", t.batch_id,
                            _brief(exc))
                t.next_poll_s = now + self.settings.poll_s
                continue
            if batch.status in RUNNING_STATES:
                t.next_poll_s = now + self.settings.poll_s
                continue
            try:
                self._collect(t, batch)
            except Exception as exc:  # noqa: BLE001 - a download that failed: tried again
                if self.ledger.batch(t.batch_no)["state"] not in ("submitted", "uploaded"):
                    raise  # stored already: what failed is not the provider
                LOG.warning("batch %s: downloading its results failed (%s); trying again",
                            t.batch_id, _brief(exc))
                t.next_poll_s = now + self.settings.poll_s

    def _collect(self, t: Tracked, batch) -> None:
        """A finished batch: download its output and error files, store every line in the
        ledger, then answer the waiting tickets."""
        codes = {e.code for e in getattr(batch.errors, "data", None) or []}
        if batch.status == "failed" and codes & LIMIT_CODES and batch.input_file_id:
            LOG.info("batch %d (%s) refused by the provider's limit (%s); created again in %.0fs",
                     t.batch_no, t.batch_id, ", ".join(sorted(codes)), self.settings.poll_s)
            self.ledger.update_batch(t.batch_no, state="uploaded", batch_id="",
                                     detail=f"{t.batch_id} refused: {', '.join(sorted(codes))}")
            with self._cond:
                self._tracked.pop(t.batch_no, None)
                self._to_create.append((t.batch_no, batch.input_file_id, list(t.waiters),
                                        time.monotonic() + self.settings.poll_s, False))
            return
        answers: dict[str, tuple[int, str]] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            data = self._retrying(lambda f=file_id: self.client.files.content(f).content)
            for raw in data.splitlines():
                if not raw.strip():
                    continue
                line = json.loads(raw)
                response = line.get("response")
                if response and response.get("status_code"):
                    answers[line["custom_id"]] = (int(response["status_code"]),
                                                  json.dumps(response.get("body") or {}))
        detail = ""
        if batch.errors and getattr(batch.errors, "data", None):
            detail = "; ".join(f"{e.code}: {e.message}" for e in batch.errors.data)[:500]
        earlier = (self.ledger.batch(t.batch_no) or {}).get("detail") or ""
        if earlier:  # e.g. an earlier batch of the same file refused for the provider's limit
            detail = f"{earlier}; {detail}" if detail else earlier
        wait_s = time.time() - t.submitted_s
        self.ledger.finish_batch(t.batch_no, batch.status, answers, {
            "output_file_id": batch.output_file_id or "", "error_file_id":
            batch.error_file_id or "", "wait_s": round(wait_s, 3), "detail": detail})
        with self._cond:
            self._tracked.pop(t.batch_no, None)
            waiters = list(t.waiters)
        LOG.info("batch %d (%s) %s after %.1fs: %d of %d line(s) answered", t.batch_no,
                 t.batch_id, batch.status, wait_s, len(answers), len(waiters))
        why = f"batch {t.batch_id} ended {batch.status}" + (f" ({detail})" if detail else "")
        for w in waiters:
            if w.custom_id in answers:
                code, body = answers[w.custom_id]
                w.answer(code, json.loads(body))
            else:
                w.answer(UNANSWERED, unanswered(why))

    def _retrying(self, call, attempts: int = 4):
        for i in range(attempts):
            try:
                return call()
            except Exception as exc:  # noqa: BLE001 - a transient failure of a read or upload
                if i == attempts - 1:
                    raise
                LOG.warning("Batch API call failed (%s); retrying", _brief(exc))
                time.sleep(min(2 ** i, 10))
        return None

class _Unreachable(Exception):
    """The provider's batch list could not be read: creating now might create a second batch."""


def _retry_after(exc) -> float | None:
    try:
        return float(exc.response.headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):
        return None


def _brief(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    text = " ".join(str(exc).split())[:200]
    return f"HTTP {status}: {text}" if status else f"{type(exc).__name__}: {text}"


def _utc() -> str:
    from .ledger import utc_now

    return utc_now()


class BatchTransport(httpx.BaseTransport):
    """The openai client's transport in batch mode: chat requests go to the collector, anything
    else (there is nothing else today) to the network."""

    def __init__(self, collector: Collector, fallback: httpx.BaseTransport | None = None):
        self.collector = collector
        self.fallback = fallback or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/chat/completions"):
            status, payload = self.collector.ask(json.loads(request.read() or b"{}"))
            return httpx.Response(status, json=payload, request=request)
        return self.fallback.handle_request(request)

    def close(self) -> None:
        self.fallback.close()


def client_for(config, environ) -> Any:
    """The openai client for the Batch API calls: the live model's endpoint and key. Its own
    retries are off: a create retried blindly could submit a batch twice (Collector._create)."""
    import openai

    return openai.OpenAI(api_key=environ.get("OPENAI_API_KEY"),
                         base_url=config.settings.llm.base_url or environ.get("OPENAI_BASE_URL")
                         or None, max_retries=0, timeout=config.settings.llm.timeout_s)


def install(llms, collector: Collector) -> int:
    """Route every HTTP model's chat requests through `collector`; the number of clients."""
    from openai import DefaultHttpxClient

    installed = 0
    for inner in {id(m): m for m in (getattr(m, "inner", m) for m in llms)}.values():
        get = getattr(inner, "_get_sync_client", None)
        if get is None:
            continue  # the offline model
        old = get()
        inner._client = old.with_options(
            http_client=DefaultHttpxClient(transport=BatchTransport(collector)))
        old.close()
        installed += 1
    return installed
