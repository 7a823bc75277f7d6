"""Knowledge retrieval benchmark: recall@k and MRR of BM25, embeddings and their fusion.

Part 1, the sample knowledge base: the labelled ticket → section pairs of
benchmarks/retrieval_labels.csv (the query is what the research lookups search: the first 60 words
of subject and body), recall@3 per method. Part 2, tickets-tobi-bueck-multilang
(dataset-tickets-multi-lang3-4k.csv, from ../shared/corpora; skipped without it): each ticket's
body is a query and its own recorded answer the one relevant document among all the answers —
recall@1, recall@5 and MRR (over the top 20) overall and per language, with the time to index and
per query. Part 3 (with --install) measures the `[local]` extra's install size and time in a
copy of the current venv.

Methods: the hand-written BM25 crewbatch had (kept here as the baseline), bm25s (what
knowledge.py uses), rank-bm25 (when installed), the local model (when the `[local]` extra is
installed) and the two fusions, reciprocal rank and a weighted sum, both through
crews.retrieval's own code. The fake server's hashed-trigram vectors (the HTTP path's test double)
run on part 1 too, as a floor for what "any embedding" adds.

    .venv/bin/python benchmarks/retrieval_bench.py [--corpora DIR] [--limit N] [--install]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

from crews.knowledge import KnowledgeBase, Section, words  # noqa: E402
from crews.retrieval import CANDIDATES, fuse  # noqa: E402

CORPUS = "tickets-tobi-bueck-multilang/dataset-tickets-multi-lang3-4k.csv"
DEPTH = CANDIDATES  # MRR and the fused lists look this deep


class HandWrittenBM25:
    """The scorer knowledge.py had before bm25s (same formula: Lucene idf, k1 1.2, b 0.75)."""

    def __init__(self, docs: list[list[str]]):
        self.docs = [Counter(d) for d in docs]
        self.avg = sum(sum(d.values()) for d in self.docs) / max(1, len(self.docs))
        df = Counter(w for d in self.docs for w in d)
        n = len(self.docs)
        self.idf = {w: math.log(1 + (n - c + 0.5) / (c + 0.5)) for w, c in df.items()}

    def rank(self, query: list[str]) -> list[tuple[int, float]]:
        q = set(query)
        scored = []
        for i, doc in enumerate(self.docs):
            length = sum(doc.values())
            score = 0.0
            for w in q:
                tf = doc.get(w, 0)
                if tf:
                    score += self.idf[w] * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / self.avg))
            if score > 0:
                scored.append((i, score))
        scored.sort(key=lambda t: (-t[1], t[0]))
        return scored


class RankBM25:
    def __init__(self, docs: list[list[str]]):
        from rank_bm25 import BM25Okapi

        self.bm25 = BM25Okapi(docs, k1=1.2, b=0.75)

    def rank(self, query: list[str]) -> list[tuple[int, float]]:
        scores = self.bm25.get_scores(list(dict.fromkeys(query)))
        order = np.argsort(-scores, kind="stable")[:DEPTH]
        return [(int(i), float(scores[i])) for i in order if scores[i] > 0]


def local_embedder():
    try:
        from crews.retrieval import LocalEmbedder

        return LocalEmbedder()
    except Exception as exc:  # noqa: BLE001 - the extra is optional
        print(f"(local model skipped: {exc})", file=sys.stderr)
        return None


def metrics(ranks: list[int | None]) -> dict:
    n = max(1, len(ranks))
    return {"n": len(ranks),
            "recall@1": sum(1 for r in ranks if r == 1) / n,
            "recall@3": sum(1 for r in ranks if r and r <= 3) / n,
            "recall@5": sum(1 for r in ranks if r and r <= 5) / n,
            "mrr": sum(1 / r for r in ranks if r and r <= DEPTH) / n}


def rank_of(ranking: list[tuple[int, float]], relevant: set[int]) -> int | None:
    for r, (i, _) in enumerate(ranking[:DEPTH], 1):
        if i in relevant:
            return r
    return None


def dense(vectors: np.ndarray, query: np.ndarray) -> list[tuple[int, float]]:
    sims = vectors @ query
    order = np.argsort(-sims, kind="stable")[:DEPTH]
    return [(int(i), float(sims[i])) for i in order]


def evaluate(queries: list[str], relevant: list[set[int]], docs: list[Section],
             embedders: dict, groups: list[str] | None = None) -> dict:
    """Every method over the same queries: metrics overall (and per group), and timings."""
    tokens = [words(f"{s.title} {s.text}") for s in docs]
    results, timing = {}, {}
    rankings: dict[str, list] = {}

    keyword = {
        "bm25 hand-written": (lambda: HandWrittenBM25(tokens), lambda m, q: m.rank(words(q))),
        "bm25s": (lambda: KnowledgeBase(Path("."), docs), lambda m, q: m.keyword(q)[:DEPTH]),
        "rank-bm25": (lambda: RankBM25(tokens), lambda m, q: m.rank(words(q))),
    }
    for name, (build, rank) in keyword.items():
        started = time.perf_counter()
        try:
            model = build()
        except ImportError:
            print(f"({name} not installed: pip install -e \".[bench]\")", file=sys.stderr)
            continue
        index_s = time.perf_counter() - started
        started = time.perf_counter()
        rankings[name] = [rank(model, q) for q in queries]
        timing[name] = [index_s, (time.perf_counter() - started) / len(queries)]

    for name, embedder in embedders.items():
        started = time.perf_counter()
        vectors, _ = embedder.embed([f"{s.title}\n{s.text}" for s in docs])
        index_s = time.perf_counter() - started
        started = time.perf_counter()
        qv, _ = embedder.embed(queries)
        batch_s = (time.perf_counter() - started) / len(queries)
        sample = queries[:50]
        started = time.perf_counter()
        for q in sample:  # one at a time, as a ticket's search does
            embedder.embed([q])
        single_s = (time.perf_counter() - started) / len(sample)
        rankings[name] = [dense(vectors, v) for v in qv]
        timing[name] = [index_s, single_s, batch_s]
        for fusion in ("rrf", "weighted"):
            label = f"hybrid {fusion} (bm25s + {name})"
            started = time.perf_counter()
            rankings[label] = [fuse(k[:DEPTH], e[:DEPTH], fusion)
                               for k, e in zip(rankings["bm25s"], rankings[name], strict=True)]
            fuse_s = (time.perf_counter() - started) / len(queries)
            timing[label] = [timing["bm25s"][0] + index_s,
                             timing["bm25s"][1] + single_s + fuse_s]

    for name, ranked in rankings.items():
        ranks = [rank_of(r, rel) for r, rel in zip(ranked, relevant, strict=True)]
        entry = {"all": metrics(ranks)}
        if groups:
            by = defaultdict(list)
            for g, r in zip(groups, ranks, strict=True):
                by[g].append(r)
            entry.update({g: metrics(rs) for g, rs in sorted(by.items())})
        entry["timing_s"] = timing.get(name)
        results[name] = entry
    return results


def sample_part(embedders: dict) -> dict:
    kb = KnowledgeBase(ROOT / "data/knowledge")
    index = {s.title: i for i, s in enumerate(kb.sections)}
    tickets = {r["ticket_id"]: r for r in csv.DictReader(
        open(ROOT / "data/tickets.csv", encoding="utf-8"))}
    queries, relevant = [], []
    with open(ROOT / "benchmarks/retrieval_labels.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            t = tickets[row["ticket_id"]]
            queries.append(" ".join(f"{t['subject']} {t['body']}".split()[:60]))
            relevant.append({index[title] for title in row["relevant"].split(" | ")})
    return evaluate(queries, relevant, kb.sections, embedders)


def read_corpus(path: Path, limit: int | None) -> tuple[list[str], list[Section], list[str]]:
    """(queries, documents, languages): the records that are whole (the file's last one is cut
    off upstream) with a body and an answer."""
    queries, docs, langs = [], [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                if not all((row.get(k) or "").strip() for k in ("body", "answer", "language")):
                    continue
                queries.append(row["body"])
                docs.append(Section(f"answer-{len(docs)}", "", row["answer"]))
                langs.append(row.get("language") or "?")
                if limit and len(queries) >= limit:
                    break
        except csv.Error:
            pass  # the truncated last record
    return queries, docs, langs


class TrigramEndpoint:
    """The fake server's /v1/embeddings through crewbatch's endpoint embedder (HTTP path)."""

    def __init__(self, server):
        from crews.calls import RateLimiter, RetryPolicy
        from crews.retrieval import EndpointEmbedder

        self.inner = EndpointEmbedder("fake-embedding", server.base_url, "local", 30,
                                      RetryPolicy(), RateLimiter(None, None))

    def embed(self, texts):
        return self.inner.embed(texts)


def table(title: str, results: dict, columns: list[str], groups: list[str]) -> str:
    lines = [f"\n{title}", f"{'method':<40} " + " ".join(f"{g + ' ' + c:>14}" for g in groups
                                                      for c in columns)]
    for name, entry in results.items():
        cells = [f"{entry[g][c]:>14.3f}" if g in entry else f"{'':>14}" for g in groups
                 for c in columns]
        lines.append(f"{name:<40} " + " ".join(cells))
    lines.append("timing: index s / per query s (embeddings: index, one query, per query "
                 "batched)")
    for name, entry in results.items():
        if entry.get("timing_s"):
            lines.append(f"  {name:<40} " + " / ".join(f"{t:.5f}" for t in entry["timing_s"]))
    return "\n".join(lines)


def install_part() -> dict:
    """Install the [local] extra into a copy of this venv: the size and time it adds."""
    venv = Path(sys.prefix)
    work = Path(tempfile.mkdtemp(prefix="crewbatch-local-extra-"))
    copy = work / "venv"
    shutil.copytree(venv, copy, symlinks=True)
    before = _size_mb(copy)
    started = time.perf_counter()
    subprocess.run([str(copy / "bin/python"), "-m", "pip", "install", "-q",
                    f"{ROOT}[local]"], check=True)
    seconds = time.perf_counter() - started
    after = _size_mb(copy)
    shutil.rmtree(work)
    return {"venv_mb_before": before, "venv_mb_after": after, "added_mb": after - before,
            "install_s": round(seconds, 1)}


def _size_mb(path: Path) -> int:
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=ROOT.parent / "shared" / "corpora")
    parser.add_argument("--limit", type=int, default=None, help="corpus pairs to use (all)")
    parser.add_argument("--no-local", action="store_true", help="skip the local model")
    parser.add_argument("--install", action="store_true",
                        help="also measure the [local] extra's install size and time")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    from fake_openai import FakeOpenAI

    local = None if args.no_local else local_embedder()
    out: dict = {}
    with FakeOpenAI() as server:
        embedders = {"trigram (fake endpoint)": TrigramEndpoint(server)}
        if local is not None:
            embedders["local MiniLM"] = local
        out["sample"] = sample_part(embedders)
    print(table("sample knowledge base: labelled ticket -> section pairs", out["sample"],
                ["recall@1", "recall@3", "mrr"], ["all"]))

    path = args.corpora / CORPUS
    if path.is_file():
        queries, docs, langs = read_corpus(path, args.limit)
        embedders = {"local MiniLM": local} if local is not None else {}
        out["corpus"] = evaluate(queries, [{i} for i in range(len(docs))], docs, embedders,
                                 langs)
        groups = ["all", *sorted(set(langs))]
        print(table(f"{CORPUS}: {len(queries)} body -> own answer pairs", out["corpus"],
                    ["recall@1", "recall@5", "mrr"], ["all"]))
        print(table("per language, recall@5", out["corpus"], ["recall@5"], groups))
    else:
        print(f"\n(corpus skipped: {path} not found)")

    if args.install:
        out["install"] = install_part()
        print(f"\n[local] extra: {out['install']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
