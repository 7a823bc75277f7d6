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
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import export, framework, intake, report
from .knowledge import KnowledgeBase, Orders
from .ledger import Ledger
from .llms import build_llms, preflight, role_models
from .lock import RunLock
from .runlog import RunLog
from .settings import Config, RunOptions
from .ticket import PENDING, Rejection, Status, Ticket
from .workers import WorkerPool, share

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
    stop_reason: str = ""

    @property
    def records(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        order = [s.value for s in Status] + [PENDING]
        parts = [f"{self.counts.get(s, 0)} {s}" for s in order if self.counts.get(s) or
                 s in (Status.APPROVED.value, Status.NEEDS_HUMAN.value, Status.FAILED.value)]
        return (f"run {self.run_id} {self.status}: {self.records} records: {', '.join(parts)}; "
                f"cost ${self.cost_usd:.4f}; {self.duration_s:.1f}s; results: {self.results_path}; "
                f"report: {self.results_path.with_name('report.html')}")


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


class Budget:
    """--max-cost and --max-minutes: once reached, no new ticket starts (in-flight ones finish)."""

    def __init__(self, max_cost: float | None, max_minutes: float | None):
        self.max_cost, self.max_minutes = max_cost, max_minutes
        self.started = time.monotonic()
        self.spent = 0.0
        self.spent_in = None  # with --workers: the run's cost from the ledger, all processes
        self._lock = threading.Lock()

    def add(self, cost: float) -> None:
        with self._lock:
            self.spent += cost

    def exhausted(self) -> str | None:
        if self.max_cost is not None:
            spent = self.spent_in() if self.spent_in else self.spent
            if spent >= self.max_cost:
                return f"budget of ${self.max_cost:g} reached (spent ${spent:.4f})"
        if self.max_minutes is not None and \
                time.monotonic() - self.started >= self.max_minutes * 60:
            return f"time limit of {self.max_minutes:g} minute(s) reached"
        return None


def run(config: Config, options: RunOptions, sources: list[str],
        intake_options: intake.IntakeOptions | None = None,
        stop: threading.Event | None = None,
        progress: Callable[[int], None] | None = None,
        retry_of: str | None = None) -> RunSummary:
    """Process the sources (or a run's failed tickets); raises ConfigError/SourceError/LockHeld
    before any work."""
    stop = stop or threading.Event()
    intake_options = intake_options or intake.IntakeOptions.from_config(config)
    started = time.monotonic()
    files: list[Path] = []
    if retry_of is None:
        if not (sources or config.settings.sources):
            raise intake.SourceError("no SOURCE given and `sources` in config/settings.yaml is "
                                     "empty; name a ticket file, e.g. `crewbatch run "
                                     "data/tickets.csv`")
        files = intake.expand_sources(sources or config.settings.sources, config.root,
                                      from_settings=not sources)
    preflight(config, options.model)
    warnings = [f"no price for model `{m}` in config/settings.yaml `pricing`; its cost_usd is 0"
                for m in sorted(set(role_models(config, options.model).values()))
                if m != "offline" and m not in config.settings.pricing]
    kb = KnowledgeBase(config.knowledge_dir)
    orders = Orders(config.orders_file)

    with RunLock(config.runs_dir / "crewbatch.lock") as lock:
        ledger = Ledger(config.ledger_file)
        recovered = ledger.recover_crashed_runs("the process running it died; its unfinished "
                                                "tickets go back to pending")
        if retry_of is not None:
            records: Iterator = iter(ledger.failed_tickets(retry_of))
        else:
            records = _records(files, intake_options, options.limit)
        run_id = new_run_id()
        run_dir = config.runs_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        workers = WorkerPool(config.root, options, run_id,
                             role_models(config, options.model).values()).start() \
            if options.workers > 1 else None
        try:
            framework.prepare(config.runs_dir / ".crewai")
            from .crew import CrewRunner

            runner = CrewRunner(config, build_llms(config, options.model,
                                                   processes=options.workers,
                                                   pauses=workers.pauses if workers else None),
                                kb, orders, options.revision_limit)
            runner.warm(share(options))
        except BaseException:
            if workers is not None:
                workers.abort()
            raise
        lock.describe(run_id)
        log = RunLog(run_dir / "run.log", json_lines=config.settings.log_json)
        status, stop_reason = "crashed", ""
        budget = Budget(options.max_cost, options.max_minutes)
        try:
            ledger.start_run(run_id, options.model, {
                "concurrency": options.concurrency, "batch_size": options.batch_size,
                "revision_limit": options.revision_limit, "limit": options.limit,
                "reprocess": options.reprocess, "max_cost": options.max_cost,
                "max_minutes": options.max_minutes, "retry_of": retry_of,
                "workers": options.workers,
                "models": role_models(config, options.model)},
                [str(f) for f in files] or [f"retry of {retry_of}"])
            log.info("run started", run_id=run_id, model=options.model,
                     sources=[str(f) for f in files], retry_of=retry_of,
                     recovered_runs=recovered)

            def work(outcome_id: int, ticket: Ticket) -> str | None:
                reason = budget.exhausted()
                if reason and not stop.is_set():
                    stop_reasons.append(reason)
                    stop.set()
                if workers is not None and workers.stop.is_set() and not stop.is_set():
                    stop_reasons.append(budget.exhausted() or "a worker process stopped")
                    stop.set()
                if stop.is_set():
                    if workers is not None:
                        workers.stop.set()
                    return None
                if not ledger.claim(outcome_id, "main"):
                    return None  # a worker process took it
                status_value, cost = _process(config, ledger, runner, run_dir, outcome_id,
                                              ticket)
                budget.add(cost)
                log.info("ticket finished", ticket_id=ticket.ticket_id, status=status_value,
                         cost_usd=round(cost, 6))
                return status_value

            stop_reasons: list[str] = []
            if workers is not None:
                budget.spent_in = lambda: ledger.run_cost(run_id)  # every process's tickets
                with workers:
                    try:
                        _drive(ledger, run_id, records, options, work, stop, progress)
                    finally:
                        if stop.is_set():
                            workers.stop.set()
            else:
                _drive(ledger, run_id, records, options, work, stop, progress)
            if stop.is_set():
                stop_reason = stop_reasons[0] if stop_reasons else "stop requested (signal)"
                status = "stopped" if stop_reasons else "interrupted"
            else:
                status = "completed"
        finally:
            if workers is not None and status != "completed":
                workers.abort()  # they finish their tickets in flight; the rest stays pending
            runner.close()
            if status != "completed":
                ledger.release_unfinished(run_id, f"run {status} before this ticket finished")
            counts = ledger.counts(run_id)
            exit_code = (EXIT_STOPPED if status in ("interrupted", "stopped") else
                         EXIT_CANNOT_RUN if status == "crashed" else
                         EXIT_FAILED if counts.get(Status.FAILED.value) else EXIT_OK)
            ledger.finish_run(run_id, status, exit_code,
                              "; ".join(filter(None, [stop_reason, json.dumps(counts)])))
            results = export.write_results(ledger, run_id, run_dir / "results.csv")
            report.write_report(ledger, run_id, run_dir / "report.html",
                                config.settings.pricing)
            cost = sum(o["cost_usd"] for o in ledger.outcomes(run_id))
            log.info("run finished", run_id=run_id, status=status, exit_code=exit_code,
                     counts=counts, cost_usd=round(cost, 6), reason=stop_reason)
            log.close()
            ledger.close()
            if workers is not None:
                workers.join()
    return RunSummary(run_id, status, exit_code, counts, results, cost,
                      time.monotonic() - started, warnings, stop_reason)


def _drive(ledger: Ledger, run_id: str, records: Iterator, options: RunOptions, work,
           stop: threading.Event, progress) -> None:
    """Register records batch by batch and keep `concurrency` tickets in flight across batches
    (this process's share of them with --workers; the window feeds the other processes too)."""
    window = options.concurrency * 2
    with ThreadPoolExecutor(share(options), thread_name_prefix="ticket") as pool:
        in_flight: set = set()
        for batch in _batches(records, options.batch_size):
            if stop.is_set():
                break
            todo = ledger.add_records(run_id, batch, options.reprocess)
            if progress:
                progress(len(batch) - len(todo))  # rejected and skipped are final at once
            for outcome_id, ticket in todo:
                while len(in_flight) >= window:
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    _collect(done, progress)
                in_flight.add(pool.submit(work, outcome_id, ticket))
        done, _ = wait(in_flight)
        _collect(done, progress)


def _collect(done, progress) -> None:
    for future in done:
        if future.result() and progress:  # re-raises a bug in the pipeline itself
            progress(1)


RELEASED = "released"  # not a status: the ticket was taken back from this process


def _process(config: Config, ledger: Ledger, runner, run_dir: Path, outcome_id: int,
             ticket: Ticket) -> tuple[str, float]:
    from .actions import perform

    started = time.monotonic()
    result = runner.run(ticket)
    error = redact(result.error) if result.error else ""
    status = result.status
    if not ledger.still_running(outcome_id):
        # A crashed run's straggler: recovery gave this ticket back to a new run meanwhile.
        return RELEASED, 0.0
    if status == Status.APPROVED:
        try:
            perform(result.decisions, ticket, result.draft, run_dir, ledger, outcome_id)
        except OSError as exc:  # the outbox is unwritable: a failure, retried by the next run
            status, error = Status.FAILED, redact(f"{type(exc).__name__}: {exc}")
    draft, verdict = result.draft, result.verdict
    agents = {step: spec.agent for step, spec in config.tasks.items()}
    calls = []
    for c in result.calls:
        round_no, step = c["step_key"].split(":", 1)
        calls.append({**c, "round": int(round_no), "step": step, "agent": agents.get(step, step),
                      "cost_usd": price(config, c["model"], c["prompt_tokens"],
                                        c["completion_tokens"])})
    cost = sum(c["cost_usd"] for c in calls)
    actions = action_rows(result, status)
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
        "cost_usd": round(cost, 6),
        "duration_ms": int((time.monotonic() - started) * 1000),
        "error": error,
    }
    steps = [{**s, "output_text": redact(s["output_text"])} for s in result.steps]
    if not ledger.record_result(outcome_id, status, fields, steps, actions,
                                redact(result.detail or error), calls):
        return RELEASED, 0.0
    return status.value, cost


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
