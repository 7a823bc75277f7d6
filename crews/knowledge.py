"""What the researcher can know: the knowledge base (policies, FAQ) and the order table.

Both are loaded once per run and shared read-only by every ticket. Knowledge search ranks the
Markdown sections of data/knowledge/ by BM25 (bm25s, over our own tokens): deterministic, instant,
needs no embedding model, so offline runs and tests are reproducible. With
`knowledge.embedding_model` set, retrieval.py adds an embedding ranking and fuses the two
(`KnowledgeBase.semantic`). Orders are a pandas table keyed by order id; lookups never reveal an
order to a ticket whose customer does not own it.

Guidance written for the support team, not for customers, is marked so it never reaches a reply:
a whole file with front matter `audience: agents` (a `---` block at its top), or one section
with a heading ending in `(agents only)`. The researcher still reads it (it says how to handle
a case); search results carry `"audience": "agents"`, the offline writer never quotes it and
the gate blocks a reply that repeats eight or more of its words in a row (`internal_leak`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOPWORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "for", "from", "has", "have", "how", "i", "if", "in", "is", "it", "its", "me", "my", "no", "not", "of", "on", "or", "our", "please", "the", "their", "there", "this", "to", "was", "we", "what", "when", "where", "which", "who", "will", "with", "you", "your", "hi", "hello", "thanks", "thank", "about", "does", "did", "am", "m", "s", "t"])


def words(text: str) -> list[str]:
    return [w for w in (m.lower() for m in WORD.findall(text)) if w not in STOPWORDS]


AGENTS, CUSTOMERS = "agents", "customers"
AGENTS_ONLY = re.compile(r"\s*[(\[]\s*agents?[ -]only\s*[)\]]\s*$", re.IGNORECASE)
FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n---[ \t]*(?:\n|\Z)", re.DOTALL)


@dataclass(frozen=True)
class Section:
    source: str      # file name
    title: str
    text: str
    audience: str = CUSTOMERS   # `agents`: guidance for the support team, never for a reply

    @property
    def internal(self) -> bool:
        return self.audience == AGENTS


@dataclass
class Hit:
    """One retrieved section with its fused score and what each ranking said about it."""

    section: Section
    score: float
    ranks: dict[str, Any] = field(default_factory=dict)  # {"bm25": [rank, score], ...}

    def as_dict(self) -> dict:
        s = self.section
        return {"source": s.source, "title": s.title, "text": s.text, "audience": s.audience,
                "score": round(self.score, 4), "ranks": self.ranks}


@dataclass
class Found:
    """A search's hits, how they were ranked, and what the query's embedding cost."""

    hits: list[Hit]
    method: str = "bm25"
    embedding_tokens: int = 0
    error: str = ""   # an embedding call that failed: this search fell back to BM25


class KnowledgeBase:
    def __init__(self, directory: Path, sections: list[Section] | None = None):
        """The sections of the .md and .txt files under `directory` (or the `sections` given)."""
        import bm25s

        self.directory = directory
        self.sections: list[Section] = list(sections or [])
        for path in sorted(directory.rglob("*")) if sections is None else ():
            if path.suffix.lower() in (".md", ".txt") and path.is_file():
                self.sections.extend(_split(path.relative_to(directory).as_posix(),
                                            path.read_text(encoding="utf-8", errors="replace")))
        tokens = [words(s.title + " " + s.text) for s in self.sections]
        self._vocab = {w for doc in tokens for w in doc}
        # Lucene's BM25 (k1 1.2, b 0.75) is the formula the hand-written scorer it replaced
        # used; float64 keeps its ties, and so the offline model's choices, exactly as they were.
        self._bm25 = bm25s.BM25(k1=1.2, b=0.75, method="lucene", dtype="float64")
        if self.sections:
            self._bm25.index(tokens, show_progress=False)
        self.semantic = None  # retrieval.Semantic, when an embedding model is configured

    def keyword(self, query: str) -> list[tuple[int, float]]:
        """(section index, BM25 score) of every section sharing a word with the query, best first."""
        q = list(dict.fromkeys(w for w in words(query) if w in self._vocab))
        if not q:
            return []
        scores = self._bm25.get_scores(q)
        ranked = [(i, float(x)) for i, x in enumerate(scores) if x > 0]
        ranked.sort(key=lambda t: (-t[1], t[0]))
        return ranked

    def find(self, query: str, k: int = 3) -> Found:
        if self.semantic is not None:
            return self.semantic.find(self, query, k)
        return Found([Hit(self.sections[i], score, {"bm25": [r, round(score, 4)]})
                      for r, (i, score) in enumerate(self.keyword(query)[:k], 1)])

    def search(self, query: str, k: int = 3) -> list[Section]:
        return [h.section for h in self.find(query, k).hits]


def _audience(name: str, text: str) -> tuple[str, str]:
    """The file's audience from its front matter, and the text without it."""
    m = FRONT_MATTER.match(text)
    if not m:
        return CUSTOMERS, text
    import yaml

    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{name}: the front matter is not valid YAML ({exc})") from exc
    audience = str(meta.get("audience", CUSTOMERS)).strip().lower() if isinstance(meta, dict) \
        else CUSTOMERS
    if audience not in (AGENTS, CUSTOMERS):
        raise ValueError(f"{name}: front matter `audience: {audience}` must be `agents` or "
                         "`customers`")
    return audience, text[m.end():]


def _split(name: str, text: str) -> list[Section]:
    """Split a Markdown file into sections at its headings (a file without headings is one)."""
    file_audience, text = _audience(name, text)
    sections, title, lines = [], name, []
    doc_title = name
    audience = file_audience
    for line in text.splitlines():
        heading = re.match(r"^(#{1,4})\s+(.*)", line)
        if heading:
            if any(ln.strip() for ln in lines):
                sections.append(Section(name, title, "\n".join(lines).strip(), audience))
            words_ = heading.group(2).strip()
            audience = AGENTS if AGENTS_ONLY.search(words_) else file_audience
            words_ = AGENTS_ONLY.sub("", words_)
            if heading.group(1) == "#":
                doc_title = words_
                title = doc_title
            else:
                title = f"{doc_title} — {words_}"
            lines = []
        else:
            lines.append(line)
    if any(ln.strip() for ln in lines):
        sections.append(Section(name, title, "\n".join(lines).strip(), audience))
    return sections


class Orders:
    """The order table, with lookups that respect whose order it is.

    pandas reads and normalises the export; lookups then go through plain dicts built once, since
    they run several times per ticket and a DataFrame filter costs ~1 ms each.
    """

    def __init__(self, path: Path):
        self.path = path
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        frame.columns = [c.strip().lower() for c in frame.columns]
        missing = {"order_id", "customer"} - set(frame.columns)
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        frame["order_id"] = frame["order_id"].str.strip().str.upper()
        frame["customer"] = frame["customer"].str.strip().str.lower()
        self.frame = frame.set_index("order_id", drop=False)
        self._by_id: dict[str, dict] = {}
        self._by_customer: dict[str, list[dict]] = {}
        for row in frame.to_dict("records"):
            self._by_id.setdefault(row["order_id"], row)  # the first row of a repeated id wins
            self._by_customer.setdefault(row["customer"], []).append(row)

    def get(self, order_id: str) -> dict | None:
        row = self._by_id.get((order_id or "").strip().upper())
        return dict(row) if row is not None else None

    def for_customer(self, customer: str) -> list[dict]:
        return [dict(r) for r in self._by_customer.get((customer or "").strip().lower(), [])]

    def owner(self, order_id: str) -> str | None:
        order = self.get(order_id)
        return order["customer"] if order else None
