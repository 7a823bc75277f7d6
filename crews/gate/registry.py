"""The gate's checks as named units: each registers a name, a default severity and what it does.

A check is a function of one `Case` (a draft, its ticket and what the research found) that
yields a detail string per problem, or `(severity, detail)` where one check knows degrees (an
address quoted from the ticket is less grave than one from the order table). config/policy.yaml
`checks:` sets a check's severity or switches it off (`off`); `crewbatch check` lists the
active ones. Checks that `escalate` send the ticket to a person whatever the draft says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

SEVERITIES = ("critical", "major", "minor", "info")
BLOCKING = ("major", "critical")
OFF = "off"


@dataclass(frozen=True)
class Check:
    name: str
    severity: str
    about: str
    run: Callable[..., Iterable[str | tuple[str, str]]]
    escalates: bool = False   # a finding hands the ticket to a person (nothing is sent)


CHECKS: dict[str, Check] = {}


def check(name: str, severity: str, about: str, escalates: bool = False):
    """Register the decorated function as the check `name` (registration order is run order)."""
    if severity not in SEVERITIES:
        raise ValueError(f"check {name}: severity {severity!r} is not one of {SEVERITIES}")

    def register(fn):
        if name in CHECKS:
            raise ValueError(f"check {name} is registered twice")
        CHECKS[name] = Check(name, severity, about, fn, escalates)
        return fn
    return register


def active(overrides: dict[str, str]) -> list[tuple[Check, str | None]]:
    """The checks policy leaves on, each with the severity policy gives it (None: its own)."""
    return [(c, overrides.get(c.name)) for c in CHECKS.values() if overrides.get(c.name) != OFF]


def override_problems(overrides: dict[str, str], where: str) -> list[str]:
    """config/policy.yaml `checks:` entries that name no check or no severity."""
    import difflib

    problems = []
    for name, value in overrides.items():
        if name not in CHECKS:
            hint = difflib.get_close_matches(name, list(CHECKS), n=1)
            problems.append(f"{where}: `checks.{name}` is not a check"
                            + (f" (did you mean `{hint[0]}`?)" if hint else "")
                            + f"; the checks are {', '.join(CHECKS)}")
        elif value not in (*SEVERITIES, OFF):
            problems.append(f"{where}: `checks.{name}: {value}` must be one of "
                            f"{', '.join((*SEVERITIES, OFF))}")
    return problems
