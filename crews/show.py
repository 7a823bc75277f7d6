"""Plain-text views of the ledger for `crewbatch runs` and `crewbatch show`.

Tables and trails are data, so they go to stdout; each view has a JSON twin for scripts. The
tables are formatted here, not by rich: piped (80 columns unless told otherwise), a rich table of
two runs cut the run ids to `2026120…` and wrapped COUNTS over six lines (13 lines for 2 runs);
given a width wide enough not to, it prints these same padded columns. A rich layout for
terminals only would be a second layout that no test (CliRunner is not a terminal) reads.
"""

from __future__ import annotations

import json
import textwrap
from typing import TYPE_CHECKING

from .export import describe_actions

if TYPE_CHECKING:
    from .ledger import Outcome, Run


def runs_table(runs: list[Run]) -> str:
    if not runs:
        return "no runs yet; start one with `crewbatch run`"
    header = f"{'RUN_ID':<22} {'STATUS':<11} {'EXIT':>4} {'RECORDS':>7}  {'COUNTS':<58} " \
             f"{'COST_USD':>9} {'SECONDS':>8}  MODEL"
    lines = [header]
    for r in runs:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(r.counts.items()))
        lines.append(f"{r.run_id:<22} {r.status:<11} {_s(r.exit_code):>4} "
                     f"{r.records:>7}  {counts:<58} {r.cost_usd:>9.4f} "
                     f"{_duration(r):>8}  {r.model}"
                     + (f"  (replay of {r.replay_of})" if r.replay_of else ""))
    return "\n".join(lines)


def _s(value) -> str:
    return "" if value is None else str(value)


def _duration(run: Run) -> str:
    from datetime import datetime

    if not run.finished_utc:
        return ""
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    seconds = (datetime.strptime(run.finished_utc, fmt) -
               datetime.strptime(run.started_utc, fmt)).total_seconds()
    return f"{seconds:.1f}"


def run_table(run: Run, outcomes: list[Outcome]) -> str:
    replay = f", replay of {run.replay_of}" if run.replay_of else ""
    lines = [f"run {run.run_id} ({run.status}, model {run.model}, "
             f"started {run.started_utc}{replay})",
             f"{'TICKET_ID':<16} {'STATUS':<12} {'CATEGORY':<13} {'PRIORITY':<8} {'REV':>3}  "
             "REASON / SUBJECT"]
    for o in outcomes:
        why = o.needs_human_reason or o.error or o.reason or o.subject or ""
        lines.append(f"{o.ticket_id[:16]:<16} {o.status:<12} {o.category:<13} "
                     f"{o.priority:<8} {o.revisions:>3}  {cut(why, 90)}")
    return "\n".join(lines)


def batches_text(summary) -> str:
    """A --batch-api run's batches under its tickets (`report.data.Batches`): the totals, the
    money saved against live prices, then one line per batch."""
    states = ", ".join(f"{n} {state}" for state, n in summary.states)
    waits = "" if summary.wait_p50_s is None else \
        f", wait p50 {summary.wait_p50_s:.1f} s, max {summary.wait_max_s:.1f} s"
    money = f"${summary.cost:.4f} at batch prices"
    if summary.saved is not None:
        share = f" ({100 * summary.saved / summary.live_cost:.0f} %)" if summary.live_cost else ""
        money += f", ${summary.live_cost:.4f} live: saved ${summary.saved:.4f}{share}"
    lines = ["", f"batches: {len(summary.rows)} ({states}), {summary.requests} requests{waits}; "
                 f"{money}",
             f"{'BATCH':>5} {'PROVIDER_ID':<38} {'STATE':<10} {'REQUESTS':>8} {'WAIT_S':>7}  "
             "SUBMITTED / DETAIL"]
    for b in summary.rows:
        wait = "" if b["wait_s"] is None else f"{b['wait_s']:.1f}"
        lines.append(f"{b['batch_no']:>5} {b['batch_id'] or '-':<38} "
                     f"{b['state']:<10} {b['requests']:>8} {wait:>7}  "
                     f"{b['submitted_utc'] or ''} {cut(b['detail'], 60)}".rstrip())
    return "\n".join(lines)


def cut(text: object, chars: int) -> str:
    """`text` on one line (runs of whitespace as one space), cut to `chars` with "…" if longer:
    how every view shows a subject, a reason or a label in a column."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= chars else flat[: max(1, chars - 1)] + "…"


def trail_text(trail: dict) -> str:
    o = trail["outcome"]
    t = trail["ticket"] or {}
    out = [f"ticket {o.ticket_id} in run {o.run_id}: {o.status}",
           f"source: {o.source}   key: {o.ticket_key or '-'}   model: {o.model or '-'}"]
    if t:
        out += [f"from: {t['customer_name']} <{t['customer']}>   received: {t['received_at']}",
                f"subject: {t['subject']}", "", _indent(t["body"])]
    for label, value in (("reason", o.reason), ("needs human", o.needs_human_reason),
                         ("error", o.error)):
        if value:
            out.append(f"{label}: {value}")
    out.append(f"tokens: {o.prompt_tokens} prompt + {o.completion_tokens} completion; "
               f"cost ${o.cost_usd:.4f}; {o.duration_ms} ms; revisions: {o.revisions}")
    for s in trail["steps"]:
        out += ["", f"── round {s.round} · {s.step} · {s.agent} ({s.model}, "
                    f"{s.duration_ms} ms, {s.prompt_tokens}+{s.completion_tokens} tokens)"]
        body = s.output_text
        if s.output_json and s.step in ("draft", "review"):
            body = json.dumps(s.output, ensure_ascii=False, indent=2)
        out.append(_indent(body))
        if s.output_json and s.step == "research":
            out += _searches(s.output.get("knowledge_searches", []))
    if trail["actions"]:
        out += ["", "── actions"]
        out.append(_indent(describe_actions(json.dumps([
            {"kind": a["kind"], "args": json.loads(a["args_json"]), "decision": a["decision"],
             "reason": a["reason"]} for a in trail["actions"]]))))
    if trail.get("batch_requests"):
        out += ["", "── Batch API requests"]
        for r in trail["batch_requests"]:
            answer = "waiting" if r["status_code"] is None else \
                "not answered" if r["status_code"] == 0 else f"HTTP {r['status_code']}"
            out.append(f"  {r['custom_id']}  batch {r['batch_no']} ({r['batch_id'] or '-'}, "
                       f"{r['state']}): {answer}")
    out += ["", "── events"]
    for e in trail["events"]:
        out.append(f"  {e['at_utc']}  {e['from_status'] or '(new)':>11} → {e['to_status']:<11} "
                   f"{e['detail']}")
    return "\n".join(out)


def _searches(searches: list[dict]) -> list[str]:
    """The research step's evidence: each knowledge search and the sections it found, with
    their scores, the rankings behind them and their source file."""
    out = []
    for search in searches:
        cost = f", {search['embedding_tokens']} embedding tokens" \
            if search.get("embedding_tokens") else ""
        out.append(f"  knowledge search ({search['method']}{cost}): "
                   f"{cut(search['query'], 70)!r}")
        if search.get("embedding_error"):
            out.append(f"    embedding failed, BM25 only: {search['embedding_error']}")
        for n, hit in enumerate(search["sections"], 1):
            ranks = ", ".join(f"{name} #{rank} {score:g}"
                              for name, (rank, score) in hit.get("ranks", {}).items())
            agents = "  (agents only)" if hit.get("audience") == "agents" else ""
            out.append(f"    {n}. {hit['score']:.4f}  {hit['source']}: {hit['title']}  "
                       f"[{ranks}]{agents}")
        if not search["sections"]:
            out.append("    no section matched")
    return out


def _indent(text: str) -> str:
    return textwrap.indent(text or "(empty)", "  ")
