"""The review loop: decisions read back from an edited sheet and acted on exactly once."""

from __future__ import annotations

import csv

import pytest


@pytest.fixture
def reviewed_run(project, cli, results):
    result = cli("run", "--offline", "--limit", "24")
    assert result.exit_code == 0
    run_id = result.stdout.strip()
    return run_id, results(project / "runs" / run_id / "results.csv")


def decide(rows, decisions: dict[str, tuple[str, str]], edits: dict[str, str] | None = None):
    out = []
    for r in rows:
        r = dict(r)
        if r["ticket_id"] in decisions:
            r["decision"], r["reviewer_note"] = decisions[r["ticket_id"]]
        if edits and r["ticket_id"] in edits:
            r["draft_reply"] = edits[r["ticket_id"]]
        out.append(r)
    return out


def export_and_edit(cli, run_id, path, edits: dict[str, dict[str, str]]):
    """Export the run as .xlsx and change cells as a reviewer would: {ticket_id: {column: value}}."""
    from openpyxl import load_workbook

    assert cli("export", run_id, "-o", str(path)).exit_code == 0
    wb = load_workbook(path)
    ws = wb.active
    header = [c.value for c in ws[1]]
    for row in ws.iter_rows(min_row=2):
        for column, value in edits.get(row[header.index("ticket_id")].value, {}).items():
            row[header.index(column)].value = value
    wb.save(path)
    return path


def write_sheet(path, rows, delimiter=","):
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def test_apply_executes_approved_actions_once(project, cli, reviewed_run, tmp_path):
    run_id, rows = reviewed_run
    by_id = {r["ticket_id"]: r for r in rows}
    assert by_id["T-1024"]["status"] == "needs_human"  # 249.00 EUR refund, over the limit
    sheet = decide(rows, {"T-1024": ("approve", "ok, supervisor approved"),
                          "T-1014": ("edit", "edited by Ana"),
                          "T-1018": ("reject", "fraud suspected"),
                          "T-1001": ("approve", "")},
                   edits={"T-1014": "Hi Mark,\n\nYour refund of 89.99 GBP is approved.\n\nAna"})
    sheet.reverse()  # reviewers sort and filter; order must not matter
    sheet.append(dict(sheet[0], ticket_id="T-9999", decision="approve"))
    path = write_sheet(tmp_path / "review.csv", sheet, delimiter=";")
    first = cli("review", "apply", str(path))
    assert first.exit_code == 1  # the unknown ticket is a problem
    # The copied row still carries T-1024's ref: a retyped id, refused rather than looked up.
    assert ("crewbatch: T-9999: refused: ticket_id was changed in the sheet (the row was exported "
            "for T-1024); nothing was done") in first.stderr
    assert "T-1024: approve: queue_reply: " in first.stdout
    assert "request_refund: " in first.stdout
    assert "T-1018: reject: closed" in first.stdout
    assert "T-1001: approve: confirmed (already carried out)" in first.stdout
    outbox = project / "runs" / run_id / "outbox"
    files_after_first = sorted(p.name for p in outbox.iterdir())
    edited = [p for p in outbox.iterdir() if p.stem.endswith("-T-1014")]
    assert len(edited) == 1 and "Your refund of 89.99 GBP is approved." in edited[0].read_text()
    assert len(list((project / "runs" / run_id / "refund_requests").glob("*-T-1024.json"))) == 1

    second = cli("review", "apply", str(path))
    assert "T-1024: already decided `approve`" in second.stdout
    assert sorted(p.name for p in outbox.iterdir()) == files_after_first
    shown = cli("show", run_id, "T-1024")
    assert "review: reviewer approve" in shown.stdout
    exported = cli("export", run_id, "-o", str(tmp_path / "after.csv"))
    assert exported.exit_code == 0
    after = {r["ticket_id"]: r for r in csv.DictReader(open(tmp_path / "after.csv",
                                                            encoding="utf-8-sig"))}
    assert after["T-1018"]["decision"] == "reject"
    assert after["T-1018"]["reviewer_note"] == "fraud suspected"


def test_xlsx_sheet_edited_in_a_spreadsheet_is_accepted(project, cli, reviewed_run, tmp_path):
    run_id, rows = reviewed_run
    path = export_and_edit(cli, run_id, tmp_path / "review.xlsx",
                           {"T-1024": {"decision": "Approve"}})
    result = cli("review", "apply", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("T-1024: approve: queue_reply: ")
    assert "1 applied, 0 already applied, 0 problem(s), 23 row(s) without a decision" \
        in result.stderr
    # A tampered `status` cell refuses the row now (tests/test_review_tamper.py).


def test_sheet_from_another_run_or_without_columns_is_refused(project, cli, reviewed_run,
                                                              tmp_path):
    run_id, rows = reviewed_run
    other = [dict(r, run_id="20990101-000000-dead") for r in rows]
    result = cli("review", "apply", str(write_sheet(tmp_path / "other.csv", other)))
    assert result.exit_code == 2
    assert "the sheet is from run 20990101-000000-dead, which is not in this project's ledger" \
        in result.stderr
    bare = [{"ticket_id": r["ticket_id"], "decision": "approve"} for r in rows]
    result = cli("review", "apply", str(write_sheet(tmp_path / "bare.csv", bare)))
    assert result.exit_code == 2
    assert "missing column(s) run_id" in result.stderr


def test_policy_still_binds_a_reviewer(project, cli, reviewed_run, tmp_path):
    run_id, rows = reviewed_run
    policy = project / "config/policy.yaml"
    policy.write_text(policy.read_text().replace(
        "allowed_actions: [queue_reply, tag_ticket, escalate_to_human, request_refund]",
        "allowed_actions: [queue_reply, tag_ticket, escalate_to_human]"))
    sheet = decide(rows, {"T-1024": ("approve", "")})
    result = cli("review", "apply", str(write_sheet(tmp_path / "r.csv", sheet)))
    assert result.exit_code == 1
    assert ("crewbatch: T-1024: policy still refuses: request_refund: request_refund is not an "
            "allowed action in config/policy.yaml; nothing was done") in result.stderr
    assert not list((project / "runs" / run_id / "outbox").glob("*-T-1024*"))


@pytest.mark.skipif(__import__("shutil").which("soffice") is None,
                    reason="LibreOffice is not installed")
@pytest.mark.parametrize("resave_as", ["xlsx", "csv"])
def test_sheet_resaved_by_libreoffice_is_accepted_and_applied_once(project, cli, reviewed_run,
                                                                   tmp_path, resave_as):
    import subprocess

    run_id, rows = reviewed_run
    approved = {"T-1024", "T-1014"}
    path = export_and_edit(cli, run_id, tmp_path / "review.xlsx",
                           {t: {"decision": "approve"} for t in approved})
    target = "xlsx" if resave_as == "xlsx" else "csv:Text - txt - csv (StarCalc):59,34,76,1"
    subprocess.run(["soffice", "--headless", f"-env:UserInstallation=file://{tmp_path}/profile",
                    "--convert-to", target, "--outdir", str(tmp_path / "lo"), str(path)],
                   check=True, capture_output=True, timeout=240)
    resaved = tmp_path / "lo" / f"review.{resave_as}"
    if resave_as == "csv":
        assert resaved.read_text(encoding="utf-8").splitlines()[0].count(";") > 10
    first = cli("review", "apply", str(resaved))
    assert first.exit_code == 0, first.output
    assert "2 applied, 0 already applied, 0 problem(s)" in first.stderr
    second = cli("review", "apply", str(resaved))
    assert "0 applied, 2 already applied" in second.stderr
    outbox = project / "runs" / run_id / "outbox"
    for ticket_id in approved:
        assert len(list(outbox.glob(f"*-{ticket_id}.eml"))) == 1


def test_approval_carries_out_the_drafts_plan_never_what_the_executor_tried_beyond_it(
        project, cli, reviewed_run, tmp_path):
    """A rogue executor's refused attempts stay in the sheet for the reviewer to see, but
    approving the ticket carries out only the final draft's actions (what the critic reviewed)."""
    import json
    import sqlite3

    run_id, rows = reviewed_run
    db = sqlite3.connect(project / "runs/ledger.db")
    (outcome_id,) = db.execute("SELECT outcome_id FROM outcomes WHERE run_id = ? AND "
                               "ticket_id = 'T-1024'", (run_id,)).fetchone()
    for kind, args in (("request_refund", {"order_id": "NW-10323", "amount": 4999.0,
                                           "currency": "EUR"}),
                       ("delete_account", {"customer": "someone@example.com"})):
        db.execute("INSERT INTO actions (outcome_id, kind, args_json, decision, reason, "
                   "created_utc) VALUES (?, ?, ?, 'refused', 'not in the approved plan', "
                   "'2026-11-21T00:00:00Z')", (outcome_id, kind, json.dumps(args)))
    db.commit()
    db.close()
    path = write_sheet(tmp_path / "review.csv",
                       decide(rows, {"T-1024": ("approve", "supervisor approved")}))
    applied = cli("review", "apply", str(path))
    assert applied.exit_code == 0, applied.output
    refunds = list((project / "runs" / run_id / "refund_requests").glob("*-T-1024.json"))
    assert len(refunds) == 1
    assert json.loads(refunds[0].read_text())["amount"] == 249.0
    assert "delete_account" not in applied.stdout and "4999" not in applied.stdout


def test_sheets_are_read_as_intake_reads_exports(tmp_path):
    # review.read_sheet goes through intake.Table: the same encodings, delimiter and quoting as
    # a ticket export. (Before, this cp1252 sheet was decoded as UTF-16: 64 bytes, no error.)
    from crews.review import SheetError, read_sheet

    header = "ticket_id;run_id;ref;decision;note\r\n"
    path = tmp_path / "sheet.csv"
    path.write_bytes((header + "T-1;r;1.ab;approve;café ok\r\n").encode("cp1252"))
    frame = read_sheet(path)
    assert list(frame.columns) == ["ticket_id", "run_id", "ref", "decision", "note"]
    assert frame.iloc[0]["note"] == "café ok"
    path.write_text(header + 'T-1;r;1.ab;approve;"Grüße; Ana"\r\nT-2;r;2.cd\r\n',
                    encoding="utf-8-sig")
    frame = read_sheet(path)
    assert frame.iloc[0]["note"] == "Grüße; Ana"
    assert frame.iloc[1]["decision"] == ""  # a short row is padded, as spreadsheets write them
    path.write_text(header + "T-1;r;1.ab;approve;x;extra\r\n", encoding="utf-8")
    with pytest.raises(SheetError) as err:
        read_sheet(path)
    assert str(err.value) == (f"{path}: line 2: row has 6 fields, the header has 5; save the "
                              "sheet as CSV again (or XLSX) from the spreadsheet")
