"""One draft under review: the reply, and everything it may draw on, worked out once.

A `Case` is what every check reads: the ticket (with an e-mail thread's history, part of what
the customer told us), the researcher's tool results (the customer's own orders, the knowledge
sections found), the run-wide facts the `Gate` prepared (every order's owner, the knowledge
base's numbers), and the values the checks compare against — amounts, dates, tracking numbers.
"""

from __future__ import annotations

from decimal import Decimal
from functools import cached_property
from typing import TYPE_CHECKING

from . import parsing as p
from .patterns import (
    EMAIL,
    ISO_DATE,
    KEY,
    NUMBER,
    NUMERIC_DATE,
    ORDER_ID,
    PASSWORD,
    TIME,
    TRACKING,
    URL,
    WORDS,
)

if TYPE_CHECKING:
    from ..outputs import Draft
    from ..research import Evidence
    from ..ticket import Ticket
    from . import Gate


class Case:
    def __init__(self, gate: Gate, draft: Draft, ticket: Ticket, evidence: Evidence):
        self.gate, self.draft, self.ticket, self.evidence = gate, draft, ticket, evidence
        self.reply = draft.reply or ""
        self.customer = ticket.customer.lower()
        self.ticket_text = f"{ticket.subject}\n{ticket.body}\n{ticket.history}".rstrip()
        self.own_orders = {o.upper(): o for o in evidence.orders()}
        self.foreign = {str(i["args"].get("order_id", "")).upper() for i in evidence.items
                        if i["result"].get("belongs_to_other_customer")}
        found = [s for i in evidence.items for s in i["result"].get("sections", [])]
        sections = "\n\n".join(s.get("text", "") for s in found)
        self.knowledge_text = sections
        self.internal_texts = [s.get("text", "") for s in found if s.get("audience") == "agents"]
        policy_text = gate.knowledge if gate.knowledge is not None else sections
        self.knowledge_lower = f"{sections}\n{policy_text}".lower()
        order_values = [v for i in evidence.items for o in i["result"].get("orders", [])
                        for v in p.flatten(o)]
        self.order_words = set(WORDS.findall(" ".join(order_values).lower()))
        grounded = "\n".join([self.ticket_text, ticket.received_at, *order_values, sections])
        self.grounded_upper = grounded.upper()
        self.known_digits = {p.digits(t) for t in TRACKING.findall(self.grounded_upper)}
        self.dates = p.dates(grounded)
        self.order_totals = {oid: min(p.amount_values(str(o.get("total", ""))) or {Decimal(0)})
                             for oid, o in evidence.orders().items()}
        self.order_totals.update({k: v for k, v in gate.order_total.items()
                                  if gate.order_owner.get(k) == self.customer})
        sources = p.mask(f"{self.ticket_text}\n{sections}", ISO_DATE, NUMERIC_DATE, TIME,
                         ORDER_ID, EMAIL, URL)
        sources = p.mask_phones(sources)
        self.amounts: set[Decimal] = set(self.order_totals.values())
        self.amounts.add(Decimal(str(gate.policy.refunds.auto_approve_limit)).quantize(
            Decimal("0.01")))
        for m in NUMBER.finditer(sources):
            self.amounts |= p.amount_values(m.group(0))
        self.ticket_phones = {p.digits(m.group(0)) for m in p.phones(
            p.mask(self.ticket_text, ISO_DATE, ORDER_ID))}
        self.ticket_passwords = {m.group(1).rstrip(".,;")
                                 for m in PASSWORD.finditer(self.ticket_text)}
        if gate.knowledge is not None:  # the same for every ticket: worked out once per run
            self.policy_percentages = gate.policy_percentages
            self.policy_durations = gate.policy_durations | p.durations(self.ticket_text)
        else:
            self.policy_percentages = p.percentages(policy_text)
            self.policy_durations = p.durations(f"{policy_text}\n{self.ticket_text}")

    @cached_property
    def ticket_lower(self) -> str:
        return self.ticket_text.lower()

    @cached_property
    def masked(self) -> str:
        """The reply with addresses, links, keys, dates, times and order numbers blanked out,
        so the number-reading checks do not read an order number as an amount."""
        return p.mask(self.reply, EMAIL, URL, KEY, ISO_DATE, NUMERIC_DATE, TIME, ORDER_ID)
