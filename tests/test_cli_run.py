"""The main job as a user runs it: `crewbatch run --offline` on the samples, then runs/show/export."""

from __future__ import annotations

import csv
import json
import sqlite3

import pytest

from crews.export import COLUMNS
from crews.ticket import FINAL

DESIGN_COLUMNS = ["ticket_id", "source", "received_at", "customer", "subject", "category",
                  "priority", "status", "draft_reply", "critic_verdict", "critic_notes", "revisions",
                  "actions", "needs_human_reason", "model", "prompt_tokens", "completion_tokens",
                  "cost_usd", "duration_ms", "error", "decision", "reviewer_note"]


@pytest.fixture
def sample_run(project, cli, results):
    result = cli("run", "--offline")
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip()
    return run_id, results(project / "runs" / run_id / "results.csv")


def test_offline_run_on_samples(project, sample_run):
    run_id, rows = sample_run
    with open(project / "data/tickets.csv", encoding="utf-8", newline="") as f:
        tickets = list(csv.DictReader(f))
    assert [r["ticket_id"] for r in rows] == [t["ticket_id"] for t in tickets]
    assert list(rows[0]) == COLUMNS
    assert [c for c in COLUMNS if c in DESIGN_COLUMNS] == DESIGN_COLUMNS
    assert COLUMNS[-2:] == ["decision", "reviewer_note"]
    assert {r["status"] for r in rows} <= set(FINAL)
    assert all(r["model"] == "offline" for r in rows)
    approved = [r for r in rows if r["status"] == "approved"]
    assert len(approved) >= 25
    assert all(r["draft_reply"].strip() and r["critic_verdict"] == "approved" for r in approved)
    assert all(not r["decision"] and not r["reviewer_note"] for r in rows)
    raw = (project / "runs" / run_id / "results.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")


def test_policy_outcomes_on_samples(sample_run, project):
    run_id, rows = sample_run
    by_id = {r["ticket_id"]: r for r in rows}
    # A 249.00 EUR refund request: needs a person, with the proposed refund visible in the sheet.
    big = by_id["T-1024"]
    assert big["status"] == "needs_human"
    assert "request_refund(order_id=NW-10323, amount=249.0, currency=EUR): refused" in big["actions"]
    assert "above the auto-approve limit of 50 EUR" in big["needs_human_reason"]
    # A 24.00 USD refund is within policy and approved, with the refund request performed.
    small = by_id["T-1001"]
    assert small["status"] == "approved"
    assert "request_refund(order_id=NW-10335, amount=24.0, currency=USD): performed" in small["actions"]
    # Injection and another customer's order: no action beyond escalation, nothing disclosed.
    for tid in ("T-1012", "T-1030", "T-1037"):
        assert by_id[tid]["status"] == "needs_human", tid
        assert "performed" not in by_id[tid]["actions"], tid
    assert "NW-10461" not in by_id["T-1041"]["draft_reply"]
    # Braces in a ticket are text, not template placeholders.
    assert by_id["T-1047"]["status"] in ("approved", "needs_human")
    assert not by_id["T-1047"]["error"]
    # A cell a spreadsheet would evaluate is neutralised.
    outbox = sorted((project / "runs" / run_id / "outbox").glob("*.eml"))
    assert len(outbox) == sum(1 for r in rows if r["status"] == "approved")


def test_rerun_skips_everything_unless_reprocess(project, cli, sample_run, results):
    first_run, _ = sample_run
    again = cli("run", "--offline")
    assert again.exit_code == 0
    rows = results(project / "runs" / again.stdout.strip() / "results.csv")
    assert {r["status"] for r in rows} == {"skipped"}
    assert all(f"in run {first_run} with the same content" in r["reason"] for r in rows)
    outbox_before = sorted((project / "runs" / first_run / "outbox").iterdir())

    redo = cli("run", "--offline", "--reprocess", "--limit", "5")
    assert redo.exit_code == 0
    rows = results(project / "runs" / redo.stdout.strip() / "results.csv")
    assert len(rows) == 5 and "skipped" not in {r["status"] for r in rows}
    # Re-processing never sends a second reply: the side effects were keyed by ticket and content.
    assert not (project / "runs" / redo.stdout.strip() / "outbox").exists()
    assert sorted((project / "runs" / first_run / "outbox").iterdir()) == outbox_before


def test_show_prints_a_tickets_full_trail(cli, sample_run):
    run_id, _ = sample_run
    shown = cli("show", run_id, "T-1024")
    assert shown.exit_code == 0
    out = shown.stdout
    for needle in ("ticket T-1024 in run", "needs_human", "round 0 · research · researcher",
                   "round 0 · draft · writer", "round 0 · review · critic",
                   "round 0 · checks · gate", "round 0 · execute · executor",
                   "request_refund(order_id=NW-10323, amount=249.0, currency=EUR): refused",
                   "running → needs_human", "pending"):
        assert needle in out, needle
    listing = cli("show", run_id[:15])
    assert listing.exit_code == 0 and "T-1051" in listing.stdout
    as_json = json.loads(cli("show", run_id, "T-1001", "--json").stdout)
    assert [s["step"] for s in as_json["steps"]] == ["research", "draft", "review", "checks",
                                                     "execute"]
    missing = cli("show", run_id, "T-9999")
    assert missing.exit_code == 1 and "has no ticket `T-9999`" in missing.stderr


def test_runs_and_export(project, cli, sample_run, results, tmp_path):
    run_id, rows = sample_run
    listed = cli("runs")
    assert listed.exit_code == 0 and run_id in listed.stdout and "completed" in listed.stdout
    data = json.loads(cli("runs", "--json").stdout)
    assert data[0]["run_id"] == run_id and sum(data[0]["counts"].values()) == len(rows)
    out = tmp_path / "review.csv"
    exported = cli("export", run_id, "-o", str(out))
    assert exported.exit_code == 0
    assert results(out) == rows


def test_ledger_records_every_transition_with_its_change(project, sample_run):
    run_id, rows = sample_run
    db = sqlite3.connect(project / "runs/ledger.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] >= 1
    for outcome_id, status in db.execute("SELECT outcome_id, status FROM outcomes WHERE run_id = ?",
                                         (run_id,)):
        trail = [r[0] for r in db.execute("SELECT to_status FROM events WHERE outcome_id = ? "
                                          "ORDER BY event_id", (outcome_id,))]
        assert trail == ["pending", "running", status]
    steps = db.execute("SELECT COUNT(DISTINCT step) FROM steps").fetchone()[0]
    assert steps == 5


def test_export_xlsx_is_a_real_workbook(project, cli, sample_run, tmp_path):
    from openpyxl import load_workbook

    run_id, rows = sample_run
    out = tmp_path / "review.xlsx"
    assert cli("export", run_id, "-o", str(out)).exit_code == 0
    ws = load_workbook(out).active
    header = [c.value for c in ws[1]]
    # A reviewer's columns come first in the workbook; results.csv keeps DESIGN's order.
    assert header[7:9] == ["decision", "reviewer_note"] and ws.max_row == len(rows) + 1
    assert ws.freeze_panes == "B2" and ws.auto_filter.ref
    assert any(dv.formula1 == '"approve,reject,edit"' for dv in ws.data_validations.dataValidation)
    assert all(c.data_type != "f" for row in ws.iter_rows(min_row=2) for c in row)
    reply = header.index("draft_reply")
    assert "\n" in ws.cell(row=2, column=reply + 1).value
