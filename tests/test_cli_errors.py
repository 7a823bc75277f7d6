"""What a user meets first: clear errors with exit 2 before any model call, a fast --help."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def test_real_model_without_key_stops_before_any_ticket(project, cli):
    result = cli("run", "--model", "gpt-4o-mini")
    assert result.exit_code == 2
    assert ("crewbatch: configuration problem:\n  - model gpt-4o-mini (researcher=gpt-4o-mini, "
            "writer=gpt-4o-mini, critic=gpt-4o-mini, executor=gpt-4o-mini) needs OPENAI_API_KEY"
            ) in result.stderr
    assert not (project / "runs" / "ledger.db").exists()
    assert result.stdout == ""


def test_per_role_override_needs_a_key_too(project, cli):
    agents = project / "config/agents.yaml"
    agents.write_text(agents.read_text().replace("  tools: [customer_orders",
                                                 "  llm: gpt-4o\n  tools: [customer_orders"))
    result = cli("run", "--offline")
    assert result.exit_code == 2
    assert "model gpt-4o (researcher=gpt-4o) needs OPENAI_API_KEY" in result.stderr


def test_config_errors_exit_2_with_every_problem(project, cli):
    tasks = project / "config/tasks.yaml"
    tasks.write_text(tasks.read_text().replace("agent: critic", "agent: critik"))
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text().replace("batch_size: 20", "batch_sise: 20"))
    for command in (["check"], ["run", "--offline"]):
        result = cli(*command)
        assert result.exit_code == 2
        assert result.stderr.startswith("crewbatch: configuration problems:\n")
        assert ("  - config/tasks.yaml: task `review` names agent `critik`, which is not in "
                "config/agents.yaml (did you mean `critic`?)") in result.stderr
        assert "  - config/settings.yaml: unknown key `batch_sise` (did you mean `batch_size`?)" \
            in result.stderr
        assert "Traceback" not in result.stderr


def test_missing_source_is_a_clear_error(project, cli):
    result = cli("run", "--offline", "nope.csv")
    assert result.exit_code == 2
    assert result.stderr.startswith("crewbatch: nope.csv: no such file; check the path")


def test_check_summarises_without_a_model(project, cli):
    result = cli("check")
    assert result.exit_code == 0
    assert "models: researcher=offline, writer=offline, critic=offline, executor=offline" \
        in result.stdout
    assert "source " in result.stdout and ": 51 tickets, 0 rejected" in result.stdout
    assert result.stdout.rstrip().endswith("ok")


def test_outside_a_project_says_how_to_point_at_one(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from crews.cli import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["runs"])
    assert result.exit_code == 2
    assert "no config/settings.yaml here or in any parent directory; run crewbatch inside the " \
           "project, or pass --root DIR (or set CREWBATCH_ROOT)" in result.stderr


def test_root_option_works_from_anywhere(project, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from crews.cli import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["--root", str(project), "check"])
    assert result.exit_code == 0, result.output


def test_help_does_not_import_crewai():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom crews.cli import main\n"
            "r = CliRunner().invoke(main, ['--help'])\nassert r.exit_code == 0\n"
            "for cmd in ('run', 'runs', 'show', 'export', 'check'):\n"
            "    assert CliRunner().invoke(main, [cmd, '--help']).exit_code == 0\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('crewai', 'pandas')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_python_dash_m_crews_works():
    out = subprocess.run([sys.executable, "-m", "crews", "--help"], capture_output=True,
                         text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0
    assert out.stdout.startswith("Usage: crewbatch [OPTIONS] COMMAND [ARGS]...")
