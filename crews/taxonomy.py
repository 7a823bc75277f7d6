"""The ticket taxonomy: the categories, priorities and queues a project triages into.

config/taxonomy.yaml is the user's, like the policy: the writer's prompt shows it (`{taxonomy}`),
the writer's structured answer may only name its entries (outputs.draft_model builds the Draft
schema's enums from it), the executor routes to its queues, the review sheet offers it in
drop-downs and `crewbatch eval` scores against it. The `offline` block holds what only the
built-in offline model needs to classify (cue words, defaults); a real model works from the
descriptions. settings.load_config validates the file and cross-checks it against the policy.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, PrivateAttr

from .action_kinds import TAG_TICKET

TAXONOMY_FILE = "config/taxonomy.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CategorySpec(_Strict):
    description: str
    queue: str | None = None      # where a ticket of this category goes unless a rule says else


class OfflineSpec(_Strict):
    """The offline model's classifier: ordered cue rules and the defaults when none matches."""

    categories: list[dict[str, list[str]]] = []    # [{category: [cue, ...]}], first match wins
    fallback_category: str | None = None           # default: the last category
    queues: list[dict[str, list[str]]] = []        # [{queue: [cue, ...]}], first match wins
    priorities: dict[str, list[str]] = {}          # priority -> cues; the highest match counts
    category_priority: dict[str, str] = {}
    default_priority: str | None = None            # default: the lowest priority
    instructions_priority: str | None = None       # a ticket that tries to instruct the agents
    search: dict[str, str] = {}                    # category -> knowledge search terms


@dataclass(frozen=True)
class Matchers:
    """The offline block with its cues compiled (one pattern per rule)."""

    categories: tuple[tuple[str, re.Pattern], ...]
    queues: tuple[tuple[str, re.Pattern], ...]
    priorities: tuple[tuple[str, re.Pattern], ...]


def cue_pattern(cues: list[str]) -> re.Pattern:
    return re.compile("|".join(f"(?:{c})" for c in cues), re.IGNORECASE)


class Taxonomy(_Strict):
    categories: dict[str, CategorySpec]
    priorities: dict[str, str]      # lowest first; name -> description
    queues: dict[str, str]          # name -> description
    offline: OfflineSpec = OfflineSpec()
    _matchers: Matchers | None = PrivateAttr(default=None)

    @property
    def fallback_category(self) -> str:
        return self.offline.fallback_category or list(self.categories)[-1]

    @property
    def default_priority(self) -> str:
        return self.offline.default_priority or next(iter(self.priorities))

    def queue_of(self, category: str) -> str | None:
        spec = self.categories.get(category)
        return spec.queue if spec else None

    def rank(self, priority: str) -> int:
        """A priority's place from the lowest (0); -1 for a name that is not one."""
        names = list(self.priorities)
        return names.index(priority) if priority in names else -1

    def matchers(self) -> Matchers:
        """The offline cues compiled once (the file was validated, so every cue compiles)."""
        if self._matchers is None:
            o = self.offline
            self._matchers = Matchers(
                tuple((name, cue_pattern(cues)) for rule in o.categories for name, cues in
                      rule.items()),
                tuple((name, cue_pattern(cues)) for rule in o.queues for name, cues in
                      rule.items()),
                tuple((name, cue_pattern(cues)) for name, cues in o.priorities.items()))
        return self._matchers

    def prompt(self) -> str:
        """The taxonomy as the writer's prompt shows it (`{taxonomy}` in tasks.yaml)."""
        lines = ["Categories (`category` is exactly one of these names):"]
        for name, spec in self.categories.items():
            queue = f" (queue: {spec.queue})" if spec.queue else ""
            lines.append(f"- {name}: {spec.description}{queue}")
        lines.append("Priorities, lowest first (`priority` is exactly one of these names):")
        lines += [f"- {name}: {text}" for name, text in self.priorities.items()]
        lines.append(f"Queues (route the ticket to one with {TAG_TICKET}):")
        lines += [f"- {name}: {text}" for name, text in self.queues.items()]
        return "\n".join(lines)


def problems(taxonomy: Taxonomy, name: str = TAXONOMY_FILE) -> list[str]:
    """Every cross-reference in the file that does not resolve, and every cue that does not
    compile, each naming the key and the fix."""
    out: list[str] = []
    cats, prios, queues = set(taxonomy.categories), set(taxonomy.priorities), set(taxonomy.queues)
    for key, names in (("categories", cats), ("priorities", prios), ("queues", queues)):
        if not names:
            out.append(f"{name}: `{key}` is empty; list at least one")
        for n in names:
            if not n.strip() or re.search(r"[\x00-\x1f]", n):
                out.append(f"{name}: `{key}` has the name {n!r}; a name is one line of text")

    def known(value: str | None, names: set[str], key: str, kind: str) -> None:
        if value is not None and value not in names:
            close = difflib.get_close_matches(value, list(names), n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            out.append(f"{name}: `{key}` is `{value}`, which is not one of the {kind}{hint}: "
                       f"{', '.join(sorted(names))}")

    for cat, spec in taxonomy.categories.items():
        known(spec.queue, queues, f"categories.{cat}.queue", "queues")
    o = taxonomy.offline
    for i, rule in enumerate(o.categories):
        _rule(rule, f"offline.categories[{i}]", cats, "categories", name, out, known)
    for i, rule in enumerate(o.queues):
        _rule(rule, f"offline.queues[{i}]", queues, "queues", name, out, known)
    for prio, cues in o.priorities.items():
        known(prio, prios, f"offline.priorities.{prio}", "priorities")
        _cues(cues, f"offline.priorities.{prio}", name, out)
    for cat, prio in o.category_priority.items():
        known(cat, cats, f"offline.category_priority.{cat}", "categories")
        known(prio, prios, f"offline.category_priority.{cat}", "priorities")
    known(o.fallback_category, cats, "offline.fallback_category", "categories")
    known(o.default_priority, prios, "offline.default_priority", "priorities")
    known(o.instructions_priority, prios, "offline.instructions_priority", "priorities")
    for cat in o.search:
        known(cat, cats, f"offline.search.{cat}", "categories")
    return out


def _rule(rule: dict, key: str, names: set[str], kind: str, name: str, out: list[str],
          known) -> None:
    if len(rule) != 1:
        out.append(f"{name}: `{key}` must be one `name: [cues]` pair (a rule per list item); "
                   f"it has {len(rule)}")
    for target, cues in rule.items():
        known(target, names, key, kind)
        _cues(cues, f"{key}.{target}", name, out)


def _cues(cues: list[str], key: str, name: str, out: list[str]) -> None:
    if not cues:
        out.append(f"{name}: `{key}` has no cues; list at least one or remove it")
    for cue in cues:
        try:
            re.compile(cue)
        except re.error as exc:
            out.append(f"{name}: `{key}`: {cue!r} is not a valid regular expression ({exc}); "
                       "fix it (single quotes keep backslashes as written)")
