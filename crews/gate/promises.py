"""Checks that the reply promises only what policy allows: no refund above the auto-approve
limit as done, no discount, code or percentage the knowledge base does not state, no delivery
guarantee or deadline of its own, no link the knowledge base does not give."""

from __future__ import annotations

import re
from decimal import Decimal

from ..action_kinds import REQUEST_REFUND
from . import parsing as p
from .case import Case
from .patterns import (
    AMOUNT,
    BARE_DECIMAL,
    CODE,
    COMMITMENT,
    DISCOUNT_WORD,
    DONE,
    EMAIL,
    GUARANTEE,
    HEDGE,
    ISO_DATE,
    NEGATION,
    NOT_DONE,
    OFFER,
    ORDER_ID,
    PERCENT,
    REFUND_WORD,
    SOFTENER,
    TIME,
    URL,
)
from .registry import check


@check("over_policy_promise", "critical",
       "no refund above the auto-approve limit promised as done")
def over_policy_promise(case: Case):
    limit = Decimal(str(case.gate.policy.refunds.auto_approve_limit)).quantize(Decimal("0.01"))
    action_amounts = [Decimal(str(a.amount)).quantize(Decimal("0.01"))
                      for a in case.draft.actions if a.kind == REQUEST_REFUND]
    for sentence in p.sentences(case.reply):
        done = DONE.search(sentence) and not NOT_DONE.search(sentence)
        if not REFUND_WORD.search(sentence) or not (
                done or COMMITMENT.search(sentence) and not HEDGE.search(sentence)):
            continue
        named = [max(p.amount_values(m.group("a") or m.group("b")) or {Decimal(0)})
                 for m in AMOUNT.finditer(sentence)]
        named += [max(p.amount_values(m.group(0))) for m in BARE_DECIMAL.finditer(
            p.mask(sentence, AMOUNT, ISO_DATE)) if p.amount_values(m.group(0))]
        if not named:
            named = action_amounts + [case.order_totals.get(o.upper(), Decimal(0))
                                      for o in ORDER_ID.findall(sentence)]
        over = [a for a in named if a > limit]
        if over:
            yield (f"the reply promises a refund of {max(over):.2f} as done "
                   f"({sentence.strip()!r}), above the auto-approve limit of {limit:g}; say a "
                   "supervisor is reviewing it instead")


@check("unsupported_discount", "critical",
       "no discount, credit, code or percentage the knowledge base does not state")
def unsupported_discount(case: Case):
    for sentence in p.sentences(case.reply):
        if DISCOUNT_WORD.search(sentence) and OFFER.search(sentence) and \
                not NEGATION.search(sentence) and "newsletter" not in sentence.lower():
            yield (f"the reply offers a discount or credit that policy does not allow: "
                   f"{sentence.strip()!r}")
    for m in CODE.finditer(case.reply):
        if m.group(1) not in case.knowledge_text and m.group(1) not in case.ticket_text:
            yield (f"the reply gives the code {m.group(1)!r}, which the knowledge base does not "
                   "contain")
    for m in PERCENT.finditer(case.reply):
        values = p.amount_values(m.group(1))
        if values and not values & case.policy_percentages:
            yield f"the percentage {m.group(0)!r} is not in the knowledge base"


@check("unsupported_deadline", "major",
       "no delivery guarantee, no duration the knowledge base or the ticket does not state")
def unsupported_deadline(case: Case):
    for sentence in p.sentences(case.reply):
        if GUARANTEE.search(sentence) and not SOFTENER.search(sentence):
            yield (f"the reply guarantees a delivery date or time: {sentence.strip()!r}; "
                   "estimated delivery dates are estimates, not guarantees")
    for n, high, unit in sorted(p.durations(p.mask(case.reply, ISO_DATE, TIME))):
        if (n, high, unit) in case.policy_durations or \
                any(h == n and u == unit for _, h, u in case.policy_durations if n == high):
            continue
        span = f"{n}" if n == high else f"{n}–{high}"
        yield (f"the reply commits to {span} {unit}(s), which neither the knowledge base nor the "
               "ticket states")


@check("unknown_link", "major", "every link is one the knowledge base gives")
def unknown_link(case: Case):
    for m in URL.finditer(p.mask(case.reply, EMAIL)):
        link = m.group(0).rstrip(".,;:!?").lower()
        domain = re.sub(r"^(?:https?://)?(?:www\.)?", "", link).split("/")[0]
        if domain and domain not in case.knowledge_lower:
            yield f"the link {m.group(0).rstrip('.,;:!?')!r} is not in the knowledge base"
