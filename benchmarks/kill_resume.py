"""Kill-and-resume benchmark: SIGKILL a crewbatch run at random moments, re-run it, count outcomes.

    .venv/bin/python benchmarks/kill_resume.py [--tickets 300] [--kills 10] [--concurrency 16]
        [--latency 0.05] [--workers 1] [--seed 1] [--out FILE]
        [--ledger sqlite|postgres] [--kill run|worker] [--hosts 2] [--lease 10]

It checks the acceptance target "kill -9 at ten random moments of a 300-ticket run, re-running
each time: 300 outcomes, none twice, no duplicate outbox files". One fake OpenAI-compatible server
(tests/fake_openai.py, a fixed latency per request) runs in this process; `crewbatch run
--model fake-model` runs as a child process over N generated tickets in a throwaway copy of the
project (benchmarks/throughput.py's `make_project`). Each kill moment is a number of model requests
into the run, drawn from a seeded RNG so that on average every killed run gets an equal share of
what is left (~4 requests per ticket, the rest counted from the ledger). At that request the run's
main process gets SIGKILL — only it, as a crash would: with --workers its worker processes must
notice and exit by themselves — and the same command starts again at once, as a supervisor
would. After the last kill, one run goes to completion.

Pass means every check holds: each generated ticket has a final outcome (approved, needs_human or
failed) and none is approved/needs_human twice; every killed run is marked `crashed`, the last one
`completed` with exit 0 or 1, no outcome is left `running`; outbox .eml and refund request files
have no duplicate names across runs and match the ledger's side_effects rows one to one (one .eml
per approved ticket); no process of a killed run is still alive when the next run has started
(it would race that run for the same tickets), nor 60 s after the kill. Per kill it reports
the moment (requests, seconds), the tickets final before it, those in flight (redone by a later
run), those a surviving worker finished after the kill, and how long the run's processes outlived it.

`--ledger postgres` runs the same on a throwaway PostgreSQL ledger (tests/pg.py's server).
`--kill worker` (PostgreSQL, root: network namespaces as in tests/test_multihost.py) kills a
worker host instead: one run on this machine and `--hosts` `crewbatch worker` hosts beside it,
each in its own namespace reaching the database and the model over its link; at each kill
moment one host's worker gets SIGKILL and a new one starts there, as a supervisor would. The run
is never killed: a peer must declare the dead worker dead (within 2 × `--lease`), take its tickets
over and finish the run, with the same checks (every ticket once, files once, requests asked
again ≤ the tickets the killed workers held).

The table goes to stdout, the JSON to benchmarks/results/kill_resume-<timestamp>.json (or --out);
the exit code is 1 if a check fails.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "benchmarks", REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import throughput  # noqa: E402

from crews import rundir  # noqa: E402
from crews.action_kinds import QUEUE_REPLY, REQUEST_REFUND  # noqa: E402
from crews.ticket import ExitCode, RunStatus  # noqa: E402

REQUESTS_PER_TICKET = 4.0  # measured k of the four-task crew against the fake server
DONE = ("approved", "needs_human")  # a ticket with one of these is skipped by later runs
FINAL = ("approved", "needs_human", "failed")
ORPHAN_GRACE_S = 60.0
MARK = "KILL_RESUME_RUN"  # in each child's environment: finds its processes after the kill


def utc_now() -> str:
    """The ledger's timestamp format, so events compare as strings."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- what one run and the whole benchmark yield ---------------------------------------------------


@dataclass
class Run:
    index: int                   # 1..kills for killed runs, kills+1 for the final one
    run_id: str = ""
    target_requests: int | None = None   # the kill moment (None: the final run)
    # Model requests of this run up to the kill, counted from when its runs row appeared (a
    # killed run's surviving workers may still be calling while the next one starts up).
    requests: int = 0
    seconds: float = 0.0         # from process start to the kill (or exit)
    exit_code: int | None = None
    killed: bool = False
    remaining_before: int = 0    # tickets not yet approved/needs_human when it started
    kill_utc: str = ""
    final_before_kill: int = 0   # distinct tickets with a final outcome at the kill
    running_at_kill: int = 0     # this run's outcomes in `running` at the kill
    # Filled in from the ledger once every run is over:
    status: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    redone: int = 0              # claimed (`running`) in this run, final only in a later run
    finished_after_kill: int = 0  # made final in this run after the kill (a surviving worker)
    claimed_after_kill: int = 0  # taken (`running`) in this run after the kill (ditto)
    # The run's processes still alive just after the kill (its workers, resource tracker):
    survivors: list[dict] = field(default_factory=list)
    survivors_gone_s: float | None = None     # when the last of them was gone
    alive_when_next_run_started: int = 0
    alive_after_grace: int = 0


@dataclass
class Report:
    settings: dict
    runs: list[Run] = field(default_factory=list)
    checks: dict[str, dict] = field(default_factory=dict)   # name -> {ok, value, expected}
    files: dict = field(default_factory=dict)
    # --kill worker: per kill, the host, its process, what it held and when a peer took it over
    worker_kills: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c["ok"] for c in self.checks.values())

    @property
    def problems(self) -> list[str]:
        return [f"{name}: {c['value']} (expected {c['expected']})"
                for name, c in self.checks.items() if not c["ok"]]

    def as_json(self) -> dict:
        return {"settings": self.settings, "ok": self.ok, "checks": self.checks,
                "problems": self.problems, "files": self.files,
                "worker_kills": self.worker_kills,
                "runs": [asdict(r) for r in self.runs]}


# --- the kill switch: the server's on_request hook ------------------------------------------------


class Trigger:
    """Counts the armed run's model requests and SIGKILLs its main process at the target one,
    while that request is in flight. Requests before `arm` (a killed run's surviving workers
    finishing, while the next run starts up) are not counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.arm(None, None)

    def arm(self, pid: int | None, target: int | None) -> None:
        with self._lock:
            self.pid, self.target, self.count = pid, target, 0
            self.fired_at: float | None = None
            self.fired_utc, self.fired_count = "", 0

    def __call__(self, record: dict) -> None:
        with self._lock:
            if self.pid is None:
                return
            self.count += 1
            if self.target is not None and self.fired_at is None and self.count >= self.target:
                os.kill(self.pid, signal.SIGKILL)
                self.fired_at, self.fired_utc = time.monotonic(), utc_now()
                self.fired_count = self.count


# --- processes --------------------------------------------------------------------------------


def marked_processes(mark: str, prefix: bool = False) -> dict[int, str]:
    """Live (non-zombie) processes whose environment carries MARK=mark (or MARK=mark...):
    pid -> what it is."""
    found = {}
    needle = f"{MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            if not any(v.startswith(needle) if prefix else v == needle for v in env):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z":
            found[int(entry.name)] = ("worker" if "spawn_main" in cmd else
                                      "resource_tracker" if "resource_tracker" in cmd else
                                      cmd[:80])
    return found


class Watch(threading.Thread):
    """Follows a killed run's surviving processes until they are gone or the grace period ends."""

    def __init__(self, run: Run, mark: str, killed_at: float):
        super().__init__(daemon=True, name=f"watch-{run.index}")
        self.run_, self.mark, self.killed_at = run, mark, killed_at
        self.alive = marked_processes(mark)
        run.survivors = [{"pid": p, "what": w} for p, w in sorted(self.alive.items())]

    def run(self) -> None:
        while self.alive and time.monotonic() - self.killed_at < ORPHAN_GRACE_S:
            time.sleep(0.1)
            self.alive = marked_processes(self.mark)
        if self.alive:
            self.run_.alive_after_grace = len(self.alive)
        elif self.run_.survivors:
            self.run_.survivors_gone_s = round(time.monotonic() - self.killed_at, 2)
        else:
            self.run_.survivors_gone_s = 0.0


# --- the ledger, read from outside --------------------------------------------------------------


class Db:
    """The ledger read from outside, SQLite or PostgreSQL, with `?` marks and dict rows
    (`concat` is GROUP_CONCAT or string_agg)."""

    def __init__(self, conn, postgres: bool):
        self.conn, self.postgres = conn, postgres
        self.concat = "string_agg({}, ',')" if postgres else "GROUP_CONCAT({})"

    def rows(self, sql: str, params: tuple = ()) -> list[dict]:
        if self.postgres:
            sql = sql.replace("?", "%s")
        cur = self.conn.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def value(self, sql: str, params: tuple = ()):
        rows = self.rows(sql, params)
        return next(iter(rows[0].values())) if rows else None

    def close(self) -> None:
        self.conn.close()


def connect(project: Path, database_url: str | None = None) -> Db | None:
    """The run's ledger: the PostgreSQL at `database_url`, else the project's SQLite file
    (None while the first run has not made it)."""
    if database_url:
        import psycopg

        return Db(psycopg.connect(database_url, autocommit=True), True)
    path = project / "runs/ledger.db"
    if not path.exists():
        return None
    return Db(sqlite3.connect(path, timeout=30, isolation_level=None), False)


def count_tickets(project: Path, statuses: tuple[str, ...], database_url: str | None = None
                  ) -> int:
    db = connect(project, database_url)
    if db is None:
        return 0
    try:
        marks = ", ".join("?" for _ in statuses)
        return db.value("SELECT COUNT(*) FROM (SELECT DISTINCT ticket_key, content_hash FROM "
                        f"outcomes WHERE status IN ({marks})) AS done", statuses)
    except Exception:  # noqa: BLE001 - the first run is still creating the tables
        return 0
    finally:
        db.close()


def new_run_id(project: Path, known: set[str], database_url: str | None = None) -> str:
    db = connect(project, database_url)
    if db is None:
        return ""
    try:
        rows = [r["run_id"] for r in db.rows("SELECT run_id FROM runs ORDER BY started_utc")]
    except Exception:  # noqa: BLE001 - the first run is still creating the tables
        rows = []
    finally:
        db.close()
    return next((r for r in rows if r not in known), "")


# --- running and killing ------------------------------------------------------------------------


def kill_target(rng: random.Random, remaining: int, kills_left: int) -> int:
    """Requests into the run at which to kill it: on average an equal share of what is left for
    each of the runs to come (this one, the later killed ones, the final one), never later than
    85 % of the run's expected requests, so the kill lands mid-run."""
    expected = REQUESTS_PER_TICKET * remaining
    share = expected / (kills_left + 1)
    return max(1, min(round(rng.uniform(0.0, 2.0) * share), int(0.85 * expected)))


def quiet_resets(server) -> None:
    """A killed client resets its connections; that is the point here, not a server error."""
    report = server.httpd.handle_error

    def handle_error(request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            report(request, client_address)

    server.httpd.handle_error = handle_error


def start(project: Path, args: list[str], env: dict, logs: Path, name: str) -> subprocess.Popen:
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.out", "w") as out, open(logs / f"{name}.err", "w") as err:
        return subprocess.Popen(args, env=env, stdout=out, stderr=err, cwd=str(logs))


def exited(proc: subprocess.Popen) -> bool:
    """Whether the child has exited, without reaping it (its pid cannot be reused meanwhile)."""
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def run_once(project: Path, trigger: Trigger, run: Run, command: list[str], env: dict,
             known: set[str], timeout_s: float, on_registered=None, url: str | None = None
             ) -> float | None:
    """One `crewbatch run`, killed at `run.target_requests` unless that is None; returns the
    monotonic time of the kill, if there was one."""
    started = time.monotonic()
    proc = start(project, command, env, project / "bench-logs", f"run-{run.index:02d}")
    try:
        while not exited(proc):  # arm once the run has registered itself in the ledger
            run.run_id = new_run_id(project, known, url)
            if run.run_id:
                trigger.arm(proc.pid, run.target_requests)
                if on_registered:
                    on_registered()
                break
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"run {run.index} did not start within {timeout_s:.0f} s")
            time.sleep(0.02)
        while not exited(proc):
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"run {run.index} still running after {timeout_s:.0f} s; "
                                   f"see {project / 'bench-logs'}")
            time.sleep(0.01)
        fired_at, run.kill_utc = trigger.fired_at, trigger.fired_utc
        run.requests = trigger.fired_count if fired_at is not None else trigger.count
        run.killed = fired_at is not None
        trigger.arm(None, None)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    run.exit_code = proc.returncode
    run.seconds = round((fired_at or time.monotonic()) - started, 2)
    if not run.run_id:
        run.run_id = new_run_id(project, known, url)
    known.add(run.run_id)
    return fired_at


def benchmark(tickets: int = 300, kills: int = 10, concurrency: int = 16, latency_s: float = 0.05,
              workers: int = 1, seed: int = 1, work: Path | None = None, timeout_s: float = 900,
              progress=None, ledger: str = "sqlite", kill: str = "run", hosts: int = 2,
              lease_s: float = 10.0, database_url: str | None = None) -> Report:
    """Kill and re-run `kills` times, finish, then check the ledger and files; see the module doc.
    `kill="worker"`: one run, `hosts` worker hosts beside it, a worker killed `kills` times.
    `database_url`: an empty PostgreSQL database to use instead of a throwaway server."""
    from fake_openai import FakeOpenAI, Faults

    say = progress or (lambda text: None)
    rng = random.Random(seed)
    report = Report(settings={
        "tickets": tickets, "kills": kills, "concurrency": concurrency, "latency_s": latency_s,
        "workers": workers, "seed": seed, "ledger": ledger, "kill": kill,
        "hosts": hosts if kill == "worker" else None,
        "lease_s": lease_s if kill == "worker" else None, "cpus": os.cpu_count(),
        "python": sys.version.split()[0], "code": throughput.code_version(),
        "started_utc": datetime.now(timezone.utc).isoformat()})
    own_tmp = None
    if work is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="crewbatch-kill-")
        work = Path(own_tmp.name)
    token = uuid.uuid4().hex[:12]
    trigger = Trigger()
    began = time.monotonic()
    if database_url:
        ledger = report.settings["ledger"] = "postgres"
    server_pg = throughput.postgres_server() if ledger == "postgres" and not database_url \
        else None
    try:
        url = database_url or (server_pg.url(server_pg.new_database()) if server_pg else None)
        project = throughput.make_project(work / "project", tickets,
                                          {"lease_s": lease_s} if kill == "worker" else None)
        source = project / "data/bench_tickets.csv"
        # Worker hosts reach the fake model over their veth links: it listens on every address.
        with FakeOpenAI(Faults(latency_s=latency_s), keep_bodies=False, on_request=trigger,
                        host="0.0.0.0" if kill == "worker" else "127.0.0.1") as server:
            quiet_resets(server)
            if kill == "worker":
                kill_workers(report, project, source, server, trigger, url, rng, token,
                             timeout_s, say)
            else:
                kill_runs(report, project, source, server, trigger, url, rng, token, timeout_s,
                          say)
        report.settings["benchmark_s"] = round(time.monotonic() - began, 1)
        report.settings["model_requests"] = len(server.requests)
        verify(report, project, source, url)
    finally:
        # Leave no process of ours behind, even when a run timed out or a check raised.
        for pid in marked_processes(f"{token}-", prefix=True):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if server_pg is not None:
            server_pg.stop()
            shutil.rmtree(server_pg.home, ignore_errors=True)
        if own_tmp is not None:
            own_tmp.cleanup()
    return report


def kill_runs(report: Report, project: Path, source: Path, server, trigger: Trigger,
              url: str | None, rng: random.Random, token: str, timeout_s: float, say) -> None:
    """SIGKILL the run's main process at each kill moment and start it again at once."""
    s = report.settings
    tickets, kills = s["tickets"], s["kills"]
    command = [sys.executable, "-m", "crews", "--root", str(project), "run", str(source),
               "--model", "fake-model", "--concurrency", str(s["concurrency"]),
               "--workers", str(s["workers"])]
    known: set[str] = set()
    watches: list[Watch] = []
    previous: Watch | None = None
    for i in range(1, kills + 2):
        final = i == kills + 1
        remaining = tickets - count_tickets(project, DONE, url)
        run = Run(index=i, remaining_before=remaining,
                  target_requests=None if final else kill_target(rng, remaining, kills - i + 1))
        report.runs.append(run)
        say(f"run {i}: {remaining} tickets left, " +
            ("to completion" if final else f"kill at request {run.target_requests}"))
        env = {**throughput.child_env(server.base_url), MARK: f"{token}-{i}",
               **({"CREWBATCH_DATABASE_URL": url} if url else {})}

        def registered(prev=previous, run=run) -> None:
            if prev is not None:
                prev.run_.alive_when_next_run_started = len(marked_processes(prev.mark))

        killed_at = run_once(project, trigger, run, command, env, known, timeout_s, registered,
                             url)
        if final:
            break
        if killed_at is None:
            say(f"run {i} exited {run.exit_code} before its kill moment")
            continue
        previous = Watch(run, f"{token}-{i}", killed_at)
        previous.start()
        watches.append(previous)
        run.final_before_kill = count_tickets(project, FINAL, url)
        db = connect(project, url)
        run.running_at_kill = db.value(
            "SELECT COUNT(*) FROM outcomes WHERE run_id = ? AND status = 'running'",
            (run.run_id,)) if db and run.run_id else 0
        if db:
            db.close()
    for w in watches:
        w.join()


def kill_workers(report: Report, project: Path, source: Path, server, trigger: Trigger,
                 url: str | None, rng: random.Random, token: str, timeout_s: float, say) -> None:
    """One run on this machine and `hosts` `crewbatch worker` hosts (network namespaces
    reaching the PostgreSQL ledger and the model over their own links); at each kill moment
    one worker host's process gets SIGKILL and a new one starts on that host, as a supervisor
    would restart it. The run itself is never killed: its peers must notice the dead worker
    (the lease) and finish its tickets."""
    import netns

    s = report.settings
    if not url:
        raise SystemExit("kill_resume: --kill worker needs --ledger postgres (workers on other "
                         "hosts reach the ledger over the network)")
    tickets, kills, hosts, concurrency = s["tickets"], s["kills"], s["hosts"], s["concurrency"]
    per_host = max(1, concurrency // (hosts + 1))
    port = server.base_url.rsplit(":", 1)[1].split("/")[0]
    env = {**throughput.child_env(server.base_url), "CREWBATCH_DATABASE_URL": url,
           "PYTHONPATH": str(REPO)}
    logs = project / "bench-logs"
    run = Run(index=1, remaining_before=tickets)
    report.runs.append(run)
    report.worker_kills = []
    known: set[str] = set()
    started = time.monotonic()
    with netns.hosts(hosts) as names:
        proc = start(project, [sys.executable, "-m", "crews", "--root", str(project), "run",
                               str(source), "--model", "fake-model", "--concurrency",
                               str(concurrency), "--worker-concurrency", str(per_host)],
                     {**env, MARK: f"{token}-run"}, logs, "run")
        while not run.run_id:
            if exited(proc) or time.monotonic() - started > timeout_s:
                raise RuntimeError(f"the run did not start; see {logs}")
            run.run_id = new_run_id(project, known, url)
            time.sleep(0.05)
        incarnation = Counter()

        def start_worker(h: int) -> subprocess.Popen:
            incarnation[h] += 1
            gateway = netns.gateway(h)
            host_env = {**env, "CREWBATCH_DATABASE_URL": url.replace("127.0.0.1", gateway),
                        "OPENAI_BASE_URL": f"http://{gateway}:{port}/v1",
                        MARK: f"{token}-w{h}-{incarnation[h]}"}
            return start(project, ["ip", "netns", "exec", names[h - 1], sys.executable, "-m",
                                   "crews", "--root", str(project), "worker", "--run",
                                   run.run_id, "--concurrency", str(per_host)],
                         host_env, logs, f"worker{h}-{incarnation[h]}")

        def joined(pid: int) -> bool:
            db = connect(project, url)
            try:
                return bool(db.value("SELECT COUNT(*) FROM workers WHERE run_id = ? AND pid = ? "
                                     "AND state = 'working'", (run.run_id, pid)))
            finally:
                db.close()

        workers = {h: start_worker(h) for h in range(1, hosts + 1)}
        # Each kill lands an equal share of the run's requests (on average) after its victim
        # joined the run: a worker killed while still starting up would hold nothing.
        share = REQUESTS_PER_TICKET * tickets * 0.85 / (kills + 1)
        for i in range(1, kills + 1):
            h = (i - 1) % hosts + 1
            victim = workers[h]
            while not joined(victim.pid):
                if exited(proc) or exited(victim):
                    raise RuntimeError(f"kill {i}: the run or host {h}'s worker ended before the "
                                       f"worker joined; see {logs}")
                time.sleep(0.05)
            gap = max(1, round(rng.uniform(0.5, 1.5) * share))
            trigger.arm(victim.pid, gap)
            say(f"kill {i}: worker host {h} (pid {victim.pid}), {gap} requests after it joined")
            while trigger.fired_at is None:
                if exited(proc):
                    raise RuntimeError(f"the run ended before kill {i}; see {logs}")
                if time.monotonic() - started > timeout_s:
                    raise TimeoutError(f"kill {i} not reached within {timeout_s:.0f} s")
                time.sleep(0.01)
            fired_utc = trigger.fired_utc
            trigger.arm(None, None)
            victim.wait()
            db = connect(project, url)
            try:
                executor = db.value("SELECT executor_id FROM workers WHERE run_id = ? AND pid = ? "
                                    "ORDER BY joined_utc DESC", (run.run_id, victim.pid)) or ""
                held = db.value("SELECT COUNT(*) FROM outcomes WHERE run_id = ? AND status = "
                                "'running' AND claimed_by = ?", (run.run_id, executor))
            finally:
                db.close()
            report.worker_kills.append({"kill": i, "host": h, "pid": victim.pid,
                                        "executor_id": executor, "requests_after_join": gap,
                                        "at_utc": fired_utc, "in_flight": held})
            workers[h] = start_worker(h)  # the supervisor restarts the host's worker
        say("every kill done; the run goes to completion")
        while not exited(proc):
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"the run still running after {timeout_s:.0f} s; see {logs}")
            time.sleep(0.05)
        proc.wait()
        run.exit_code = proc.returncode
        run.seconds = round(time.monotonic() - started, 2)
        for w in workers.values():  # they leave once the run is no longer running
            try:
                w.wait(timeout=60)
            except subprocess.TimeoutExpired:
                w.kill()
        run.running_at_kill = sum(k["in_flight"] for k in report.worker_kills)


# --- the checks ---------------------------------------------------------------------------------


def verify(report: Report, project: Path, source: Path, database_url: str | None = None
           ) -> None:
    """Fill in each run from the ledger, then every check of the module doc."""
    db = connect(project, database_url)
    q, one = db.rows, db.value
    with open(source, encoding="utf-8", newline="") as f:
        input_ids = [row["ticket_id"] for row in csv.DictReader(f)]
    final_marks = ", ".join(f"'{s}'" for s in FINAL)
    runs = {r["run_id"]: r for r in q("SELECT * FROM runs")}
    for run in report.runs:
        row = runs.get(run.run_id)
        run.status = row["status"] if row else "(not registered)"
        run.counts = {r["status"]: r["n"] for r in q("SELECT status, COUNT(*) AS n FROM outcomes "
                                                     "WHERE run_id = ? GROUP BY status",
                                                     (run.run_id,))}
        if run.killed:
            run.redone = one("SELECT COUNT(DISTINCT e.outcome_id) FROM events e JOIN outcomes o "
                             "ON o.outcome_id = e.outcome_id WHERE e.run_id = ? AND e.to_status "
                             f"= 'running' AND o.status NOT IN ({final_marks})", (run.run_id,))
            run.finished_after_kill = one(
                "SELECT COUNT(DISTINCT outcome_id) FROM events WHERE run_id = ? AND outcome_id IS "
                f"NOT NULL AND to_status IN ({final_marks}) AND at_utc > ?",
                (run.run_id, run.kill_utc))
            run.claimed_after_kill = one(
                "SELECT COUNT(*) FROM events WHERE run_id = ? AND outcome_id IS NOT NULL AND "
                "to_status = 'running' AND at_utc > ?", (run.run_id, run.kill_utc))

    killed = [r for r in report.runs if r.killed]
    last = report.runs[-1]
    finished_ids = {r["ticket_id"] for r in q("SELECT DISTINCT ticket_id FROM outcomes WHERE "
                                              f"status IN ({final_marks})")}
    runs_of = db.concat.format("run_id || ':' || status")
    twice = [f"{r['ticket_id']} in {r['runs']}" for r in q(
        f"SELECT MIN(ticket_id) AS ticket_id, {runs_of} AS runs "
        "FROM outcomes WHERE status IN ('approved', 'needs_human') "
        "GROUP BY ticket_key, content_hash HAVING COUNT(*) > 1")]
    approved = one("SELECT COUNT(*) FROM (SELECT DISTINCT ticket_key, content_hash FROM outcomes "
                   "WHERE status = 'approved') AS done")
    crashed = one("SELECT COUNT(*) FROM runs WHERE status = 'crashed'")
    running = one("SELECT COUNT(*) FROM outcomes WHERE status = 'running'")
    effects = q("SELECT idempotency_key, kind, detail FROM side_effects")
    # Requests whose answers no final outcome used, live or from a checkpoint: asked by a killed
    # run and asked again. The engine checkpoints each answered request, so only those in
    # flight at a kill may repeat.
    kept = one("SELECT COUNT(*) FROM model_calls m JOIN outcomes o ON o.outcome_id = "
               f"m.outcome_id WHERE o.status IN ({final_marks}) AND m.replayed = 0")
    resumed = one("SELECT COUNT(*) FROM model_calls m JOIN outcomes o ON o.outcome_id = "
                  f"m.outcome_id WHERE o.status IN ({final_marks}) AND m.replayed = 1")
    keys_twice = [k for k, n in Counter(e["idempotency_key"] for e in effects).items() if n > 1]
    dead = {r["detail"].split(" ", 1)[0]: r["at_utc"] for r in q(
        "SELECT detail, at_utc FROM events WHERE to_status = 'dead' AND outcome_id IS NULL")}
    for k in report.worker_kills:
        at = dead.get(k["executor_id"])
        k["declared_dead_after_s"] = round(throughput.utc_seconds(at) -
                                           throughput.utc_seconds(k["at_utc"]), 1) if at else None
    db.close()

    def files(folder: str, pattern: str, kind: str) -> dict:
        paths = sorted((project / "runs").glob(f"*/{folder}/{pattern}"))
        names = Counter(p.name for p in paths)
        recorded = {str(Path(e["detail"]).resolve()) for e in effects if e["kind"] == kind}
        on_disk = {str(p.resolve()) for p in paths}
        return {"count": len(paths), "runs_with_files": len({p.parent.parent.name for p in paths}),
                "duplicate_names": sorted(n for n, c in names.items() if c > 1),
                "without_side_effect": sorted(on_disk - recorded),
                "side_effect_without_file": sorted(recorded - on_disk),
                "side_effects": sum(1 for e in effects if e["kind"] == kind),
                "leftover_tmp": sorted(str(p.relative_to(project / "runs"))
                                       for p in (project / "runs").glob(f"*/{folder}/.*.tmp"))}

    outbox = files(rundir.OUTBOX, "*.eml", QUEUE_REPLY)
    refunds = files(rundir.REFUND_REQUESTS, "*.json", REQUEST_REFUND)
    report.files = {"outbox": outbox, "refund_requests": refunds}
    n, k = len(input_ids), report.settings["kills"]

    def check(name: str, value, expected, ok: bool | None = None) -> None:
        report.checks[name] = {"ok": value == expected if ok is None else ok,
                               "value": value, "expected": expected}

    check("input tickets with a final outcome", len(finished_ids & set(input_ids)), n)
    check("tickets approved/needs_human twice", twice, [])
    # A request answered from its checkpoint was asked once, by the killed run: it counts once.
    asked_again = report.settings.get("model_requests", kept + resumed) - kept - resumed
    in_flight = sum(r.running_at_kill for r in report.runs if r.killed) + \
        sum(w["in_flight"] for w in report.worker_kills)
    report.settings["requests_answered_from_checkpoints"] = resumed
    check("model requests asked again after a kill", asked_again,
          f"<= {in_flight} (one per ticket in flight at a kill)", ok=asked_again <= in_flight)
    if report.settings.get("kill") == "worker":
        lease = report.settings["lease_s"]
        check("worker kills that landed mid-run", len(report.worker_kills), k)
        # One that held no ticket may go unnoticed if the run ends first: nothing to take over.
        slow = [(w["kill"], w["declared_dead_after_s"]) for w in report.worker_kills
                if w["in_flight"] and (w["declared_dead_after_s"] is None
                                       or w["declared_dead_after_s"] > 2 * lease)]
        check("killed workers holding tickets declared dead by a peer within 2 × lease", slow,
              [])
        check("runs marked crashed", crashed, 0)
    else:
        check("kills that landed mid-run", len(killed), k)
        check("runs marked crashed", crashed, k)
        check("killed runs not marked crashed", [r.index for r in killed
                                                  if r.status != RunStatus.CRASHED],
              [])
    check("final run", f"{last.status}, exit {last.exit_code}", "completed, exit 0 or 1",
          ok=last.status == RunStatus.COMPLETED
          and last.exit_code in (ExitCode.OK, ExitCode.FAILED))
    check("outcomes left running", running, 0)
    check("duplicate outbox file names", outbox["duplicate_names"], [])
    check("outbox files vs approved tickets", outbox["count"], approved)
    check("outbox files without a side_effects row", outbox["without_side_effect"], [])
    check(f"{QUEUE_REPLY} side effects without a file", outbox["side_effect_without_file"], [])
    check("side_effects keys twice", keys_twice, [])
    check("duplicate refund request file names", refunds["duplicate_names"], [])
    check("refund files without a side_effects row", refunds["without_side_effect"], [])
    check(f"{REQUEST_REFUND} side effects without a file", refunds["side_effect_without_file"], [])
    if report.settings.get("kill") == "worker":
        return  # no run was killed: the checks below are about a killed run's processes
    check("processes alive 60 s after their run was killed",
          sum(r.alive_after_grace for r in killed), 0)
    # A survivor still working when the next run has recovered the crashed one races it for
    # the same tickets (the run lock is the main process's alone).
    check("processes of a killed run alive when the next run started",
          sum(r.alive_when_next_run_started for r in killed), 0)


def render(report: Report) -> str:
    s = report.settings
    if s.get("kill") == "worker":
        return render_worker_kills(report)
    lines = [f"kill_resume: {s['tickets']} tickets, {s['kills']} kills, concurrency "
             f"{s['concurrency']}, --workers {s['workers']}, latency {s['latency_s']} s, seed "
             f"{s['seed']}, {s['cpus']} CPUs, Python {s['python']}, {s.get('benchmark_s', '?')} s",
             "",
             "| run | run id | kill at request | s | exit | status | skipped | finished here "
             "| final before kill | in flight at kill | redone later | claimed/finished after kill "
             "| processes left at kill | gone after s | alive at next run |",
             "|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report.runs:
        here = sum(r.counts.get(st, 0) for st in FINAL)
        kill = f"{r.requests}" if r.killed else ("—" if r.target_requests is None else
                                                f"not reached ({r.target_requests})")
        left = ", ".join(sorted(p["what"] for p in r.survivors)) or "none"
        gone = ("—" if not r.killed else f"{r.survivors_gone_s:.1f}"
                if r.survivors_gone_s is not None else f"ALIVE ({r.alive_after_grace})")
        lines.append(
            f"| {r.index} | {r.run_id} | {kill} | {r.seconds:.1f} | {r.exit_code} | {r.status} "
            f"| {r.counts.get('skipped', 0)} | {here} | "
            + (f"{r.final_before_kill} | {r.running_at_kill} | {r.redone} | "
               f"{r.claimed_after_kill}/{r.finished_after_kill} | {left} | {gone} | {r.alive_when_next_run_started} |"
               if r.killed else "— | — | — | — | — | — | — |"))
    f = report.files
    tmp = f["outbox"]["leftover_tmp"] + f["refund_requests"]["leftover_tmp"]
    lines += ["", f"files: {f['outbox']['count']} outbox .eml in {f['outbox']['runs_with_files']} "
                  f"run(s), {f['refund_requests']['count']} refund requests; leftover .tmp: "
                  f"{len(tmp)}" + (f" (killed between writing and renaming: {tmp[:3]})"
                                   if tmp else ""), ""]
    lines += _check_lines(report)
    return "\n".join(lines)


def render_worker_kills(report: Report) -> str:
    s, r = report.settings, report.runs[0]
    lines = [f"kill_resume --kill worker: {s['tickets']} tickets, {s['kills']} worker kills over "
             f"{s['hosts']} worker hosts beside the run, concurrency {s['concurrency']}, lease "
             f"{s['lease_s']:g} s, ledger {s['ledger']}, latency {s['latency_s']} s, seed "
             f"{s['seed']}, {s['cpus']} CPUs, {s.get('benchmark_s', '?')} s", "",
             f"run {r.run_id}: {r.status}, exit {r.exit_code}, {r.seconds:.1f} s, "
             + ", ".join(f"{v} {k}" for k, v in sorted(r.counts.items())), "",
             "| kill | host | pid | requests after it joined | tickets it held | declared dead "
             "after s |",
             "|---:|---:|---:|---:|---:|---:|"]
    for w in report.worker_kills:
        lines.append(f"| {w['kill']} | {w['host']} | {w['pid']} | {w['requests_after_join']} | "
                     f"{w['in_flight']} | {w.get('declared_dead_after_s')} |")
    lines.append("")
    lines += _check_lines(report)
    return "\n".join(lines)


def _check_lines(report: Report) -> list[str]:
    lines = []
    for name, c in report.checks.items():
        value = c["value"]
        if isinstance(value, list):
            value = f"{len(value)}" + (f": {value[:5]}" if value else "")
        lines.append(f"{'ok  ' if c['ok'] else 'FAIL'} {name}: {value}"
                     + ("" if c["ok"] else f" (expected {c['expected']})"))
    return lines + ["", "PASS" if report.ok else "FAILED"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tickets", type=int, default=300)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--latency", type=float, default=0.05, help="seconds per model request")
    p.add_argument("--workers", type=int, default=1, help="crewbatch run --workers")
    p.add_argument("--ledger", choices=("sqlite", "postgres"), default="sqlite",
                   help="the run's ledger (postgres: a throwaway server of tests/pg.py)")
    p.add_argument("--kill", choices=("run", "worker"), default="run",
                   help="what gets SIGKILL: the run's main process (re-run each time), or a "
                        "`crewbatch worker` host beside one run (needs --ledger postgres, root)")
    p.add_argument("--database-url", help="an empty PostgreSQL database to use (implies "
                   "--ledger postgres; default: a throwaway server)")
    p.add_argument("--hosts", type=int, default=2, help="--kill worker: worker hosts")
    p.add_argument("--lease", type=float, default=10.0, help="--kill worker: lease_s")
    p.add_argument("--seed", type=int, default=1, help="seeds the kill moments")
    p.add_argument("--out", type=Path, help="the JSON report (default "
                   "benchmarks/results/kill_resume-<UTC timestamp>.json)")
    args = p.parse_args(argv)
    if args.tickets < 1 or args.kills < 0:
        p.error("--tickets must be at least 1 and --kills at least 0")
    report = benchmark(args.tickets, args.kills, args.concurrency, args.latency, args.workers,
                       args.seed, progress=lambda t: print(f"... {t}", file=sys.stderr),
                       ledger=args.ledger, kill=args.kill, hosts=args.hosts,
                       lease_s=args.lease, database_url=args.database_url)
    print(render(report))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO / "benchmarks/results" / f"kill_resume-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.as_json(), indent=1))
    print(f"\nwritten: {out} ({report.settings['benchmark_s']} s)", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
