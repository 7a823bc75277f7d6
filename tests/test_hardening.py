"""Regression tests for the hostile-input review (issue 18): refund caps across tickets and
runs, a record that breaks a side effect, colliding output names, a broken ledger or disk, and a
stop that works whatever the run is blocked on. Each test uses the input that found the defect.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

JESS = "jess.lee@example.net"


def refund_ticket(ticket_id: str, amount: str = "$24.00", order: str = "NW-10335") -> dict:
    return {"ticket_id": ticket_id, "customer": JESS, "customer_name": "Jessica Lee",
            "subject": "Refund request",
            "body": f"Hi, the soy candle set ({order}) smells far too strong. They are still "
                    f"sealed. Can I get a refund of {amount}? Ticket {ticket_id}."}


def performed_refunds(project: Path) -> list[tuple]:
    db = sqlite3.connect(project / "runs/ledger.db")
    try:
        return db.execute("SELECT order_id, amount, automatic FROM refunds ORDER BY "
                          "requested_utc").fetchall()
    finally:
        db.close()


def run_rows(project: Path, results, run_id: str) -> dict[str, dict]:
    return {r["ticket_id"]: r for r in results(project / "runs" / run_id / "results.csv")}


# --- refunds capped per order and per customer, across tickets and runs ---------------------


def test_three_tickets_refund_one_24_usd_order_once(cli, project, tickets_file, results):
    """Before: three tickets asking for the same 24 USD refund got three performed refunds."""
    src = tickets_file(project / "t.csv", [refund_ticket(f"R-{i}") for i in (1, 2, 3)])
    out = cli("run", str(src), "--offline", "--concurrency", "3")
    assert out.exit_code == 0, out.output
    rows = run_rows(project, results, out.stdout.strip().splitlines()[-1])
    assert performed_refunds(project) == [("NW-10335", 24.0, 1)]
    performed = [t for t, r in rows.items() if "request_refund" in r["actions"] and
                 "performed" in r["actions"].split("request_refund", 1)[1].split("\n")[0]]
    assert len(performed) == 1
    others = [r for t, r in rows.items() if t not in performed]
    assert [r["status"] for r in others] == ["needs_human", "needs_human"]
    for r in others:
        assert "NW-10335 has already been refunded 24.00 of its 24.00 total" in \
            r["actions"] + r["needs_human_reason"]
    assert len(list(project.glob("runs/*/refund_requests/*.json"))) == 1


def test_a_later_run_cannot_refund_the_same_order_again(cli, project, tickets_file, results):
    first = cli("run", str(tickets_file(project / "a.csv", [refund_ticket("R-1")])), "--offline")
    assert first.exit_code == 0
    second = cli("run", str(tickets_file(project / "b.csv", [refund_ticket("R-9")])), "--offline")
    rows = run_rows(project, results, second.stdout.strip().splitlines()[-1])
    assert rows["R-9"]["status"] == "needs_human"
    assert "already been refunded 24.00" in rows["R-9"]["actions"]
    assert performed_refunds(project) == [("NW-10335", 24.0, 1)]


def test_per_customer_cap_over_a_period(project):
    """Two orders of one customer, the second over the per-customer amount: refused, named."""
    from crews.actions import cap_refusal
    from crews.ledger import Ledger, RefundRequest
    from crews.settings import RefundPolicy

    caps = RefundPolicy(per_customer={"period_days": 30, "max_refunds": 5, "max_amount": 40})
    with Ledger(project / "runs/l.db") as ledger:
        def guard(order, total, amount, approved=False):
            return lambda h: cap_refusal(caps, order, total, amount, "USD", approved, h)

        assert ledger.reserve_refunds([RefundRequest("k1", 1, "NW-10335", JESS, 24.0, "USD",
                                                     True, guard("NW-10335", 24, 24))]) is None
        refusal = ledger.reserve_refunds([RefundRequest("k2", 2, "NW-10490", JESS, 20.0, "USD",
                                                        True, guard("NW-10490", 32, 20))])
        assert refusal == ("this customer already had 24.00 USD refunded automatically in the "
                           "last 30 days; 20.00 more is over the 40 USD per-customer limit, so a "
                           "person must approve it")
        # A person may approve it; the order's own total still binds them.
        assert ledger.reserve_refunds([RefundRequest("k3", 2, "NW-10490", JESS, 20.0, "USD",
                                                     False, guard("NW-10490", 32, 20, True))]) \
            is None
        over = ledger.reserve_refunds([RefundRequest("k4", 3, "NW-10490", JESS, 20.0, "USD",
                                                     False, guard("NW-10490", 32, 20, True))])
        assert over.startswith("order NW-10490 has already been refunded 20.00 of its 32.00")
        # The same action again (a redo after a crash) passes without a second row.
        assert ledger.reserve_refunds([RefundRequest("k1", 1, "NW-10335", JESS, 24.0, "USD",
                                                     True, guard("NW-10335", 24, 24))]) is None
        assert len(ledger.refund_history("NW-10335", JESS).rows) == 2


def test_four_tickets_for_a_49_99_order_refund_it_once(project, tickets_file, cli):
    """Before: four tickets for a 49.99 USD order got 199.96 USD, no person involved."""
    orders = project / "data/orders.csv"
    lines = orders.read_text().splitlines()
    lines.append("NW-19999,jess.lee@example.net,Jessica Lee,2026-11-01,delivered,Lamp,1,49.99,USD,"
                 "USPS,9400111899598506779999,2026-11-02,2026-11-05,US")
    orders.write_text("\n".join(lines) + "\n")
    src = tickets_file(project / "t.csv", [refund_ticket(f"L-{i}", "$49.99", "NW-19999")
                                           for i in range(4)])
    out = cli("run", str(src), "--offline", "--concurrency", "4")
    assert out.exit_code == 0, out.output
    assert sum(a for _, a, _ in performed_refunds(project)) == pytest.approx(49.99)


# --- one bad record never stops the night ---------------------------------------------------


def test_a_reply_the_mail_library_refuses_fails_that_ticket_only(project, tickets_file, results,
                                                                  cli):
    """Before: a header the e-mail library refused stopped every run at the same record.
    Intake now rejects such ids; this drives the side-effect boundary itself with a subject
    the outbox cannot encode, and checks the other tickets still finish."""
    from crews.actions import write_outbox
    from crews.ticket import Ticket

    bad = Ticket(key="K", ticket_id="K", source="s", received_at="", customer="a@x.example\nBcc: b@y",
                 customer_name="", subject="s", body="b", record_no=1)
    with pytest.raises(ValueError):
        write_outbox(bad, "hello", project / "x.eml")  # what used to escape the boundary

    src = tickets_file(project / "t.csv", [refund_ticket("OK-1"),
                                           {**refund_ticket("BAD-1"), "customer": "a@x\nBcc: b@y"}])
    out = cli("run", str(src), "--offline")
    rows = run_rows(project, results, out.stdout.strip().splitlines()[-1])
    assert rows["OK-1"]["status"] == "approved"
    assert rows["BAD-1"]["status"] == "rejected"
    assert "line break" in rows["BAD-1"]["reason"]


def test_process_safely_records_a_failure_instead_of_raising(project):
    from crews.ledger import Ledger
    from crews.settings import load_config
    from crews.ticket import Status, Ticket
    from crews.work import process_safely

    config = load_config(project)
    ticket = Ticket(key="P", ticket_id="P", source="s", received_at="", customer=JESS,
                    customer_name="", subject="s", body="b", record_no=1)

    def exploding(ticket):
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    with Ledger(config.ledger_file) as ledger:
        ledger.start_run("r1", "offline", {}, [])
        [(oid, _)] = ledger.add_records("r1", [ticket], reprocess=False)
        assert ledger.claim(oid, "main")
        status, cost = process_safely(config, ledger, exploding, project / "runs/r1", oid,
                                      ticket)
        row = ledger.outcomes("r1")[0]
    assert status == Status.FAILED.value and row.status == "failed"
    assert row.error.startswith("UnicodeEncodeError:")


# --- output names are unique per outcome ----------------------------------------------------


def test_ids_a_slash_b_and_a_underscore_b_get_two_reply_files(cli, project, tickets_file):
    """Before: the second reply overwrote the first while the ledger recorded two."""
    body = {"customer": "sam@example.com", "subject": "Shipping times",
            "body": "How long does standard shipping to Canada take?"}
    src = tickets_file(project / "t.csv", [{"ticket_id": "a/b", **body},
                                           {"ticket_id": "a_b", **body}])
    out = cli("run", str(src), "--offline")
    assert out.exit_code == 0, out.output
    db = sqlite3.connect(project / "runs/ledger.db")
    targets = [r[0] for r in db.execute("SELECT detail FROM side_effects WHERE kind = "
                                        "'queue_reply'")]
    db.close()
    emls = list(project.glob("runs/*/outbox/*.eml"))
    assert len(targets) == len(set(targets)) == len(emls)
    assert sorted(str(p) for p in emls) == sorted(targets)
    assert {p.read_text().split("X-Crewbatch-Ticket: ")[1].split()[0] for p in emls} <= \
        {"a/b", "a_b"}


# --- the ledger and the disk ----------------------------------------------------------------

LEDGER_LINE = "crewbatch: {path}: the ledger is damaged"


@pytest.mark.parametrize("content", [b"", b"SQLite format 3\x00" + b"\x00" * 80, b"garbage" * 500],
                         ids=["zero-bytes", "truncated", "garbage"])
def test_a_broken_ledger_exits_2_with_one_line(cli, project, content):
    first = cli("run", "data/tickets.csv", "--offline", "--limit", "2")
    assert first.exit_code == 0
    ledger = project / "runs/ledger.db"
    for extra in ("-wal", "-shm"):
        Path(f"{ledger}{extra}").unlink(missing_ok=True)
    ledger.write_bytes(content)
    out = cli("run", "data/tickets.csv", "--offline", "--limit", "2")
    assert out.exit_code == 2
    assert "Traceback" not in out.output
    message = out.stderr.strip()
    assert message.count("\n") == 0 and str(ledger) in message
    if content:
        assert "the ledger is damaged" in message and "--new-ledger" in message
    else:  # a 0-byte ledger beside earlier runs is refused, not silently taken as new
        assert "the ledger is empty" in message and "earlier run folder" in message
    check = cli("check", "--offline")
    assert check.exit_code == 2 and str(ledger) in check.stderr


def test_zero_byte_ledger_does_not_answer_a_ticket_twice(cli, project):
    """Before: re-running the same tickets after the ledger was emptied wrote a second reply."""
    assert cli("run", "data/tickets.csv", "--offline", "--limit", "3").exit_code == 0
    replies = len(list(project.glob("runs/*/outbox/*.eml")))
    (project / "runs/ledger.db").write_bytes(b"")
    assert cli("run", "data/tickets.csv", "--offline", "--limit", "3").exit_code == 2
    assert len(list(project.glob("runs/*/outbox/*.eml"))) == replies
    started_over = cli("run", "data/tickets.csv", "--offline", "--limit", "3", "--new-ledger")
    assert started_over.exit_code == 0


def test_check_reports_a_sound_ledger(cli, project):
    assert cli("run", "data/tickets.csv", "--offline", "--limit", "1").exit_code == 0
    out = cli("check", "--offline")
    assert out.exit_code == 0
    assert "ledger: ok (integrity check passed, schema version" in out.stdout


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs root and mount namespaces to "
                                                          "make a full or read-only disk")


def _in_mount_namespace(project: Path, script: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `script` (sh) in a private mount namespace: mounts vanish when it ends."""
    env = {**os.environ, "CREWBATCH_ROOT": str(project), "PATH": f"{Path(sys.executable).parent}:"
           f"{os.environ.get('PATH', '')}"}
    return subprocess.run(["unshare", "-m", "sh", "-ec", script], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd="/")


@needs_mount
def test_a_full_disk_exits_2_naming_the_file(project):
    runs = project / "runs"
    out = _in_mount_namespace(project, f"""
        mount -t tmpfs -o size=256k tmpfs {runs}
        dd if=/dev/zero of={runs}/filler bs=4k 2>/dev/null || true
        crewbatch run data/tickets.csv --offline --limit 2
    """)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert str(runs) in last and ("disk is full" in last or "No space left" in last)


@needs_mount
@pytest.mark.slow
def test_a_full_disk_mid_life_exits_2_and_keeps_the_ledger(project):
    runs = project / "runs"
    out = _in_mount_namespace(project, f"""
        mount -t tmpfs -o size=2m tmpfs {runs}
        crewbatch run data/tickets.csv --offline --limit 2 >/dev/null 2>&1
        dd if=/dev/zero of={runs}/filler bs=4k 2>/dev/null || true
        crewbatch run data/tickets.csv --offline --limit 6 --reprocess || echo "exit=$?"
    """)
    assert "exit=2" in out.stdout, out.stderr
    assert "Traceback" not in out.stderr
    assert str(runs) in out.stderr.strip().splitlines()[-1]


@needs_mount
@pytest.mark.slow
def test_a_read_only_runs_folder_exits_2(project):
    runs = project / "runs"
    out = _in_mount_namespace(project, f"""
        mount -t tmpfs -o size=2m tmpfs {runs}
        crewbatch run data/tickets.csv --offline --limit 1 >/dev/null 2>&1
        mount -o remount,ro {runs}
        crewbatch run data/tickets.csv --offline --limit 2 --reprocess || echo "exit=$?"
    """)
    assert "exit=2" in out.stdout, out.stderr
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert str(runs) in last and ("read-only" in last.lower() or "Read-only" in last)


# --- SIGTERM stops a run whatever it is blocked on ------------------------------------------


@pytest.mark.slow
def test_sigterm_stops_a_run_blocked_on_a_hung_model(project, tickets_file, tmp_path):
    """Before: a run blocked in a call printed "stopping" but never stopped and stayed running.
    Here every model request hangs far past the grace period; SIGTERM must end the run (exit 3)
    within the grace, recorded as interrupted, its tickets pending."""
    from fake_openai import FakeOpenAI, Faults

    settings = project / "config/settings.yaml"
    text = settings.read_text().replace("stop_grace_s: 60", "stop_grace_s: 2")
    settings.write_text(text.replace("  timeout_s: 60 ", "  timeout_s: 300 "))
    src = tickets_file(project / "t.csv", [refund_ticket(f"H-{i}") for i in range(3)])
    with FakeOpenAI(Faults(rate_hang=1.0, random_hang_s=120)) as server:
        env = {**os.environ, "OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": server.base_url,
               "CREWBATCH_ROOT": str(project)}
        proc = subprocess.Popen([sys.executable, "-m", "crews", "run", str(src), "--model",
                                 "fake-model"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not server.requests:
            time.sleep(0.2)
        assert server.requests, "the run never reached the model"
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
        elapsed = time.monotonic() - started
    assert proc.returncode == 3, stderr
    assert elapsed < 30
    assert "stopped at once" in stderr
    db = sqlite3.connect(project / "runs/ledger.db")
    (status,) = db.execute("SELECT status FROM runs").fetchone()
    pending = db.execute("SELECT COUNT(*) FROM outcomes WHERE status = 'pending'").fetchone()[0]
    db.close()
    assert status == "interrupted" and pending == 3


def test_docs_mention_every_defended_case():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Reliability", 1)[1].split("\n## ", 1)[0]
    for words in ("review.key", "per order", "per customer", "symlink", "FIFO", "--new-ledger",
                  "stop_grace_s", "exit 2"):
        assert words in section, words
