"""The engine decision of issue 10, measured: DBOS and procrastinate on a small prototype.

A prototype ticket is four sequential "model calls" of L seconds each (a sleep: this measures the
engine, not a model), C in flight. Each candidate runs the same N tickets; the table gives tickets/s
as a share of the ideal C/(4·L), the process CPU per ticket, and — for the kill -9 part — how many
steps ran twice after a worker was killed mid-run and the queue was finished by another process.

    python benchmarks/engine_spike.py --postgres postgresql://postgres@127.0.0.1:54400/postgres

Candidates: `threads` (today's thread window, the baseline), `dbos-sqlite`, `dbos-postgres`,
`procrastinate` (PostgreSQL only: it has no SQLite mode). Every step's execution is appended to a
journal file (O_APPEND, one line per execution), so repeats are counted, not inferred.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

STEPS = 4


def journal(path: str, ticket: int, step: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ticket} {step} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- candidates: each runs N tickets and returns when all are done ------------------------------

def run_threads(n: int, c: int, latency: float, jpath: str, **_) -> None:
    def ticket(i: int) -> None:
        for s in range(STEPS):
            time.sleep(latency)
            journal(jpath, i, s)

    with ThreadPoolExecutor(c) as pool:
        list(pool.map(ticket, range(n)))


def _dbos(url: str, c: int, latency: float, jpath: str, executor_id: str = "local"):
    os.environ["DBOS__VMID"] = executor_id
    from dbos import DBOS

    config = {"name": "spike", "system_database_url": url, "executor_id": executor_id,
              "run_admin_server": False, "log_level": "WARNING"}
    if url.startswith("sqlite") and os.environ.get("SPIKE_WAL", "1") == "1":
        config["system_database_engine"] = wal_engine(url)
    DBOS(config=config)
    @DBOS.step()
    def call(i: int, s: int) -> str:
        time.sleep(latency)
        journal(jpath, i, s)
        return f"{i}:{s}"

    @DBOS.workflow()
    def ticket(i: int) -> int:
        for s in range(STEPS):
            call(i, s)
        return i

    DBOS.launch()  # queues are registered in the system database, so after launch
    queue = DBOS.register_queue("tickets", worker_concurrency=c, polling_interval_sec=float(os.environ.get("SPIKE_POLL", "0.05")))
    return DBOS, queue, ticket


def wal_engine(url: str):
    """DBOS's own SQLite engine keeps the rollback journal with synchronous=FULL: every step's
    checkpoint is an fsync'd exclusive write. WAL with synchronous=NORMAL (what our ledger uses)
    is durable against a process crash, which is what kill -9 tests."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = "IMMEDIATE"
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")
        dbapi_conn.execute("PRAGMA busy_timeout=30000")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    return engine


def run_dbos(n: int, c: int, latency: float, jpath: str, url: str, **_) -> None:
    from dbos import SetWorkflowID

    DBOS, queue, ticket = _dbos(url, c, latency, jpath)
    handles = []
    for i in range(n):
        with SetWorkflowID(f"t-{i}"):
            handles.append(queue.enqueue(ticket, i))
    for h in handles:
        h.get_result()
    DBOS.destroy()


def _procrastinate(url: str, latency: float, jpath: str):
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="ticket", queue="tickets", pass_context=False)
    async def ticket(i: int) -> None:
        # The crew is synchronous (CrewAI's kickoff): an async task hands it to a thread, since
        # a sync procrastinate task runs through asgiref's single sync thread.
        import asyncio

        def work() -> None:
            for s in range(STEPS):
                time.sleep(latency)
                journal(jpath, i, s)

        await asyncio.to_thread(work)

    return app, ticket


def run_procrastinate(n: int, c: int, latency: float, jpath: str, url: str, **_) -> None:
    import asyncio

    app, ticket = _procrastinate(url, latency, jpath)

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(c))
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            for i in range(n):
                await ticket.defer_async(i=i)
            await app.run_worker_async(queues=["tickets"], concurrency=c, wait=False,
                                       install_signal_handlers=False, listen_notify=True,
                                       fetch_job_polling_interval=0.05)

    asyncio.run(main())


CANDIDATES = {"threads": run_threads, "dbos-sqlite": run_dbos, "dbos-postgres": run_dbos,
              "procrastinate": run_procrastinate}


def fresh_pg(base: str, name: str) -> str:
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return base.rsplit("/", 1)[0] + "/" + name


def child(args) -> None:
    """One candidate in a process of its own: prints wall and CPU seconds as JSON."""
    started, cpu0 = time.monotonic(), cpu_s()
    CANDIDATES[args.candidate](args.n, args.c, args.latency, args.journal, url=args.url)
    print(json.dumps({"wall_s": time.monotonic() - started, "cpu_s": cpu_s() - cpu0}))


def measure(candidate: str, n: int, c: int, latency: float, pg: str | None, tmp: Path) -> dict:
    jpath = str(tmp / f"{candidate}.journal")
    url = (f"sqlite:///{tmp / 'dbos.sqlite'}" if candidate == "dbos-sqlite" else
           fresh_pg(pg, f"spike_{candidate.replace('-', '_')}") if pg else "")
    out = subprocess.run([sys.executable, __file__, "--child", candidate, "--n", str(n), "--c",
                          str(c), "--latency", str(latency), "--journal", jpath, "--url", url],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return {"candidate": candidate, "error": out.stderr[-800:]}
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    runs = len(Path(jpath).read_text().splitlines())
    ideal = c / (STEPS * latency)
    return {"candidate": candidate, "tickets_per_s": n / figures["wall_s"],
            "of_ideal": n / figures["wall_s"] / min(ideal, n / (STEPS * latency) * 1e9),
            "cpu_ms_per_ticket": figures["cpu_s"] * 1000 / n, "step_runs": runs}


# --- kill -9: a worker dies mid-run; another finishes the queue ------------------------------------

def kill_child(args) -> None:
    """A worker process: enqueue (if asked) and work the queue until every ticket is done."""
    if args.candidate.startswith("dbos"):
        from dbos import SetWorkflowID

        DBOS, queue, ticket = _dbos(args.url, args.c, args.latency, args.journal, args.executor)
        if args.enqueue:
            for i in range(args.n):
                with SetWorkflowID(f"t-{i}"):
                    queue.enqueue(ticket, i)
        if args.take_over:
            # DBOS's open-source build recovers only its own executor's work at start-up; a dead
            # peer's workflows are handed over by whoever notices (here: told by the benchmark).
            DBOS._recover_pending_workflows(args.take_over.split(","))
        while True:
            done = DBOS.list_workflows(status="SUCCESS", name=None, load_input=False,
                                       load_output=False)
            if len([w for w in done if w.workflow_id.startswith("t-")]) >= args.n:
                break
            time.sleep(0.2)
        DBOS.destroy()
    else:
        import asyncio

        app, ticket = _procrastinate(args.url, args.latency, args.journal)

        async def main() -> None:
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(args.c))
            async with app.open_async():
                if args.enqueue:
                    await app.schema_manager.apply_schema_async()
                    for i in range(args.n):
                        await ticket.defer_async(i=i)
                if args.take_over:
                    # procrastinate's own stalled-job retry: jobs of a worker whose heartbeat
                    # stopped are found and retried by a live one.
                    while True:
                        stalled = await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=3)
                        for job in stalled:
                            await app.job_manager.retry_job(job)
                        if stalled:
                            break
                        await asyncio.sleep(0.5)
                await app.run_worker_async(queues=["tickets"], concurrency=args.c, wait=False,
                                           install_signal_handlers=False,
                                           fetch_job_polling_interval=0.05)

        asyncio.run(main())


def kill_measure(candidate: str, n: int, c: int, latency: float, pg: str | None, tmp: Path,
                 kill_after: float) -> dict:
    jpath = str(tmp / f"{candidate}.kill.journal")
    url = (f"sqlite:///{tmp / 'dbos-kill.sqlite'}" if candidate == "dbos-sqlite" else
           fresh_pg(pg, f"kill_{candidate.replace('-', '_')}"))
    base = [sys.executable, __file__, "--kill-child", candidate, "--n", str(n), "--c", str(c),
            "--latency", str(latency), "--journal", jpath, "--url", url]
    started = time.monotonic()
    victim = subprocess.Popen(base + ["--executor", "a", "--enqueue"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(kill_after)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    # SQLite: the same host restarts the same executor (DBOS recovers its own work at launch).
    # PostgreSQL: another executor takes the dead one's workflows over.
    rescuer = base + (["--executor", "a"] if candidate == "dbos-sqlite" else
                      ["--executor", "b", "--take-over", "a"])
    out = subprocess.run(rescuer, capture_output=True, text=True, timeout=900)
    lines = Path(jpath).read_text().splitlines() if Path(jpath).exists() else []
    keys = [tuple(line.split()[:2]) for line in lines]
    done = {k for k in keys}
    return {"candidate": candidate, "rc": out.returncode, "err": out.stderr[-400:],
            "steps_done": len(done), "steps_expected": n * STEPS,
            "steps_repeated": len(keys) - len(done), "in_flight_at_kill": c,
            "wall_s": time.monotonic() - started}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--kill-child")
    ap.add_argument("--candidate")
    ap.add_argument("--n", type=int, default=320)
    ap.add_argument("--c", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--journal")
    ap.add_argument("--url", default="")
    ap.add_argument("--executor", default="local")
    ap.add_argument("--enqueue", action="store_true")
    ap.add_argument("--take-over", default="")
    ap.add_argument("--postgres", help="a PostgreSQL URL whose server may create databases")
    ap.add_argument("--only", default="")
    ap.add_argument("--kill-after", type=float, default=3.0)
    args = ap.parse_args()
    if args.child:
        args.candidate = args.child
        return child(args)
    if args.kill_child:
        args.candidate = args.kill_child
        return kill_child(args)
    names = [c for c in CANDIDATES if not args.only or c in args.only.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if name in ("dbos-postgres", "procrastinate") and not args.postgres:
                continue
            print(json.dumps(measure(name, args.n, args.c, args.latency, args.postgres,
                                     Path(tmp))), flush=True)
        for name in names:
            if name == "threads" or (name != "dbos-sqlite" and not args.postgres):
                continue
            print(json.dumps(kill_measure(name, 120, 16, 0.25, args.postgres, Path(tmp),
                                          args.kill_after)), flush=True)


if __name__ == "__main__":
    main()
