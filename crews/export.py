"""The review sheet: one row per input record, from the ledger, safe to open in a spreadsheet.

Columns are DESIGN.md's, in its order, with `reason`, `language` and `run_id` added before the two
reviewer columns (`decision`, `reviewer_note`), which stay last. The file is UTF-8 with a BOM so
Excel reads accents, multi-line cells are quoted intact, and any cell a spreadsheet would evaluate
(starting with = + - @, tab or CR) is prefixed with an apostrophe — except plain numbers like -1.5.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd

COLUMNS = [
    "ticket_id", "source", "received_at", "customer", "subject", "category", "priority", "status",
    "draft_reply", "critic_verdict", "critic_notes", "revisions", "actions", "needs_human_reason",
    "model", "prompt_tokens", "completion_tokens", "cost_usd", "duration_ms", "error",
    "reason", "language", "run_id", "decision", "reviewer_note",
]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"^[+-]?(?:\d+(?:[.,]\d+)?|\.\d+)(?:[eE][+-]?\d+)?$")


def neutralise(value: object) -> object:
    """Make a cell inert for spreadsheets while keeping plain numbers readable."""
    if not isinstance(value, str) or not value.startswith(FORMULA_START):
        return value
    if NUMBER.match(value.strip()):
        return value
    return "'" + value


def describe_actions(actions_json: str) -> str:
    """`[{"kind": ...}]` as a line per action a reviewer can read."""
    try:
        actions = json.loads(actions_json or "[]")
    except json.JSONDecodeError:
        return actions_json
    lines = []
    for a in actions:
        args = ", ".join(f"{k}={v}" for k, v in a.get("args", {}).items())
        line = f"{a['kind']}({args}): {a['decision']}"
        if a.get("reason") and a["decision"] == "refused":
            line += f" ({a['reason']})"
        lines.append(line)
    return "\n".join(lines)


def rows(ledger, run_id: str) -> pd.DataFrame:
    frame = pd.DataFrame(ledger.outcomes(run_id))
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    frame["actions"] = frame["actions_json"].map(describe_actions)
    for col in ("received_at", "customer", "subject"):
        frame[col] = frame[col].fillna("")
    return frame[COLUMNS]


def write_results(ledger, run_id: str, path: Path) -> Path:
    """Write the sheet as .csv or .xlsx (by suffix), atomically."""
    frame = rows(ledger, run_id).map(neutralise)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if path.suffix.lower() == ".xlsx":
        _write_xlsx(frame, tmp)
    else:
        frame.to_csv(tmp, index=False, encoding="utf-8-sig", lineterminator="\r\n")
    os.replace(tmp, path)
    return path


STATUS_FILL = {"approved": "C6EFCE", "needs_human": "FFEB9C", "failed": "FFC7CE",
               "rejected": "D9D9D9", "skipped": "EDEDED", "pending": "DDEBF7"}
WIDTHS = {"draft_reply": 70, "critic_notes": 50, "actions": 45, "needs_human_reason": 45,
          "subject": 35, "error": 35, "reason": 35, "reviewer_note": 40, "customer": 28}


def _write_xlsx(frame: pd.DataFrame, path: Path) -> None:
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font, PatternFill
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet.datavalidation import DataValidation

    wb = Workbook()
    ws = wb.active
    ws.title = "review"
    ws.append(list(frame.columns))
    for record in frame.itertuples(index=False):
        ws.append(list(record))
    for cell in ws[1]:
        cell.font = Font(bold=True)
    wrap = Alignment(wrap_text=True, vertical="top")
    status_col = list(frame.columns).index("status") + 1
    for row in ws.iter_rows(min_row=2):
        for cell in row:
            if isinstance(cell.value, str):
                cell.data_type = "s"  # never a formula, whatever the text starts with
                cell.alignment = wrap
        fill = STATUS_FILL.get(str(row[status_col - 1].value))
        if fill:
            row[status_col - 1].fill = PatternFill("solid", start_color=fill, end_color=fill)
    for i, name in enumerate(frame.columns, start=1):
        ws.column_dimensions[get_column_letter(i)].width = WIDTHS.get(name, 14)
    ws.freeze_panes = "B2"
    ws.auto_filter.ref = ws.dimensions
    decision_col = get_column_letter(list(frame.columns).index("decision") + 1)
    choices = DataValidation(type="list", formula1='"approve,reject,edit"', allow_blank=True)
    ws.add_data_validation(choices)
    choices.add(f"{decision_col}2:{decision_col}{max(2, ws.max_row)}")
    wb.save(path)
