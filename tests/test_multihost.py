"""Three worker hosts on one PostgreSQL ledger: each `crewbatch worker` in a network namespace of
its own, reaching the database and the model only over its veth link; one is killed with SIGKILL
mid-run. The run completes without an operator, its tickets are finished by the live workers,
no ticket has two outcomes and no reply is written twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crews.ledger import Ledger

sys.path.insert(0, str(Path(__file__).parent))
import netns  # noqa: E402
from fake_openai import FakeOpenAI, Faults  # noqa: E402

# End to end: real processes and servers (README: Development). Worker hosts must start and join
# a run while it lasts, and the hosts share the 10.77.i.0/24 addresses (tests/netns.py): these run
# `alone`, after the parallel part of the suite, in one process.
pytestmark = [pytest.mark.slow, pytest.mark.alone]
# Seconds a model request takes until the worker a test acts on holds tickets (then the test's
# own latency): the run must not finish before a worker host has started and joined it.
STARTING_LATENCY_S = 4.0

REPO = Path(__file__).resolve().parents[1]
HOSTS = 3


@pytest.fixture
def hosts():
    """HOSTS network namespaces (tests/netns.py)."""
    try:
        with netns.hosts(HOSTS) as names:
            yield names
    except netns.Unavailable as exc:
        pytest.skip(f"multi-host test skipped: {exc}")


ENV = {"OPENAI_API_KEY": "sk-test-aaaaaaaa", "PYTHONPATH": str(REPO),
       "CREWAI_DISABLE_TELEMETRY": "true", "CREWAI_TRACING_ENABLED": "false"}


def start_worker(project: Path, server: FakeOpenAI, pg_url: str, ns: str, i: int):
    """`crewbatch worker --once` on host i, reaching the database and the model over its link."""
    model_port = server.base_url.rsplit(":", 1)[1].split("/")[0]
    log = open(project / f"worker{i}.log", "w")
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "crews", "--root", str(project),
         "worker", "--once", "--concurrency", "2"],
        env={**os.environ, **ENV,
             "CREWBATCH_DATABASE_URL": pg_url.replace("127.0.0.1", netns.gateway(i)),
             "OPENAI_BASE_URL": f"http://{netns.gateway(i)}:{model_port}/v1"},
        stdout=log, stderr=log)


def start_run(project: Path, server: FakeOpenAI, pg_url: str, *args: str):
    """`crewbatch run --model fake-model ARGS` on this host, over loopback."""
    return subprocess.Popen(
        [sys.executable, "-m", "crews", "--root", str(project), "run", "--model", "fake-model",
         *args],
        env={**os.environ, **ENV, "CREWBATCH_DATABASE_URL": pg_url,
             "OPENAI_BASE_URL": server.base_url},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_three_hosts_share_a_run_and_a_killed_one_is_taken_over(project, pg_url, hosts):
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text() + "\nlease_s: 3\n")
    # Slow answers until the victim holds tickets: on a loaded machine its start-up (CrewAI's
    # import) once took longer than the whole run at 0.5 s a request.
    with FakeOpenAI(Faults(latency_s=STARTING_LATENCY_S), host="0.0.0.0") as server:
        workers = [start_worker(project, server, pg_url, ns, i)
                   for i, ns in enumerate(hosts, start=1)]
        run = start_run(project, server, pg_url, "--limit", "48", "--concurrency", "8",
                        "--worker-concurrency", "2")
        victim = workers[0]
        with Ledger(pg_url) as ledger:
            deadline = time.monotonic() + 240
            while True:  # until the victim holds tickets in flight
                assert time.monotonic() < deadline and run.poll() is None
                run_id = ledger.active_run()
                held = [o for o in ledger.outcomes(run_id)
                        if o.status == "running" and o.claimed_by
                        and o.claimed_by in {w["executor_id"] for w in ledger.workers(run_id)
                                                if w["pid"] == victim.pid}] if run_id else []
                if held:
                    break
                time.sleep(0.1)
        server.inject(Faults(latency_s=0.5))
        victim.send_signal(signal.SIGKILL)
        out, err = run.communicate(timeout=300)
        for w in workers[1:]:
            w.wait(timeout=120)
    assert run.returncode == 0, err[-3000:]
    # Every worker reached the model only through its own link (10.77.i.1); none has a route
    # anywhere else, and the run's own process used loopback.
    peers = {r["peer"] for r in server.requests}
    with Ledger(pg_url) as ledger:
        run_id = out.strip()
        outcomes = ledger.outcomes(run_id)
        roster = {w["executor_id"]: w for w in ledger.workers(run_id)}
        events = [e for o in outcomes for e in ledger.outcome_trail(o.outcome_id)["events"]]
    assert len(outcomes) == 48
    assert {o.status for o in outcomes} <= {"approved", "needs_human"}
    assert len({o.ticket_id for o in outcomes}) == 48
    states = sorted((w["role"], w["state"]) for w in roster.values())
    assert states == [("run", "left"), ("worker", "dead"), ("worker", "left"),
                      ("worker", "left")]
    dead = next(e for e, w in roster.items() if w["state"] == "dead")
    assert {held_o.outcome_id for held_o in held} <= {
        o.outcome_id for o in outcomes if o.claimed_by != dead}
    assert any(f"from {dead}" in e["detail"] for e in events)  # taken over
    by = {roster[o.claimed_by]["pid"] for o in outcomes}
    assert len(by) >= 3  # the run's process and at least two hosts recorded tickets
    outbox = [p.name for p in (project / "runs").glob("*/outbox/*.eml")]
    assert len(outbox) == len(set(outbox)) == sum(o.status == "approved" for o in outcomes)
    assert "127.0.0.1" in peers and peers <= {"127.0.0.1"} | {f"10.77.{i}.2"
                                                              for i in range(1, HOSTS + 1)}
    assert len(peers - {"127.0.0.1"}) >= 2  # at least two hosts asked the model themselves


def test_a_partitioned_worker_cannot_record_a_ticket_handed_to_another(project, pg_url, hosts):
    """A worker cut off (its link down, the process alive) for longer than the lease: the run's
    own process declares it dead and finishes its tickets; when the link comes back, the cut-off
    worker's late results are refused by the ledger's fence and it leaves."""
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text() + "\nlease_s: 3\n")
    with FakeOpenAI(Faults(latency_s=STARTING_LATENCY_S), host="0.0.0.0") as server:
        worker = start_worker(project, server, pg_url, hosts[0], 1)
        run = start_run(project, server, pg_url, "--limit", "16", "--concurrency", "4",
                        "--worker-concurrency", "2")
        with Ledger(pg_url) as ledger:
            deadline = time.monotonic() + 240
            while True:
                assert time.monotonic() < deadline and run.poll() is None
                run_id = ledger.active_run()
                mine = {w["executor_id"] for w in ledger.workers(run_id) if w["role"] == "worker"} \
                    if run_id else set()
                held = [o.outcome_id for o in ledger.outcomes(run_id)
                        if o.status == "running" and o.claimed_by in mine] if mine else []
                if held:
                    break
                time.sleep(0.1)
            server.inject(Faults(latency_s=1.0))
            netns.cut(1)
            try:
                out, err = run.communicate(timeout=300)  # finished without the cut-off worker
            finally:
                netns.cut(1, cut_off=False)
        worker.wait(timeout=180)  # back on the network, it learns the run is over and leaves
    assert run.returncode == 0, err[-3000:]
    with Ledger(pg_url) as ledger:
        outcomes = ledger.outcomes(out.strip())
        roster = {w["executor_id"]: w for w in ledger.workers(out.strip())}
    (cut_off,) = mine
    assert roster[cut_off]["state"] == "dead"
    assert len(outcomes) == 16 and len({o.ticket_id for o in outcomes}) == 16
    assert {o.status for o in outcomes} <= {"approved", "needs_human"}
    finished_by = {o.outcome_id: o.claimed_by for o in outcomes}
    assert all(finished_by[h] != cut_off for h in held)  # its tickets were finished elsewhere
    outbox = [p.name for p in (project / "runs").glob("*/outbox/*.eml")]
    assert len(outbox) == len(set(outbox)) == sum(o.status == "approved" for o in outcomes)
