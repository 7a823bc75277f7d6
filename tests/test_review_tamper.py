"""The review sheet is untrusted: a row acts only on the outcome it was exported for.

Each test edits a run's sheet as an attacker (or a careless reviewer) would — another ticket's
id, another customer's reply, a forged or missing `ref`, deleted columns — and checks that the
row is refused with what differs, nothing is sent or refunded for it, and the command exits 1.
"""

from __future__ import annotations

import csv
import os
import re
import sqlite3
import stat
import zipfile

import pytest
from conftest import REPO
from test_review import decide, export_and_edit, write_sheet

from crews.export import COLUMNS, REVIEW_FIRST


@pytest.fixture
def sheet_run(project, cli, results):
    result = cli("run", "--offline", "--limit", "24")
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip()
    rows = results(project / "runs" / run_id / "results.csv")
    by_id = {r["ticket_id"]: r for r in rows}
    # The tickets these tests are about, as the offline model leaves them.
    assert by_id["T-1001"]["status"] == "approved"
    assert "amount=1299.0, currency=USD" in by_id["T-1018"]["actions"]
    assert by_id["T-1018"]["status"] == by_id["T-1024"]["status"] == "needs_human"
    assert by_id["T-1014"]["status"] == "needs_human"
    return run_id, rows


def side_effect_files(project, run_id, ticket_id: str) -> list[str]:
    run_dir = project / "runs" / run_id
    return sorted(p.name for folder in ("outbox", "refund_requests")
                  if (run_dir / folder).is_dir() for p in (run_dir / folder).iterdir()
                  if ticket_id in p.name)


def decisions(project, run_id) -> dict[str, str]:
    db = sqlite3.connect(project / "runs/ledger.db")
    try:
        return {t: d for t, d in db.execute("SELECT ticket_id, decision FROM outcomes WHERE "
                                            "run_id = ?", (run_id,))}
    finally:
        db.close()


def swap(rows, ticket_id: str, new_id: str, **cells: str) -> list[dict]:
    """The sheet with `ticket_id`'s row retyped to say `new_id` (and any other cells given)."""
    return [dict(r, ticket_id=new_id, **cells) if r["ticket_id"] == ticket_id else dict(r)
            for r in rows]


def test_swapped_ticket_id_with_approve_is_refused(project, cli, sheet_run, tmp_path):
    """T-1001's row retyped as T-1018 once carried out T-1018's 1,299 USD refund."""
    run_id, rows = sheet_run
    before = side_effect_files(project, run_id, "T-1018")
    sheet = swap(rows, "T-1001", "T-1018", decision="approve")
    result = cli("review", "apply", str(write_sheet(tmp_path / "r.csv", sheet)))
    assert result.exit_code == 1
    assert ("crewbatch: T-1018: refused: ticket_id was changed in the sheet (the row was "
            "exported for T-1001); nothing was done") in result.stderr
    assert "1299" not in result.stdout
    assert side_effect_files(project, run_id, "T-1018") == before == []
    assert decisions(project, run_id)["T-1018"] == decisions(project, run_id)["T-1001"] == ""


def test_swapped_ticket_id_with_edit_is_refused(project, cli, sheet_run, tmp_path):
    """Mark's row retyped as Julia's ticket once sent Mark's reply to Julia with a 249 EUR
    refund; so did the same with the customer cell retyped too."""
    run_id, rows = sheet_run
    mark = next(r for r in rows if r["ticket_id"] == "T-1014")
    for cells in ({}, {"customer": "julia.weber@example.net"}):
        sheet = swap(rows, "T-1014", "T-1024", decision="edit",
                     draft_reply=mark["draft_reply"], **cells)
        result = cli("review", "apply", str(write_sheet(tmp_path / "r.csv", sheet)))
        assert result.exit_code == 1
        assert ("T-1024: refused: ticket_id was changed in the sheet (the row was exported for "
                "T-1014); nothing was done") in result.stderr
        assert "0 applied" in result.stderr
    assert side_effect_files(project, run_id, "T-1024") == []
    assert side_effect_files(project, run_id, "T-1014") == []


def test_forged_stale_or_missing_ref_is_refused(project, cli, sheet_run, tmp_path):
    run_id, rows = sheet_run
    by_id = {r["ticket_id"]: r for r in rows}
    ref = by_id["T-1024"]["ref"]
    assert re.fullmatch(r"\d+\.[0-9a-f]{24}", ref)
    outcome_id, mac = ref.split(".")
    forged = {
        "T-1024": "",                                                   # cleared
        "T-1014": f"{outcome_id}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}",  # one digit off
        "T-1018": f"{by_id['T-1018']['ref'].split('.')[0]}.{mac}",     # another row's MAC
        "T-1010": "T-1010",                                             # not a ref at all
    }
    sheet = [dict(r, ref=forged[r["ticket_id"]], decision="approve")
             if r["ticket_id"] in forged else r for r in rows]
    result = cli("review", "apply", str(write_sheet(tmp_path / "r.csv", sheet)))
    assert result.exit_code == 1
    assert "T-1024: refused: the row has no `ref`; export the sheet again with " \
           f"`crewbatch export {run_id} -o FILE`; nothing was done" in result.stderr
    for ticket_id in ("T-1014", "T-1018"):
        assert f"{ticket_id}: refused: its ref {forged[ticket_id]} does not match the ledger's " \
               "record of the outcome it names" in result.stderr
    assert "T-1010: refused: `ref` 'T-1010' is not a reference crewbatch wrote" in result.stderr
    assert "0 applied, 0 already applied, 4 problem(s)" in result.stderr
    for ticket_id in forged:
        assert side_effect_files(project, run_id, ticket_id) == []

    # Another ticket's genuine ref on T-1024's row: the row now names T-1018's outcome.
    sheet = [dict(r, ref=by_id["T-1018"]["ref"], decision="approve")
             if r["ticket_id"] == "T-1024" else r for r in rows]
    result = cli("review", "apply", str(write_sheet(tmp_path / "r.csv", sheet)))
    assert result.exit_code == 1
    assert "T-1024: refused: ticket_id was changed in the sheet (the row was exported for " \
           "T-1018)" in result.stderr

    # A sheet without the column at all cannot be applied.
    bare = [{k: v for k, v in dict(r, decision="approve").items() if k != "ref"} for r in rows]
    result = cli("review", "apply", str(write_sheet(tmp_path / "bare.csv", bare)))
    assert result.exit_code == 2
    assert "missing column(s) ref" in result.stderr and "export the sheet again" in result.stderr
    assert side_effect_files(project, run_id, "T-1024") == []
    assert set(decisions(project, run_id).values()) == {""}


def test_deleted_columns_never_redirect_a_row(project, cli, sheet_run, tmp_path):
    """Without status, customer and actions there is nothing left to compare, yet the ref still
    names the outcome: the retyped ticket_id is refused, not warned about."""
    run_id, rows = sheet_run
    sheet = [{k: v for k, v in r.items() if k not in ("status", "customer", "actions")}
             for r in swap(rows, "T-1001", "T-1018", decision="approve")]
    result = cli("review", "apply", str(write_sheet(tmp_path / "r.csv", sheet)))
    assert result.exit_code == 1
    assert ("T-1018: refused: ticket_id was changed in the sheet (the row was exported for "
            "T-1001); nothing was done") in result.stderr
    assert side_effect_files(project, run_id, "T-1018") == []


def test_changed_status_customer_or_actions_cell_is_refused(project, cli, sheet_run, tmp_path):
    run_id, rows = sheet_run
    path = export_and_edit(cli, run_id, tmp_path / "review.xlsx", {
        "T-1024": {"decision": "approve", "status": "approved"},
        "T-1014": {"decision": "approve", "customer": "julia.weber@example.net"},
        "T-1018": {"decision": "approve",
                   "actions": "request_refund(order_id=NW-10316, amount=12.0, currency=USD): "
                              "proposed"}})
    result = cli("review", "apply", str(path))
    assert result.exit_code == 1
    assert ("T-1024: refused: `status` was changed in the sheet ('approved'; the row was "
            "exported for T-1024 with 'needs_human'); nothing was done") in result.stderr
    assert ("T-1014: refused: `customer` was changed in the sheet ('julia.weber@example.net'; "
            "the row was exported for T-1014 with 'mark.davies@example.net'); nothing was done"
            ) in result.stderr
    assert "T-1018: refused: `actions` was changed in the sheet ('request_refund(order_id=" \
           "NW-10316, amount=12.0, currency=USD): proposed'; the row was exported for T-1018 " \
           "with 'queue_reply(): not_run request_refund(order_id=NW-10316, amount=1299.0" \
        in result.stderr
    for ticket_id in ("T-1024", "T-1014", "T-1018"):
        assert side_effect_files(project, run_id, ticket_id) == []


def test_edited_reply_with_another_customers_data_is_refused_by_the_gate(project, cli,
                                                                          sheet_run, tmp_path):
    run_id, rows = sheet_run
    leaky = ("Hi Julia,\n\nYour refund of 249.00 EUR for order NW-10323 is approved. Eva de "
             "Vries (eva.devries@example.net) had the same problem with order NW-10214.\n\nAna")
    sheet = decide(rows, {"T-1024": ("edit", "")}, edits={"T-1024": leaky})
    result = cli("review", "apply", str(write_sheet(tmp_path / "r.csv", sheet)))
    assert result.exit_code == 1
    assert "T-1024: refused: the edited reply does not pass the gate: " in result.stderr
    assert ("other_customer_data: the reply contains eva.devries@example.net, the address of "
            "another customer") in result.stderr
    assert ("other_customer_data: the reply discusses order NW-10214, which belongs to another "
            "customer") in result.stderr
    assert "fix draft_reply and apply the sheet again; nothing was sent" in result.stderr
    assert side_effect_files(project, run_id, "T-1024") == []
    assert decisions(project, run_id)["T-1024"] == ""

    # The reviewer fixes the text: the same row now goes through, the refund a person approved
    # may be named in it, and it is sent once.
    fixed = "Hi Julia,\n\nYour refund of 249.00 EUR for order NW-10323 is approved.\n\nAna"
    sheet = decide(rows, {"T-1024": ("edit", "")}, edits={"T-1024": fixed})
    result = cli("review", "apply", str(write_sheet(tmp_path / "r.csv", sheet)))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("T-1024: edit: queue_reply: ")
    outbox = [p for p in (project / "runs" / run_id / "outbox").iterdir() if "T-1024" in p.name]
    assert len(outbox) == 1 and "eva" not in outbox[0].read_text().lower()


def test_decisions_on_final_tickets_say_what_already_happened(project, cli, sheet_run, tmp_path,
                                                              results):
    run_id, rows = sheet_run
    before = side_effect_files(project, run_id, "T-1001")
    sheet = decide(rows, {"T-1001": ("reject", "should not have gone out"),
                          "T-1003": ("edit", ""), "T-1010": ("reject", "spam")},
                   edits={"T-1003": "Hi Anna,\n\nA better reply.\n\nAna"})
    result = cli("review", "apply", str(write_sheet(tmp_path / "r.csv", sheet)))
    assert result.exit_code == 1
    assert re.search(rf"T-1001: already approved: its reply was queued \(runs/{run_id}/outbox/"
                     r"[^)]*T-1001[^)]*\.eml\) and its actions performed; reject cannot undo "
                     "that — nothing recorded", result.stderr), result.stderr
    assert ("T-1003: already approved: its reply was queued (runs/") in result.stderr
    assert "an edited reply cannot replace the one already queued — nothing recorded" \
        in result.stderr
    assert "T-1010: reject: closed" in result.stdout  # needs_human: a reject still closes it
    assert decisions(project, run_id)["T-1001"] == decisions(project, run_id)["T-1003"] == ""
    assert side_effect_files(project, run_id, "T-1001") == before

    # A second run skips what the first finished: its rows are not the ones to decide on, and
    # a ref from the first run's sheet does not make a row of the second act on the first.
    second = cli("run", "--offline", "--limit", "3")
    assert second.exit_code == 0, second.output
    later = second.stdout.strip()
    rows2 = results(project / "runs" / later / "results.csv")
    assert {r["status"] for r in rows2} == {"skipped"}
    first_ref = next(r["ref"] for r in rows if r["ticket_id"] == "T-1002")
    sheet = [dict(r, decision="approve", **({"ref": first_ref} if r["ticket_id"] == "T-1002"
                                            else {})) for r in rows2]
    result = cli("review", "apply", str(write_sheet(tmp_path / "later.csv", sheet)))
    assert result.exit_code == 1
    assert (f"T-1001: skipped (already approved in run {run_id} with the same content): this run "
            "did not process it; decide on it in the sheet of the run that did; `approve` needs "
            "a needs_human ticket — nothing recorded") in result.stderr
    assert (f"T-1002: refused: its ref is for a row of run {run_id}, not of this sheet's run "
            f"{later}") in result.stderr
    assert side_effect_files(project, later, "T-100") == []


def test_missing_key_refuses_every_decided_row(project, cli, sheet_run, tmp_path):
    run_id, rows = sheet_run
    (project / "runs" / "review.key").unlink()
    sheet = decide(rows, {"T-1024": ("approve", ""), "T-1010": ("reject", "")})
    result = cli("review", "apply", str(write_sheet(tmp_path / "r.csv", sheet)))
    assert result.exit_code == 1
    for ticket_id in ("T-1024", "T-1010"):
        assert (f"{ticket_id}: refused: {project / 'runs' / 'review.key'} is missing, so sheets "
                "exported before it was lost cannot be verified; export the sheet again with "
                f"`crewbatch export {run_id} -o FILE`") in result.stderr
    assert side_effect_files(project, run_id, "T-1024") == []
    assert not (project / "runs" / "review.key").exists()  # apply never makes a new one

    # Exporting makes a new key; the new sheet applies, the old one stays refused.
    path = export_and_edit(cli, run_id, tmp_path / "new.xlsx", {"T-1024": {"decision": "approve"}})
    assert cli("review", "apply", str(path)).exit_code == 0
    old = cli("review", "apply", str(write_sheet(tmp_path / "r.csv", sheet)))
    assert old.exit_code == 1 and "T-1010: refused: its ref" in old.stderr


def test_untampered_xlsx_approve_still_works_once(project, cli, sheet_run, tmp_path):
    import json

    run_id, rows = sheet_run
    path = export_and_edit(cli, run_id, tmp_path / "review.xlsx",
                           {"T-1024": {"decision": "Approve", "reviewer_note": "ok"}})
    first = cli("review", "apply", str(path))
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("T-1024: approve: queue_reply: ")
    assert "1 applied, 0 already applied, 0 problem(s), 23 row(s) without a decision" \
        in first.stderr
    refunds = list((project / "runs" / run_id / "refund_requests").glob("*T-1024*.json"))
    assert len(refunds) == 1 and json.loads(refunds[0].read_text())["amount"] == 249.0
    files = side_effect_files(project, run_id, "T-1024")
    second = cli("review", "apply", str(path))
    assert second.exit_code == 0 and "T-1024: already decided `approve`" in second.stdout
    assert side_effect_files(project, run_id, "T-1024") == files


def test_sheet_layouts(project, cli, sheet_run, tmp_path):
    """results.csv keeps the documented order (ref before decision); the .xlsx puts what a
    reviewer reads and decides first, the rest after, with its styling intact."""
    from openpyxl import load_workbook

    run_id, rows = sheet_run
    assert list(rows[0]) == COLUMNS
    assert COLUMNS[-4:] == ["run_id", "ref", "decision", "reviewer_note"]
    documented = re.search(r"columns in this order: (.*?)\. `reason`",
                           (REPO / "README.md").read_text(encoding="utf-8"), re.DOTALL).group(1)
    assert [c.strip(" `\n") for c in documented.split(",")] == COLUMNS

    xlsx = tmp_path / "review.xlsx"
    assert cli("export", run_id, "-o", str(xlsx)).exit_code == 0
    ws = load_workbook(xlsx).active
    header = [c.value for c in ws[1]]
    assert header[:9] == REVIEW_FIRST == ["ticket_id", "customer", "subject", "status",
                                          "needs_human_reason", "draft_reply", "actions",
                                          "decision", "reviewer_note"]
    assert header[9:] == [c for c in COLUMNS if c not in REVIEW_FIRST]
    assert ws.freeze_panes == "B2" and ws.auto_filter.ref == ws.dimensions
    validation = next(v for v in ws.data_validations.dataValidation if "approve" in v.formula1)
    assert str(validation.sqref) == "H2:H25" and header[7] == "decision"
    status = {ws.cell(row=r, column=1).value: ws.cell(row=r, column=4) for r in range(2, 26)}
    assert status["T-1001"].value == "approved" and status["T-1001"].fill.fgColor.rgb.endswith(
        "C6EFCE")
    assert status["T-1024"].fill.fgColor.rgb.endswith("FFEB9C")
    by_id = {r["ticket_id"]: r for r in rows}
    assert {ws.cell(row=r, column=1).value: ws.cell(row=r, column=header.index("ref") + 1).value
            for r in range(2, 26)} == {t: r["ref"] for t, r in by_id.items()}


def test_the_key_never_leaves_its_file(project, cli, sheet_run, tmp_path):
    import base64

    run_id, rows = sheet_run
    key_file = project / "runs" / "review.key"
    key = key_file.read_bytes()
    assert len(key) == 32 and stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    xlsx = tmp_path / "review.xlsx"
    csv_copy = tmp_path / "review.csv"
    assert cli("export", run_id, "-o", str(xlsx)).exit_code == 0
    assert cli("export", run_id, "-o", str(csv_copy)).exit_code == 0
    assert key_file.read_bytes() == key  # made once, then reused
    apply = cli("review", "apply", str(write_sheet(tmp_path / "r.csv",
                                                   decide(rows, {"T-1024": ("approve", "")}))))
    assert apply.exit_code == 0, apply.output
    forms = [key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key),
             base64.b64encode(key).rstrip(b"=")]
    run_dir = project / "runs" / run_id
    # Every file under runs/ but the key itself (the ledger with its WAL, the run's log, report,
    # results.csv, outbox and refund requests), and the sheets exported elsewhere.
    written = [p for p in (project / "runs").rglob("*") if p.is_file() and p != key_file]
    assert {run_dir / "run.log", run_dir / "report.html", project / "runs/ledger.db"} <= set(written)
    blobs = {p: p.read_bytes() for p in [csv_copy, *written]}
    with zipfile.ZipFile(xlsx) as z:
        blobs.update({f"{xlsx}:{n}": z.read(n) for n in z.namelist()})
    blobs["stdout+stderr"] = (apply.stdout + apply.stderr).encode()
    leaks = [str(name) for name, blob in blobs.items() for form in forms if form in blob]
    assert leaks == []
    with open(run_dir / "results.csv", encoding="utf-8-sig", newline="") as f:
        assert all(re.fullmatch(r"\d+\.[0-9a-f]{24}", r["ref"]) for r in csv.DictReader(f))
