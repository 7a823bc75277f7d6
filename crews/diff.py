"""`crewbatch diff`: what changed, ticket by ticket, between two runs — and whether any outcome did.

Tickets are matched by ticket key (a key that occurs twice in one run pairs by order). A ticket's
outcome is its status, category, priority, actions (each with what became of it: performed,
refused, not_run, proposed), the gate's findings (the checks of its last round), the critic's
verdict and the reply; a difference in any of them is a change, and `diff` exits 1. Tokens, cost
and time are shown side by side but never count: a replay answered from its recording costs
nothing by design. The HTML page is self-contained like the run report and uses its styles and
escaping (ticket text and model output are hostile); the CSV opens in a spreadsheet like
results.csv (UTF-8 with BOM, one row per ticket, formula-like cells neutralised).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from . import files

if TYPE_CHECKING:
    from .ledger import Outcome, Run

CONTEXT_WORDS = 6  # words of unchanged reply text kept around each change
LIST_LIMIT = 2000  # changed tickets listed on the HTML page


@dataclass(frozen=True)
class Facets:
    """What `diff` compares of one outcome (a row of `Ledger.outcomes`, or the fields a
    cassette replay computes), plus the usage it only reports."""

    ticket_id: str
    status: str
    category: str = ""
    priority: str = ""
    verdict: str = ""
    reply: str = ""
    actions: tuple[tuple[str, str, str], ...] = ()   # (action, decision, reason)
    findings: tuple[str, ...] = ()                   # "[severity] check", sorted
    tokens: int = 0
    cost_usd: float = 0.0
    duration_ms: int = 0


def _json(text, default):
    if not isinstance(text, str):
        return text if text is not None else default
    try:
        return json.loads(text) if text else default
    except json.JSONDecodeError:
        return default


def action_label(action: dict) -> str:
    args = ", ".join(f"{k}={v}" for k, v in sorted((action.get("args") or {}).items()))
    return f"{action.get('kind', '?')}({args})"


def facets(outcome: Mapping, checks) -> Facets:
    """An outcome's facets, from its columns by name (an `Outcome`'s `vars()`, a cassette's
    stored outcome, or the columns a replay computes); `checks` is the output_json of its last
    `checks` step (or the list)."""
    actions = tuple(sorted((action_label(a), str(a.get("decision", "")), str(a.get("reason", "")))
                           for a in _json(outcome.get("actions_json"), []) if isinstance(a, dict)))
    found = sorted({f"[{f.get('severity', 'info')}] {f.get('check', 'unnamed')}"
                    for f in _json(checks, []) if isinstance(f, dict)})
    return Facets(
        ticket_id=str(outcome.get("ticket_id") or ""), status=str(outcome.get("status") or ""),
        category=outcome.get("category") or "", priority=outcome.get("priority") or "",
        verdict=outcome.get("critic_verdict") or "", reply=outcome.get("draft_reply") or "",
        actions=actions, findings=tuple(found),
        tokens=int(outcome.get("prompt_tokens") or 0) + int(outcome.get("completion_tokens") or 0),
        cost_usd=float(outcome.get("cost_usd") or 0), duration_ms=int(outcome.get("duration_ms")
                                                                      or 0))


@dataclass
class Change:
    facet: str
    before: str
    after: str
    lines: list[str] = field(default_factory=list)

    def text(self) -> str:
        if self.facet == "reply":
            return "reply: " + reply_diff_text(self.before, self.after)
        if self.lines:
            return f"{self.facet}: " + "; ".join(self.lines)
        return f"{self.facet}: {self.before or '(none)'} → {self.after or '(none)'}"


def compare(a: Facets | None, b: Facets | None) -> list[Change]:
    """The outcome changes from `a` to `b` (an absent side is a change of its own)."""
    if a is None or b is None:
        return [Change("presence", "present" if a else "absent", "present" if b else "absent")]
    changes = [Change(name, getattr(a, attr), getattr(b, attr)) for name, attr in (
        ("status", "status"), ("category", "category"), ("priority", "priority"))
        if getattr(a, attr) != getattr(b, attr)]
    before = {label: (decision, reason) for label, decision, reason in a.actions}
    after = {label: (decision, reason) for label, decision, reason in b.actions}
    lines = [f"+ {label}: {after[label][0]}" for label in after if label not in before]
    lines += [f"- {label}: {before[label][0]}" for label in before if label not in after]
    for label in before.keys() & after.keys():
        (d1, _), (d2, r2) = before[label], after[label]
        if d1 != d2:
            lines.append(f"{label}: {d1} → {d2}" + (f" ({r2})" if d2 == "refused" and r2 else ""))
    if lines:
        changes.append(Change("actions", "", "", sorted(lines, key=lambda x: x.lstrip("+- "))))
    found = [f"+ {f}" for f in b.findings if f not in a.findings] + \
        [f"- {f}" for f in a.findings if f not in b.findings]
    if found:
        changes.append(Change("findings", "", "", found))
    if a.verdict != b.verdict:
        changes.append(Change("verdict", a.verdict, b.verdict))
    if a.reply != b.reply:
        changes.append(Change("reply", a.reply, b.reply))
    return changes


def word_diff(a: str, b: str) -> list[tuple[str, str]]:
    """`a` → `b` word by word: ("=", words), ("-", removed words), ("+", added words)."""
    wa, wb = a.split(), b.split()
    out: list[tuple[str, str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, wa, wb, autojunk=False).get_opcodes():
        if tag == "equal":
            out.append(("=", " ".join(wa[i1:i2])))
            continue
        if i2 > i1:
            out.append(("-", " ".join(wa[i1:i2])))
        if j2 > j1:
            out.append(("+", " ".join(wb[j1:j2])))
    return out


def _elide(ops: list[tuple[str, str]], context: int = CONTEXT_WORDS) -> list[tuple[str, str]]:
    """Long unchanged stretches cut to `context` words next to each change."""
    out = []
    for i, (op, text) in enumerate(ops):
        words = text.split()
        if op != "=" or len(words) <= 2 * context:
            out.append((op, text))
            continue
        head = words[:context] if i > 0 else []
        tail = words[-context:] if i < len(ops) - 1 else []
        out.append(("=", " ".join(head + ["…"] + tail)))
    return out


def reply_diff_text(a: str, b: str) -> str:
    """A word diff for a terminal or a cell: [-removed-] {+added+}, unchanged text shortened."""
    marks = {"=": "{}", "-": "[-{}-]", "+": "{{+{}+}}"}
    return " ".join(marks[op].format(text) for op, text in _elide(word_diff(a, b)))


# --- two runs --------------------------------------------------------------------------------------


@dataclass
class TicketDiff:
    key: str
    a: Facets | None
    b: Facets | None
    changes: list[Change]

    @property
    def ticket_id(self) -> str:
        return (self.a or self.b).ticket_id

    @property
    def headline(self) -> str:
        """How the summary counts this ticket: its status move, else what changed first."""
        if not self.changes:
            return "unchanged"
        first = self.changes[0]
        if first.facet == "presence":
            return "only in the first run" if self.b is None else "only in the second run"
        if first.facet == "status":
            return f"{first.before} → {first.after}"
        return f"{first.facet} changed"


@dataclass
class RunDiff:
    run_a: Run
    run_b: Run
    tickets: list[TicketDiff]
    seconds: float = 0.0

    @property
    def changed(self) -> list[TicketDiff]:
        return [t for t in self.tickets if t.changes]

    def summary(self) -> str:
        """"14 of 640 tickets changed: 9 approved → needs_human, 3 reply changed, …"."""
        counts = Counter(t.headline for t in self.changed)
        head = f"{len(self.changed)} of {len(self.tickets)} tickets changed"
        if not counts:
            return head
        return head + ": " + ", ".join(f"{n} {label}" for label, n in
                                       sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def totals(self, side: str) -> tuple[int, float, int]:
        rows = [getattr(t, side) for t in self.tickets if getattr(t, side) is not None]
        return (sum(r.tokens for r in rows), sum(r.cost_usd for r in rows),
                sum(r.duration_ms for r in rows))

    def usage_line(self) -> str:
        (ta, ca, ma), (tb, cb, mb) = self.totals("a"), self.totals("b")
        return (f"tokens {ta:,} → {tb:,}; cost ${ca:.4f} → ${cb:.4f}; ticket time "
                f"{ma / 1000:.1f}s → {mb / 1000:.1f}s (reported, not counted as changes)")


def _by_key(outcomes: list[Outcome], checks: dict[int, str]) -> dict[str, Facets]:
    out: dict[str, Facets] = {}
    seen: Counter = Counter()
    for o in outcomes:
        base = o.ticket_key or f"{o.source}:{o.ticket_id}"
        seen[base] += 1
        key = base if seen[base] == 1 else f"{base}#{seen[base]}"
        out[key] = facets(vars(o), checks.get(o.outcome_id))
    return out


def _last_checks(ledger, run_id: str) -> dict[int, str]:
    last: dict[int, str] = {}
    for row in ledger.step_outputs(run_id, ("checks",)):  # in step order: the last round wins
        last[row["outcome_id"]] = row["output_json"]
    return last


def diff_runs(ledger, run_a: str, run_b: str) -> RunDiff:
    """Compare two runs of the ledger, ticket by ticket (in the first run's order)."""
    import time

    started = time.monotonic()
    a = _by_key(ledger.outcomes(run_a), _last_checks(ledger, run_a))
    b = _by_key(ledger.outcomes(run_b), _last_checks(ledger, run_b))
    keys = list(a) + [k for k in b if k not in a]
    tickets = [TicketDiff(k, a.get(k), b.get(k), compare(a.get(k), b.get(k))) for k in keys]
    return RunDiff(ledger.run(run_a), ledger.run(run_b), tickets, time.monotonic() - started)


# --- rendering -------------------------------------------------------------------------------------


def render_text(d: RunDiff) -> str:
    lines = [f"diff {d.run_a.run_id} → {d.run_b.run_id}: {d.summary()}", d.usage_line()]
    for t in d.changed:
        lines.append(f"{t.ticket_id} ({t.headline})")
        for c in t.changes:
            if c.facet != "presence":
                lines.append(f"  {c.text()}")
    return "\n".join(lines)


CSV_COLUMNS = ["ticket_id", "ticket_key", "changed", "change", "status_a", "status_b",
               "category_a", "category_b", "priority_a", "priority_b", "verdict_a", "verdict_b",
               "actions_a", "actions_b", "action_changes", "findings_a", "findings_b",
               "finding_changes", "reply_diff", "reply_a", "reply_b", "tokens_a", "tokens_b",
               "cost_usd_a", "cost_usd_b", "duration_ms_a", "duration_ms_b"]


def _csv_row(t: TicketDiff) -> dict:
    from .export import neutralise

    row: dict = {"ticket_id": t.ticket_id, "ticket_key": t.key,
                 "changed": "yes" if t.changes else "no",
                 "change": "; ".join(c.text() if c.facet not in ("reply", "presence") else c.facet
                                     for c in t.changes) if t.changes else "",
                 "reply_diff": "", "action_changes": "", "finding_changes": ""}
    for side, f in (("a", t.a), ("b", t.b)):
        row.update({f"status_{side}": f.status if f else "(absent)",
                    f"category_{side}": f.category if f else "",
                    f"priority_{side}": f.priority if f else "",
                    f"verdict_{side}": f.verdict if f else "",
                    f"actions_{side}": "\n".join(f"{a}: {d}" for a, d, _ in f.actions) if f else "",
                    f"findings_{side}": "\n".join(f.findings) if f else "",
                    f"reply_{side}": f.reply if f else "",
                    f"tokens_{side}": f.tokens if f else "",
                    f"cost_usd_{side}": round(f.cost_usd, 6) if f else "",
                    f"duration_ms_{side}": f.duration_ms if f else ""})
    for c in t.changes:
        if c.facet == "reply":
            row["reply_diff"] = reply_diff_text(c.before, c.after)
        elif c.facet == "actions":
            row["action_changes"] = "\n".join(c.lines)
        elif c.facet == "findings":
            row["finding_changes"] = "\n".join(c.lines)
    return {k: neutralise(v) for k, v in row.items()}


def write_csv(d: RunDiff, path: Path) -> Path:
    """One row per ticket (changed or not), opening in a spreadsheet like results.csv."""
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    w.writeheader()
    for t in d.tickets:
        w.writerow(_csv_row(t))
    return files.write_atomically(path, out.getvalue(), encoding="utf-8-sig")


def write_html(d: RunDiff, path: Path) -> Path:
    return files.write_atomically(path, render_html(d))


def write(d: RunDiff, path: Path) -> Path:
    """The diff as .html or .csv, by suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return write_csv(d, path)
    if suffix in (".html", ".htm"):
        return write_html(d, path)
    raise ValueError(f"{path}: name the file *.html or *.csv")


def _reply_html(before: str, after: str):
    from markupsafe import Markup

    from .report import esc

    tags = {"=": "{}", "-": "<del>{}</del>", "+": "<ins>{}</ins>"}
    return Markup('<div class="wd">' + " ".join(tags[op].format(esc(text)) for op, text in
                                              _elide(word_diff(before, after))) + "</div>")


def _status_cell(t: TicketDiff):
    from markupsafe import Markup

    from .report import esc

    def pill(f: Facets | None) -> str:
        status = f.status if f else "absent"
        css = "".join(ch for ch in status.lower() if ch.isalpha() or ch == "_")
        return f'<span class="pill s-{css}">{esc(status)}</span>'
    if t.a and t.b and t.a.status == t.b.status:
        return Markup(pill(t.a))
    return Markup(f"{pill(t.a)} → {pill(t.b)}")


def _details_cell(t: TicketDiff):
    from markupsafe import Markup

    from .report import esc

    parts = []
    for c in t.changes:
        if c.facet == "presence":
            continue
        if c.facet == "reply":
            parts.append(f"<div><b>reply</b>{_reply_html(c.before, c.after)}</div>")
        elif c.lines:
            items = "".join(f'<li class="{"add" if x.startswith("+ ") else "del" if x.startswith("- ") else "chg"}">'
                            f"{esc(x)}</li>" for x in c.lines)
            parts.append(f'<div><b>{esc(c.facet)}</b><ul class="dl">{items}</ul></div>')
        elif c.facet != "status":
            parts.append(f"<div><b>{esc(c.facet)}</b> {esc(c.before or '(none)')} → "
                         f"{esc(c.after or '(none)')}</div>")
    return Markup("".join(parts) or '<span class="mute">—</span>')


def _run_meta(run: Run, label: str) -> str:
    from .report import esc

    extra = f" · replay of {run.replay_of}" if run.replay_of else ""
    return (f"<div><dt>{esc(label)}</dt><dd><code>{esc(run.run_id)}</code> · "
            f"{esc(run.status)} · {esc(run.model)}{esc(extra)}<br>"
            f"<span class=\"mute small\">started {esc(run.started_utc)}</span></dd></div>")


DIFF_CSS = """
.wd{white-space:normal;line-height:1.6;max-width:70ch}
del{background:#fbe3e3;color:#8a1f1f;text-decoration:line-through}
ins{background:#dff3e7;color:#1f6b4d;text-decoration:none}
ul.dl{margin:2px 0 6px;padding-left:16px;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;
font-size:12px}
ul.dl li.add{color:#1f6b4d}ul.dl li.del{color:#9b2c2c}ul.dl li.chg{color:#85570c}
table.changes td:first-child{white-space:nowrap}table.changes td:nth-child(2){white-space:nowrap}
"""


def render_html(d: RunDiff) -> str:
    from markupsafe import Markup

    from .report import CSS, esc, table

    a_id, b_id = d.run_a.run_id, d.run_b.run_id
    changed = d.changed
    counts = Counter(t.headline for t in changed)
    (ta, ca, _), (tb, cb, _) = d.totals("a"), d.totals("b")
    tiles = [("Tickets", f"{len(d.tickets):,}", "matched by ticket key"),
             ("Changed", f"{len(changed):,}", "an outcome differs"),
             ("Unchanged", f"{len(d.tickets) - len(changed):,}", "same outcome"),
             ("Tokens", f"{ta:,} → {tb:,}", "reported, not counted"),
             ("Cost", f"${ca:.4f} → ${cb:.4f}", "reported, not counted")]
    kpis = "".join(f'<div class="kpi"><div class="kl">{esc(k)}</div><div class="kv">{esc(v)}'
                   f'</div><div class="ks">{esc(s)}</div></div>' for k, v, s in tiles)
    summary_rows = [[label, n] for label, n in sorted(counts.items(),
                                                      key=lambda kv: (-kv[1], kv[0]))]
    summary = (table(["change", "tickets"], summary_rows, {1}, css="compact") if summary_rows
               else Markup('<p class="empty">No ticket\'s outcome changed.</p>'))
    rows = [[Markup(f'<span class="tid">{esc(t.ticket_id)}</span>'), _status_cell(t), t.headline,
             _details_cell(t)] for t in changed[:LIST_LIMIT]]
    listing = (table(["ticket", "status", "change", "what changed"], rows, css="changes")
               if rows else Markup('<p class="empty">Nothing to list.</p>'))
    if len(changed) > LIST_LIMIT:
        listing += Markup(f'<p class="note">… and {len(changed) - LIST_LIMIT:,} more; every '
                        "ticket is in the CSV (<code>crewbatch diff A B -o diff.csv</code>).</p>")
    tone = "warn" if changed else "good"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="crewbatch"><title>{esc(f"crewbatch diff {a_id} → {b_id}")}'
            f"</title><style>{CSS}{DIFF_CSS}</style></head><body><main>"
            f'<header class="top"><div><div class="eyebrow">crewbatch · diff</div>'
            f'<h1><span class="runid">{esc(a_id)}</span> <span class="mute">→</span> '
            f'<span class="runid">{esc(b_id)}</span></h1></div><div class="badges">'
            f'<span class="badge {tone}">{len(changed):,} changed</span></div></header>'
            f'<dl class="meta">{_run_meta(d.run_a, "First run")}'
            f'{_run_meta(d.run_b, "Second run")}</dl>'
            f'<section class="kpis">{kpis}</section>'
            f'<section id="summary"><h2>Summary</h2><p class="lead">{esc(d.summary())}</p>'
            f"{summary}</section>"
            f'<section id="changed"><h2>{esc(f"Changed tickets ({len(changed):,})")}</h2>'
            '<p class="lead">Status, category, priority, actions, the gate\'s findings, the '
            "critic's verdict and the reply; tokens, cost and time do not count.</p>"
            f"{listing}</section>"
            f"<footer>Generated {esc(generated)} by crewbatch. Self-contained: no network "
            "needed.</footer></main></body></html>\n")
