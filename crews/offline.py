"""The built-in offline model: deterministic, no network, and useful.

`OfflineLLM` is a CrewAI `BaseLLM`, so the very same agents, tasks and tools run with it as with a
real model. Its `respond` function plays each role from what the prompt carries: the researcher
summarises the lookups crewbatch made for it (and calls the tools itself when there are none);
the writer classifies the ticket and writes a reply grounded in the evidence, quoting the
knowledge files and order data, with the actions policy suggests; the critic approves unless the
deterministic checks found a blocking problem; the executor calls `carry_out_actions` once with
the whole plan (one tool per action when only the individual tools are offered). The role is
recognised from the tools offered and the structured output requested, never from the ticket
text. The fake OpenAI-compatible server in the tests answers with this same `respond`, so the
HTTP path is exercised with realistic traffic.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from crewai.events.types.llm_events import LLMCallType
from crewai.llms.base_llm import BaseLLM, llm_call_context

from .gate import INJECTION
from .knowledge import words
from .settings import BATCH_TOOL, EXECUTOR_TOOLS

MODEL_NAME = "offline"
BLOCK = re.compile(r"<(ticket|lookups|research_notes|evidence|draft|feedback|checks|actions)>\n(.*?)\n</\1>",
                   re.DOTALL)
ORDER_ID = re.compile(r"\b[A-Z]{2,4}-\d{4,8}\b")
AMOUNT = re.compile(r"(?:(?P<sym>[$€£])\s?(?P<a>\d[\d.,]*\d|\d))|(?:(?P<b>\d[\d.,]*\d|\d)\s?"
                    r"(?P<code>EUR|USD|GBP|€|euros?|dollars?|pounds?)\b)", re.IGNORECASE)
SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "euro": "EUR", "euros": "EUR", "dollar": "USD",
           "dollars": "USD", "pound": "GBP", "pounds": "GBP"}

CATEGORIES = [  # first match wins
    ("shipping", r"do you ship|ship(?:ping)? to (?!my)|customs"),
    ("complaint", r"\bmanager\b|unacceptable|complain|worst|terrible service|chargeback|lawyer|"
                  r"legal action|ridiculous|supervisor"),
    ("account", r"password|log ?in\b|sign ?in|locked|2fa|two[- ]factor|authenticator|account access|"
                r"passwort|contraseña|mot de passe"),
    ("billing", r"charged twice|double charge|charged me twice|invoice|\bvat\b|declined|billing|"
                r"payment (?:failed|error)|rechnung|factura|facture"),
    ("cancellation", r"\bcancel"),
    ("damaged_item", r"(?<!not )damaged|broken|cracked|defective|shattered|sparked|smok|"
                     r"doesn'?t work|"
                     r"does not work|stopped working|beschädigt|kaputt|roto|dañado|cassé|abîmé"),
    ("refund", r"refund|money back|reimburse|rückerstattung|erstattung|reembolso|devolución del dinero|"
               r"rembours"),
    ("return", r"\breturn|exchange|wrong size|too (?:small|big|large)|send (?:it )?back|umtausch|"
               r"rücksend|devolver|cambiar|échange|retour"),
    ("shipping", r"where is|not (?:yet )?(?:arrived|received)|hasn'?t arrived|tracking|delivery|"
                 r"processing|not here|parcel|lost|"
                 r"shipped|shipping|late|delay|still waiting|lieferung|angekommen|envío|pedido|"
                 r"livraison|colis|ship to|deliver"),
]
QUEUES = {"shipping": "shipping", "cancellation": "returns", "damaged_item": "returns", "refund": "returns",
          "return": "returns", "account": "accounts", "billing": "billing",
          "complaint": "escalations", "general": "general"}
SEARCH_TERMS = {
    "shipping": "late stuck parcel tracking carrier investigation delivery times",
    "damaged_item": "damaged defective item photo replacement refund return label",
    "refund": "refund approval original payment method business days",
    "return": "return window exchange unused items",
    "cancellation": "cancel order processing cancelled free of charge",
    "account": "password reset locked account two-factor",
    "billing": "duplicate charge pre-authorisation invoice VAT card declined",
    "complaint": "escalate manager complaint tone",
    "general": "shipping countries warranty discount codes contact hours",
}
INTERNAL = re.compile(r"\bthe customer\b|\bcustomers?\b.*\bshould\b|^(?:Report|Tell|Ask|Check|Do not|"
                      r"Escalate|Offer|Use)\b|support (?:can|cannot|sends|requests)", re.IGNORECASE)
SAFETY = re.compile(r"spark|smok|fire|burn|melt|electric shock|overheat", re.IGNORECASE)
ANGRY = re.compile(r"unacceptable|ridiculous|third time|still (?:no|nothing|waiting)|angry|furious|"
                   r"worst|!!", re.IGNORECASE)


# --- reading the prompt --------------------------------------------------------------------------


def _blocks(messages: list[dict]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for m in messages:
        if m.get("role") != "user" or not isinstance(m.get("content"), str):
            continue
        for tag, body in BLOCK.findall(m["content"]):
            try:
                found[tag] = json.loads(body)
            except json.JSONDecodeError:
                found[tag] = body
    return found


def _tool_results(messages: list[dict]) -> list[dict]:
    out = []
    for m in messages:
        if m.get("role") == "tool":
            try:
                out.append(json.loads(m.get("content") or "{}"))
            except json.JSONDecodeError:
                out.append({"text": m.get("content")})
    return out


def classify(subject: str, body: str) -> str:
    text = f"{subject}\n{body}".lower()
    for name, pattern in CATEGORIES:
        if re.search(pattern, text):
            return name
    return "general"


def requested_amount(text: str) -> tuple[float, str] | None:
    """The first money amount in the text, e.g. '$1,299.00' -> (1299.0, 'USD')."""
    for m in AMOUNT.finditer(text):
        raw = m.group("a") or m.group("b")
        unit = (m.group("sym") or m.group("code") or "").lower()
        currency = SYMBOLS.get(unit, unit.upper())
        if "," in raw and "." in raw:
            raw = raw.replace(",", "") if raw.rfind(".") > raw.rfind(",") else \
                raw.replace(".", "").replace(",", ".")
        elif "," in raw:
            raw = raw.replace(",", ".") if re.search(r",\d{2}$", raw) else raw.replace(",", "")
        try:
            return float(raw), currency
        except ValueError:
            continue
    return None


# --- the roles -----------------------------------------------------------------------------------


def _call(name: str, args: dict) -> dict:
    return {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)}}


def research(messages: list[dict], tools: list[str]) -> str | list[dict]:
    blocks = _blocks(messages)
    ticket = blocks.get("ticket") or {}
    lookups = blocks.get("lookups")
    # What crewbatch already looked up comes first; tools only when nothing was looked up.
    results = [i["result"] for i in lookups if isinstance(i, dict) and "result" in i] \
        if isinstance(lookups, list) else []
    results += _tool_results(messages)
    if not results:
        calls = []
        if "customer_orders" in tools:
            calls.append(_call("customer_orders", {}))
        text = f"{ticket.get('subject', '')}\n{ticket.get('body', '')}\n{ticket.get('history', '')}"
        if "lookup_order" in tools:
            for order_id in list(dict.fromkeys(ORDER_ID.findall(text.upper())))[:3]:
                calls.append(_call("lookup_order", {"order_id": order_id}))
        if "search_knowledge" in tools:
            category = classify(ticket.get("subject", ""), ticket.get("body", ""))
            query = f"{SEARCH_TERMS[category]} {ticket.get('subject', '')}"
            if category == "general":  # no topic known: search with the customer's own words
                query = " ".join(words(text)[:30])
            calls.append(_call("search_knowledge", {"query": query}))
        if calls:
            return calls
    lines = []
    for r in results:
        for o in r.get("orders", []):
            lines.append(f"Order {o['order_id']}: {o['item']} x{o['quantity']}, {o['total']} "
                         f"{o['currency']}, status {o['status']}, placed {o['placed_at']}"
                         + (f", shipped {o['shipped_at']} with {o['carrier']} "
                            f"(tracking {o['tracking_number']})" if o.get("tracking_number") else "")
                         + (f", estimated delivery {o['estimated_delivery']}"
                            if o.get("estimated_delivery") else ""))
        if r.get("found") is False:
            lines.append(f"Order {r.get('order_id')}: {r.get('note')}")
        for s in r.get("sections", []):
            lines.append(f"Knowledge [{s['source']}] {s['title']}")
        if "customer" in r and not r.get("orders"):
            lines.append("The customer has no orders on record.")
    return "Research notes:\n" + "\n".join(f"- {ln}" for ln in dict.fromkeys(lines))


def _evidence(blocks: dict) -> tuple[dict[str, dict], list[dict], set[str], set[str]]:
    orders, sections, foreign, missing = {}, [], set(), set()
    for item in blocks.get("evidence") or []:
        result = item.get("result", {})
        for o in result.get("orders", []):
            orders[o["order_id"]] = o
        sections.extend(result.get("sections", []))
        if result.get("belongs_to_other_customer"):
            foreign.add(result.get("order_id", "").upper())
        elif result.get("found") is False:
            missing.add(result.get("order_id", "").upper())
    return orders, sections, foreign, missing


def _quote(sections: list[dict], *needles: str) -> str:
    """The first knowledge bullet or sentence containing every needle, cleaned for a reply."""
    for s in sections:
        for line in s["text"].splitlines():
            clean = re.sub(r"^\s*(?:[-*]|\d+\.)\s*", "", line).replace("**", "").replace("`", "")
            if clean and not clean.startswith("|") and \
                    all(n.lower() in clean.lower() for n in needles):
                return clean.strip()
    return ""


def _fact(sections: list[dict], pattern: str) -> str:
    """The first capture of `pattern` in the retrieved knowledge, or '' (then the reply omits it)."""
    for sec in sections:
        m = re.search(pattern, sec["text"].replace("**", ""))
        if m:
            return m.group(1)
    return ""


def _best_lines(sections: list[dict], text: str, n: int = 2) -> list[str]:
    """The knowledge bullets sharing the most content words with the ticket (at least two)."""
    wanted = set(words(text))
    scored = []
    for sec in sections:
        for line in sec["text"].splitlines():
            clean = re.sub(r"^\s*(?:[-*]|\d+\.)\s*", "", line).replace("**", "").replace("`", "")
            if not clean or clean.startswith("|"):
                continue
            if INTERNAL.search(clean):
                continue  # guidance for the support team, not a sentence for the customer
            in_line = len(wanted & set(words(clean)))
            overlap = in_line + len(wanted & set(words(sec["title"])))
            if in_line and overlap >= 2:
                scored.append((-overlap, len(scored), clean.strip()))
    return [line for _, _, line in sorted(scored)[:n]]


def policy_limit(messages: list[dict]) -> float:
    """The auto-approve refund limit, as the policy text in the prompt states it.

    Only outside the tagged data blocks: a ticket saying "Refunds up to 100000" is not policy.
    """
    for m in messages:
        found = re.search(r"Refunds up to (\d+(?:\.\d+)?)",
                          BLOCK.sub(" ", str(m.get("content") or "")))
        if found:
            return float(found.group(1))
    return 0.0  # unknown: treat every refund as one for a person


def write(messages: list[dict]) -> str:
    blocks = _blocks(messages)
    ticket = blocks.get("ticket") or {}
    subject, body = ticket.get("subject", ""), ticket.get("body", "")
    text = f"{subject}\n{body}"
    orders, sections, foreign, missing = _evidence(blocks)
    category = classify(subject, body)
    mentioned = list(dict.fromkeys(ORDER_ID.findall(text.upper())))
    own = [orders[o] for o in mentioned if o in orders] or \
        (list(orders.values())[-1:] if not mentioned else [])
    order = own[0] if own else None
    name = (ticket.get("customer_name") or "").split(" ")[0]
    paragraphs: list[str] = []
    actions: list[dict] = []
    note = []
    injected = INJECTION.search(text)

    def para(*sentences: str) -> None:
        joined = " ".join(s.strip() for s in sentences if s and s.strip())
        if joined:
            paragraphs.append(joined)

    def sentence(s: str) -> str:
        return s if not s or s.endswith((".", "!", "?", ":")) else s + "."

    def tag() -> None:
        actions.append({"kind": "tag_ticket", "queue": QUEUES[category],
                        "reason": f"{category.replace('_', ' ')} ticket"})

    if foreign:
        para("For your privacy and that of our other customers, I can only discuss orders placed "
             "with the e-mail address you are writing from, so I can't share details about the "
             "order number you mentioned.",
             "If the order was placed by someone else, they are welcome to contact us directly.")
    if missing:
        para(f"I couldn't find an order with the number {', '.join(sorted(missing))} in our system.",
             "Could you double-check the order number from your confirmation e-mail?"
             + (" I can see the orders on your account, listed below." if orders else ""))

    received = (ticket.get("received_at") or "")[:10]
    if injected:
        para("Thank you for your message. I have passed it to a member of our support team, who "
             "will review it and get back to you.")
        actions.append({"kind": "escalate_to_human",
                        "reason": "the ticket contains instructions aimed at the support system"})
        note.append(f"Suspicious instruction in the ticket: {injected.group(0)!r}")
    elif category == "shipping":
        if order and order["status"] == "shipped":
            para(f"Your order {order['order_id']} ({order['item']}) shipped on "
                 f"{order['shipped_at']} with {order['carrier']}, tracking number "
                 f"{order['tracking_number']}, and was estimated to arrive on "
                 f"{order['estimated_delivery']}.")
            if order.get("estimated_delivery") and received > order["estimated_delivery"]:
                days = _fact(sections, r"resolves it within \**(\d+ business days)")
                para("As your parcel is now past its estimated delivery date, we are asking "
                     f"{order['carrier']} to investigate"
                     + (f"; the carrier resolves this within {days}." if days else "."),
                     "If the parcel turns out to be lost, we will reship your order at no cost or "
                     "refund it, whichever you prefer.")
                actions.append({"kind": "tag_ticket", "queue": "shipping",
                                "reason": "late parcel: carrier investigation"})
            else:
                para("It is still within its delivery window. Tracking can take up to a day to "
                     "show the latest scan, so please check the link again tomorrow.")
        elif order and order["status"] == "processing":
            window = _fact(sections, r"within \**(\d+[–-]\d+ business days)\**")
            para(f"Your order {order['order_id']} ({order['item']}) is still being prepared in our "
                 "warehouse"
                 + (f"; orders are normally handed to the carrier within {window}." if window
                    else "."),
                 f"Its estimated delivery date is {order['estimated_delivery']}, and you will "
                 "receive the tracking number by e-mail as soon as it ships."
                 if order.get("estimated_delivery") else "")
        elif order and order["status"] == "delivered":
            para(f"Our records show that order {order['order_id']} ({order['item']}) was "
                 f"delivered by {order['carrier']} (tracking number {order['tracking_number']}).",
                 "Could you check with your neighbours and any safe place the carrier may have "
                 "used? If it hasn't turned up by tomorrow, we will open an investigation with "
                 "the carrier.")
        elif order:
            para(f"Your order {order['order_id']} ({order['item']}) is currently marked as "
                 f"{order['status']}.")
        elif not mentioned and _best_lines(sections, text):
            para("Thank you for your message.", *[sentence(b) for b in _best_lines(sections, text)])
        elif not missing and not foreign:
            para("I'd be glad to check on your delivery. Could you send us your order number? "
                 "You'll find it in your order confirmation e-mail.")
        if not any(a["kind"] == "tag_ticket" for a in actions):
            tag()
    elif category == "damaged_item":
        item = f" {order['item']} from order {order['order_id']}" if order else " order"
        para(f"I'm very sorry that your{item} arrived damaged.")
        if SAFETY.search(text):
            para("For your safety, please stop using it and unplug it straight away, and don't "
                 "test it again.", "A member of our team will contact you within 1 business day, "
                 "and the item will be replaced or refunded in full.")
            actions.append({"kind": "escalate_to_human",
                            "reason": "safety issue with an electrical item"})
        else:
            para("Could you reply with a photo of the damage and of the outer box? Once we have "
                 "it, you can choose a replacement or a refund to your original payment method"
                 + (", and we will e-mail you a free prepaid return label."
                    if _fact(sections, r"(free prepaid return label)") else "."))
            tag()
    elif category == "cancellation":
        if order and order["status"] == "processing":
            days = _fact(sections, r"refunded within \**(\d+[–-]\d+ business days)")
            para(f"Your order {order['order_id']} ({order['item']}) has not shipped yet, so it can "
                 "be cancelled free of charge. I have passed your request to our order team"
                 + (f"; the full amount is refunded within {days} once it is cancelled."
                    if days else "."))
        elif order:
            para(f"Your order {order['order_id']} has already {order['status']}, so it can no "
                 "longer be cancelled, but you are welcome to return it after delivery.")
        else:
            para("Could you send us the order number you would like to cancel?")
        tag()
    elif category == "refund" and re.search(r"\b(?:discount|code|coupon|voucher)\b", text, re.IGNORECASE):
        rule = _fact(sections, r"(cannot be added to an order after it has been placed[^.]*)")
        para("Thank you for asking. Unfortunately a discount code "
             + (rule if rule else "can only be used at checkout") + ".",
             "You're welcome to use it on your next order.")
        tag()
    elif category == "refund":
        asked = requested_amount(text)
        if order:
            currency = order["currency"]
            amount = float(order["total"])
            if asked and asked[0] > 0:
                amount = asked[0]
            actions.append({"kind": "request_refund", "order_id": order["order_id"],
                            "amount": round(amount, 2), "currency": currency,
                            "reason": "the customer asked for a refund"})
            window = _fact(sections, r"within \**(\d+[–-]\d+ business days) after approval")
            para(f"Thank you for getting in touch about order {order['order_id']} "
                 f"({order['item']}).")
            if amount <= policy_limit(messages):
                para(f"I have requested a refund of {amount:.2f} {currency} to your original "
                     "payment method"
                     + (f"; it is paid within {window} after approval." if window else "."))
            else:
                decision = _fact(sections, r"decision within \**(\d+ business days)")
                para(f"Refunds of this size are approved by a supervisor, so I have passed your "
                     f"request for {amount:.2f} {currency} on"
                     + (f"; you will hear from us within {decision}." if decision else "."),
                     "Once approved, the refund goes to your original payment method"
                     + (f" within {window}." if window else "."))
        elif not missing and not foreign:
            para("I'd be glad to look into a refund for you. Could you send us the order number "
                 "from your confirmation e-mail?")
        tag()
    elif category == "return":
        days = _fact(sections, r"within \**(\d+ days) of delivery")
        para("You're welcome to return or exchange unused items"
             + (f" within {days} of delivery." if days else "."),
             "Please reply with the item you'd like to send back and, for an exchange, the size "
             "or colour you'd like instead, and we'll send you the return instructions.")
        tag()
    elif category == "account":
        url = _fact(sections, r"(northwind\.example/reset)")
        valid = _fact(sections, r"valid for (\d+ hours?)")
        lock = _fact(sections, r"locked for (\d+ minutes after \d+ failed login attempts)")
        if re.search(r"2fa|two[- ]factor|authenticator|backup code", text, re.IGNORECASE):
            para("To protect your account, two-factor authentication can only be reset after we "
                 "verify your identity. We will e-mail a secure verification form to the address "
                 "on your account; please never send us codes or backup codes.")
        else:
            para(f"You can reset your password at {url}" if url else "You can reset your password "
                 "from the login page", f"(the link is valid for {valid})." if valid else ".")
            if lock:
                para(f"For your security an account is locked for {lock}; it unlocks by itself.")
        para("We will never ask for your password.")
        tag()
    elif category == "billing":
        if re.search(r"twice|double|duplicate", text, re.IGNORECASE):
            days = _fact(sections, r"drop off within \**(\d+[–-]\d+ business days)")
            para("The second entry on your statement is almost always a temporary hold "
                 "(pre-authorisation) rather than a second payment"
                 + (f"; it drops off by itself within {days}." if days else "."),
                 "If two completed payments still show after that, please send us a screenshot "
                 "of your statement (with the card number hidden) and we'll take it from there.")
        elif re.search(r"declin", text, re.IGNORECASE):
            para("We can't see why a bank declined a payment. The most common reasons are an "
                 "unfinished 3-D Secure check or a billing address that doesn't match the card.",
                 "Please try again, check with your bank, or pay with PayPal or another card.")
        else:
            para("You can download every invoice from Account > Orders > select the order > "
                 "Download invoice. To add a company name and VAT ID, enter them under Account > "
                 "Orders > Invoice details and download the invoice again.")
        tag()
    elif category == "complaint":
        para("I'm sorry that we have let you down, and I understand your frustration.",
             "I have passed your message to a team lead, who will contact you personally within "
             "1 business day.")
        actions.append({"kind": "escalate_to_human", "reason": "complaint: the customer asks for "
                                                               "a manager or is very unhappy"})
    else:
        best = _best_lines(sections, text)
        if best:
            para("Thank you for your message.", *[sentence(b) for b in best])
            tag()
        else:
            para("Thank you for your message. I have passed it to a colleague who can answer it "
                 "properly, and we will get back to you within 1 business day.")
            actions.append({"kind": "escalate_to_human",
                            "reason": "no answer to this question in the knowledge base"})

    if not paragraphs:
        para("Thank you for contacting Northwind Goods. A member of our team will look into this "
             "and get back to you.")
    greeting = f"Hi {name}," if name else "Hello,"
    reply = "\n\n".join([greeting, *paragraphs, "Kind regards,\nNorthwind Goods Support"])
    priority = ("urgent" if SAFETY.search(text) or re.search(r"chargeback|lawyer|legal", text, re.IGNORECASE)
                else "high" if category == "complaint" or injected or ANGRY.search(text)
                else "low" if category == "general" else "normal")
    return json.dumps({"category": category, "priority": priority, "language": "en",
                       "reply": reply, "actions": actions,
                       "internal_note": " ".join(note) or f"offline draft ({category})"},
                      ensure_ascii=False)


def review(messages: list[dict]) -> str:
    blocks = _blocks(messages)
    checks = blocks.get("checks") or []
    draft = blocks.get("draft") or {}
    findings = [c for c in checks if c.get("severity") in ("major", "critical")]
    changes = [f"fix {c['check']}: {c['detail']}" for c in findings]
    if not (draft.get("reply") or "").strip():
        changes.append("write a reply")
    approved = not changes
    summary = ("The reply is grounded in the ticket and the research and stays within policy."
               if approved else f"{len(changes)} problem(s) must be fixed before sending.")
    return json.dumps({"approved": approved, "findings": findings, "required_changes": changes,
                       "summary": summary}, ensure_ascii=False)


ACTION_FIELDS = ("order_id", "amount", "currency", "queue", "reason")


def action_args(action: dict) -> dict:
    """The arguments a planned action's tool takes."""
    kind = action.get("kind")
    if kind == "request_refund":
        return {"order_id": action["order_id"], "amount": action["amount"],
                "currency": action["currency"]}
    if kind == "tag_ticket":
        return {"queue": action["queue"]}
    if kind == "escalate_to_human":
        return {"reason": action.get("reason", "")}
    return {}


def action_calls(actions: list[tuple[str, dict]], tools: list[str]) -> list[dict]:
    """(kind, args) pairs as tool calls: one `carry_out_actions` call with all of them when that
    tool is offered (every field present, null when unused, as a strict-schema model sends them),
    else one call per action whose tool is offered."""
    if BATCH_TOOL in tools:
        return [_call(BATCH_TOOL, {"actions": [{"kind": kind, **dict.fromkeys(ACTION_FIELDS),
                                                **args} for kind, args in actions]})]
    return [_call(kind, args) for kind, args in actions if kind in tools]


def execute(messages: list[dict], tools: list[str]) -> str | list[dict]:
    results = _tool_results(messages)
    if not results:
        planned = [(a.get("kind"), action_args(a)) for a in _blocks(messages).get("actions") or []]
        calls = action_calls(planned, tools)
        if calls:
            return calls
    # A batch answers with a list (one entry per action); it only comes back here if it failed.
    results = [r for item in results for r in (item if isinstance(item, list) else [item])
               if isinstance(r, dict)]
    done = [r for r in results if r.get("done")]
    refused = [r.get("refused") for r in results if not r.get("done") and r.get("refused")]
    return (f"Carried out {len(done)} action(s)."
            + (f" Refused by policy: {'; '.join(refused)}." if refused else ""))


def respond(messages: list[dict], tools: list[str], schema: str | None) -> str | list[dict]:
    """One model turn: text, JSON for a structured output, or a list of tool calls."""
    if schema == "Draft":
        return write(messages)
    if schema == "Verdict":
        return review(messages)
    if any(t in tools for t in EXECUTOR_TOOLS):
        return execute(messages, tools)
    if tools or _tool_results(messages):
        return research(messages, tools)
    return "No task recognised."


def _tool_names(tools: list | None) -> list[str]:
    names = []
    for t in tools or []:
        if isinstance(t, dict):
            names.append((t.get("function") or t).get("name", ""))
        else:
            names.append(getattr(t, "name", str(t)))
    return names


def _estimate_tokens(payload: Any) -> int:
    return max(1, len(json.dumps(payload, ensure_ascii=False, default=str)) // 4)


class OfflineLLM(BaseLLM):
    """Deterministic stand-in for a model; labelled `offline` wherever a model name is recorded."""

    llm_type: str = "offline"

    def call(self, messages, tools=None, callbacks=None, available_functions=None,
             from_task=None, from_agent=None, response_model=None):
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        with llm_call_context():
            self._emit_call_started_event(messages=messages, tools=tools, callbacks=callbacks,
                                          available_functions=available_functions,
                                          from_task=from_task, from_agent=from_agent)
            schema = response_model.__name__ if response_model is not None else None
            answer = self.respond(messages, _tool_names(tools), schema)
            usage = {"prompt_tokens": _estimate_tokens(messages),
                     "completion_tokens": _estimate_tokens(answer)}
            self._emit_call_completed_event(response=answer, call_type=LLMCallType.LLM_CALL,
                                            from_task=from_task, from_agent=from_agent,
                                            messages=messages, usage=usage)
            return answer

    def respond(self, messages: list[dict], tools: list[str], schema: str | None
                ) -> str | list[dict]:
        """One turn; a subclass may play a role differently (the gate benchmark's faulty writer)."""
        return respond(messages, tools, schema)

    def supports_function_calling(self) -> bool:
        return True

    def get_context_window_size(self) -> int:
        return 128_000

    def get_input_tokens_count(self, messages, tools=None, response_model=None) -> int:
        return _estimate_tokens(messages)
