"""The README documents every command, and CI runs exactly the README's test command."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner
from conftest import REPO

from crews.cli import main
from crews.ticket import ExitCode

README = (REPO / "README.md").read_text(encoding="utf-8")


def commands(group: click.Group = main, prefix: tuple[str, ...] = ()):
    """Every command a user can run, by its full name (`review apply`), sub-commands included."""
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*prefix, name))
        else:
            yield " ".join((*prefix, name))


def test_the_command_list_reaches_into_groups():
    assert "review apply" in list(commands()) and "review" not in list(commands())


@pytest.mark.parametrize("name", list(commands()))
def test_every_command_has_help_with_an_example_and_is_in_the_readme(name):
    result = CliRunner().invoke(main, [*name.split(), "--help"])
    assert result.exit_code == 0, result.output
    summary = result.output.split("\n\n")[1].strip()
    assert len(summary) > 20, summary
    assert re.search(r"^\s*Examples?:\n(?:\s+.*\n)*?\s+crewbatch " + re.escape(name) + r"\b",
                     result.output, re.M), result.output
    assert re.search(r"^\| `crewbatch " + re.escape(name) + r"\b", README, re.M), name


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


def architecture_map() -> str:
    return README.split("\n## Architecture map\n")[1].split("\n## ")[0]


def test_the_architecture_map_names_every_module_and_only_modules_that_exist():
    named = set(re.findall(r"`(crews/[\w/]+(?:\.py|/))`", architecture_map()))
    missing = sorted(n for n in named if not (REPO / n).exists())
    assert not missing, f"the README's architecture map names modules that do not exist: {missing}"
    modules = {str(p.relative_to(REPO)) for p in (REPO / "crews").rglob("*.py")}
    packages = {str(p.parent.relative_to(REPO)) + "/" for p in (REPO / "crews").rglob("*/__init__.py")
                if p.parent != REPO / "crews"}
    unnamed = sorted((modules | packages) - named)
    assert not unnamed, f"add these to the README's architecture map: {unnamed}"
