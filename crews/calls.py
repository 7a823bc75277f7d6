"""Every model call goes through here: one shared rate limiter, one retry policy, one deadline.

CrewAI and the openai SDK each retry on their own, and the retries nest (a permanent 429 made 27
requests in ~21 s). crewbatch owns the policy instead: the SDK's retries are set to 0, CrewAI's
agent retries to 0, and `ManagedLLM` wraps the real model so that a failing call is attempted at
most `retry.max_attempts` times — 429, 5xx, timeouts and dropped connections with exponential
backoff, jitter and a cap, honouring Retry-After; a malformed structured answer gets
`retry.repair_attempts` more tries; nothing else is retried. All calls to one model share one
`RateLimiter` (requests and tokens per minute), and a Retry-After pauses every caller of that model
(in every `--workers` process).
A per-ticket deadline bounds the whole thing. It is also where requests are recorded and, in a
replay, answered from the recording (recording.py): no limiter, no network, no retries for those.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import threading
import time
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, get_args

import httpx
from crewai.events.types.llm_events import LLMCallType
from crewai.llms.base_llm import BaseLLM, llm_call_context
from pydantic import BaseModel, PrivateAttr, ValidationError

from .engine import durable_step
from .recording import (
    NO_USAGE,
    Exchange,
    RecordedCall,
    Request,
    RequestChanged,
    answer_of,
    current_exchange,
    recording_step,
    response_of,
)

LOGGER = logging.getLogger("crewbatch.calls")
# The deadline (time.monotonic()) of the ticket whose crew is running in this context.
ticket_deadline: ContextVar[float | None] = ContextVar("crewbatch_ticket_deadline", default=None)
# Told after every completed model request of this context, so the ticket's accounting can wait
# for exactly its own call events instead of flushing CrewAI's whole event bus.
request_done: ContextVar[Any] = ContextVar("crewbatch_request_done", default=None)
# Where a request stands in its ticket, for the Batch API's custom_id (batch.py), the same after
# a crash: the step ("round:step", set by the crew per step), and the request's number in the
# ticket (counted for every request, checkpointed or not, by `request_counter`, set per ticket);
# `request_attempt` is the attempt of the retry policy.
step_key: ContextVar[str | None] = ContextVar("crewbatch_step_key", default=None)
request_counter: ContextVar[Any] = ContextVar("crewbatch_request_counter", default=None)
request_slot: ContextVar[tuple[str, int] | None] = ContextVar("crewbatch_request_slot",
                                                              default=None)
request_attempt: ContextVar[int] = ContextVar("crewbatch_request_attempt", default=1)


_generics_lock = threading.Lock()
_shared_generics: tuple[Any, list] | None = None  # (pydantic's cache of them, the classes)


def _model_classes(annotation) -> list[type[BaseModel]]:
    """The pydantic model classes an annotation names, in lists, unions, Optional, Annotated."""
    found = []
    try:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.append(annotation)
    except TypeError:  # a parametrized alias such as list[X] on some Pythons
        pass
    for arg in get_args(annotation):
        found.extend(_model_classes(arg))
    return found


def complete_classes(roots) -> None:
    """Build now the schema of every model class reachable from `roots` through their fields.

    The openai SDK declares its response classes with pydantic's `defer_build`: each builds its
    schema at its first use, in `model_rebuild`, and `model_rebuild` is not thread-safe — it
    deletes the class's placeholder schema before setting the real one, and a thread reading the
    class's schema in between gets BaseModel's ("Pydantic models should inherit from BaseModel,
    BaseModel cannot be instantiated directly", openai-python#3079). With many tickets making
    their first calls at once that failed a ticket now and then (CI, test_replay_bench_smoke).
    Called under `_generics_lock`, before any ticket thread parses an answer.
    """
    todo, seen = list(roots), set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        cls.model_rebuild()  # nothing to do for a class already built
        for field in cls.model_fields.values():
            todo.extend(_model_classes(field.annotation))


def share_generic_cache(models) -> None:
    """Give this thread's context the process's one cache of parametrized generic models.

    The openai SDK parses every structured answer into ParsedChatCompletion[<model>] (and its
    ParsedChoice[...], ParsedChatCompletionMessage[...]). pydantic keeps those classes in a cache
    held by a ContextVar, which is empty in every new thread, and builds each class's schema
    lazily at its first use: ~60 ms of CPU per thread for the Draft and Verdict classes. At 256
    tickets in flight (256 threads) that was over a quarter of a run's CPU. The classes are
    built once per process, with every other class an answer is parsed into (`complete_classes`:
    building them lazily from many threads at once is not safe), and every ticket thread's
    context is given the same cache; the classes are held here because the cache keeps weak
    references. Without pydantic's cache variable (another pydantic version) each thread builds
    its own generic classes; the shared, non-generic ones are still built first.
    """
    global _shared_generics
    from openai.types.chat import ParsedChatCompletion

    try:
        from pydantic._internal._generics import _GENERIC_TYPES_CACHE as cache_var
    except ImportError:  # pragma: no cover - a pydantic without it: per-thread classes
        cache_var = None
    with _generics_lock:
        if _shared_generics is None:
            from openai.types import Batch, FileObject
            from openai.types.chat import ChatCompletion

            try:  # what the SDK parametrizes its answers with when it parses one
                from openai.lib._parsing._completions import ResponseFormatT
            except ImportError:  # pragma: no cover - another openai version
                ResponseFormatT = None
            held = [ParsedChatCompletion[m] for m in models]
            if ResponseFormatT is not None:
                held.append(ParsedChatCompletion[ResponseFormatT])
            complete_classes([ChatCompletion, Batch, FileObject, *held])
            _shared_generics = (cache_var.get() if cache_var is not None else None, held)
    cache, held = _shared_generics
    if cache_var is None or cache is None:
        [ParsedChatCompletion[m] for m in models]  # this thread's own, cached in its context
    elif cache_var.get() is not cache:
        cache_var.set(cache)


class ModelCallFailed(Exception):
    """A model call that exhausted the retry policy (message safe to record; no secrets)."""


class TicketDeadlineExceeded(Exception):
    """The ticket ran out of time (settings `ticket_timeout_s`)."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4          # per call, first try included
    repair_attempts: int = 1       # extra tries for a malformed structured answer
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    jitter: float = 0.25           # +-25 % of the computed delay

    def delay(self, retry_number: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(0.0, retry_after), self.max_delay_s)
        raw = min(self.max_delay_s, self.base_delay_s * 2 ** (retry_number - 1))
        return max(0.0, raw * (1 + random.uniform(-self.jitter, self.jitter)))

    @property
    def bound(self) -> int:
        """The most requests one call can make."""
        return self.max_attempts + self.repair_attempts


class RateLimiter:
    """Requests and tokens per minute for one model, shared by every thread; sliding 60 s window.

    In a run the limits are the fleet's (`fleet`: every worker's requests counted in the ledger);
    without one, each of N processes would get an equal share. And
    `shared_pause` (`engine.SharedPause`, or anything with `.value` — the monotonic time until
    which the model is paused — and `get_lock()`) carries a Retry-After to every worker.
    """

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None,
                 shared_pause: Any = None, fleet: Any = None, clock=time.monotonic):
        self.rpm = requests_per_minute
        self._clock = clock  # the window's time (a test moves it instead of waiting a minute)
        self.tpm = tokens_per_minute
        # The run's window in the ledger (engine.FleetWindow: tokens -> seconds to wait), when
        # the limits hold for every worker together; then this process keeps no window of its own.
        self._fleet = fleet
        self._lock = threading.Lock()
        self._calls: deque[tuple[float, int]] = deque()
        self._paused_until = 0.0
        self._shared_pause = shared_pause

    def pause(self, seconds: float) -> None:
        """Honour a Retry-After for every caller of this model, in every process of the run."""
        until = self._clock() + seconds
        with self._lock:
            self._paused_until = max(self._paused_until, until)
        if self._shared_pause is not None:
            with self._shared_pause.get_lock():
                self._shared_pause.value = max(self._shared_pause.value, until)

    def acquire(self, tokens: int, deadline: float | None = None) -> None:
        while True:
            shared = self._shared_pause.value if self._shared_pause is not None else 0.0
            with self._lock:
                now = self._clock()
                while self._calls and now - self._calls[0][0] >= 60:
                    self._calls.popleft()
                wait = max(self._paused_until, shared) - now
                if self.rpm and len(self._calls) >= self.rpm:
                    wait = max(wait, 60 - (now - self._calls[0][0]))
                if self.tpm and self._calls:
                    used = sum(t for _, t in self._calls)
                    if used + tokens > self.tpm:
                        wait = max(wait, 60 - (now - self._calls[0][0]))
                if wait <= 0 and self._fleet is None:
                    self._calls.append((now, tokens))
                    return
            if wait <= 0:
                wait = self._fleet(tokens)
                if wait <= 0:
                    return
            if deadline is not None and time.monotonic() + wait > deadline:
                raise TicketDeadlineExceeded("the ticket's deadline passed while waiting for the "
                                             "rate limiter")
            time.sleep(min(wait, 1.0))


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def classify(error: BaseException) -> tuple[str, float | None]:
    """('transient' | 'malformed' | 'fatal', Retry-After seconds) for an exception from a call."""
    retry_after = None
    for e in _chain(error):
        status = getattr(e, "status_code", None) or getattr(getattr(e, "response", None),
                                                            "status_code", None)
        headers = getattr(getattr(e, "response", None), "headers", None)
        if headers is not None:
            try:
                retry_after = float(headers.get("retry-after"))
            except (TypeError, ValueError):
                pass
        if status == 429 or (isinstance(status, int) and status >= 500):
            return "transient", retry_after
        if isinstance(status, int) and 400 <= status < 500:
            return "fatal", None
        name = type(e).__name__
        if name in ("APITimeoutError", "APIConnectionError", "Timeout", "ReadTimeout",
                    "ConnectTimeout", "ConnectError", "RemoteProtocolError", "ReadError") \
                or isinstance(e, (TimeoutError, ConnectionError)):
            return "transient", None
        if isinstance(e, (ValidationError, json.JSONDecodeError)):
            return "malformed", None
    return "fatal", None


def describe(error: BaseException) -> str:
    """A short, recordable description: no request bodies, no secrets."""
    for e in _chain(error):
        status = getattr(e, "status_code", None)
        if isinstance(status, int):
            return f"HTTP {status} ({type(e).__name__})"
    text = " ".join(str(error).split())[:300]
    for marker in ("rate limit", "rate-limit", "too many requests", "throttled"):
        text = text.replace(marker, "throttling").replace(marker.title(), "Throttling")
    return f"{type(error).__name__}: {text}"


class ManagedLLM(BaseLLM):
    """A model seen through the retry policy, the shared limiter and the ticket deadline.

    The inner model emits CrewAI's call events itself (so accounting sees each real request);
    this wrapper decides when to call it and how often, records each request of a ticket step
    (`recording.recording_step`) and, in a replay, answers the ones the recording holds.
    """

    llm_type: str = "managed"
    _inner: Any = PrivateAttr()
    _policy: RetryPolicy = PrivateAttr()
    _limiter: RateLimiter = PrivateAttr()
    _sleep: Any = PrivateAttr()
    _stats_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _requests: int = PrivateAttr(default=0)
    # A replay with --offline: requests are still those of the configured model (so they match
    # its recording), but one the recording lacks is answered by this model instead.
    _answerer: Any = PrivateAttr(default=None)

    def __init__(self, inner: Any, policy: RetryPolicy, limiter: RateLimiter, sleep=time.sleep):
        super().__init__(model=inner.model, temperature=getattr(inner, "temperature", None))
        self._inner, self._policy, self._limiter, self._sleep = inner, policy, limiter, sleep

    @property
    def requests(self) -> int:
        return self._requests

    @property
    def inner(self) -> Any:
        """The wrapped model (llms.size_pools sizes its HTTP client's connection pool)."""
        return self._inner

    def answer_misses_with(self, llm: Any) -> None:
        self._answerer = llm

    def call(self, messages, tools=None, callbacks=None, available_functions=None,
             from_task=None, from_agent=None, response_model=None):
        counter = request_counter.get()
        slot = request_slot.set((step_key.get() or "0:request",
                                 next(counter) if counter is not None else 0))
        try:
            return self._call(messages, tools, callbacks, available_functions, from_task,
                              from_agent, response_model)
        finally:
            request_slot.reset(slot)

    def _call(self, messages, tools, callbacks, available_functions, from_task, from_agent,
              response_model):
        exchange = None
        step = recording_step.get()
        if step is not None:
            tape, key = step
            exchange = tape.start(key, Request.describe(self._inner, messages, tools,
                                                        response_model))
            recorded = tape.lookup(exchange)
            if recorded is not None:
                return self._replay(exchange, recorded, messages, tools, callbacks,
                                    available_functions, from_task, from_agent, response_model)
            if tape.strict:
                raise RequestChanged(tape.explain(exchange))
        durable = durable_step.get()
        if durable is not None:
            return self._durably(durable, exchange, messages, tools, callbacks,
                                 available_functions, from_task, from_agent, response_model)
        return self._live(exchange, messages, tools, callbacks, available_functions, from_task,
                          from_agent, response_model)

    def _durably(self, durable, exchange, messages, tools, callbacks, available_functions,
                 from_task, from_agent, response_model):
        """The request as a durable step of the ticket's workflow (engine.durable_step): a
        ticket resumed after a crash has its finished requests answered from their checkpoints,
        so only the ones in flight are asked again. A checkpoint made for another request (the
        config changed meanwhile) is not used: the request goes to the model."""
        request = exchange.request if exchange is not None else Request.describe(
            self._inner, messages, tools, response_model)
        live: list = []

        def ask() -> dict:
            answer = self._live(exchange, messages, tools, callbacks, available_functions,
                                from_task, from_agent, response_model)
            live.append(answer)
            return {"request_hash": request.hash, "response": response_of(answer)}

        checkpoint = durable(ask)
        if live:
            return live[0]
        if checkpoint.get("request_hash") != request.hash:
            LOGGER.info("checkpoint not used: the request changed since it was made (step %s)",
                        exchange.step if exchange is not None else "?")
            return self._live(exchange, messages, tools, callbacks, available_functions,
                              from_task, from_agent, response_model)
        recorded = RecordedCall(0, "", request.hash, "", None, checkpoint["response"])
        if exchange is None:
            exchange = Exchange("", 0, request)
        return self._replay(exchange, recorded, messages, tools, callbacks, available_functions,
                            from_task, from_agent, response_model)

    def _live(self, exchange, messages, tools, callbacks, available_functions, from_task,
              from_agent, response_model):
        # The loop is written out rather than a tenacity `Retrying` (tenacity 9.2 is installed
        # with crewai). What tenacity does not express: two budgets (transient failures and
        # repairs of a malformed answer count separately; tenacity has one attempt number), a
        # Retry-After that pauses every caller of the model through the shared limiter before
        # this caller sleeps, and the deadline checked against the coming sleep; custom stop,
        # wait and before-sleep callbacks for those would be longer than the loop they replace.
        deadline = ticket_deadline.get()
        estimate = self._inner.get_input_tokens_count(messages) if hasattr(
            self._inner, "get_input_tokens_count") else 0
        transient = malformed = 0
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise TicketDeadlineExceeded("the ticket's deadline passed "
                                             f"(after {transient + malformed} retries)")
            self._limiter.acquire(estimate, deadline)
            with self._stats_lock:
                self._requests += 1
            outcome = None
            held = current_exchange.set(exchange)
            attempt = request_attempt.set(transient + malformed + 1)
            try:
                answer = (self._answerer or self._inner).call(
                    messages, tools=tools, callbacks=callbacks,
                    available_functions=available_functions, from_task=from_task,
                    from_agent=from_agent, response_model=response_model)
                if exchange is not None:
                    exchange.answer, exchange.answered = answer, True
                observer = request_done.get()
                if observer is not None:
                    observer()
                return answer
            except Exception as error:  # noqa: BLE001 - classified below, re-raised if fatal
                kind, retry_after = classify(error)
                outcome = (kind, retry_after, describe(error), error)
            finally:
                request_attempt.reset(attempt)
                current_exchange.reset(held)
            kind, retry_after, text, error = outcome
            # Raised outside the except block, so the SDK error is not chained: CrewAI's own
            # rate-limit wrapper around this call must not retry a second time.
            if kind == "fatal":
                if isinstance(error, (ModelCallFailed, TicketDeadlineExceeded)):
                    raise error
                raise ModelCallFailed(f"model call failed: {text}")
            if kind == "malformed":
                malformed += 1
                if malformed > self._policy.repair_attempts:
                    raise ModelCallFailed(f"malformed structured answer after {malformed} "
                                          f"attempt(s): {text}")
                continue
            transient += 1
            if transient >= self._policy.max_attempts:
                raise ModelCallFailed(f"model call failed after {transient} attempts: {text}")
            delay = self._policy.delay(transient, retry_after)
            if retry_after is not None:
                self._limiter.pause(delay)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise TicketDeadlineExceeded(f"the ticket's deadline passed while backing off "
                                             f"after: {text}")
            self._sleep(delay)

    def _replay(self, exchange: Exchange, recorded: RecordedCall, messages, tools, callbacks,
                available_functions, from_task, from_agent, response_model):
        """Answer from the recording, with the call events a live answer has (zero usage: it
        cost nothing), so the accounting and CrewAI see an ordinary call."""
        answer = answer_of(recorded.response, response_model)
        exchange.answer, exchange.answered = answer, True
        exchange.replayed, exchange.response_hash = True, recorded.response_hash
        kind = (LLMCallType.TOOL_CALL if recorded.response.get("type") == "tool_calls"
                else LLMCallType.LLM_CALL)
        held = current_exchange.set(exchange)
        try:
            with llm_call_context():
                self._emit_call_started_event(messages=messages, tools=tools, callbacks=callbacks,
                                              available_functions=available_functions,
                                              from_task=from_task, from_agent=from_agent)
                self._emit_call_completed_event(
                    response=recorded.response.get("content", answer), call_type=kind,
                    from_task=from_task, from_agent=from_agent, messages=messages,
                    usage=dict(NO_USAGE))
        finally:
            current_exchange.reset(held)
        observer = request_done.get()
        if observer is not None:
            observer()
        return answer

    def supports_function_calling(self) -> bool:
        return self._inner.supports_function_calling()

    def supports_stop_words(self) -> bool:
        return getattr(self._inner, "supports_stop_words", lambda: False)()

    def get_context_window_size(self) -> int:
        return self._inner.get_context_window_size()

    def get_input_tokens_count(self, messages, tools=None, response_model=None) -> int:
        return self._inner.get_input_tokens_count(messages, tools, response_model)


# Connections per pool: httpcore's pool looks at every connection it holds for each request it
# hands out (`ConnectionPool._assign_requests_to_connections`, under the pool's lock), so one
# pool of 272 connections at C = 256 is scanned 272 deep per request.
POOL_SHARD = 32


def pool_limits(in_flight: int, pools: int = 1) -> httpx.Limits:
    """One of `pools` pools' share of `in_flight` calls: a keep-alive connection per call, plus
    a share of 16 connections' headroom for those a timeout or a retry is still closing."""
    return httpx.Limits(max_connections=-(-in_flight // pools) + -(-16 // pools),
                        max_keepalive_connections=max(1, -(-in_flight // pools)))


class ShardedPools(httpx.BaseTransport):
    """An httpx transport: `in_flight` keep-alive connections in pools of at most `POOL_SHARD`,
    each thread sending through one of them (dealt in turn on its first request). A thread
    runs one ticket, so one request, at a time: a pool serves at most as many requests at once
    as it has threads, and each request's scan is a pool's length, not the whole count's."""

    def __init__(self, in_flight: int, shard: int = POOL_SHARD):
        count = max(1, -(-in_flight // shard))
        self.pools = [httpx.HTTPTransport(limits=pool_limits(in_flight, count))
                      for _ in range(count)]
        self._dealt = itertools.count()
        self._mine = threading.local()

    def handle_request(self, request):
        pool = getattr(self._mine, "pool", None)
        if pool is None:
            pool = self._mine.pool = self.pools[next(self._dealt) % len(self.pools)]
        return pool.handle_request(request)

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
