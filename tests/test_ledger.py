"""The ledger: migrations, idempotency, events written with the change, side effects once.

The tests of its behaviour run on both backends (`target`: an SQLite file, or a database on the
session's PostgreSQL server, tests/pg.py); those that build an old SQLite file by hand are
SQLite's own.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pytest

from crews.ledger import SCHEMA_VERSION, Ledger
from crews.ticket import Rejection, Status, Ticket

# Record numbers (and sources x.csv:N) unique across the module's tests, whichever worker runs
# them and in what order; hand-made records below use numbers from 10,000 on.
_records = iter(range(1, 10_000))


def t(key: str, body: str = "hello") -> Ticket:
    n = next(_records)
    return Ticket(key=key, ticket_id=key, source=f"x.csv:{n}", received_at="",
                  customer="a@x.example", customer_name="", subject="s", body=body, record_no=n)


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    """Where a test's ledger lives: an SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "l.db"
    return request.getfixturevalue("pg_url")


def test_migrations_are_applied_once_and_wal_is_on(tmp_path):
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        assert ledger.schema_version() == SCHEMA_VERSION
    with Ledger(path) as ledger:
        assert ledger.schema_version() == SCHEMA_VERSION
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == SCHEMA_VERSION


def test_a_version_1_ledger_is_migrated_in_place(tmp_path):
    from crews.ledger import MIGRATIONS

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_utc TEXT)")
    db.executescript(MIGRATIONS[0][1])
    db.execute("INSERT INTO schema_migrations VALUES (1, 'then')")
    db.execute("INSERT INTO runs (run_id, started_utc, status, model, options_json, sources_json) "
               "VALUES ('old', 'then', 'completed', 'offline', '{}', '[]')")
    db.commit()
    db.close()
    with Ledger(path) as ledger:
        assert ledger.schema_version() == SCHEMA_VERSION
        assert ledger.run("old").detail == ""
        assert ledger.run("old").replay_of is None


def test_finished_tickets_are_skipped_and_edits_are_processed(target):
    with Ledger(target) as ledger:
        ledger.start_run("r1", "offline", {}, [])
        todo = ledger.add_records("r1", [t("A"), t("B"), t("A"),
                                         Rejection(10_000, "x.csv:10000", "empty")], reprocess=False)
        assert [tk.key for _, tk in todo] == ["A", "B"]
        assert ledger.counts("r1") == {"pending": 2, "skipped": 1, "rejected": 1}
        for oid, _ in todo:
            assert ledger.claim(oid, "test")
        ledger.record_result(todo[0][0], Status.APPROVED, {"draft_reply": "hi"}, [], [], "ok")
        ledger.record_result(todo[1][0], Status.FAILED, {"error": "boom"}, [], [], "err")

        ledger.start_run("r2", "offline", {}, [])
        todo2 = ledger.add_records("r2", [t("A"), t("B"), t("A", "edited")], reprocess=False)
        assert [(tk.key, tk.body) for _, tk in todo2] == [("B", "hello"), ("A", "edited")]
        skipped = [o for o in ledger.outcomes("r2") if o.status == "skipped"]
        assert skipped[0].reason == "already approved in run r1 with the same content"

        ledger.start_run("r3", "offline", {}, [])
        assert len(ledger.add_records("r3", [t("A")], reprocess=True)) == 1


def test_status_and_event_are_one_transaction(target):
    with Ledger(target) as ledger:
        ledger.start_run("r1", "offline", {}, [])
        (oid, _), = ledger.add_records("r1", [t("A")], reprocess=False)
        assert ledger.claim(oid, "test")
        try:
            ledger.record_result(oid, Status.APPROVED, {"no_such_column": 1}, [], [], "x")
        except ValueError:
            pass
        trail = ledger.trail("r1", "A")
        assert trail["outcome"].status == "running"
        assert [e["to_status"] for e in trail["events"]] == ["pending", "running"]
        ledger.record_result(oid, Status.NEEDS_HUMAN, {"needs_human_reason": "why"},
                             [{"round": 0, "step": "draft", "agent": "writer", "model": "m",
                               "output_text": "t"}],
                             [{"kind": "request_refund", "args": {"amount": 99}, "decision":
                               "refused", "reason": "limit"}], "refused")
        trail = ledger.trail("r1", "A")
        assert [e["to_status"] for e in trail["events"]] == ["pending", "running", "needs_human"]
        assert trail["steps"][0].output_text == "t" and trail["steps"][0].output is None
        assert trail["actions"][0]["decision"] == "refused"


def test_interrupted_tickets_go_back_to_pending(target):
    with Ledger(target) as ledger:
        ledger.start_run("r1", "offline", {}, [])
        (oid, _), = ledger.add_records("r1", [t("A")], reprocess=False)
        assert ledger.claim(oid, "test")
        assert ledger.release_unfinished("r1", "stopped") == 1
        assert ledger.counts("r1") == {"pending": 1}


def test_side_effects_are_recorded_once(target):
    with Ledger(target) as ledger:
        assert ledger.record_side_effect("k", 1, "queue_reply", "f.eml") is True
        assert ledger.record_side_effect("k", 1, "queue_reply", "f.eml") is False
        assert ledger.side_effect_done("k")


def test_a_result_for_a_ticket_recovery_gave_back_is_dropped(target):
    """A straggler of a crashed run finishing after the next run's recovery must not record
    its ticket a second time."""
    with Ledger(target) as ledger:
        ledger.start_run("r1", "offline", {}, [])
        (oid, _), = ledger.add_records("r1", [t("A")], reprocess=False)
        assert ledger.claim(oid, "worker 1")
        assert ledger.recover_crashed_runs("died") == ["r1"]
        assert not ledger.still_running(oid)
        assert ledger.record_result(oid, Status.APPROVED, {}, [], [], "late") is False
        assert ledger.counts("r1") == {"pending": 1}


def test_a_side_effect_target_is_fixed_before_the_write(target):
    with Ledger(target) as ledger:
        assert ledger.intend_side_effect("k", 1, "queue_reply", "runs/a/outbox/x.eml") == \
            ("runs/a/outbox/x.eml", False)
        # A crash here (file written or not): the redo in another run gets the same target.
        assert ledger.intend_side_effect("k", 2, "queue_reply", "runs/b/outbox/x.eml") == \
            ("runs/a/outbox/x.eml", False)
        assert not ledger.side_effect_done("k")
        ledger.side_effect_performed("k")
        assert ledger.side_effect_done("k")
        assert ledger.intend_side_effect("k", 3, "queue_reply", "runs/c/outbox/x.eml") == \
            ("runs/a/outbox/x.eml", True)


def test_refunds_made_before_migration_4_count_against_the_caps(target):
    """An upgraded ledger knows the refunds performed before the `refunds` table existed (on
    PostgreSQL too: migration 4 reads the actions' JSON with ->> there)."""
    from crews.ledger import MIGRATIONS, POSTGRES, SQLITE, _PgConnection

    if isinstance(target, str):
        db, dialect = _PgConnection(target), POSTGRES
    else:
        db, dialect = sqlite3.connect(target, isolation_level=None), SQLITE
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_utc TEXT)")
    for version, sql in MIGRATIONS[:3]:
        for statement in filter(str.strip, sql.split(";\n")):
            db.execute(dialect.migration(statement))
        db.execute("INSERT INTO schema_migrations VALUES (?, 'then')", (version,))
    db.execute("INSERT INTO runs (run_id, started_utc, status, model, options_json, sources_json) "
               "VALUES ('old', 'then', 'completed', 'offline', '{}', '[]')")
    db.execute("INSERT INTO tickets (ticket_key, content_hash, ticket_id, received_at, customer, "
               "customer_name, subject, body, extra_json, first_seen_utc) VALUES ('T', 'h', 'T', "
               "'', 'jess@x.example', '', 's', 'b', '{}', 'then')")
    db.execute("INSERT INTO outcomes (outcome_id, run_id, record_no, source, ticket_id, ticket_key,"
               " content_hash, status, updated_utc) VALUES (7, 'old', 1, 's', 'T', 'T', 'h', "
               "'approved', 'then')")
    db.execute("INSERT INTO actions (outcome_id, kind, args_json, decision, created_utc) VALUES "
               "(7, 'request_refund', '{\"order_id\": \"nw-1\", \"amount\": 24.0, \"currency\": "
               "\"usd\"}', 'performed', '2026-11-20T00:00:00.000000Z')")
    db.close()
    with Ledger(target) as ledger:
        history = ledger.refund_history("NW-1", "jess@x.example")
    assert [(r["order_id"], r["amount"], r["currency"], r["outcome_id"]) for r in history.rows] \
        == [("NW-1", 24.0, "USD", 7)]


def test_every_reading_method_returns_plain_values(target):
    """The rows the exports, `show` and the report read are the same on both backends: ints,
    floats, text and bytes, by name."""
    with Ledger(target) as ledger:
        ledger.start_run("r1", "offline", {"concurrency": 2}, ["x.csv"])
        (oid, _), = ledger.add_records("r1", [t("A")], reprocess=False)
        assert ledger.claim(oid, "w").ticket_id == "A"
        assert ledger.claim(oid, "other") is None
        call = {"round": 0, "step": "draft", "agent": "writer", "model": "m", "prompt_tokens": 10,
                "completion_tokens": 5, "cached_tokens": 0, "cost_usd": 0.125, "seq": 1,
                "request_hash": "req", "response_hash": "resp", "replayed": True}
        raw = b"\x00\xff" + b"x" * 300
        assert ledger.record_result(
            oid, Status.APPROVED, {"cost_usd": 0.125, "prompt_tokens": 10, "revisions": 1,
                                   "draft_reply": "nul\x00gone"},
            [{"round": 0, "step": "draft", "agent": "writer", "model": "m", "output_text": "t",
              "prompt_tokens": 10, "completion_tokens": 5, "duration_ms": 7}], [], "ok",
            [call], {"req": raw, "resp": b"short"})
        assert ledger.blobs(["req", "resp", "missing"]) == {"req": raw, "resp": b"short"}
        assert ledger.recorded_calls(oid)[0]["replayed"] == 1
        assert ledger.run_cost("r1") == 0.125
        run, = ledger.runs()
        assert (run.records, run.cost_usd, run.counts) == (1, 0.125, {"approved": 1})
        assert "r1" in json.dumps(dataclasses.asdict(run))  # what `runs --json` prints
        assert ledger.run_ids_like("r") == ["r1"]
        usage, = ledger.step_usage("r1")
        assert usage == {"agent": "writer", "step": "draft", "model": "m", "calls": 1,
                         "prompt_tokens": 10, "completion_tokens": 5, "duration_ms": 7}
        assert all(type(usage[k]) is int for k in ("calls", "prompt_tokens", "duration_ms"))
        outcome, = ledger.outcomes("r1")
        assert (outcome.revisions, outcome.customer) == (1, "a@x.example")
        assert outcome.draft_reply in ("nul\x00gone", "nulgone")  # PostgreSQL text has no NUL
        assert ledger.outcome_ticket(oid).body == "hello"
        assert [e["to_status"] for e in ledger.trail("r1", "A")["events"]] == \
            ["pending", "running", "approved"]


def test_refund_caps_are_checked_in_the_reserving_transaction(target):
    from crews.ledger import RefundRequest

    def request(key: str, amount: float) -> RefundRequest:
        def guard(history):
            spent = sum(r["amount"] for r in history.on_order())
            return f"cap: {spent} already" if spent + amount > 50 else None
        return RefundRequest(key, 1, "nw-1", "A@x.example", amount, "usd", True, guard)

    with Ledger(target) as ledger:
        assert ledger.reserve_refunds([request("k1", 30)]) is None
        assert ledger.reserve_refunds([request("k1", 30)]) is None  # a redo: no second row
        assert ledger.reserve_refunds([request("k2", 10), request("k3", 30)]) == "cap: 40.0 already"
        history = ledger.refund_history("NW-1", "a@x.example")
        assert [(r["idempotency_key"], r["amount"], r["currency"]) for r in history.rows] == \
            [("k1", 30.0, "USD")]


def test_checkpoints_pass_to_the_resuming_attempt_once_and_go_with_its_result(target):
    """The model answers a crashed run's ticket had checkpointed are the next attempt's (the
    engine answers from them), once; a second copy of a request's answer (a worker declared
    dead wrote it too) does not replace the first; recording the result deletes them."""
    with Ledger(target) as ledger:
        ledger.start_run("r1", "offline", {}, [])
        (first, _), = ledger.add_records("r1", [t("A")], reprocess=False)
        ledger.set_workflow(first, "r1:w")
        assert ledger.claim(first, "worker 1")
        ledger.checkpoint(first, 1, "h1", {"type": "text", "content": "één"})
        ledger.checkpoint(first, 2, "h2", {"type": "text", "content": "two"})
        ledger.checkpoint(first, 2, "h2", {"type": "text", "content": "a late copy"})
        assert ledger.recover_crashed_runs("died") == ["r1"]
        ledger.start_run("r2", "offline", {}, [])
        (second, _), = ledger.add_records("r2", [t("A")], reprocess=False)
        assert ledger.resumable(second) == first
        assert ledger.checkpoints(second) == {
            1: {"request_hash": "h1", "response": {"type": "text", "content": "één"}},
            2: {"request_hash": "h2", "response": {"type": "text", "content": "two"}}}
        assert ledger.checkpoints(first) == {}
        assert ledger.resumable(second) is None
        assert ledger.claim(second, "worker 2")
        assert ledger.record_result(second, Status.APPROVED, {}, [], [], "done")
        assert ledger.checkpoints(second) == {}


def test_a_run_ends_once(target):
    """A stopping run's main thread and its stop watchdog may both record its end: the first
    stands, with one event, and a crashed run found later is not ended again."""
    with Ledger(target) as ledger:
        ledger.start_run("r1", "offline", {}, [])
        assert ledger.finish_run("r1", "stopped", 3, "time limit")
        assert not ledger.finish_run("r1", "interrupted", 3, "forced stop")
        assert (ledger.run("r1").status, ledger.run("r1").detail) == ("stopped", "time limit")
        ends = ledger._db.execute("SELECT from_status, to_status FROM events WHERE run_id = ? AND "
                                  "outcome_id IS NULL AND from_status = ?",
                                  ("r1", "running")).fetchall()
        assert [(e["from_status"], e["to_status"]) for e in ends] == [("running", "stopped")]
        ledger.start_run("r2", "offline", {}, [])
        assert ledger.recover_crashed_runs("died") == ["r2"]
        assert not ledger.finish_run("r2", "completed", 0)
        assert ledger.run("r2").status == "crashed"


def test_a_crashed_runs_ticket_cannot_be_claimed_by_the_next_run(target):
    """A crashed run's workflow left on the queue can be dequeued by the next run before that run
    cancels it; the ticket, taken again from the sources as a new outcome, must run once."""
    with Ledger(target) as ledger:
        ledger.start_run("r1", "offline", {}, [])
        (first, _), = ledger.add_records("r1", [t("A")], reprocess=False)
        assert ledger.recover_crashed_runs("died") == ["r1"]
        ledger.start_run("r2", "offline", {}, [])
        (second, _), = ledger.add_records("r2", [t("A")], reprocess=False)
        assert ledger.claim(first, "worker 2") is None
        assert ledger.claim(second, "worker 2").ticket_id == "A"
