"""Configuration: every problem reported at once, with file, key and fix; one precedence order."""

from __future__ import annotations

from pathlib import Path

import pytest

from crews.settings import ConfigError, find_root, load_config, resolve_options


def problems(root: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(root)
    return err.value.problems


def test_repository_config_is_valid(project):
    config = load_config(project)
    assert set(config.agents) == {"researcher", "writer", "critic", "executor"}
    assert list(config.tasks) == ["research", "draft", "review", "execute"]
    assert config.policy.refunds.auto_approve_limit == 50
    assert config.settings.llm.model == "offline"


def test_misspelled_agent_in_task_names_file_key_and_fix(project):
    tasks = project / "config/tasks.yaml"
    tasks.write_text(tasks.read_text().replace("agent: writer", "agent: writter"))
    assert ("config/tasks.yaml: task `draft` names agent `writter`, which is not in "
            "config/agents.yaml (did you mean `writer`?)") in problems(project)


def test_every_problem_is_reported_at_once(project):
    agents = project / "config/agents.yaml"
    agents.write_text(agents.read_text().replace("  goal: >\n    Draft", "  gaol: >\n    Draft"))
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text().replace("concurrency: 4", "concurrency: 0"))
    tasks = project / "config/tasks.yaml"
    tasks.write_text(tasks.read_text().replace("{feedback}", "{feedbak}"))
    found = problems(project)
    assert any(p.startswith("config/agents.yaml: unknown key `writer.gaol` (did you mean `goal`?)")
               for p in found), found
    assert "config/agents.yaml: `writer.goal` is required; add it" in found
    assert any(p.startswith("config/settings.yaml: `concurrency`: Input should be greater than or "
                            "equal to 1") for p in found), found
    assert any(p.startswith("config/tasks.yaml: task `draft` description uses {feedbak}, which is "
                            "not available here (did you mean `feedback`?)") for p in found), found
    assert len(found) == 4


def test_action_tool_on_writer_is_refused(project):
    agents = project / "config/agents.yaml"
    text = agents.read_text().replace(
        "    honest about what happens next, and never promising what policy does not allow.\n",
        "    honest about what happens next, and never promising what policy does not allow.\n"
        "  tools: [request_refund]\n")
    agents.write_text(text)
    assert ("config/agents.yaml: agent `writer` lists action tool `request_refund`; only the "
            "executor may act (remove it from this agent)") in problems(project)


def test_output_placeholder_needs_context(project):
    tasks = project / "config/tasks.yaml"
    tasks.write_text(tasks.read_text().replace("  context: [research]\n", "", 1))
    assert ("config/tasks.yaml: task `draft` uses {research} but `research` is not in its "
            "context; add `context: [research]`") in problems(project)


def test_missing_file_and_bad_yaml(project):
    (project / "config/policy.yaml").unlink()
    (project / "config/settings.yaml").write_text("llm: [unclosed\n")
    found = problems(project)
    assert "config/policy.yaml: file is missing; restore it from the crewbatch repository" in found
    assert any(p.startswith("config/settings.yaml (line 2, column 1): not valid YAML") for p in found)


def test_missing_knowledge_dir_is_a_problem(project):
    import shutil

    shutil.rmtree(project / "data/knowledge")
    found = problems(project)
    assert any("`paths.knowledge` is data/knowledge" in p and "is not a directory" in p
               for p in found), found


def test_root_is_found_from_a_subdirectory_and_from_option(project, tmp_path, monkeypatch):
    sub = project / "data" / "knowledge"
    assert find_root(cwd=sub) == project.resolve()
    monkeypatch.setenv("CREWBATCH_ROOT", str(project))
    assert find_root(cwd=tmp_path) == project.resolve()
    monkeypatch.delenv("CREWBATCH_ROOT")
    with pytest.raises(ConfigError) as err:
        find_root(cwd=tmp_path)
    assert "no config/settings.yaml here or in any parent directory" in err.value.problems[0]


def test_precedence_cli_over_env_over_settings(project):
    config = load_config(project)
    assert resolve_options(config, {}, environ={}).concurrency == 4
    env = {"CREWBATCH_CONCURRENCY": "7", "CREWBATCH_MODEL": "gpt-4o-mini"}
    assert resolve_options(config, {}, environ=env).concurrency == 7
    opts = resolve_options(config, {"concurrency": 9, "offline": True}, environ=env)
    assert opts.concurrency == 9
    assert opts.model == "offline"
    assert resolve_options(config, {}, environ=env).model == "gpt-4o-mini"
    with pytest.raises(ConfigError) as err:
        resolve_options(config, {}, environ={"CREWBATCH_BATCH_SIZE": "many"})
    assert err.value.problems == ["environment: CREWBATCH_BATCH_SIZE='many' is not a positive "
                                  "whole number; fix or unset it"]


def test_a_policy_file_that_is_not_a_mapping_is_a_problem_not_the_defaults(project):
    from crews.settings import ConfigError, load_config

    (project / "config/policy.yaml").write_text("- refunds\n")
    with pytest.raises(ConfigError) as err:
        load_config(project)
    assert ("config/policy.yaml: must be a mapping of keys (refunds, allowed_actions, queues, ...)"
            in err.value.problems)


def test_the_ledger_is_sqlite_unless_a_database_url_is_set(project, monkeypatch):
    config = load_config(project)
    assert config.ledger_url == str(project / "runs/ledger.db") == config.ledger_name
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text().replace(
        "  url: null", "  url: postgresql://crew@db.example:5432/support"))
    assert load_config(project).ledger_url == "postgresql://crew@db.example:5432/support"
    # The environment beats settings.yaml, and its password is never shown.
    monkeypatch.setenv("CREWBATCH_DATABASE_URL", "postgresql://crew:s3cret@db2.example/support")
    config = load_config(project)
    assert config.ledger_url == "postgresql://crew:s3cret@db2.example/support"
    assert config.ledger_name == "postgresql://crew:***@db2.example/support"


def test_a_database_url_is_checked_and_its_password_kept_out_of_config(project, monkeypatch):
    settings = project / "config/settings.yaml"
    text = settings.read_text()
    settings.write_text(text.replace("  url: null", "  url: postgresql://crew:s3cret@db/support"))
    found = problems(project)
    assert ("config/settings.yaml: `ledger.url` holds a password; config/ is no place for a "
            "secret — put the whole URL in CREWBATCH_DATABASE_URL (environment or .env) or the "
            "password in PGPASSWORD or ~/.pgpass, and keep 'postgresql://crew@db/support' here"
            ) in found
    assert not any("s3cret" in p for p in found)
    settings.write_text(text.replace("  url: null", "  url: mysql://crew@db/support"))
    monkeypatch.setenv("CREWBATCH_DATABASE_URL", "sqlite:///x:s3cret@y")
    found = problems(project)
    assert ("config/settings.yaml: `ledger.url` is 'mysql://crew@db/support', not a PostgreSQL "
            "URL; write it as postgresql://USER@HOST:5432/DBNAME, or remove it for the SQLite "
            "ledger at `paths.ledger`") in found
    assert ("environment: CREWBATCH_DATABASE_URL='sqlite:///x:***@y' is not a PostgreSQL URL; "
            "write it as postgresql://USER@HOST:5432/DBNAME, or unset it") in found


def test_every_crewbatch_environment_variable_is_cleared_for_the_tests():
    """A variable the settings read but conftest leaves set would make tests depend on the
    shell they run in (CREWBATCH_WORKERS=4 turns every run into four processes)."""
    import os
    import re

    from conftest import CLEARED_ENV, REPO

    named = {m for path in (REPO / "crews").rglob("*.py")
             for m in re.findall(r"\bCREWBATCH_[A-Z_]+\b", path.read_text(encoding="utf-8"))}
    assert "CREWBATCH_WORKERS" in named
    assert named <= set(CLEARED_ENV), named - set(CLEARED_ENV)
    assert not [var for var in CLEARED_ENV if var in os.environ]


def test_the_environment_layer_holds_for_commands_without_the_option(project, cli):
    """`check` has no --model and `retry` no --revision-limit: the variables apply all the same
    (why the layer is not click's `envvar=`, settings.py)."""
    checked = cli("check", env={"CREWBATCH_MODEL": "gpt-4o-mini"})
    assert checked.exit_code == 2
    assert "OPENAI_API_KEY" in checked.output
    assert cli("check", env={}).exit_code == 0
    bad = cli("check", env={"CREWBATCH_REVISION_LIMIT": "lots"})
    assert bad.exit_code == 2
    assert "CREWBATCH_REVISION_LIMIT='lots' is not a positive whole number" in bad.output
