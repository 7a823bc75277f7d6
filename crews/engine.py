"""The run engine: every ticket of a run is a DBOS workflow on the run's queue, worked by threads of
this process and by any `crewbatch worker` that joins the run, on this host or another.

DBOS (README "The engine" has the measured comparison with procrastinate) owns the queue: its
global concurrency is the run's `--concurrency` across every process, its per-worker concurrency
each process's share, a workflow id (`<run_id>:<outcome_id>`) runs once, and its system database
sits beside the ledger (SQLite `runs/engine.db`, or the ledger's PostgreSQL). What DBOS's
open-source build does not do — hand a dead executor's workflows to a live one — is done here:
every process heartbeats in the ledger's `workers` table; one that stops for `lease_s` is declared
dead by the first live peer to notice (a compare-and-set in the ledger, so only one does), which
resumes its workflows. The ledger fences the dead one out: a ticket records a result only for the
worker whose claim it holds (`Ledger.claim`, `Ledger.record_result`), so a worker that was only cut
off cannot record a ticket handed to someone else, and side effects stay exactly-once (keyed).

The crew enters as a plain callable `process(outcome_id, ticket) -> (status, cost_usd)`, so the
engine is tested without CrewAI.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path

from .ledger import Ledger
from .ticket import Ticket

LOG = logging.getLogger("crewbatch.engine")
WORKFLOW = "crewbatch.ticket"
POLL_S = 0.05  # how often an idle worker looks at the queue (a free slot waits at most this)
# A --batch-api run's tickets wait minutes on each batch: a free slot can wait a second, and
# DBOS's queue thread, 12 % of such a run's CPU at POLL_S (py-spy), looks 20 times less often.
BATCH_POLL_S = 1.0

Process = Callable[[int, Ticket], "tuple[str, float] | None"]
# Set while a ticket's workflow runs: how its model requests become durable steps (calls.py).
durable_step: ContextVar[Callable[[Callable[[], dict]], dict] | None] = ContextVar(
    "crewbatch_durable_step", default=None)

# The outcome whose workflow runs in this context (the Batch API names its requests by it).
working_outcome: ContextVar[int | None] = ContextVar("crewbatch_working_outcome", default=None)

_engine: Engine | None = None  # the one engine of this process (DBOS is a process singleton)
_workflow = None


# One queue for every run (one run is active at a time): DBOS finds a queue already in its
# database at launch, while one registered afterwards waits for its next look (a second).
QUEUE = "crewbatch-tickets"


def system_database_url(ledger_url: str, runs_dir: Path) -> str:
    """DBOS's system database: the ledger's PostgreSQL (schema `dbos`), else a SQLite file
    beside the ledger."""
    if ledger_url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + ledger_url.split("://", 1)[1]
    return f"sqlite:///{runs_dir / 'engine.db'}"


def _register_workflow():
    """The ticket workflow, registered once per process before DBOS launches."""
    global _workflow
    if _workflow is None:
        from dbos import DBOS

        @DBOS.workflow(name=WORKFLOW)
        def ticket_workflow(run_id: str, outcome_id: int) -> str:
            engine = _engine
            if engine is None:
                return "elsewhere"
            return engine.work(outcome_id)

        _workflow = ticket_workflow
    return _workflow


class Checkpoints:
    """The durable step of a ticket's model requests: each answer is checkpointed in the ledger
    as it arrives (`Ledger.checkpoint`, by the request's place in the ticket), and a ticket
    worked again — its worker died, or a killed or stopped run left it unfinished — is answered
    from them up to the request that was in flight.

    Not a DBOS step: one cost ~2.4 ms of CPU per model request (DBOS checks for and records
    the step through SQLAlchemy's statement compiler), one ledger INSERT a tenth of that
    (README "Durable at the step" has the measurement); the workflow, its queue and its
    recovery stay DBOS's. The place in the ticket plays the part of DBOS's step id, so a
    resumed ticket matches its checkpoints the same way.
    """

    def __init__(self, ledger: Ledger, outcome_id: int):
        self.ledger, self.outcome_id = ledger, outcome_id
        self.done = ledger.checkpoints(outcome_id)
        self._seq = itertools.count(1)

    def __call__(self, ask: Callable[[], dict]) -> dict:
        seq = next(self._seq)
        found = self.done.get(seq)
        if found is not None:
            return found
        answer = ask()
        self.ledger.checkpoint(self.outcome_id, seq, answer["request_hash"], answer["response"])
        return answer


def _sqlite_engine(url: str):
    """DBOS's own SQLite engine keeps the rollback journal with synchronous=FULL: every
    checkpoint an fsync'd exclusive write (measured: 42 % of ideal vs 56 % with WAL on the
    prototype, benchmarks/engine_spike.py). WAL + synchronous=NORMAL, as the ledger uses, survives
    a process crash — what kill -9 tests."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = "IMMEDIATE"  # serialize writers, as DBOS's own engine does
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")
        dbapi_conn.execute("PRAGMA busy_timeout=30000")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    return engine


def _quiet_dbos_logging() -> None:
    """DBOS logs to its own stderr handler; crewbatch's run log takes its records instead."""
    logger = logging.getLogger("dbos")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.WARNING)


# The young generation's threshold while a run works (CPython's default is 700 allocations).
YOUNG_GC_THRESHOLD = 20_000


class SettledHeap:
    """The garbage collector's settings while this process works a run.

    A crew process holds a large heap that lives as long as it does: CrewAI, DBOS, the openai
    SDK and pydantic's schemas are ~350,000 objects before the first ticket. Every full
    collection walked all of them, and the young generation was collected every 700
    allocations while 32 ticket threads allocate fast: measured on 320 tickets at 32 in flight
    (0.5 s a request), the collector took 2.9 s of a run's ~25 s of CPU, about 2 ms per model
    request. While a run works, what was built before it is frozen (`gc.freeze`: left out of
    every collection) and the young generation waits for 20,000 allocations: 0.4 s. Leaving the
    run puts both back, so a process that runs again (the tests do) collects what was frozen.
    """

    def __init__(self) -> None:
        self._threshold: tuple[int, int, int] | None = None

    def settle(self) -> None:
        if self._threshold is None:
            self._threshold = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(YOUNG_GC_THRESHOLD, self._threshold[0]),
                             *self._threshold[1:])

    def restore(self) -> None:
        if self._threshold is not None:
            gc.set_threshold(*self._threshold)
            gc.unfreeze()
            self._threshold = None


def new_executor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Engine:
    """This process's part in a run: DBOS launched on the run's queue, a heartbeat, take-overs.

    `process` works one ticket (claimed for this engine) and records it; `should_stop` says why
    no new ticket may start (budget, time limit, a stop request, the run ended), or None.
    """

    def __init__(self, ledger: Ledger, ledger_url: str, runs_dir: Path, run_id: str,
                 process: Process, *, concurrency: int, threads: int,
                 should_stop: Callable[[], str | None], lease_s: float = 30.0,
                 executor_id: str | None = None, role: str = "worker", poll_s: float = POLL_S):
        self.ledger, self.run_id, self.process = ledger, run_id, process
        self.poll_s = poll_s
        self.concurrency, self.threads, self.lease_s = concurrency, threads, lease_s
        self.should_stop, self.role = should_stop, role
        self.executor_id = executor_id or new_executor_id()
        self.url = system_database_url(ledger_url, runs_dir)
        self.dead = threading.Event()  # declared dead by a peer: stop working this run
        # An error that is not the ticket's (the ledger or the disk failed): the run stops.
        self.fatal: BaseException | None = None
        self.closed = threading.Event()
        self._active = 0
        self._active_lock = threading.Lock()
        self._beat: threading.Thread | None = None
        self.queue = None
        self._heap = SettledHeap()

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, worker_concurrency: int | None = None) -> Engine:
        global _engine
        from dbos import DBOS

        if _engine is not None:
            raise RuntimeError(f"an engine is already running run {_engine.run_id} here")
        _register_workflow()
        config = {"name": "crewbatch", "system_database_url": self.url,
                  "executor_id": self.executor_id, "log_level": "WARNING",
                  "application_version": "crewbatch-1",
                  # How often DBOS's listener thread looks at its database; also how long its
                  # shutdown waits for that thread (1 s by default, at the end of every run).
                  "notification_listener_polling_interval_sec": 0.1,
                  "runtimeConfig": {"max_executor_threads": None}}
        if self.url.startswith("sqlite"):
            config["system_database_engine"] = _sqlite_engine(self.url)
        os.environ["DBOS__VMID"] = self.executor_id
        DBOS(config=config)
        # Only crewbatch's queue: DBOS would otherwise dequeue from every queue in the database.
        DBOS.listen_queues([QUEUE])
        _quiet_dbos_logging()
        _engine = self
        try:
            DBOS.launch()
            _quiet_dbos_logging()
            self.queue = DBOS.register_queue(
                QUEUE, global_concurrency=self.concurrency,
                worker_concurrency=worker_concurrency or self.threads,
                polling_interval_sec=self.poll_s,
                on_conflict="always_update" if self.role == "run" else "never_update")
        except BaseException:
            _engine = None
            DBOS.destroy()
            raise
        if self.role == "run":
            self._cancel_leftovers()
        self.ledger.join_run(self.run_id, self.executor_id, socket.gethostname(), os.getpid(),
                             self.role)
        self._beat = threading.Thread(target=self._heartbeat, name="crewbatch-heartbeat",
                                      daemon=True)
        self._beat.start()
        self._heap.settle()
        return self

    def close(self, wait_s: float = 0.0) -> None:
        """Leave the run: no more tickets are taken; in-flight ones get `wait_s` to finish."""
        global _engine
        from dbos import DBOS

        if self.closed.is_set():
            return
        self.closed.set()
        deadline = time.monotonic() + wait_s
        while self.active and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            self.ledger.leave_run(self.executor_id)
        finally:
            DBOS.destroy(workflow_completion_timeout_sec=0)
            _engine = None
            self._heap.restore()

    def _cancel_leftovers(self) -> None:
        """Cancel what earlier runs left on the queue (one run is active at a time). A run
        killed with -9 leaves its in-flight workflows pending: DBOS would count them against
        the queue's concurrency for ever. Their tickets went back to pending in the ledger
        (`Ledger.recover_crashed_runs`), for this run to take from the sources again."""
        from dbos import DBOS

        stale = [w.workflow_id for w in DBOS.list_workflows(
            status=["PENDING", "ENQUEUED"], queue_name=QUEUE, load_input=False,
            load_output=False)]
        if stale:
            DBOS.cancel_workflows(stale)
            LOG.info("cancelled %d workflow(s) earlier runs left on the queue", len(stale))

    @property
    def active(self) -> int:
        with self._active_lock:
            return self._active

    # --- the run's process feeds the queue -------------------------------------------------------

    def submit(self, outcome_id: int) -> None:
        """Queue the ticket. If an earlier run left the same ticket unfinished (kill -9, a stop),
        its checkpoints pass to this outcome (`Ledger.resumable`): the model requests it finished
        are answered from them, only the ones in flight are asked again."""
        from dbos import SetWorkflowID

        earlier = self.ledger.resumable(outcome_id)
        if earlier is not None:
            LOG.info("ticket %s resumes outcome %s from its checkpoints", outcome_id, earlier)
        workflow_id = f"{self.run_id}:{outcome_id}"
        with SetWorkflowID(workflow_id):
            self.queue.enqueue(_workflow, self.run_id, outcome_id)
        # Named once queued: a run killed in between leaves nothing to resume, not a dangling id.
        self.ledger.set_workflow(outcome_id, workflow_id)

    def cancel_queued(self) -> int:
        """Cancel the run's workflows no worker has started (the run is ending)."""
        from dbos import DBOS

        queued = DBOS.list_workflows(status=["ENQUEUED"], queue_name=QUEUE, load_input=False,
                                     load_output=False)
        if queued:
            DBOS.cancel_workflows([w.workflow_id for w in queued])
        return len(queued)

    # --- one ticket ------------------------------------------------------------------------------

    def work(self, outcome_id: int) -> str:
        """Run inside the ticket's workflow: claim, process, record (all in `process`)."""
        if self.closed.is_set() or self.dead.is_set() or self.fatal is not None:
            return "left"
        reason = self.should_stop()
        if reason:
            return "stopped"
        ticket = self.ledger.claim(outcome_id, self.executor_id)
        if ticket is None:
            return "taken"  # final already, or held by a live worker
        with self._active_lock:
            self._active += 1
        started = time.monotonic()
        held = durable_step.set(Checkpoints(self.ledger, outcome_id))
        working = working_outcome.set(outcome_id)
        try:
            result = self.process(outcome_id, ticket)
        except BaseException as exc:  # noqa: BLE001 - process_safely lets only these through
            self.fatal = self.fatal or exc
            return "error"
        finally:
            working_outcome.reset(working)
            durable_step.reset(held)
            with self._active_lock:
                self._active -= 1
        status = result[0] if result else None
        LOG.debug("ticket %s %s in %.2fs", outcome_id, status, time.monotonic() - started)
        return status or "released"

    # --- liveness --------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        """Beat every lease/4; declare peers silent for a lease dead and resume their work."""
        from dbos import DBOS

        interval = max(0.2, self.lease_s / 4)
        while not self.closed.wait(interval):
            try:
                if not self.ledger.heartbeat(self.executor_id):
                    # A peer declared this worker dead (it was cut off for a lease): its
                    # tickets are someone else's now; the ledger refuses its results anyway.
                    LOG.warning("worker %s was declared dead by a peer; leaving run %s",
                                self.executor_id, self.run_id)
                    self.dead.set()
                    return
                for dead in self.ledger.reap_workers(self.run_id, self.lease_s,
                                                     self.executor_id):
                    pending = DBOS.list_workflows(status=["PENDING"], executor_id=dead,
                                                  queue_name=QUEUE, load_input=False,
                                                  load_output=False)
                    for w in pending:
                        DBOS.resume_workflow(w.workflow_id, queue_name=QUEUE)
                    LOG.warning("worker %s stopped beating for %.0fs; %d of its tickets go to "
                                "the live workers", dead, self.lease_s, len(pending))
            except Exception:  # noqa: BLE001 - a missed beat is retried at the next one
                LOG.exception("heartbeat of %s failed", self.executor_id)


class SharedPause:
    """A model's Retry-After pause through the ledger, for `calls.RateLimiter`: one worker's 429
    pauses the model for every worker on every host. It looks like the `multiprocessing.Value`
    the limiter takes (`.value` in this process's monotonic clock, `get_lock()`); the ledger holds
    wall-clock seconds, since hosts share no monotonic clock. Read at most every `every_s`."""

    def __init__(self, ledger: Ledger, model: str, every_s: float = 0.25):
        self.ledger, self.model, self.every_s = ledger, model, every_s
        self._lock = threading.Lock()
        self._cached, self._read_at = 0.0, -1e9

    def get_lock(self) -> threading.Lock:
        return self._lock

    @property
    def value(self) -> float:
        now = time.monotonic()
        if now - self._read_at >= self.every_s:
            until = self.ledger.model_paused_until(self.model)
            self._cached, self._read_at = now + (until - time.time()), now
        return self._cached

    @value.setter
    def value(self, until_monotonic: float) -> None:
        until = time.time() + (until_monotonic - time.monotonic())
        self.ledger.pause_model(self.model, until)
        self._read_at = -1e9


def shared_pauses(config, ledger: Ledger, default_model: str) -> dict[str, SharedPause]:
    """One `SharedPause` per model the run's roles use (for `llms.build_llms`)."""
    from .llms import role_models

    return {m: SharedPause(ledger, m) for m in set(role_models(config, default_model).values())}


class FleetWindow:
    """A model's requests- and tokens-per-minute limits for the whole fleet, kept in the ledger
    (`Ledger.take_request_slot`): N workers on N hosts together stay within the provider's
    limit, and an idle worker leaves its room to the busy ones (a per-process share would not).
    Called by `calls.RateLimiter` with a request's tokens: 0 = go, else seconds to wait."""

    def __init__(self, ledger: Ledger, model: str, rpm: int | None, tpm: int | None,
                 window_s: float = 60.0):
        self.ledger, self.model, self.rpm, self.tpm = ledger, model, rpm, tpm
        self.window_s = window_s  # a minute; shorter only in tests

    def __call__(self, tokens: int) -> float:
        return self.ledger.take_request_slot(self.model, self.rpm, self.tpm, tokens, time.time(),
                                             self.window_s)


def fleet_window(config, ledger: Ledger, model: str) -> FleetWindow | None:
    """The fleet's window for `model`'s `rate_limits`, or None when it has none."""
    limit = config.settings.rate_limits.get(model)
    if not (limit and (limit.requests_per_minute or limit.tokens_per_minute)):
        return None
    # A second more than the provider's minute: a request counted here reaches the provider a
    # little later, and its window must not see the next one early.
    return FleetWindow(ledger, model, limit.requests_per_minute, limit.tokens_per_minute,
                       window_s=61.0)


def fleet_windows(config, ledger: Ledger, default_model: str) -> dict[str, FleetWindow]:
    """One `FleetWindow` per rate-limited model the run's roles use (for `llms.build_llms`)."""
    from .llms import role_models

    out = {}
    for model in set(role_models(config, default_model).values()):
        window = fleet_window(config, ledger, model)
        if window is not None:
            out[model] = window
    return out

