"""Workers that join a run: the `--workers N` processes on this machine and `crewbatch worker` on
any host that reaches the ledger and has the same config/ and data/.

A worker reads the run's options from the ledger (model, revision limit, budget), builds its own
crew, and works tickets from the run's queue through the same engine as the run's own process
(crews/engine.py) until the run ends, a stop is requested, or a peer declares it dead. The run's
budget and time limit hold for the whole fleet: every worker checks the run's cost in the ledger
and the run's start time before it starts a ticket, and the run's stop request.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import datetime

from . import rundir
from .settings import Config, RunOptions
from .ticket import RunStatus


def share(options: RunOptions) -> int:
    """Tickets in flight per process: the run's concurrency split over its local processes."""
    return options.worker_concurrency or max(1, -(-options.concurrency // max(1, options.workers)))


def _die_with_parent() -> None:
    """In a `--workers` child: have the kernel kill it when the run's process dies (Linux), so a
    kill -9 of the run leaves no worker behind; elsewhere the fence in the ledger still holds."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def spawn(config: Config, run_id: str, options: RunOptions) -> list[subprocess.Popen]:
    """The run's `--workers N` - 1 extra processes, each `crewbatch worker --run RUN_ID`."""
    log = open(rundir.workers_log(rundir.run_dir(config.runs_dir, run_id)), "ab")
    try:
        return [subprocess.Popen(
            [sys.executable, "-m", "crews", "--root", str(config.root), "worker", "--run", run_id,
             "--concurrency", str(share(options))],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=_die_with_parent)
            for _ in range(options.workers - 1)]
    finally:
        log.close()


def wait_for_run(ledger, run_id: str | None, stop: threading.Event, poll_s: float = 1.0
                 ) -> str | None:
    """The run to join: `run_id` while it is running, else the active run, waiting for one."""
    while not stop.is_set():
        if run_id is not None:
            status, _ = ledger.run_state(run_id)
            if status == RunStatus.RUNNING:
                return run_id
            if status:
                return None  # finished already
        else:
            active = ledger.active_run()
            if active:
                return active
        stop.wait(poll_s)
    return None


def work_run(config: Config, ledger, run_id: str, concurrency: int | None,
             stop: threading.Event, crew=None) -> int:
    """Work `run_id`'s tickets until the run ends or `stop`; the number of tickets recorded.
    `crew` (a `work.Crew`) replaces the configured CrewAI crew, as in `pipeline.run`."""
    from .engine import Engine
    from .runlog import RunLog
    from .work import build_crew, close_crew, process_safely

    run = ledger.run(run_id)
    opts = run.options
    if opts.get("batch_api"):
        # A wave is one batch from the run's own process; a worker's live calls would bypass it.
        print(f"crewbatch worker: run {run_id} sends its requests through the Batch API from "
              "its own process; there is nothing for a worker to do", file=sys.stderr)
        return 0
    processes = int(opts.get("workers") or 1)
    threads = concurrency or int(opts.get("worker_concurrency") or 0) or \
        max(1, -(-int(opts.get("concurrency") or 1) // processes))
    started = datetime.fromisoformat(run.started_utc.replace("Z", "+00:00")).timestamp()
    if crew is None:
        crew = build_crew(config, ledger, run.model, processes=processes, threads=threads,
                          revision_limit=int(opts.get("revision_limit") or 0))
    run_dir = rundir.run_dir(config.runs_dir, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(rundir.log(run_dir), json_lines=config.settings.log_json)
    recorded = 0
    max_cost, max_minutes = opts.get("max_cost"), opts.get("max_minutes")
    side_effects = opts.get("side_effects", True) is not False

    def should_stop() -> str | None:
        if stop.is_set():
            return "the worker was asked to stop"
        status, requested = ledger.run_state(run_id)
        if status != RunStatus.RUNNING:
            return f"run {run_id} is {status}"
        if requested:
            return requested
        if max_cost is not None and ledger.run_cost(run_id) >= max_cost:
            return f"budget of ${max_cost:g} reached"
        if max_minutes is not None and time.time() - started >= max_minutes * 60:
            return f"time limit of {max_minutes:g} minute(s) reached"
        return None

    def process(outcome_id, ticket):
        nonlocal recorded
        status, cost = process_safely(config, ledger, crew, run_dir, outcome_id, ticket,
                                      side_effects)
        recorded += 1
        log.info("ticket finished", ticket_id=ticket.ticket_id, status=status,
                 cost_usd=round(cost, 6), worker=engine.executor_id)
        return status, cost

    engine = Engine(ledger, config.ledger_url, config.runs_dir, run_id, process,
                    concurrency=int(opts.get("concurrency") or threads), threads=threads,
                    should_stop=should_stop, lease_s=config.settings.lease_s, role="worker")
    try:
        engine.start()
        ledger.owner = engine.executor_id
        log.info("worker joined", run_id=run_id, worker=engine.executor_id, threads=threads)
        while not stop.is_set() and not engine.dead.is_set() and engine.fatal is None:
            if ledger.run_state(run_id)[0] != RunStatus.RUNNING:
                break
            stop.wait(0.2)
    finally:
        engine.close(wait_s=config.settings.stop_grace_s)
        close_crew(crew)
        log.info("worker left", run_id=run_id, worker=engine.executor_id, recorded=recorded)
        log.close()
    if engine.fatal is not None:
        raise engine.fatal
    return recorded


def main(config: Config, run_id: str | None, concurrency: int | None, once: bool,
         stop: threading.Event, echo) -> None:
    """`crewbatch worker`: join the run (or the next one) and work it; repeat unless `once`."""
    from . import framework
    from .ledger import Ledger

    # CrewAI's import is most of a worker's start-up: done while the run is awaited.
    framework.prepare(config.runs_dir / rundir.CREWAI)
    from . import crew  # noqa: F401

    with Ledger(config.ledger_url) as ledger:
        while not stop.is_set():
            joined = wait_for_run(ledger, run_id, stop)
            if joined is None:
                if run_id is not None and not stop.is_set():
                    echo(f"crewbatch: run {run_id} is not running; nothing to join")
                return
            echo(f"crewbatch: worker joined run {joined}")
            done = work_run(config, ledger, joined, concurrency, stop)
            echo(f"crewbatch: worker left run {joined} after {done} ticket(s)")
            if once or run_id is not None:
                return
            while ledger.run_state(joined)[0] == RunStatus.RUNNING and not stop.is_set():
                stop.wait(1.0)


def signal_stop(stop: threading.Event) -> None:
    """SIGTERM/SIGINT: no new tickets; in-flight ones finish (stop_grace_s) and are recorded."""
    def handler(signum, frame):
        stop.set()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, handler)
