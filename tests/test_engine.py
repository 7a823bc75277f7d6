"""The run engine without CrewAI: tickets as DBOS workflows, a plain callable as the crew, a real
ledger, real worker processes killed with SIGKILL, and the ledger's fence against a worker that
was declared dead but is still running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from crews.engine import Checkpoints, Engine
from crews.ledger import Ledger
from crews.ticket import RUNNING, Status, Ticket

REPO = Path(__file__).resolve().parents[1]


def tickets(n: int, prefix: str = "T") -> list[Ticket]:
    return [Ticket(key=f"{prefix}{i}", ticket_id=f"{prefix}{i}", source="s", record_no=i,
                   customer=f"c{i}@example.com", subject="s", body=f"body {i}", received_at="",
                   customer_name="") for i in range(n)]


def recorder(ledger: Ledger, calls: list, delay: float = 0.0):
    """A crew that answers at once: records each ticket approved, as process_safely would."""
    def process(outcome_id: int, ticket: Ticket):
        calls.append((outcome_id, os.getpid(), threading.get_ident()))
        if delay:
            time.sleep(delay)
        recorded = ledger.record_result(outcome_id, Status.APPROVED, {"cost_usd": 0.01}, [], [],
                                        "done")
        return (Status.APPROVED.value if recorded else "released"), 0.01
    return process


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_every_queued_ticket_is_worked_once_within_the_concurrency(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.start_run("r1", "offline", {}, [])
    calls: list = []
    in_flight, peak = [0], [0]
    lock = threading.Lock()
    inner = recorder(ledger, calls, delay=0.05)

    def process(outcome_id, ticket):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            return inner(outcome_id, ticket)
        finally:
            with lock:
                in_flight[0] -= 1

    engine = Engine(ledger, str(tmp_path / "ledger.db"), tmp_path, "r1", process, concurrency=3,
                    threads=3, should_stop=lambda: None, role="run").start()
    ledger.owner = engine.executor_id
    try:
        todo = ledger.add_records("r1", tickets(24), False)
        for outcome_id, _ in todo:
            engine.submit(outcome_id)
            engine.submit(outcome_id)  # the same workflow id again: DBOS runs it once
        wait_until(lambda: ledger.final_count("r1") == 24)
    finally:
        engine.close(wait_s=5)
    assert sorted(c[0] for c in calls) == sorted(o for o, _ in todo)  # each once
    assert 1 < peak[0] <= 3
    assert ledger.counts("r1") == {"approved": 24}
    assert {o.claimed_by for o in ledger.outcomes("r1")} == {engine.executor_id}
    ledger.close()


def test_a_stopped_run_starts_no_ticket_and_leaves_them_pending(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.start_run("r1", "offline", {}, [])
    calls: list = []
    engine = Engine(ledger, str(tmp_path / "ledger.db"), tmp_path, "r1", recorder(ledger, calls),
                    concurrency=2, threads=2, should_stop=lambda: "budget of $1 reached",
                    role="run").start()
    try:
        todo = ledger.add_records("r1", tickets(5), False)
        for outcome_id, _ in todo:
            engine.submit(outcome_id)
        time.sleep(2.5)  # the queue is polled every 50 ms; every workflow has had its chance
    finally:
        engine.cancel_queued()
        engine.close()
    assert calls == []
    assert ledger.counts("r1") == {"pending": 5}
    ledger.close()


def test_the_ledger_fences_out_a_worker_declared_dead(tmp_path):
    """A worker cut off for a lease is declared dead; its ticket is taken over, and its own
    result, when it finally comes, is refused — one outcome, recorded by the live worker."""
    a, b = Ledger(tmp_path / "ledger.db"), Ledger(tmp_path / "ledger.db")
    a.start_run("r1", "offline", {}, [])
    (oid, _), = a.add_records("r1", tickets(1), False)
    for ledger, name in ((a, "host-a"), (b, "host-b")):
        ledger.owner = name
        ledger.join_run("r1", name, name, 1, "worker")
    assert a.claim(oid, "host-a") is not None
    assert b.claim(oid, "host-b") is None  # a live worker holds it
    assert b.reap_workers("r1", lease_s=60, me="host-b") == []  # it beats: not dead
    time.sleep(1.1)
    b.heartbeat("host-b")
    assert b.reap_workers("r1", lease_s=1, me="host-b") == ["host-a"]
    assert b.reap_workers("r1", lease_s=1, me="host-b") == []  # declared once
    assert b.claim(oid, "host-b") is not None  # taken over
    assert not a.heartbeat("host-a")  # it learns it was declared dead
    assert not a.still_running(oid)
    assert a.record_result(oid, Status.APPROVED, {}, [], [], "late") is False
    assert b.record_result(oid, Status.NEEDS_HUMAN, {}, [], [], "by b") is True
    assert a.counts("r1") == {"needs_human": 1}
    trail = [e["detail"] for e in a.trail("r1", "T0")["events"]]
    assert any("taken over by host-b from host-a" in d for d in trail)
    a.close(), b.close()


WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from crews.engine import Engine
    from crews.ledger import Ledger
    from crews.ticket import Status

    root, lease = Path(sys.argv[1]), float(sys.argv[2])
    ledger = Ledger(root / "ledger.db")

    def process(outcome_id, ticket):
        # One write: print() writes the text and its newline separately, so two threads could
        # interleave as "working 1working 2" and an empty line (seen once in CI).
        sys.stdout.write(f"working {outcome_id}\\n")
        sys.stdout.flush()
        time.sleep(3600)  # killed here, mid-ticket

    engine = Engine(ledger, str(root / "ledger.db"), root, "r1", process, concurrency=4,
                    threads=2, should_stop=lambda: None, lease_s=lease, role="worker").start()
    ledger.owner = engine.executor_id
    print("joined", flush=True)
    time.sleep(3600)
""")


def test_a_killed_workers_tickets_are_finished_by_the_live_one_each_once(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.start_run("r1", "offline", {}, [])
    calls: list = []
    started = threading.Event()
    gate = threading.Event()
    inner = recorder(ledger, calls)

    def process(outcome_id, ticket):  # the run's own process waits until the worker is busy
        started.set()
        gate.wait(60)
        return inner(outcome_id, ticket)

    engine = Engine(ledger, str(tmp_path / "ledger.db"), tmp_path, "r1", process, concurrency=4,
                    threads=2, should_stop=lambda: None, lease_s=3, role="run").start()
    ledger.owner = engine.executor_id
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    errors = tmp_path / "worker.err"
    worker = subprocess.Popen([sys.executable, str(script), str(tmp_path), "3"],
                              stdout=subprocess.PIPE, stderr=open(errors, "w"), text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})

    def line() -> str:
        text = worker.stdout.readline()
        assert text, f"the worker exited: {errors.read_text()[-3000:]}"
        return text.strip()

    try:
        assert line() == "joined"
        todo = ledger.add_records("r1", tickets(8), False)
        for outcome_id, _ in todo:
            engine.submit(outcome_id)
        taken = [line().split()[1] for _ in range(2)]  # both its threads busy
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        held = {o.outcome_id for o in ledger.outcomes("r1") if o.status == RUNNING
                and o.claimed_by != engine.executor_id}
        assert held == {int(t) for t in taken}
        gate.set()
        wait_until(lambda: ledger.final_count("r1") == 8, timeout=90)
    finally:
        gate.set()
        if worker.poll() is None:
            worker.kill()
        engine.close(wait_s=5)
    assert sorted(c[0] for c in calls) == sorted(o for o, _ in todo)  # every ticket once here
    assert ledger.counts("r1") == {"approved": 8}
    states = {w["role"]: w["state"] for w in ledger.workers("r1")}
    assert states == {"worker": "dead", "run": "left"}
    ledger.close()


def test_checkpoints_answer_the_finished_requests_and_record_each_new_answer(tmp_path):
    """A ticket worked again is answered from its checkpoints up to the first request that has
    none; from there every answer is asked for and checkpointed, by its place in the ticket."""
    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.start_run("r1", "offline", {}, [])
        (oid, _), = ledger.add_records("r1", tickets(1), False)
        ledger.checkpoint(oid, 1, "h1", {"content": "checkpointed"})
        asked = []

        def ask(n):
            def answer():
                asked.append(n)
                return {"request_hash": f"h{n}", "response": {"content": f"asked {n}"}}
            return answer

        step = Checkpoints(ledger, oid)
        assert step(ask(1)) == {"request_hash": "h1", "response": {"content": "checkpointed"}}
        assert step(ask(2)) == {"request_hash": "h2", "response": {"content": "asked 2"}}
        assert step(ask(3))["response"] == {"content": "asked 3"}
        assert asked == [2, 3]
        assert sorted(Checkpoints(ledger, oid).done) == [1, 2, 3]


RUN_WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from crews.engine import Engine, durable_step
    from crews.ledger import Ledger
    from crews.ticket import Status

    root, run_id, journal, pause = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
    ledger = Ledger(root / "ledger.db")

    def process(outcome_id, ticket):
        step = durable_step.get()
        for i in range(4):  # four model requests, each a durable step
            def ask(i=i):
                time.sleep(pause)
                with open(journal, "a") as f:
                    f.write(f"{ticket.ticket_id} {i}\\n")
                return {"request_hash": f"{ticket.ticket_id}:{i}", "response": {}}
            assert step(ask)["request_hash"] == f"{ticket.ticket_id}:{i}"
        recorded = ledger.record_result(outcome_id, Status.APPROVED, {}, [], [], "done")
        return (Status.APPROVED.value if recorded else "released"), 0.0

    engine = Engine(ledger, str(root / "ledger.db"), root, run_id, process, concurrency=4,
                    threads=4, should_stop=lambda: None, role="run").start()
    ledger.owner = engine.executor_id
    from crews.ticket import Ticket
    items = [Ticket(key=f"T{i}", ticket_id=f"T{i}", source="s", record_no=i, customer="c@x.io",
                    subject="s", body="b", received_at="", customer_name="") for i in range(8)]
    todo = ledger.add_records(run_id, items, False)
    for outcome_id, _ in todo:
        engine.submit(outcome_id)
    while ledger.final_count(run_id) < len(todo):
        time.sleep(0.05)
    print("finished", flush=True)
    engine.close()
""")


def test_a_ticket_killed_mid_way_resumes_in_the_next_run_at_its_first_unfinished_request(
        tmp_path):
    """kill -9 of the run while tickets are half way through their requests: the next run forks
    each unfinished ticket's workflow from its checkpoints, so the requests that finished are
    not asked again — only the ones in flight at the kill are."""
    script, journal = tmp_path / "run.py", tmp_path / "journal"
    script.write_text(RUN_WORKER)
    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.start_run("r1", "offline", {}, [])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, str(script), str(tmp_path), "r1", str(journal),
                              "0.4"], env=env, stdout=subprocess.PIPE, text=True)
    wait_until(lambda: journal.exists() and len(journal.read_text().splitlines()) >= 10)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = journal.read_text().splitlines()
    with Ledger(tmp_path / "ledger.db") as ledger:
        assert ledger.recover_crashed_runs("killed") == ["r1"]
        ledger.start_run("r2", "offline", {}, [])
    second = subprocess.run([sys.executable, str(script), str(tmp_path), "r2", str(journal),
                             "0.05"], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    lines = journal.read_text().splitlines()
    done = set(lines)
    assert done == {f"T{t} {i}" for t in range(8) for i in range(4)}  # every request answered
    repeated = len(lines) - len(done)
    # Only a request in flight at the kill (at most one per ticket in flight: 4) ran twice;
    # every one finished before it was answered from its checkpoint.
    assert repeated <= 4
    assert len(before) >= 10 and all(lines.count(x) == 1 for x in before[:-4])
    with Ledger(tmp_path / "ledger.db") as ledger:
        assert ledger.counts("r2") == {"approved": 8}
        assert ledger.counts("r1") == {"pending": 8}
