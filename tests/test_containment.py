"""CrewAI contained: an offline run opens no socket beyond 127.0.0.1 and writes only under runs/."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # end to end: real processes and servers (README: Development)

PROBE = r"""
import json, sys
events = []
def hook(event, args):
    if event == "socket.connect":
        events.append(["connect", repr(args[1])])
    elif event == "socket.getaddrinfo":
        events.append(["getaddrinfo", repr(args[0])])
sys.addaudithook(hook)
from crews.cli import main
try:
    main(["--root", sys.argv[1], "run", "--offline", "--limit", "6"])
except SystemExit as exit:
    code = exit.code
with open(sys.argv[2], "w") as f:
    json.dump({"code": code, "events": events}, f)
"""


def test_offline_run_opens_no_socket_and_writes_only_under_runs(project, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CREWAI_", "OTEL_", "OPENAI_"))}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    before = {p for p in project.rglob("*")}
    out = subprocess.run([sys.executable, "-c", PROBE, str(project), str(report)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(report.read_text())
    assert data["code"] == 0
    remote = [e for e in data["events"]
              if e[0] == "connect" and "127.0.0.1" not in e[1] and not e[1].startswith("'/")]
    lookups = [e for e in data["events"]
               if e[0] == "getaddrinfo" and e[1] not in ("'127.0.0.1'", "'localhost'")]
    assert remote == [] and lookups == [], data["events"]
    # New files only under runs/; in HOME only what `import crewai` itself creates.
    created = {p for p in project.rglob("*")} - before
    assert created and all(p.relative_to(project).parts[0] == "runs" for p in created), \
        sorted(map(str, created))[:10]
    # `import crewai` unavoidably creates its credentials key store (crewai_core/token_manager.py).
    home_files = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    assert all(f.startswith((".local/share/crewai/", ".config/crewai/")) for f in home_files), \
        home_files
    assert (project / "runs" / ".crewai").is_dir()


def test_crewai_listeners_are_detached_and_ours_still_counts(tmp_path):
    """CrewAI's console, telemetry and tracing listeners would get a thread-pool hand-off for
    every event; after `prepare` only crewbatch's own listener is left on the bus."""
    probe = r"""
import json, sys
from pathlib import Path
from crews import framework
framework.prepare(Path(sys.argv[1]))
from crewai.events.event_bus import crewai_event_bus as bus
from crews.crew import _install_accounting
left = sorted({h.__module__ for hs in bus._sync_handlers.values() for h in hs})
_install_accounting()
after = sorted({h.__module__ for hs in bus._sync_handlers.values() for h in hs})
print(json.dumps({"left": left, "after": after, "again": framework.detach_builtin_listeners()}))
"""
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "crewai")], cwd=REPO,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CREWAI_STORAGE_DIR": str(tmp_path / "crewai")})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"left": [], "after": ["crews.crew"], "again": 0}


def test_a_run_on_postgresql_talks_only_to_the_model_and_the_database(project, tmp_path, pg_url):
    """The engine (DBOS) on the PostgreSQL ledger, a model over HTTP: every connection goes to
    the model's endpoint or the database — no hosted console, no telemetry — and nothing DBOS
    logs about a console reaches stderr. (The database's own connections are libpq's, made in
    C where the URL says, so the audit hook sees Python's sockets: the SDKs', telemetry's.)"""
    from urllib.parse import urlsplit

    from fake_openai import FakeOpenAI

    report = tmp_path / "report.json"
    probe = PROBE.replace('"--offline"', '"--model", "fake-model"')
    with FakeOpenAI() as server:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CREWAI_", "OTEL_", "OPENAI_"))}
        env.update(HOME=str(tmp_path), PYTHONPATH=str(REPO), OPENAI_API_KEY="sk-test",
                   OPENAI_BASE_URL=server.base_url, CREWBATCH_DATABASE_URL=pg_url)
        out = subprocess.run([sys.executable, "-c", probe, str(project), str(report)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        model_port = urlsplit(server.base_url).port
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(report.read_text())
    assert data["code"] == 0
    allowed = {f"('127.0.0.1', {model_port})", f"('127.0.0.1', {urlsplit(pg_url).port})"}
    connects = {e[1] for e in data["events"] if e[0] == "connect"}
    assert connects and connects <= allowed, connects
    assert f"('127.0.0.1', {model_port})" in connects
    lookups = {e[1] for e in data["events"] if e[0] == "getaddrinfo"}
    assert lookups <= {"'127.0.0.1'", "'localhost'"}, lookups
    assert "conductor" not in out.stderr.lower() and "dbos" not in out.stderr.lower()
