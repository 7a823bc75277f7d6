"""Exact accounting under concurrency: every request attributed to its ticket and agent."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter

from conftest import price_fake_model
from fake_openai import FakeOpenAI, prompt_tokens_of


def ticket_of(body: dict) -> str:
    for m in body["messages"]:
        found = re.search(r"<ticket>\n(.*?)\n</ticket>", str(m.get("content") or ""), re.DOTALL)
        if found:
            return json.loads(found.group(1))["ticket_id"]
    raise AssertionError("request without a ticket")


def test_tokens_and_calls_are_attributed_per_ticket_and_agent(project, cli):
    price_fake_model(project, 2, 8)
    with FakeOpenAI() as server:
        env = {"OPENAI_API_KEY": "sk-test-aaaaaaaa", "OPENAI_BASE_URL": server.base_url}
        result = cli("run", "--model", "fake-model", "--limit", "16", "--concurrency", "8",
                     env=env)
        requests = list(server.requests)
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip()
    server_calls = Counter(ticket_of(r["body"]) for r in requests)
    server_prompt = Counter()
    for r in requests:
        server_prompt[ticket_of(r["body"])] += prompt_tokens_of(r["body"])
    db = sqlite3.connect(project / "runs/ledger.db")
    rows = db.execute(
        "SELECT o.ticket_id, COUNT(c.call_id), SUM(c.prompt_tokens), o.prompt_tokens, "
        "o.completion_tokens, SUM(c.completion_tokens), o.cost_usd, SUM(c.cost_usd) "
        "FROM outcomes o JOIN model_calls c ON c.outcome_id = o.outcome_id "
        "WHERE o.run_id = ? GROUP BY o.outcome_id", (run_id,)).fetchall()
    assert len(rows) == 16
    for ticket_id, calls, call_prompt, prompt, completion, call_completion, cost, call_cost in rows:
        assert calls == server_calls[ticket_id], ticket_id
        assert call_prompt == prompt == server_prompt[ticket_id], ticket_id
        assert call_completion == completion
        assert abs(cost - call_cost) < 1e-9
        assert abs(cost - (prompt * 2 + completion * 8) / 1e6) < 1e-9
    agents = dict(db.execute("SELECT agent, COUNT(*) FROM model_calls c JOIN outcomes o ON "
                             "o.outcome_id = c.outcome_id WHERE o.run_id = ? GROUP BY agent",
                             (run_id,)).fetchall())
    assert set(agents) == {"researcher", "writer", "critic", "executor"}
    assert sum(agents.values()) == len(requests)


def test_cached_input_reaches_the_call_rows_and_is_billed_at_the_cached_price(project, cli):
    """The fake server serves shared prompt prefixes from its cache (as OpenAI does, from 1,024
    tokens, in 128-token steps); each call's cached count reaches its ledger row and its cost."""
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text().replace(
        "pricing:\n", "pricing:\n  fake-model: {input_per_million: 2, cached_input_per_million: 1, "
        "output_per_million: 8}\n"))
    with FakeOpenAI() as server:
        env = {"OPENAI_API_KEY": "sk-test-aaaaaaaa", "OPENAI_BASE_URL": server.base_url}
        result = cli("run", "--model", "fake-model", "--limit", "6", "--concurrency", "1",
                     env=env)
        served = [r["cached_tokens"] for r in server.requests]
    assert result.exit_code == 0, result.output
    db = sqlite3.connect(project / "runs/ledger.db")
    rows = db.execute("SELECT c.prompt_tokens, c.cached_tokens, c.completion_tokens, c.cost_usd "
                      "FROM model_calls c JOIN outcomes o ON o.outcome_id = c.outcome_id "
                      "WHERE o.run_id = ? ORDER BY c.call_id", (result.stdout.strip(),)).fetchall()
    assert sorted(c for _, c, _, _ in rows) == sorted(served)
    # The prompts are static first: after the first ticket every step's prefix is cached.
    assert sum(c for _, c, _, _ in rows) > 0.4 * sum(p for p, _, _, _ in rows)
    assert all(c == 0 or (c >= 1024 and c % 128 == 0) for _, c, _, _ in rows)
    for prompt, cached, completion, cost in rows:
        assert abs(cost - ((prompt - cached) * 2 + cached * 1 + completion * 8) / 1e6) < 1e-12
    totals = db.execute("SELECT SUM(cached_tokens) FROM outcomes WHERE run_id = ?",
                        (result.stdout.strip(),)).fetchone()[0]
    assert totals == sum(served)
