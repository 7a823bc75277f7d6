"""Deterministic checks on a draft, run in code beside the critic model.

A model critic is usually right; these checks are always right about what they cover, and a draft
with a blocking finding (severity major or critical) is never approved, whatever the critic says.
Each finding names the check and quotes its evidence so the writer can fix it and a reviewer can
see why. The checks read the reply (and, for escalations, the ticket); the actions are the
executor's tools' business.

Each check is a named unit in its own module, registered with a default severity
(`registry.check`); config/policy.yaml `checks:` changes a severity or switches a check off, and
`crewbatch check` lists the active ones. Patterns and word lists are data (`patterns.yaml`);
the kinds of ticket a person must see are config (config/escalation.yaml).

- `hygiene`: `empty_reply`, `echoes_ticket` (ten or more words pasted from the ticket),
  `code_in_reply`, `too_long`, `placeholder`;
- `leaks`: `internal_leak` (prompts, tool output, internal notes, agents-only knowledge),
  `sensitive_data`;
- `people`: `other_customer_data` — nobody's data but the ticket's customer's;
- `grounding`: `invented_fact` — every order number, amount, date and tracking number comes
  from the ticket or the researcher's tool results;
- `promises`: `over_policy_promise`, `unsupported_discount`, `unsupported_deadline`,
  `unknown_link`;
- `languages`: `wrong_language`;
- `escalation`: `suspicious_instructions`, `must_escalate` — `info` findings about the ticket
  that never block a draft but make `escalation_reason` hand the ticket to a person.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING

from ..outputs import Draft, Finding
from ..settings import Limits, Policy
from ..ticket import Ticket
from . import parsing as p
from .case import Case
from .patterns import INJECTION, ORDER_ID
from .registry import BLOCKING, CHECKS, active

# Importing a check module registers its checks; this is their run order (and the order of
# the findings): the reply's form, what it leaks, whom it is about, its facts, its promises,
# its language, then the ticket itself.
for _module in ("hygiene", "leaks", "people", "grounding", "promises", "languages", "escalation"):
    importlib.import_module(f"{__name__}.{_module}")

from .escalation import suspicious_instructions  # noqa: E402
from .languages import detect_language  # noqa: E402
from .parsing import amount_values  # noqa: E402

if TYPE_CHECKING:
    from ..knowledge import KnowledgeBase, Orders
    from ..research import Evidence
    from ..settings import Config, EscalationKind

__all__ = ["BLOCKING", "CHECKS", "Gate", "INJECTION", "ORDER_ID", "amount_values", "blocking",
           "check_draft", "detect_language", "escalation_reason", "suspicious_instructions"]

class Gate:
    """The active checks, with what they compare against prepared once per run.

    `orders` (the whole order table) lets the gate tell another customer's data from an invented
    fact; `knowledge` (the whole knowledge base) is what policy allows to be promised, and its
    agents-only sections what a reply must never quote; `prompts` are the agents' instructions,
    which a reply must never repeat; `escalation` the kinds of ticket a person must see. All are
    optional: without them the gate falls back to the researcher's evidence.
    """

    def __init__(self, policy: Policy, limits: Limits, orders: Orders | None = None,
                 knowledge: KnowledgeBase | str | None = None, prompts: Iterable[str] = (),
                 escalation: dict[str, EscalationKind] | None = None):
        self.policy = policy
        self.limits = limits
        self.checks = active(policy.checks)
        sections = [] if isinstance(knowledge, str) or knowledge is None else knowledge.sections
        self.knowledge = (knowledge if isinstance(knowledge, str) or knowledge is None
                          else "\n\n".join(s.text for s in sections))
        self.order_owner: dict[str, str] = {}
        self.order_total: dict[str, Decimal] = {}
        self.tracking_owner: dict[str, str] = {}
        self.name_owner: dict[str, str] = {}
        self.emails: set[str] = set()
        if orders is not None:
            for row in orders.frame.to_dict("records"):
                owner = str(row.get("customer", "")).lower()
                oid = str(row.get("order_id", "")).upper()
                self.order_owner[oid] = owner
                self.order_total[oid] = min(amount_values(str(row.get("total", ""))) or
                                            {Decimal(0)})
                tracking = str(row.get("tracking_number", "")).strip().upper()
                if tracking:
                    self.tracking_owner[tracking] = owner
                name = " ".join(str(row.get("customer_name", "")).split())
                if len(name.split()) >= 2:
                    self.name_owner[name.lower()] = owner
                self.emails.add(owner)
        self.policy_percentages = p.percentages(self.knowledge or "")
        self.policy_durations = p.durations(self.knowledge or "")
        kb_shingles = p.shingles(self.knowledge or "")
        # Agents-only guidance a reply must not quote: its 8-word runs that no text written for
        # customers shares (a common phrase is not a leak).
        self.customer_shingles = set().union(*(p.shingles(s.text) for s in sections
                                               if not s.internal)) if sections else set()
        self.internal_shingles = set().union(*(p.shingles(s.text) for s in sections
                                               if s.internal)) - self.customer_shingles \
            if sections else set()
        from .patterns import ECHO

        self.kb_echo = p.shingles(self.knowledge or "", ECHO)
        self.prompt_shingles: set[str] = set()
        for text in prompts:
            self.prompt_shingles |= p.shingles(re.sub(r"\{\w+\}", " ", text))
        self.prompt_shingles -= kb_shingles
        self.escalation = [
            (kind, spec.reason, spec.pattern())
            for kind, spec in (escalation or {}).items() if kind in policy.escalate_kinds]

    @classmethod
    def from_config(cls, config: Config, orders: Orders | None = None,
                    knowledge: KnowledgeBase | None = None, extra_prompts: Iterable[str] = ()
                    ) -> Gate:
        prompts = [*extra_prompts]
        for spec in config.agents.values():
            prompts.append(f"You are {spec.role}. {spec.backstory}\nYour personal goal is: "
                           f"{spec.goal}")
        for spec in config.tasks.values():
            prompts += [spec.description, spec.expected_output]
        return cls(config.policy, config.settings.limits, orders, knowledge, prompts,
                   config.escalation)

    def check(self, draft: Draft, ticket: Ticket, evidence: Evidence) -> list[Finding]:
        findings: list[Finding] = []
        seen: set[tuple[str, str]] = set()
        if not (draft.reply or "").strip():
            empty = CHECKS["empty_reply"]
            return [Finding(check=empty.name, severity=empty.severity,
                            detail="the draft has no reply text")]
        case = Case(self, draft, ticket, evidence)
        for unit, severity in self.checks:
            for item in unit.run(case):
                own, detail = item if isinstance(item, tuple) else (unit.severity, item)
                if (unit.name, detail) not in seen:
                    seen.add((unit.name, detail))
                    findings.append(Finding(check=unit.name, severity=severity or own,
                                            detail=detail))
        return findings

def blocking(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity in BLOCKING]

def escalation_reason(findings: list[Finding]) -> str:
    """Why the ticket must go to a person whatever the draft says, or ''."""
    reasons = []
    for f in findings:
        unit = CHECKS.get(f.check)
        if unit is None or not unit.escalates:
            continue
        reason = ("the ticket contains instructions aimed at the support system; a person must "
                  "review it" if f.check == "suspicious_instructions"
                  else f"a person must see this ticket: {f.detail}")
        if reason not in reasons:
            reasons.append(reason)
    return "; ".join(reasons)

def check_draft(draft: Draft, ticket: Ticket, evidence: Evidence, policy: Policy, limits: Limits,
                orders: Orders | None = None, knowledge: KnowledgeBase | str | None = None,
                prompts: Iterable[str] = (), escalation: dict[str, EscalationKind] | None = None
                ) -> list[Finding]:
    """One-off check (the crew keeps a prepared `Gate`)."""
    return Gate(policy, limits, orders, knowledge, prompts, escalation).check(draft, ticket,
                                                                               evidence)
