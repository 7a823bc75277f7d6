"""The kill-and-resume benchmark at toy size, so benchmarks/kill_resume.py cannot rot.

Two real SIGKILLs of a 24-ticket run and a final run to completion, as the benchmark does at 300;
asserted is what the report promises, and that it really counted: the kills landed mid-run, the
ledger marked those runs crashed, and every ticket ended once.
"""

from __future__ import annotations

import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import kill_resume  # noqa: E402


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
