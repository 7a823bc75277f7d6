"""The PostgreSQL ledger where it differs from SQLite's: many connections writing at once (rows
locked, refunds serialised), errors that name the server without the password, URLs redacted."""

from __future__ import annotations

import threading
import time
from urllib.parse import quote

import pytest
from pg import PASSWORD
from test_ledger import t

from crews.ledger import SCHEMA_VERSION, Ledger, LedgerError, RefundRequest, redact_url
from crews.ticket import RUNNING, Status


def test_the_schema_uses_postgresql_types(pg_url):
    with Ledger(pg_url) as ledger:
        assert ledger.schema_version() == SCHEMA_VERSION
    with Ledger(pg_url) as ledger:  # a second open applies nothing again
        types = {(r["table_name"], r["column_name"]): r["data_type"] for r in ledger._db.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema()")}
        assert ledger._db.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == SCHEMA_VERSION
    assert types[("outcomes", "cost_usd")] == "double precision"
    assert types[("blobs", "data")] == "bytea"
    assert types[("workers", "beat_s")] == "double precision"
    assert types[("outcomes", "outcome_id")] == "integer"


def _in_threads(n: int, work) -> list:
    """Run `work(i)` in n threads started together; their results in order."""
    results: list = [None] * n
    start = threading.Barrier(n)

    def run(i):
        start.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    return results


def test_hosts_claiming_at_once_never_take_a_ticket_twice(pg_url):
    with Ledger(pg_url) as ledger:
        ledger.start_run("r1", "offline", {}, [])
        todo = ledger.add_records("r1", [t(f"T{i}") for i in range(40)], reprocess=False)
    ledgers = [Ledger(pg_url) for _ in range(4)]  # a connection each, as separate hosts have

    def take_all(i):
        return [oid for oid, _ in todo if ledgers[i].claim(oid, f"host {i}") is not None]

    taken = _in_threads(4, take_all)
    assert sorted(sum(taken, [])) == sorted(oid for oid, _ in todo)
    # And claiming one named ticket: exactly one of the racers gets it.
    with Ledger(pg_url) as ledger:
        ledger.start_run("r2", "offline", {}, [])
        (oid, _), = ledger.add_records("r2", [t("ONE")], reprocess=False)
    assert sorted(_in_threads(4, lambda i: ledgers[i].claim(oid, f"host {i}") is not None)) == \
        [False, False, False, True]
    with Ledger(pg_url) as ledger:
        events = ledger.trail("r2", "ONE")["events"]
    assert [(e["from_status"], e["to_status"]) for e in events] == [("", "pending"),
                                                                    ("pending", "running")]
    for ledger in ledgers:
        ledger.close()


def test_a_result_racing_a_recovery_is_recorded_or_dropped_never_both(pg_url):
    with Ledger(pg_url) as ledger:
        ledger.start_run("r1", "offline", {}, [])
        todo = ledger.add_records("r1", [t(f"T{i}") for i in range(20)], reprocess=False)
        for oid, _ in todo:
            assert ledger.claim(oid, "host 1")
    finisher, recoverer = Ledger(pg_url), Ledger(pg_url)

    def work(i):
        if i == 0:
            return [finisher.record_result(oid, Status.APPROVED, {}, [], [], "done")
                    for oid, _ in todo]
        return recoverer.release_unfinished("r1", "host 1 presumed dead")

    recorded, released = _in_threads(2, work)
    with Ledger(pg_url) as ledger:
        counts = ledger.counts("r1")
        for oid, _ in todo:
            events = ledger.outcome_trail(oid)["events"]
            assert events[-1]["to_status"] == ledger.review_outcome(oid).status
            assert [e["to_status"] for e in events].count("approved") <= 1
    assert recorded.count(True) == counts.get("approved", 0)
    assert released == counts.get("pending", 0)
    assert recorded.count(True) + released == 20 and RUNNING not in counts
    finisher.close()
    recoverer.close()


def test_refunds_racing_for_one_order_cannot_both_pass_the_cap(pg_url):
    """Two hosts reserve a refund on the same order at the same moment; each guard sees the
    other's only if the reservations are serialised."""
    ledgers = [Ledger(pg_url) for _ in range(3)]

    def reserve(i):
        def guard(history):
            spent = sum(r["amount"] for r in history.on_order())
            time.sleep(0.2)  # widen the window between the check and the insert
            return "over the cap" if spent + 40 > 50 else None
        return ledgers[i].reserve_refunds([RefundRequest(f"k{i}", i, "NW-1", "a@x.example", 40,
                                                         "USD", True, guard)])

    outcomes = _in_threads(3, reserve)
    assert outcomes.count(None) == 1 and outcomes.count("over the cap") == 2
    assert len(ledgers[0].refund_history("NW-1", "a@x.example").rows) == 1
    for ledger in ledgers:
        ledger.close()


def test_two_hosts_creating_the_tables_at_once_both_open_it(pg_url):
    opened = _in_threads(3, lambda i: Ledger(pg_url))
    assert [ledger.schema_version() for ledger in opened] == [SCHEMA_VERSION] * 3
    for ledger in opened:
        ledger.close()


def test_a_refused_connection_names_the_server_not_the_password(pg_server):
    from pg import free_port

    port = free_port()  # nothing listens there
    url = f"postgresql://crewbatch:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/ledger"
    with pytest.raises(LedgerError) as err:
        Ledger(url)
    message = str(err.value)
    assert message.startswith(f"postgresql://crewbatch:***@127.0.0.1:{port}/ledger: cannot "
                              f"reach PostgreSQL at 127.0.0.1:{port}, database ledger, user "
                              "crewbatch (")
    assert f"(`pg_isready -h 127.0.0.1 -p {port}`)" in message and "CREWBATCH_DATABASE_URL" in message
    assert "s3cret" not in message and "s3cret" not in repr(err.value)


def test_a_wrong_password_or_database_says_what_to_fix(pg_server, pg_url):
    wrong = pg_server.url(pg_url.rsplit("/", 1)[1], password="not-the-one-s3cret")
    with pytest.raises(LedgerError) as err:
        Ledger(wrong)
    assert "refused the login" in str(err.value) and "PGPASSWORD" in str(err.value)
    assert "not-the-one" not in str(err.value)
    with pytest.raises(LedgerError) as err:
        Ledger(pg_server.url("no_such_db"))
    assert f"no such database at 127.0.0.1:{pg_server.port}, database no_such_db" in str(err.value)
    assert "`createdb no_such_db`" in str(err.value) and "s3cret" not in str(err.value)


def test_a_database_on_a_unix_socket_is_named_by_its_directory(pg_server):
    with pytest.raises(LedgerError) as err:
        Ledger(f"postgresql://crewbatch@/no_such_db?host={pg_server.home}&port={pg_server.port}")
    assert (f"no such database at the Unix socket in {pg_server.home} (port {pg_server.port}), "
            "database no_such_db, user crewbatch") in str(err.value)


def test_without_server_binaries_the_tests_say_what_to_install(monkeypatch):
    import pg

    monkeypatch.setattr(pg, "server_binaries", lambda: None)
    assert pg._why_not() == ("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in "
                             "/usr/lib/postgresql/*/bin; install Debian's `postgresql` package")


def test_check_helpers_on_a_database(pg_server, pg_url):
    assert Ledger.inspect(pg_url) == [] and Ledger.is_empty(pg_url)
    with Ledger(pg_url) as ledger:
        assert Ledger.is_empty(pg_url)
        ledger.start_run("r1", "offline", {}, [])
    assert Ledger.inspect(pg_url) == [] and not Ledger.is_empty(pg_url)
    problems = Ledger.inspect(pg_server.url("no_such_db"))
    assert len(problems) == 1 and "no such database" in problems[0]
    assert "s3cret" not in problems[0]


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:pa%40ss@db.example:5432/crew", "postgresql://u:***@db.example:5432/crew"),
    ("postgres://u:p@ss:w@host/db?sslmode=require", "postgres://u:***@host/db?sslmode=require"),
    ("postgresql://u@host/db?password=x&sslmode=require",
     "postgresql://u@host/db?password=***&sslmode=require"),
    ("postgresql://host/db?sslmode=require&PASSWORD=x",
     "postgresql://host/db?sslmode=require&PASSWORD=***"),
    # An @ the URL should have escaped: more is hidden rather than less.
    ("postgresql://u:pw@host/db?application_name=a@b", "postgresql://u:***@b"),
    ("postgresql://u@host:5433/db", "postgresql://u@host:5433/db"),
    ("postgresql:///db?host=/var/run/postgresql", "postgresql:///db?host=/var/run/postgresql"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_the_fleet_rate_window_and_pauses_on_postgresql(pg_url):
    import time

    with Ledger(pg_url) as ledger:
        now = time.time()
        assert ledger.take_request_slot("m", 2, None, 5, now) == 0.0
        assert ledger.take_request_slot("m", 2, None, 5, now + 1) == 0.0
        assert abs(ledger.take_request_slot("m", 2, None, 5, now + 2) - 58.0) < 1e-6
        assert ledger.take_request_slot("m", 2, None, 5, now + 61) == 0.0
        ledger.pause_model("m", now + 30)
        ledger.pause_model("m", now + 10)  # a shorter pause does not shorten it
        assert ledger.model_paused_until("m") == now + 30
