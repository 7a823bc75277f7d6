"""The replay benchmark at toy size, so benchmarks/replay_bench.py cannot rot: no timing is
asserted, only what the benchmark itself checks (0 model requests, the recorded outcomes, a diff
that finds nothing) and that each recording mode stores what it says."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import replay_bench  # noqa: E402

pytestmark = pytest.mark.slow  # end to end: real processes and servers (README: Development)


def test_the_replay_benchmark_runs_and_checks(tmp_path):
    out = tmp_path / "replay.json"
    assert replay_bench.main(["--tickets", "6", "--concurrency", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert all(report["checks"].values())
    assert report["replay"]["model_requests"] == 0
    record = report["record"]
    assert record["off"]["blob_bytes_per_ticket"] == 0
    assert 0 < record["responses"]["blob_bytes_per_ticket"] < record["full"]["blob_bytes_per_ticket"]
    assert report["diff"]["summary"].endswith(": 0 of 6 tickets changed")
