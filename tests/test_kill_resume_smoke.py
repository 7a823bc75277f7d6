"""The kill-and-resume benchmark at toy size, so benchmarks/kill_resume.py cannot rot.

Two real SIGKILLs of a 24-ticket run and a final run to completion, as the benchmark does at 300;
asserted is what the report promises, and that it really counted: the kills landed mid-run, the
ledger marked those runs crashed, and every ticket ended once.
"""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import kill_resume  # noqa: E402

# End to end: real processes and servers (README: Development). Worker hosts must start and join
# a run while it lasts, and the hosts share the 10.77.i.0/24 addresses (tests/netns.py): these run
# `alone`, after the parallel part of the suite, in one process.
pytestmark = [pytest.mark.slow, pytest.mark.alone]


def test_two_kills_then_a_final_run_finish_every_ticket_once(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = kill_resume.main(["--tickets", "24", "--kills", "2", "--concurrency", "4",
                             "--seed", "2", "--out", str(out)])
    table = capsys.readouterr().out
    report = json.loads(out.read_text())

    assert code == 0, table
    assert report["ok"] and report["problems"] == []
    checks = report["checks"]
    assert checks["input tickets with a final outcome"]["value"] == 24
    assert checks["runs marked crashed"]["value"] == 2
    assert checks["tickets approved/needs_human twice"]["value"] == []
    assert checks["duplicate outbox file names"]["value"] == []

    killed, final = report["runs"][:2], report["runs"][2]
    assert len(report["runs"]) == 3
    for run in killed:
        assert run["killed"] and run["exit_code"] == -9 and run["status"] == "crashed"
        assert run["requests"] == run["target_requests"] >= 1
        assert run["redone"] + run["finished_after_kill"] == run["running_at_kill"]
        assert run["running_at_kill"] > 0  # killed during a model request: a ticket in flight
        assert run["alive_after_grace"] == 0
    assert final["status"] == "completed" and final["exit_code"] == 0 and not final["killed"]
    assert sum(final["counts"].values()) == 24
    assert final["counts"].get("skipped", 0) == 24 - final["remaining_before"] > 0
    outbox = report["files"]["outbox"]
    assert outbox["count"] == checks["outbox files vs approved tickets"]["expected"] > 0
    assert "| 1 | " in table and table.rstrip().endswith("PASS")


def test_the_same_on_a_postgresql_ledger(tmp_path, capsys, pg_url):
    out = tmp_path / "report.json"
    code = kill_resume.main(["--tickets", "16", "--kills", "2", "--concurrency", "4",
                             "--seed", "3", "--database-url", pg_url, "--out", str(out)])
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert code == 0 and report["ok"], table
    assert report["settings"]["ledger"] == "postgres"
    assert report["checks"]["runs marked crashed"]["value"] == 2
    assert report["checks"]["input tickets with a final outcome"]["value"] == 16
    assert all(r["running_at_kill"] > 0 for r in report["runs"][:2])
    assert pg_url.split("@")[0].split(":")[-1] not in table  # the password is not printed


def test_killing_worker_hosts_beside_a_run(tmp_path, capsys, pg_url):
    """Two worker hosts (network namespaces), one killed twice and restarted: a peer declares it
    dead, takes its tickets over, and the one run completes with every ticket once."""
    import netns

    try:
        with netns.hosts(1):
            pass
    except netns.Unavailable as why:
        pytest.skip(f"worker hosts need network namespaces: {why}")
    out = tmp_path / "report.json"
    # 0.6 s a request: the run lasts long enough for a second host's worker to start and join it
    # on a loaded machine (at 0.3 s, beside three other test workers, the run once finished
    # before host 2's worker had joined).
    code = kill_resume.main(["--tickets", "30", "--kills", "2", "--concurrency", "6",
                             "--latency", "0.6", "--kill", "worker", "--hosts", "2",
                             "--lease", "3", "--seed", "4", "--database-url", pg_url,
                             "--out", str(out)])
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert code == 0 and report["ok"], table
    checks = report["checks"]
    assert checks["runs marked crashed"]["value"] == 0
    assert checks["input tickets with a final outcome"]["value"] == 30
    assert checks["tickets approved/needs_human twice"]["value"] == []
    kills = report["worker_kills"]
    assert len(kills) == 2 and {k["host"] for k in kills} == {1, 2}
    assert all(k["executor_id"] for k in kills)
    assert all(k["declared_dead_after_s"] is not None for k in kills if k["in_flight"])
    run = report["runs"][0]
    assert run["status"] == "completed" and run["exit_code"] == 0
