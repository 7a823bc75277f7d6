"""The throughput benchmark's machinery at toy size, so benchmarks/throughput.py cannot rot.

crewbatch only (the baselines need the `bench` extra and minutes), then a fault-injected run; no
timing is asserted, only what the benchmark itself promises: counts that reconcile and requests
within the retry policy's bound.
"""

from __future__ import annotations

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import throughput  # noqa: E402

pytestmark = pytest.mark.slow  # end to end: real processes and servers (README: Development)


def test_benchmark_measures_crewbatch_and_checks_a_fault_run(tmp_path):
    report = throughput.benchmark(
        tickets=6, concurrency=3, latency_s=0.05, systems=("crewbatch",), faults=True,
        fault_mix={"rate_429": 0.15, "rate_500": 0.1, "rate_hang": 0.05, "rate_malformed": 0.2},
        client_timeout_s=1.0, settings={"retry.base_delay_s": 0.05, "retry.max_delay_s": 0.2},
        work=tmp_path, seed=3)

    clean, faulted = report.measurements
    assert (clean.system, faulted.system) == ("crewbatch", "crewbatch+faults")
    assert clean.tickets == 6 and sum(clean.statuses.values()) == 6
    assert set(clean.statuses) <= {"approved", "needs_human"}
    ids = {f"{t}-b0001" for t in ("T-1001", "T-1002", "T-1003", "T-1004", "T-1005", "T-1006")}
    assert set(clean.requests_by_ticket) == ids  # every request attributed to its ticket
    assert clean.calls == sum(clean.requests_by_ticket.values()) and clean.k >= 4
    assert clean.wall_s > 0 and clean.cpu_s > 0 and clean.peak_rss_mb > 50
    assert 0 < clean.efficiency < 1.5

    checks = report.faults
    assert checks["ok"], checks["problems"]
    assert checks["rows"] == checks["records"] == 6
    assert set(checks["statuses"]) <= {"approved", "needs_human", "failed"}
    assert faulted.faults and faulted.calls <= checks["requests_allowed"]
    assert checks["retry_bound_per_call"] == 5  # retry.max_attempts 4 + repair_attempts 1

    table = throughput.render(report)
    assert "| crewbatch | 6 |" in table and "fault run: OK" in table


def test_the_wave_bound_is_what_a_perfect_engine_could_do():
    # 200 four-call tickets in 32 slots take 7 waves, not 6.25; in 64 slots 4, not 3.125.
    assert round(throughput.wave_bound([4] * 200, 32), 4) == round(200 / 224, 4)
    assert throughput.wave_bound([4] * 200, 64) == 200 / 256
    assert throughput.wave_bound([4] * 640, 32) == 1.0
    # Uneven tickets: a long one started last sets the makespan.
    assert throughput.wave_bound([1, 1, 1, 5], 2) == (8 / 2) / 6
