"""The review sheet: one row per input record, from the ledger, safe to open in a spreadsheet.

Columns are DESIGN.md's, in its order, with `reason`, `language`, `run_id` and `ref` added before
the two reviewer columns (`decision`, `reviewer_note`), which stay last in results.csv. The .xlsx
review sheet puts what a reviewer reads and decides first (`REVIEW_FIRST`) and the rest after.
The file is UTF-8 with a BOM so Excel reads accents, multi-line cells are quoted intact, and any
cell a spreadsheet would evaluate (starting with = + - @, tab or CR) is prefixed with an
apostrophe — except plain numbers like -1.5.

`ref` ties a row to the outcome it was exported for: `<outcome_id>.<HMAC>` over what the reviewer
decides on (run, outcome, ticket, customer, status, draft reply, actions), keyed with a secret
kept in `runs/review.key` that never leaves that file. `review apply` acts on a row only if its
ref still matches the ledger, so a sheet edited to point a decision at another ticket, or at
another customer's reply, is refused instead of carried out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from . import files
from .settings import ConfigError

if TYPE_CHECKING:
    from .ledger import Outcome

COLUMNS = [
    "ticket_id", "source", "received_at", "customer", "subject", "category", "priority", "status",
    "draft_reply", "critic_verdict", "critic_notes", "revisions", "actions", "needs_human_reason",
    "model", "prompt_tokens", "completion_tokens", "cost_usd", "duration_ms", "error",
    "reason", "language", "run_id", "ref", "decision", "reviewer_note",
]
# The .xlsx sheet is what a support lead works in: what they read and decide, left to right, then
# everything else (ref, run_id and the technical columns) out of the way on the right.
REVIEW_FIRST = ["ticket_id", "customer", "subject", "status", "needs_human_reason", "draft_reply",
                "actions", "decision", "reviewer_note"]
XLSX_COLUMNS = REVIEW_FIRST + [c for c in COLUMNS if c not in REVIEW_FIRST]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"^[+-]?(?:\d+(?:[.,]\d+)?|\.\d+)(?:[eE][+-]?\d+)?$")

KEY_FILE = "review.key"
REF = re.compile(r"(\d+)\.([0-9a-f]{24})")
_REF_VERSION = "crewbatch review ref v1"  # a new payload layout gets a new tag, never a collision


def review_key(runs_dir: Path, create: bool = True) -> bytes | None:
    """The secret that signs review sheets (`runs/review.key`), made on first use if `create`.

    It is created with mode 0600 under a temporary name and linked into place, so a reader never
    sees a half-written key and two processes exporting at once cannot replace each other's (the
    second one's link fails and it uses the first one's key). None if it is missing and not
    `create`d.
    """
    path = Path(runs_dir) / KEY_FILE
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another export made it first: use that one
        except OSError:  # a filesystem without hard links: still never replace an existing key
            if not path.exists():
                os.rename(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    key = path.read_bytes()
    if len(key) < 16:
        raise ConfigError([f"{path}: the review key is damaged ({len(key)} bytes, expected 32); "
                           "move it away and export the sheets again (sheets exported with the "
                           "old key cannot be verified)"])
    return key


def ref_for(key: bytes, outcome: Outcome) -> str:
    """The row's tamper-evident reference to its outcome."""
    reply_hash = hashlib.sha256(outcome.draft_reply.encode("utf-8", "surrogatepass")).hexdigest()
    payload = [_REF_VERSION, outcome.run_id, outcome.outcome_id, outcome.ticket_id,
               outcome.ticket_key or "", outcome.content_hash or "", outcome.customer or "",
               outcome.status, reply_hash, outcome.actions_json or "[]"]
    # ASCII JSON: every value has exactly one encoding, whatever characters it holds.
    message = json.dumps(payload, separators=(",", ":")).encode("ascii")
    mac = hmac.new(key, message, hashlib.sha256).hexdigest()[:24]
    return f"{outcome.outcome_id}.{mac}"


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


def rows(ledger, run_id: str, key: bytes) -> pd.DataFrame:
    outcomes = ledger.outcomes(run_id)
    frame = pd.DataFrame(outcomes)  # a column per field of ledger.Outcome
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    frame["actions"] = frame["actions_json"].map(describe_actions)
    frame["ref"] = [ref_for(key, o) for o in outcomes]
    for col in ("received_at", "customer", "subject"):
        frame[col] = frame[col].fillna("")
    frame["cost_usd"] = frame["cost_usd"].round(6)
    return frame[COLUMNS]


def write_results(ledger, run_id: str, path: Path, runs_dir: Path, taxonomy=None) -> Path:
    """Write the sheet as .csv or .xlsx (by suffix), atomically, signed with runs_dir's key.

    The .xlsx sheet offers drop-downs for `decision` and, given the project's `taxonomy`, for
    `category` and `priority` (a reviewer's correction is then a valid label, e.g. for
    `crewbatch eval`; `review apply` does not act on them)."""
    frame = rows(ledger, run_id, review_key(runs_dir)).map(neutralise)
    path = Path(path)
    with files.replacing(path) as tmp:
        if path.suffix.lower() == ".xlsx":
            choices = {} if taxonomy is None else {"category": list(taxonomy.categories),
                                                   "priority": list(taxonomy.priorities)}
            _write_xlsx(frame[XLSX_COLUMNS], tmp, choices)
        else:
            frame.to_csv(tmp, index=False, encoding="utf-8-sig", lineterminator="\r\n")
    return path


STATUS_FILL = {"approved": "C6EFCE", "needs_human": "FFEB9C", "failed": "FFC7CE",
               "rejected": "D9D9D9", "skipped": "EDEDED", "pending": "DDEBF7"}
WIDTHS = {"draft_reply": 70, "critic_notes": 50, "actions": 45, "needs_human_reason": 45,
          "subject": 35, "error": 35, "reason": 35, "reviewer_note": 40, "customer": 28}


def _write_xlsx(frame: pd.DataFrame, path: Path, choices: dict[str, list[str]]) -> None:
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
    decisions = DataValidation(type="list", formula1='"approve,reject,edit"', allow_blank=True)
    ws.add_data_validation(decisions)
    decisions.add(f"{decision_col}2:{decision_col}{max(2, ws.max_row)}")
    if choices:
        # The taxonomy's names on a hidden sheet: a list there has no length limit and no
        # quoting rules, whatever the names hold.
        lists = wb.create_sheet("lists")
        lists.sheet_state = "hidden"
        for i, (column, values) in enumerate(choices.items(), start=1):
            letter = get_column_letter(i)
            for row, value in enumerate(values, start=1):
                lists.cell(row=row, column=i, value=value).data_type = "s"
            col = get_column_letter(list(frame.columns).index(column) + 1)
            check = DataValidation(type="list", allow_blank=True,
                                   formula1=f"lists!${letter}$1:${letter}${max(1, len(values))}")
            ws.add_data_validation(check)
            check.add(f"{col}2:{col}{max(2, ws.max_row)}")
    wb.save(path)
