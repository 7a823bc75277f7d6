"""Scale-out benchmark: 1, 2, 3 worker hosts on one PostgreSQL ledger against a model that allows
R requests per minute.

    sudo .venv/bin/python benchmarks/scale_out.py [--hosts 1,2,3] [--rpm 900] [--latency 0.5]
        [--worker-concurrency 4] [--seconds 90]

Host 1 is the run's own process (`crewbatch run --worker-concurrency W`); hosts 2 and 3 are
`crewbatch worker`s, each in a network namespace of its own (tests/netns.py) reaching the
database and the fake model only over its veth link. The fake model (tests/fake_openai.py)
answers after `--latency` seconds and returns 429 past R requests in any 60 s, as a provider
does. The run's `rate_limits` say R too, so crewbatch's fleet window (the ledger's
`model_requests`) should keep the fleet at R without one 429. Each row runs `--seconds` (the run
stops itself with --max-minutes) and measures the requests per minute the model answered in the
steady part (from 20 s in to the end), the tickets finished per second, and the 429s.

Expected: requests/min grows with hosts until R binds (one host at W in flight does about
W / latency · 60 requests a minute); at the limit the fleet uses >= 95 % of R with 0 responses
429. The PostgreSQL server is a throwaway one (tests/pg.py). Needs root (namespaces).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]

import netns  # noqa: E402
import pg  # noqa: E402
import throughput  # noqa: E402
from fake_openai import FakeOpenAI, Faults  # noqa: E402

from crews.ledger import Ledger  # noqa: E402


def one(n_hosts: int, names: list[str], server: FakeOpenAI, url: str, args, tmp: Path) -> dict:
    project = throughput.make_project(tmp / f"hosts{n_hosts}", 5000, {
        "rate_limits": {"fake-model": {"requests_per_minute": args.rpm}},
        "lease_s": 10})
    port = server.base_url.rsplit(":", 1)[1].split("/")[0]
    env = {**throughput.child_env(server.base_url), "CREWBATCH_DATABASE_URL": url,
           "PYTHONPATH": str(REPO)}
    workers = []
    for i in range(1, n_hosts):
        host_env = {**env, "CREWBATCH_DATABASE_URL": url.replace("127.0.0.1", netns.gateway(i)),
                    "OPENAI_BASE_URL": f"http://{netns.gateway(i)}:{port}/v1"}
        workers.append(subprocess.Popen(
            ["ip", "netns", "exec", names[i - 1], sys.executable, "-m", "crews", "--root",
             str(project), "worker", "--once"], env=host_env,
            stdout=subprocess.DEVNULL, stderr=open(project / f"worker{i}.log", "w")))
    first = len(server.requests)
    run = subprocess.run(
        [sys.executable, "-m", "crews", "--root", str(project), "run", "data/bench_tickets.csv",
         "--model", "fake-model", "--concurrency", str(args.worker_concurrency * n_hosts),
         "--worker-concurrency", str(args.worker_concurrency),
         "--max-minutes", str(args.seconds / 60)], env=env, capture_output=True, text=True,
        timeout=args.seconds + 600)
    for w in workers:
        w.wait(timeout=300)
    requests = server.requests[first:]
    if not requests:
        raise SystemExit(f"the run asked the model nothing (exit {run.returncode}): "
                         f"{run.stderr[-2000:]}")
    start = min(r["at"] for r in requests)
    steady = [r for r in requests if 20 <= r["at"] - start <= args.seconds]
    span = max(r["at"] for r in steady) - min(r["at"] for r in steady)
    with Ledger(url) as ledger:
        run_id = run.stdout.strip()
        counts = ledger.counts(run_id)
        done = sum(v for k, v in counts.items() if k in ("approved", "needs_human", "failed"))
        peers = sorted({r["peer"] for r in requests})
    answered = [r for r in steady if r["fault"] is None]
    return {"hosts": n_hosts, "exit": run.returncode, "tickets_done": done,
            "tickets_per_s": round(done / args.seconds, 2),
            "requests_per_min": round(len(answered) / span * 60, 1),
            "share_of_R": round(len(answered) / span * 60 / args.rpm, 3),
            "responses_429": sum(r["fault"] == "limit" for r in requests),
            "peers": peers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", default="1,2,3")
    p.add_argument("--rpm", type=int, default=900)
    p.add_argument("--latency", type=float, default=0.5)
    p.add_argument("--worker-concurrency", type=int, default=4)
    p.add_argument("--seconds", type=float, default=90)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    args = p.parse_args()
    counts = [int(h) for h in args.hosts.split(",")]
    home = Path(tempfile.mkdtemp(prefix="crewbatch-scale-"))
    server_pg = pg.Server(pg.server_binaries(), home, pg.free_port(),
                          "postgres" if os.geteuid() == 0 else None)
    server_pg.start()
    rows = []
    try:
        with netns.hosts(max(counts) - 1 or 1) as names, \
                FakeOpenAI(Faults(latency_s=args.latency, requests_per_minute=args.rpm),
                           keep_bodies=False, host="0.0.0.0") as server:
            for n in counts:
                url = server_pg.url(server_pg.new_database())
                row = one(n, names, server, url, args, home)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        server_pg.stop()
    print(f"\nR = {args.rpm} requests/min, {args.latency} s per request, "
          f"{args.worker_concurrency} in flight per host, {args.seconds:g} s per row")
    print("| hosts | tickets/s | requests/min | share of R | 429s |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['hosts']} | {r['tickets_per_s']} | {r['requests_per_min']} | "
              f"{r['share_of_R']:.0%} | {r['responses_429']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"scale_out-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "rows": rows},
                              indent=1))


if __name__ == "__main__":
    main()
