"""The committed cassettes (tests/cassettes/, recorded against the fake server): production-style
tickets replayed through today's crew, gate and executor, with no model and no ledger.

A cassette answers only the requests it recorded. If the prompts changed on purpose, record the
cassettes again: `.venv/bin/python tests/cassettes/record.py`.
"""

from __future__ import annotations

import json

import pytest
from conftest import REPO

from crews.replay import Cassette, replay_cassette
from crews.settings import load_config

CASSETTES = sorted((REPO / "tests/cassettes").glob("*.json"))
RERECORD = ("if the prompts changed on purpose, record the cassettes again: "
            ".venv/bin/python tests/cassettes/record.py")


def test_there_are_cassettes():
    assert {p.stem for p in CASSETTES} >= {"T-1001", "T-1002", "T-1012", "T-1024"}


@pytest.mark.parametrize("path", CASSETTES, ids=lambda p: p.stem)
def test_a_cassette_replays_to_its_recorded_outcome_without_a_model(project, path):
    checks = replay_cassette(load_config(project), path, strict=True, environ={})
    assert [c.line() for c in checks if not c.same] == [], RERECORD


def test_what_the_cassettes_hold_and_what_the_code_decides(project):
    config = load_config(project)
    outcome = {}
    for path in CASSETTES:
        cassette = Cassette.load(path)
        assert "sk-" not in path.read_text()  # the recording key never reaches a cassette
        for check in replay_cassette(config, cassette, strict=True, environ={}):
            outcome[check.ticket_id] = check.replayed
    refund = "request_refund(amount=24.0, currency=USD, order_id=NW-10335)"
    assert outcome["T-1001"].status == "approved"
    assert (refund, "performed", "") in outcome["T-1001"].actions
    assert outcome["T-1024"].status == "needs_human"
    assert [a[1] for a in outcome["T-1024"].actions if a[0].startswith("request_refund")] == \
        ["refused"]
    assert outcome["T-1012"].status == "needs_human"
    assert "[info] suspicious_instructions" in outcome["T-1012"].findings
    assert outcome["T-1002"].status == "needs_human"
    steps = [c["step"] for c in json.loads(
        (REPO / "tests/cassettes/T-1002.json").read_text())["tickets"][0]["calls"]]
    assert steps.count("0:draft") == 1 and "2:draft" in steps  # the revision loop, recorded


def test_a_cassette_shows_what_a_lower_refund_limit_would_do(project, cli):
    policy = project / "config/policy.yaml"
    policy.write_text(policy.read_text().replace("auto_approve_limit: 50", "auto_approve_limit: 20"))
    cassette = str(REPO / "tests/cassettes/T-1001.json")
    strict = cli("replay", "--cassette", cassette, "--strict")
    assert strict.exit_code == 1
    assert strict.stdout.startswith("T-1001: changed: status: approved → failed")
    assert "request changed at step research: user message" in strict.stdout
    offline = cli("replay", "--cassette", cassette, "--offline")
    assert offline.exit_code == 1, offline.output
    assert offline.stdout.startswith("T-1001: changed: status: approved → needs_human; actions: "
                                     "queue_reply(): performed → not_run; request_refund(amount="
                                     "24.0, currency=USD, order_id=NW-10335): performed → refused "
                                     "(a refund of 24.00 USD is above the auto-approve limit of 20 "
                                     "USD")
