"""The built-in offline model: deterministic, no network, and useful.

`OfflineLLM` is a CrewAI `BaseLLM`, so the very same agents, tasks and tools run with it as with a
real model. Its `respond` function plays each role from what the prompt carries: the researcher
summarises the lookups crewbatch made for it (and calls the tools itself when there are none);
the writer classifies the ticket and picks the replies that fit it from the shop's replies file
(replies.py: the sentences are data), filled in from the order data and the facts of the
knowledge files, with the actions policy suggests; it quotes the knowledge base itself only when
one topic clearly answers the ticket, never agents-only guidance, and otherwise escalates. The
critic approves unless the deterministic checks found a blocking problem; the executor calls
`carry_out_actions` once with the whole plan (one tool per action when only the individual tools
are offered). The role is recognised from the tools offered and the structured output requested,
never from the ticket text. The fake OpenAI-compatible server in the tests answers with this same
`respond` (with the generic replies), so the HTTP path is exercised with realistic traffic.
"""
from __future__ import annotations

import json
import math
import re
import uuid
from collections import Counter
from contextvars import ContextVar
from typing import Any, NamedTuple

from crewai.events.types.llm_events import LLMCallType
from crewai.llms.base_llm import BaseLLM, llm_call_context
from pydantic import Field

from .action_kinds import BATCH_FIELDS, ESCALATE_TO_HUMAN, REQUEST_REFUND, TAG_TICKET, tool_args
from .gate import INJECTION, ORDER_ID
from .knowledge import AGENTS, CUSTOMERS, words
from .replies import Replies, generic_replies
from .settings import BATCH_TOOL, EXECUTOR_TOOLS
from .taxonomy import Taxonomy

MODEL_NAME = "offline"
BLOCK = re.compile(r"<(ticket|lookups|research_notes|evidence|draft|feedback|checks|actions)>\n(.*?)\n</\1>",
                   re.DOTALL)
AMOUNT = re.compile(r"(?:(?P<sym>[$€£])\s?(?P<a>\d[\d.,]*\d|\d))|(?:(?P<b>\d[\d.,]*\d|\d)\s?"
                    r"(?P<code>EUR|USD|GBP|€|euros?|dollars?|pounds?)\b)", re.IGNORECASE)
SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "euro": "EUR", "euros": "EUR", "dollar": "USD",
           "dollars": "USD", "pound": "GBP", "pounds": "GBP"}

# The writer answers a question about shipping in general from the knowledge base, not from an
# order (which categories exist, and their cue words, are config/taxonomy.yaml's).
SHIPPING_QUESTION = re.compile(r"do you ship|ship(?:ping)? to (?!my)|customs|how long does "
                               r"(?:shipping|delivery) take|(?:shipping|delivery) costs?",
                               re.IGNORECASE)
# Lines written to the support team, not the customer: about "the customer", instructions, and
# the order table's field names (`estimated_delivery`, "the order record").
INTERNAL = re.compile(r"\bthe customer\b|\bcustomers?\b.*\bshould\b|^(?:Report|Tell|Ask|Check|Do not|"
                      r"Escalate|Offer|Use)\b|support (?:can|cannot|sends|requests)|"
                      r"\border record\b|\b[a-z]+_[a-z_]+\b", re.IGNORECASE)
SAFETY = re.compile(r"spark|smok|fire|burn|melt|electric shock|overheat", re.IGNORECASE)
DISCOUNT = re.compile(r"\b(?:discount|code|coupon|voucher)\b", re.IGNORECASE)
TWO_FACTOR = re.compile(r"2fa|two[- ]factor|authenticator|backup code", re.IGNORECASE)
WRONG_INVOICE = re.compile(r"(?:wrong|incorrect|mistake|error)\b[^.?!\n]{0,40}\binvoice|"
                           r"\binvoice\b[^.?!\n]{0,60}\b(?:wrong|incorrect|mistake|error)",
                           re.IGNORECASE)
# The order record's fields a reply may quote.
ORDER_FIELDS = ("order_id", "item", "status", "carrier", "tracking_number", "shipped_at",
                "estimated_delivery", "currency")


# --- reading the prompt --------------------------------------------------------------------------


def data_blocks(messages: list[dict]) -> dict[str, Any]:
    """The prompt's data blocks (`<ticket>…</ticket>` and the like), JSON read, by tag."""
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


def tool_results(messages: list[dict]) -> list[dict]:
    """The answers of the tools called so far in this step, oldest first."""
    out = []
    for m in messages:
        if m.get("role") == "tool":
            try:
                out.append(json.loads(m.get("content") or "{}"))
            except json.JSONDecodeError:
                out.append({"text": m.get("content")})
    return out


# The taxonomy of the model call in progress: OfflineLLM.call sets it from the Draft model it is
# asked to fill (a real model gets the same names as the schema's enums), so the roles played
# inside the call — also by a subclass that calls `respond` itself — classify with it.
_call_taxonomy: ContextVar[Taxonomy | None] = ContextVar("crewbatch_offline_taxonomy",
                                                         default=None)


def taxonomy_for(replies: Replies | None) -> Taxonomy | None:
    """The taxonomy to classify with: the call's, else the one the replies were loaded with."""
    return _call_taxonomy.get() or (replies.taxonomy if replies is not None else None)


def _first(rules, text: str) -> str | None:
    return next((name for name, pattern in rules if pattern.search(text)), None)


def classify(subject: str, body: str, taxonomy: Taxonomy) -> str:
    """The category of the first cue rule that matches, else the taxonomy's fallback."""
    text = f"{subject}\n{body}".lower()
    return _first(taxonomy.matchers().categories, text) or taxonomy.fallback_category


def route(text: str, category: str, taxonomy: Taxonomy) -> str | None:
    """The queue of the first queue rule that matches, else the category's queue."""
    return _first(taxonomy.matchers().queues, text.lower()) or taxonomy.queue_of(category)


def triage_priority(text: str, category: str, instructed: bool, taxonomy: Taxonomy) -> str:
    """The highest of the category's priority, every priority whose cues match, and (for a
    ticket that tries to instruct the agents) the taxonomy's `instructions_priority`."""
    o = taxonomy.offline
    found = [o.category_priority.get(category, taxonomy.default_priority)]
    found += [name for name, pattern in taxonomy.matchers().priorities if pattern.search(text)]
    if instructed and o.instructions_priority:
        found.append(o.instructions_priority)
    return max(found, key=taxonomy.rank)


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


def research(messages: list[dict], tools: list[str], replies: Replies | None = None
             ) -> str | list[dict]:
    blocks = data_blocks(messages)
    ticket = blocks.get("ticket") or {}
    lookups = blocks.get("lookups")
    # What crewbatch already looked up comes first; tools only when nothing was looked up.
    results = [i["result"] for i in lookups if isinstance(i, dict) and "result" in i] \
        if isinstance(lookups, list) else []
    results += tool_results(messages)
    if not results:
        calls = []
        if "customer_orders" in tools:
            calls.append(_call("customer_orders", {}))
        text = f"{ticket.get('subject', '')}\n{ticket.get('body', '')}\n{ticket.get('history', '')}"
        if "lookup_order" in tools:
            for order_id in list(dict.fromkeys(ORDER_ID.findall(text.upper())))[:3]:
                calls.append(_call("lookup_order", {"order_id": order_id}))
        if "search_knowledge" in tools:
            taxonomy = taxonomy_for(replies)
            terms = taxonomy.offline.search.get(classify(
                ticket.get("subject", ""), ticket.get("body", ""), taxonomy)) if taxonomy else None
            # Without terms for the topic: search with the customer's own words.
            query = f"{terms} {ticket.get('subject', '')}" if terms else " ".join(words(text)[:30])
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
            lines.append(f"Knowledge [{s['source']}] {s['title']}"
                         + (" (guidance for agents, not for the reply)"
                            if s.get("audience") == AGENTS else ""))
        if "customer" in r and not r.get("orders"):
            lines.append("The customer has no orders on record.")
    return "Research notes:\n" + "\n".join(f"- {ln}" for ln in dict.fromkeys(lines))


class _Evidence(NamedTuple):
    orders: dict[str, dict]     # the customer's own orders the tools returned, by id
    sections: list[dict]        # knowledge sections, in retrieval order, without repeats
    foreign: set[str]           # order numbers that are another customer's
    missing: set[str]           # order numbers not on record at all


def _evidence(blocks: dict) -> _Evidence:
    orders, sections, foreign, missing = {}, {}, set(), set()
    for item in blocks.get("evidence") or []:
        result = item.get("result", {})
        for o in result.get("orders", []):
            orders[o["order_id"]] = o
        for s in result.get("sections", []):
            sections.setdefault((s.get("source"), s.get("title")), s)
        if result.get("belongs_to_other_customer"):
            foreign.add(result.get("order_id", "").upper())
        elif result.get("found") is False:
            missing.add(result.get("order_id", "").upper())
    return _Evidence(orders, list(sections.values()), foreign, missing)


def _for_customers(sections: list[dict]) -> list[dict]:
    return [s for s in sections if s.get("audience", CUSTOMERS) != AGENTS]


# --- answering from the knowledge base -----------------------------------------------------------

# A ticket is answered with knowledge-base text only when one topic clearly wins: its retrieved
# sections' BM25 scores against the ticket, summed, are at least MARGIN times the next topic's,
# and one of its lines (with its heading) shares MIN_SHARED content words with the ticket. On the
# sample tickets the topics answered score 2.5-3.8 times the runner-up; the off-topic matches
# this rule exists for (a billing question nearest a shipping section, "my order is still
# missing" nearest a damaged-parts section) scored 1.1-1.6 times.
MARGIN = 2.0
MIN_SHARED = 2
NO_ANSWER = "no confident answer in the knowledge base"


def _bm25(query: set[str], docs: list[list[str]]) -> list[float]:
    """BM25 of each doc for the query, with idf over these docs only.

    The writer sees the retrieved sections, not the whole knowledge base, so it ranks them among
    themselves (knowledge.py's ranking picked them; its scores are not in the evidence).
    """
    counts = [Counter(d) for d in docs]
    avg = sum(len(d) for d in docs) / max(1, len(docs))
    df = Counter(w for c in counts for w in c)
    scores = []
    for c, d in zip(counts, docs, strict=True):
        score = 0.0
        for w in query:
            tf = c.get(w, 0)
            if tf:
                idf = math.log(1 + (len(docs) - df[w] + 0.5) / (df[w] + 0.5))
                score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(d) / max(avg, 1)))
        scores.append(score)
    return scores


def _topic(section: dict, replies: Replies) -> tuple[str, ...]:
    """What a section is about: agents' guidance, the categories `topics` gives its file, or
    (a file `topics` does not list) the file itself."""
    if section.get("audience", CUSTOMERS) == AGENTS:
        return (AGENTS,)
    return replies.topics_of(section.get("source", "")) or (f"file:{section.get('source', '')}",)


def _lines(section: dict, wanted: set[str], n: int = 2) -> list[str]:
    """The section's bullets sharing the most content words with the ticket (MIN_SHARED or more,
    counting the section's heading), written for customers."""
    scored = []
    in_title = len(wanted & set(words(section.get("title", ""))))
    for line in section.get("text", "").splitlines():
        clean = re.sub(r"^\s*(?:[-*]|\d+\.)\s*", "", line).replace("**", "").replace("`", "")
        if not clean.strip() or clean.startswith("|") or INTERNAL.search(clean):
            continue  # a table row, or guidance for the support team
        in_line = len(wanted & set(words(clean)))
        if in_line and in_line + in_title >= MIN_SHARED:
            scored.append((-(in_line + in_title), len(scored), clean.strip()))
    return [line for _, _, line in sorted(scored)[:n]]


def knowledge_answer(sections: list[dict], text: str, category: str, replies: Replies
                     ) -> tuple[list[str], str]:
    """The lines of the one knowledge topic that clearly answers the ticket, and why (or why not).

    A ticket of the taxonomy's fallback category (the classifier found no topic) may be answered
    by any topic; any other only by a file whose `topics` include its category. Agents-only sections take part in the
    ranking (a ticket nearest to them is one for a person) but are never quoted.
    """
    wanted = set(words(text))
    if not sections or not wanted:
        return [], "nothing was retrieved"
    scores = _bm25(wanted, [words(f"{s.get('title', '')} {s.get('text', '')}") for s in sections])
    topics = [_topic(s, replies) for s in sections]
    totals: dict[tuple[str, ...], float] = {}
    for t, score in zip(topics, scores, strict=True):
        totals[t] = totals.get(t, 0.0) + score
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    topic, best = ranked[0]
    runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
    label = ", ".join(t.removeprefix("file:") for t in topic)
    if best <= 0:
        return [], "no retrieved section shares a word with the ticket"
    if topic == (AGENTS,):
        return [], "the nearest knowledge is guidance for agents"
    if best < MARGIN * runner_up:
        return [], (f"the best topic ({label}, {best:.2f}) is not {MARGIN:g}x the next "
                    f"({', '.join(t.removeprefix('file:') for t in ranked[1][0])}, "
                    f"{runner_up:.2f})")
    taxonomy = taxonomy_for(replies)
    fallback = taxonomy.fallback_category if taxonomy else None
    if category != fallback and category not in topic:
        return [], f"the best topic ({label}) is not the ticket's category ({category})"
    # Quoted: the best section of that topic with lines for the ticket (one section, one answer).
    ours = sorted((-score, i) for i, (t, score) in enumerate(zip(topics, scores, strict=True))
                  if t == topic)
    found = next(((i, lines) for i, lines in ((i, _lines(sections[i], wanted)) for _, i in ours)
                  if lines), None)
    if found is None:
        return [], f"no line of {label} shares {MIN_SHARED} words with the ticket"
    i, lines = found
    specific = {w for w in wanted if len(w) >= 4 and w.isalpha()} - replies.generic_words
    # The section's own heading, not its file's title: "Billing and payments" names the file's
    # subject, which the ticket's category already matched.
    heading = sections[i].get("title", "").rsplit(" — ", 1)[-1]
    in_title = specific & set(words(heading))
    in_lines = specific & set(words(" ".join(lines)))
    # A relative margin among three retrieved sections says which one is nearest, not that it is
    # near: the answer must share a telling word with the section's heading, or two with its lines
    # (tickets about products the shop does not sell shared only "been", "support" or "hours").
    if not in_title and len(in_lines) < MIN_SHARED:
        return [], (f"{label} shares no telling word with the ticket (only "
                    f"{', '.join(sorted(in_lines)) or 'common words'})")
    return lines, f"answered from {label} ({best:.2f} against {runner_up:.2f})"


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


# --- the writer: which replies fit the ticket (their sentences are in replies.yaml) ------------


def _sentence(s: str) -> str:
    return s if not s or s.endswith((".", "!", "?", ":")) else s + "."


def write(messages: list[dict], replies: Replies | None = None,
          taxonomy: Taxonomy | None = None) -> str:
    r = replies or generic_replies()
    taxonomy = taxonomy or taxonomy_for(r)
    if taxonomy is None:
        raise ValueError("the offline writer needs a taxonomy: pass config.taxonomy, load the "
                         "replies with replies.load_replies(config), or ask for "
                         "outputs.draft_model(taxonomy)")
    blocks = data_blocks(messages)
    ticket = blocks.get("ticket") or {}
    subject, body = ticket.get("subject", ""), ticket.get("body", "")
    text = f"{subject}\n{body}"
    ev = _evidence(blocks)
    category = classify(subject, body, taxonomy)
    queue = route(text, category, taxonomy)
    # An order number given earlier in the thread counts as given.
    mentioned = list(dict.fromkeys(ORDER_ID.findall(f"{text}\n{ticket.get('history', '')}".upper())))
    question = category == "shipping" and bool(SHIPPING_QUESTION.search(text))
    # Asking for an order number only makes sense for a ticket about one of the customer's orders;
    # any other question ("how long do refunds take?") is answered from the knowledge or escalated.
    about_an_order = bool(r.order_cues and r.order_cues.search(text))
    own = [ev.orders[o] for o in mentioned if o in ev.orders] or \
        (list(ev.orders.values())[-1:] if not mentioned and not question else [])
    order = own[0] if own else None
    fields: dict[str, Any] = {
        "first_name": (ticket.get("customer_name") or "").split(" ")[0],
        **r.find_facts([s.get("text", "") for s in _for_customers(ev.sections)]),
        **({k: order.get(k, "") for k in ORDER_FIELDS} if order else {})}
    paragraphs: list[str] = []
    actions: list[dict] = []
    notes: list[str] = []
    injected = INJECTION.search(text)

    def say(key: str, **extra: Any) -> None:
        paragraph = r.render(key, **{**fields, **extra})
        if paragraph:
            paragraphs.append(paragraph)

    def escalate(reason: str) -> None:
        actions.append({"kind": ESCALATE_TO_HUMAN, "reason": reason})

    def from_knowledge() -> None:
        lines, why = knowledge_answer(ev.sections, text, category, r)
        if lines:
            say("knowledge_answer", answer=" ".join(_sentence(line) for line in lines))
        else:
            say("no_answer")
            escalate(NO_ANSWER)
        notes.append(f"Knowledge: {why}.")

    if ev.foreign:
        say("order_not_yours")
    if ev.missing:
        say("order_not_found", order_ids=", ".join(sorted(ev.missing)),
            own_orders=", ".join(f"{o['order_id']} ({o['item']})" for o in ev.orders.values()))

    received = (ticket.get("received_at") or "")[:10]
    status = order["status"] if order else ""
    if injected:
        say("injected")
        escalate("the ticket contains instructions aimed at the support system")
        notes.append(f"Suspicious instruction in the ticket: {injected.group(0)!r}")
    elif category == "shipping":
        if status == "shipped":
            say("shipping_shipped")
            if order.get("estimated_delivery") and received > order["estimated_delivery"]:
                say("shipping_late")
                actions.append({"kind": TAG_TICKET, "queue": queue,
                                "reason": "late parcel: carrier investigation"})
            else:
                say("shipping_on_time")
        elif status == "processing":
            say("shipping_processing")
        elif status == "delivered":
            say("shipping_delivered")
        elif order:
            say("shipping_status")
        elif question or not mentioned and not about_an_order:
            from_knowledge()
        elif not mentioned:
            say("shipping_ask_order")
    elif category in ("damaged_item", "return") and not (order or mentioned or about_an_order):
        from_knowledge()  # "the app is broken", "return $product;": not about anything we sold
    elif category == "damaged_item":
        say("damaged_sorry")
        if SAFETY.search(text):
            say("damaged_safety")
            escalate("safety issue with an electrical item")
        else:
            say("damaged_photo")
    elif category == "cancellation":
        if status == "processing":
            say("cancel_processing")
        elif order:
            say("cancel_too_late")
        elif not mentioned and about_an_order:
            say("cancel_ask_order")
        elif not mentioned:
            from_knowledge()
    elif category == "refund" and DISCOUNT.search(text):
        say("discount_code")
    elif category == "refund":
        if order:
            asked = requested_amount(text)
            amount = asked[0] if asked and asked[0] > 0 else float(order["total"])
            actions.append({"kind": REQUEST_REFUND, "order_id": order["order_id"],
                            "amount": round(amount, 2), "currency": order["currency"],
                            "reason": "the customer asked for a refund"})
            say("refund_thanks")
            say("refund_requested" if amount <= policy_limit(messages) else "refund_supervisor",
                amount=f"{amount:.2f}")
        elif not mentioned and about_an_order:
            say("refund_ask_order")
        elif not mentioned:
            from_knowledge()
    elif category == "return":
        say("return_exchange")
    elif category == "account":
        if TWO_FACTOR.search(text):
            say("account_2fa")
        else:
            say("account_reset")
            say("account_locked")
        say("account_no_password")
    elif category == "billing":
        if re.search(r"twice|double|duplicate", text, re.IGNORECASE):
            say("billing_twice")
        elif re.search(r"declin", text, re.IGNORECASE):
            say("billing_declined")
        elif WRONG_INVOICE.search(text):
            say("billing_wrong_invoice")
        elif re.search(r"invoice|\bvat\b|receipt", text, re.IGNORECASE):
            say("billing_invoice")
        else:
            from_knowledge()
    elif category == "complaint":
        say("complaint")
        escalate("complaint: the customer asks for a manager or is very unhappy")
    else:
        from_knowledge()

    # Every ticket is routed, also one that goes to a person: the queue is where that person works.
    if queue and not any(a["kind"] == TAG_TICKET for a in actions):
        actions.append({"kind": TAG_TICKET, "queue": queue,
                        "reason": f"{category.replace('_', ' ')} ticket"})
    if not paragraphs:
        say("fallback")
    reply = "\n\n".join([r.render("greeting", **fields), *paragraphs, r.render("sign_off")])
    priority = triage_priority(text, category, bool(injected), taxonomy)
    return json.dumps({"category": category, "priority": priority, "language": "en",
                       "reply": reply.strip(), "actions": actions,
                       "internal_note": " ".join(notes) or f"offline draft ({category})"},
                      ensure_ascii=False)


def review(messages: list[dict]) -> str:
    blocks = data_blocks(messages)
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


def action_args(action: dict) -> dict:
    """The arguments a planned action's tool takes."""
    return tool_args(action.get("kind"), action)


def action_calls(actions: list[tuple[str, dict]], tools: list[str]) -> list[dict]:
    """(kind, args) pairs as tool calls: one `carry_out_actions` call with all of them when that
    tool is offered (every field present, null when unused, as a strict-schema model sends them),
    else one call per action whose tool is offered."""
    if BATCH_TOOL in tools:
        return [_call(BATCH_TOOL, {"actions": [{"kind": kind, **dict.fromkeys(BATCH_FIELDS),
                                                **args} for kind, args in actions]})]
    return [_call(kind, args) for kind, args in actions if kind in tools]


def execute(messages: list[dict], tools: list[str]) -> str | list[dict]:
    results = tool_results(messages)
    if not results:
        planned = [(a.get("kind"), action_args(a)) for a in data_blocks(messages).get("actions") or []]
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


def respond(messages: list[dict], tools: list[str], schema: str | None,
            replies: Replies | None = None) -> str | list[dict]:
    """One model turn: text, JSON for a structured output, or a list of tool calls.

    `replies` are the shop's (replies.load_replies); without them, the generic ones.
    """
    if schema == "Draft":
        return write(messages, replies)
    if schema == "Verdict":
        return review(messages)
    if any(t in tools for t in EXECUTOR_TOOLS):
        return execute(messages, tools)
    if tools or tool_results(messages):
        return research(messages, tools, replies)
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
    """Deterministic stand-in for a model; labelled `offline` wherever a model name is recorded.

    The writer's sentences come from `replies` (the project's replies.yaml, parsed by
    llms.build_llms); without them, from the generic built-in ones.
    """

    llm_type: str = "offline"
    replies: Replies | None = Field(default=None, exclude=True)

    def call(self, messages, tools=None, callbacks=None, available_functions=None,
             from_task=None, from_agent=None, response_model=None):
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        with llm_call_context():
            self._emit_call_started_event(messages=messages, tools=tools, callbacks=callbacks,
                                          available_functions=available_functions,
                                          from_task=from_task, from_agent=from_agent)
            schema = response_model.__name__ if response_model is not None else None
            taxonomy = _call_taxonomy.set(getattr(response_model, "taxonomy", None)
                                          or taxonomy_for(self.replies))
            try:
                answer = self.respond(messages, _tool_names(tools), schema)
            finally:
                _call_taxonomy.reset(taxonomy)
            usage = {"prompt_tokens": _estimate_tokens(messages),
                     "completion_tokens": _estimate_tokens(answer)}
            self._emit_call_completed_event(response=answer, call_type=LLMCallType.LLM_CALL,
                                            from_task=from_task, from_agent=from_agent,
                                            messages=messages, usage=usage)
            return answer

    def respond(self, messages: list[dict], tools: list[str], schema: str | None
                ) -> str | list[dict]:
        """One turn; a subclass may play a role differently (the gate benchmark's faulty writer)."""
        return respond(messages, tools, schema, self.replies)

    def supports_function_calling(self) -> bool:
        return True

    def get_context_window_size(self) -> int:
        return 128_000

    def get_input_tokens_count(self, messages, tools=None, response_model=None) -> int:
        return _estimate_tokens(messages)
