"""Intake as a user meets it: `crewbatch check` shows the mapping, and whole runs reconcile.

A hand-made set of nasty records (duplicates, empty records, NULs, CRLF inside fields, mixed
scripts, a thread, a message without headers, broken JSON) goes through `crewbatch run --offline`
and every record read must end in exactly one row of results.csv.
"""

from __future__ import annotations

import json

import pytest
from conftest import CORPORA

from crews.ticket import FINAL

KAGGLE = CORPORA / "tickets-kaggle-suraj520" / "customer_support_tickets.csv"


def eml(headers: str, body: str) -> bytes:
    return (headers.strip() + "\n\n" + body + "\n").encode("utf-8")


def nasty_sources(root) -> list[str]:
    csv_file = root / "nasty.csv"
    csv_file.write_bytes(
        b"ticket_id,customer,subject,body\r\n"
        b'T-1,a@example.com,Order late,"Hi,\r\nmy order NW-10335 is late.\r\nThanks"\r\n'
        b'T-1,a@example.com,Order late,"Hi,\r\nmy order NW-10335 is late.\r\nThanks"\r\n'
        b"T-2,b@example.com,,\r\n"
        b",,,\r\n"
        b"T-3,c@example.com,Nul,has \x00 a nul\r\n"
        + "T-4,d@example.com,Mixed,\"Привет, 你好, مرحبا — hello\"\r\n".encode()
        + b"T-5,e@example.com,Ragged,too,many\r\n"
        b",f@example.com,No id,Body without an id\r\n"
        b",f@example.com,No id,Body without an id\r\n"
        b"T-6,g@example.com,Long," + b"x" * 25_000 + b"\r\n")
    mbox = root / "nasty.mbox"
    mbox.write_bytes(
        b"From alice@example.com Mon Nov  2 09:00:00 2026\n" + eml(
            "From: Alice <jess.lee@example.net>\nSubject: Refund\nMessage-ID: <a@x>\n"
            "Date: Mon, 2 Nov 2026 09:00:00 +0000", "I want a refund for my candles.") +
        b"From help@shop.example Mon Nov  2 12:00:00 2026\n" + eml(
            "From: Support <help@shop.example>\nSubject: Re: Refund\nMessage-ID: <b@x>\n"
            "In-Reply-To: <a@x>\nDate: Mon, 2 Nov 2026 12:00:00 +0000",
            "Which order?\n\n> I want a refund for my candles.") +
        b"From alice@example.com Tue Nov  3 09:00:00 2026\n" + eml(
            "From: Alice <jess.lee@example.net>\nSubject: Re: Refund\nMessage-ID: <c@x>\n"
            "References: <a@x> <b@x>\nDate: Tue, 3 Nov 2026 09:00:00 +0000",
            "It is order NW-10335.\n\n-- \nJess") +
        b"From nobody Tue Nov  3 10:00:00 2026\nPlease call me back about my order.\n\n" +
        b"From d@example.com Tue Nov  3 11:00:00 2026\n" + eml(
            "From: d@example.com\nSubject: Copy\nMessage-ID: <d@x>", "Delivered twice.") +
        b"From d@example.com Tue Nov  3 11:00:00 2026\n" + eml(
            "From: d@example.com\nSubject: Copy\nMessage-ID: <d@x>", "Delivered twice.") +
        b"From e@example.com Tue Nov  3 12:00:00 2026\n" + eml("From: e@example.com", "") +
        b"From h@example.com Tue Nov  3 13:00:00 2026\n" + eml(
            "From: h@example.com\nSubject: HTML only\nContent-Type: text/html; charset=utf-8",
            "<p>My <b>kettle</b> leaks.</p><script>steal()</script>"))
    jsonl = root / "nasty.jsonl"
    jsonl.write_text("\n".join([
        json.dumps({"id": "J-1", "requester": {"email": "anna.schmidt@example.com"},
                    "subject": "Cracked", "description": "My carafe NW-10424 arrived cracked."}),
        "{broken",
        "[]",
        "",
        json.dumps({"id": "J-2", "subject": "", "description": ""}),
    ]) + "\n", encoding="utf-8")
    return [str(csv_file), str(mbox), str(jsonl)]


def test_nasty_records_reconcile_exactly(project, cli, results):
    sources = nasty_sources(project)
    result = cli("run", "--offline", *sources)
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip()
    rows = results(project / "runs" / run_id / "results.csv")
    # records read: 9 CSV rows (the all-empty row is no record), 5 mbox records (a thread of 3,
    # a headerless message, two copies of one message, an empty message, an HTML-only one) and
    # 4 JSONL lines (the blank line is no record)
    assert len(rows) == 18
    by = {s: [r for r in rows if r["status"] == s] for s in FINAL}
    assert {s: len(v) for s, v in by.items()} | {"approved": 0, "needs_human": 0} == \
        {"approved": 0, "needs_human": 0, "failed": 0, "rejected": 7, "skipped": 2}
    assert len(by["approved"]) + len(by["needs_human"]) == 9
    assert sorted(r["reason"] for r in by["rejected"]) == sorted([
        "no ticket text (subject and body are empty)",
        "line 12: row has 5 fields, the header has 4",
        "body is 25000 characters, over the limit of 20000 (limits.max_body_chars in "
        "settings.yaml)",
        "no ticket text (the message has no subject and no readable body)",
        "line 2: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        "line 3: a JSON list is not a ticket record (expected an object)",
        "no ticket text (subject and body are empty)"])
    assert [r["reason"] for r in by["skipped"]] == ["duplicate of an earlier record in this run"] * 2
    assert f"run {run_id} completed: 18 records: " in result.stderr
    thread = next(r for r in rows if r["ticket_id"] == "a@x")
    assert thread["source"] == "nasty.mbox:3" and thread["customer"] == "jess.lee@example.net"

    again = cli("run", "--offline", *sources)
    rerun = results(project / "runs" / again.stdout.strip() / "results.csv")
    assert len(rerun) == 18
    assert sorted({r["status"] for r in rerun}) == ["rejected", "skipped"]


@pytest.mark.skipif(not KAGGLE.is_file(), reason="../shared/corpora is absent")
def test_kaggle_export_runs_end_to_end(project, cli, results):
    check = cli("check", str(KAGGLE))
    assert check.exit_code == 0, check.output
    assert (f"source {KAGGLE}: csv, utf-8 (detected), delimiter ','\n"
            "  mapping: ticket_id <- 'Ticket ID', customer <- 'Customer Email', customer_name <- "
            "'Customer Name', subject <- 'Ticket Subject', body <- 'Ticket Description'\n") \
        in check.stdout
    assert "    1 · carrollallison@example.com · 'Product setup' · \"I'm having an issue" \
        in check.stdout
    assert f"source {KAGGLE}: 8469 tickets, 0 rejected" in check.stdout

    result = cli("run", "--offline", "--limit", "20", str(KAGGLE))
    assert result.exit_code == 0, result.output
    rows = results(project / "runs" / result.stdout.strip() / "results.csv")
    assert [r["ticket_id"] for r in rows] == [str(n) for n in range(1, 21)]
    assert {r["status"] for r in rows} <= {"approved", "needs_human"}
    assert rows[0]["customer"] == "carrollallison@example.com"
    assert rows[0]["subject"] == "Product setup"


def test_check_shows_mapping_and_sample_for_configured_columns(project, cli):
    src = project / "export.csv"
    src.write_text("Case,Asked,Mail\nC-1,Where is my order NW-10357?,lukas@example.com\n"
                   "C-2,,\n")
    settings = project / "config" / "settings.yaml"
    settings.write_text(settings.read_text().replace(
        "  columns: {}", '  columns: {ticket_id: Case, body: Asked}'))
    result = cli("check", str(src))
    assert result.exit_code == 0, result.output
    assert (f"source {src}: csv, utf-8 (detected), delimiter ','\n"
            "  mapping: ticket_id <- 'Case' (settings), customer <- 'Mail', body <- 'Asked' "
            "(settings)\n"
            "  sample:\n"
            "    C-1 · lukas@example.com · '' · 'Where is my order NW-10357?'\n"
            f"source {src}: 1 tickets, 1 rejected\n"
            "  1 × no ticket text (subject and body are empty)\n") in result.stdout


def test_check_on_a_mailbox_counts_threads(project, cli):
    sources = nasty_sources(project)
    result = cli("check", sources[1])
    assert result.exit_code == 0, result.output
    assert f"source {sources[1]}: mbox\n" in result.stdout
    assert "    a@x · jess.lee@example.net · 'Re: Refund' · 'It is order NW-10335.' · thread of 3" \
        in result.stdout
    assert (f"source {sources[1]}: 4 tickets, 1 rejected (7 messages in threads)") in result.stdout


def test_a_bad_encoding_stops_before_any_work(project, cli):
    src = project / "latin.csv"
    src.write_bytes("id,body\n1,caf\xe9\n".encode("latin-1"))
    result = cli("run", "--offline", "--encoding", "utf-8", str(src))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"crewbatch: {src}: not valid utf-8 text near line 2 ")
    assert "--encoding" in result.stderr
