"""Reading a reviewer's sheet back: record each decision, act on it exactly once.

The sheet comes back from a spreadsheet, so it is read defensively: CSV with any delimiter Excel
or LibreOffice re-saved it with (and a BOM), or XLSX; rows in any order; numbers and ids mangled
(`1001.0`); our own formula-neutralising apostrophes. The ledger, not the sheet, is the source of
truth: a sheet from another run, an unknown ticket id or an edited `status`/`actions` cell is
reported, never guessed. `approve` on a `needs_human` ticket runs its proposed actions through the
same policy-bound executor (a person's approval lifts only the auto-approve limit); `edit` sends
the reviewer's reply instead of the draft; `reject` closes the ticket. Side effects are keyed
exactly as in a run, and a decision already recorded is not applied again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .ticket import Status

DECISIONS = {"approve": "approve", "approved": "approve", "yes": "approve", "ok": "approve",
             "reject": "reject", "rejected": "reject", "no": "reject",
             "edit": "edit", "edited": "edit"}
REQUIRED = ("ticket_id", "run_id", "decision")


class SheetError(Exception):
    """The sheet as a whole cannot be applied; the message says why and what to do."""


@dataclass
class ReviewReport:
    run_id: str
    applied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    undecided: int = 0


def read_sheet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SheetError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm"):
            frame = pd.read_excel(path, dtype=str, keep_default_na=False)
        else:
            frame = _read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise SheetError(f"{path}: cannot read the sheet ({exc}); save it as CSV or XLSX") from exc
    frame.columns = [str(c).replace("\ufeff", "").strip().lower() for c in frame.columns]
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise SheetError(f"{path}: missing column(s) {', '.join(missing)}; export the sheet again "
                         "with `crewbatch export RUN_ID -o FILE` and keep its header row")
    return frame.fillna("").astype(str)


def _read_csv(path: Path) -> pd.DataFrame:
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "utf-16", "cp1252"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    first = text.split("\n", 1)[0]
    sep = max((",", ";", "\t"), key=first.count)
    from io import StringIO

    return pd.read_csv(StringIO(text), sep=sep, dtype=str, keep_default_na=False)


def _clean_id(value: str) -> str:
    value = value.strip().lstrip("'")
    return value[:-2] if re.fullmatch(r"\d+\.0", value) else value


def _unneutralise(value: str) -> str:
    """Undo export.neutralise: a leading apostrophe before a formula character."""
    return value[1:] if value.startswith("'") and value[1:2] in ("=", "+", "-", "@", "\t",
                                                                 "\r") else value


def _same(a: str, b: str) -> bool:
    return " ".join(_unneutralise(a).split()) == " ".join(_unneutralise(b).split())


def apply(config, ledger, path: Path) -> ReviewReport:
    frame = read_sheet(path)
    run_ids = sorted({_clean_id(r) for r in frame["run_id"] if r.strip()})
    if len(run_ids) != 1:
        raise SheetError(f"{path}: the run_id column holds {len(run_ids)} different runs "
                         f"({', '.join(run_ids[:3]) or 'none'}); apply one run's sheet at a time")
    run_id = run_ids[0]
    if ledger.run(run_id) is None:
        raise SheetError(f"{path}: the sheet is from run {run_id}, which is not in this project's "
                         f"ledger ({config.ledger_file}); apply it in the project that made it")
    report = ReviewReport(run_id)
    desk_factory = _DeskFactory(config)
    for _, row in frame.iterrows():
        ticket_id = _clean_id(row["ticket_id"])
        raw_decision = row["decision"].strip().lower()
        if not raw_decision:
            report.undecided += 1
            continue
        decision = DECISIONS.get(raw_decision)
        if decision is None:
            report.problems.append(f"{ticket_id}: decision `{row['decision']}` is not one of "
                                   "approve, reject, edit; left as it is")
            continue
        trail = ledger.trail(run_id, ticket_id)
        if trail is None:
            report.problems.append(f"{ticket_id}: no such ticket in run {run_id}; row ignored")
            continue
        outcome = trail["outcome"]
        for column, ledger_value in (("status", outcome["status"]),
                                     ("customer", (trail["ticket"] or {}).get("customer", ""))):
            if column in frame.columns and row[column] and not _same(row[column], ledger_value):
                report.warnings.append(f"{ticket_id}: `{column}` was changed in the sheet "
                                       f"({row[column]!r}, ledger: {ledger_value!r}); the ledger's "
                                       "value is used")
        note = _unneutralise(row.get("reviewer_note", "")).strip()
        if outcome["decision"]:
            (report.unchanged if outcome["decision"] == decision else report.problems).append(
                f"{ticket_id}: already decided `{outcome['decision']}`"
                + ("" if outcome["decision"] == decision else f"; `{decision}` not applied"))
            continue
        _apply_one(ledger, desk_factory, report, trail, decision, note,
                   _unneutralise(row.get("draft_reply", "")))
    return report


def _apply_one(ledger, desks, report, trail, decision, note, sheet_reply) -> None:
    outcome, ticket_id = trail["outcome"], trail["outcome"]["ticket_id"]
    status = outcome["status"]
    if decision == "reject":
        ledger.record_review(outcome["outcome_id"], decision, note, "closed by the reviewer")
        report.applied.append(f"{ticket_id}: reject: closed")
        return
    if status == Status.APPROVED.value and decision == "approve":
        ledger.record_review(outcome["outcome_id"], decision, note, "confirmed by the reviewer")
        report.applied.append(f"{ticket_id}: approve: confirmed (already carried out)")
        return
    if status != Status.NEEDS_HUMAN.value:
        report.problems.append(f"{ticket_id}: `{decision}` needs a needs_human ticket; this one is "
                               f"{status}")
        return
    reply = sheet_reply.strip() if decision == "edit" else outcome["draft_reply"]
    if not reply.strip():
        report.problems.append(f"{ticket_id}: `{decision}` but there is no reply text to send")
        return
    lines, refused = desks.execute(ledger, trail, reply)
    if refused:
        report.problems.append(f"{ticket_id}: policy still refuses: {'; '.join(refused)}; "
                               "nothing was done")
        return
    ledger.record_review(outcome["outcome_id"], decision, note,
                         f"reviewer {decision}: " + "; ".join(lines))
    report.applied.append(f"{ticket_id}: {decision}: " + "; ".join(lines))


class _DeskFactory:
    """Runs a reviewed plan through the same policy-bound executor as a run."""

    def __init__(self, config):
        from .knowledge import Orders

        self.config = config
        self.orders = Orders(config.orders_file)

    def execute(self, ledger, trail, reply: str) -> tuple[list[str], list[str]]:
        from .actions import ActionDesk, perform
        from .outputs import Draft, ProposedAction

        o = trail["outcome"]
        ticket = ledger.outcome_ticket(o["outcome_id"])
        # The plan a reviewer approves is the final draft's: the actions the writer proposed and
        # the critic reviewed. Anything the executor attempted outside that plan (refused then,
        # and listed in the sheet) is never carried out by an approval.
        plan = [ProposedAction(kind="queue_reply", reason="approved by the reviewer")]
        drafts = [s for s in trail["steps"] if s["step"] == "draft" and s["output_json"]]
        proposed = Draft.model_validate_json(drafts[-1]["output_json"]).actions if drafts else []
        for action in proposed:
            if action.kind not in ("queue_reply", "escalate_to_human") and action not in plan:
                plan.append(action)
        draft = Draft(category=o["category"] or "general", priority=o["priority"] or "normal",
                      language=o["language"] or "en", reply=reply, actions=plan)
        desk = ActionDesk(ticket, draft, plan, self.config.policy, self.orders,
                          reviewer_approved=True)
        for action in plan:
            if action.kind == "queue_reply":
                desk.queue_reply()
            elif action.kind == "tag_ticket":
                desk.tag_ticket(action.queue)
            elif action.kind == "request_refund":
                desk.request_refund(action.order_id, action.amount, action.currency)
        refused = [f"{d.kind}: {d.reason}" for d in desk.decisions if not d.allowed]
        if refused:
            return [], refused
        run_dir = self.config.runs_dir / o["run_id"]
        return perform(desk.decisions, ticket, draft, run_dir, ledger, o["outcome_id"]), []
