"""`crewbatch replay`: a recorded run's tickets again, with today's config, data and code.

A replay is a new run, marked `replay_of` in the ledger. Each ticket's model requests are looked up
in the recording of the replayed run's same ticket (recording.py): a request that is unchanged is
answered from it — no network, no cost — and one that changed goes to the configured model
(`--strict`: the ticket fails, saying which part changed). The gate, the policy-bound executor
and its tools run for real; so a changed prompt, limit or check shows exactly which outcomes move.

Side effects are simulated, never real, and never in the way of real work:
- replies and refund requests are written to the replay's own folder (runs/<replay>/outbox,
  refund_requests), marked `X-Crewbatch-Replay-Of`, and recorded nowhere as performed: the
  ledger's idempotency keys (side_effects) are neither consulted nor written, so the original
  having sent a reply does not make the replay skip it;
- refund caps are checked against the real refunds recorded *before the replayed run started*
  plus the replay's own simulated refunds (kept in memory, never in `refunds`), with the rolling
  per-customer period ending at that start: the original's own refunds do not count against its
  replay, and a replay adds nothing a real run's caps would see;
- a replay's outcomes never make a later real run skip a ticket, and `review apply` refuses a
  replay's sheet.

A cassette is one or more tickets' recording in a JSON file (`--save-cassette`), with what the
ticket is, the refunds it saw and the outcome it had: `replay_cassette` runs it again without a
ledger (a regression test from a production ticket), strictly by default.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import rundir
from .ledger import RefundHistory, RefundRequest
from .recording import Recorded, RecordedCall, message_from_blob
from .ticket import Status, Ticket

PROCESSED = (Status.APPROVED.value, Status.NEEDS_HUMAN.value, Status.FAILED.value)
COPIED = (Status.REJECTED.value, Status.SKIPPED.value)  # not re-run: carried over as they were
CASSETTE_VERSION = 1
# A strict replay never sends a request; a model without a key still needs a client object.
STRICT_ENVIRON = {"OPENAI_API_KEY": "crewbatch-strict-replay-sends-nothing",
                  "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}


class ReplayError(Exception):
    """A replay that cannot start (unknown ticket, unreadable cassette); the message says why."""


def _utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def environ_for(sealed: bool, environ=os.environ) -> dict:
    """The environment the models are built with: a replay that sends no request (--strict, or
    --offline answering what the recording lacks) needs no key for the recorded model."""
    return {**STRICT_ENVIRON, **environ} if sealed else dict(environ)


def _wanted(ticket: Ticket, only: tuple[str, ...]) -> bool:
    return not only or ticket.ticket_id in only or ticket.key in only


# --- side effects ----------------------------------------------------------------------------------


class SimulatedEffects:
    """What `actions.perform` asks of the ledger, for a replay: nothing is recorded as done and no
    real refund is reserved. Refunds are checked against `prior` (the real ones before the replayed
    run) plus this replay's own, kept here."""

    def __init__(self, prior: Callable[[str, str], RefundHistory], as_of: str, replay_of: str):
        self.prior, self.as_of, self.replay_of = prior, as_of, replay_of
        self._own: list[dict] = []
        self._lock = threading.RLock()

    def history(self, order_id: str, customer: str) -> RefundHistory:
        found = self.prior(order_id, customer)
        with self._lock:
            own = [r for r in self._own if r["order_id"] == found.order_id
                   or r["customer"] == found.customer]
        return RefundHistory(found.order_id, found.customer, found.rows + own)

    def reserve_refunds(self, requests: list[RefundRequest]) -> str | None:
        with self._lock:
            new = []
            for r in requests:
                if any(o["idempotency_key"] == r.key for o in self._own + new):
                    continue
                history = self.history(r.order_id, r.customer)
                history.rows += [o for o in new if o["order_id"] == history.order_id
                                 or o["customer"] == history.customer]
                refusal = r.guard(history)
                if refusal:
                    return refusal
                new.append({"idempotency_key": r.key, "outcome_id": r.outcome_id,
                            "order_id": r.order_id.upper(), "customer": r.customer.lower(),
                            "amount": r.amount, "currency": r.currency.upper(),
                            "automatic": int(r.automatic), "requested_utc": self.as_of})
            self._own.extend(new)
        return None

    def intend_side_effect(self, key: str, outcome_id: int, kind: str, target: str
                           ) -> tuple[str, bool]:
        return target, False

    def side_effect_performed(self, key: str) -> None:
        pass

    def record_side_effect(self, key: str, outcome_id: int, kind: str, detail: str) -> bool:
        return True


def _attach(runner, recordings, strict: bool, effects: SimulatedEffects,
            offline: bool = False) -> None:
    runner.recordings, runner.strict, runner.effects = recordings, strict, effects
    runner.refund_history = effects.history
    runner.refund_as_of = _utc(effects.as_of)
    if offline:
        from .llms import offline_model

        answerer = offline_model(runner.config)
        for llm in {id(m): m for m in runner.llms.values()}.values():
            llm.answer_misses_with(answerer)


# --- a replay run ----------------------------------------------------------------------------------


@dataclass
class ReplayPlan:
    """What `pipeline.run(replay=...)` needs: which run, which tickets, strict or not."""

    of: str
    strict: bool = False
    only: tuple[str, ...] = ()
    as_of: str = ""       # the real refunds recorded before this moment are the replay's history
    offline: bool = False  # the offline model answers what the recording lacks
    _sources: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)

    @classmethod
    def for_run(cls, ledger, run_id: str, strict: bool = False, only=(),
                offline: bool = False) -> ReplayPlan:
        run = ledger.run(run_id)
        if run is None:
            raise ReplayError(f"no run `{run_id}` in the ledger; `crewbatch runs` lists the runs")
        options = run.options
        # A replay of a replay simulates the same night: the first run's start.
        plan = cls(run_id, strict, tuple(only), options.get("replay_as_of") or run.started_utc,
                   offline)
        tickets = [t for _, t in ledger.replay_tickets(run_id, PROCESSED)]
        missing = [t for t in plan.only if not any(_wanted(x, (t,)) for x in tickets)]
        if missing:
            raise ReplayError(f"run {run_id} has no processed ticket {', '.join(missing)} "
                              f"(approved, needs_human or failed); `crewbatch show {run_id}` "
                              "lists its tickets")
        if not tickets:
            raise ReplayError(f"run {run_id} has no processed tickets to replay")
        return plan

    def environ(self, environ=os.environ) -> dict:
        return environ_for(self.strict or self.offline, environ)

    def tickets(self, ledger) -> list[Ticket]:
        chosen = [(oid, t) for oid, t in ledger.replay_tickets(self.of, PROCESSED)
                  if _wanted(t, self.only)]
        self._sources = {(t.key, t.content_hash): oid for oid, t in chosen}
        return [t for _, t in chosen]

    def attach(self, runner, ledger) -> None:
        effects = SimulatedEffects(
            lambda order, customer: ledger.refund_history(order, customer, self.as_of),
            self.as_of, self.of)
        _attach(runner, LedgerRecordings(ledger, self._sources, self.of), self.strict, effects,
                self.offline)

    def options(self) -> dict:
        return {"replay_of": self.of, "strict": self.strict, "replay_tickets": list(self.only),
                "replay_as_of": self.as_of, "reprocess": True,
                "misses_answered_by": "offline" if self.offline else None}

    def label(self) -> str:
        return f"replay of {self.of}"

    def copy_unprocessed(self, ledger, run_id: str) -> None:
        """Carry the replayed run's rejected and skipped records over (not for --ticket)."""
        if not self.only:
            ledger.copy_outcomes(self.of, run_id, COPIED, f"as in run {self.of}")


class LedgerRecordings:
    """`CrewRunner.recordings` for a replay: a ticket's recorded requests in the replayed run."""

    def __init__(self, ledger, sources: dict[tuple[str, str], int], run_id: str):
        self.ledger, self.sources, self.run_id = ledger, sources, run_id

    def __call__(self, ticket: Ticket) -> Recorded | None:
        outcome_id = self.sources.get((ticket.key, ticket.content_hash))
        if outcome_id is None:
            return None
        return recorded_from_ledger(self.ledger, outcome_id, f"run {self.run_id}")


def recorded_from_ledger(ledger, outcome_id: int, source: str) -> Recorded:
    rows = [r for r in ledger.recorded_calls(outcome_id) if r["response_hash"]]
    blobs = ledger.blobs([r["request_hash"] for r in rows] + [r["response_hash"] for r in rows])
    calls = [RecordedCall(r["seq"], f"{r['round']}:{r['step']}", r["request_hash"],
                          r["response_hash"],
                          json.loads(blobs[r["request_hash"]]) if r["request_hash"] in blobs
                          else None, json.loads(blobs[r["response_hash"]]))
             for r in rows if r["response_hash"] in blobs]

    def message(h: str) -> dict | None:
        data = ledger.blobs([h]).get(h)
        return message_from_blob(data, lambda c: ledger.blobs([c]).get(c)) if data else None
    return Recorded(calls, source, message)


# --- cassettes -------------------------------------------------------------------------------------


def _expanded(ledger, manifest: dict | None) -> dict | None:
    """A recorded request's content (messages, tools, format), if `recording: full` kept it."""
    if manifest is None:
        return None
    blobs = ledger.blobs([h for _, h in manifest["messages"]] +
                         [manifest.get("tools"), manifest.get("response_format")])
    messages = []
    for _, h in manifest["messages"]:
        m = message_from_blob(blobs[h], lambda c: ledger.blobs([c]).get(c)) if h in blobs \
            else None
        if m is None:
            return None
        messages.append(m)
    out: dict[str, Any] = {"messages": messages}
    for part in ("tools", "response_format"):
        h = manifest.get(part)
        out[part] = json.loads(blobs[h]) if h and h in blobs else None
    return out


def save_cassette(ledger, run_id: str, only: tuple[str, ...], path: Path) -> Path:
    """Write the tickets' recording in run_id to a cassette file (see the module's docstring)."""
    plan = ReplayPlan.for_run(ledger, run_id, only=only)
    run = ledger.run(run_id)
    checks = {row["outcome_id"]: row["output_json"] for row in
              ledger.step_outputs(run_id, ("checks",))}
    entries = []
    for outcome_id, ticket in ledger.replay_tickets(run_id, PROCESSED):
        if not _wanted(ticket, plan.only):
            continue
        outcome = ledger.review_outcome(outcome_id)
        recorded = recorded_from_ledger(ledger, outcome_id, f"run {run_id}")
        orders = {a.get("args", {}).get("order_id", "") for a in outcome.actions} | {""}
        refunds = {r["idempotency_key"]: r for o in sorted(orders) for r in
                   ledger.refund_history(o, ticket.customer, plan.as_of).rows}
        entries.append({
            "ticket": {**asdict(ticket), "attachments": list(ticket.attachments)},
            "outcome": {k: getattr(outcome, k) for k in (
                "ticket_id", "status", "category", "priority", "critic_verdict", "draft_reply",
                "actions_json", "needs_human_reason", "error", "prompt_tokens",
                "completion_tokens", "cost_usd")},
            "findings": json.loads(checks.get(outcome_id) or "[]"),
            "refunds": sorted(refunds.values(), key=lambda r: r["requested_utc"]),
            "calls": [{"seq": c.seq, "step": c.step, "request_hash": c.request_hash,
                       "parts": c.parts, "request": _expanded(ledger, c.parts),
                       "response_hash": c.response_hash, "response": c.response}
                      for c in recorded.calls]})
    data = {"crewbatch_cassette": CASSETTE_VERSION, "run_id": run_id, "model": run.model,
            "recorded_utc": run.started_utc, "as_of": plan.as_of, "tickets": entries}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True) + "\n",
                    encoding="utf-8")
    return path


@dataclass
class CassetteTicket:
    ticket: Ticket
    outcome: dict
    findings: list
    refunds: list[dict]
    recorded: Recorded

    def history(self, order_id: str, customer: str) -> RefundHistory:
        order_id, customer = order_id.upper(), customer.lower()
        return RefundHistory(order_id, customer, [r for r in self.refunds if r["order_id"] ==
                                                  order_id or r["customer"] == customer])


@dataclass
class Cassette:
    path: Path
    run_id: str
    model: str
    as_of: str
    tickets: list[CassetteTicket]

    @classmethod
    def load(cls, path: Path) -> Cassette:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("crewbatch_cassette") != CASSETTE_VERSION:
                raise ReplayError(f"{path}: not a crewbatch cassette (version "
                                  f"{data.get('crewbatch_cassette')!r}, expected "
                                  f"{CASSETTE_VERSION}); save it again with `crewbatch replay "
                                  "RUN_ID --ticket T --save-cassette FILE`")
            tickets = [CassetteTicket(_ticket(t["ticket"]), t["outcome"], t["findings"],
                                      t["refunds"], _recorded(t["calls"], path))
                       for t in data["tickets"]]
            return cls(path, data["run_id"], data["model"], data["as_of"], tickets)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ReplayError(f"{path}: cannot read the cassette ({type(exc).__name__}: {exc})"
                              ) from exc


def _ticket(fields: dict) -> Ticket:
    return Ticket(**{**fields, "attachments": tuple(fields.get("attachments") or ())})


def _recorded(calls: list[dict], path: Path) -> Recorded:
    messages: dict[str, dict] = {}
    for c in calls:
        if c.get("request") and c.get("parts"):
            for (_, h), m in zip(c["parts"]["messages"], c["request"]["messages"], strict=False):
                messages[h] = m
    return Recorded([RecordedCall(c["seq"], c["step"], c["request_hash"], c["response_hash"],
                                  c.get("parts"), c["response"]) for c in calls],
                    f"cassette {path.name}", messages.get)


@dataclass
class CassetteCheck:
    """One cassette ticket replayed: its recorded and replayed outcome, and what changed."""

    ticket_id: str
    recorded: Any
    replayed: Any
    changes: list
    error: str = ""

    @property
    def same(self) -> bool:
        return not self.changes

    def line(self) -> str:
        if self.same:
            return f"{self.ticket_id}: same ({self.replayed.status})"
        return f"{self.ticket_id}: changed: " + "; ".join(c.text() for c in self.changes) + \
            (f" [{self.error}]" if self.error else "")


def _last_checks(steps: list[dict]) -> str:
    found = [s["output_json"] for s in steps if s.get("step") == "checks"]
    return found[-1] if found else "[]"


def replay_cassette(config, cassette: Cassette | Path, model: str | None = None,
                    strict: bool = True, environ=os.environ, offline: bool = False
                    ) -> list[CassetteCheck]:
    """Replay a cassette's tickets through the real crew, without a ledger; per ticket, what
    changed against the outcome it recorded (nothing, if the code still does what it did).
    `model` defaults to the recorded one; `offline` answers what the recording lacks with the
    offline model instead of asking `model`."""
    from . import diff, framework
    from .knowledge import KnowledgeBase, Orders
    from .llms import build_llms, preflight
    from .work import carry_out, outcome_fields

    if not isinstance(cassette, Cassette):
        cassette = Cassette.load(cassette)
    model = model or cassette.model
    env = environ_for(strict or offline, environ)
    preflight(config, model, env)
    framework.prepare(config.runs_dir / rundir.CREWAI)
    from .crew import CrewRunner

    runner = CrewRunner(config, build_llms(config, model, env), KnowledgeBase(config.knowledge_dir),
                        Orders(config.orders_file), config.settings.revision_limit)
    checks = []
    try:
        for entry in cassette.tickets:
            effects = SimulatedEffects(entry.history, cassette.as_of, cassette.run_id)
            _attach(runner, lambda _, e=entry: e.recorded, strict, effects, offline)
            result = runner.run(entry.ticket)
            with tempfile.TemporaryDirectory(prefix="crewbatch-cassette-") as tmp:
                status = carry_out(result, entry.ticket, Path(tmp), effects, 0, cassette.run_id)
            fields, _, _ = outcome_fields(config, result, status, 0)
            replayed = diff.facets({**fields, "status": status.value,
                                    "ticket_id": entry.ticket.ticket_id},
                                   _last_checks(result.steps))
            recorded = diff.facets(entry.outcome, entry.findings)
            checks.append(CassetteCheck(entry.ticket.ticket_id, recorded, replayed,
                                        diff.compare(recorded, replayed), fields["error"]))
    finally:
        runner.close()
    return checks
