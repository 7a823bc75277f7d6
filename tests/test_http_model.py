"""The real HTTP path: CrewAI's own LLM and the openai SDK against a fake server on 127.0.0.1."""

from __future__ import annotations

from fake_openai import FakeOpenAI


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


def test_server_errors_fail_the_ticket_and_the_batch_goes_on(project, cli, results):
    from fake_openai import Faults

    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text().replace("max_retries: 2", "max_retries: 0"))
    with FakeOpenAI(Faults(errors=[500])) as server:
        env = {"OPENAI_API_KEY": "sk-test-key-abcdef", "OPENAI_BASE_URL": server.base_url}
        result = cli("run", "--model", "fake-model", "--limit", "3", "--concurrency", "1",
                     env=env)
    assert result.exit_code == 1, result.output
    rows = results(project / "runs" / result.stdout.strip() / "results.csv")
    statuses = [r["status"] for r in rows]
    assert statuses[0] == "failed" and "500" in rows[0]["error"]
    assert statuses[1:] == ["needs_human", "approved"]
