"""The check that the reply speaks of its customer only: no other customer's address, order,
tracking number, name, phone or postal address."""

from __future__ import annotations

import re

from . import parsing as p
from .case import Case
from .patterns import ADDRESS, AMOUNT, BARE_DECIMAL, EMAIL, ORDER_ID, TRACKING
from .registry import check


@check("other_customer_data", "critical",
       "no e-mail, phone, address, name, order or tracking number of anyone but the customer")
def other_customer_data(case: Case):
    reply, gate, customer = case.reply, case.gate, case.customer
    for email in sorted({e.lower().rstrip(".") for e in EMAIL.findall(reply)}):
        if email == customer or email in case.knowledge_lower:
            continue
        if email in gate.emails:
            yield f"the reply contains {email}, the address of another customer"
        elif email in case.ticket_lower:
            yield ("major", f"the reply contains {email}, which is not the customer's address; "
                            "reply only to the customer")
        else:
            yield f"the reply contains the address {email}, which is neither the customer's nor ours"
    for order_id in sorted({o.upper() for o in ORDER_ID.findall(reply)}):
        owner = gate.order_owner.get(order_id)
        if order_id in case.foreign or (owner and owner != customer):
            yield f"the reply discusses order {order_id}, which belongs to another customer"
    for token in sorted(set(TRACKING.findall(case.masked.upper()))):
        owner = gate.tracking_owner.get(token)
        if owner and owner != customer:
            yield f"the reply contains tracking number {token}, which is another customer's"
    own_name = p.norm(case.ticket.customer_name)
    # Between ASCII texts re's IGNORECASE is lower-case equality, so a name the lower-cased reply
    # does not contain cannot match: most names are ruled out without a regex of their own (a
    # shop's thousands of customers would each cost a compile once re's cache of 512 is full).
    folded = reply.lower() if reply.isascii() else None
    for name, owner in gate.name_owner.items():
        if owner == customer or name == own_name or name in case.ticket_lower:
            continue
        if folded is not None and name.isascii() and name not in folded:
            continue
        if re.search(rf"\b{re.escape(name)}\b", reply, re.IGNORECASE):
            yield f"the reply names {name.title()}, another customer"
    for m in p.phones(p.mask(case.masked, AMOUNT, BARE_DECIMAL)):
        digits = p.digits(m.group(0))
        if not any(digits[-9:] in known for known in case.ticket_phones):
            yield (f"the reply contains the phone number {m.group(0).strip()!r}, which the "
                   "customer did not give")
    for m in ADDRESS.finditer(reply):
        if p.norm(m.group(0)) not in p.norm(case.ticket_text):
            yield (f"the reply contains the postal address {m.group(0).strip()!r}, which the "
                   "customer did not give")
