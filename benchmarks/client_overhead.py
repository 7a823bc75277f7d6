"""Two costs of a run that are not the crew's, measured on their own: the HTTP client's
connection pool at high concurrency, and the engine (DBOS's queue) per ticket and while idle.

    PYTHONPATH=. .venv/bin/python benchmarks/client_overhead.py pool --threads 256 --requests 4
    PYTHONPATH=. .venv/bin/python benchmarks/client_overhead.py engine --tickets 640 --concurrency 32 --hold 2
    PYTHONPATH=. .venv/bin/python benchmarks/client_overhead.py engine --tickets 32 --concurrency 64 --hold 30

`pool`: T threads each send R chat requests through one httpx client to the fake server (in its
own process, so its CPU is not counted), once through one pool of T + 16 connections (what
`llms.size_pools` made before) and once through `calls.ShardedPools`, twice each, alternating;
it prints the client process's CPU per request. `engine`: N tickets through `engine.Engine` on
a SQLite ledger, each holding its slot for `--hold` seconds without CPU (a ticket's model waits),
fed like the pipeline feeds it, at the live (`POLL_S`) and the `--batch-api` (`BATCH_POLL_S`)
queue poll; it prints the process's CPU per ticket and the wall against the ideal
⌈N/C⌉·hold.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]


def pool(threads: int, requests: int, latency_s: float) -> None:
    import httpx

    from crews.calls import ShardedPools

    server = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path[:0] = [{str(HERE.parent / 'tests')!r}]
from fake_openai import FakeOpenAI, Faults
with FakeOpenAI(Faults(latency_s={latency_s}), keep_bodies=False) as s:
    print(s.base_url, flush=True)
    time.sleep(3600)
"""], stdout=subprocess.PIPE, text=True)
    base = server.stdout.readline().strip()
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hello " * 50}]}

    def measure(transport, label: str) -> None:
        client = httpx.Client(transport=transport)

        def work() -> None:
            for _ in range(requests):
                client.post(f"{base}/chat/completions", json=body).read()

        workers = [threading.Thread(target=work) for _ in range(threads)]
        cpu, wall = time.process_time(), time.monotonic()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        n = threads * requests
        print(f"{label}: {n} requests, wall {wall:.1f} s (ideal {requests * latency_s:.1f}), "
              f"client CPU {cpu:.2f} s = {1000 * cpu / n:.2f} ms per request", flush=True)
        client.close()

    try:
        for _ in range(2):
            measure(httpx.HTTPTransport(limits=httpx.Limits(
                max_connections=threads + 16, max_keepalive_connections=threads)),
                f"one pool of {threads + 16}")
            measure(ShardedPools(threads), "ShardedPools      ")
    finally:
        server.kill()


def engine(tickets: int, concurrency: int, hold_s: float) -> None:
    import resource

    from crews.engine import BATCH_POLL_S, POLL_S, Engine
    from crews.ledger import Ledger
    from crews.ticket import Status, Ticket

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    for poll_s in (POLL_S, BATCH_POLL_S):
        tmp = Path(tempfile.mkdtemp())
        ledger = Ledger(tmp / "ledger.db")
        ledger.start_run("r1", "offline", {}, [])

        def process(outcome_id, ticket, ledger=ledger):
            time.sleep(hold_s)
            ledger.record_result(outcome_id, Status.APPROVED, {"cost_usd": 0.0}, [], [], "done")
            return "approved", 0.0

        eng = Engine(ledger, str(tmp / "ledger.db"), tmp, "r1", process,
                     concurrency=concurrency, threads=concurrency, should_stop=lambda: None,
                     role="run", poll_s=poll_s).start()
        ledger.owner = eng.executor_id
        todo = ledger.add_records("r1", [
            Ticket(key=f"T{i}", ticket_id=f"T{i}", source="s", record_no=i,
                   customer=f"c{i}@example.com", subject="s", body=f"body {i}", received_at="",
                   customer_name="") for i in range(tickets)], False)
        start_cpu, start = cpu(), time.monotonic()
        fed = 0
        while (done := ledger.final_count("r1")) < tickets:
            while fed < tickets and fed - done < 3 * concurrency:  # queued ahead, as _feed does
                eng.submit(todo[fed][0])
                fed += 1
            time.sleep(0.05)
        used, wall = cpu() - start_cpu, time.monotonic() - start
        eng.close(wait_s=5)
        print(f"poll {poll_s:g} s: {tickets} tickets, C = {concurrency}, hold {hold_s:g} s: "
              f"wall {wall:.1f} s (ideal {-(-tickets // concurrency) * hold_s:.1f}), CPU {used:.2f} s "
              f"= {1000 * used / tickets:.2f} ms per ticket", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("pool")
    a.add_argument("--threads", type=int, default=256)
    a.add_argument("--requests", type=int, default=4)
    a.add_argument("--latency", type=float, default=2.0)
    b = sub.add_parser("engine")
    b.add_argument("--tickets", type=int, default=640)
    b.add_argument("--concurrency", type=int, default=32)
    b.add_argument("--hold", type=float, default=2.0)
    args = p.parse_args()
    if args.what == "pool":
        pool(args.threads, args.requests, args.latency)
    else:
        engine(args.tickets, args.concurrency, args.hold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
