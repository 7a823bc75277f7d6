"""A run: take the lock, feed the sources into the ledger, let the engine work them, finish.

Every record read gets a ledger row before any work; each ticket is then put on the engine's
queue (crews/engine.py), where this process's threads and any worker that joined take it, and its
result — status, every agent output, its actions — is written in one transaction by whoever
worked it (crews/work.py, the per-ticket boundary). A stop request (SIGTERM, Ctrl-C, the budget or
time limit) lets in-flight tickets finish, leaves the rest pending for the next run and exits 3.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import export, intake, report, rundir, worker
from .engine import BATCH_POLL_S, POLL_S, Engine
from .ledger import Ledger, LedgerError
from .llms import preflight, role_models
from .lock import LockHeld, RunLock
from .runlog import RunLog
from .settings import Config, RunOptions
from .ticket import PENDING, ExitCode, Rejection, RunStatus, Status, Ticket
from .work import Crew, build_crew, close_crew, process_safely
from .worker import share


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
                f"report: {rundir.report(self.results_path.parent)}")


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


class Budget:
    """--max-cost and --max-minutes: once reached, no new ticket starts (in-flight ones finish).
    `spent` is the run's cost so far, from the ledger: every worker's tickets."""

    def __init__(self, max_cost: float | None, max_minutes: float | None,
                 spent: Callable[[], float]):
        self.max_cost, self.max_minutes, self.spent = max_cost, max_minutes, spent
        self.started = time.monotonic()

    def exhausted(self) -> str | None:
        if self.max_cost is not None:
            spent = self.spent()
            if spent >= self.max_cost:
                return f"budget of ${self.max_cost:g} reached (spent ${spent:.4f})"
        if self.max_minutes is not None and \
                time.monotonic() - self.started >= self.max_minutes * 60:
            return f"time limit of {self.max_minutes:g} minute(s) reached"
        return None


class Stop(threading.Event):
    """A stop request. `set()` (the first SIGTERM or Ctrl-C): no new ticket starts, in-flight
    ones finish. `forced` (a second signal, or `stop_grace_s` passing first): the run is recorded
    as interrupted and the process exits 3 at once, whatever it is blocked on."""

    def __init__(self) -> None:
        super().__init__()
        self.forced = threading.Event()


def _stop_watchdog(config: Config, run_id: str, stop: threading.Event,
                   finished: threading.Event, ending: threading.Lock,
                   stop_reasons: list[str], parked: Callable[[], bool] | None = None) -> None:
    """Once the run is asked to stop, end it from here if its main thread cannot: a second
    signal, `stop_grace_s` passing, or (--batch-api) every ticket in flight waiting on a pending
    batch. Whichever of the two takes `ending` first records the run's end; the other leaves it."""
    while not finished.is_set():
        if stop.wait(0.5):
            break
    else:
        return
    forced = getattr(stop, "forced", None) or threading.Event()
    deadline = time.monotonic() + config.settings.stop_grace_s
    waits_on_batches = False
    while not finished.is_set() and not forced.is_set() and time.monotonic() < deadline:
        # --batch-api: tickets that wait on a pending batch would wait for its completion
        # window; the next run resumes polling it, so there is nothing to wait for here.
        if parked is not None and parked():
            waits_on_batches = True
            break
        forced.wait(0.2)
    if finished.is_set() or not ending.acquire(blocking=False):
        # The main thread is recording the end itself (its ledger writes, then results.csv).
        if not finished.wait(config.settings.stop_grace_s):
            os._exit(ExitCode.STOPPED)
        return
    why = ("a second stop signal" if forced.is_set() else
           "every ticket in flight waits on a pending batch; the next run resumes polling it"
           if waits_on_batches else
           f"in-flight work did not finish within stop_grace_s={config.settings.stop_grace_s:g}s")
    # Nothing is cut short when the tickets wait on batches: a run a limit stopped is `stopped`
    # as it would be without them; a signal's is `interrupted`, as is any forced stop.
    status = (RunStatus.STOPPED if waits_on_batches and stop_reasons and not forced.is_set()
              else RunStatus.INTERRUPTED)
    detail = "; ".join(filter(None, [stop_reasons[0] if stop_reasons else "",
                                     f"forced stop: {why}" if status == RunStatus.INTERRUPTED
                                     else why]))
    try:
        # A connection of its own: the run's may be held by the very call that is stuck.
        with Ledger(config.ledger_url) as ledger:
            ledger.release_unfinished(run_id, f"run {status.value} ({why}) before this ticket "
                                              "finished")
            ledger.finish_run(run_id, status.value, ExitCode.STOPPED, detail)
            export.write_results(ledger, run_id,
                                 rundir.results(rundir.run_dir(config.runs_dir, run_id)),
                                 config.runs_dir)
    finally:
        os.write(2, f"crewbatch: stopped at once ({why}); run {run_id} is {status.value}, its "
                    "unfinished tickets stay pending for the next run\n".encode())
        os._exit(ExitCode.STOPPED)


def run(config: Config, options: RunOptions, sources: list[str],
        intake_options: intake.IntakeOptions | None = None,
        stop: threading.Event | None = None,
        progress: Callable[[int], None] | None = None,
        retry_of: str | None = None, replay=None, records: Iterable | None = None,
        crew: Crew | None = None) -> RunSummary:
    """Process the sources (or a run's failed tickets, or `records` already read from the
    sources: an eval's sample, or with `replay` — a `replay.ReplayPlan` — a recorded run's
    tickets again); raises ConfigError/SourceError/LockHeld before any work.
    `crew` replaces the configured CrewAI crew with a plain `Ticket -> TicketResult` callable
    (tests, library use); it runs in this process, so not with `--workers`."""
    if crew is not None and options.workers > 1:
        raise ValueError("a crew handed to run() works in this process only; --workers starts "
                         "processes that build the configured crew")
    if crew is not None and options.batch_api:
        raise ValueError("--batch-api sends the configured crew's model requests through "
                         "batch.py; a crew handed to run() has no such models")
    stop = stop or Stop()
    intake_options = intake_options or intake.IntakeOptions.from_config(config)
    started = time.monotonic()
    files: list[Path] = []
    environ = replay.environ() if replay is not None else os.environ
    if retry_of is None and replay is None:
        if not (sources or config.settings.sources):
            raise intake.SourceError("no SOURCE given and `sources` in config/settings.yaml is "
                                     "empty; name a ticket file, e.g. `crewbatch run "
                                     "data/tickets.csv`")
        files = intake.expand_sources(sources or config.settings.sources, config.root,
                                      from_settings=not sources,
                                      follow_symlinks=config.settings.intake.follow_symlinks)
    preflight(config, options.model, environ)
    warnings = [f"no price for model `{m}` in config/settings.yaml `pricing`; its cost_usd is 0"
                for m in sorted(set(role_models(config, options.model).values()))
                if m != "offline" and m not in config.settings.pricing]

    with RunLock(config.runs_dir / rundir.LOCK) as lock:
        ledger = open_ledger(config, options.new_ledger)
        holder = ledger.take_run_lock()
        if holder:
            ledger.close()
            raise LockHeld(f"another crewbatch run is active on {config.ledger_name} "
                           f"({holder}). Wait for it to finish, or stop it (SIGTERM) and run "
                           "again; to add this host's capacity to it, run `crewbatch worker`")
        recovered = ledger.recover_crashed_runs("the process running it died; its unfinished "
                                                "tickets go back to pending")
        if retry_of is not None:
            records = iter(ledger.failed_tickets(retry_of))
        elif records is not None:  # read already from the sources: an eval's sample
            records = iter(records)
        elif replay is not None:
            records = iter(replay.tickets(ledger))
        else:
            records = _records(files, intake_options, options.limit)
        run_id = rundir.new_run_id()
        run_dir = rundir.run_dir(config.runs_dir, run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        # Started first: their seconds of start-up (CrewAI's import) overlap this process's own;
        # each waits for the run to start in the ledger, then joins it.
        helpers = worker.spawn(config, run_id, options) if options.workers > 1 else []
        try:
            collector = None
            if crew is None:
                crew = build_crew(config, ledger, options.model, processes=options.workers,
                                  threads=share(options), revision_limit=options.revision_limit,
                                  environ=environ, batch=options.batch_api)
            if options.batch_api:
                from . import batch

                crew.ticket_timeout_s = None
                collector = batch.Collector(ledger, run_id, config.settings.batch,
                                            batch.client_for(config, environ),
                                            stopping=stop.is_set)
                batch.install(crew.llms.values(), collector)
            if replay is not None:
                replay.attach(crew, ledger)
        except BaseException:
            ledger.close()
            for p in helpers:
                p.kill()
            raise
        lock.describe(run_id)
        log = RunLog(rundir.log(run_dir), json_lines=config.settings.log_json)
        status, stop_reason = RunStatus.CRASHED.value, ""
        budget = Budget(options.max_cost, options.max_minutes, lambda: ledger.run_cost(run_id))
        finished, ending = threading.Event(), threading.Lock()
        stop_reasons: list[str] = []
        threading.Thread(target=_stop_watchdog,
                         args=(config, run_id, stop, finished, ending, stop_reasons,
                               collector.parked if collector else None),
                         name="crewbatch-stop", daemon=True).start()
        engine = None
        try:
            ledger.start_run(run_id, options.model, {
                "concurrency": options.concurrency, "batch_size": options.batch_size,
                "revision_limit": options.revision_limit, "limit": options.limit,
                "reprocess": options.reprocess, "max_cost": options.max_cost,
                "max_minutes": options.max_minutes, "retry_of": retry_of,
                "workers": options.workers, "worker_concurrency": share(options),
                "side_effects": options.side_effects, "batch_api": options.batch_api,
                "models": role_models(config, options.model),
                **(replay.options() if replay is not None else {})},
                [str(f) for f in files] or ([replay.label()] if replay is not None else
                                            [f"retry of {retry_of}"]),
                replay_of=replay.of if replay is not None else None)
            log.info("run started", run_id=run_id, model=options.model,
                     sources=[str(f) for f in files], retry_of=retry_of,
                     recovered_runs=recovered)

            def should_stop() -> str | None:
                reason = budget.exhausted()
                if reason and not stop.is_set():
                    stop_reasons.append(reason)
                    stop.set()
                if stop.is_set():
                    return stop_reasons[0] if stop_reasons else "stop requested (signal)"
                return None

            def process(outcome_id: int, ticket: Ticket):
                with collector.turns.held() if collector else contextlib.nullcontext():
                    status_value, cost = process_safely(config, ledger, crew, run_dir,
                                                        outcome_id, ticket, options.side_effects,
                                                        options.batch_api)
                log.info("ticket finished", ticket_id=ticket.ticket_id, status=status_value,
                         cost_usd=round(cost, 6))
                return status_value, cost

            engine = Engine(ledger, config.ledger_url, config.runs_dir, run_id, process,
                            concurrency=options.concurrency, threads=share(options),
                            should_stop=should_stop, lease_s=config.settings.lease_s,
                            role="run", poll_s=BATCH_POLL_S if options.batch_api else POLL_S)
            engine.start()
            ledger.owner = engine.executor_id
            if collector is not None:
                collector.in_flight = lambda: engine.active
                collector.start()
            _feed(ledger, engine, run_id, records, options, stop, should_stop, progress)
            if engine.fatal is not None:
                raise engine.fatal
            if replay is not None and not stop.is_set():
                replay.copy_unprocessed(ledger, run_id)
            if stop.is_set():
                stop_reason = stop_reasons[0] if stop_reasons else "stop requested (signal)"
                status = (RunStatus.STOPPED if stop_reasons else RunStatus.INTERRUPTED).value
            else:
                status = RunStatus.COMPLETED.value
        finally:
            try:
                if engine is not None:
                    engine.close()
                if collector is not None:
                    collector.close()
                close_crew(crew)
                ending.acquire()  # the stop watchdog, if it took it, ends the run and the process
                if status != RunStatus.COMPLETED:
                    ledger.release_unfinished(run_id, f"run {status} before this ticket finished")
                counts = ledger.counts(run_id)
                exit_code = (ExitCode.STOPPED if status in (RunStatus.INTERRUPTED, RunStatus.STOPPED)
                             else ExitCode.CANNOT_RUN if status == RunStatus.CRASHED
                             else ExitCode.FAILED if counts.get(Status.FAILED.value)
                             else ExitCode.OK)
                ledger.finish_run(run_id, status, exit_code,
                                  "; ".join(filter(None, [stop_reason, json.dumps(counts)])))
                results = export.write_results(ledger, run_id, rundir.results(run_dir),
                                               config.runs_dir)
                report.write_report(ledger, run_id, rundir.report(run_dir),
                                    config.settings.pricing)
                cost = ledger.run_cost(run_id)
                log.info("run finished", run_id=run_id, status=status, exit_code=exit_code,
                         counts=counts, cost_usd=round(cost, 6), reason=stop_reason)
                log.close()
                ledger.close()
                for p in helpers:
                    p.wait()  # they leave once the run is no longer running
            finally:
                finished.set()
    return RunSummary(run_id, status, exit_code, counts, results, cost,
                      time.monotonic() - started, warnings, stop_reason)


def missing_ledger(config: Config) -> str | None:
    """Why the project's ledger must not be started afresh, or None: it is missing or empty
    while run folders exist, so it would forget which tickets were answered and answer them
    again. `run` refuses then (unless --new-ledger) and `check` reports it."""
    if not Ledger.is_empty(config.ledger_url) or not config.runs_dir.is_dir():
        return None
    earlier = rundir.run_ids(config.runs_dir)
    if not earlier:
        return None
    state = ("is empty (0 bytes or no runs)" if config.database_url or config.ledger_file.exists()
             else "is missing")
    return (f"{config.ledger_name}: the ledger {state}, but {config.runs_dir} holds {len(earlier)} earlier "
            f"run folder(s) (latest {earlier[-1]}); without the ledger those tickets would be "
            "answered and refunded again. Restore the ledger from a backup, or run with "
            "`--new-ledger` to start over knowingly")


def open_ledger(config: Config, new_ledger: bool = False) -> Ledger:
    """The project's ledger for a run; refused when `missing_ledger` says so."""
    problem = None if new_ledger else missing_ledger(config)
    if problem:
        raise LedgerError(problem)
    return Ledger(config.ledger_url)


def _feed(ledger: Ledger, engine, run_id: str, records: Iterator, options: RunOptions,
          stop: threading.Event, should_stop, progress) -> None:
    """Register records batch by batch and put each ticket on the run's queue, keeping at most
    twice the concurrency queued ahead of the workers; return when every queued ticket is
    final, or, after a stop, when none is in flight any more (the rest stays pending)."""
    window = options.concurrency * 2
    queued = final_at_intake = reported = 0

    def settled() -> int:
        nonlocal reported
        done = ledger.final_count(run_id) - final_at_intake
        if progress and done > reported:
            progress(done - reported)
        reported = max(reported, done)
        return done

    def halted() -> bool:
        return should_stop() is not None or engine.fatal is not None

    for batch in _batches(records, options.batch_size):
        if halted():
            break
        todo = ledger.add_records(run_id, batch, options.reprocess)
        final_at_intake += len(batch) - len(todo)
        if progress:
            progress(len(batch) - len(todo))  # rejected and skipped are final at once
        for outcome_id, _ in todo:
            while queued - settled() >= window and not halted():
                time.sleep(0.02)
            if halted():
                break
            engine.submit(outcome_id)
            queued += 1
    while not halted() and queued - settled() > 0:
        time.sleep(0.05)
    if halted():
        ledger.request_stop(run_id, should_stop() or "the run failed")
        engine.cancel_queued()
        while ledger.in_flight(run_id) and not getattr(stop, "forced",
                                                      threading.Event()).is_set():
            time.sleep(0.05)
    settled()
