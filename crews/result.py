"""What the crew hands the engine for one ticket: `TicketResult`, and its token `Usage`.

The crew enters the run as a plain callable, `Ticket -> TicketResult` (crews/work.py `Crew`):
the configured CrewAI crew (`crew.CrewRunner`) in a real run, any function in a test or a
library user's own code. This module imports nothing of CrewAI, so the engine, the pipeline and
their tests can run without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .ticket import Status

if TYPE_CHECKING:
    from .actions import Decision
    from .outputs import Draft, Finding, ProposedAction, Verdict


@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens


@dataclass
class TicketResult:
    """One ticket's crew result, before its side effects: `status` is what the crew decided
    (`approved` means the executor may act; carrying it out can still send it to a person),
    `steps` every agent's output in order, `calls` one entry per model request (`step_key`
    "round:step", model, token counts; `exchange` its recording, when there is one)."""

    status: Status
    detail: str
    draft: Draft | None = None
    verdict: Verdict | None = None
    findings: list[Finding] = field(default_factory=list)
    revisions: int = 0
    needs_human_reason: str = ""
    plan: list[ProposedAction] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    models: set[str] = field(default_factory=set)
    error: str = ""
    calls: list[dict] = field(default_factory=list)
