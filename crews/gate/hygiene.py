"""Checks on the reply as a piece of customer e-mail: present, short enough, its own words,
plain text, no template left unfilled."""

from __future__ import annotations

import re

from . import parsing as p
from .case import Case
from .patterns import CODE_OR_MARKUP, ECHO, PLACEHOLDER
from .registry import check


@check("empty_reply", "critical", "the draft has reply text at all")
def empty_reply(case: Case):
    if not case.reply.strip():
        yield "the draft has no reply text"


@check("echoes_ticket", "major", f"no {ECHO} or more words pasted from the ticket")
def echoes_ticket(case: Case):
    """Ticket text pasted into the reply. Words of the customer's order records (item names,
    numbers) do not count as copied: "the Stoneware Dinner Plates (set of 6) from order
    NW-10451" is a fact, not an echo."""
    copied = (p.shingles(case.reply, ECHO, skip=case.order_words)
              & p.shingles(case.ticket.body, ECHO, skip=case.order_words)) - case.gate.kb_echo
    if copied:
        yield f"the reply copies the ticket word for word ({sorted(copied)[0]!r}…); answer it instead"


@check("code_in_reply", "major", "no code or markup (a reply is a plain e-mail)")
def code_in_reply(case: Case):
    for m in CODE_OR_MARKUP.finditer(case.reply):
        yield f"code or markup {m.group(0).strip()[:40]!r} in the reply"


@check("too_long", "major", "the reply is within limits.max_reply_chars")
def too_long(case: Case):
    limit = case.gate.limits.max_reply_chars
    if len(case.reply) > limit:
        yield (f"the reply has {len(case.reply)} characters; the limit is {limit} "
               "(limits.max_reply_chars)")


@check("placeholder", "major", "no unfilled template placeholder ({name}, [Customer], TODO)")
def placeholder(case: Case):
    reply = case.reply
    for m in PLACEHOLDER.finditer(reply):
        before, after = reply[max(0, m.start() - 40):m.start()], reply[m.end():m.end() + 40]
        quoted = re.search(r"[\"“‘'`][^\"“”‘’'`\n]*$", before) and \
            re.match(r"^[^\"“”‘’'`\n]*[\"”’'`]", after)
        if quoted and m.group(0).lower() in case.ticket_lower:
            continue  # quoting what the customer saw is not a placeholder of ours
        yield f"unfilled placeholder {m.group(0)!r} in the reply"
