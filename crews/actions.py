"""The policy-bound executor's desk: what config/policy.yaml allows, decided in code.

`ActionDesk` decides each action the executor's tools (action_tools.py) hand it — whatever the
model or the ticket text asks: it must be in the plan the critic approved, on an order of the
ticket's own customer, and within policy (a refund above the auto-approve limit is refused and
goes to a person). The desk only *stages* actions; `perform` carries out the staged side effects
after the ticket's outcome is decided, each keyed by ticket, content and action in the ledger's
side_effects table, so a re-run, resume or retry never sends a second reply or refund. No CrewAI
here: the engine carries out a crew's result without importing it.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from . import files, rundir
from .action_kinds import (
    ACTIONS,
    ESCALATE_TO_HUMAN,
    QUEUE_REPLY,
    REQUEST_REFUND,
    TAG_TICKET,
)
from .knowledge import Orders
from .ledger import RefundHistory, RefundRequest
from .outputs import Draft, ProposedAction
from .settings import Policy, RefundPolicy, slug
from .ticket import Ticket

SUPPORT_ADDRESS = "support@crewbatch.invalid"


@dataclass
class Decision:
    kind: str
    args: dict[str, Any]
    allowed: bool
    reason: str = ""
    # A refund's caps across tickets and runs, checked again against the ledger in the
    # transaction that records it (`perform`): another ticket may have refunded the same order
    # or customer since this one was staged.
    guard: Callable[[RefundHistory], str | None] | None = field(default=None, repr=False,
                                                                 compare=False)
    by_reviewer: bool = False  # staged by `review apply`: a person approved it


class PolicyRefusal(Exception):
    """A staged action that policy refuses at the moment it would be carried out."""


@dataclass
class ActionDesk:
    """One ticket's executor state: the approved plan, and each call's decision."""

    ticket: Ticket
    draft: Draft
    plan: list[ProposedAction]
    policy: Policy
    orders: Orders
    decisions: list[Decision] = field(default_factory=list)
    # A person approved this plan in `crewbatch review apply`: the auto-approve limit (which
    # exists to send big refunds to a person) no longer applies; every other rule still does.
    reviewer_approved: bool = False
    # The ledger's refunds so far on an order or for a customer (`Ledger.refund_history`);
    # without it (unit tests) only this ticket's own refunds are known.
    history: Callable[[str, str], RefundHistory] | None = None
    # The end of the per-customer caps' rolling period (default: now). A replay checks the caps
    # as they stood when the run it replays started.
    as_of: datetime | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _decide(self, kind: str, args: dict, refusal: str | None, guard=None) -> str:
        with self._lock:
            self.decisions.append(Decision(kind, args, refusal is None, refusal or "", guard,
                                           self.reviewer_approved))
        if refusal:
            return json.dumps({"done": False, "refused": refusal})
        return json.dumps({"done": True, "action": kind, **args})

    def _planned(self, kind: str, **match: Any) -> ProposedAction | None:
        for action in self.plan:
            if action.kind == kind and all(getattr(action, k) == v for k, v in match.items()):
                return action
        return None

    def _common_refusal(self, kind: str) -> str | None:
        if kind not in self.policy.allowed_actions:
            return f"{kind} is not an allowed action in config/policy.yaml"
        return None

    def queue_reply(self) -> str:
        refusal = self._common_refusal(QUEUE_REPLY)
        if refusal is None and self._planned(QUEUE_REPLY) is None:
            refusal = "sending a reply is not in the approved plan"
        return self._decide(QUEUE_REPLY, {}, refusal)

    def tag_ticket(self, queue: str) -> str:
        queue = (queue or "").strip()
        refusal = self._common_refusal(TAG_TICKET)
        if refusal is None and queue not in self.policy.queues:
            refusal = f"queue `{queue}` is not one of the queues in policy: {', '.join(self.policy.queues)}"
        if refusal is None and self._planned(TAG_TICKET, queue=queue) is None:
            refusal = f"routing to `{queue}` is not in the approved plan"
        return self._decide(TAG_TICKET, {"queue": queue}, refusal)

    def call(self, kind: str, args: dict[str, Any]) -> str:
        """Check one action of a kind in `action_kinds.ACTIONS` by its method, named after it."""
        return getattr(self, ACTIONS[kind].name)(**args)

    def refuse(self, kind: str, args: dict, reason: str) -> str:
        """Record an action that cannot even be checked (unknown kind, missing arguments)."""
        return self._decide(kind, args, reason)

    def escalate_to_human(self, reason: str) -> str:
        # Escalating only narrows what happens, so it is always allowed.
        return self._decide(ESCALATE_TO_HUMAN, {"reason": (reason or "").strip()[:500]},
                            self._common_refusal(ESCALATE_TO_HUMAN))

    def request_refund(self, order_id: str, amount: float, currency: str) -> str:
        order_id = (order_id or "").strip().upper()
        args = {"order_id": order_id, "amount": round(float(amount), 2),
                "currency": (currency or "").strip().upper()}
        refusal = self.refund_refusal(**args)
        guard = None
        if refusal is None:
            total = self._order_total(args["order_id"])
            guard = functools.partial(cap_refusal, self.policy.refunds, args["order_id"], total,
                                      args["amount"], args["currency"], self.reviewer_approved,
                                      now=self.as_of)
            if self.history is not None:
                history = self.history(args["order_id"], self.ticket.customer)
                # This very refund, reserved by an earlier attempt of the ticket (a run killed
                # after carrying it out, redone from its checkpoints), is not a second refund.
                mine = idempotency_key(self.ticket, Decision(REQUEST_REFUND, args, True))
                history.rows = [r for r in history.rows if r["idempotency_key"] != mine]
                refusal = guard(history)
        return self._decide(REQUEST_REFUND, args, refusal, guard)

    def _order_total(self, order_id: str) -> float:
        try:
            return float((self.orders.get(order_id) or {}).get("total") or 0)
        except ValueError:
            return 0.0

    def refund_refusal(self, order_id: str, amount: float, currency: str) -> str | None:
        """Why policy refuses this refund, or None if it may be requested automatically."""
        refusal = self._common_refusal(REQUEST_REFUND)
        if refusal:
            return refusal
        order = self.orders.get(order_id)
        if order is None:
            return f"order {order_id or '(none)'} does not exist"
        if self.policy.require_customer_match and order["customer"] != self.ticket.customer:
            return f"order {order_id} does not belong to this ticket's customer"
        order_currency = (order.get("currency") or "").upper()
        if currency and order_currency and currency != order_currency:
            return f"the refund is in {currency} but order {order_id} was paid in {order_currency}"
        if amount <= 0:
            return "a refund amount must be positive"
        try:
            total = float(order.get("total") or 0)
        except ValueError:
            total = 0.0
        if total and amount > total + 0.005:
            return f"the refund of {amount:.2f} is more than the order total of {total:.2f}"
        limit = self.policy.refunds.auto_approve_limit
        if amount > limit and not self.reviewer_approved:
            return (f"a refund of {amount:.2f} {order_currency} is above the auto-approve limit of "
                    f"{limit:g} {order_currency}; a person must approve it")
        with self._lock:
            done = sum(1 for d in self.decisions if d.kind == REQUEST_REFUND and d.allowed)
        if done >= self.policy.refunds.max_refunds_per_ticket:
            return (f"policy allows at most {self.policy.refunds.max_refunds_per_ticket} refund "
                    "request(s) per ticket")
        planned = self._planned(REQUEST_REFUND, order_id=order_id)
        if planned is None:
            return f"a refund on {order_id} is not in the approved plan"
        if amount > planned.amount + 0.005:
            return f"the approved plan refunds {planned.amount:.2f}, not {amount:.2f}"
        return None


def cap_refusal(caps: RefundPolicy, order_id: str, total: float, amount: float, currency: str,
                reviewer_approved: bool, history: RefundHistory, now: datetime | None = None
                ) -> str | None:
    """Why the refunds already recorded (any ticket, any run) leave no room for this one.

    An order is never refunded beyond its total, by anyone. Automatic refunds are capped per
    order (`max_auto_refunds_per_order`) and per customer in a rolling period
    (`per_customer`: count, and amount per currency); a person's approval lifts those two.
    """
    done = history.on_order()
    refunded = sum(r["amount"] for r in done)
    if total and refunded + amount > total + 0.005:
        return (f"order {order_id} has already been refunded {refunded:.2f} of its "
                f"{total:.2f} total in {len(done)} earlier request(s); {amount:.2f} more would "
                "exceed it")
    if reviewer_approved:
        return None
    automatic = [r for r in done if r["automatic"]]
    if len(automatic) >= caps.max_auto_refunds_per_order:
        return (f"order {order_id} already had {len(automatic)} automatic refund(s) (policy "
                f"allows {caps.max_auto_refunds_per_order} per order); a person must approve "
                "another")
    cap = caps.per_customer
    since = ((now or datetime.now(timezone.utc)) - timedelta(days=cap.period_days)
             ).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    recent = history.of_customer_since(since)
    if len(recent) >= cap.max_refunds:
        return (f"this customer already had {len(recent)} automatic refund(s) in the last "
                f"{cap.period_days} days (policy allows {cap.max_refunds}); a person must "
                "approve another")
    spent = sum(r["amount"] for r in recent if r["currency"] == currency.upper())
    if spent + amount > cap.max_amount + 0.005:
        return (f"this customer already had {spent:.2f} {currency} refunded automatically in "
                f"the last {cap.period_days} days; {amount:.2f} more is over the "
                f"{cap.max_amount:g} {currency} per-customer limit, so a person must approve it")
    return None


# --- carrying out staged actions -----------------------------------------------------------------


def idempotency_key(ticket: Ticket, decision: Decision) -> str:
    args = json.dumps(decision.args, sort_keys=True, ensure_ascii=False)
    return f"{ticket.key}|{ticket.content_hash}|{decision.kind}|{args}"


def perform(decisions: list[Decision], ticket: Ticket, draft: Draft, run_dir: Path, ledger,
            outcome_id: int, replay_of: str | None = None) -> list[str]:
    """Carry out the allowed, staged side effects exactly once; return a line per action.

    In a replay `ledger` is the replay's `SimulatedEffects` (nothing is recorded as done, no
    real refund is reserved) and the files it writes say which run they replay (`replay_of`).

    Refunds are recorded first, all in one ledger transaction that checks their caps again
    (`PolicyRefusal` if another ticket used the room meanwhile: then nothing at all is done).
    A reply or refund request is a file: its target is fixed in the ledger before it is written
    (`Ledger.intend_side_effect`) and marked performed after, so a crash between the two makes
    the next run rewrite that same file, never a second one in its own folder. File names
    carry the outcome id, so two tickets never share a file whatever their ids.
    """
    allowed = [d for d in decisions if d.allowed]
    refusal = ledger.reserve_refunds([
        RefundRequest(idempotency_key(ticket, d), outcome_id, d.args["order_id"],
                      ticket.customer, d.args["amount"], d.args["currency"],
                      automatic=not d.by_reviewer, guard=d.guard)
        for d in allowed if d.kind == REQUEST_REFUND and d.guard is not None])
    if refusal:
        raise PolicyRefusal(refusal)
    lines = []
    name = f"{outcome_id}-{slug(ticket.key)[:60]}"
    for d in allowed:
        key = idempotency_key(ticket, d)
        if d.kind in (QUEUE_REPLY, REQUEST_REFUND):
            planned = (rundir.reply(run_dir, name) if d.kind == QUEUE_REPLY
                       else rundir.refund_request(run_dir, name))
            target, done = ledger.intend_side_effect(key, outcome_id, d.kind, str(planned))
            if done:
                lines.append(f"{d.kind}: already done earlier, not repeated")
                continue
            if d.kind == QUEUE_REPLY:
                write_outbox(ticket, draft.reply, Path(target), replay_of)
            else:
                _write_json(Path(target), {"ticket_id": ticket.ticket_id,
                                           "customer": ticket.customer, **d.args,
                                           **({"simulated_in_replay_of": replay_of}
                                              if replay_of else {})})
            ledger.side_effect_performed(key)
            lines.append(f"{d.kind}: {target}")
        elif ledger.record_side_effect(key, outcome_id, d.kind,
                                       detail := json.dumps(d.args, ensure_ascii=False)):
            lines.append(f"{d.kind}: {detail}")
        else:
            lines.append(f"{d.kind}: already done earlier, not repeated")
    return lines


def write_outbox(ticket: Ticket, reply: str, target: Path, replay_of: str | None = None) -> Path:
    """Write the reply as an .eml at `target` (a name fixed by ticket and content); a replay's
    copy carries `X-Crewbatch-Replay-Of`, so nothing that picks up outboxes mistakes it."""
    msg = EmailMessage()
    msg["From"] = SUPPORT_ADDRESS
    msg["To"] = ticket.customer or "unknown-customer@invalid"
    subject = " ".join(ticket.subject.split()) or f"Your request {ticket.ticket_id}"
    msg["Subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}"
    msg["Date"] = format_datetime(datetime.now(timezone.utc))
    msg["Message-ID"] = make_msgid(idstring=slug(ticket.key), domain="crewbatch.invalid")
    msg["X-Crewbatch-Ticket"] = ticket.ticket_id
    if replay_of:
        msg["X-Crewbatch-Replay-Of"] = replay_of
    msg.set_content(reply)
    return _atomic_write(target, msg.as_bytes())


def _write_json(target: Path, data: dict) -> Path:
    return _atomic_write(target, json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8"))


def _atomic_write(target: Path, data: bytes) -> Path:
    files.write_atomically(target, data)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):  # an attempt killed mid-write
        stale.unlink(missing_ok=True)
    return target
