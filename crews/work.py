"""One ticket's work, from its claim to its recorded outcome: the crew's result, the side effects
the policy allows, the outcome's columns, model calls and recording, written in one transaction.

`process_safely` is the per-ticket boundary of a run, the one broad catch: whatever a ticket
breaks fails that ticket only. The engine (crews/engine.py) calls it in whichever process holds
the ticket's claim. The crew is a plain callable, `Ticket -> TicketResult` (`Crew`): `build_crew`
makes the configured CrewAI crew for a run or a worker, and a test hands in a function instead,
so the engine and the pipeline run without CrewAI.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from . import rundir
from .action_kinds import QUEUE_REPLY, REQUEST_REFUND
from .ledger import Ledger, LedgerError
from .pricing import cost_usd
from .redaction import redact
from .result import TicketResult
from .settings import Config
from .ticket import Status, Ticket

# The crew as the engine sees it. It may also have `close()` (called once the run's tickets are
# done) and `effects` (a replay's simulated side effects, used instead of the ledger's).
Crew = Callable[[Ticket], TicketResult]

RELEASED = "released"  # not a status: the ticket was taken back from this process
# OS errors that are about the machine, not the record: the run stops (exit 2), the ticket stays
# pending for the next run instead of failing every ticket after it the same way.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT,
                      errno.EIO}


def build_crew(config: Config, ledger: Ledger, model: str, *, processes: int, threads: int,
               revision_limit: int, environ: Mapping[str, str] | None = None,
               batch: bool = False) -> Crew:
    """The configured CrewAI crew for a run's (or a worker's) `threads` tickets at a time, on
    models whose rate limits and Retry-After pauses are shared with the whole fleet through the
    ledger, and whose refund tool checks the caps against the ledger's refunds. With `batch`
    (`--batch-api`) the models are built for batch.py's transport, and agents are built ahead
    for the first 64 tickets only (a thousand may be in flight; the rest as tickets need them)."""
    from . import framework
    from .engine import fleet_windows, shared_pauses
    from .knowledge import Orders
    from .llms import build_llms
    from .retrieval import knowledge_for_run

    environ = os.environ if environ is None else environ
    kb = knowledge_for_run(config, environ, processes=processes, ledger=ledger)
    framework.prepare(config.runs_dir / rundir.CREWAI)
    from .crew import CrewRunner

    runner = CrewRunner(config, build_llms(config, model, environ, processes=processes,
                                           pauses=shared_pauses(config, ledger, model),
                                           fleet=fleet_windows(config, ledger, model),
                                           batch=batch),
                        kb, Orders(config.orders_file), revision_limit)
    runner.warm(min(threads, 64) if batch else threads)
    runner.refund_history = ledger.refund_history
    return runner


def close_crew(crew: Crew) -> None:
    close = getattr(crew, "close", None)
    if close is not None:
        close()


def process_safely(config: Config, ledger: Ledger, crew: Crew, run_dir: Path, outcome_id: int,
                   ticket: Ticket, side_effects: bool = True, batch: bool = False
                   ) -> tuple[str, float]:
    """`_process`, with the one broad catch of a run: a ticket that breaks something (a header
    the mail library refuses, text SQLite cannot store) ends `failed` with the error and the
    night goes on. A broken ledger or disk is not the ticket's fault and stops the run.
    Without `side_effects` (an eval) an approved ticket's actions are decided but not carried
    out: no reply file, no refund request, no side_effects or refunds row. With `batch` the
    model requests went through the Batch API and cost its prices."""
    try:
        return _process(config, ledger, crew, run_dir, outcome_id, ticket, side_effects, batch)
    except (LedgerError, KeyboardInterrupt):
        raise
    except OSError as exc:
        if exc.errno in ENVIRONMENT_ERRNOS:
            raise
        error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 — the per-ticket boundary
        error = f"{type(exc).__name__}: {exc}"
    error = redact(error).encode("utf-8", "backslashreplace").decode("utf-8")[:2000]
    if not ledger.record_result(outcome_id, Status.FAILED, {"error": error}, [], [],
                                f"failed while recording: {error}"):
        return RELEASED, 0.0
    return Status.FAILED.value, 0.0


def _process(config: Config, ledger: Ledger, crew: Crew, run_dir: Path, outcome_id: int,
             ticket: Ticket, side_effects: bool = True, batch: bool = False
             ) -> tuple[str, float]:
    started = time.monotonic()
    result = crew(ticket)
    if not ledger.still_running(outcome_id):
        # A crashed run's straggler: recovery gave this ticket back to a new run meanwhile.
        return RELEASED, 0.0
    # A replay's side effects are simulated (replay.SimulatedEffects), never the ledger's.
    effects = getattr(crew, "effects", None)
    status = carry_out(result, ticket, run_dir, effects or ledger, outcome_id,
                       getattr(effects, "replay_of", None)) if side_effects else result.status
    fields, calls, blobs = outcome_fields(config, result, status,
                                          int((time.monotonic() - started) * 1000), side_effects,
                                          batch)
    actions = json.loads(fields["actions_json"])
    steps = [{**s, "output_text": redact(s["output_text"])} for s in result.steps]
    if not ledger.record_result(outcome_id, status, fields, steps, actions,
                                redact(result.detail or fields["error"]), calls, blobs):
        return RELEASED, 0.0
    return status.value, fields["cost_usd"]


def carry_out(result, ticket: Ticket, run_dir: Path, effects, outcome_id: int,
              replay_of: str | None = None) -> Status:
    """Perform an approved ticket's side effects; the ticket's final status (a refund another
    ticket's took the room for meanwhile sends it to a person)."""
    from .actions import PolicyRefusal, perform

    if result.status != Status.APPROVED:
        return result.status
    try:
        perform(result.decisions, ticket, result.draft, run_dir, effects, outcome_id, replay_of)
    except PolicyRefusal as refusal:
        # Another ticket used the order's or customer's refund room while this one ran.
        result.needs_human_reason = f"policy refused the refund when carrying it out: {refusal}"
        for d in result.decisions:
            if d.kind == REQUEST_REFUND and d.allowed:
                d.allowed, d.reason = False, str(refusal)
        return Status.NEEDS_HUMAN
    return Status.APPROVED


def outcome_fields(config: Config, result, status: Status, duration_ms: int,
                   performed: bool = True, batch: bool = False
                   ) -> tuple[dict, list[dict], dict[str, bytes]]:
    """A ticket's outcome columns, its model_calls rows and the recording's blobs to store."""
    error = redact(result.error) if result.error else ""
    draft, verdict = result.draft, result.verdict
    agents = {step: spec.agent for step, spec in config.tasks.items()}
    calls: list[dict] = []
    blobs: dict[str, bytes] = {}
    for c in result.calls:
        round_no, step = c["step_key"].split(":", 1)
        row = {k: v for k, v in c.items() if k != "exchange"}
        exchange = c.get("exchange")
        if exchange is not None:
            columns, stored = exchange.stored(config.settings.recording, {
                k: c[k] for k in ("prompt_tokens", "completion_tokens", "cached_tokens")})
            row.update(columns)
            blobs.update(stored)
        calls.append({**row, "round": int(round_no), "step": step,
                      "agent": agents.get(step, step),
                      "cost_usd": cost_usd(config.settings.pricing, c["model"],
                                           c["prompt_tokens"], c["completion_tokens"],
                                           c.get("cached_tokens") or 0,
                                           batch=batch) or 0.0})
    cost = sum(c["cost_usd"] for c in calls)
    actions = action_rows(result, status, performed)
    fields = {
        "category": draft.category if draft else "",
        "priority": draft.priority if draft else "",
        "language": draft.language if draft else "",
        "draft_reply": draft.reply if draft else "",
        "critic_verdict": ("" if verdict is None else "approved" if verdict.approved
                           else "rejected"),
        "critic_notes": "\n".join(
            ([verdict.summary] if verdict and verdict.summary else []) +
            [f"[{f.severity}] {f.check}: {f.detail}" for f in result.findings]),
        "revisions": result.revisions,
        "actions_json": json.dumps(actions, ensure_ascii=False),
        "needs_human_reason": result.needs_human_reason,
        "model": ",".join(sorted(result.models)),
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "cached_tokens": result.usage.cached_tokens,
        # Not rounded: the run's cost is the sum of its tickets' (a batch run's is then exactly
        # its share of the live price); the sheet shows it to the micro-dollar.
        "cost_usd": cost,
        "duration_ms": duration_ms,
        "error": error,
    }
    return fields, calls, blobs


def action_rows(result, status: Status, performed: bool = True) -> list[dict]:
    """Every proposed action with what became of it: performed, refused, not_run (allowed, but
    the ticket went to a person or the run's side effects were off) or proposed."""
    rows = []
    for d in result.decisions:
        decision = ("refused" if not d.allowed else
                    "performed" if status == Status.APPROVED and performed else "not_run")
        rows.append({"kind": d.kind, "args": d.args, "decision": decision, "reason": d.reason})
    seen = {(r["kind"], json.dumps(r["args"], sort_keys=True)) for r in rows}
    planned = result.plan or (result.draft.actions if result.draft else [])
    for a in planned:
        args = {k: v for k, v in a.model_dump().items() if k not in ("kind", "reason") and v}
        if a.kind == QUEUE_REPLY:
            args = {}
        if not any(r["kind"] == a.kind and all(r["args"].get(k) == v for k, v in args.items())
                   for r in rows) and (a.kind, json.dumps(args, sort_keys=True)) not in seen:
            rows.append({"kind": a.kind, "args": args, "decision": "proposed",
                         "reason": a.reason})
    return rows
