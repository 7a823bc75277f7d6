"""Every command on a PostgreSQL ledger, as a user runs it: CREWBATCH_DATABASE_URL pointing at a
database of the session's test server (tests/pg.py), with a password that must show up nowhere."""

from __future__ import annotations

import csv
import json
from urllib.parse import quote

import pytest
from conftest import make_project, price_fake_model
from fake_openai import FakeOpenAI, Faults
from pg import PASSWORD

from crews.ledger import SCHEMA_VERSION, Ledger

pytestmark = pytest.mark.slow  # end to end: real processes and servers (README: Development)

SECRETS = (PASSWORD, quote(PASSWORD, safe=""), "s3cret")
# What the offline model decides per ticket: the same on either ledger.
COMPARED = ("ticket_id", "status", "category", "priority", "draft_reply", "critic_verdict",
            "revisions", "actions", "needs_human_reason", "error")


def no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def ledger_text(url: str) -> str:
    """Every row of every ledger table, as text."""
    with Ledger(url) as ledger:
        tables = [r[0] for r in ledger._db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "current_schema()")]
        return "\n".join(str(r[0]) for table in tables
                         for r in ledger._db.execute(f"SELECT t::text FROM {table} t"))


@pytest.fixture
def pg_cli(cli, pg_url):
    """`cli` with the project's ledger in a new PostgreSQL database (CREWBATCH_DATABASE_URL)."""
    def invoke(*args: str, env: dict | None = None):
        return cli(*args, env={"CREWBATCH_DATABASE_URL": pg_url, **(env or {})})
    return invoke


def test_an_offline_run_and_every_command_after_it(project, pg_cli, pg_url, results, tmp_path,
                                                   cli):
    first = pg_cli("run", "--offline", "data/tickets.csv")
    assert first.exit_code == 0, first.output
    run_id = first.stdout.strip()
    assert not (project / "runs/ledger.db").exists()  # nothing went to SQLite
    rows = results(project / "runs" / run_id / "results.csv")
    assert len(rows) == 51

    # The same run on an SQLite ledger decides every ticket the same way.
    other = make_project(tmp_path / "on-sqlite")
    plain = cli("--root", str(other), "run", "--offline", "data/tickets.csv")
    assert plain.exit_code == 0, plain.output
    on_sqlite = results(other / "runs" / plain.stdout.strip() / "results.csv")
    assert [[r[c] for c in COMPARED] for r in rows] == [[r[c] for c in COMPARED]
                                                        for r in on_sqlite]

    listed = pg_cli("runs", "--json")
    assert listed.exit_code == 0
    run, = json.loads(listed.stdout)
    assert (run["run_id"], run["status"], run["records"]) == (run_id, "completed", 51)
    shown = pg_cli("show", run_id[:15])
    assert shown.exit_code == 0 and "T-1024" in shown.stdout
    trail = pg_cli("show", run_id, "T-1024", "--json")
    assert [e["to_status"] for e in json.loads(trail.stdout)["events"]][-1] == "needs_human"
    sheet = tmp_path / "review.csv"
    assert pg_cli("export", run_id, "-o", str(sheet)).exit_code == 0
    assert pg_cli("export", run_id, "-o", str(tmp_path / "review.xlsx")).exit_code == 0
    report = pg_cli("report", run_id)
    assert report.exit_code == 0
    html = (project / "runs" / run_id / "report.html").read_text(encoding="utf-8")
    assert "postgresql://crewbatch:***@127.0.0.1:" in html

    replayed = pg_cli("replay", run_id, "--offline")
    assert replayed.exit_code == 0, replayed.output
    same = pg_cli("diff", run_id, replayed.stdout.strip())
    assert same.exit_code == 0, same.output

    with open(sheet, encoding="utf-8-sig", newline="") as f:
        decided = list(csv.DictReader(f))
    for r in decided:
        if r["ticket_id"] == "T-1024":
            r["decision"], r["reviewer_note"] = "approve", "supervisor approved"
    with open(sheet, "w", encoding="utf-8-sig", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(decided[0]))
        w.writeheader()
        w.writerows(decided)
    applied = pg_cli("review", "apply", str(sheet))
    assert applied.exit_code == 0, applied.output
    assert "T-1024: approve: queue_reply: " in applied.stdout
    again = pg_cli("review", "apply", str(sheet))
    assert "T-1024: already decided `approve`" in again.stdout
    assert len(list((project / "runs" / run_id / "refund_requests").glob("*-T-1024.json"))) == 1

    checked = pg_cli("check")
    assert checked.exit_code == 0, checked.output
    assert (f"ledger: ok (server reachable, schema version {SCHEMA_VERSION}) in "
            f"postgresql://crewbatch:***@127.0.0.1:{pg_url.split(':')[3].split('/')[0]}/"
            ) in checked.stdout

    outputs = [r.output for r in (first, listed, shown, trail, report, replayed, same, applied,
                                  again, checked)]
    files = [p.read_text(encoding="utf-8", errors="replace")
             for p in (project / "runs").rglob("*") if p.is_file()]
    no_secret(*outputs, *files, ledger_text(pg_url))


def test_retry_reruns_the_failed_tickets_from_the_database(project, pg_cli, results):
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text().replace("max_attempts: 4", "max_attempts: 1"))
    price_fake_model(project, 0.15, 0.60)
    with FakeOpenAI(Faults(errors=[500, 500])) as server:
        env = {"OPENAI_API_KEY": "sk-test-aaaaaaaa", "OPENAI_BASE_URL": server.base_url}
        first = pg_cli("run", "--model", "fake-model", "--limit", "5", "--concurrency", "1",
                       env=env)
        assert first.exit_code == 1, first.output
        failed = [r["ticket_id"] for r in
                  results(project / "runs" / first.stdout.strip() / "results.csv")
                  if r["status"] == "failed"]
        assert len(failed) == 2
        again = pg_cli("retry", first.stdout.strip(), env=env)
    assert again.exit_code == 0, again.output
    rows = results(project / "runs" / again.stdout.strip() / "results.csv")
    assert [r["ticket_id"] for r in rows] == failed
    assert {r["status"] for r in rows} <= {"approved", "needs_human"}
    assert (project / "runs/ledger.db").exists() is False


def test_a_database_that_refuses_exits_2_saying_where_and_what_to_do(project, cli, pg_server):
    from pg import free_port

    port = free_port()
    url = f"postgresql://crewbatch:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/support"
    for command in (["run", "--offline", "--limit", "2"], ["runs"], ["check"]):
        result = cli(*command, env={"CREWBATCH_DATABASE_URL": url})
        assert result.exit_code == 2, (command, result.output)
        assert result.stderr.startswith(
            f"crewbatch: postgresql://crewbatch:***@127.0.0.1:{port}/support: cannot reach "
            f"PostgreSQL at 127.0.0.1:{port}, database support, user crewbatch ("), command
        assert f"`pg_isready -h 127.0.0.1 -p {port}`" in result.stderr and result.stderr.count("\n") == 1
        no_secret(result.output)
    wrong = pg_server.url("postgres", password="wrong-s3cret")
    result = cli("runs", env={"CREWBATCH_DATABASE_URL": wrong})
    assert result.exit_code == 2 and "refused the login" in result.stderr
    no_secret(result.output)
