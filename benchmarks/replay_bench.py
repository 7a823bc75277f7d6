"""Replay benchmark: record a run against the fake server, replay it, diff the two, measure storage.

    .venv/bin/python benchmarks/replay_bench.py [--tickets 640] [--concurrency 8] [--out FILE]

In a throwaway copy of the project (benchmarks/throughput.py's `make_project`: N tickets cycling
data/tickets.csv with unique ids), `crewbatch run --model fake-model` records a run against the
fake OpenAI server (tests/fake_openai.py, no latency) with `recording: full`, and again in
two more copies with `recording: responses` and `off`, for the ledger's bytes per ticket. Then,
with the server still listening and counting, `crewbatch replay` re-runs the first run: every
request must be answered from the recording (0 model requests), so its tickets/s is CPU only —
CrewAI, the gate, the tools and the ledger. Last, `crewbatch diff RUN REPLAY -o diff.html` compares
the two N-ticket runs (wall seconds of the whole command, interpreter start included) and must
find no change. Each crewbatch command runs as a child process; the table goes to stdout and the
JSON to benchmarks/results/replay-<timestamp>.json (or --out). Exit 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "benchmarks", REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import throughput  # noqa: E402
from fake_openai import FakeOpenAI  # noqa: E402


def crewbatch(project: Path, base_url: str, *args: str) -> tuple[subprocess.CompletedProcess,
                                                                  float, float]:
    """Run one crewbatch command as a child: (result, wall seconds, CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "crews", "--root", str(project), *args],
                            env=throughput.child_env(base_url), capture_output=True, text=True)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result, wall, cpu


def run_seconds(project: Path, run_id: str) -> float:
    db = sqlite3.connect(project / "runs/ledger.db")
    started, finished = db.execute("SELECT started_utc, finished_utc FROM runs WHERE run_id = ?",
                                   (run_id,)).fetchone()
    db.close()
    return throughput.utc_seconds(finished) - throughput.utc_seconds(started)


def statuses(project: Path, run_id: str) -> dict[str, int]:
    db = sqlite3.connect(project / "runs/ledger.db")
    rows = db.execute("SELECT status, COUNT(*) FROM outcomes WHERE run_id = ? GROUP BY status",
                      (run_id,)).fetchall()
    db.close()
    return dict(rows)


def ledger_bytes(project: Path) -> dict[str, int]:
    path = project / "runs/ledger.db"
    db = sqlite3.connect(path)
    blobs, calls = db.execute("SELECT COALESCE(SUM(LENGTH(data)), 0), COUNT(*) FROM blobs"
                              ).fetchone()
    db.close()
    return {"file": path.stat().st_size, "blob_data": blobs, "blobs": calls}


def record(work: Path, name: str, n: int, concurrency: int, mode: str) -> dict:
    project = throughput.make_project(work / name, n, {"recording": mode})
    with FakeOpenAI(keep_bodies=False) as server:
        result, wall, cpu = crewbatch(project, server.base_url, "run",
                                      str(project / "data/bench_tickets.csv"), "--model",
                                      "fake-model", "--concurrency", str(concurrency),
                                      "--batch-size", "50")
        requests = len(server.requests)
    if result.returncode != 0:
        raise RuntimeError(f"recording ({mode}) exited {result.returncode}:\n"
                           f"{result.stderr[-2000:]}")
    run_id = result.stdout.strip().splitlines()[-1]
    return {"project": project, "run_id": run_id, "requests": requests, "cpu_s": cpu,
            "seconds": run_seconds(project, run_id), "statuses": statuses(project, run_id),
            "bytes": ledger_bytes(project)}


def benchmark(n: int, concurrency: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="crewbatch-replay-bench-") as tmp:
        work = Path(tmp)
        recorded = {mode: record(work, mode, n, concurrency, mode)
                    for mode in ("full", "responses", "off")}
        full = recorded["full"]
        project, run_id = full["project"], full["run_id"]
        with FakeOpenAI(keep_bodies=False) as server:  # listening, to count what reaches it
            result, wall, cpu = crewbatch(project, server.base_url, "replay", run_id,
                                          "--concurrency", str(concurrency))
            replay_requests = len(server.requests)
        if result.returncode != 0:
            raise RuntimeError(f"replay exited {result.returncode}:\n{result.stderr[-2000:]}")
        replay_id = result.stdout.strip().splitlines()[-1]
        replay_seconds = run_seconds(project, replay_id)
        diff, diff_wall, _ = crewbatch(project, "http://127.0.0.1:9/v1", "diff", run_id,
                                       replay_id, "-o", str(work / "diff.html"))
        off = recorded["off"]["bytes"]["file"]
        report = {
            "tickets": n, "concurrency": concurrency,
            "record": {mode: {"requests": r["requests"], "seconds": round(r["seconds"], 2),
                              "tickets_per_s": round(n / r["seconds"], 2),
                              "ledger_bytes": r["bytes"]["file"],
                              "ledger_bytes_per_ticket": round(r["bytes"]["file"] / n),
                              "recording_bytes_per_ticket": round((r["bytes"]["file"] - off) / n),
                              "blob_bytes_per_ticket": round(r["bytes"]["blob_data"] / n),
                              "blobs": r["bytes"]["blobs"], "statuses": r["statuses"]}
                       for mode, r in recorded.items()},
            "replay": {"run_id": replay_id, "model_requests": replay_requests,
                       "seconds": round(replay_seconds, 2),
                       "tickets_per_s": round(n / replay_seconds, 2),
                       "process_wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                       "statuses": statuses(project, replay_id)},
            "diff": {"exit_code": diff.returncode, "seconds": round(diff_wall, 2),
                     "summary": diff.stdout.splitlines()[0] if diff.stdout else diff.stderr},
        }
        checks = {
            "replay made 0 model requests": replay_requests == 0,
            "replay has the recorded outcomes": report["replay"]["statuses"] ==
            full["statuses"],
            "diff finds no change (exit 0)": diff.returncode == 0,
        }
        report["checks"] = checks
        return report


def render(r: dict) -> str:
    n = r["tickets"]
    lines = [f"replay benchmark: {n} tickets, concurrency {r['concurrency']}, fake server without "
             "latency", "",
             "| recording | record run, tickets/s | requests | ledger bytes/ticket | "
             "of which the recording | blob data/ticket |", "|---|---:|---:|---:|---:|---:|"]
    for mode, m in r["record"].items():
        lines.append(f"| {mode} | {m['tickets_per_s']:.1f} | {m['requests']:,} | "
                     f"{m['ledger_bytes_per_ticket']:,} | {m['recording_bytes_per_ticket']:,} | "
                     f"{m['blob_bytes_per_ticket']:,} |")
    p = r["replay"]
    lines += ["", f"replay of the `full` run: {p['model_requests']} model requests, "
                  f"{p['seconds']:.1f} s, {p['tickets_per_s']:.1f} tickets/s (CPU only; "
                  f"{p['cpu_s']:.1f} s CPU, {p['process_wall_s']:.1f} s with start-up)",
              f"diff of the two {n}-ticket runs: {r['diff']['seconds']:.2f} s "
              f"(exit {r['diff']['exit_code']}): {r['diff']['summary']}", ""]
    lines += [f"{'PASS' if ok else 'FAIL'}  {name}" for name, ok in r["checks"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tickets", type=int, default=640)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = benchmark(args.tickets, args.concurrency)
    report["when"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    report["code"] = throughput.code_version()
    print(render(report))
    out = args.out or REPO / "benchmarks/results" / \
        f"replay-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {out}", file=sys.stderr)
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
