"""Policy in code: the executor's tools, the gate's checks, and a spreadsheet-safe sheet."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from crews import framework
from crews.export import describe_actions, neutralise
from crews.knowledge import Orders
from crews.outputs import Draft, ProposedAction
from crews.settings import Limits, Policy, load_config
from crews.ticket import Ticket


@pytest.fixture
def desk_for(project):
    framework.prepare(project / "runs" / ".crewai")
    from crews.actions import ActionDesk

    orders = Orders(project / "data/orders.csv")
    project_policy = load_config(project).policy

    def make(plan, customer="jess.lee@example.net", policy=None):
        ticket = Ticket(key="T-1", ticket_id="T-1", source="s", received_at="", customer=customer,
                        customer_name="", subject="s", body="b", record_no=1)
        draft = Draft(category="refund", priority="normal", language="en", reply="hi",
                      actions=plan)
        return ActionDesk(ticket, draft, plan, policy or project_policy, orders)

    return make


def refund(order_id="NW-10335", amount=24.0, currency="USD"):
    return ProposedAction(kind="request_refund", order_id=order_id, amount=amount,
                          currency=currency)


def test_refund_within_policy_is_allowed(desk_for):
    desk = desk_for([refund()])
    assert '"done": true' in desk.request_refund("nw-10335", 24.0, "usd")
    assert desk.decisions[0].allowed


@pytest.mark.parametrize("args,reason", [
    (("NW-10335", 24.0, "EUR"), "the refund is in EUR but order NW-10335 was paid in USD"),
    (("NW-10335", 30.0, "USD"), "the refund of 30.00 is more than the order total of 24.00"),
    (("NW-10323", 20.0, "EUR"), "order NW-10323 does not belong to this ticket's customer"),
    (("NW-00000", 5.0, "USD"), "order NW-00000 does not exist"),
    (("NW-10335", -1.0, "USD"), "a refund amount must be positive"),
])
def test_refunds_policy_refuses(desk_for, args, reason):
    desk = desk_for([refund()])
    desk.request_refund(*args)
    assert desk.decisions[0].allowed is False
    assert desk.decisions[0].reason == reason


def test_over_limit_and_unplanned_and_repeated_refunds(desk_for, project):
    owner = Orders(project / "data/orders.csv").owner("NW-10323")
    desk = desk_for([refund("NW-10323", 249.0, "EUR")], customer=owner)
    desk.request_refund("NW-10323", 249.0, "EUR")
    assert desk.decisions[-1].reason == ("a refund of 249.00 EUR is above the auto-approve limit "
                                         "of 50 EUR; a person must approve it")
    small = desk_for([refund(amount=10.0)])
    small.request_refund("NW-10335", 20.0, "USD")
    assert small.decisions[-1].reason == "the approved plan refunds 10.00, not 20.00"
    small.request_refund("NW-10335", 10.0, "USD")
    small.request_refund("NW-10335", 10.0, "USD")
    assert [d.allowed for d in small.decisions] == [False, True, False]
    assert small.decisions[-1].reason == "policy allows at most 1 refund request(s) per ticket"
    unplanned = desk_for([])
    unplanned.request_refund("NW-10335", 5.0, "USD")
    assert unplanned.decisions[-1].reason == "a refund on NW-10335 is not in the approved plan"


def test_queue_reply_and_tags_need_the_plan_and_policy(desk_for):
    desk = desk_for([ProposedAction(kind="tag_ticket", queue="billing")])
    desk.queue_reply()
    desk.tag_ticket("billing")
    desk.tag_ticket("vip-lounge")
    assert [(d.allowed, d.reason) for d in desk.decisions] == [
        (False, "sending a reply is not in the approved plan"), (True, ""),
        (False, "queue `vip-lounge` is not one of the queues in policy: shipping, returns, "
                "billing, accounts, escalations, general")]
    locked = desk_for([refund()], policy=Policy(allowed_actions=["queue_reply"]))
    locked.request_refund("NW-10335", 24.0, "USD")
    assert locked.decisions[0].reason == "request_refund is not an allowed action in " \
                                         "config/policy.yaml"


def test_a_crash_between_writing_a_reply_and_recording_it_never_makes_a_second(desk_for,
                                                                                 tmp_path):
    """kill -9 after the .eml is written but before the ledger says so: the ticket is redone by
    the next run, which writes that same file again (in the first run's outbox), not a copy."""
    from crews.actions import perform
    from crews.ledger import Ledger

    desk = desk_for([ProposedAction(kind="queue_reply"), refund()])
    desk.queue_reply()
    desk.request_refund("NW-10335", 24.0, "USD")

    class Killed(Exception):
        pass

    with Ledger(tmp_path / "l.db") as ledger:
        performed = ledger.side_effect_performed

        def crash(key):
            raise Killed(key)

        ledger.side_effect_performed = crash
        with pytest.raises(Killed):
            perform(desk.decisions, desk.ticket, desk.draft, tmp_path / "run1", ledger, 1)
        ledger.side_effect_performed = performed
        redo = perform(desk.decisions, desk.ticket, desk.draft, tmp_path / "run2", ledger, 2)
        again = perform(desk.decisions, desk.ticket, desk.draft, tmp_path / "run3", ledger, 3)
    # The reply went to run1's outbox again; the refund, never reached before the crash, to run2.
    assert [line.split(": ")[1].split("/")[-3] for line in redo] == ["run1", "run2"]
    assert all("already done" in line for line in again)
    files = sorted(f.relative_to(tmp_path).parent.as_posix()
                   for f in tmp_path.glob("run*/*/*") if not f.name.startswith("."))
    assert files == ["run1/outbox", "run2/refund_requests"]  # one reply, one refund request
    assert not (tmp_path / "run3").exists()


def test_a_ticket_redone_after_its_refund_was_reserved_is_not_refused_by_its_own_refund(
        desk_for, tmp_path):
    """kill -9 after `perform` reserved the refund and wrote the reply, before the outcome was
    recorded: the next run redoes the ticket, whose staging sees the ledger's refunds. Before,
    it counted its own reservation as an earlier refund of the order, refused the refund and sent
    the ticket to a person — with the killed attempt's reply and refund request already written.
    Another ticket for the same order is still refused."""
    from crews.actions import perform
    from crews.ledger import Ledger

    with Ledger(tmp_path / "l.db") as ledger:
        first = desk_for([ProposedAction(kind="queue_reply"), refund()])
        first.history = ledger.refund_history
        first.queue_reply()
        first.request_refund("NW-10335", 24.0, "USD")
        assert all(d.allowed for d in first.decisions)
        perform(first.decisions, first.ticket, first.draft, tmp_path / "run1", ledger, 1)

        redo = desk_for([ProposedAction(kind="queue_reply"), refund()])
        redo.history = ledger.refund_history
        redo.request_refund("NW-10335", 24.0, "USD")
        assert redo.decisions[0].allowed, redo.decisions[0].reason
        perform(redo.decisions, redo.ticket, redo.draft, tmp_path / "run2", ledger, 2)

        other = desk_for([refund()])
        other.ticket = Ticket(key="T-2", ticket_id="T-2", source="s", received_at="",
                              customer=other.ticket.customer, customer_name="", subject="s",
                              body="another ticket", record_no=2)
        other.history = ledger.refund_history
        other.request_refund("NW-10335", 24.0, "USD")
        assert not other.decisions[0].allowed
        assert "has already been refunded 24.00" in other.decisions[0].reason
        assert len(ledger.refund_history("NW-10335", other.ticket.customer).on_order()) == 1
    assert [f.parent.name for f in tmp_path.glob("run*/*/*") if not f.name.startswith(".")] \
        .count("refund_requests") == 1


def test_perform_writes_each_side_effect_once(desk_for, tmp_path):
    from crews.actions import perform
    from crews.ledger import Ledger

    desk = desk_for([ProposedAction(kind="queue_reply"), refund()])
    desk.queue_reply()
    desk.request_refund("NW-10335", 24.0, "USD")
    with Ledger(tmp_path / "l.db") as ledger:
        first = perform(desk.decisions, desk.ticket, desk.draft, tmp_path / "run1", ledger, 1)
        again = perform(desk.decisions, desk.ticket, desk.draft, tmp_path / "run2", ledger, 2)
    assert len(first) == 2 and all("already done" in line for line in again)
    assert len(list((tmp_path / "run1" / "outbox").glob("*.eml"))) == 1
    assert not (tmp_path / "run2").exists()
    eml = next((tmp_path / "run1" / "outbox").glob("*.eml")).read_text()
    assert "To: jess.lee@example.net" in eml and "Subject: Re: s" in eml


def test_gate_findings(project):
    framework.prepare(project / "runs" / ".crewai")
    from crews.gate import check_draft, detect_language
    from crews.research import Evidence

    ticket = Ticket(key="T", ticket_id="T", source="s", received_at="", customer="a@example.com",
                    customer_name="", subject="Where is NW-10335?", body="Please help, thanks",
                    record_no=1)
    evidence = Evidence()
    evidence.add("lookup_order", {"order_id": "NW-10323"},
                 {"found": False, "order_id": "NW-10323", "belongs_to_other_customer": True})
    reply = ("Hi [Customer Name], order NW-10335 and NW-10323 and NW-77777 are fine. Contact "
             "bob@example.org. Per my system prompt we will refund it. {{amount}}")
    draft = Draft(category="x", priority="normal", language="en", reply=reply,
                  actions=[ProposedAction(kind="request_refund", amount=99.0, currency="EUR")])
    checks = {(f.check, f.severity) for f in check_draft(draft, ticket, evidence, Policy(),
                                                         Limits())}
    assert ("placeholder", "major") in checks
    assert ("other_customer_data", "critical") in checks
    assert ("invented_fact", "critical") in checks
    assert ("internal_leak", "critical") in checks
    # "we will refund it" names no amount, so the proposed 99.00 refund is what it promises
    assert ("over_policy_promise", "critical") in checks
    assert detect_language("Guten Tag, ich habe meine Bestellung noch nicht bekommen") == "de"
    assert detect_language("Hola, mi pedido no ha llegado todavía, gracias") == "es"


def test_sheet_cells_are_inert_but_readable():
    assert neutralise("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")"
    assert neutralise("@SUM(A1)") == "'@SUM(A1)"
    assert neutralise("+1+1") == "'+1+1"
    assert neutralise("\tcmd") == "'\tcmd"
    assert neutralise("-1.5") == "-1.5"
    assert neutralise("a@b.example") == "a@b.example"
    assert neutralise(3) == 3
    assert describe_actions('[{"kind": "queue_reply", "args": {}, "decision": "performed"}]') \
        == "queue_reply(): performed"


def test_the_auto_approve_limit_is_inclusive(desk_for, project):
    owner = Orders(project / "data/orders.csv").owner("NW-10323")
    at_limit = desk_for([refund("NW-10323", 50.0, "EUR")], customer=owner)
    at_limit.request_refund("NW-10323", 50.0, "EUR")
    over = desk_for([refund("NW-10323", 50.01, "EUR")], customer=owner)
    over.request_refund("NW-10323", 50.01, "EUR")
    assert at_limit.decisions[0].allowed
    assert over.decisions[0].reason == ("a refund of 50.01 EUR is above the auto-approve limit "
                                        "of 50 EUR; a person must approve it")


def test_escalating_is_always_allowed_and_refusals_are_never_performed(desk_for, tmp_path):
    from crews.actions import perform
    from crews.ledger import Ledger

    desk = desk_for([ProposedAction(kind="tag_ticket", queue="returns")])
    desk.escalate_to_human("x" * 900)
    desk.request_refund("NW-10335", 24.0, "USD")    # not planned: refused
    desk.tag_ticket("returns")
    assert [d.allowed for d in desk.decisions] == [True, False, True]
    assert len(desk.decisions[0].args["reason"]) == 500
    with Ledger(tmp_path / "l.db") as ledger:
        lines = perform(desk.decisions, desk.ticket, desk.draft, tmp_path / "run", ledger, 1)
        again = perform(desk.decisions, desk.ticket, desk.draft, tmp_path / "run", ledger, 2)
    assert [line.split(":")[0] for line in lines] == ["escalate_to_human", "tag_ticket"]
    assert again == ["escalate_to_human: already done earlier, not repeated",
                     "tag_ticket: already done earlier, not repeated"]
    assert not (tmp_path / "run" / "refund_requests").exists()


def test_side_effects_are_keyed_by_ticket_content_and_action(desk_for):
    from dataclasses import replace

    from crews.actions import idempotency_key

    desk = desk_for([refund()])
    desk.request_refund("NW-10335", 24.0, "USD")
    d = desk.decisions[0]
    same = idempotency_key(desk.ticket, d)
    assert idempotency_key(replace(desk.ticket, record_no=7, source="other"), d) == same
    assert idempotency_key(replace(desk.ticket, body="edited"), d) != same   # edited: a new ticket
    assert idempotency_key(desk.ticket, replace(d, args={**d.args, "amount": 20.0})) != same


@pytest.fixture
def sample_crew(project):
    import csv

    framework.prepare(project / "runs" / ".crewai")
    from crews.crew import CrewRunner
    from crews.knowledge import KnowledgeBase
    from crews.offline import OfflineLLM

    config = load_config(project)
    llm = OfflineLLM(model="offline")
    runner = CrewRunner(config, {r: llm for r in config.agents},
                        KnowledgeBase(config.knowledge_dir), Orders(config.orders_file), 2)
    with open(project / "data" / "tickets.csv", encoding="utf-8") as f:
        rows = {r["ticket_id"]: r for r in csv.DictReader(f)}

    def run(ticket_id):
        r = rows[ticket_id]
        return runner.run(Ticket(key=ticket_id, ticket_id=ticket_id, source="t",
                                 received_at=r["received_at"], customer=r["customer"],
                                 customer_name=r["customer_name"], subject=r["subject"],
                                 body=r["body"], record_no=1))

    return run


@pytest.mark.parametrize("ticket_id,order_id,amount,currency", [
    ("T-1014", "NW-10365", 89.99, "GBP"), ("T-1018", "NW-10316", 1299.0, "USD"),
    ("T-1024", "NW-10323", 249.0, "EUR"), ("T-1042", "NW-10392", 159.0, "USD")])
def test_sample_refunds_over_the_limit_go_to_a_person_with_the_refund_visible(
        sample_crew, ticket_id, order_id, amount, currency):
    from crews.ticket import Status

    result = sample_crew(ticket_id)
    assert result.status == Status.NEEDS_HUMAN
    assert result.needs_human_reason == (
        f"policy refused: request_refund: a refund of {amount:.2f} {currency} is above the "
        f"auto-approve limit of 50 {currency}; a person must approve it")
    assert [(a.order_id, a.amount, a.currency) for a in result.plan
            if a.kind == "request_refund"] == [(order_id, amount, currency)]
    assert "supervisor" in result.draft.reply and result.revisions == 0


@pytest.mark.parametrize("ticket_id,amount", [("T-1001", 24.0), ("T-1006", 18.5),
                                              ("T-1029", 19.99), ("T-1031", 12.99),
                                              ("T-1040", 34.9)])
def test_sample_refunds_within_the_limit_are_approved_and_requested(sample_crew, ticket_id,
                                                                    amount):
    from crews.ticket import Status

    result = sample_crew(ticket_id)
    assert result.status == Status.APPROVED, result.needs_human_reason
    assert [d.args["amount"] for d in result.decisions
            if d.allowed and d.kind == "request_refund"] == [amount]


# --- carry_out_actions: the whole plan in one call ---------------------------------------------


def batch(*actions):
    """Actions as a strict-schema model sends them: every field present, null when unused."""
    fields = dict.fromkeys(("order_id", "amount", "currency", "queue", "reason"))
    return [{"kind": kind, **fields, **args} for kind, args in actions]


def test_the_batch_tool_hands_each_action_to_the_desk_and_answers_for_each(desk_for):
    from crews.action_tools import TOOLS, CarryOutActions, action_tools

    desk = desk_for([ProposedAction(kind="queue_reply"),
                     ProposedAction(kind="tag_ticket", queue="returns"), refund()])
    [tool] = action_tools(["carry_out_actions"], desk)
    assert isinstance(tool, CarryOutActions) and tool.result_as_answer
    assert set(TOOLS) == {"carry_out_actions", "queue_reply", "tag_ticket", "escalate_to_human",
                          "request_refund"}
    answer = tool.run(actions=batch(
        ("queue_reply", {}), ("tag_ticket", {"queue": "returns"}),
        ("request_refund", {"order_id": "nw-10335", "amount": 24.0, "currency": "usd"})))
    assert json.loads(answer) == [
        {"action": "queue_reply", "done": True},
        {"action": "tag_ticket", "done": True, "queue": "returns"},
        {"action": "request_refund", "done": True, "order_id": "NW-10335", "amount": 24.0,
         "currency": "USD"}]
    assert [(d.kind, d.allowed) for d in desk.decisions] == [
        ("queue_reply", True), ("tag_ticket", True), ("request_refund", True)]


def test_policy_refuses_actions_inside_a_batch_one_by_one(desk_for):
    from crews.action_tools import CarryOutActions

    desk = desk_for([refund()])
    tool = CarryOutActions().bind(desk)
    answer = json.loads(tool.run(actions=batch(
        ("request_refund", {"order_id": "NW-10335", "amount": 4999.0, "currency": "USD"}),
        ("request_refund", {"order_id": "NW-10493", "amount": 10.0, "currency": "EUR"}),
        ("tag_ticket", {"queue": "vip"}),
        ("queue_reply", {}),
        ("request_refund", {"order_id": "NW-10335", "amount": 24.0, "currency": "USD"}))))
    assert answer == [
        {"action": "request_refund", "done": False,
         "refused": "the refund of 4999.00 is more than the order total of 24.00"},
        {"action": "request_refund", "done": False,
         "refused": "order NW-10493 does not belong to this ticket's customer"},
        {"action": "tag_ticket", "done": False,
         "refused": "queue `vip` is not one of the queues in policy: shipping, returns, billing, "
                    "accounts, escalations, general"},
        {"action": "queue_reply", "done": False,
         "refused": "sending a reply is not in the approved plan"},
        {"action": "request_refund", "done": True, "order_id": "NW-10335", "amount": 24.0,
         "currency": "USD"}]
    assert [d.allowed for d in desk.decisions] == [False, False, False, False, True]


def test_an_unknown_or_incomplete_action_in_a_batch_is_refused_not_an_error(desk_for):
    from crews.action_tools import CarryOutActions

    desk = desk_for([refund(), ProposedAction(kind="tag_ticket", queue="returns")])
    tool = CarryOutActions().bind(desk)
    answer = json.loads(tool.run(actions=[
        {"kind": "delete_account", "reason": "the ticket asked"},
        {"kind": "request_refund", "order_id": "NW-10335", "currency": None},
        {"kind": "tag_ticket"},               # fields left out, as a non-strict model may
        {"kind": "escalate_to_human"},        # an escalation needs no reason
        {"kind": ""}]))
    assert answer == [
        {"action": "delete_account", "done": False,
         "refused": "`delete_account` is not an action; the actions are queue_reply, tag_ticket, "
                    "escalate_to_human, request_refund"},
        {"action": "request_refund", "done": False,
         "refused": "request_refund needs order_id, amount, currency; missing: amount, currency"},
        {"action": "tag_ticket", "done": False, "refused": "tag_ticket needs queue; missing: queue"},
        {"action": "escalate_to_human", "done": True, "reason": ""},
        {"action": "", "done": False,
         "refused": "`(none)` is not an action; the actions are queue_reply, tag_ticket, "
                    "escalate_to_human, request_refund"}]
    assert [(d.kind, d.args, d.allowed) for d in desk.decisions] == [
        ("delete_account", {"reason": "the ticket asked"}, False),
        ("request_refund", {"order_id": "NW-10335"}, False),
        ("tag_ticket", {}, False),
        ("escalate_to_human", {"reason": ""}, True),
        ("(none)", {}, False)]


def test_the_offline_executor_acts_in_one_model_call_and_its_answer_is_the_tools(sample_crew):
    from crews.ticket import Status

    result = sample_crew("T-1001")
    assert result.status == Status.APPROVED, result.needs_human_reason
    [execute] = [s for s in result.steps if s["step"] == "execute"]
    assert execute["calls"] == 1
    # result_as_answer: the step's output is the batch tool's own JSON, one entry per action.
    assert json.loads(execute["output_text"]) == [
        {"action": d.kind, "done": True, **d.args} for d in result.decisions]
    assert [d.kind for d in result.decisions] == ["queue_reply", "request_refund", "tag_ticket"]


def test_over_http_the_executor_sends_one_strict_batch_request_per_ticket(project, cli, results):
    from collections import Counter

    from fake_openai import FakeOpenAI

    with FakeOpenAI() as server:
        env = {"OPENAI_API_KEY": "sk-test-key-abcdef", "OPENAI_BASE_URL": server.base_url}
        result = cli("run", "--model", "fake-model", "--limit", "3", env=env)
        bodies = [r["body"] for r in server.requests]
    assert result.exit_code == 0, result.output
    rows = results(project / "runs" / result.stdout.strip() / "results.csv")
    assert len(rows) == 3 and {r["status"] for r in rows} <= {"approved", "needs_human"}
    executor = [b for b in bodies
                if any(t["function"]["name"] == "carry_out_actions" for t in b.get("tools", []))]
    tickets = Counter(json.loads(found[1])["ticket_id"] for b in executor for m in b["messages"]
                      if (found := re.search(r"<ticket>\n(.*?)\n</ticket>",
                                             str(m.get("content") or ""), re.DOTALL)))
    db = sqlite3.connect(project / "runs/ledger.db")
    executed = {t for (t,) in db.execute("SELECT o.ticket_id FROM steps s JOIN outcomes o ON "
                                         "o.outcome_id = s.outcome_id WHERE s.step = 'execute'")}
    assert len(executed) >= 2 and set(tickets) == executed
    assert set(tickets.values()) == {1}  # one request per ticket for the executor step
    [tool] = executor[0]["tools"]
    assert tool["function"]["strict"] is True
    params = tool["function"]["parameters"]
    assert params["required"] == ["actions"] and params["additionalProperties"] is False
    item = params["properties"]["actions"]["items"]
    assert item["additionalProperties"] is False
    assert item["required"] == ["kind", "order_id", "amount", "currency", "queue", "reason"]
    assert item["properties"]["kind"]["type"] == "string"
    for name in ("order_id", "amount", "currency", "queue", "reason"):
        assert {"type": "null"} in item["properties"][name]["anyOf"], name
    assert "default" not in json.dumps(params)


def test_every_kind_in_the_registry_has_its_own_tool_label_and_check(desk_for):
    """One entry in action_kinds.ACTIONS is enough for a kind to be proposed, offered as a tool,
    checked by the desk and labelled: the four places read the same table."""
    from crews.action_kinds import ACTIONS, tool_args
    from crews.action_tools import action_tools

    plan = [ProposedAction(kind="queue_reply"), ProposedAction(kind="tag_ticket", queue="returns"),
            ProposedAction(kind="escalate_to_human", reason="legal threat"), refund()]
    assert [a.kind for a in plan] == list(ACTIONS)
    desk = desk_for(plan)
    tools = {t.name: t for t in action_tools(list(ACTIONS), desk)}
    assert list(tools) == list(ACTIONS)
    for action in plan:
        spec = ACTIONS[action.kind]
        tool = tools[action.kind]
        assert tool.description == spec.description
        assert list(tool.args_schema.model_fields) == [a.name for a in spec.args]
        json.loads(tool.run(**tool_args(action.kind, action.model_dump())))
    assert [(d.kind, d.allowed, d.args) for d in desk.decisions] == [
        ("queue_reply", True, {}), ("tag_ticket", True, {"queue": "returns"}),
        ("escalate_to_human", True, {"reason": "legal threat"}),
        ("request_refund", True, {"order_id": "NW-10335", "amount": 24.0, "currency": "USD"})]
    assert [a.label() for a in plan] == [
        "queue_reply", "tag_ticket(returns)", "escalate_to_human(legal threat)",
        "request_refund(NW-10335, 24.00 USD)"]
    with pytest.raises(ValueError):
        ProposedAction(kind="delete_account")
