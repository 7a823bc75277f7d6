"""Replay and diff through the real crew and the real HTTP path (the fake server on 127.0.0.1).

One run of the 51 sample tickets is recorded against the fake OpenAI server once per module;
each test replays a copy of that project after changing what its workflow changes (nothing, the
refund limit, the critic's prompt) and checks what reached the server and what `diff` says.
"""

from __future__ import annotations

import email
import json
import re
import shutil
import socket
import sqlite3
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_project
from fake_openai import FakeOpenAI
from test_review import export_and_edit

from crews.cli import main

KEY = "sk-test-replay-key-123456"


def invoke(root: Path, *args: str, env: dict | None = None):
    return CliRunner().invoke(main, ["--root", str(root), *args], env=env,
                              catch_exceptions=False)


def db(root: Path) -> sqlite3.Connection:
    return sqlite3.connect(root / "runs/ledger.db")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The sample project with one run recorded against the fake server: (root, run_id, port)."""
    root = make_project(tmp_path_factory.mktemp("recorded") / "project")
    with FakeOpenAI() as server:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server.base_url}
        result = invoke(root, "run", "--model", "fake-model", "--concurrency", "8", env=env)
        port = server.httpd.server_address[1]
        requests = len(server.requests)
    assert result.exit_code == 0, result.output
    return root, result.stdout.strip(), port, requests


@pytest.fixture
def project_copy(recorded, tmp_path):
    root, run_id, port, requests = recorded
    copy = tmp_path / "project"
    shutil.copytree(root, copy)
    return copy, run_id, port, requests


class Sentinel:
    """A listener on the dead server's port that counts every connection attempt."""

    def __init__(self, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sock.close()


def outcomes(root: Path, run_id: str) -> dict[str, tuple]:
    rows = db(root).execute("SELECT ticket_id, status, category, priority, critic_verdict, "
                            "draft_reply, actions_json FROM outcomes WHERE run_id = ?",
                            (run_id,)).fetchall()
    return {r[0]: r[1:] for r in rows}


def test_a_replay_with_the_server_gone_sends_nothing_and_changes_nothing(project_copy):
    root, run_id, port, _ = project_copy
    before = db(root).execute("SELECT (SELECT COUNT(*) FROM side_effects), "
                              "(SELECT COUNT(*) FROM refunds)").fetchone()
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}
    with Sentinel(port) as sentinel:
        result = invoke(root, "replay", run_id, env=env)
    assert result.exit_code == 0, result.output
    replay_id = result.stdout.strip()
    assert sentinel.connections == 0  # not one connection was even attempted
    assert outcomes(root, replay_id) == outcomes(root, run_id)
    con = db(root)
    calls = con.execute("SELECT COUNT(*), SUM(c.replayed), SUM(c.prompt_tokens + "
                        "c.completion_tokens), SUM(c.cost_usd) FROM model_calls c JOIN outcomes "
                        "USING (outcome_id) WHERE run_id = ?", (replay_id,)).fetchone()
    assert calls[0] > 150 and calls[1] == calls[0] and calls[2] == 0 and calls[3] == 0
    assert con.execute("SELECT replay_of FROM runs WHERE run_id = ?",
                       (replay_id,)).fetchone()[0] == run_id
    # Nothing real happened a second time: no side effect or refund recorded, and the replay's
    # replies are in its own outbox, marked as a replay.
    assert con.execute("SELECT (SELECT COUNT(*) FROM side_effects), "
                       "(SELECT COUNT(*) FROM refunds)").fetchone() == before
    approved = [t for t, o in outcomes(root, replay_id).items() if o[0] == "approved"]
    sent = sorted((root / "runs" / replay_id / "outbox").glob("*.eml"))
    assert len(sent) == len(approved) > 20
    assert all(email.message_from_bytes(p.read_bytes())["X-Crewbatch-Replay-Of"] == run_id
               for p in sent)
    refunds = list((root / "runs" / replay_id / "refund_requests").glob("*.json"))
    assert refunds and all(json.loads(p.read_text())["simulated_in_replay_of"] == run_id
                           for p in refunds)

    same = invoke(root, "diff", run_id, replay_id)
    assert same.exit_code == 0, same.output
    assert same.stdout.startswith(f"diff {run_id} → {replay_id}: 0 of 51 tickets changed\n")
    listing = invoke(root, "runs")
    assert f"(replay of {run_id})" in listing.stdout
    report = (root / "runs" / replay_id / "report.html").read_text()
    assert f"run {run_id}; side effects simulated, nothing sent" in report
    assert KEY.encode() not in (root / "runs/ledger.db").read_bytes()


def refund_amounts(root: Path, run_id: str) -> dict[str, float]:
    rows = db(root).execute("SELECT o.ticket_id, a.args_json FROM actions a JOIN outcomes o USING "
                            "(outcome_id) WHERE o.run_id = ? AND a.kind = 'request_refund'",
                            (run_id,)).fetchall()
    return {t: json.loads(args)["amount"] for t, args in rows}


def test_a_lower_refund_limit_changes_exactly_the_tickets_whose_refund_crosses_it(project_copy):
    root, run_id, _, _ = project_copy
    policy = root / "config/policy.yaml"
    policy.write_text(policy.read_text().replace("auto_approve_limit: 50", "auto_approve_limit: 20"))
    with FakeOpenAI() as server:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server.base_url}
        result = invoke(root, "replay", run_id, env=env)
        asked = len(server.requests)
    assert result.exit_code == 0, result.output
    replay_id = result.stdout.strip()
    assert asked > 0  # the limit is in the prompts' policy text: those requests changed
    crossing = {t for t, amount in refund_amounts(root, run_id).items() if 20 < amount <= 50}
    assert crossing == {"T-1001", "T-1017", "T-1040"}

    diffed = invoke(root, "diff", run_id, replay_id, "-o", str(root / "diff.csv"))
    assert diffed.exit_code == 1, diffed.output
    changed = {line.split(" ")[0] for line in diffed.stdout.splitlines()[2:]
               if not line.startswith(" ")}
    assert changed == crossing
    assert diffed.stdout.startswith(f"diff {run_id} → {replay_id}: 3 of 51 tickets changed: "
                                    "2 approved → needs_human, 1 ")
    assert "request_refund(amount=24.0, currency=USD, order_id=NW-10335): performed → refused " \
           "(a refund of 24.00 USD is above the auto-approve limit of 20 USD" in diffed.stdout
    import csv

    with open(root / "diff.csv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["ticket_id"] for r in rows if r["changed"] == "yes"} == crossing
    assert len(rows) == 51


@pytest.mark.slow
def test_an_edited_critic_prompt_changes_only_the_review_requests(project_copy):
    root, run_id, _, _ = project_copy
    tasks = root / "config/tasks.yaml"
    edited = tasks.read_text().replace("Review this draft reply before it is sent.",
                                       "Check this draft reply carefully before it is sent.")
    assert edited != tasks.read_text()
    tasks.write_text(edited)
    reviews = db(root).execute("SELECT COUNT(*) FROM model_calls JOIN outcomes USING (outcome_id) "
                               "WHERE run_id = ? AND step = 'review'", (run_id,)).fetchone()[0]
    with FakeOpenAI() as server:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server.base_url}
        result = invoke(root, "replay", run_id, env=env)
        bodies = [r["body"] for r in server.requests]
    assert result.exit_code == 0, result.output
    assert len(bodies) == reviews >= 51
    assert all(b["response_format"]["json_schema"]["name"] == "Verdict" for b in bodies)
    assert invoke(root, "diff", run_id, result.stdout.strip()).exit_code == 0

    with FakeOpenAI() as server:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server.base_url}
        strict = invoke(root, "replay", run_id, "--strict", env=env)
        assert server.requests == []
    assert strict.exit_code == 1, strict.output
    errors = {r[0] for r in db(root).execute(
        "SELECT error FROM outcomes WHERE run_id = ?", (strict.stdout.strip(),))}
    assert len(errors) == 1
    error = errors.pop()
    assert error.startswith("request changed at step review: user message (recorded “Current "
                            "Task: Review this draft reply…”, now “Current Task: Check this "
                            "draft reply…”)"), error

    # --offline: the offline model answers exactly what the recording lacks (no key needed).
    offline = invoke(root, "replay", run_id, "--offline")
    assert offline.exit_code == 0, offline.output
    by_model = dict(db(root).execute(
        "SELECT c.model || ':' || c.step || ':' || c.replayed, COUNT(*) FROM model_calls c JOIN "
        "outcomes USING (outcome_id) WHERE run_id = ? GROUP BY 1", (offline.stdout.strip(),)))
    assert by_model["offline:review:0"] == reviews
    assert {k for k in by_model if not k.endswith(":1")} == {"offline:review:0"}
    assert invoke(root, "diff", run_id, offline.stdout.strip()).exit_code == 0


def test_a_strict_replay_needs_no_key_and_a_failed_replay_ticket_is_not_skipped_later(
        project_copy):
    root, run_id, _, _ = project_copy
    result = invoke(root, "replay", run_id, "--strict", "--ticket", "T-1001", "--ticket",
                    "T-1024")
    assert result.exit_code == 0, result.output
    replay_id = result.stdout.strip()
    assert outcomes(root, replay_id) == {t: o for t, o in outcomes(root, run_id).items()
                                         if t in ("T-1001", "T-1024")}
    # A replay's approvals are simulated: a later real run still skips by the original's
    # outcomes only (T-1001 was approved in the original: skipped, naming that run).
    rows = db(root).execute("SELECT o.status, o.reason FROM outcomes o WHERE o.run_id = ? AND "
                            "o.ticket_id = 'T-1001'", (replay_id,)).fetchall()
    assert rows == [("approved", "")]
    later = invoke(root, "run", "--offline", "--limit", "1")
    assert later.exit_code == 0, later.output
    reason = db(root).execute("SELECT reason FROM outcomes WHERE run_id = ?",
                              (later.stdout.strip(),)).fetchone()[0]
    assert reason == f"already approved in run {run_id} with the same content"

    missing = invoke(root, "replay", run_id, "--ticket", "T-9999")
    assert missing.exit_code == 2
    assert f"run {run_id} has no processed ticket T-9999" in missing.output


def test_a_replays_review_sheet_is_refused(project_copy):
    root, run_id, _, _ = project_copy
    replay = invoke(root, "replay", run_id, "--strict", "--ticket", "T-1014")
    replay_id = replay.stdout.strip()
    sheet = export_and_edit(lambda *args: invoke(root, *args), replay_id,
                            root / "review.xlsx", {"T-1014": {"decision": "approve"}})
    applied = invoke(root, "review", "apply", str(sheet))
    assert applied.exit_code == 2
    assert f"a replay of run {run_id} whose side effects were only simulated" in applied.output


def test_a_replays_refunds_see_the_ledger_as_it_was_and_are_never_recorded(tmp_path):
    import functools

    from crews.actions import cap_refusal
    from crews.ledger import Ledger, RefundRequest, utc_now
    from crews.replay import SimulatedEffects, _utc
    from crews.settings import RefundPolicy

    def passes(history):
        return None

    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.reserve_refunds([RefundRequest("before", 1, "NW-1", "c@x.org", 10, "EUR", True,
                                              passes)])
        as_of = utc_now()  # the replayed run starts; it refunds NW-2 itself
        ledger.reserve_refunds([RefundRequest("original", 2, "NW-2", "c@x.org", 20, "EUR", True,
                                              passes)])
        effects = SimulatedEffects(lambda o, c: ledger.refund_history(o, c, as_of), as_of, "R")
        assert [r["idempotency_key"] for r in effects.history("NW-2", "c@x.org").rows] == \
            ["before"]
        caps = RefundPolicy(per_customer={"max_refunds": 2, "max_amount": 100})

        def request(key: str, order: str, amount: float) -> RefundRequest:
            guard = functools.partial(cap_refusal, caps, order, 100.0, amount, "EUR", False,
                                      now=_utc(as_of))
            return RefundRequest(key, 3, order, "c@x.org", amount, "EUR", True, guard)

        # The original's own refund of NW-2 does not stop the replay from refunding it ...
        assert effects.reserve_refunds([request("original", "NW-2", 20)]) is None
        assert effects.reserve_refunds([request("original", "NW-2", 20)]) is None  # a redo
        # ... but the replay's own refunds count against the caps, as they did in the original.
        assert effects.reserve_refunds([request("third", "NW-3", 5)]).startswith(
            "this customer already had 2 automatic refund(s) in the last 30 days")
        assert [r["idempotency_key"] for r in effects.history("NW-9", "c@x.org").rows] == \
            ["before", "original"]
        real = ledger.refund_history("NW-2", "c@x.org").rows
        assert [r["idempotency_key"] for r in real] == ["before", "original"]  # nothing added


def test_a_production_ticket_becomes_a_cassette_that_needs_no_ledger(project_copy, tmp_path):
    root, run_id, _, _ = project_copy
    path = tmp_path / "T-1040.json"
    saved = invoke(root, "replay", run_id, "--ticket", "T-1040", "--save-cassette", str(path))
    assert saved.exit_code == 0, saved.output
    assert saved.stdout.strip() == str(path)
    assert KEY not in path.read_text()
    assert invoke(root, "replay", run_id, "--save-cassette", str(path)).exit_code == 2
    for ledger in (root / "runs").glob("ledger.db*"):
        ledger.unlink()  # the cassette is all a replay of it needs
    replayed = invoke(root, "replay", "--cassette", str(path), "--strict")
    assert replayed.exit_code == 0, replayed.output
    assert replayed.stdout == "T-1040: same (approved)\n"


def test_another_model_is_asked_every_request_and_diff_reports_its_cost(project_copy):
    root, run_id, _, recorded_requests = project_copy
    settings = root / "config/settings.yaml"
    settings.write_text(settings.read_text().replace(
        "pricing:\n", "pricing:\n  cheap-model: {input_per_million: 0.1, output_per_million: 0.4}\n"))
    with FakeOpenAI() as server:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server.base_url}
        result = invoke(root, "replay", run_id, "--model", "cheap-model", env=env)
        models = {r["body"]["model"] for r in server.requests}
        asked = len(server.requests)
    assert result.exit_code == 0, result.output
    # The model is in the hash: every call of the original run goes to the server again. Counted
    # as calls in the ledger (a server's count also holds HTTP retries, which a loaded machine
    # makes now and then), plus at least one request per call on the server.
    with db(root) as con:
        calls = dict(con.execute("SELECT o.run_id, COUNT(*) FROM model_calls c JOIN outcomes o "
                                 "ON o.outcome_id = c.outcome_id GROUP BY o.run_id"))
    replayed = result.stdout.strip()
    assert calls[replayed] == calls[run_id] and asked >= calls[run_id]
    assert recorded_requests >= calls[run_id] and models == {"cheap-model"}
    diffed = invoke(root, "diff", run_id, result.stdout.strip())
    assert diffed.exit_code == 0  # the fake server answers every model alike
    usage = re.match(r"tokens ([\d,]+) → ([\d,]+); cost \$0\.0000 → \$(\d+\.\d+);",
                     diffed.stdout.splitlines()[1])
    assert usage and usage[1] == usage[2] and float(usage[3]) > 0, diffed.stdout
