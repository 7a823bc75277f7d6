"""The offline writer: agents-only guidance never reaches a reply, a reply answers the ticket or
the ticket goes to a person, an order the customer named is answered as named, and the
sentences come from the shop's replies file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO

from crews import framework
from crews.knowledge import KnowledgeBase, Orders, words
from crews.replies import load_replies
from crews.settings import ConfigError, load_config
from crews.ticket import Status, Ticket

NO_ANSWER = "no confident answer in the knowledge base"


def make_ticket(body: str, subject: str = "Question", customer: str = "jess.lee@example.net",
                name: str = "Jessica Lee", history: str = "") -> Ticket:
    return Ticket(key="T-1", ticket_id="T-1", source="test", received_at="2026-11-19T10:00:00Z",
                  customer=customer, customer_name=name, subject=subject, body=body,
                  history=history, record_no=1)


def draft(project: Path, ticket: Ticket, replies=None) -> dict:
    """The offline writer's draft for a ticket, from the evidence the standard lookups find."""
    from crews import offline
    from crews.crew import data_block, policy_summary
    from crews.research import Evidence, look_up, research_tools

    config = load_config(project)
    evidence = Evidence()
    look_up(research_tools(["customer_orders", "lookup_order", "search_knowledge"], ticket,
                           evidence, KnowledgeBase(config.knowledge_dir),
                           Orders(config.orders_file)), ticket)
    messages = [{"role": "user", "content": "\n".join([
        data_block("ticket", ticket.as_prompt_data()), data_block("evidence", evidence.items),
        policy_summary(config.policy)])}]
    return json.loads(offline.write(messages, replies or load_replies(config)))


def escalations(d: dict) -> list[str]:
    return [a["reason"] for a in d["actions"] if a["kind"] == "escalate_to_human"]


def shares_a_run(reply: str, text: str, n: int = 5) -> bool:
    """Whether the reply repeats n words of the text in a row."""
    have = re.findall(r"[a-z0-9']+", reply.lower())
    runs = {" ".join(have[i:i + n]) for i in range(len(have) - n + 1)}
    want = re.findall(r"[a-z0-9']+", text.lower())
    return any(" ".join(want[i:i + n]) in runs for i in range(len(want) - n + 1))


@pytest.fixture
def crew_runner(project):
    framework.prepare(project / "runs" / ".crewai")
    from crews.crew import CrewRunner
    from crews.llms import build_llms

    def make(root: Path = project):
        config = load_config(root)
        return CrewRunner(config, build_llms(config, "offline"), KnowledgeBase(config.knowledge_dir),
                          Orders(config.orders_file), 2)

    return make


# --- agents-only guidance ------------------------------------------------------------------------

WRAPPING_AGENTS = ("Gift wrapping requests: wrap the present in the recycled gift paper from "
                   "shelf B, add a handwritten gift card and charge nothing for gift wrapping.")


@pytest.mark.parametrize("marked", ["heading", "front matter"])
def test_an_agents_only_section_that_matches_best_is_never_quoted(project, marked):
    kdir = project / "data" / "knowledge"
    if marked == "heading":
        (kdir / "gifts.md").write_text(
            "# Gifts\n\n## Gift cards for presents\n- Gift cards are sent by e-mail.\n\n"
            f"## Gift wrapping (agents only)\n- {WRAPPING_AGENTS}\n", encoding="utf-8")
    else:
        (kdir / "wrapping.md").write_text(
            f"---\naudience: agents\n---\n# Gift wrapping\n\n- {WRAPPING_AGENTS}\n",
            encoding="utf-8")
    kb = KnowledgeBase(kdir)
    body = "Do you do gift wrapping? Could you wrap my present in gift paper with a handwritten card?"
    best = kb.search(body, k=1)[0]
    assert best.internal and "gift paper" in best.text  # the premise: the best match is internal
    d = draft(project, make_ticket(body, subject="Gift wrapping"))
    assert not shares_a_run(d["reply"], WRAPPING_AGENTS), d["reply"]
    assert "shelf" not in d["reply"] and "handwritten" not in d["reply"]
    assert escalations(d) == [NO_ANSWER]
    assert "guidance for agents" in d["internal_note"]


def test_a_customer_section_that_clearly_wins_is_quoted_and_the_agents_one_is_not(project):
    (project / "data/knowledge/gifts.md").write_text(
        "# Gift wrapping\n\n## Gift wrapping\n- We wrap any order as a present in recycled gift "
        "paper with a gift card, free of charge.\n- Choose gift wrapping at checkout.\n\n"
        "## Wrapping station (agents only)\n- Tape for the wrapping station is in drawer 3.\n",
        encoding="utf-8")
    d = draft(project, make_ticket("Can you gift wrap my order as a present, with a gift card?",
                                   subject="Gift wrapping"))
    assert "We wrap any order as a present in recycled gift paper" in d["reply"]
    assert "drawer" not in d["reply"] and not escalations(d)


def test_research_notes_mark_agents_guidance(project):
    from crews import offline

    notes = offline.research([{"role": "tool", "content": json.dumps({"sections": [
        {"source": "tone-and-escalation.md", "title": "Tone", "text": "x", "audience": "agents"},
        {"source": "faq.md", "title": "Warranty", "text": "y", "audience": "customers"}]})}], [])
    assert "Knowledge [tone-and-escalation.md] Tone (guidance for agents, not for the reply)" in notes
    assert "Knowledge [faq.md] Warranty\n" in notes + "\n"


# --- a reply answers the ticket, or a person does ------------------------------------------------


def section(source: str, title: str, text: str, audience: str = "customers") -> dict:
    return {"source": source, "title": title, "text": text, "audience": audience}


SHIPPING_TIMES = section("shipping.md", "Shipping — Delivery times",
                         "- Delivery to Norway takes 5–8 business days after dispatch.\n"
                         "- Delivery to the UK takes 2–4 business days after dispatch.")
CHARGES = section("billing.md", "Billing and payments — How charges work",
                  "- At checkout the card is pre-authorised for the order total.")
CARDS = section("billing.md", "Billing and payments — Accepted payment methods",
                "- We accept Visa, Mastercard and PayPal.")


def test_a_billing_question_nearest_a_shipping_section_is_not_answered_with_it():
    from crews.offline import knowledge_answer
    from crews.replies import generic_replies

    replies = load_replies(load_config(REPO))
    text = "Billing question\nHow many business days does delivery to Norway take after dispatch?"
    lines, why = knowledge_answer([SHIPPING_TIMES, CHARGES, CARDS], text, "billing", replies)
    assert lines == [] and why == "the best topic (shipping) is not the ticket's category (billing)"
    # The same shipping answer is fine for a ticket that is about shipping, or about no known topic.
    for category in ("shipping", "general"):
        lines, _ = knowledge_answer([SHIPPING_TIMES, CHARGES, CARDS], text, category, replies)
        assert lines[0] == "Delivery to Norway takes 5–8 business days after dispatch."
    # A file `topics` does not list answers only a general ticket.
    lines, why = knowledge_answer([SHIPPING_TIMES, CHARGES], text, "shipping", generic_replies())
    assert lines == [] and "not the ticket's category" in why


def test_without_a_clear_margin_nothing_is_quoted():
    from crews.offline import MARGIN, knowledge_answer

    replies = load_replies(load_config(REPO))
    text = "Billing\nWhen is my card charged for delivery to Norway?"
    lines, why = knowledge_answer([SHIPPING_TIMES, CHARGES], text, "billing", replies)
    assert lines == [] and f"is not {MARGIN:g}x the next" in why


def test_a_billing_question_about_delivery_ends_needs_human_not_approved(crew_runner):
    result = crew_runner().run(make_ticket(
        "I was billed for delivery, how long does delivery take to the UK?",
        subject="Billing question", customer="someone.new@example.com", name="Ann Other"))
    assert result.draft.category == "billing"
    assert result.status == Status.NEEDS_HUMAN
    assert result.needs_human_reason == f"escalated: {NO_ANSWER}"
    assert "business days" not in result.draft.reply  # no shipping-times paragraph
    assert not any(d.allowed and d.kind == "queue_reply" for d in result.decisions)


def test_my_order_is_still_missing_is_about_the_order_not_a_policy_paragraph(project):
    d = draft(project, make_ticket("My order is still missing. Any news?", subject="Re: my order",
                                   customer="someone.new@example.com", name="Ann Other"))
    assert d["category"] == "shipping"
    assert "Could you send us your order number?" in d["reply"]
    with_history = draft(project, make_ticket(
        "My order is still missing. Any news?", subject="Re: my order",
        history="Hello, where is my order NW-10335? Jessica"))
    assert "NW-10335 (Soy Candle Set (3))" in with_history["reply"]
    assert "order number?" not in with_history["reply"]


def test_the_margin_rule_answers_the_sample_questions_it_answered_before(project):
    warranty = draft(project, make_ticket("Hi, thinking about buying the Smart Espresso Machine. "
                                          "How long is the warranty if I'm in the US, and what "
                                          "does it cover?", subject="Warranty on espresso machine"))
    assert "1 year for customers in the US" in warranty["reply"] and not escalations(warranty)
    shop_hours = draft(project, make_ticket("Is your shop in Berlin open on Sundays?",
                                            subject="Store"))
    assert escalations(shop_hours) == [NO_ANSWER]


# --- an order the customer named -----------------------------------------------------------------

BODIES = {
    "refund": "Please refund order {oid}, it was 20.00 EUR.",
    "cancellation": "Please cancel my order {oid}.",
    "shipping": "Where is my order {oid}? It has not arrived.",
    "damaged_item": "My order {oid} arrived broken.",
    "return": "I would like to return order {oid}, it is unused.",
}


@pytest.mark.parametrize("category", sorted(BODIES))
def test_a_named_order_that_does_not_exist_is_answered_as_not_found(project, category):
    d = draft(project, make_ticket(BODIES[category].format(oid="NW-99999")))
    assert d["category"] == category
    assert "We could not find order NW-99999 for this e-mail address." in d["reply"]
    assert "order number" not in d["reply"].lower(), d["reply"]
    # The customer's own orders are listed, to spot a typo.
    assert "NW-10335 (Soy Candle Set (3))" in d["reply"]


@pytest.mark.parametrize("category", sorted(BODIES))
def test_another_customers_order_is_not_found_for_this_address_and_not_described(project,
                                                                                 category):
    d = draft(project, make_ticket(BODIES[category].format(oid="NW-10323")))  # Julia Weber's
    reply = d["reply"]
    assert "We could not find the order you mentioned for this e-mail address" in reply
    assert "order number" not in reply.lower(), reply
    # The gate forbids naming another customer's order at all, so even its number stays out.
    for secret in ("NW-10323", "Stand Mixer", "Julia", "Weber", "249"):
        assert secret not in reply, secret
    assert not any(a.get("order_id") == "NW-10323" for a in d["actions"])


def test_a_typo_in_the_order_number_is_approved_with_the_not_found_answer(crew_runner):
    result = crew_runner().run(make_ticket(
        "Hi, I'd like to return the wool throw, order number NW-10828. It's unused.",
        subject="Return of blanket", customer="michael.obrien@example.com",
        name="Michael O'Brien"))
    assert result.status == Status.APPROVED, result.needs_human_reason
    assert "We could not find order NW-10828 for this e-mail address." in result.draft.reply
    assert "NW-10288 (Wool Throw Blanket)" in result.draft.reply


# --- the replies file ----------------------------------------------------------------------------

ACME = """\
shop: Acme Kitchens
replies:
  refund_requested:
    - "I have asked for {amount} {currency} to go back to your original payment method."
"""


def test_a_shops_own_replies_file_writes_its_replies(project, crew_runner):
    (project / "data/knowledge/replies.yaml").write_text(ACME, encoding="utf-8")
    result = crew_runner().run(make_ticket("Please refund the candles from NW-10335, $24.00.",
                                           subject="Refund request"))
    assert result.status == Status.APPROVED, result.needs_human_reason
    reply = result.draft.reply
    assert "I have asked for 24.00 USD to go back to your original payment method." in reply
    assert reply.endswith("Kind regards,\nAcme Kitchens Support")
    assert "Thank you for getting in touch about order NW-10335" in reply  # a generic reply
    assert "northwind" not in reply.lower()


def test_without_a_replies_file_the_generic_replies_name_no_shop(project):
    (project / "data/knowledge/replies.yaml").unlink()
    d = draft(project, make_ticket("Please refund the candles from NW-10335, $24.00."))
    assert d["reply"].endswith("Kind regards,\nCustomer Support")
    assert "northwind" not in d["reply"].lower().replace("northwind.example", "")


def test_the_replies_file_is_not_knowledge():
    kb = KnowledgeBase(REPO / "data" / "knowledge")
    assert (REPO / "data/knowledge/replies.yaml").is_file()
    assert {s.source for s in kb.sections} == {p.name for p in (REPO / "data/knowledge").glob("*.md")}


@pytest.mark.parametrize("text, problem", [
    ("replies: [unclosed\n", "data/knowledge/replies.yaml (line 2, column 1): not valid YAML"),
    ("- a list\n", "data/knowledge/replies.yaml: must be a mapping with the keys shop, facts"),
    ("replies:\n  refund_requestd: hi\n",
     "data/knowledge/replies.yaml: `replies.refund_requestd` is not a reply the offline model "
     "writes (did you mean `refund_requested`?)"),
    ("replies:\n  refund_thanks: 'About {order_number}.'\n",
     "data/knowledge/replies.yaml: `replies.refund_thanks` uses {order_number}, which crewbatch "
     "does not fill in (did you mean `order_id`?)"),
    ("replies:\n  refund_thanks: 'About {amount:.2f}.'\n",
     "`replies.refund_thanks` uses {amount:.2f}; write a plain field such as {order_id}"),
    ("facts:\n  reset_valid: 'valid for (\\d+'\n",
     "data/knowledge/replies.yaml: `facts.reset_valid` is not a valid regular expression"),
    ("facts:\n  reset_valid: 'valid for \\d+ hours'\n",
     "data/knowledge/replies.yaml: `facts.reset_valid` has no group"),
    ("topics:\n  shiping.md: [shipping]\n",
     "data/knowledge/replies.yaml: `topics` lists `shiping.md`, which is not a file in"),
    ("topics:\n  shipping.md: [shiping]\n",
     "data/knowledge/replies.yaml: `topics.shipping.md` names category `shiping`, which "
     "config/taxonomy.yaml does not define (did you mean `shipping`?)"),
    ("shop: Acme\nsignature: Bye\n",
     "data/knowledge/replies.yaml: unknown key `signature`"),
])
def test_a_broken_replies_file_is_a_configuration_error_naming_it(project, text, problem):
    (project / "data/knowledge/replies.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_replies(load_config(project))
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_check_and_run_stop_on_a_broken_replies_file_before_any_ticket(project, cli):
    (project / "data/knowledge/replies.yaml").write_text("replies:\n  complaint: '{oops'\n",
                                                         encoding="utf-8")
    for args in (["check"], ["run", "--offline"]):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert "data/knowledge/replies.yaml: `replies.complaint` has an unbalanced brace" in \
            result.stderr
    assert not list((project / "runs").glob("2*"))  # no run was started


def test_the_offline_model_names_no_shop():
    for path in (REPO / "crews/offline.py", REPO / "crews/replies.py",
                 REPO / "crews/generic_replies.yaml"):
        assert "northwind" not in path.read_text(encoding="utf-8").lower(), path


def test_every_reply_of_the_shop_file_uses_known_fields_and_facts():
    replies = load_replies(load_config(REPO))
    assert replies.shop == "Northwind Goods" and replies.source == "data/knowledge/replies.yaml"
    kb = KnowledgeBase(REPO / "data" / "knowledge")
    found = replies.find_facts([s.text for s in kb.sections if not s.internal])
    assert set(found) == set(replies.facts)  # every fact pattern matches the sample knowledge
    assert found["carrier_resolves"] == "7 business days"
    assert words(replies.render("sign_off")) == ["kind", "regards", "northwind", "goods", "support"]


# --- replies that do not answer the ticket (measured on the corpora: benchmarks/offline_quality.py) --

SOMEONE = {"customer": "someone.new@example.com", "name": "Ann Other"}


@pytest.mark.parametrize("body", [
    # Tech support for products the shop does not sell, as in the Kaggle and Twitter sets: each
    # once got an approved reply that shared a word or two with a knowledge line.
    "I've noticed a software bug in the app. It's causing data loss and unexpected errors during "
    "my billing cycle. How can I resolve this issue?",
    "My internet is down and the provider talks about 24-72 hours. Not acceptable.",
    "I have been experiencing occasional browser crashes, which disrupt my workflow frequently.",
    "Hey, your website's broken. It says there are no slots for the next 3 weeks.",
])
def test_a_ticket_sharing_only_common_words_with_the_knowledge_is_escalated(project, body):
    d = draft(project, make_ticket(body, subject="Issue", customer=SOMEONE["customer"],
                                   name=SOMEONE["name"]))
    assert escalations(d) == [NO_ANSWER], d["reply"]
    assert "arrived damaged" not in d["reply"] and "return or exchange" not in d["reply"]


def test_the_latest_version_is_not_a_late_parcel(project):
    from crews.offline import classify

    taxonomy = load_config(project).taxonomy
    assert classify("Freezes", "The app is already running the latest version.", taxonomy) \
        != "shipping"
    assert classify("Late", "My parcel is late.", taxonomy) == "shipping"


@pytest.mark.parametrize("body, asks", [
    ("How long do refunds usually take?", False),
    ("Can you show me your refund policy?", False),
    ("How can I check if there is any update on my refund?", True),
    ("How can I cancel the last order I made?", True),
])
def test_an_order_number_is_asked_for_only_about_an_order(project, body, asks):
    d = draft(project, make_ticket(body, subject="Refund", customer=SOMEONE["customer"],
                                   name=SOMEONE["name"]))
    asked = "order number" in d["reply"]
    assert asked is asks, d["reply"]
    if not asks:  # answered from the refund policy, or escalated: never an order-number request
        assert "business days" in d["reply"] or escalations(d) == [NO_ANSWER]


def test_a_line_about_the_order_table_is_not_quoted(project):
    d = draft(project, make_ticket("Can I still return items I received three weeks ago?",
                                   subject="Return window", **{"customer": SOMEONE["customer"],
                                                               "name": SOMEONE["name"]}))
    assert "order record" not in d["reply"] and "estimated_delivery" not in d["reply"]
