"""`crewbatch run --batch-api`: the real crew and ledger, requests through the fake server's Batch
API on 127.0.0.1 (files, batches, output and error files), against a live run over the same
answers; per-line errors, expiry, cancelled and failed batches, split files, the batch queue's
limit, and kill -9 / a time limit while a batch is pending."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import make_project
from fake_openai import BatchFaults, FakeOpenAI

from crews.pricing import cost_usd
from crews.settings import ConfigError, load_config, resolve_options

KEY = "sk-test-batch-not-a-real-key-42"


def configure(project, *, poll_s=0.1, gather_s=0.2, batch=None, price=True):
    """Fast polling and retries for tests, and a price for the fake server's model."""
    import yaml

    path = project / "config/settings.yaml"
    settings = yaml.safe_load(path.read_text())
    if price:
        settings["pricing"]["fake-model"] = {"input_per_million": 0.15,
                                             "cached_input_per_million": 0.075,
                                             "output_per_million": 0.60}
    settings["retry"]["base_delay_s"] = 0.01
    settings["batch"].update(poll_s=poll_s, gather_s=gather_s, **(batch or {}))
    path.write_text(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))


def ledger(project):
    db = sqlite3.connect(project / "runs/ledger.db")
    db.row_factory = sqlite3.Row
    return db


def env_for(server):
    return {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server.base_url}


def batch_lines(server) -> list[list[dict]]:
    """The lines of every batch the server was given, in creation order."""
    api = server.batch_api
    return [b["lines"] for b in sorted(api.batches.values(), key=lambda b: b["seq"])]


def assert_no_double_submission(server):
    counts = Counter(server.batch_api.custom_ids)
    assert counts and max(counts.values()) == 1, counts.most_common(3)


def test_a_batch_run_matches_a_live_run_at_exactly_half_the_cost(tmp_path, cli, project,
                                                                 results):
    live_project = make_project(tmp_path / "live")
    for p in (project, live_project):
        configure(p)
    # No simulated prompt cache: its hits depend on the order requests arrive in, which a live
    # run and a batch run do not share; without it both runs bill the very same tokens.
    with FakeOpenAI(prompt_cache=False) as server:
        live = cli("--root", str(live_project), "run", "--model", "fake-model", "--limit", "8",
                   env=env_for(server))
        live_requests = len(server.requests)
    with FakeOpenAI(prompt_cache=False, batch=BatchFaults(delay_s=0.3)) as server:
        run = cli("run", "--model", "fake-model", "--limit", "8", "--batch-api",
                  env=env_for(server))
        lines = batch_lines(server)
        assert_no_double_submission(server)
        live_http = [r for r in server.requests if r["peer"] != "batch"]
        created = server.batch_api.created
    assert live.exit_code == 0 and run.exit_code == 0, run.output
    # Every model request went through a batch: none reached /chat/completions directly.
    assert not [r for r in live_http if r["path"].endswith("/chat/completions")]
    assert sum(len(x) for x in lines) == live_requests
    live_rows = results(live_project / "runs" / live.stdout.strip() / "results.csv")
    rows = results(project / "runs" / run.stdout.strip() / "results.csv")
    same = ("ticket_id", "status", "category", "priority", "draft_reply", "actions",
            "revisions", "prompt_tokens", "completion_tokens", "needs_human_reason")
    assert [{k: r[k] for k in same} for r in rows] == [{k: r[k] for k in same}
                                                       for r in live_rows]
    assert {r["status"] for r in rows} == {"approved", "needs_human"}
    # A wave is one batch: as many batches as the longest ticket has requests.
    db, live_db = ledger(project), ledger(live_project)
    per_ticket = db.execute("SELECT COUNT(*) FROM model_calls GROUP BY outcome_id").fetchall()
    assert created == max(n for (n,) in per_ticket) == len(lines)
    assert [len(x) for x in lines] == sorted((len(x) for x in lines), reverse=True)
    batches = db.execute("SELECT * FROM batches ORDER BY batch_no").fetchall()
    assert [b["state"] for b in batches] == ["completed"] * created
    assert all(b["batch_id"] and b["input_file_id"] and b["output_file_id"] and
               b["wait_s"] >= 0.3 for b in batches)
    # Exactly half, from the ledger: each call, each ticket and the run.
    batch_cost = db.execute("SELECT SUM(cost_usd) FROM model_calls").fetchone()[0]
    live_cost = live_db.execute("SELECT SUM(cost_usd) FROM model_calls").fetchone()[0]
    assert live_cost > 0 and batch_cost == pytest.approx(live_cost / 2, rel=1e-12)
    ticket_costs = [r[0] for r in db.execute("SELECT cost_usd FROM outcomes ORDER BY outcome_id")]
    live_costs = [r[0] for r in live_db.execute("SELECT cost_usd FROM outcomes ORDER BY "
                                                "outcome_id")]
    assert ticket_costs == [c / 2 for c in live_costs]  # exactly: halving a float is exact
    run_cost = db.execute("SELECT SUM(cost_usd) FROM outcomes").fetchone()[0]
    assert run_cost == live_db.execute("SELECT SUM(cost_usd) FROM outcomes").fetchone()[0] / 2
    # The key is in no line, file or ledger row.
    assert KEY.encode() not in (project / "runs/ledger.db").read_bytes()
    assert all(KEY not in json.dumps(line) for batch in lines for line in batch)
    report = (project / "runs" / run.stdout.strip() / "report.html").read_text()
    assert "Batch API" in report and "saved" in report
    # `crewbatch show`: the run's batches and the money saved; a ticket's requests and batches.
    run_id = run.stdout.strip()
    shown = cli("show", run_id)
    assert shown.exit_code == 0
    assert (f"batches: {created} ({created} completed), {live_requests} requests, wait p50 "
            in shown.stdout)
    assert f"saved ${live_cost / 2:.4f} (50 %)" in shown.stdout
    assert batches[0]["batch_id"] in shown.stdout
    trail = cli("show", run_id, rows[0]["ticket_id"])
    first = db.execute("SELECT custom_id FROM batch_requests r JOIN outcomes o ON o.outcome_id "
                       "= r.outcome_id WHERE o.ticket_id = ? ORDER BY custom_id",
                       (rows[0]["ticket_id"],)).fetchall()
    assert "── Batch API requests" in trail.stdout
    assert all(f"{c}  batch " in trail.stdout for (c,) in first) and first
    assert "completed): HTTP 200" in trail.stdout


def test_per_line_errors_are_retried_in_the_next_wave_then_the_ticket_fails(cli, project,
                                                                          results):
    configure(project)

    def fail(line):
        body = json.dumps(line["body"])
        if "T-1001" in body:
            return 500  # always: four attempts (retry.max_attempts), then `failed`
        if "T-1003" in body and "-research-" in line["custom_id"] and "-a1-" in line["custom_id"]:
            return 503  # once: the retry in the next wave succeeds
        return None

    with FakeOpenAI(batch=BatchFaults(delay_s=0.1, fail_line=fail)) as server:
        run = cli("run", "--model", "fake-model", "--limit", "4", "--batch-api",
                  env=env_for(server))
        lines = batch_lines(server)
        assert_no_double_submission(server)
    assert run.exit_code == 1, run.output
    rows = {r["ticket_id"]: r for r in results(project / "runs" / run.stdout.strip() /
                                               "results.csv")}
    assert rows["T-1001"]["status"] == "failed"
    assert rows["T-1001"]["error"] == ("ModelCallFailed: model call failed after 4 attempts: "
                                       "HTTP 500 (InternalServerError)")
    assert rows["T-1003"]["status"] == "approved"
    assert [r["status"] for t, r in sorted(rows.items()) if t not in ("T-1001", "T-1003")] == \
        ["needs_human", "approved"]
    t1001 = [line["custom_id"] for batch in lines for line in batch
             if "T-1001" in json.dumps(line["body"])]
    # One attempt per wave, each under its own custom_id, in four different batches.
    assert [c.split("-a")[1][0] for c in t1001] == ["1", "2", "3", "4"]
    assert len({i for i, batch in enumerate(lines) for line in batch
                if line["custom_id"] in t1001}) == 4
    errors = ledger(project).execute("SELECT COUNT(*) FROM batch_requests WHERE status_code "
                                     "= 500").fetchone()[0]
    assert errors == 4


def test_a_batch_that_expires_part_done_uses_the_done_lines_and_sends_the_rest_again(
        cli, project, results):
    configure(project)
    with FakeOpenAI(batch=BatchFaults(delay_s=0.1, expire_after=2, expire_batches=1)) as server:
        run = cli("run", "--model", "fake-model", "--limit", "5", "--batch-api",
                  env=env_for(server))
        lines = batch_lines(server)
        assert_no_double_submission(server)
    assert run.exit_code == 0, run.output
    rows = results(project / "runs" / run.stdout.strip() / "results.csv")
    assert len(rows) == 5 and {r["status"] for r in rows} <= {"approved", "needs_human"}
    db = ledger(project)
    first = db.execute("SELECT * FROM batches ORDER BY batch_no").fetchone()
    assert first["state"] == "expired" and first["requests"] == 5
    answered = db.execute("SELECT status_code, COUNT(*) FROM batch_requests WHERE batch_no = ? "
                          "GROUP BY status_code ORDER BY status_code",
                          (first["batch_no"],)).fetchall()
    assert [tuple(r) for r in answered] == [(0, 3), (200, 2)]
    # The three unanswered research requests went out again (attempt 2) in the next wave,
    # together with the next step of the two answered tickets.
    second = [line["custom_id"] for line in lines[1]]
    assert sum("-research-" in c and "-a2-" in c for c in second) == 3
    assert sum("-draft-" in c and "-a1-" in c for c in second) == 2


def test_a_cancelled_batch_and_a_failed_batch_go_to_the_next_wave(cli, project, results):
    configure(project)
    faults = BatchFaults(delay_s=0.1, cancel_batches=1, expire_after=1, fail_batches=0)
    with FakeOpenAI(batch=faults) as server:
        run = cli("run", "--model", "fake-model", "--limit", "3", "--batch-api",
                  env=env_for(server))
        server.batch_api.inject(BatchFaults(delay_s=0.1, fail_batches=1))
        again = cli("run", "--model", "fake-model", "--limit", "6", "--batch-api",
                    env=env_for(server))
        assert_no_double_submission(server)
    assert run.exit_code == 0 and again.exit_code == 0, again.output
    db = ledger(project)
    states = [r[0] for r in db.execute("SELECT state FROM batches ORDER BY batch_no")]
    assert states[0] == "cancelled" and "failed" in states
    failed = db.execute("SELECT * FROM batches WHERE state = 'failed'").fetchone()
    assert "batch_failed" in failed["detail"]
    for out in (run, again):
        rows = results(project / "runs" / out.stdout.strip() / "results.csv")
        assert {r["status"] for r in rows} <= {"approved", "needs_human", "skipped"}


@pytest.mark.parametrize("limit_as", ["429", "fail"])
def test_a_wave_is_split_at_the_request_limit_and_the_batch_queue_limit_is_waited_out(
        cli, project, results, limit_as):
    # The provider's queue holds 6 requests: a third file of the first wave is refused — with a
    # 429 on create, or (OpenAI's enqueued-token limit) as a batch failed with
    # token_limit_exceeded — and made a batch again once there is room, using up no attempt.
    configure(project, batch={"max_requests": 3})
    with FakeOpenAI(batch=BatchFaults(delay_s=0.3, max_enqueued_requests=6,
                                      limit_as=limit_as)) as server:
        run = cli("run", "--model", "fake-model", "--limit", "7", "--batch-api",
                  env=env_for(server))
        lines = batch_lines(server)
        refused = server.batch_api.refused
        assert_no_double_submission(server)
    assert run.exit_code == 0, run.output
    assert max(len(x) for x in lines) == 3
    if limit_as == "fail":
        states = [r[0] for r in ledger(project).execute("SELECT detail FROM batches")]
        assert any("refused: token_limit_exceeded" in d for d in states)
    prepared = [r[0] for r in ledger(project).execute(
        "SELECT requests FROM batches ORDER BY batch_no")]
    assert prepared[:3] == [3, 3, 1]  # the first wave: 7 requests in 3 files
    assert refused >= 1  # the third file waited until the queue had room
    accepted = [b for b in server.batch_api.batches.values()
                if "token_limit_exceeded" not in json.dumps(b["errors"])]
    assert sum(prepared) == sum(len(b["lines"]) for b in accepted)
    assert all("-a1-" in line["custom_id"] for b in accepted for line in b["lines"])
    rows = results(project / "runs" / run.stdout.strip() / "results.csv")
    assert len(rows) == 7 and {r["status"] for r in rows} <= {"approved", "needs_human"}


def crewbatch(project, *args, env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CREWAI_STORAGE")}
    full_env.update(env)
    return subprocess.Popen([sys.executable, "-m", "crews", "--root", str(project), *args],
                            cwd="/", env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def check_exactly_once(project, server, tickets: int):
    db = ledger(project)
    final = db.execute("SELECT ticket_key, status FROM outcomes WHERE status IN "
                       "('approved', 'needs_human', 'failed')").fetchall()
    keys = [r[0] for r in final]
    assert len(keys) == len(set(keys)) == tickets  # one outcome per ticket, none twice
    assert_no_double_submission(server)
    batch_ids = [r[0] for r in db.execute("SELECT batch_id FROM batches WHERE batch_id <> ''")]
    assert len(batch_ids) == len(set(batch_ids)) == server.batch_api.created
    outbox = [p.name for p in (project / "runs").glob("*/outbox/*.eml")]
    approved = sum(1 for r in final if r[1] == "approved")
    assert len(outbox) == len(set(outbox)) == approved


@pytest.mark.slow  # two crewbatch processes end to end, 20-30 s
def test_kill_9_while_a_batch_is_pending_resumes_polling_it(project):
    configure(project)
    # The first two waves are slow (the kill comes while the second is pending); the rest not.
    with FakeOpenAI(batch=BatchFaults(delay_s=4, delayed_batches=2)) as server:
        proc = crewbatch(project, "run", "--model", "fake-model", "--limit", "6", "--batch-api",
                         env=env_for(server))
        deadline = time.monotonic() + 120
        while server.batch_api.created < 2:  # the second wave is pending
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        time.sleep(0.3)
        proc.kill()
        proc.wait()
        pending = [b["id"] for b in server.batch_api.batches.values()
                   if b["status"] == "in_progress"]
        created_at_kill = server.batch_api.created
        assert pending
        rerun = crewbatch(project, "run", "--model", "fake-model", "--limit", "6",
                          "--batch-api", env=env_for(server))
        out, err = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, err
        check_exactly_once(project, server, 6)
        resumed_lines = sum(len(server.batch_api.batches[b]["lines"]) for b in pending)
        later = [b for b in server.batch_api.batches.values() if b["seq"] > created_at_kill]
    db = ledger(project)
    runs = dict(db.execute("SELECT run_id, status FROM runs").fetchall())
    assert sorted(runs.values()) == ["completed", "crashed"]
    # The batch pending at the kill was polled by the re-run, not submitted again: its lines
    # were answered once and stored, and no later batch holds any of them.
    for batch_id in pending:
        row = db.execute("SELECT * FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
        assert row["state"] == "completed"
    pending_ids = {line["custom_id"] for b in pending
                   for line in server.batch_api.batches[b]["lines"]}
    assert resumed_lines and not pending_ids & {line["custom_id"] for b in later
                                                for line in b["lines"]}


@pytest.mark.slow  # two crewbatch processes end to end, 20-30 s
def test_a_time_limit_while_a_batch_is_pending_exits_3_and_the_next_run_polls_it(project):
    configure(project)
    # The first wave's batch stays pending until the test lets it finish, so the run's time
    # limit falls while it is pending. 30 s leaves the four tickets' first requests room on two
    # loaded cores (with 15 s the test failed once in three runs under `-n 4`).
    with FakeOpenAI(batch=BatchFaults(delay_s=600, delayed_batches=1)) as server:
        started = time.monotonic()
        first = crewbatch(project, "run", "--model", "fake-model", "--limit", "4",
                          "--batch-api", "--max-minutes", "0.5", env=env_for(server))
        out, err = first.communicate(timeout=150)
        took = time.monotonic() - started
        assert first.returncode == 3, err
        assert "every ticket in flight waits on a pending batch" in err
        assert server.batch_api.created == 1
        waiting = next(iter(server.batch_api.batches.values()))
        assert waiting["status"] == "in_progress" and took < 30 + 60  # not the batch's 600 s
        server.batch_api.finish_now(waiting["id"])
        second = crewbatch(project, "run", "--model", "fake-model", "--limit", "4",
                           "--batch-api", env=env_for(server))
        out2, err2 = second.communicate(timeout=300)
        assert second.returncode == 0, err2
        check_exactly_once(project, server, 4)
    db = ledger(project)
    assert db.execute("SELECT state FROM batches WHERE batch_id = ?",
                      (waiting["id"],)).fetchone()[0] == "completed"
    # A limit stopped the first run: `stopped`, as without batches (a signal's run is
    # `interrupted`), whichever of its main thread and its stop watchdog recorded the end.
    runs = [tuple(r) for r in db.execute("SELECT status, exit_code, detail FROM runs "
                                         "ORDER BY started_utc")]
    assert [r[:2] for r in runs] == [("stopped", 3), ("completed", 0)]
    assert runs[0][2] == ("time limit of 0.5 minute(s) reached; every ticket in flight waits "
                          "on a pending batch; the next run resumes polling it")
    assert db.execute("SELECT COUNT(*) FROM events WHERE outcome_id IS NULL AND "
                      "from_status = 'running'").fetchone()[0] == 2  # one end per run


def test_batch_options_are_validated(project):
    config = load_config(project)
    with pytest.raises(ConfigError) as err:
        resolve_options(config, {"batch_api": True, "offline": True}, environ={})
    assert "--batch-api sends requests to a provider's Batch API, but the model is `offline`" \
        in str(err.value)
    with pytest.raises(ConfigError) as err:
        resolve_options(config, {"batch_api": True, "model": "m", "workers": 2}, environ={})
    assert "--batch-api runs in one process" in str(err.value)
    options = resolve_options(config, {"batch_api": True, "model": "m"}, environ={})
    assert options.batch_api and options.concurrency == 1000
    with pytest.raises(ConfigError) as err:
        resolve_options(config, {"model": "m", "concurrency": 1000}, environ={})
    assert "at most 256 tickets in flight live" in str(err.value)
    settings = project / "config/settings.yaml"
    # `llm.mode: batch` is how cron asks for it; an --offline run of such a project stays offline.
    settings.write_text(settings.read_text().replace("mode: live", "mode: batch"))
    config = load_config(project)
    assert resolve_options(config, {"model": "m"}, environ={}).batch_api
    assert not resolve_options(config, {"offline": True}, environ={}).batch_api
    settings.write_text(settings.read_text().replace("  max_requests: 50000",
                                                     "  max_request: 10"))
    with pytest.raises(ConfigError) as err:
        load_config(project)
    assert "unknown key `batch.max_request` (did you mean `max_requests`?)" in str(err.value)


def test_batch_prices():
    pricing = {"m": {"input_per_million": 1.0, "cached_input_per_million": 0.5,
                     "output_per_million": 4.0},
               "own": {"input_per_million": 1.0, "output_per_million": 4.0,
                       "batch_input_per_million": 0.4, "batch_output_per_million": 1.0,
                       "batch_discount": 0.5}}
    live = cost_usd(pricing, "m", 1_000_000, 1_000_000, 400_000)
    assert live == pytest.approx(0.6 + 0.2 + 4.0)
    assert cost_usd(pricing, "m", 1_000_000, 1_000_000, 400_000, batch=True) == \
        pytest.approx(live / 2)
    # Given batch prices win; the cached price without one is the live cached price discounted.
    assert cost_usd(pricing, "own", 1_000_000, 1_000_000, batch=True) == pytest.approx(1.4)


def test_sigterm_while_a_batch_is_pending(project):
    configure(project)
    with FakeOpenAI(batch=BatchFaults(delay_s=30)) as server:
        proc = crewbatch(project, "run", "--model", "fake-model", "--limit", "3", "--batch-api",
                         env=env_for(server))
        deadline = time.monotonic() + 120
        while server.batch_api.created < 1:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    db = ledger(project)
    assert [tuple(r) for r in db.execute("SELECT state FROM batches")] == [("submitted",)]
    assert {r[0] for r in db.execute("SELECT status FROM outcomes")} == {"pending"}
    assert db.execute("SELECT status FROM runs").fetchone()[0] == "interrupted"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_ledger_keeps_batches_on_both_databases(backend, tmp_path, request):
    from test_ledger import t

    from crews.ledger import Ledger

    target = request.getfixturevalue("pg_url") if backend == "postgresql" else \
        tmp_path / "ledger.db"
    with Ledger(target) as db:
        db.start_run("r1", "m", {}, [])
        todo = db.add_records("r1", [t("T-1"), t("T-2")], False)
        (first, _), (second, _) = todo
        assert db.attempt_root(second) == second
        no = db.prepare_batch("r1", "m", [("o1-a", first), ("o2-a", second)], 1234)
        assert [b["state"] for b in db.open_batches()] == ["preparing"]
        db.update_batch(no, state="uploaded", input_file_id="file-1")
        db.update_batch(no, state="submitted", batch_id="batch_1", submitted_utc="2026-12-02T00:"
                        "00:00.000000Z")
        assert db.batch_request("o1-a")["status_code"] is None
        db.finish_batch(no, "expired", {"o1-a": (200, '{"id": "x"}')}, {"wait_s": 2.5})
        assert db.batch_request("o1-a")["status_code"] == 200
        assert db.batch_request("o2-a")["status_code"] == 0  # unanswered by the expired batch
        assert db.open_batches() == [] and db.batches("r1")[0]["wait_s"] == 2.5
        lost = db.prepare_batch("r1", "m", [("o1-b", first)], 10)
        db.abandon_batch(lost, "died before upload")
        assert db.batch_request("o1-b") is None and db.batch(lost)["state"] == "abandoned"
        with pytest.raises(ValueError):
            db.update_batch(no, secret="x")


@pytest.mark.parametrize("left", ["created", "uploaded", "preparing"])
def test_a_batch_left_between_upload_and_create_is_created_exactly_once(left, tmp_path):
    """A run killed after uploading a batch's file: if its create reached the provider (the
    answer was lost), the next run finds that batch by its input file and polls it; if not, it
    creates it; a batch killed before its upload is abandoned (its requests are asked again)."""
    from test_ledger import t

    from crews import batch
    from crews.ledger import Ledger
    from crews.settings import BatchSettings

    with FakeOpenAI(batch=BatchFaults(delay_s=0.2)) as server, \
            Ledger(tmp_path / "ledger.db") as db:
        import openai

        client = openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0)
        db.start_run("r1", "fake-model", {}, [])
        (outcome, _), = db.add_records("r1", [t("T-1")], False)
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "Hello"}]}
        line = json.dumps({"custom_id": "o1-0-research-1-a1-x", "method": "POST",
                           "url": batch.ENDPOINT, "body": body}).encode() + b"\n"
        no = db.prepare_batch("r1", "fake-model", [("o1-0-research-1-a1-x", outcome)],
                              len(line))
        if left != "preparing":
            uploaded = client.files.create(file=("x.jsonl", line), purpose="batch")
            db.update_batch(no, state="uploaded", input_file_id=uploaded.id)
        if left == "created":
            lost = client.batches.create(input_file_id=uploaded.id, endpoint=batch.ENDPOINT,
                                         completion_window="24h")
        collector = batch.Collector(db, "r2", BatchSettings(poll_s=0.1, gather_s=0.1), client)
        collector.start()
        try:
            deadline = time.monotonic() + 30
            while db.open_batches() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            collector.close()
        row = db.batch(no)
        if left == "preparing":
            assert row["state"] == "abandoned" and server.batch_api.created == 0
            assert db.batch_request("o1-0-research-1-a1-x") is None
            return
        assert server.batch_api.created == 1  # never a second batch for the file
        assert row["state"] == "completed"
        if left == "created":
            assert row["batch_id"] == lost.id and collector.submitted == 0
        else:
            assert collector.submitted == 1
        answer = db.batch_request("o1-0-research-1-a1-x")
        assert answer["status_code"] == 200
        assert json.loads(answer["response_json"])["object"] == "chat.completion"


def test_a_worker_does_not_join_a_batch_run(project, capsys):
    """A wave is one batch from the run's own process: a `crewbatch worker`'s live calls would
    bypass it (and bill live prices), so a worker leaves a batch run alone."""
    import threading

    from crews.ledger import Ledger
    from crews.worker import work_run

    with Ledger(project / "runs/ledger.db") as db:
        db.start_run("r1", "fake-model", {"batch_api": True, "concurrency": 1000}, [])
        assert work_run(load_config(project), db, "r1", None, threading.Event()) == 0
    assert "sends its requests through the Batch API from its own process" in \
        capsys.readouterr().err


@pytest.mark.slow
def test_a_batch_run_on_a_postgresql_ledger_matches_the_same_run_on_sqlite(tmp_path, cli,
                                                                          project, results,
                                                                          pg_url):
    """The whole batch path on PostgreSQL: batches, custom_ids and downloaded lines in its
    tables, the run's outcomes the same as on SQLite, each request submitted once."""
    from crews.ledger import Ledger

    sqlite_project = make_project(tmp_path / "on-sqlite")
    for p in (project, sqlite_project):
        configure(p)
    runs = {}
    for name, root, extra in (("sqlite", sqlite_project, {}),
                              ("postgresql", project, {"CREWBATCH_DATABASE_URL": pg_url})):
        with FakeOpenAI(prompt_cache=False, batch=BatchFaults(delay_s=0.2)) as server:
            run = cli("--root", str(root), "run", "--model", "fake-model", "--limit", "6",
                      "--batch-api", env={**env_for(server), **extra})
            assert run.exit_code == 0, run.output
            assert_no_double_submission(server)
            runs[name] = (run.stdout.strip(), server.batch_api.created)
    assert not (project / "runs/ledger.db").exists()  # nothing went to a SQLite file
    same = ("ticket_id", "status", "category", "priority", "draft_reply", "actions",
            "revisions", "prompt_tokens", "completion_tokens", "cost_usd")
    rows = {name: [{k: r[k] for k in same} for r in results(root / "runs" / runs[name][0] /
                                                              "results.csv")]
            for name, root in (("sqlite", sqlite_project), ("postgresql", project))}
    assert rows["postgresql"] == rows["sqlite"]
    with Ledger(pg_url) as pg:
        batches = pg.batches(runs["postgresql"][0])
        assert len(batches) == runs["postgresql"][1] > 0
        assert {b["state"] for b in batches} == {"completed"}
        answered = pg._db.execute("SELECT COUNT(*) FROM batch_requests WHERE status_code = 200"
                                  ).fetchone()[0]
        calls = pg._db.execute("SELECT COUNT(*) FROM model_calls").fetchone()[0]
    assert answered == calls == sum(b["requests"] for b in batches)


def test_tickets_take_turns_and_give_theirs_up_while_they_wait_on_a_batch():
    import threading

    from crews.batch import Turns

    turns = Turns(1)
    order: list[str] = []
    answered = threading.Event()

    def ticket(name: str, wait: bool) -> None:
        with turns.held():
            order.append(f"{name} runs")
            if wait:
                with turns.given_up():  # waiting on its batch: another ticket may run
                    answered.wait(5)
                order.append(f"{name} runs again")

    a = threading.Thread(target=ticket, args=("a", True))
    a.start()
    while not order:
        time.sleep(0.01)
    b = threading.Thread(target=ticket, args=("b", False))
    b.start()
    b.join(5)
    assert order == ["a runs", "b runs"]  # b ran while a waited, not after it
    answered.set()
    a.join(5)
    assert order[-1] == "a runs again"
    # A thread without a turn (a warm-up request) gives none up: still one turn, not two.
    with turns.given_up():
        pass
    with turns.held():
        entered = threading.Event()
        other = threading.Thread(target=lambda: (turns.held().__enter__(), entered.set()),
                                 daemon=True)
        other.start()
        assert not entered.wait(0.3)
