"""Recording model traffic, and answering requests from a recording (`crewbatch replay`).

A model request is described by what determines its answer — the model, the sampling parameters,
the messages, the tools offered and the response format — and hashed (`Request`). What is stored
is content-addressed: each distinct message (split at its `<tag>` data blocks, so a prompt's
template text and a ticket's blocks repeated across steps are stored once), tool list, schema and
response is one blob in the ledger, linked from the request's `model_calls` row. A replay looks
each new request up by its hash among the recorded requests of the same ticket (`Tape`): a match
is answered with the recorded response, rebuilt as the very kind of object the live model returned
(text, the pydantic model of a structured answer, OpenAI tool-call objects), so CrewAI cannot tell
the difference and tool calls still run the real tools; a request that differs never gets an old
answer. Keys, headers and the endpoint are not part of a request and are never recorded.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

# Attributes of a model object that change its answers (those that are set are hashed).
SAMPLING = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "seed",
            "frequency_penalty", "presence_penalty", "reasoning_effort", "logprobs",
            "top_logprobs", "n")
VERSION = 1  # of the request description; a new layout gets a new number, never a collision
# A data block as crew.data_block writes it ('<' inside is escaped, so blocks never nest).
DATA_BLOCK = re.compile(r"<([a-z_]+)>\n.*?\n</\1>", re.DOTALL)
NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

# The recording of the ticket step running in this context: (Tape, "round:step"), set per step
# by the crew. ManagedLLM reads it for every request.
recording_step: ContextVar[tuple[Tape, str] | None] = ContextVar("crewbatch_recording_step",
                                                                default=None)
# The request in flight in this context, for the accounting's call-event handler (which runs in
# a copy of the emitter's context) to attach the call's usage to.
current_exchange: ContextVar[Exchange | None] = ContextVar("crewbatch_current_exchange",
                                                           default=None)


class RequestChanged(Exception):
    """A strict replay met a request the recording does not hold (the message says which part)."""


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def canonical(value: Any) -> bytes:
    """One byte string per JSON value: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=_plain).encode("utf-8", "surrogatepass")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def chunks(text: str) -> list[str]:
    """`text` cut around each data block and its tags; the pieces join back to `text`.

    A block's body on its own is what repeats: the same JSON under another tag (a researcher's
    `<lookups>` are the writer's `<evidence>`), the same ticket in every step of a ticket.
    """
    pieces, at = [], 0
    for m in DATA_BLOCK.finditer(text):
        if m.start() > at:
            pieces.append(text[at:m.start()])
        tag = m.group(1)
        pieces += [f"<{tag}>\n", m.group()[len(tag) + 3:-len(tag) - 4], f"\n</{tag}>"]
        at = m.end()
    if at < len(text) or not pieces:
        pieces.append(text[at:])
    return pieces


_formats: dict[type, tuple[str, bytes]] = {}
_formats_lock = threading.Lock()


def _response_format(model: type[BaseModel]) -> tuple[str, bytes]:
    """(hash, canonical JSON) of a structured output's name and schema, once per class."""
    found = _formats.get(model)
    if found is None:
        body = canonical({"name": model.__name__, "schema": model.model_json_schema()})
        found = (digest(body), body)
        with _formats_lock:
            _formats[model] = found
    return found


@dataclass
class Request:
    """What determines a request's answer, hashed. `parts` is the small manifest that is always
    stored (model, sampling, and a hash per message, for the tools and for the format); `bodies`
    the content behind those hashes, stored under `recording: full`."""

    hash: str
    parts: dict
    messages: list[dict]
    bodies: dict[str, bytes]

    @classmethod
    def describe(cls, llm: Any, messages: Any, tools: Any = None,
                 response_model: type[BaseModel] | None = None) -> Request:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        messages = [dict(m) if isinstance(m, dict) else _plain(m) for m in messages]
        bodies: dict[str, bytes] = {}
        hashed = []
        for m in messages:
            body = canonical(m)
            h = digest(body)
            hashed.append([str(m.get("role", "")) if isinstance(m, dict) else "", h])
            bodies[h] = body
        sampling = {k: getattr(llm, k) for k in SAMPLING if getattr(llm, k, None) is not None}
        stop = getattr(llm, "stop_sequences", None) or getattr(llm, "stop", None)
        if stop:
            sampling["stop"] = list(stop)
        extra = getattr(llm, "additional_params", None)
        if extra:
            sampling["additional_params"] = extra
        parts: dict[str, Any] = {"v": VERSION, "model": str(getattr(llm, "model", "")),
                                 "sampling": sampling, "messages": hashed,
                                 "tools": None, "response_format": None}
        if tools:
            body = canonical(tools)
            parts["tools"] = digest(body)
            bodies[parts["tools"]] = body
        if response_model is not None:
            h, body = _response_format(response_model)
            parts["response_format"] = h
            bodies[h] = body
        manifest = canonical(parts)
        return cls(digest(manifest), parts, messages, bodies)

    def blobs(self, mode: str) -> dict[str, bytes]:
        """What to store for this request under `mode`: the manifest always, the content under
        `full` (a message as its chunks, each chunk a blob of its own)."""
        if mode == "off":
            return {}
        out = {self.hash: canonical(self.parts)}
        if mode != "full":
            return out
        by_hash = dict(zip((h for _, h in self.parts["messages"]), self.messages, strict=True))
        for h, body in self.bodies.items():
            message = by_hash.get(h)
            if message is None or not isinstance(message.get("content"), str):
                out[h] = body
                continue
            refs = []
            for piece in chunks(message["content"]):
                data = piece.encode("utf-8", "surrogatepass")
                refs.append(digest(data))
                out[refs[-1]] = data
            out[h] = canonical({**message, "content": {"chunks": refs}})
        return out


def message_from_blob(data: bytes, blob: Callable[[str], bytes | None]) -> dict | None:
    """A stored message back as it was sent (its chunks joined), or None if a chunk is missing."""
    message = json.loads(data)
    content = message.get("content")
    if isinstance(content, dict) and set(content) == {"chunks"}:
        pieces = [blob(h) for h in content["chunks"]]
        if any(p is None for p in pieces):
            return None
        message["content"] = "".join(p.decode("utf-8", "surrogatepass") for p in pieces)
    return message


# --- responses -----------------------------------------------------------------------------------


def _is_tool_call(item: Any) -> bool:
    if isinstance(item, dict):
        return isinstance(item.get("function"), dict)
    return hasattr(item, "function") and hasattr(item, "id")


def response_of(answer: Any, usage: dict | None = None) -> dict:
    """A model's answer as JSON: text, a structured answer (a pydantic model, as the openai SDK
    returns it) or tool calls (the SDK's objects, or plain dicts as the offline model gives)."""
    if isinstance(answer, str):
        out = {"type": "text", "content": answer}
    elif isinstance(answer, BaseModel):
        out = {"type": "model", "name": type(answer).__name__,
               "content": answer.model_dump_json()}
    elif isinstance(answer, list) and answer and all(_is_tool_call(a) for a in answer):
        out = {"type": "tool_calls", "objects": not isinstance(answer[0], dict),
               "tool_calls": [a if isinstance(a, dict) else a.model_dump(mode="json")
                              for a in answer]}
    else:
        out = {"type": "text", "content": str(answer)}
    if usage:
        out["usage"] = usage
    return out


def answer_of(response: dict, response_model: type[BaseModel] | None = None) -> Any:
    """The live answer a recorded response stands for, as the same kind of object."""
    kind = response.get("type")
    if kind == "model":
        if response_model is not None and response_model.__name__ == response.get("name"):
            return response_model.model_validate_json(response["content"])
        return response["content"]
    if kind == "tool_calls":
        calls = [dict(c) for c in response["tool_calls"]]
        if response.get("objects"):
            from openai.types.chat import ChatCompletionMessageFunctionToolCall

            return [ChatCompletionMessageFunctionToolCall.model_validate(c) for c in calls]
        return calls
    return response.get("content", "")


# --- one ticket's recording ------------------------------------------------------------------------


@dataclass
class Exchange:
    """One request of a ticket, and (once answered) its answer; `replayed` if the recording
    answered it (then `response_hash` names the recorded response)."""

    step: str
    seq: int
    request: Request
    answer: Any = None
    answered: bool = False
    replayed: bool = False
    response_hash: str = ""

    def stored(self, mode: str, usage: dict) -> tuple[dict, dict[str, bytes]]:
        """The model_calls columns of this request and the blobs to store for it."""
        if self.replayed:
            return ({"seq": self.seq, "request_hash": self.request.hash,
                     "response_hash": self.response_hash, "replayed": 1}, {})
        if mode == "off" or not self.answered:
            return {"seq": self.seq, "request_hash": "", "response_hash": "", "replayed": 0}, {}
        response = canonical(response_of(self.answer, usage))
        blobs = self.request.blobs(mode)
        blobs[digest(response)] = response
        return ({"seq": self.seq, "request_hash": self.request.hash,
                 "response_hash": digest(response), "replayed": 0}, blobs)


@dataclass
class RecordedCall:
    seq: int
    step: str            # "round:step"
    request_hash: str
    response_hash: str
    parts: dict | None   # the request's manifest, if it was recorded
    response: dict


@dataclass
class Recorded:
    """One ticket's recorded requests (from the ledger or a cassette). `message` finds a
    recorded message's content by its hash (None under `recording: responses`)."""

    calls: list[RecordedCall]
    source: str                          # "run 20261121-…" or "cassette tests/cassettes/…"
    message: Callable[[str], dict | None] = field(default=lambda h: None, repr=False)

    def by_hash(self) -> dict[str, deque[RecordedCall]]:
        index: dict[str, deque[RecordedCall]] = defaultdict(deque)
        for c in sorted(self.calls, key=lambda c: c.seq):
            if c.request_hash:
                index[c.request_hash].append(c)
        return index


class Tape:
    """A ticket's recording in the making, and (in a replay) the recording that answers it.

    A recorded request answers each identical request in the order they were made; the last one
    answers any further repeats (a deterministic model answers a repeat the same way).
    """

    def __init__(self, mode: str = "full", recorded: Recorded | None = None,
                 strict: bool = False):
        self.mode, self.recorded, self.strict = mode, recorded, strict
        self._seq = itertools.count(1)
        self._in_step: dict[str, int] = defaultdict(int)
        self._index = recorded.by_hash() if recorded else {}
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.mode != "off" or self.recorded is not None

    def start(self, step: str, request: Request) -> Exchange:
        with self._lock:
            self._in_step[step] += 1
            return Exchange(step, next(self._seq), request)

    def lookup(self, exchange: Exchange) -> RecordedCall | None:
        with self._lock:
            queue = self._index.get(exchange.request.hash)
            if not queue:
                return None
            return queue.popleft() if len(queue) > 1 else queue[0]

    def explain(self, exchange: Exchange) -> str:
        """`request changed at step <step>: <what changed>` for a request the recording lacks."""
        round_no, step = exchange.step.split(":", 1)
        where = f"request changed at step {step}"
        if self.recorded is None or not any(c.request_hash for c in self.recorded.calls):
            return (f"{where}: nothing was recorded for this ticket in "
                    f"{self.recorded.source if self.recorded else 'the recording'} "
                    "(it ran with `recording: off`, or made no model request)")
        same_step = sorted((c for c in self.recorded.calls if c.step == exchange.step),
                           key=lambda c: c.seq)
        with self._lock:
            position = self._in_step[exchange.step] - 1
        before = same_step[position] if position < len(same_step) else None
        if before is None or before.parts is None:
            made = len(same_step)
            return (f"{where}: the recording has no request {position + 1} for this step in "
                    f"round {round_no} (it made {made})")
        return f"{where}: {describe_change(before.parts, exchange.request, self.recorded.message)}"


def describe_change(old: dict, new: Request, message: Callable[[str], dict | None]) -> str:
    """Which parts of a request differ from a recorded one, with the first changed words of a
    message when the recording holds its text."""
    parts = new.parts
    changed: list[str] = []
    if old.get("model") != parts["model"]:
        changed.append(f"model ({old.get('model')} → {parts['model']})")
    if old.get("sampling") != parts["sampling"]:
        diffs = [f"{k} {old.get('sampling', {}).get(k)} → {parts['sampling'].get(k)}"
                 for k in sorted(set(old.get("sampling", {})) | set(parts["sampling"]))
                 if old.get("sampling", {}).get(k) != parts["sampling"].get(k)]
        changed.append(f"sampling parameters ({', '.join(diffs)})")
    olds, news = old.get("messages") or [], parts["messages"]
    seen_user = False
    for i in range(max(len(olds), len(news))):
        role = (news[i] if i < len(news) else olds[i])[0]
        label = ("system prompt" if role == "system" else
                 "user message" if role == "user" and not seen_user else
                 "conversation (tool calls and results)")
        seen_user = seen_user or role == "user"
        o, n = (olds[i][1] if i < len(olds) else None), (news[i][1] if i < len(news) else None)
        if o == n or label in (c.split(" (")[0] for c in changed):
            continue
        excerpt = _first_difference(message(o) if o else None,
                                    new.messages[i] if i < len(new.messages) else None)
        changed.append(label + (f" ({excerpt})" if excerpt else ""))
    if old.get("tools") != parts["tools"]:
        changed.append("tools")
    if old.get("response_format") != parts["response_format"]:
        changed.append("response format")
    return ", ".join(changed) or "the request's layout (recorded by another crewbatch version)"


def _first_difference(old: dict | None, new: dict | None, context: int = 4) -> str:
    if not old or not new:
        return ""
    a = str(old.get("content") or "").split()
    b = str(new.get("content") or "").split()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        lead = a[max(0, i1 - context):i1]
        was, now = (" ".join(lead + w[:12] + rest[:3])[:120]
                    for w, rest in ((a[i1:i2], a[i2:]), (b[j1:j2], b[j2:])))
        return f"recorded “{was}…”, now “{now}…”"
    return ""
