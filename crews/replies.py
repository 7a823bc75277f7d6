"""The offline model's replies: a shop's sentences as data, filled in from the ticket's evidence.

`<knowledge dir>/replies.yaml` (next to the policies it quotes) holds the shop's name, every
sentence the offline writer can send, the regular expressions that find the facts it quotes in
the knowledge files (`facts`), and which ticket categories each knowledge file answers
(`topics`). A shop that edits that file gets its own offline replies; the Python picker in
offline.py only decides which sentences fit a ticket. Without the file the built-in
generic_replies.yaml (plain English, no shop named) is used; a key the shop's file leaves out
falls back to it. A broken file stops the run with a ConfigError naming it, before any ticket.

A reply key is a paragraph: a list of sentences joined by spaces. A sentence is a string or a
list of alternatives, of which the first whose `{fields}` are all known is used; a sentence with
none is left out. So a fact missing from the knowledge base drops a clause, never leaves a gap.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

from .settings import Config, ConfigError, _read_yaml, _Strict, _suggest, load_model
from .taxonomy import TAXONOMY_FILE, Taxonomy

REPLIES_FILE = "replies.yaml"  # in the knowledge directory (knowledge.py reads only .md/.txt)
GENERIC = Path(__file__).with_name("generic_replies.yaml")

# What the picker fills in; facts (named in the file) come on top.
FIELDS = ("first_name", "shop", "order_id", "item", "status", "carrier", "tracking_number",
          "shipped_at", "estimated_delivery", "amount", "currency", "order_ids", "own_orders",
          "answer")

Sentence = str | list[str]
Paragraph = str | list[Sentence]


class _RepliesFile(_Strict):
    shop: str = ""
    facts: dict[str, str] = {}
    topics: dict[str, list[str]] = {}   # categories of config/taxonomy.yaml
    # Words that say nothing about what a ticket is about ("support", "issue", "been"): a
    # knowledge answer needs words in common with the ticket beyond these (offline.relevant).
    generic_words: list[str] = []
    # Regexes that show a ticket is about one of the customer's own orders ("my parcel", "I
    # ordered"): only then does the offline writer ask for an order number it was not given.
    order_cues: list[str] = []
    replies: dict[str, Paragraph] = {}


@dataclass(frozen=True)
class Replies:
    """One shop's parsed replies file (merged over the generic one)."""

    source: str                                  # the file, as messages name it
    shop: str
    texts: dict[str, tuple[tuple[str, ...], ...]]  # key -> sentences -> alternatives
    facts: dict[str, re.Pattern] = field(default_factory=dict)
    topics: dict[str, tuple[str, ...]] = field(default_factory=dict)
    generic_words: frozenset[str] = frozenset()
    order_cues: re.Pattern | None = None
    # The project's taxonomy (the offline model classifies into it); None for the generic replies.
    taxonomy: Taxonomy | None = field(default=None, compare=False)

    def render(self, key: str, **fields: object) -> str:
        """The paragraph `key`, each sentence in its first alternative whose fields are known."""
        known = {k: str(v) for k, v in fields.items() if v not in (None, "")}
        if self.shop:
            known.setdefault("shop", self.shop)
        out = []
        for alternatives in self.texts[key]:
            for text in alternatives:
                if all(name in known for name in _fields(text)):
                    out.append(text.format_map(known).strip())
                    break
        return " ".join(s for s in out if s)

    def find_facts(self, texts: list[str]) -> dict[str, str]:
        """Each fact's first match (its first group) in the knowledge texts, in their order."""
        found = {}
        cleaned = [t.replace("**", "").replace("`", "") for t in texts]
        for name, pattern in self.facts.items():
            for text in cleaned:
                m = pattern.search(text)
                if m and m.group(1):
                    found[name] = m.group(1).strip()
                    break
        return found

    def topics_of(self, source: str) -> tuple[str, ...] | None:
        """The categories a knowledge file answers, or None for a file `topics` does not list."""
        return self.topics.get(source)


def _fields(text: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]


def _parse(name: str, data: object, problems: list[str], allowed_keys: set[str] | None
           ) -> _RepliesFile | None:
    parsed = load_model(name, data, _RepliesFile, problems,
                        "with the keys shop, facts, topics and replies (see "
                        "data/knowledge/replies.yaml in the crewbatch repository)")
    if parsed is None:
        return None
    for key in parsed.replies:
        if allowed_keys is not None and key not in allowed_keys:
            problems.append(f"{name}: `replies.{key}` is not a reply the offline model writes"
                            f"{_suggest(key, allowed_keys)}; known replies: "
                            f"{', '.join(sorted(allowed_keys))}")
    for fact, pattern in parsed.facts.items():
        try:
            groups = re.compile(pattern).groups
        except re.error as exc:
            problems.append(f"{name}: `facts.{fact}` is not a valid regular expression ({exc}); "
                            "fix the pattern (single quotes keep backslashes as written)")
            continue
        if groups < 1:
            problems.append(f"{name}: `facts.{fact}` has no group; put the part a reply quotes "
                            "in parentheses, e.g. 'valid for (\\d+ hours?)'")
    return parsed


def _sentences(paragraph: Paragraph) -> tuple[tuple[str, ...], ...]:
    items = [paragraph] if isinstance(paragraph, str) else paragraph
    return tuple((s,) if isinstance(s, str) else tuple(s) for s in items)


def _check_fields(name: str, texts: dict[str, tuple[tuple[str, ...], ...]], facts: set[str],
                  problems: list[str]) -> None:
    allowed = set(FIELDS) | facts
    for key, sentences in texts.items():
        for text in (t for alternatives in sentences for t in alternatives):
            try:
                parts = list(string.Formatter().parse(text))
            except ValueError:
                problems.append(f"{name}: `replies.{key}` has an unbalanced brace in {text!r}; "
                                "write a literal brace as {{ or }}")
                continue
            for _, fld, spec, conversion in parts:
                if fld is None:
                    continue
                if spec or conversion or not fld.isidentifier():
                    problems.append(f"{name}: `replies.{key}` uses {{{fld}"
                                    f"{'!' + conversion if conversion else ''}"
                                    f"{':' + spec if spec else ''}}}; write a plain field such as "
                                    "{order_id}")
                elif fld not in allowed:
                    problems.append(f"{name}: `replies.{key}` uses {{{fld}}}, which crewbatch does "
                                    f"not fill in{_suggest(fld, allowed)}; fields: "
                                    f"{', '.join(FIELDS)}; facts: {', '.join(sorted(facts))}")


@cache
def generic_replies() -> Replies:
    """The built-in replies: generic English, no shop named."""
    problems: list[str] = []
    parsed = _parse(str(GENERIC), _read_yaml(GENERIC.parent, GENERIC.name, problems), problems,
                    None)
    if parsed is None or problems:
        raise ConfigError(problems or [f"{GENERIC}: empty; reinstall crewbatch"])
    return _build(str(GENERIC), parsed, None, problems)


def _build(name: str, parsed: _RepliesFile, base: Replies | None, problems: list[str]) -> Replies:
    texts = dict(base.texts) if base else {}
    texts.update({k: _sentences(v) for k, v in parsed.replies.items()})
    patterns = {k: p.pattern for k, p in base.facts.items()} if base else {}
    patterns.update(parsed.facts)
    _check_fields(name, texts, set(patterns), problems)
    if problems:
        raise ConfigError(problems)
    return Replies(source=name, shop=parsed.shop.strip(), texts=texts,
                   facts={k: re.compile(p) for k, p in patterns.items()},
                   topics={f: tuple(c) for f, c in parsed.topics.items()},
                   generic_words=(base.generic_words if base else frozenset())
                   | {w.lower() for w in parsed.generic_words},
                   order_cues=_cues(parsed.order_cues, base.order_cues if base else None),
                   taxonomy=base.taxonomy if base else None)


def _cues(cues: list[str], base: re.Pattern | None) -> re.Pattern | None:
    """The shop's order cues (or, without any, the generic ones), compiled case-insensitively."""
    if not cues:
        return base
    return re.compile("|".join(f"(?:{c})" for c in cues), re.IGNORECASE)


def replies_path(config: Config) -> Path:
    return config.knowledge_dir / REPLIES_FILE


def load_replies(config: Config) -> Replies:
    """The project's replies (`<knowledge dir>/replies.yaml`), or the generic ones without it.

    Raises ConfigError listing every problem of the file, each naming it.
    """
    base = replace(generic_replies(), taxonomy=config.taxonomy)
    path = replies_path(config)
    if not path.is_file():
        return base
    try:
        name = path.relative_to(config.root).as_posix()
    except ValueError:
        name = str(path)
    problems: list[str] = []
    data = _read_yaml(config.root, name, problems)
    parsed = _parse(name, data, problems, set(base.texts))
    if parsed is not None:
        categories = list(config.taxonomy.categories) if config.taxonomy else []
        for source, topic in parsed.topics.items():
            if not (config.knowledge_dir / source).is_file():
                problems.append(f"{name}: `topics` lists `{source}`, which is not a file in "
                                f"{config.knowledge_dir}; name a knowledge file (as `shipping.md`) "
                                "or remove the entry")
            for category in topic:
                if categories and category not in categories:
                    problems.append(f"{name}: `topics.{source}` names category `{category}`, "
                                    f"which {TAXONOMY_FILE} does not define"
                                    f"{_suggest(category, categories)}; its categories are "
                                    f"{', '.join(categories)}")
    if parsed is None or problems:
        raise ConfigError(problems)
    return _build(name, parsed, base, problems)
