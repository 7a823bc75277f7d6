"""`crewbatch diff`: per-ticket changes, the summary, exit codes, and output that stays inert."""

from __future__ import annotations

import csv
import json

import pytest

from crews.diff import Facets, compare, reply_diff_text
from crews.ledger import Ledger
from crews.ticket import Status, Ticket

HOSTILE = ('=HYPERLINK("http://evil.example/x","click")\n<script>alert(1)</script> '
           '<img src=x onerror=alert(2)>')


def ticket(n: int, body: str = "Where is my order?") -> Ticket:
    return Ticket(key=f"T-{n}", ticket_id=f"T-{n}", source="tickets.csv", received_at="",
                  customer=f"c{n}@example.com", customer_name="", subject=f"s{n}", body=body,
                  record_no=n)


def refund(decision: str) -> dict:
    return {"kind": "request_refund", "args": {"order_id": "NW-1", "amount": 30.0,
                                               "currency": "EUR"},
            "decision": decision, "reason": "above the limit" if decision == "refused" else ""}


def record_run(ledger: Ledger, run_id: str, results: dict[int, dict]) -> None:
    ledger.start_run(run_id, "offline", {}, ["test"])
    todo = ledger.add_records(run_id, [ticket(n) for n in results], reprocess=True)
    for oid, t in todo:
        spec = dict(results[t.record_no])
        status = Status(spec.pop("status"))
        actions = spec.pop("actions", [])
        checks = spec.pop("checks", [])
        fields = {"category": "shipping", "priority": "normal", "critic_verdict": "approved",
                  "draft_reply": "Hello, your order is on its way.", "prompt_tokens": 100,
                  "completion_tokens": 20, "cost_usd": 0.001,
                  "actions_json": json.dumps(actions), **spec}
        assert ledger.claim(oid, "test")
        steps = [{"round": 0, "step": "checks", "agent": "gate", "model": "deterministic",
                  "output_text": "", "output_json": json.dumps(checks)}]
        ledger.record_result(oid, status, fields, steps, actions, "")
    ledger.finish_run(run_id, "completed", 0)


@pytest.fixture
def two_runs(project):
    with Ledger(project / "runs/ledger.db") as ledger:
        record_run(ledger, "20261201-010000-aaaa", {
            1: {"status": "approved", "actions": [refund("performed")]},
            2: {"status": "approved"},
            3: {"status": "needs_human", "checks": [{"check": "unknown_link", "severity": "major",
                                                     "detail": "x"}]},
            4: {"status": "approved"},
            5: {"status": "approved", "prompt_tokens": 999},
        })
        record_run(ledger, "20261202-010000-bbbb", {
            1: {"status": "needs_human", "actions": [refund("refused")], "cost_usd": 0},
            2: {"status": "approved", "draft_reply": HOSTILE},
            3: {"status": "needs_human", "critic_verdict": "rejected"},
            4: {"status": "approved", "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0,
                "duration_ms": 12345},
            6: {"status": "approved"},
        })
    return "20261201-010000-aaaa", "20261202-010000-bbbb"


def test_diff_lists_each_change_and_counts_outcomes_only(project, cli, two_runs, tmp_path):
    a, b = two_runs
    result = cli("diff", a, b)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == (f"diff {a} → {b}: 5 of 6 tickets changed: 1 approved → needs_human, "
                        "1 findings changed, 1 only in the first run, 1 only in the second "
                        "run, 1 reply changed")
    assert lines[1] == ("tokens 1,499 → 480; cost $0.0050 → $0.0030; ticket time 0.0s → 12.3s "
                        "(reported, not counted as changes)")
    assert "T-4" not in result.stdout  # only tokens, cost and time differ: not a change
    assert "  actions: request_refund(amount=30.0, currency=EUR, order_id=NW-1): performed → " \
           "refused (above the limit)" in lines
    assert "  findings: - [major] unknown_link" in lines
    assert "  verdict: approved → rejected" in lines
    assert "  reply: [-Hello, your order is on its way.-] {+=HYPERLINK(" in result.stdout


def test_the_html_and_csv_stay_inert_whatever_the_reply_holds(project, cli, two_runs, tmp_path):
    a, b = two_runs
    page = tmp_path / "diff.html"
    assert cli("diff", a, b, "-o", str(page)).exit_code == 1
    html = page.read_text(encoding="utf-8")
    assert "<script" not in html and "<img" not in html and "onerror=alert" not in html.replace(
        "onerror=alert(2)&gt;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<ins>" in html and "<del>" in html
    assert "http://" not in html.replace("http://evil.example/x", "")  # no external resource
    sheet = tmp_path / "diff.csv"
    assert cli("diff", a, b, "-o", str(sheet)).exit_code == 1
    raw = sheet.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw
    with open(sheet, encoding="utf-8-sig", newline="") as f:
        rows = {r["ticket_id"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["T-1", "T-2", "T-3", "T-4", "T-5", "T-6"]
    assert rows["T-2"]["reply_b"] == "'" + HOSTILE  # neutralised, and the line break kept
    assert rows["T-1"]["status_a"] == "approved" and rows["T-1"]["status_b"] == "needs_human"
    assert rows["T-4"]["changed"] == "no" and rows["T-5"]["status_b"] == "(absent)"


def test_diff_of_a_run_with_itself_exits_0_and_errors_exit_2(project, cli, two_runs, tmp_path):
    a, b = two_runs
    same = cli("diff", a, a)
    assert same.exit_code == 0
    assert same.stdout.splitlines()[0] == f"diff {a} → {a}: 0 of 5 tickets changed"
    missing = cli("diff", a, "20990101")
    assert missing.exit_code == 2
    assert "no run `20990101`" in missing.output
    assert cli("diff", a, b, "-o", str(tmp_path / "diff.txt")).exit_code == 2


def test_word_diff_and_compare():
    assert reply_diff_text("we will refund you today", "we will review it today") == \
        "we will [-refund you-] {+review it+} today"
    long = " ".join(f"w{i}" for i in range(40))
    assert reply_diff_text(long, long.replace("w20", "X")) == \
        "… w14 w15 w16 w17 w18 w19 [-w20-] {+X+} w21 w22 w23 w24 w25 w26 …"
    a = Facets("T-1", "approved", actions=(("tag_ticket(queue=returns)", "performed", ""),))
    b = Facets("T-1", "approved", actions=(("tag_ticket(queue=billing)", "performed", ""),),
               tokens=5, cost_usd=1.0)
    assert [c.text() for c in compare(a, b)] == [
        "actions: + tag_ticket(queue=billing): performed; - tag_ticket(queue=returns): performed"]
    assert compare(a, Facets("T-1", "approved", actions=a.actions, tokens=9)) == []
