"""The review sheet is safe to open: formula payloads from real lists are inert, text is intact."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import pytest
from conftest import CORPORA, write_tickets

from crews.export import FORMULA_START

pytestmark = pytest.mark.slow  # end to end: real processes and servers (README: Development)

PAYLOADS = CORPORA / "csv-formula-injection" / "payloads_extracted.json"


def payloads() -> list[str]:
    if not PAYLOADS.exists():
        pytest.skip("../shared/corpora is not here")
    data = json.loads(PAYLOADS.read_text(encoding="utf-8"))
    return [p["payload"] for p in data["payloads"] if p["payload"].strip()]


@pytest.fixture
def payload_run(project, cli):
    rows = []
    for i, payload in enumerate(payloads()):
        rows.append({"ticket_id": f"P-{i:04d}", "customer": "jess.lee@example.net",
                     "subject": payload, "body": f"{payload}\nsecond line\r\nthird line",
                     "received_at": payload if i % 3 == 0 else "2026-11-20T10:00:00Z",
                     "customer_name": payload})
    source = write_tickets(project / "payloads.csv", rows)
    result = cli("run", "--offline", str(source), "--concurrency", "8")
    assert result.exit_code == 0, result.output
    return result.stdout.strip(), rows


def test_no_cell_of_the_sheet_can_be_evaluated(project, payload_run):
    run_id, rows = payload_run
    with open(project / "runs" / run_id / "results.csv", encoding="utf-8-sig", newline="") as f:
        sheet = list(csv.DictReader(f))
    assert len(sheet) == len(rows)
    dangerous = [(r["ticket_id"], k, v) for r in sheet for k, v in r.items()
                 if isinstance(v, str) and v.startswith(FORMULA_START)
                 and not _plain_number(v)]
    assert dangerous == []
    by_id = {r["ticket_id"]: r for r in sheet}
    for row in rows:
        shown = by_id[row["ticket_id"]]["subject"]
        original = row["subject"].strip()
        assert shown in (original, "'" + original), (shown, original)


def _plain_number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


@pytest.mark.skipif(shutil.which("soffice") is None, reason="LibreOffice is not installed")
def test_libreoffice_opens_csv_and_xlsx_without_evaluating_anything(project, cli, payload_run,
                                                                      tmp_path):
    from openpyxl import load_workbook

    run_id, rows = payload_run
    xlsx = tmp_path / "review.xlsx"
    assert cli("export", run_id, "-o", str(xlsx)).exit_code == 0
    csv_copy = tmp_path / "review.csv"
    shutil.copy(project / "runs" / run_id / "results.csv", csv_copy)
    out = tmp_path / "lo"
    for source, infilter in ((csv_copy, "CSV:44,34,76,1,,0,false,true"), (xlsx, None)):
        cmd = ["soffice", "--headless", f"-env:UserInstallation=file://{tmp_path}/profile",
               "--convert-to", "xlsx", "--outdir", str(out / source.suffix[1:]), str(source)]
        if infilter:
            cmd[3:3] = [f"--infilter={infilter}"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=240)
        converted = out / source.suffix[1:] / "review.xlsx"
        ws = load_workbook(converted).active
        header = [c.value for c in ws[1]]
        formulas = [c.coordinate for row in ws.iter_rows() for c in row if c.data_type == "f"]
        assert formulas == [], (source.suffix, formulas[:5])
        assert ws.max_row == len(rows) + 1
        with open(csv_copy, encoding="utf-8-sig", newline="") as f:
            ours = {r["ticket_id"]: r for r in csv.DictReader(f)}
        id_col, reply_col = header.index("ticket_id") + 1, header.index("draft_reply") + 1
        for r in range(2, ws.max_row + 1):
            theirs = ws.cell(row=r, column=reply_col).value or ""
            expected = ours[ws.cell(row=r, column=id_col).value]["draft_reply"]
            assert theirs.replace("\r\n", "\n") == expected.replace("\r\n", "\n")
            assert "\n" in theirs or not expected
