"""A run: read the sources in batches, hand each ticket to the crew, record every outcome.

The ledger is registered before any work (every record read gets a row), the crew runs tickets on a
bounded thread pool, and each ticket's result — its status, every agent output, its actions — is
written in one transaction by the thread that ran it. A ticket whose crew raised is `failed` with
the error (caught once, in `CrewRunner.run`); the batch goes on. A stop request (SIGTERM, Ctrl-C)
lets in-flight tickets finish, leaves the rest pending for the next run and exits 3.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import export, framework, intake
from .knowledge import KnowledgeBase, Orders
from .ledger import Ledger
from .llms import build_llms, preflight, role_models
from .settings import Config, RunOptions
from .ticket import PENDING, Rejection, Status, Ticket

EXIT_OK, EXIT_FAILED, EXIT_CANNOT_RUN, EXIT_STOPPED = 0, 1, 2, 3


@dataclass
class RunSummary:
    run_id: str
    status: str
    exit_code: int
    counts: dict[str, int]
    results_path: Path
    cost_usd: float = 0.0
    duration_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        order = [s.value for s in Status] + [PENDING]
        parts = [f"{self.counts.get(s, 0)} {s}" for s in order if self.counts.get(s) or
                 s in (Status.APPROVED.value, Status.NEEDS_HUMAN.value, Status.FAILED.value)]
        return (f"run {self.run_id} {self.status}: {self.records} records: {', '.join(parts)}; "
                f"cost ${self.cost_usd:.4f}; {self.duration_s:.1f}s; results: {self.results_path}")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def redact(text: str, environ=os.environ) -> str:
    """Remove anything that looks like a secret before it reaches the ledger, logs or sheets."""
    key = environ.get("OPENAI_API_KEY")
    if key and len(key) >= 6:
        text = text.replace(key, "***")
    return re.sub(r"\b(sk-|sk_)[A-Za-z0-9_-]{6,}", r"\1***", text)


def _batches(items: Iterator, size: int) -> Iterator[list]:
    while True:
        batch = list(itertools.islice(items, size))
        if not batch:
            return
        yield batch


def _records(files: list[Path], options: intake.IntakeOptions, limit: int | None
             ) -> Iterator[Ticket | Rejection]:
    stream = intake.read_sources(files, options)
    return itertools.islice(stream, limit) if limit else stream


def price(config: Config, model: str, prompt_tokens: int, completion_tokens: int) -> float:
    p = config.settings.pricing.get(model)
    if p is None:
        return 0.0
    return (prompt_tokens * p.input_per_million + completion_tokens * p.output_per_million) / 1e6


def run(config: Config, options: RunOptions, sources: list[str],
        intake_options: intake.IntakeOptions | None = None,
        stop: threading.Event | None = None,
        progress: Callable[[int], None] | None = None) -> RunSummary:
    """Process the sources; return the summary (raises ConfigError/SourceError before any work)."""
    stop = stop or threading.Event()
    intake_options = intake_options or intake.IntakeOptions.from_config(config)
    started = time.monotonic()
    files = intake.expand_sources(sources or config.settings.sources, config.root)
    if not files:
        raise intake.SourceError("no SOURCE given and `sources` in config/settings.yaml is empty; "
                                 "name a ticket file, e.g. `crewbatch run data/tickets.csv`")
    preflight(config, options.model)
    warnings = [f"no price for model `{m}` in config/settings.yaml `pricing`; its cost_usd is 0"
                for m in sorted(set(role_models(config, options.model).values()))
                if m != "offline" and m not in config.settings.pricing]
    kb = KnowledgeBase(config.knowledge_dir)
    orders = Orders(config.orders_file)

    framework.prepare(config.runs_dir / ".crewai")
    from .crew import CrewRunner

    runner = CrewRunner(config, build_llms(config, options.model), kb, orders,
                        options.revision_limit)
    run_id = new_run_id()
    run_dir = config.runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(config.ledger_file)
    status = "crashed"
    try:
        ledger.start_run(run_id, options.model, {
            "concurrency": options.concurrency, "batch_size": options.batch_size,
            "revision_limit": options.revision_limit, "limit": options.limit,
            "reprocess": options.reprocess,
            "models": role_models(config, options.model)}, [str(f) for f in files])

        def work(outcome_id: int, ticket: Ticket) -> str | None:
            if stop.is_set():
                return None
            ledger.mark_running(outcome_id)
            return _process(config, ledger, runner, run_dir, outcome_id, ticket)

        with ThreadPoolExecutor(options.concurrency, thread_name_prefix="ticket") as pool:
            for batch in _batches(_records(files, intake_options, options.limit), options.batch_size):
                if stop.is_set():
                    break
                todo = ledger.add_records(run_id, batch, options.reprocess)
                if progress:
                    progress(len(batch) - len(todo))  # rejected and skipped are final at once
                for status_value in pool.map(lambda pair: work(*pair), todo):
                    if progress and status_value:
                        progress(1)
        status = "interrupted" if stop.is_set() else "completed"
    finally:
        counts = ledger.counts(run_id)
        if status == "interrupted":
            ledger.release_unfinished(run_id, "run interrupted before this ticket finished")
            counts = ledger.counts(run_id)
        exit_code = (EXIT_STOPPED if status == "interrupted" else
                     EXIT_CANNOT_RUN if status == "crashed" else
                     EXIT_FAILED if counts.get(Status.FAILED.value) else EXIT_OK)
        ledger.finish_run(run_id, status, exit_code, json.dumps(counts))
        results = export.write_results(ledger, run_id, run_dir / "results.csv")
        cost = sum(o["cost_usd"] for o in ledger.outcomes(run_id))
        ledger.close()
    return RunSummary(run_id, status, exit_code, counts, results, cost,
                      time.monotonic() - started, warnings)


def _process(config: Config, ledger: Ledger, runner, run_dir: Path, outcome_id: int,
             ticket: Ticket) -> str:
    from .actions import perform

    started = time.monotonic()
    result = runner.run(ticket)
    error = redact(result.error) if result.error else ""
    status = result.status
    if status == Status.APPROVED:
        try:
            perform(result.decisions, ticket, result.draft, run_dir, ledger, outcome_id)
        except OSError as exc:  # the outbox is unwritable: a failure, retried by the next run
            status, error = Status.FAILED, redact(f"{type(exc).__name__}: {exc}")
    draft, verdict = result.draft, result.verdict
    cost = sum(price(config, s["model"], s.get("prompt_tokens", 0), s.get("completion_tokens", 0))
               for s in result.steps)
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
        "actions_json": json.dumps(action_rows(result, status), ensure_ascii=False),
        "needs_human_reason": result.needs_human_reason,
        "model": ",".join(sorted(result.models)),
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "cost_usd": round(cost, 6),
        "duration_ms": int((time.monotonic() - started) * 1000),
        "error": error,
    }
    steps = [{**s, "output_text": redact(s["output_text"])} for s in result.steps]
    ledger.record_result(outcome_id, status, fields, steps,
                         [{"kind": a["kind"], "args": a["args"], "decision": a["decision"],
                           "reason": a["reason"]} for a in action_rows(result, status)],
                         redact(result.detail or error))
    return status.value


def action_rows(result, status: Status) -> list[dict]:
    """Every proposed action with what became of it: performed, refused, not_run or proposed."""
    rows = []
    for d in result.decisions:
        decision = ("refused" if not d.allowed else
                    "performed" if status == Status.APPROVED else "not_run")
        rows.append({"kind": d.kind, "args": d.args, "decision": decision, "reason": d.reason})
    seen = {(r["kind"], json.dumps(r["args"], sort_keys=True)) for r in rows}
    planned = result.plan or (result.draft.actions if result.draft else [])
    for a in planned:
        args = {k: v for k, v in a.model_dump().items() if k not in ("kind", "reason") and v}
        if a.kind == "queue_reply":
            args = {}
        if not any(r["kind"] == a.kind and all(r["args"].get(k) == v for k, v in args.items())
                   for r in rows) and (a.kind, json.dumps(args, sort_keys=True)) not in seen:
            rows.append({"kind": a.kind, "args": args, "decision": "proposed",
                         "reason": a.reason})
    return rows
