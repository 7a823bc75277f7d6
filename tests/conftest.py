"""Shared fixtures: a throwaway copy of the project, the CLI runner, and CrewAI kept quiet.

CrewAI's environment is set before anything imports it, with its storage in a temp directory, so
tests never write to the home directory's CrewAI storage or reach the network.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPORA = SHARED / "corpora"
sys.path.insert(0, str(Path(__file__).parent))

from pg import pg_server, pg_url  # noqa: E402,F401 — the PostgreSQL fixtures (tests/pg.py)

os.environ.update({
    "CREWAI_DISABLE_TELEMETRY": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "CREWAI_DISABLE_VERSION_CHECK": "true",
    "CREWAI_TESTING": "true",
    "OTEL_SDK_DISABLED": "true",
    "CREWAI_STORAGE_DIR": tempfile.mkdtemp(prefix="crewbatch-tests-crewai-"),
})
# Every variable crewbatch reads or sets: a developer's shell (CREWBATCH_WORKERS=4) changes no test;
# tests/test_settings.py checks the list against the CREWBATCH_ names in crews/.
CLEARED_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CREWBATCH_ROOT", "CREWBATCH_MODEL",
               "CREWBATCH_CONCURRENCY", "CREWBATCH_BATCH_SIZE", "CREWBATCH_REVISION_LIMIT",
               "CREWBATCH_WORKERS", "CREWBATCH_DATABASE_URL")
for var in CLEARED_ENV:
    os.environ.pop(var, None)


@pytest.fixture(autouse=True)
def _cleared_environment(monkeypatch):
    """The same, around every test: an in-process CLI run loads its project's .env into
    os.environ (cli.py), which would otherwise reach every later test (a key in a test's .env
    made the next "no key" test see one)."""
    for var in CLEARED_ENV:
        monkeypatch.delenv(var, raising=False)


def make_project(root: Path) -> Path:
    """A project directory at `root` with the repository's config/ and data/ and an empty runs/."""
    shutil.copytree(REPO / "config", root / "config")
    shutil.copytree(REPO / "data", root / "data")
    (root / "runs").mkdir()
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project directory with the repository's config/ and data/ and an empty runs/."""
    return make_project(tmp_path / "project")


@pytest.fixture
def cli(project: Path, monkeypatch):
    """Invoke crewbatch as a user would, from inside the project; returns click's Result."""
    from click.testing import CliRunner

    from crews.cli import main

    monkeypatch.chdir(project)
    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None):
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    return invoke


def write_tickets(path: Path, rows: list[dict]) -> Path:
    import csv

    fields = ["ticket_id", "received_at", "customer", "customer_name", "subject", "body"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})
    return path


def read_results(path: Path) -> list[dict]:
    import csv

    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def tickets_file():
    return write_tickets


@pytest.fixture
def results():
    return read_results


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)


def price_fake_model(project: Path, input_per_million: float, output_per_million: float) -> None:
    """Give the fake server's model a price in the project's settings.yaml."""
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text().replace(
        "pricing:\n", f"pricing:\n  fake-model: {{input_per_million: {input_per_million}, "
                      f"output_per_million: {output_per_million}}}\n"))
