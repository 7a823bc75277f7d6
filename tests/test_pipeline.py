"""The pipeline with a plain function as the crew: intake into the ledger, the engine's window,
exit codes, budget and stop, resume and retry, the results sheet — a real ledger and the real
engine, no CrewAI, no model. The crew's own behaviour is tested in test_crew.py; end-to-end runs
through the CLI and a model server in test_cli_run.py and test_resilience.py."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from conftest import price_fake_model

from crews import pipeline
from crews.ledger import Ledger
from crews.result import TicketResult
from crews.settings import RunOptions, load_config
from crews.ticket import ExitCode, Status

ROWS = [{"ticket_id": f"P-{i}", "customer": f"c{i}@example.com", "subject": f"subject {i}",
         "body": f"Where is my order {i}?"} for i in range(12)]


def options(**kw) -> RunOptions:
    return RunOptions(**{"model": "offline", "concurrency": 4, "batch_size": 5,
                         "revision_limit": 2, **kw})


class Crew:
    """Answers each ticket at once by its subject; counts calls; optional delay and hooks."""

    def __init__(self, delay: float = 0.0, fail: set[str] = frozenset(),
                 needs_human: set[str] = frozenset(), cost_tokens: int = 0, hook=None):
        self.delay, self.fail, self.needs_human = delay, set(fail), set(needs_human)
        self.cost_tokens, self.hook = cost_tokens, hook
        self.calls: Counter[str] = Counter()
        self.in_flight = self.peak = 0
        self.lock = threading.Lock()
        self.closed = False

    def __call__(self, ticket) -> TicketResult:
        with self.lock:
            self.calls[ticket.ticket_id] += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            if self.hook:
                self.hook(ticket)
            if self.delay:
                time.sleep(self.delay)
            if ticket.ticket_id in self.fail:
                raise RuntimeError(f"crew broke on {ticket.ticket_id}")
            calls = [{"step_key": "1:research", "model": "fake-model",
                      "prompt_tokens": self.cost_tokens, "completion_tokens": 0,
                      "cached_tokens": 0}] if self.cost_tokens else []
            if ticket.ticket_id in self.needs_human:
                return TicketResult(Status.NEEDS_HUMAN, "a person must see it",
                                    needs_human_reason="legal threat", calls=calls)
            return TicketResult(Status.APPROVED, "done", calls=calls)
        finally:
            with self.lock:
                self.in_flight -= 1

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def config(project, tickets_file):
    tickets_file(project / "t.csv", ROWS)
    return load_config(project)


def run(config, crew, **kw):
    stop = kw.pop("stop", None)
    retry_of = kw.pop("retry_of", None)
    return pipeline.run(config, options(**kw), [] if retry_of else ["t.csv"], stop=stop,
                        retry_of=retry_of, crew=crew)


def statuses(config, run_id) -> dict[str, str]:
    with Ledger(config.ledger_url) as ledger:
        return {o.ticket_id: o.status for o in ledger.outcomes(run_id)}


def test_every_record_ends_in_one_status_and_the_sheet_has_a_row_for_each(
        project, tickets_file, results):
    rows = ROWS[:6] + [ROWS[0], {"ticket_id": "P-empty", "customer": "x@example.com",
                                 "subject": "", "body": ""}]
    tickets_file(project / "t.csv", rows)
    config = load_config(project)
    crew = Crew(fail={"P-1"}, needs_human={"P-2"})
    summary = run(config, crew)
    assert summary.exit_code == ExitCode.FAILED and summary.status == "completed"
    with Ledger(config.ledger_url) as ledger:
        assert [(o.ticket_id, o.status) for o in ledger.outcomes(summary.run_id)
                if o.ticket_id == "P-0"] == [("P-0", "approved"), ("P-0", "skipped")]
    by_ticket = statuses(config, summary.run_id)
    assert by_ticket["P-3"] == "approved"
    assert by_ticket["P-1"] == "failed" and by_ticket["P-2"] == "needs_human"
    assert by_ticket["P-empty"] == "rejected"
    sheet = results(summary.results_path)
    assert len(sheet) == len(rows)
    assert Counter(r["status"] for r in sheet) == {"approved": 4, "failed": 1, "needs_human": 1,
                                                   "skipped": 1, "rejected": 1}
    failed = next(r for r in sheet if r["ticket_id"] == "P-1")
    assert failed["error"] == "RuntimeError: crew broke on P-1"
    # the crew saw each usable ticket once, never the duplicate or the empty record
    assert crew.calls == Counter({f"P-{i}": 1 for i in range(6)})
    assert crew.closed
    assert (summary.results_path.parent / "report.html").is_file()


def test_the_engine_keeps_the_concurrency_full_and_never_exceeds_it(config):
    crew = Crew(delay=0.15)
    summary = run(config, crew, concurrency=3)
    assert summary.exit_code == ExitCode.OK
    assert crew.peak == 3
    assert sum(crew.calls.values()) == len(ROWS)


def test_a_rerun_skips_what_was_answered_unless_reprocess(config):
    first = run(config, Crew())
    assert first.counts == {"approved": 12}
    crew = Crew()
    second = run(config, crew)
    assert second.counts == {"skipped": 12} and not crew.calls
    third = run(config, crew, reprocess=True)
    assert third.counts == {"approved": 12} and sum(crew.calls.values()) == 12


def test_retry_takes_only_the_failed_tickets_from_the_ledger(config):
    first = run(config, Crew(fail={"P-3", "P-7"}))
    assert first.exit_code == ExitCode.FAILED
    crew = Crew()
    again = run(config, crew, retry_of=first.run_id)
    assert again.exit_code == ExitCode.OK
    assert set(crew.calls) == {"P-3", "P-7"}
    assert statuses(config, again.run_id) == {"P-3": "approved", "P-7": "approved"}


def test_the_budget_stops_new_tickets_and_the_next_run_finishes_each_once(project, config):
    price_fake_model(project, 1000, 1000)  # $1,000 per million tokens: $0.001 a token
    config = load_config(project)
    crew = Crew(cost_tokens=10, delay=0.02)  # $0.01 a ticket
    first = run(config, crew, concurrency=2, max_cost=0.03)
    assert first.exit_code == ExitCode.STOPPED and first.status == "stopped"
    assert first.stop_reason.startswith("budget of $0.03 reached")
    done_first = {t for t, s in statuses(config, first.run_id).items() if s == "approved"}
    # no ticket starts once the budget is reached; the ones in flight then finish
    assert 3 <= len(done_first) <= 3 + 2
    assert set(statuses(config, first.run_id).values()) == {"approved", "pending"}
    second = run(config, crew)
    assert second.exit_code == ExitCode.OK
    assert crew.calls == Counter({r["ticket_id"]: 1 for r in ROWS})
    after = statuses(config, second.run_id)
    assert {t for t, s in after.items() if s == "skipped"} == done_first
    assert {t for t, s in after.items() if s == "approved"} == \
        {r["ticket_id"] for r in ROWS} - done_first


def test_a_stop_request_lets_in_flight_tickets_finish_and_leaves_the_rest_pending(config):
    stop = pipeline.Stop()
    started: list[str] = []

    def after_four(ticket):
        started.append(ticket.ticket_id)
        if len(started) == 4:
            stop.set()

    crew = Crew(delay=0.1, hook=after_four)
    first = run(config, crew, concurrency=2, stop=stop)
    assert first.exit_code == ExitCode.STOPPED and first.status == "interrupted"
    first_statuses = Counter(statuses(config, first.run_id).values())
    # the four started finish; what was read after them stays pending (records not read yet
    # are not in this run at all): the next run takes both
    assert first_statuses["approved"] == len(started) == 4
    assert set(first_statuses) == {"approved", "pending"}
    second = run(config, crew)
    assert second.exit_code == ExitCode.OK
    assert crew.calls == Counter({r["ticket_id"]: 1 for r in ROWS})


def test_a_crew_handed_in_cannot_be_combined_with_worker_processes(config):
    with pytest.raises(ValueError, match="works in this process only"):
        run(config, Crew(), workers=2)


def test_one_run_at_a_time_per_postgresql_ledger_whichever_host_starts_it(
        tmp_path, tickets_file, pg_url, monkeypatch):
    """Two hosts (run folders and lock files of their own) on one PostgreSQL ledger: the second
    `run` is refused while the first works — before, it took its own host's lock and marked the
    live run crashed."""
    from conftest import make_project
    from pg import PASSWORD

    from crews.lock import LockHeld

    monkeypatch.setenv("CREWBATCH_DATABASE_URL", pg_url)
    hosts = [make_project(tmp_path / f"host{i}") for i in (1, 2)]
    for h in hosts:
        tickets_file(h / "t.csv", ROWS)
    first, second = (load_config(h) for h in hosts)
    entered, release = threading.Event(), threading.Event()
    outcome: list = []

    def hold(ticket):
        entered.set()
        release.wait(30)

    worker = threading.Thread(target=lambda: outcome.append(
        run(first, Crew(hook=hold), concurrency=1)))
    worker.start()
    try:
        assert entered.wait(60)
        with pytest.raises(LockHeld) as refused:
            run(second, Crew())
    finally:
        release.set()
        worker.join(120)
    message = str(refused.value)
    assert message.startswith("another crewbatch run is active on postgresql://crewbatch:***@")
    assert f"run {outcome[0].run_id} on " in message and "(pid " in message
    assert PASSWORD not in message
    assert outcome[0].status == "completed" and outcome[0].counts == {"approved": 12}
    after = run(second, Crew())  # once it is over, the other host runs: nothing left to do
    assert after.counts == {"skipped": 12}


NO_CREWAI = r"""
import sys
from crews import pipeline
from crews.actions import Decision
from crews.outputs import Draft
from crews.result import TicketResult
from crews.settings import RunOptions, load_config
from crews.ticket import Status

def crew(ticket):
    draft = Draft(category="shipping", priority="low", language="en",
                  reply=f"Dear customer, about {ticket.subject}: it ships today.")
    return TicketResult(Status.APPROVED, "done", draft=draft,
                        decisions=[Decision("queue_reply", {}, True)])

from pathlib import Path
config = load_config(Path(sys.argv[1]))
summary = pipeline.run(config, RunOptions(model="offline", concurrency=2, batch_size=5,
                                          revision_limit=1), ["t.csv"], crew=crew)
print(summary.exit_code, summary.counts.get("approved"),
      sorted(m for m in sys.modules if m.split(".")[0] == "crewai"))
"""


def test_a_run_over_a_plain_crew_never_imports_crewai(config, project):
    """The seam is real: intake, the engine, carrying out the actions (a reply file each), the
    sheet and the report, all without CrewAI in the process."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run([sys.executable, "-c", NO_CREWAI, str(project)], cwd=project,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0", "12", "[]"]
    assert len(list((project / "runs").glob("*/outbox/*.eml"))) == 12
