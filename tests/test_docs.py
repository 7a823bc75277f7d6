"""The README documents every command, and CI runs exactly the README's test command."""

from __future__ import annotations

import re

from click.testing import CliRunner
from conftest import REPO

from crews.cli import main
from crews.ticket import ExitCode

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_every_command_has_help_and_is_in_the_readme():
    for name, command in main.commands.items():
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0
        assert command.help and len(command.help.strip()) > 20, name
        assert f"crewbatch {name}" in README, name


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    blocks = re.findall(r"```sh\n(.*?)```", README.split("## Commands")[0], re.DOTALL)
    assert len(blocks) == 2
    install, test = (b.strip() for b in blocks)
    assert "crewbatch run --offline" in install and "pip install" in install
    ci = (REPO / ".ci/run").read_text()
    assert test in ci


def test_exit_codes_and_statuses_are_documented():
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3]
    table = README.split("### Exit codes")[1].split("###")[0]
    assert re.findall(r"^\| (\d) \|", table, re.M) == [str(int(c)) for c in ExitCode]
    for status in ("approved", "needs_human", "failed", "rejected", "skipped"):
        assert f"| `{status}` |" in README
