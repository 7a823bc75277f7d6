"""The check that every fact in the reply comes from the ticket or the research: order numbers,
tracking numbers, dates and amounts (never from the model's own notes)."""

from __future__ import annotations

from . import parsing as p
from .case import Case
from .patterns import (
    AMOUNT,
    BARE_DECIMAL,
    EMAIL,
    ORDER_ID,
    PERCENT,
    PLUS_PHONE,
    TRACKING,
    URL,
)
from .registry import check


@check("invented_fact", "critical",
       "every order number, tracking number, date and amount is in the ticket or the research")
def invented_fact(case: Case):
    reply, gate = case.reply, case.gate
    for order_id in sorted({o.upper() for o in ORDER_ID.findall(reply)}):
        owner = gate.order_owner.get(order_id)
        if order_id in case.foreign or (owner and owner != case.customer):
            continue  # reported as another customer's
        if order_id not in case.own_orders and order_id not in case.ticket_text.upper() \
                and order_id not in case.knowledge_text.upper():
            yield f"order number {order_id} is in neither the ticket nor the research"
    for token in sorted(set(TRACKING.findall(p.mask(case.masked, PLUS_PHONE).upper()))):
        digits = p.digits(token)
        if len(digits) < 6 or token in gate.tracking_owner and \
                gate.tracking_owner[token] != case.customer:
            continue
        if token not in case.grounded_upper and digits not in case.known_digits:
            yield f"tracking number {token} is in neither the ticket nor the research"
    for raw, meanings in p.date_spans(p.mask(reply, ORDER_ID, EMAIL, URL)):
        if not p.date_known(meanings, case.dates):
            yield f"the date {raw.strip()!r} is in neither the ticket nor the research"
    amounts = p.mask_phones(case.masked)
    for m in AMOUNT.finditer(amounts):
        values = p.amount_values(m.group("a") or m.group("b"))
        if values and not values & case.amounts:
            yield f"the amount {m.group(0).strip()!r} is in neither the ticket nor the research"
    for m in BARE_DECIMAL.finditer(p.mask(amounts, AMOUNT, PERCENT)):
        values = p.amount_values(m.group(0))
        if values and not values & case.amounts:
            yield f"the amount {m.group(0)!r} is in neither the ticket nor the research"
