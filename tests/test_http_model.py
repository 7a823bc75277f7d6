"""The real HTTP path: CrewAI's own LLM and the openai SDK against a fake server on 127.0.0.1."""

from __future__ import annotations

from fake_openai import FakeOpenAI, PrefixCache


def test_crew_completes_a_run_against_an_openai_compatible_server(project, cli, results):
    with FakeOpenAI() as server:
        env = {"OPENAI_API_KEY": "sk-test-not-a-real-key-1234", "OPENAI_BASE_URL": server.base_url}
        result = cli("run", "--model", "fake-model", "--limit", "4", env=env)
        requests = list(server.requests)
    assert result.exit_code == 0, result.output
    rows = results(project / "runs" / result.stdout.strip() / "results.csv")
    assert [r["status"] for r in rows] == ["approved", "needs_human", "approved", "approved"]
    assert all(r["model"] == "fake-model" for r in rows)
    assert all(int(r["prompt_tokens"]) > 0 and int(r["completion_tokens"]) > 0 for r in rows)
    bodies = [r["body"] for r in requests]
    assert all(r["path"] == "/v1/chat/completions" for r in requests)
    assert all(b["model"] == "fake-model" for b in bodies)
    assert any(t["function"]["name"] == "lookup_order" for b in bodies for t in b.get("tools", []))
    schemas = {b["response_format"]["json_schema"]["name"] for b in bodies
               if b.get("response_format")}
    assert schemas == {"Draft", "Verdict"}
    assert requests[0]["headers"].get("Authorization") == "Bearer sk-test-not-a-real-key-1234"
    # The key never reaches the ledger or the sheet.
    assert b"sk-test-not-a-real-key" not in (project / "runs" / "ledger.db").read_bytes()
    sheet = (project / "runs" / result.stdout.strip() / "results.csv").read_bytes()
    assert b"sk-test-not-a-real-key" not in sheet


def fast_retries(project):
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text().replace("base_delay_s: 1", "base_delay_s: 0.01"))


def test_transient_errors_are_retried_within_the_bound(project, cli, results, tmp_path):
    import shutil

    from fake_openai import Faults

    fast_retries(project)
    env = {"OPENAI_API_KEY": "sk-test-key-abcdef"}
    # The clean baseline runs in a copy of the project: in the same ledger the second run's
    # refund would be refused (the order was refunded already), which changes its requests.
    twin = tmp_path / "twin"
    shutil.copytree(project, twin)
    with FakeOpenAI() as server:
        clean = cli("--root", str(twin), "run", "--model", "fake-model", "--limit", "2",
                    "--concurrency", "1", env={**env, "OPENAI_BASE_URL": server.base_url})
        baseline = len(server.requests)
    assert clean.exit_code == 0
    with FakeOpenAI(Faults(errors=[429, 500, 503], retry_after_s=0)) as server:
        result = cli("run", "--model", "fake-model", "--limit", "2", "--concurrency", "1",
                     env={**env, "OPENAI_BASE_URL": server.base_url})
        calls = len(server.requests)
    assert result.exit_code == 0, result.output
    rows = results(project / "runs" / result.stdout.strip() / "results.csv")
    assert [r["status"] for r in rows] == ["approved", "needs_human"]
    assert calls == baseline + 3  # each failed request retried once, nothing amplified


def test_a_call_that_keeps_failing_fails_its_ticket_and_the_batch_goes_on(project, cli, results):
    from fake_openai import Faults

    fast_retries(project)
    with FakeOpenAI(Faults(errors=[500] * 4)) as server:
        env = {"OPENAI_API_KEY": "sk-test-key-abcdef", "OPENAI_BASE_URL": server.base_url}
        result = cli("run", "--model", "fake-model", "--limit", "3", "--concurrency", "1",
                     env=env)
        failing = [r for r in server.requests[:4]]
    assert result.exit_code == 1, result.output
    rows = results(project / "runs" / result.stdout.strip() / "results.csv")
    assert [r["status"] for r in rows] == ["failed", "needs_human", "approved"]
    assert rows[0]["error"] == ("ModelCallFailed: model call failed after 4 attempts: HTTP 500 "
                                "(InternalServerError)")
    assert len(failing) == 4 and all(r["path"] == "/v1/chat/completions" for r in failing)


def test_malformed_answers_and_hung_calls_are_bounded(project, cli, results):
    from fake_openai import Faults

    fast_retries(project)
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text().replace("timeout_s: 60", "timeout_s: 1"))
    env = {"OPENAI_API_KEY": "sk-test-key-abcdef"}
    # The first call hangs past the 1 s timeout: it is retried and the ticket completes.
    with FakeOpenAI(Faults(hang_s=3)) as server:
        result = cli("run", "--model", "fake-model", "--limit", "1", "--concurrency", "1",
                     env={**env, "OPENAI_BASE_URL": server.base_url})
    assert result.exit_code == 0, result.output
    assert results(project / "runs" / result.stdout.strip() / "results.csv")[0]["status"] \
        == "approved"
    with FakeOpenAI() as server:
        server.faults.malformed = 50  # every answer broken: the ticket fails, bounded
        result = cli("run", "--model", "fake-model", "--limit", "1", "--concurrency", "1",
                     "--reprocess", env={**env, "OPENAI_BASE_URL": server.base_url})
        requests = len(server.requests)
    rows = results(project / "runs" / result.stdout.strip() / "results.csv")
    assert result.exit_code == 1 and rows[0]["status"] == "failed", rows[0]
    # research (1 call) + the draft and its one repair attempt; then the ticket fails.
    assert requests == 3, requests
    assert rows[0]["error"].startswith("ModelCallFailed: malformed structured answer after 2 "
                                       "attempt(s): ValidationError")


def _body(static: str, ticket: str, tools=None) -> dict:
    return {"model": "m", "tools": tools, "messages": [
        {"role": "system", "content": static}, {"role": "user", "content": ticket}]}


def test_the_fake_servers_prompt_cache_serves_the_longest_recent_prefix_in_128_token_steps():
    cache = PrefixCache()
    static = "rules " * 1000  # 6,000 characters: 1,500 tokens of 4 characters
    assert cache.serve(_body(static, "ticket one")) == 0  # nothing seen yet
    # Shared: "<|system|>" + 6,000 characters = 6,010 characters: 11 whole 128-token blocks.
    assert cache.serve(_body(static, "ticket two")) == 11 * 128
    assert cache.serve(_body(static, "ticket two")) == 11 * 128  # the last partial block is not
    # Other tools open the prompt: nothing is shared.
    assert cache.serve(_body(static, "ticket two", tools=[{"name": "x"}])) == 0
    # A shared prefix below 1,024 tokens is not served from the cache.
    short = "rules " * 600  # 3,600 characters: 7 blocks
    cache.serve(_body(short, "a"))
    assert cache.serve(_body(short, "b")) == 0


def test_the_connection_pool_is_sized_to_the_tickets_in_flight(project, monkeypatch):
    import os
    import threading

    import httpx

    from crews import framework
    from crews.settings import load_config

    framework.prepare(project / "runs" / ".crewai")
    from crews.crew import CrewRunner
    from crews.knowledge import KnowledgeBase, Orders
    from crews.llms import build_llms, close_clients, size_pools

    config = load_config(project)
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-pool", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    llms = build_llms(config, "fake-model", env)
    runner = CrewRunner(config, llms, KnowledgeBase(config.knowledge_dir),
                        Orders(config.orders_file), 2)
    runner.warm(40)
    # 40 keep-alive connections (+16 headroom) in two pools of at most 32, threads dealt over them.
    sharded = llms["writer"].inner._get_sync_client()._client._transport
    pools = [p._pool for p in sharded.pools]
    assert [p._max_keepalive_connections for p in pools] == [20, 20]
    assert [p._max_connections for p in pools] == [28, 28]
    with FakeOpenAI() as server:
        def ask() -> None:
            request = httpx.Request("POST", f"{server.base_url}/chat/completions", json={
                "model": "fake-model", "messages": [{"role": "user", "content": "hello"}]})
            response = sharded.handle_request(request)
            response.read()
            assert response.status_code == 200

        for _ in range(3):  # one after another: the first and third thread share a pool
            thread = threading.Thread(target=ask)
            thread.start()
            thread.join()
    assert [len(p.connections) for p in pools] == [1, 1]
    runner.close()
    # With a proxy in the environment, httpx applies it to its own single pool only.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    proxied = build_llms(config, "fake-model", env)
    size_pools(proxied.values(), 40)
    pool = proxied["writer"].inner._get_sync_client()._client._transport._pool
    assert pool._max_keepalive_connections == 40 and pool._max_connections == 56
    close_clients(proxied.values())
