"""`crewbatch run --batch-api` measured: waves, wall time against waves × D, k, cost live vs batch,
and kill -9 while batches are pending.

    PYTHONPATH=. .venv/bin/python benchmarks/batch_api.py --tickets 640 --delay 20 --kills 5

One fake OpenAI-compatible server (tests/fake_openai.py) in this process answers both runs
with the same `respond`, its prompt cache off (its hits depend on arrival order, which a live run
and a batch run do not share, so with it the two runs would not bill the same tokens). Part 1 runs
the tickets live (no latency) in one project copy, part 2 through the Batch API with a completion
delay D in another, both as `crewbatch run` subprocesses; it compares the outcomes ticket by
ticket, k (model requests per ticket), and `cost_usd` from both ledgers. Part 3 runs the batch
run again in a third copy and SIGKILLs it `--kills` times at random moments while a batch is
pending (a seeded delay after a batch was created), re-running after each kill, and lets the last
run finish; then it checks on the server's own count that no custom_id and no batch was submitted
twice, that every ticket has exactly one outcome, and that the outbox has no reply twice.
The wall time of a batch run is about waves × D plus the crew's own CPU per wave (which a live
run spends too) plus start-up: the benchmark prints the CPU the run's process used beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO), str(REPO / "tests")]

from fake_openai import BatchFaults, FakeOpenAI  # noqa: E402
from throughput import child_env, make_project  # noqa: E402

PRICE = {"input_per_million": 0.15, "cached_input_per_million": 0.075,
         "output_per_million": 0.60}  # gpt-4o-mini's, for the fake model


def crewbatch(project: Path, args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "crews", "--root", str(project), "run",
                             "data/bench_tickets.csv", "--model", "fake-model", *args],
                            cwd="/", env=env, stdout=subprocess.PIPE,
                            stderr=open(log, "a"), text=True)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return 0.0


def finish(proc: subprocess.Popen) -> tuple[int, str, float, float]:
    """Wait for a run; (exit code, run id, wall s, CPU s)."""
    started, cpu = time.monotonic(), 0.0
    while proc.poll() is None:
        cpu = max(cpu, cpu_s(proc.pid))
        time.sleep(0.2)
    return proc.returncode, (proc.stdout.read() or "").strip(), time.monotonic() - started, cpu


def outcomes(project: Path, run_id: str) -> dict[str, dict]:
    db = sqlite3.connect(project / "runs/ledger.db")
    db.row_factory = sqlite3.Row
    return {r["ticket_id"]: dict(r) for r in db.execute(
        "SELECT ticket_id, status, category, priority, draft_reply, actions_json, revisions, "
        "prompt_tokens, completion_tokens, cost_usd FROM outcomes WHERE run_id = ?", (run_id,))}


def ledger_figures(project: Path, run_id: str) -> dict:
    db = sqlite3.connect(project / "runs/ledger.db")
    calls, cost = db.execute("SELECT COUNT(*), SUM(c.cost_usd) FROM model_calls c JOIN outcomes o "
                             "ON o.outcome_id = c.outcome_id WHERE o.run_id = ?",
                             (run_id,)).fetchone()
    tickets = db.execute("SELECT COUNT(*) FROM outcomes WHERE run_id = ? AND status IN "
                         "('approved', 'needs_human', 'failed')", (run_id,)).fetchone()[0]
    run_cost = db.execute("SELECT SUM(cost_usd) FROM outcomes WHERE run_id = ?",
                          (run_id,)).fetchone()[0]
    waits = [r[0] for r in db.execute("SELECT wait_s FROM batches WHERE run_id = ? ORDER BY "
                                      "batch_no", (run_id,))]
    return {"calls": calls, "calls_cost_usd": cost or 0.0, "run_cost_usd": run_cost or 0.0,
            "tickets": tickets, "k": calls / tickets if tickets else 0.0, "batch_waits_s": waits}


def project_copy(root: Path, n: int, poll_s: float, max_gather_s: float | None = None) -> Path:
    extra = {"batch.max_gather_s": max_gather_s} if max_gather_s is not None else {}
    return make_project(root, n, {"pricing.fake-model": PRICE, "batch.poll_s": poll_s,
                                  "batch.gather_s": 0.5, "retry.base_delay_s": 0.01,
                                  "concurrency": 32, **extra})


def depth(project: Path, run_id: str) -> int:
    """The most batches one ticket waited on in turn: the run's critical path in batches."""
    db = sqlite3.connect(project / "runs/ledger.db")
    row = db.execute("SELECT MAX(n) FROM (SELECT COUNT(DISTINCT r.batch_no) AS n FROM "
                     "batch_requests r JOIN outcomes o ON o.outcome_id = r.outcome_id WHERE "
                     "o.run_id = ? GROUP BY r.outcome_id)", (run_id,)).fetchone()
    return row[0] or 0


def kill_check(work: Path, server, n: int, kills: int, seed: int, delay_s: float,
               poll_s: float, env: dict, log: Path) -> dict:
    """SIGKILL the batch run `kills` times while a batch is pending, re-run, let it finish."""
    rng = random.Random(seed)
    project = project_copy(work / "kill", n, poll_s)
    api = server.batch_api
    # The server also holds the earlier parts' batches (another ledger, the same custom_ids):
    # only what this part submits is counted.
    ids_before, created_before = Counter(api.custom_ids), api.created
    killed_at = []
    for _ in range(kills):
        created = api.created
        proc = crewbatch(project, ["--batch-api"], env, log)
        # Wait for this run's next batch (a fresh one or, after a kill, the next wave), then
        # a random moment of its wait.
        deadline = time.monotonic() + 600
        while api.created <= created and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is not None:
            break  # it finished before another batch was due
        time.sleep(rng.uniform(0.1, max(0.2, delay_s * 0.9)))
        pending = sum(1 for b in api.batches.values() if b["status"] == "in_progress")
        proc.kill()
        proc.wait()
        killed_at.append({"batches_created": api.created, "pending": pending})
    code, run_id, wall, _ = finish(crewbatch(project, ["--batch-api"], env, log))
    db = sqlite3.connect(project / "runs/ledger.db")
    final = db.execute("SELECT ticket_key, status FROM outcomes WHERE status IN "
                       "('approved', 'needs_human', 'failed')").fetchall()
    keys = Counter(k for k, _ in final)
    outbox = [p.name for p in (project / "runs").glob("*/outbox/*.eml")]
    batch_ids = [r[0] for r in db.execute("SELECT batch_id FROM batches WHERE batch_id <> ''")]
    submitted = Counter(api.custom_ids)
    submitted.subtract(ids_before)
    submitted_twice = sum(1 for c in submitted.values() if c > 1)
    created = api.created - created_before
    runs = Counter(r[0] for r in db.execute("SELECT status FROM runs"))
    approved = sum(1 for _, s in final if s == "approved")
    result = {
        "kills": killed_at, "last_exit": code, "runs": dict(runs),
        "tickets_final": len(keys), "duplicate_outcomes": sum(1 for c in keys.values() if c > 1),
        "custom_ids_submitted_twice": submitted_twice,
        "batches_created_on_server": created,
        "batches_in_ledger": len(batch_ids),
        # A batch id twice in the ledger, or a batch the server created that the ledger does
        # not know (a create repeated after a crash would be one).
        "batches_submitted_twice": len(batch_ids) - len(set(batch_ids)) +
        (created - len(set(batch_ids))),
        "outbox_files": len(outbox), "duplicate_outbox_files": len(outbox) - len(set(outbox)),
        "approved": approved}
    result["pass"] = (code == 0 and len(keys) == n and result["duplicate_outcomes"] == 0 and
                      submitted_twice == 0 and result["batches_submitted_twice"] == 0 and
                      result["duplicate_outbox_files"] == 0 and len(outbox) == approved)
    return result


def batch_run(work: Path, server, tickets: int, delay_s: float, poll_s: float,
              max_gather_s: float | None, env: dict, log: Path, live_requests: int):
    name = "batch" if max_gather_s is None else f"batch-gather-{max_gather_s:g}"
    project = project_copy(work / name, tickets, poll_s, max_gather_s)
    created, sent = server.batch_api.created, len(server.requests)
    code, run_id, wall, cpu = finish(crewbatch(project, ["--batch-api"], env, log))
    batches = server.batch_api.created - created
    figures = ledger_figures(project, run_id)
    waves = depth(project, run_id)
    figures = {"exit": code, "wall_s": round(wall, 1), "cpu_s": cpu,
               "max_gather_s": max_gather_s, "batches": batches, "waves": waves,
               "waves_x_delay_s": waves * delay_s,
               "over_waves_x_delay_s": round(wall - waves * delay_s, 1),
               "requests_sent_directly": len(server.requests) - sent - figures["calls"],
               **figures}
    print(f"batch (max_gather_s {max_gather_s}): exit {code}, {wall:.1f}s, {batches} batches, "
          f"{waves} waves, k {figures['k']:.2f}, ${figures['run_cost_usd']:.6f}",
          file=sys.stderr)
    return project, run_id, figures


def benchmark(tickets: int, delay_s: float, kills: int, kill_tickets: int, seed: int,
              poll_s: float, gathers: list[float | None] | None = None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="crewbatch-batch-bench-"))
    log = work / "runs.log"
    report: dict = {"tickets": tickets, "delay_s": delay_s, "poll_s": poll_s, "work": str(work)}
    with FakeOpenAI(keep_bodies=False, prompt_cache=False,
                    batch=BatchFaults(delay_s=delay_s)) as server:
        env = child_env(server.base_url)
        live_project = project_copy(work / "live", tickets, poll_s)
        code, live_id, live_wall, live_cpu = finish(crewbatch(live_project, [], env, log))
        live_requests = len(server.requests)
        report["live"] = {"exit": code, "wall_s": round(live_wall, 1), "cpu_s": live_cpu,
                          **ledger_figures(live_project, live_id)}
        print(f"live: exit {code}, {live_wall:.1f}s, k {report['live']['k']:.2f}, "
              f"${report['live']['run_cost_usd']:.6f}", file=sys.stderr)

        runs = [batch_run(work, server, tickets, delay_s, poll_s, g, env, log, live_requests)
                for g in (gathers or [None])]
        batch_project, batch_id, figures = runs[0]
        report["batch"] = figures
        report["batch_runs"] = [f for _, _, f in runs]
        live_rows, batch_rows = outcomes(live_project, live_id), outcomes(batch_project, batch_id)
        keys = ("status", "category", "priority", "draft_reply", "actions_json", "revisions",
                "prompt_tokens", "completion_tokens")
        differ = [t for t in live_rows if {k: live_rows[t][k] for k in keys} !=
                  {k: (batch_rows.get(t) or {}).get(k) for k in keys}]
        report["outcomes_identical"] = not differ and len(live_rows) == len(batch_rows)
        report["outcomes_differing"] = differ[:10]
        report["tickets_differing"] = len(differ)
        # The tickets cycle data/tickets.csv: copies of one ticket refund the same order, and
        # the order's cap lets only the first copy's refund through. Which copy is first follows
        # the order tickets reach the executor (in turn live; all in one wave in batch mode), so
        # outcomes are compared as the multiset of each source ticket's copies too.

        def by_source(rows):
            out: dict[str, list] = {}
            for t, row in rows.items():
                out.setdefault(t.rsplit("-b", 1)[0], []).append(
                    json.dumps({k: row[k] for k in keys}, sort_keys=True))
            return {t: sorted(v) for t, v in out.items()}

        report["outcomes_identical_per_source_ticket"] = by_source(live_rows) == \
            by_source(batch_rows)
        report["statuses"] = dict(Counter(r["status"] for r in batch_rows.values()))
        live_cost, batch_cost = report["live"]["calls_cost_usd"], figures["calls_cost_usd"]
        report["cost_ratio"] = batch_cost / live_cost if live_cost else None
        report["run_cost_ratio"] = (figures["run_cost_usd"] / report["live"]["run_cost_usd"]
                                    if report["live"]["run_cost_usd"] else None)
        if kills:
            report["kill_9"] = kill_check(work, server, kill_tickets, kills, seed, delay_s,
                                          poll_s, env, log)
    return report


def render(r: dict) -> str:
    live, b = r["live"], r["batch"]
    lines = [
        f"{r['tickets']} tickets, completion delay D = {r['delay_s']:g} s, poll {r['poll_s']:g} s",
        f"live:  exit {live['exit']}, {live['wall_s']:.1f} s (CPU {live['cpu_s']:.1f} s), "
        f"k {live['k']:.3f}, "
        f"cost_usd ${live['run_cost_usd']:.6f} (model calls ${live['calls_cost_usd']:.6f})",
        *(f"batch (max_gather_s {b['max_gather_s'] if b['max_gather_s'] is not None else 'default'}"
          f"): exit {b['exit']}, {b['wall_s']:.1f} s, {b['batches']} batches, {b['waves']} waves "
          f"(waves x D = {b['waves_x_delay_s']:.0f} s, +{b['over_waves_x_delay_s']:.1f} s; the "
          f"run's CPU {b['cpu_s']:.1f} s), k {b['k']:.3f}, cost_usd ${b['run_cost_usd']:.6f} "
          f"(model calls ${b['calls_cost_usd']:.6f}), {b['requests_sent_directly']} request(s) "
          f"sent live; batch waits (s): {', '.join(f'{w:.1f}' for w in b['batch_waits_s'])}"
          for b in r.get("batch_runs", [b])),
        f"outcomes identical ticket by ticket: {r['outcomes_identical']} "
        f"({r['tickets_differing']} differ); as each source ticket's copies: "
        f"{r['outcomes_identical_per_source_ticket']}; statuses {r['statuses']}",
        f"cost batch / live: {r['cost_ratio']:.12f} (model calls), "
        f"{r['run_cost_ratio']:.12f} (the run's cost_usd, sum of its tickets')"]
    k9 = r.get("kill_9")
    if k9:
        lines.append(f"kill -9: {len(k9['kills'])} kills while batches were pending "
                     f"({', '.join(str(k['pending']) for k in k9['kills'])} pending), runs "
                     f"{k9['runs']}; {k9['tickets_final']} tickets final, "
                     f"{k9['duplicate_outcomes']} duplicate outcomes, "
                     f"{k9['custom_ids_submitted_twice']} custom_ids and "
                     f"{k9['batches_submitted_twice']} batches submitted twice "
                     f"({k9['batches_created_on_server']} created on the server), "
                     f"{k9['outbox_files']} outbox files for {k9['approved']} approved, "
                     f"{k9['duplicate_outbox_files']} duplicates: "
                     f"{'PASS' if k9['pass'] else 'FAIL'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tickets", type=int, default=640)
    p.add_argument("--delay", type=float, default=20.0, help="batch completion delay D, seconds")
    p.add_argument("--poll", type=float, default=1.0, help="batch.poll_s of the runs")
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--kill-tickets", type=int, default=160,
                   help="tickets of the kill -9 part")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-gather", default="",
                   help="batch.max_gather_s of the batch runs, comma-separated for several runs "
                        "side by side (default: the settings' default); the first is compared "
                        "with the live run")
    args = p.parse_args(argv)
    gathers = [float(g) if g not in ("", "default") else None
               for g in args.max_gather.split(",")] if args.max_gather else None
    report = benchmark(args.tickets, args.delay, args.kills, args.kill_tickets, args.seed,
                       args.poll, gathers)
    out = HERE / "results" / f"batch-api-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(render(report))
    print(f"(written to {out})")
    ok = report["outcomes_identical_per_source_ticket"] and \
        report["batch"]["exit"] == report["live"]["exit"] and \
        (not args.kills or report["kill_9"]["pass"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
