"""Extra worker processes (`--workers N`) that claim tickets through the ledger.

CrewAI costs ~80 ms of CPU per ticket even with an instant model, and under the GIL one process
cannot use a second core. With `--workers N` the run's own process keeps reading the sources,
registering records and working tickets, and N-1 more processes take pending tickets of the same
run from the ledger (`Ledger.claim_next`, one transaction per claim, so no ticket is taken twice).
`--concurrency` stays the total: each process runs its share of threads. The run's stop event is
shared; a worker dies with the run's process (so a `kill -9` of the run leaves no orphan working
tickets the next run takes back).
Rate limits are split evenly between the processes (each has its own sliding window); a
Retry-After pauses the model in all of them (`WorkerPool.pauses`, shared values).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path

from .settings import RunOptions


def share(options: RunOptions) -> int:
    """Threads per process."""
    return max(1, -(-options.concurrency // max(1, options.workers)))


class WorkerPool:
    def __init__(self, root: Path, options: RunOptions, run_id: str, models=()):
        ctx = mp.get_context("spawn")  # a fresh interpreter: no threads or locks inherited
        # One Retry-After pause per model, seen by every process of the run (calls.RateLimiter).
        self.pauses = {model: ctx.Value("d", 0.0) for model in sorted(set(models))}
        self.stop = ctx.Event()
        self.input_done = ctx.Event()
        # Set by a worker once its last ticket is recorded, before its interpreter winds down
        # (a second or so of CrewAI teardown the run need not wait for).
        self.finished = [ctx.Event() for _ in range(1, options.workers)]
        self.processes = [
            ctx.Process(target=worker_main, name=f"crewbatch-worker-{i}",
                        args=(str(root), asdict(options), run_id, i, self.stop,
                              self.input_done, os.getpid(), self.finished[i - 1], self.pauses))
            for i in range(1, options.workers)]

    def start(self) -> WorkerPool:
        """Start the processes (once). The run starts them before its own CrewAI import, so
        their seconds of start-up overlap it instead of delaying the first claims."""
        for p in self.processes:
            if p.pid is None:
                p.start()
        return self

    def abort(self) -> None:
        """Stop taking tickets and wait for the processes to exit."""
        self.stop.set()
        self.input_done.set()
        self.join()

    def join(self) -> None:
        for p in self.processes:
            if p.pid is not None:
                p.join()

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc) -> None:
        """Tell the workers the input is done; return once every one has recorded its last
        ticket (or died). `join` waits for the processes themselves."""
        self.input_done.set()
        if exc[0] is not None:
            self.stop.set()
        for p, finished in zip(self.processes, self.finished, strict=True):
            while p.pid is not None and p.is_alive() and not finished.wait(0.1):
                pass


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this worker the moment the run's process dies (Linux).

    A `kill -9` of the run must end the whole run: a worker that lived on would finish its
    tickets while the next run — the run lock went with its holder — takes the same tickets
    back. Elsewhere the worker notices the orphaning at its next claim, and the ledger refuses
    a result for a ticket recovery has given back (`Ledger.record_result`).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the call above took effect
        os._exit(1)


def worker_main(root: str, options: dict, run_id: str, index: int, stop, input_done,
                parent_pid: int, finished, pauses) -> None:
    # The run's own process decides when to stop (SIGTERM/Ctrl-C reach the whole group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    from dotenv import load_dotenv

    from . import framework
    from .knowledge import Orders
    from .ledger import Ledger
    from .llms import build_llms
    from .pipeline import process_safely
    from .retrieval import knowledge_for_run
    from .runlog import RunLog
    from .settings import load_config

    config = load_config(Path(root))
    load_dotenv(config.root / ".env", override=False)
    opts = RunOptions(**options)
    framework.prepare(config.runs_dir / ".crewai")
    from .crew import CrewRunner

    runner = CrewRunner(config, build_llms(config, opts.model, processes=opts.workers,
                                           pauses=pauses),
                        knowledge_for_run(config, processes=opts.workers),
                        Orders(config.orders_file),
                        opts.revision_limit)
    runner.warm(share(opts))
    run_dir = config.runs_dir / run_id
    log = RunLog(run_dir / "run.log", json_lines=config.settings.log_json)
    name = f"worker {index} (pid {os.getpid()})"
    started = time.monotonic()
    with Ledger(config.ledger_url) as ledger, \
            ThreadPoolExecutor(share(opts), thread_name_prefix="ticket") as pool:
        in_flight: set = set()
        runner.refund_history = ledger.refund_history

        def done(future) -> None:
            status, cost = future.result()
            log.info("ticket finished", worker=index, status=status, cost_usd=round(cost, 6))

        while True:
            if os.getppid() != parent_pid:
                stop.set()  # the run's process died; leave the rest pending for the next run
            if opts.max_cost is not None and ledger.run_cost(run_id) >= opts.max_cost:
                stop.set()
            if opts.max_minutes is not None and time.monotonic() - started >= \
                    opts.max_minutes * 60:
                stop.set()
            if stop.is_set():
                break
            if len(in_flight) >= share(opts):
                completed, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for f in completed:
                    done(f)
                continue
            claimed = ledger.claim_next(run_id, name)
            if claimed is None:
                if input_done.is_set():
                    break
                time.sleep(0.05)
                continue
            outcome_id, ticket = claimed
            in_flight.add(pool.submit(process_safely, config, ledger, runner, run_dir,
                                      outcome_id, ticket, opts.side_effects))
        for f in wait(in_flight).done:
            done(f)
    finished.set()
    runner.close()
    log.close()
