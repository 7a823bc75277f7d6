"""The fake OpenAI-compatible server the tests use: it lives in benchmarks/fake_server.py.

Tests and the throughput benchmark share one server (latency, scripted and random faults, a
request log); this module keeps the tests' `from fake_openai import FakeOpenAI, Faults`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from fake_server import FakeOpenAI, Faults  # noqa: E402

__all__ = ["FakeOpenAI", "Faults"]
