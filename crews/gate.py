"""Deterministic checks on a draft, run in code beside the critic model.

A model critic is usually right; these checks are always right about what they cover, and a draft
with a blocking finding (severity major or critical) is never approved, whatever the critic says.
Each finding names the check and quotes its evidence so the writer can fix it and a reviewer can
see why. Facts in the reply (order numbers, amounts, tracking numbers, e-mail addresses) must come
from the ticket or the researcher's evidence.
"""

from __future__ import annotations

import re

from .outputs import Draft, Finding
from .research import Evidence
from .settings import Limits, Policy
from .ticket import Ticket

BLOCKING = ("major", "critical")
ORDER_ID = re.compile(r"\b[A-Z]{2,4}-\d{4,8}\b")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
PLACEHOLDER = re.compile(r"\{\{?\s*[\w .-]+\s*\}?\}|\[(?:customer|your|agent|name|order|insert|"
                         r"date|amount)[^\]]*\]|<(?:customer|name|order|insert)[^>]*>|\bTODO\b|"
                         r"\bXXX+\b|\bTBD\b", re.IGNORECASE)
LEAK = re.compile(r"system prompt|api[_ -]?key|sk-[A-Za-z0-9]{8,}|OPENAI_|</?ticket>|"
                  r"internal_note|search_knowledge|lookup_order|customer_orders|request_refund\(|"
                  r"you are (?:a|the) (?:support )?(?:researcher|writer|critic|executor)",
                  re.IGNORECASE)
INJECTION = re.compile(
    r"ignore (?:all |any )?(?:previous|prior|above|earlier) (?:instructions|rules|prompts)|"
    r"disregard (?:the|all|your) (?:previous |prior )?(?:instructions|rules|policy)|"
    r"(?:system|developer)\s*(?:prompt|message)?\s*:|the critic is (?:disabled|off)|"
    r"(?:print|reveal|show|repeat) (?:me )?(?:your|the) (?:full )?(?:system )?(?:prompt|instructions)|"
    r"api[_ -]?key|you are now|act as (?:an? )?(?:admin|administrator|developer)|"
    r"mark (?:this|it) (?:as )?approved|approve (?:a |the )?(?:full )?refund",
    re.IGNORECASE)
PROMISE = re.compile(r"\b(?:we have|we've|i have|i've|has been|have been|will be|we will|we'll)\s+"
                     r"(?:\w+\s+)?(?:refunded|issued|processed|credited|approved)", re.IGNORECASE)

STOPWORDS = {
    "en": ["the", "and", "you", "your", "is", "are", "have", "has", "for", "with", "this", "that", "not", "please", "thanks", "order", "my", "we", "it"],
    "de": ["der", "die", "das", "und", "ich", "nicht", "ist", "ein", "eine", "mit", "sie", "bitte", "danke", "meine", "bestellung", "wurde", "noch"],
    "es": ["el", "la", "los", "las", "y", "que", "no", "es", "un", "una", "con", "por", "para", "mi", "pedido", "gracias", "hola", "está"],
    "fr": ["le", "la", "les", "et", "je", "ne", "pas", "est", "un", "une", "avec", "pour", "mon", "ma", "commande", "merci", "bonjour", "vous"],
    "nl": ["de", "het", "en", "ik", "niet", "is", "een", "met", "voor", "mijn", "bestelling", "bedankt", "u", "je"],
    "it": ["il", "la", "e", "che", "non", "è", "un", "una", "con", "per", "mio", "ordine", "grazie", "sono"],
    "pt": ["o", "a", "os", "as", "e", "que", "não", "é", "um", "uma", "com", "para", "meu", "pedido", "obrigado"],
}


def detect_language(text: str) -> str:
    """A small stopword vote; good enough to notice a German ticket answered in English."""
    tokens = re.findall(r"[^\W\d_]+", (text or "").lower())
    if not tokens:
        return "en"
    scores = {lang: sum(1 for t in tokens if t in set(words)) for lang, words in STOPWORDS.items()}
    best = max(scores, key=lambda k: (scores[k], k == "en"))
    return best if scores[best] >= 2 else "en"


def suspicious_instructions(ticket: Ticket) -> list[str]:
    return sorted({m.group(0) for m in INJECTION.finditer(f"{ticket.subject}\n{ticket.body}")})


def check_draft(draft: Draft, ticket: Ticket, evidence: Evidence, policy: Policy,
                limits: Limits) -> list[Finding]:
    findings: list[Finding] = []

    def add(check: str, severity: str, detail: str) -> None:
        findings.append(Finding(check=check, severity=severity, detail=detail))

    reply = draft.reply or ""
    if not reply.strip():
        add("empty_reply", "critical", "the draft has no reply text")
        return findings
    if len(reply) > limits.max_reply_chars:
        add("too_long", "major", f"the reply has {len(reply)} characters; the limit is "
                                 f"{limits.max_reply_chars} (limits.max_reply_chars)")
    for m in PLACEHOLDER.finditer(reply):
        add("placeholder", "major", f"unfilled placeholder {m.group(0)!r} in the reply")
    for m in LEAK.finditer(reply):
        add("internal_leak", "critical", f"internal text {m.group(0)!r} in the reply")

    own_orders = evidence.orders()
    foreign = {str(i["args"].get("order_id", "")).upper() for i in evidence.items
               if i["result"].get("belongs_to_other_customer")}
    ticket_text = f"{ticket.subject}\n{ticket.body}"
    evidence_text = "\n".join(evidence.texts())
    knowledge_text = "\n".join(s["text"] for i in evidence.items
                               for s in i["result"].get("sections", []))
    for order_id in sorted(set(ORDER_ID.findall(reply))):
        if order_id in foreign:
            add("other_customer_data", "critical",
                f"the reply discusses order {order_id}, which belongs to another customer")
        elif order_id not in own_orders and order_id not in ticket_text \
                and order_id not in knowledge_text:
            add("invented_fact", "critical", f"order number {order_id} is in neither the ticket "
                                             "nor the research")
    allowed_emails = {ticket.customer.lower(), "support@northwind.example"}
    for email in sorted({e.lower().rstrip(".") for e in EMAIL.findall(reply)}):
        if email not in allowed_emails and email not in evidence_text.lower() \
                and email not in ticket_text.lower():
            add("other_customer_data", "critical", f"the reply contains the address {email}")
    limit = policy.refunds.auto_approve_limit
    big = [a for a in draft.actions if a.kind == "request_refund" and a.amount > limit]
    if big and PROMISE.search(reply):
        add("over_policy_promise", "critical",
            f"the reply promises a refund ({big[0].amount:.2f} {big[0].currency}) that is above the "
            f"auto-approve limit of {limit:g}; say it is being reviewed instead")
    ticket_lang = detect_language(ticket_text)
    reply_lang = detect_language(reply)
    if ticket_lang != reply_lang:
        add("wrong_language", "major", f"the ticket is in `{ticket_lang}` but the reply is in "
                                       f"`{reply_lang}`")
    for phrase in suspicious_instructions(ticket):
        add("suspicious_instructions", "info",
            f"the ticket contains instructions aimed at the agents: {phrase!r} (ignored)")
    return findings


def blocking(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity in BLOCKING]
