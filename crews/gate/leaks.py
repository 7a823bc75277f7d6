"""Checks that nothing meant for us reaches the customer: prompts, tool output, internal notes,
agents-only guidance from the knowledge base, credentials, the customer's own secrets."""

from __future__ import annotations

from . import parsing as p
from .case import Case
from .patterns import CARD, KEY, LEAK, TOOL_JSON
from .registry import check


@check("internal_leak", "critical",
       "no prompt text, tool output, internal note, agents-only guidance or credential")
def internal_leak(case: Case):
    reply, gate = case.reply, case.gate
    for m in LEAK.finditer(reply):
        yield f"internal text {m.group(0)!r} in the reply"
    for m in KEY.finditer(reply):
        yield f"a credential-like string {m.group(0)[:12]!r}… in the reply"
    for m in TOOL_JSON.finditer(reply):
        yield f"tool output (JSON {m.group(0).strip()!r}) in the reply"
    said = p.shingles(reply)
    for shingle in sorted(said & gate.prompt_shingles)[:1]:
        yield f"the reply repeats the agents' instructions: {shingle!r}…"
    internal = set(gate.internal_shingles)
    for text in case.internal_texts:
        internal |= p.shingles(text) - gate.customer_shingles
    for shingle in sorted(said & internal)[:1]:
        yield (f"the reply quotes knowledge written for the support team only: {shingle!r}…; "
               "say it in your own words for the customer, or leave it out")
    note = " ".join((case.draft.internal_note or "").split())
    if len(note) >= 25 and note.lower() in p.norm(reply):
        yield "the internal note is copied into the reply"


@check("sensitive_data", "critical", "no password the customer sent, no card number")
def sensitive_data(case: Case):
    for secret in case.ticket_passwords:
        if secret in case.reply:
            yield "the reply repeats the password the customer sent; never repeat it"
    for m in CARD.finditer(case.reply):
        digits = p.digits(m.group(0))
        if p.luhn(digits) and digits not in case.known_digits:
            yield f"a card number ending {digits[-4:]} in the reply"



