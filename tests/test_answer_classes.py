"""Many tickets parsing their first answers at once: the openai SDK's classes are built first.

The SDK declares its response classes with pydantic's `defer_build`, and pydantic's lazy build
(`model_rebuild`) is not thread-safe: a thread reading a class's schema while another builds it
gets BaseModel's ("BaseModel cannot be instantiated directly", openai-python#3079). Each trial
runs in a fresh interpreter, where every class is still unbuilt, with the GIL handed over as
often as Python allows, and parses an answer through the SDK's own parser in 24 threads released
together, as a run's first wave does. Without `calls.complete_classes` 9 trials in 10 failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TRIAL = r'''
import json, sys, threading
from openai import omit
from openai._models import construct_type
from openai.types.chat import ChatCompletion
from openai.lib._parsing._completions import parse_chat_completion
from crews.calls import share_generic_cache
from crews.outputs import Verdict

share_generic_cache([Verdict])  # what CrewRunner.warm does before the first ticket
verdict = {"approved": True, "findings": [{"check": "tone", "severity": "info", "detail": "ok"}]}
answers = [
    {"role": "assistant", "content": json.dumps(verdict), "refusal": None, "tool_calls": None},
    {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "lookup_order", "arguments": "{\"order_id\": \"NW-1\"}"}}]},
]
def completion(message):
    return {"id": "x", "object": "chat.completion", "created": 1, "model": "fake-model",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": message}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
                      "prompt_tokens_details": {"cached_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0}}}
sys.setswitchinterval(1e-6)
N = 24
start = threading.Barrier(N)
errors, parsed = [], []
def ticket(n):
    share_generic_cache([Verdict])  # what CrewRunner.run does in each ticket's thread
    start.wait()
    try:
        raw = construct_type(type_=ChatCompletion, value=completion(answers[n % 2]))
        answer = parse_chat_completion(response_format=Verdict if n % 2 == 0 else omit,
                                       input_tools=omit, chat_completion=raw)
        message = answer.choices[0].message
        parsed.append(message.parsed.approved if n % 2 == 0 else message.tool_calls[0].id)
    except Exception as exc:
        errors.append(repr(exc)[:200])
threads = [threading.Thread(target=ticket, args=(n,)) for n in range(N)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"errors": errors, "parsed": parsed}))
'''


def test_first_answers_parsed_in_many_threads_at_once():
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", TRIAL], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outcome = json.loads(done.stdout.strip().splitlines()[-1])
        assert outcome["errors"] == []
        assert sorted(map(str, outcome["parsed"])) == ["True"] * 12 + ["call_1"] * 12
