"""What a recorded request's hash covers, how answers round-trip, and how little is stored."""

from __future__ import annotations

import json
import sqlite3
from types import SimpleNamespace

import pytest
from pydantic import BaseModel

from crews.recording import (
    Recorded,
    RecordedCall,
    Request,
    Tape,
    answer_of,
    chunks,
    describe_change,
    message_from_blob,
    response_of,
)


class Verdict(BaseModel):
    approved: bool
    summary: str = ""


class Draft(BaseModel):
    reply: str


LLM = SimpleNamespace(model="fake-model", temperature=0.2, api_key="sk-secret-never-hashed",
                      base_url="http://127.0.0.1:1/v1")
MESSAGES = [{"role": "system", "content": "You are Support Critic."},
            {"role": "user", "content": "Review this draft.\n\n<ticket>\n{\"id\": 1}\n</ticket>\n"
                                        "\nPolicy:\nRefunds up to 50."}]
TOOLS = [{"type": "function", "function": {"name": "lookup_order", "parameters": {}}}]


def test_the_hash_covers_model_sampling_messages_tools_and_format_and_nothing_else():
    base = Request.describe(LLM, MESSAGES, TOOLS, Verdict)
    assert base.hash == Request.describe(LLM, [dict(m) for m in MESSAGES], list(TOOLS),
                                         Verdict).hash
    variants = {
        "model": Request.describe(SimpleNamespace(**{**vars(LLM), "model": "gpt-4o-mini"}),
                                  MESSAGES, TOOLS, Verdict),
        "sampling": Request.describe(SimpleNamespace(**{**vars(LLM), "temperature": 0.7}),
                                     MESSAGES, TOOLS, Verdict),
        "system prompt": Request.describe(LLM, [{**MESSAGES[0], "content": "You are X."},
                                                MESSAGES[1]], TOOLS, Verdict),
        "user message": Request.describe(LLM, [MESSAGES[0], {**MESSAGES[1], "content": "Hi"}],
                                         TOOLS, Verdict),
        "tools": Request.describe(LLM, MESSAGES, None, Verdict),
        "response format": Request.describe(LLM, MESSAGES, TOOLS, Draft),
    }
    assert len({base.hash} | {v.hash for v in variants.values()}) == 7
    for part, request in variants.items():
        assert describe_change(base.parts, request, lambda h: None).startswith(
            part if part not in ("model", "sampling") else
            {"model": "model (fake-model → gpt-4o-mini)",
             "sampling": "sampling parameters (temperature 0.2 → 0.7)"}[part]), part
    # The key and the endpoint are not part of what determines an answer, and never stored.
    other = SimpleNamespace(**{**vars(LLM), "api_key": "sk-other", "base_url": "http://x/v1"})
    assert Request.describe(other, MESSAGES, TOOLS, Verdict).hash == base.hash
    assert not any(b"sk-secret" in blob for blob in base.blobs("full").values())


def test_a_changed_message_is_described_with_its_first_changed_words():
    old = Request.describe(LLM, MESSAGES)
    new = Request.describe(LLM, [MESSAGES[0], {**MESSAGES[1], "content": MESSAGES[1]["content"]
                                               .replace("Review", "Check carefully")}])
    blobs = old.blobs("full")

    def message(h):
        return message_from_blob(blobs[h], blobs.get)
    assert describe_change(old.parts, new, message) == (
        "user message (recorded “Review this draft. <ticket>…”, now “Check carefully this "
        "draft. <ticket>…”)")


def test_chunks_split_at_data_blocks_and_join_back():
    text = "Intro\n<ticket>\n{\"a\": 1}\n</ticket>\nmiddle\n<draft>\n{}\n</draft>"
    assert chunks(text) == ["Intro\n", "<ticket>\n", "{\"a\": 1}", "\n</ticket>", "\nmiddle\n",
                            "<draft>\n", "{}", "\n</draft>"]
    for sample in (text, "", "no blocks", "<ticket>\nx\n</ticket>"):
        assert "".join(chunks(sample)) == sample
    request = Request.describe(LLM, [{"role": "user", "content": text}])
    blobs = request.blobs("full")
    (_, h), = request.parts["messages"]
    assert message_from_blob(blobs[h], blobs.get) == {"role": "user", "content": text}
    assert set(request.blobs("responses")) == {request.hash}
    assert request.blobs("off") == {}


def test_answers_come_back_as_the_objects_the_live_model_returned():
    from openai.types.chat import ChatCompletionMessageFunctionToolCall

    call = ChatCompletionMessageFunctionToolCall.model_validate(
        {"id": "call_1", "type": "function",
         "function": {"name": "carry_out_actions", "arguments": "{\"actions\": []}"}})
    plain = {"id": "call_2", "type": "function",
             "function": {"name": "lookup_order", "arguments": "{}"}}
    for answer, model in (("plain text", None), (Verdict(approved=True, summary="ok"), Verdict),
                          ([call], None), ([plain], None)):
        stored = json.loads(json.dumps(response_of(answer, {"prompt_tokens": 3})))
        back = answer_of(stored, model)
        assert back == answer and type(back) is type(answer)
        if isinstance(answer, list):
            assert type(back[0]) is type(answer[0])
    assert stored["usage"] == {"prompt_tokens": 3}


def test_a_tape_answers_repeats_in_order_and_explains_what_it_lacks():
    request = Request.describe(LLM, MESSAGES, None, Verdict)
    calls = [RecordedCall(1, "0:review", request.hash, "r1", request.parts, {"type": "text",
                                                                             "content": "first"}),
             RecordedCall(2, "1:review", request.hash, "r2", request.parts, {"type": "text",
                                                                             "content": "second"})]
    tape = Tape("full", Recorded(calls, "run R"), strict=True)
    answers = [tape.lookup(tape.start("0:review", request)).response["content"] for _ in range(3)]
    assert answers == ["first", "second", "second"]
    changed = Request.describe(LLM, MESSAGES, None, Draft)
    tape = Tape("full", Recorded(calls, "run R"), strict=True)
    assert tape.explain(tape.start("0:review", changed)) == (
        "request changed at step review: response format")
    assert tape.explain(tape.start("2:review", changed)) == (
        "request changed at step review: the recording has no request 1 for this step in round "
        "2 (it made 0)")
    assert Tape("full", Recorded([], "run R")).explain(tape.start("0:draft", changed)) == (
        "request changed at step draft: nothing was recorded for this ticket in run R (it ran "
        "with `recording: off`, or made no model request)")


@pytest.mark.parametrize("mode", ["full", "responses", "off"])
def test_recording_modes_store_what_they_say(project, cli, mode):
    settings = project / "config/settings.yaml"
    settings.write_text(settings.read_text().replace("recording: full", f"recording: {mode}"))
    result = cli("run", "--offline", "--limit", "6")
    assert result.exit_code == 0, result.output
    db = sqlite3.connect(project / "runs/ledger.db")
    calls = db.execute("SELECT request_hash, response_hash FROM model_calls").fetchall()
    blobs = dict(db.execute("SELECT blob_hash, size_bytes FROM blobs").fetchall())
    if mode == "off":
        assert calls and all(c == ("", "") for c in calls) and not blobs
        return
    assert all(r in blobs and s in blobs for r, s in calls)
    if mode == "responses":  # each request's manifest and its response, nothing else
        assert len(blobs) == len({r for r, _ in calls}) + len({s for _, s in calls})
        return
    # Content-addressed: a second run of the same tickets adds no request or response content.
    before = len(blobs)
    again = cli("run", "--offline", "--limit", "6", "--reprocess")
    assert again.exit_code == 0
    after = db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0]
    assert after - before <= 6 * 4  # at most the responses (their tool-call ids are new)
