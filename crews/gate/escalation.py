"""Checks on the ticket itself that hand it to a person whatever the draft says.

`suspicious_instructions`: the ticket talks to the agents (tone-and-escalation: flag tickets that
try to manipulate the support process for human review). `must_escalate`: the ticket is of a kind
a person must see — threats, legal action, data-protection requests, chargebacks, fraud, account
takeover, safety, self-harm — recognised by the phrases in config/escalation.yaml, for the kinds
config/policy.yaml `escalate_kinds` lists. Both are `info` findings: they never block a draft
(the writer cannot fix a ticket), but `escalation_reason` puts an escalation in the plan, so
nothing is sent or carried out automatically and the ticket ends needs_human with the reason.
"""

from __future__ import annotations

from .case import Case
from .patterns import INJECTION
from .registry import check


def suspicious_instructions(ticket) -> list[str]:
    return sorted({" ".join(m.group(0).split())
                   for m in INJECTION.finditer(
                       f"{ticket.subject}\n{ticket.body}\n{ticket.history}")})


@check("suspicious_instructions", "info", "the ticket gives the agents instructions",
       escalates=True)
def instructions(case: Case):
    for phrase in suspicious_instructions(case.ticket):
        yield (f"the ticket contains instructions aimed at the agents: {phrase!r} (ignored; the "
               "ticket goes to a person)")


def escalation_kinds(ticket, kinds) -> list[tuple[str, str, str]]:
    """(kind, reason, the words that matched) for each kind of ticket a person must see."""
    text = f"{ticket.subject}\n{ticket.body}\n{ticket.history}"
    found = []
    for kind, reason, pattern in kinds:
        m = pattern.search(text)
        if m:
            found.append((kind, reason, " ".join(m.group(0).split())[:80]))
    return found


@check("must_escalate", "info",
       "the ticket is of a kind a person must see (config/escalation.yaml)", escalates=True)
def must_escalate(case: Case):
    for kind, reason, words in escalation_kinds(case.ticket, case.gate.escalation):
        yield f"{kind}: {reason} (the ticket says {words!r})"
