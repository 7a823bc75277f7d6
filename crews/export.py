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
    frame = rows(ledger, run_id).map(neutralise)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_csv(tmp, index=False, encoding="utf-8-sig", lineterminator="\r\n")
    os.replace(tmp, path)
    return path
