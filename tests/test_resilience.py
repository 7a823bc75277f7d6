"""Unattended operation: single-flight lock, budgets, signals, kill -9 and resume, retry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, price_fake_model
from fake_openai import FakeOpenAI, Faults

pytestmark = pytest.mark.slow  # end to end: real processes and servers (README: Development)


def crewbatch(project, *args, env=None):
    """Start crewbatch as cron would: a separate process, from outside the project."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CREWAI_STORAGE")}
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "crews", "--root", str(project), *args],
                            cwd="/", env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def outcomes(project):
    import sqlite3

    db = sqlite3.connect(project / "runs/ledger.db")
    return db.execute("SELECT run_id, ticket_id, status FROM outcomes ORDER BY outcome_id"
                      ).fetchall()


def test_a_second_run_exits_2_at_once_while_one_is_active(project):
    with FakeOpenAI(Faults(latency_s=0.3)) as server:
        env = {"OPENAI_API_KEY": "sk-test-aaaaaaaa", "OPENAI_BASE_URL": server.base_url}
        first = crewbatch(project, "run", "--model", "fake-model", "--limit", "4", env=env)
        deadline = time.monotonic() + 60
        while not (project / "runs/crewbatch.lock").exists() or \
                not (project / "runs/crewbatch.lock").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        started = time.monotonic()
        second = crewbatch(project, "run", "--offline", env=env)
        out, err = second.communicate(timeout=60)
        assert second.returncode == 2, err
        assert time.monotonic() - started < 15
        assert "another crewbatch run is active (pid" in err
        assert out == ""
        first.communicate(timeout=300)
    assert first.returncode == 0
    rows = outcomes(project)
    assert len(rows) == 4 and len({r[1] for r in rows}) == 4  # nothing processed twice


def test_budget_stops_new_tickets_and_the_next_run_finishes_the_rest(project, cli, results):
    price_fake_model(project, 1000, 1000)
    with FakeOpenAI() as server:
        env = {"OPENAI_API_KEY": "sk-test-aaaaaaaa", "OPENAI_BASE_URL": server.base_url}
        first = cli("run", "--model", "fake-model", "--limit", "12", "--concurrency", "2",
                    "--batch-size", "4", "--max-cost", "0.01", env=env)
        assert first.exit_code == 3, first.output
        assert "crewbatch: stopped early: budget of $0.01 reached" in first.stderr
        rows = results(project / "runs" / first.stdout.strip() / "results.csv")
        finished = [r for r in rows if r["status"] != "pending"]
        assert 1 <= len(finished) < 12 and sum(float(r["cost_usd"]) for r in finished) >= 0.01
        second = cli("run", "--model", "fake-model", "--limit", "12", env=env)
    assert second.exit_code == 0
    rows2 = results(project / "runs" / second.stdout.strip() / "results.csv")
    redone = [r["ticket_id"] for r in rows2 if r["status"] != "skipped"]
    assert sorted(redone + [r["ticket_id"] for r in finished]) == \
        sorted(r["ticket_id"] for r in rows2)


def test_sigterm_lets_in_flight_tickets_finish_and_exits_3(project):
    with FakeOpenAI(Faults(latency_s=0.4)) as server:
        env = {"OPENAI_API_KEY": "sk-test-aaaaaaaa", "OPENAI_BASE_URL": server.base_url}
        proc = crewbatch(project, "run", "--model", "fake-model", "--limit", "20",
                         "--concurrency", "2", env=env)
        deadline = time.monotonic() + 120
        while len(server.requests) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "stopping: in-flight tickets finish" in err
    run_id = out.strip()
    rows = [r for r in outcomes(project) if r[0] == run_id]
    statuses = {r[2] for r in rows}
    assert "pending" in statuses and "running" not in statuses
    import sqlite3

    status = sqlite3.connect(project / "runs/ledger.db").execute(
        "SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0]
    assert status == "interrupted"


def test_kill_9_then_rerun_finishes_each_ticket_exactly_once(project):
    with FakeOpenAI(Faults(latency_s=0.05)) as server:
        env = {"OPENAI_API_KEY": "sk-test-aaaaaaaa", "OPENAI_BASE_URL": server.base_url}
        for calls_before_kill in (6, 30):
            seen = len(server.requests)
            proc = crewbatch(project, "run", "--model", "fake-model", "--limit", "16",
                             "--concurrency", "4", env=env)
            deadline = time.monotonic() + 120
            while len(server.requests) < seen + calls_before_kill:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.02)
            proc.kill()  # SIGKILL: no handler, no cleanup
            proc.wait()
        final = crewbatch(project, "run", "--model", "fake-model", "--limit", "16", env=env)
        out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    rows = outcomes(project)
    finished = [(r[1], r[2]) for r in rows if r[2] in ("approved", "needs_human")]
    assert sorted(t for t, _ in finished) == sorted({t for t, _ in finished})  # none twice
    assert len(finished) == 16
    outbox = [p.name for p in (project / "runs").glob("*/outbox/*.eml")]
    assert len(outbox) == len(set(outbox)) == sum(1 for _, s in finished if s == "approved")
    import sqlite3

    runs = dict(sqlite3.connect(project / "runs/ledger.db").execute(
        "SELECT run_id, status FROM runs"))
    assert sorted(runs.values()).count("crashed") == 2


def test_after_kill_9_only_the_requests_in_flight_are_asked_again(project):
    """Durable at the step: a ticket killed after some of its model requests resumes in the next
    run from their checkpoints (the engine's DBOS workflow), so the two runs together ask the
    model what one clean run asks, plus at most the requests in flight at the kill."""
    with FakeOpenAI(Faults(latency_s=0.3)) as server:
        env = {"OPENAI_API_KEY": "sk-test-aaaaaaaa", "OPENAI_BASE_URL": server.base_url}
        proc = crewbatch(project, "run", "--model", "fake-model", "--limit", "8",
                         "--concurrency", "4", env=env)
        deadline = time.monotonic() + 120
        while len(server.requests) < 14:  # every ticket in flight is a few requests in
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        asked_before_kill = len(server.requests)
        final = crewbatch(project, "run", "--model", "fake-model", "--limit", "8", env=env)
        out, err = final.communicate(timeout=300)
        assert final.returncode == 0, err
        both = len(server.requests)
        clean = crewbatch(project, "run", "--model", "fake-model", "--limit", "8",
                          "--reprocess", env=env)
        out, err = clean.communicate(timeout=300)
        assert clean.returncode == 0, err
        one_clean_run = len(server.requests) - both
    assert asked_before_kill >= 14
    assert both <= one_clean_run + 4, (both, one_clean_run)


def test_retry_reruns_only_the_failed_tickets(project, cli, results):
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text().replace("max_attempts: 4", "max_attempts: 1"))
    with FakeOpenAI(Faults(errors=[500, 500])) as server:
        env = {"OPENAI_API_KEY": "sk-test-aaaaaaaa", "OPENAI_BASE_URL": server.base_url}
        first = cli("run", "--model", "fake-model", "--limit", "5", "--concurrency", "1", env=env)
        assert first.exit_code == 1
        failed = [r["ticket_id"] for r in
                  results(project / "runs" / first.stdout.strip() / "results.csv")
                  if r["status"] == "failed"]
        assert len(failed) == 2
        again = cli("retry", first.stdout.strip()[:15], env=env)
    assert again.exit_code == 0, again.output
    rows = results(project / "runs" / again.stdout.strip() / "results.csv")
    assert [r["ticket_id"] for r in rows] == failed
    assert {r["status"] for r in rows} <= {"approved", "needs_human"}
    nothing = cli("retry", again.stdout.strip())
    assert nothing.exit_code == 0 and "has no failed tickets; nothing to retry" in nothing.stderr


def test_cron_like_environment_from_root_dir(project):
    env = {"PATH": f"{REPO / '.venv' / 'bin'}:/usr/bin:/bin", "HOME": str(project.parent)}
    out = subprocess.run([sys.executable, "-m", "crews", "--root", str(project), "run",
                          "--offline", "--limit", "3"], cwd="/", env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and out.stderr.count("\n") == 1  # one summary line on stderr
    assert (project / "runs" / out.stdout.strip() / "run.log").read_text().count(
        "ticket finished") == 3


def test_nightly_sources_from_settings_and_an_empty_drop_folder(project, cli, results, tmp_path,
                                                                 monkeypatch):
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text().replace("  - data/tickets.csv",
                                                     "  - inbox/*.csv"))
    (project / "inbox").mkdir()
    monkeypatch.chdir(tmp_path)  # cron starts in $HOME: the globs are the project's, not cwd's
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "decoy.csv").write_text("id,body\n1,not this one\n")
    empty = cli("--root", str(project), "run", "--offline")
    assert empty.exit_code == 0, empty.output
    assert "0 records" in empty.stderr
    (project / "inbox" / "night.csv").write_text(
        (project / "data/tickets.csv").read_text().split("\nT-1003")[0] + "\n")
    night = cli("--root", str(project), "run", "--offline")
    assert night.exit_code == 0
    rows = results(project / "runs" / night.stdout.strip() / "results.csv")
    assert [r["ticket_id"] for r in rows] == ["T-1001", "T-1002"]


def test_keys_come_from_the_projects_env_file_under_cron(project):
    with FakeOpenAI() as server:
        (project / ".env").write_text(f"OPENAI_API_KEY=sk-from-dotenv-123456\n"
                                      f"OPENAI_BASE_URL={server.base_url}\n")
        env = {"PATH": f"{REPO / '.venv' / 'bin'}:/usr/bin:/bin"}
        out = subprocess.run([sys.executable, "-m", "crews", "--root", str(project), "run",
                              "--model", "fake-model", "--limit", "2"], cwd="/", env=env,
                             capture_output=True, text=True, timeout=300)
        auth = {r["headers"].get("Authorization") for r in server.requests}
    assert out.returncode == 0, out.stderr
    assert auth == {"Bearer sk-from-dotenv-123456"}
    run_dir = project / "runs" / out.stdout.strip()
    for path in [project / "runs/ledger.db", *run_dir.iterdir()]:
        if path.is_file():
            assert b"sk-from-dotenv" not in path.read_bytes(), path


def children_of(pid: int) -> list[int]:
    kids = []
    for stat in __import__("pathlib").Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_workers_share_a_run_and_die_with_it(project, results):
    import sqlite3

    with FakeOpenAI(Faults(latency_s=0.05)) as server:
        env = {"OPENAI_API_KEY": "sk-test-aaaaaaaa", "OPENAI_BASE_URL": server.base_url}
        proc = crewbatch(project, "run", "--model", "fake-model", "--limit", "24",
                         "--workers", "2", "--concurrency", "4", env=env)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        db = sqlite3.connect(project / "runs/ledger.db")
        claims = db.execute("SELECT outcome_id, COUNT(*), GROUP_CONCAT(detail) FROM events "
                            "WHERE to_status = 'running' AND outcome_id IS NOT NULL "
                            "GROUP BY outcome_id").fetchall()
        assert len(claims) == 24 and all(n == 1 for _, n, _ in claims)
        # Both processes worked tickets: the run's own and the `crewbatch worker` it started.
        roles = dict(db.execute("SELECT executor_id, role FROM workers").fetchall())
        claimers = {roles[who.removeprefix("claimed by ")] for _, _, who in claims}
        assert claimers == {"run", "worker"}
        assert {r["status"] for r in results(project / "runs" / out.strip() / "results.csv")} \
            <= {"approved", "needs_human"}

        before = len(server.requests)
        proc = crewbatch(project, "run", "--model", "fake-model", "--limit", "48",
                         "--workers", "2", "--concurrency", "4", env=env)
        deadline = time.monotonic() + 120
        # Killed mid-run: a few of the 24 new tickets done (about 4 requests each), most not.
        while not [k for k in children_of(proc.pid)] or len(server.requests) < before + 30:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        kids = children_of(proc.pid)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 60
        while any(os.path.exists(f"/proc/{k}") and "Z" not in open(f"/proc/{k}/stat").read()
                  .rsplit(")", 1)[1].split()[0] for k in kids):
            assert time.monotonic() < deadline, "worker processes outlived the killed run"
            time.sleep(0.2)
        final = crewbatch(project, "run", "--model", "fake-model", "--limit", "48", env=env)
        out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    finished = db.execute("SELECT ticket_id, COUNT(*) FROM outcomes WHERE status IN "
                          "('approved', 'needs_human') GROUP BY ticket_id").fetchall()
    assert len(finished) == 48 and all(n == 1 for _, n in finished)


def test_the_readme_crontab_line_runs_as_cron_would(project):
    import re
    import shlex

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```cron\n(.*?)```", readme, re.DOTALL).group(1)
    line = next(ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#"))
    command = line.split(None, 5)[5]
    command = command.replace("/srv/support/.venv/bin/crewbatch",
                              str(REPO / ".venv" / "bin" / "crewbatch"))
    command = command.replace("/srv/support", str(project))
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text().replace("log_json: false", "log_json: true")
                        if "log_json:" in settings.read_text()
                        else settings.read_text() + "\nlog_json: true\n")
    out = subprocess.run(shlex.split(command), cwd="/", capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(project.parent),
                              "SHELL": "/bin/sh", "LOGNAME": "cron"}, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("run ")
    log = project / "runs" / out.stdout.strip() / "run.log"
    import json

    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert entries[0]["message"] == "run started" and entries[-1]["message"] == "run finished"
    assert sum(e["message"] == "ticket finished" for e in entries) == 51
