"""Reading a reviewer's sheet back: check each row against the ledger, act on it exactly once.

The sheet comes back from a spreadsheet, so it is read defensively: CSV with any delimiter Excel
or LibreOffice re-saved it with (and a BOM), or XLSX, in either column layout (columns are matched
by name); rows in any order; numbers and ids mangled (`1001.0`); our own formula-neutralising
apostrophes. The sheet is untrusted too: whoever can edit it can retype a ticket id, paste another
customer's reply or delete columns. So the ledger, not the sheet, is the truth, and a row acts
only on the outcome it was exported for: its `ref` (see export.py) must match the ledger's current
record of the outcome it names, in the sheet's run; its `ticket_id`, and its `customer`, `status`
and `actions` cells where the sheet has them, must be that outcome's. Any difference refuses the
row, saying what differs; nothing is done for it.

`approve` on a `needs_human` ticket runs its proposed actions through the same policy-bound
executor (a person's approval lifts only the auto-approve limit); `edit` sends the reviewer's reply
instead of the draft, after the same gate a run's drafts pass; `reject` closes the ticket. A
decision on a ticket that is already final says what already happened instead of pretending.
Side effects are keyed exactly as in a run, and a decision already recorded is not applied again.
"""

from __future__ import annotations

import dataclasses
import hmac
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import export, rundir
from .action_kinds import ESCALATE_TO_HUMAN, QUEUE_REPLY, REQUEST_REFUND, tool_args
from .show import cut
from .ticket import PENDING, RUNNING, Status

DECISIONS = {"approve": "approve", "approved": "approve", "yes": "approve", "ok": "approve",
             "reject": "reject", "rejected": "reject", "no": "reject",
             "edit": "edit", "edited": "edit"}
REQUIRED = ("ticket_id", "run_id", "ref", "decision")
# Cells a reviewer reads to decide; if the sheet still has them they must say what the ledger says.
CHECKED = ("customer", "status", "actions")


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
        why = (" (`ref` ties each row to the outcome it was exported for; a sheet without it, "
               "from an older crewbatch or with the column deleted, cannot be applied)"
               if "ref" in missing else "")
        raise SheetError(f"{path}: missing column(s) {', '.join(missing)}{why}; export the sheet "
                         "again with `crewbatch export RUN_ID -o FILE` and keep its header row")
    return frame.fillna("").astype(str)


def _read_csv(path: Path) -> pd.DataFrame:
    """The sheet read as intake reads a ticket export (its encodings, delimiter sniffing and
    quoting). A short row is padded, as a spreadsheet leaves trailing empty cells out; a row
    that does not fit otherwise stops the sheet, naming its line."""
    from . import intake

    try:
        with intake.Table(path, intake.IntakeOptions()) as table:
            width = len(table.headers)
            rows = []
            for record in table.records():
                if record.problem and not 0 < len(record.cells) < width:
                    raise SheetError(f"{path}: {record.problem}; save the sheet as CSV again "
                                     "(or XLSX) from the spreadsheet")
                rows.append(record.cells + [""] * (width - len(record.cells)))
            return pd.DataFrame(rows, columns=table.keys, dtype=str)
    except intake.SourceError as exc:
        raise SheetError(f"{exc}") from exc


def _clean_id(value: str) -> str:
    value = value.strip().lstrip("'")
    return value[:-2] if re.fullmatch(r"\d+\.0", value) else value


def _unneutralise(value: str) -> str:
    """Undo export.neutralise: a leading apostrophe before a formula character."""
    return value[1:] if value.startswith("'") and value[1:2] in ("=", "+", "-", "@", "\t",
                                                                 "\r") else value


def _same(a: str, b: str) -> bool:
    return " ".join(_unneutralise(a).split()) == " ".join(_unneutralise(b).split())


def _shown(value: str, limit: int = 120) -> str:
    return repr(cut(_unneutralise(value), limit + 1))


def apply(config, ledger, path: Path) -> ReviewReport:
    frame = read_sheet(path)
    run_ids = sorted({_clean_id(r) for r in frame["run_id"] if r.strip()})
    if len(run_ids) != 1:
        raise SheetError(f"{path}: the run_id column holds {len(run_ids)} different runs "
                         f"({', '.join(run_ids[:3]) or 'none'}); apply one run's sheet at a time")
    run_id = run_ids[0]
    run = ledger.run(run_id)
    if run is None:
        raise SheetError(f"{path}: the sheet is from run {run_id}, which is not in this project's "
                         f"ledger ({config.ledger_name}); apply it in the project that made it")
    if run.options.get("side_effects") is False:
        raise SheetError(f"{path}: the sheet is from run {run_id}, an eval (`crewbatch eval`, "
                         "side effects off): its tickets are a labelled dataset, not customers "
                         "waiting for a reply, so nothing in it is carried out")
    replayed = run.replay_of
    if replayed:
        raise SheetError(f"{path}: the sheet is from run {run_id}, a replay of run {replayed} "
                         "whose side effects were only simulated; decide on the sheet of run "
                         f"{replayed} (`crewbatch export {replayed} -o FILE`)")
    report = ReviewReport(run_id)
    # Only read here, never made: a new key could not verify a sheet signed with the lost one.
    key = export.review_key(config.runs_dir, create=False)
    desks = _DeskFactory(config)
    for number, (_, row) in enumerate(frame.iterrows(), start=2):
        ticket_id = _clean_id(row["ticket_id"]) or f"row {number}"
        raw_decision = row["decision"].strip().lower()
        if not raw_decision:
            report.undecided += 1
            continue
        decision = DECISIONS.get(raw_decision)
        if decision is None:
            report.problems.append(f"{ticket_id}: decision `{row['decision']}` is not one of "
                                   "approve, reject, edit; left as it is")
            continue
        if key is None:
            report.problems.append(
                f"{ticket_id}: refused: {config.runs_dir / export.KEY_FILE} is missing, so sheets "
                "exported before it was lost cannot be verified; export the sheet again with "
                f"`crewbatch export {run_id} -o FILE` and decide there; nothing was done")
            continue
        trail, refusal = _verify(ledger, key, run_id, row)
        if refusal:
            report.problems.append(f"{ticket_id}: refused: {refusal}; nothing was done")
            continue
        outcome = trail["outcome"]
        note = _unneutralise(row.get("reviewer_note", "")).strip()
        if outcome.decision:
            (report.unchanged if outcome.decision == decision else report.problems).append(
                f"{ticket_id}: already decided `{outcome.decision}`"
                + ("" if outcome.decision == decision else f"; `{decision}` not applied"))
            continue
        sheet_reply = _unneutralise(row.get("draft_reply", ""))
        if decision == "approve" and "draft_reply" in row.index and sheet_reply.strip() and \
                not _same(sheet_reply, outcome.draft_reply):
            report.warnings.append(f"{ticket_id}: draft_reply was changed in the sheet but the "
                                   "decision is `approve`, which sends the reviewed draft; use "
                                   "`edit` to send your text")
        _apply_one(config, ledger, desks, report, trail, decision, note, sheet_reply)
    return report


def _verify(ledger, key: bytes, run_id: str, row: pd.Series) -> tuple[dict | None, str]:
    """The trail of the outcome the row was exported for, or why the row must not act (ref
    forged or stale, another run's row, or a cell retyped to point it at something else)."""
    again = f"export the sheet again with `crewbatch export {run_id} -o FILE`"
    ref = _unneutralise(row["ref"]).strip().lstrip("'")
    match = export.REF.fullmatch(ref)
    if match is None:
        return None, (("the row has no `ref`" if not ref else
                       f"`ref` {_shown(ref, 40)} is not a reference crewbatch wrote") +
                      f"; {again}")
    outcome = ledger.review_outcome(int(match.group(1)))
    if outcome is None or not hmac.compare_digest(export.ref_for(key, outcome), ref):
        return None, (f"its ref {ref} does not match the ledger's record of the outcome it names "
                      "(the ref was edited, or the sheet was signed with another review.key or "
                      f"before the ticket changed); {again}")
    if outcome.run_id != run_id:
        return None, (f"its ref is for a row of run {outcome.run_id}, not of this sheet's run "
                      f"{run_id}; apply each run's own sheet")
    if not (_same(row["ticket_id"], outcome.ticket_id)
            or _clean_id(row["ticket_id"]) == _clean_id(outcome.ticket_id)):
        return None, (f"ticket_id was changed in the sheet (the row was exported for "
                      f"{outcome.ticket_id})")
    exported = {"customer": outcome.customer or "", "status": outcome.status,
                "actions": export.describe_actions(outcome.actions_json)}
    for column in CHECKED:
        if column in row.index and not _same(row[column], exported[column]):
            return None, (f"`{column}` was changed in the sheet ({_shown(row[column])}; the row "
                          f"was exported for {outcome.ticket_id} with "
                          f"{_shown(exported[column])})")
    return ledger.outcome_trail(outcome.outcome_id), ""


def _apply_one(config, ledger, desks, report, trail, decision, note, sheet_reply) -> None:
    outcome = trail["outcome"]
    ticket_id = outcome.ticket_id
    if outcome.status != Status.NEEDS_HUMAN.value:
        _already_final(config, ledger, report, outcome, decision, note)
        return
    if decision == "reject":
        ledger.record_review(outcome.outcome_id, decision, note, "closed by the reviewer")
        report.applied.append(f"{ticket_id}: reject: closed")
        return
    reply = sheet_reply.strip() if decision == "edit" else outcome.draft_reply
    if not reply.strip():
        report.problems.append(f"{ticket_id}: `{decision}` but there is no reply text to send")
        return
    draft = desks.draft(trail, reply)
    if decision == "edit":
        findings = desks.blocking_findings(ledger, trail, draft)
        if findings:
            report.problems.append(
                f"{ticket_id}: refused: the edited reply does not pass the gate: "
                + "; ".join(f"{f.check}: {f.detail}" for f in findings)
                + "; fix draft_reply and apply the sheet again; nothing was sent")
            return
    lines, refused = desks.execute(ledger, trail, draft)
    if refused:
        report.problems.append(f"{ticket_id}: policy still refuses: {'; '.join(refused)}; "
                               "nothing was done")
        return
    ledger.record_review(outcome.outcome_id, decision, note,
                         f"reviewer {decision}: " + "; ".join(lines))
    report.applied.append(f"{ticket_id}: {decision}: " + "; ".join(lines))


def _already_final(config, ledger, report, outcome, decision, note) -> None:
    """A decision on a ticket a person no longer decides: say what its status already means."""
    ticket_id, status = outcome.ticket_id, outcome.status
    if status == Status.APPROVED.value:
        done = _what_was_done(config, ledger, outcome)
        if decision == "approve":
            ledger.record_review(outcome.outcome_id, decision, note, "confirmed by the reviewer")
            report.applied.append(f"{ticket_id}: approve: confirmed (already carried out): {done}")
            return
        cannot = ("reject cannot undo that" if decision == "reject" else
                  "an edited reply cannot replace the one already queued")
        report.problems.append(f"{ticket_id}: already approved: {done}; {cannot} — nothing "
                               "recorded")
        return
    reason = cut(outcome.reason or outcome.error or "no reason recorded", 161)
    if status == Status.REJECTED.value and decision == "reject":
        ledger.record_review(outcome.outcome_id, decision, note, "closed by the reviewer")
        report.applied.append(f"{ticket_id}: reject: closed (the input record was already "
                              f"rejected at intake: {reason}; nothing was sent)")
        return
    meaning = {
        Status.REJECTED.value: f"rejected at intake ({reason}): nothing was sent to a model and "
                               "there is no draft",
        Status.SKIPPED.value: f"skipped ({reason}): this run did not process it; decide on it in "
                              "the sheet of the run that did",
        Status.FAILED.value: f"failed ({reason}): nothing was sent; the next run over its source "
                             f"(or `crewbatch retry {outcome.run_id}`) processes it again",
        PENDING: "still pending: the run stopped before it; the next run processes it",
        RUNNING: "still running in a run that has not finished; decide once it is final",
    }.get(status, f"{status}: not a ticket waiting for a person")
    cannot = ("reject cannot close it" if decision == "reject" else
              f"`{decision}` needs a needs_human ticket")
    report.problems.append(f"{ticket_id}: {meaning}; {cannot} — nothing recorded")


def _what_was_done(config, ledger, outcome) -> str:
    """What an approved ticket's run already did, with the reply's file as the reviewer finds it."""
    replies = []
    for effect in ledger.side_effects(outcome.outcome_id):
        if effect["kind"] == QUEUE_REPLY:
            target = Path(effect["detail"])
            try:
                target = target.relative_to(config.root)
            except ValueError:
                pass  # runs/ configured outside the project: the full path is the clearer one
            replies.append(str(target))
    queued = f"its reply was queued ({', '.join(replies)})" if replies else "its reply was queued"
    return f"{queued} and its actions performed"


class _DeskFactory:
    """Runs a reviewed plan through the same gate and policy-bound executor as a run."""

    def __init__(self, config):
        self.config = config
        self._ready = False
        self._gates: dict[float, object] = {}

    def _prepare(self) -> None:
        # CrewAI (under the executor's and researcher's tools) is imported only once a row needs
        # it, and through framework.prepare like in a run: no telemetry, storage under runs/.
        if self._ready:
            return
        from . import framework
        from .knowledge import KnowledgeBase, Orders

        framework.prepare(self.config.runs_dir / rundir.CREWAI)
        self.orders = Orders(self.config.orders_file)
        self.kb = KnowledgeBase(self.config.knowledge_dir)
        self._ready = True

    def draft(self, trail, reply: str):
        """The reviewed plan around the reply that is to be sent."""
        self._prepare()
        from .outputs import Draft, ProposedAction

        o = trail["outcome"]
        # The plan a reviewer approves is the final draft's: the actions the writer proposed and
        # the critic reviewed. Anything the executor attempted outside that plan (refused then,
        # and listed in the sheet) is never carried out by an approval.
        plan = [ProposedAction(kind=QUEUE_REPLY, reason="approved by the reviewer")]
        drafts = [s for s in trail["steps"] if s.step == "draft" and s.output_json]
        proposed = Draft.model_validate_json(drafts[-1].output_json).actions if drafts else []
        for action in proposed:
            if action.kind not in (QUEUE_REPLY, ESCALATE_TO_HUMAN) and action not in plan:
                plan.append(action)
        taxonomy = self.config.taxonomy
        return Draft(category=o.category or taxonomy.fallback_category,
                     priority=o.priority or taxonomy.default_priority,
                     language=o.language or "en", reply=reply, actions=plan)

    def blocking_findings(self, ledger, trail, draft) -> list:
        """The gate's blocking findings on a reviewer's edited reply, as for a run's draft."""
        self._prepare()
        from .gate import blocking
        from .research import Evidence, look_up, research_tools
        from .settings import RESEARCH_TOOLS

        ticket = ledger.outcome_ticket(trail["outcome"].outcome_id)
        # The evidence a run's researcher starts from, rebuilt from the order table and the
        # knowledge base for this ticket's customer: all three lookups, whatever agents.yaml
        # gives the researcher, since this is what the gate may count as known, not what a model
        # may read. Orders the ticket names that are another customer's are marked as such.
        evidence = Evidence()
        look_up(research_tools(list(RESEARCH_TOOLS), ticket, evidence, self.kb, self.orders),
                ticket)
        return blocking(self._gate(draft).check(draft, ticket, evidence))

    def _gate(self, draft):
        """A gate as the run's, except that the refunds in the plan a person now approves may be
        named as approved: their approval lifts the auto-approve limit for them, as it does in
        the executor (`reviewer_approved`); any larger amount is still an over-limit promise."""
        from .crew import policy_summary
        from .gate import Gate

        policy = self.config.policy
        limit = max([policy.refunds.auto_approve_limit] +
                    [a.amount for a in draft.actions if a.kind == REQUEST_REFUND])
        if limit not in self._gates:
            lifted = policy.model_copy(update={"refunds": policy.refunds.model_copy(
                update={"auto_approve_limit": limit})})
            config = dataclasses.replace(self.config, policy=lifted)
            self._gates[limit] = Gate.from_config(config, self.orders, self.kb,
                                                  extra_prompts=[policy_summary(policy)])
        return self._gates[limit]

    def execute(self, ledger, trail, draft) -> tuple[list[str], list[str]]:
        self._prepare()
        from .actions import ActionDesk, PolicyRefusal, perform

        o = trail["outcome"]
        ticket = ledger.outcome_ticket(o.outcome_id)
        plan = draft.actions
        # The refund caps across tickets and runs bind a reviewer too (the order total always;
        # the automatic caps are lifted by the approval).
        desk = ActionDesk(ticket, draft, plan, self.config.policy, self.orders,
                          reviewer_approved=True, history=ledger.refund_history)
        # An approval by a person supersedes an escalation to one (`draft` leaves it out).
        for action in plan:
            if action.kind != ESCALATE_TO_HUMAN:
                desk.call(action.kind, tool_args(action.kind, action.model_dump()))
        refused = [f"{d.kind}: {d.reason}" for d in desk.decisions if not d.allowed]
        if refused:
            return [], refused
        run_dir = rundir.run_dir(self.config.runs_dir, o.run_id)
        try:
            return perform(desk.decisions, ticket, draft, run_dir, ledger, o.outcome_id), []
        except PolicyRefusal as refusal:
            return [], [f"{REQUEST_REFUND}: {refusal}"]
