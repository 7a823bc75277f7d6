"""The run report: one self-contained HTML page per run, for the person who reads it in the morning.

Everything on it comes from the ledger (the run row, the outcomes, the steps' tokens and the gate's
and the critic's structured findings), so a report can be written for any run, finished or not.
It opens without a network: inline CSS, charts drawn here as inline SVG, no scripts, no fonts or
images from anywhere. Ticket text and model output are untrusted, so every value from the ledger
reaches the page through `esc` (tables escape whatever is not already `Html`).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .export import describe_actions
from .pricing import cost_usd

STATUS_ORDER = ["approved", "needs_human", "failed", "rejected", "skipped", "pending", "running"]
STATUS_COLOR = {"approved": "#2e8b66", "needs_human": "#d99a1e", "failed": "#c94a4a",
                "rejected": "#7b8794", "skipped": "#b3bcc7", "pending": "#5b8bd6",
                "running": "#8fb0e3"}
PROCESSED = ("approved", "needs_human", "failed")
SEVERITY_ORDER = ["critical", "major", "minor", "info"]
SEVERITY_COLOR = {"critical": "#a8322d", "major": "#e0703a", "minor": "#e8b83e", "info": "#9aa5b1"}
AGENT_ORDER = ["researcher", "writer", "critic", "executor", "gate"]
PROMPT_COLOR, COMPLETION_COLOR = "#4f7cc9", "#e3a04f"
OTHER_COLOR = "#7b8794"
EXIT_MEANING = {0: "every record reached a final status", 1: "some tickets failed",
                2: "it could not run", 3: "it stopped early; the rest is pending"}
RUN_TONE = {"completed": "good", "interrupted": "warn", "crashed": "bad", "running": "info"}
TABLE_LIMIT = 500  # rows of a list table (needs_human, failed, rejected) before "… and N more"
TOP_N = 10


class Html(str):
    """Markup built here, safe to put on the page as is (everything else gets escaped)."""


def esc(value: object) -> Html:
    return Html(html.escape("" if value is None else str(value), quote=True))


def write_report(ledger, run_id: str, path: Path, pricing: dict | None = None) -> Path:
    """Write the run's report as one self-contained HTML file, atomically; return its path.

    `pricing` maps a model name to USD per million input/output tokens (the `pricing` of
    settings.yaml); without it the agents' usage is shown in tokens only.
    """
    return write_atomically(path, render(collect(ledger, run_id, pricing)))


def write_atomically(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` through a temporary file in its folder, so a reader never sees a
    half-written page; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --- data ------------------------------------------------------------------------------------------


@dataclass
class Finding:
    source: str      # gate | critic
    check: str
    severity: str
    detail: str
    ticket_id: str


@dataclass
class ReportData:
    run: dict
    outcomes: list[dict]
    usage: list[dict]
    findings: list[Finding]
    verdicts: Counter
    pricing: dict | None
    ledger_path: str
    generated_utc: str
    searches: list[dict] = field(default_factory=list)  # research steps' knowledge searches


def collect(ledger, run_id: str, pricing: dict | None = None) -> ReportData:
    run = ledger.run(run_id)
    if run is None:
        raise LookupError(f"no run `{run_id}` in the ledger; `crewbatch runs` lists the runs")
    findings: list[Finding] = []
    verdicts: Counter = Counter()
    for row in ledger.step_outputs(run_id, ("checks", "review")):
        output = _json(row["output_json"])
        if row["step"] == "checks":
            items, source = output if isinstance(output, list) else [], "gate"
        else:
            if not isinstance(output, dict):
                continue
            verdicts["approved" if output.get("approved") else "sent back"] += 1
            items, source = output.get("findings") or [], "critic"
        for f in items:
            if isinstance(f, dict):
                findings.append(Finding(source, str(f.get("check") or "unnamed"),
                                        str(f.get("severity") or "info"),
                                        str(f.get("detail") or ""), row["ticket_id"]))
    searches = []
    for row in ledger.step_outputs(run_id, ("research",)):
        output = _json(row["output_json"])
        if isinstance(output, dict):
            searches += [{**x, "ticket_id": row["ticket_id"]}
                         for x in output.get("knowledge_searches") or [] if isinstance(x, dict)]
    return ReportData(run, ledger.outcomes(run_id), ledger.step_usage(run_id), findings, verdicts,
                      pricing, getattr(ledger, "location", ""),
                      datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), searches)


def _json(text: str):
    try:
        return json.loads(text) if text else None
    except (json.JSONDecodeError, TypeError):
        return None


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    data = sorted(values)
    k = (len(data) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


# --- formatting ------------------------------------------------------------------------------------


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _compact(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{value:,.0f}"


def _usd(value: float | None) -> str:
    if value is None:
        return "—"
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1000:
        return f"{value:.0f} ms"
    if value < 60_000:
        return f"{value / 1000:.1f} s"
    minutes, seconds = divmod(round(value / 1000), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "—"


def _when(utc: str | None) -> str:
    if not utc:
        return "—"
    return utc.replace("T", " ").split(".")[0].rstrip("Z") + " UTC"


def _seconds_between(start: str | None, end: str | None) -> float | None:
    try:
        fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
        return (datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds()
    except (TypeError, ValueError):
        return None


def _css_name(value: str) -> str:
    return re.sub(r"[^a-z_]", "", value.lower())


def _cut(text: str, chars: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= chars else flat[: max(1, chars - 1)] + "…"


def _pill(status: str) -> Html:
    return Html(f'<span class="pill s-{_css_name(status)}">{esc(status)}</span>')


# --- charts (inline SVG) ---------------------------------------------------------------------------

CHAR_W = 6.7  # average width of a 12px sans-serif character, for laying out labels


def _nice_step(span: float, target: int, integer: bool = False) -> float:
    if span <= 0:
        return 1
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in ((1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)):
        if m * mag >= raw:
            step = m * mag
            return max(1, round(step)) if integer else step
    return 10 * mag


def _empty(text: str) -> Html:
    return Html(f'<p class="empty">{esc(text)}</p>')


def _legend(items: list[tuple[str, str]], x: float, y: float) -> str:
    parts = []
    for name, color in items:
        parts.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" rx="2" '
                     f'fill="{color}"/><text x="{x + 15:.1f}" y="{y:.1f}" class="lg">{esc(name)}'
                     "</text>")
        x += 15 + len(name) * CHAR_W + 18
    return "".join(parts)


def hbar_chart(rows: list[tuple[str, list[tuple[str, float, str]]]], label: str,
               fmt=_n, legend: list[tuple[str, str]] | None = None, width: int = 600,
               labels_above: bool = False) -> Html:
    """Horizontal bars, one per row; each row is (label, [(segment, value, colour)...]).

    Labels sit left of the bars, or above them (`labels_above`) when they are sentences.
    """
    totals = [sum(v for _, v, _ in segs) for _, segs in rows]
    if not rows or max(totals) <= 0:
        return _empty("Nothing to show.")
    row_h, bar_h = (44, 16) if labels_above else (30, 18)
    top = 28 if legend else 6
    label_w = 0 if labels_above else min(
        int(width * 0.38), max(70, int(max(len(r[0]) for r in rows) * CHAR_W) + 16))
    value_w = max(56, int(max(len(fmt(t)) for t in totals) * CHAR_W) + 14)
    plot_w = width - label_w - value_w
    vmax = max(totals)
    height = top + row_h * len(rows) + 4
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
           f'role="img" aria-label="{esc(label)}">']
    if legend:
        out.append(_legend(legend, label_w, 14))
    for i, ((name, segs), total) in enumerate(zip(rows, totals, strict=True)):
        y = top + i * row_h
        if labels_above:
            by = y + row_h - bar_h - 6
            shown = _cut(name, int(width / CHAR_W))
            out.append(f'<text x="0" y="{by - 6:.1f}" class="lb"><title>{esc(name)}</title>'
                       f"{esc(shown)}</text>")
        else:
            by = y + (row_h - bar_h) / 2
            shown = _cut(name, int((label_w - 14) / CHAR_W))
            out.append(f'<text x="{label_w - 10}" y="{by + bar_h / 2 + 4:.1f}" class="lb" '
                       f'text-anchor="end"><title>{esc(name)}</title>{esc(shown)}</text>')
        out.append(f'<rect x="{label_w}" y="{by:.1f}" width="{plot_w}" height="{bar_h}" rx="3" '
                   'class="track"/>')
        x = float(label_w)
        for seg, value, color in segs:
            if value <= 0:
                continue
            w = max(1.5, value / vmax * plot_w)
            out.append(f'<rect x="{x:.1f}" y="{by:.1f}" width="{w:.1f}" height="{bar_h}" '
                       f'fill="{color}"><title>{esc(name)} · {esc(seg)}: {esc(fmt(value))}'
                       "</title></rect>")
            x += w
        out.append(f'<text x="{x + 7:.1f}" y="{by + bar_h / 2 + 4:.1f}" class="val">'
                   f"{esc(fmt(total))}</text>")
    out.append("</svg>")
    return Html("".join(out))


def column_chart(columns: list[tuple[str, list[tuple[str, float, str]]]], label: str,
                 x_title: str, legend: list[tuple[str, str]] | None = None,
                 width: int = 600, height: int = 250) -> Html:
    """Vertical (stacked) columns for a few categories, with a count axis."""
    totals = [sum(v for _, v, _ in segs) for _, segs in columns]
    if not columns or max(totals) <= 0:
        return _empty("Nothing to show.")
    left, right, top, bottom = 44, 12, 34 if legend else 18, 42
    plot_w, plot_h = width - left - right, height - top - bottom
    step = _nice_step(max(totals), 4, integer=True)
    ymax = math.ceil(max(totals) / step) * step
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" role="img" '
           f'aria-label="{esc(label)}">']
    if legend:
        out.append(_legend(legend, left, 14))
    out.append(_y_axis(left, top, plot_w, plot_h, ymax, step))
    slot = plot_w / len(columns)
    col_w = min(64, slot * 0.6)
    for i, ((name, segs), total) in enumerate(zip(columns, totals, strict=True)):
        cx = left + slot * (i + 0.5)
        y = top + plot_h
        for seg, value, color in segs:
            if value <= 0:
                continue
            h = value / ymax * plot_h
            y -= h
            out.append(f'<rect x="{cx - col_w / 2:.1f}" y="{y:.1f}" width="{col_w:.1f}" '
                       f'height="{h:.1f}" fill="{color}"><title>{esc(x_title)} {esc(name)} · '
                       f"{esc(seg)}: {_n(value)}</title></rect>")
        out.append(f'<text x="{cx:.1f}" y="{y - 5:.1f}" class="val" text-anchor="middle">'
                   f"{_n(total)}</text>")
        out.append(f'<text x="{cx:.1f}" y="{top + plot_h + 16}" class="lb" '
                   f'text-anchor="middle">{esc(name)}</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" class="ax" '
               f'text-anchor="middle">{esc(x_title)}</text>')
    out.append("</svg>")
    return Html("".join(out))


def _y_axis(left: float, top: float, plot_w: float, plot_h: float, ymax: float,
            step: float) -> str:
    parts = []
    tick = 0.0
    while tick <= ymax + 1e-9:
        y = top + plot_h - tick / ymax * plot_h
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'class="{"base" if tick == 0 else "grid"}"/>'
                     f'<text x="{left - 8}" y="{y + 4:.1f}" class="ax" text-anchor="end">'
                     f"{_n(tick)}</text>")
        tick += step
    return "".join(parts)


def histogram(values: list[float], label: str, x_title: str, fmt=_ms,
              markers: list[tuple[str, float, str]] = (), width: int = 1080,
              height: int = 290) -> Html:
    """Counts of `values` in equal-width bins, with labelled vertical markers (percentiles).

    A long tail (a few tickets far slower than the rest) would squeeze every other bar into one;
    values beyond three times the 95th percentile share a last `≥` bin instead.
    """
    if not values:
        return _empty("Nothing to show.")
    lo, hi = min(values), max(values)
    p95 = percentile(values, .95) or 0
    cap = p95 if p95 > lo and hi > 3 * p95 else hi
    step = _nice_step(cap - lo, 16) if cap > lo else _nice_step(max(cap, 1), 4)
    x0 = math.floor(lo / step) * step
    n_bins = max(1, math.ceil((cap - x0) / step - 1e-9))
    if cap == hi and x0 + n_bins * step <= hi:
        n_bins += 1
    x1 = x0 + n_bins * step
    counts = [0] * n_bins
    overflow = 0
    for v in values:
        if v >= x1:
            overflow += 1
        else:
            counts[int((v - x0) // step)] += 1
    slots = n_bins + (1 if overflow else 0)
    left, right, top, bottom = 48, 24, 34 + 14 * len(markers), 44
    plot_w, plot_h = width - left - right, height - top - bottom
    ystep = _nice_step(max(counts + [overflow]), 4, integer=True)
    ymax = math.ceil(max(counts + [overflow]) / ystep) * ystep
    slot_w = plot_w / slots

    def x(v: float) -> float:
        if v >= x1 and overflow:
            return left + (n_bins + 0.5) * slot_w
        return left + (v - x0) / step * slot_w

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" role="img" '
           f'aria-label="{esc(label)}">', _y_axis(left, top, plot_w, plot_h, ymax, ystep)]
    bars = [(x0 + i * step, f"{fmt(x0 + i * step)} – {fmt(x0 + (i + 1) * step)}", c, PROMPT_COLOR)
            for i, c in enumerate(counts)]
    if overflow:
        bars.append((x1, f"≥ {fmt(x1)}", overflow, COMPLETION_COLOR))
    labels = []  # drawn last, over the percentile lines
    for i, (_, span, count, color) in enumerate(bars):
        if not count:
            continue
        a = left + i * slot_w
        h = max(2.0, count / ymax * plot_h)
        out.append(f'<rect x="{a + 1:.1f}" y="{top + plot_h - h:.1f}" width="{slot_w - 2:.1f}" '
                   f'height="{h:.1f}" rx="2" fill="{color}"><title>{esc(span)}: {count:,} '
                   "ticket(s)</title></rect>")
        if slots <= 40:
            labels.append(f'<text x="{a + slot_w / 2:.1f}" y="{top + plot_h - h - 5:.1f}" '
                          f'class="val halo" text-anchor="middle">{count:,}</text>')
    every = max(1, math.ceil((n_bins + 1) / 12))
    for i in range(0, n_bins if overflow else n_bins + 1, every):
        out.append(f'<text x="{left + i * slot_w:.1f}" y="{top + plot_h + 16}" class="ax" '
                   f'text-anchor="middle">{esc(fmt(x0 + i * step))}</text>')
    if overflow:
        out.append(f'<text x="{left + (n_bins + 0.5) * slot_w:.1f}" y="{top + plot_h + 16}" '
                   f'class="ax" text-anchor="middle">≥ {esc(fmt(x1))}</text>')
    for row, (name, value, color) in enumerate(markers):
        mx = x(value)
        ly = 14 + 14 * row
        anchor, dx = ("end", -5) if mx > left + plot_w * 0.8 else ("start", 5)
        out.append(f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{ly - 3}" y2="{top + plot_h}" '
                   f'stroke="{color}" stroke-width="1.5" stroke-dasharray="4 3"/>'
                   f'<text x="{mx + dx:.1f}" y="{ly + 1}" class="mk" fill="{color}" '
                   f'text-anchor="{anchor}">{esc(name)} {esc(fmt(value))}</text>')
    out.extend(labels)
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" class="ax" '
               f'text-anchor="middle">{esc(x_title)}</text>')
    out.append("</svg>")
    return Html("".join(out))


# --- tables ----------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list], numeric: set[int] = frozenset(),
          row_attrs: list[str] | None = None, css: str = "") -> Html:
    """An HTML table; cells that are not `Html` are escaped."""
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{esc(h)}</th>'
                   for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        attrs = row_attrs[r] if row_attrs else ""
        cells = "".join(f'<td{" class=num" if i in numeric else ""}>'
                        f"{c if isinstance(c, Html) else esc(c)}</td>" for i, c in enumerate(row))
        body.append(f"<tr{attrs}>{cells}</tr>")
    return Html(f'<div class="tw"><table class="{css}"><thead><tr>{head}</tr></thead>'
                f'<tbody>{"".join(body)}</tbody></table></div>')


def _more(total: int, shown: int) -> Html:
    if total <= shown:
        return Html("")
    return Html(f'<p class="note">… and {total - shown:,} more; the full list is in '
                "results.csv (<code>crewbatch export</code>).</p>")


def _multiline(text: str) -> Html:
    if not text:
        return Html('<span class="mute">—</span>')
    return Html(f'<div class="ml">{esc(text)}</div>')


# --- the page --------------------------------------------------------------------------------------


def render(data: ReportData) -> str:
    run, outcomes = data.run, data.outcomes
    counts = Counter(o["status"] for o in outcomes)
    processed = [o for o in outcomes if o["status"] in PROCESSED]
    sections = [
        _header(data, counts),
        _kpis(data, counts, processed),
        _section("statuses", "Outcomes", "Every input record ends in exactly one status.",
                 _grid(_card("By status", _status_block(counts, len(outcomes))),
                       _card("By category", _category_block(processed),
                             "Processed tickets (approved, needs_human, failed), by the "
                             "writer's category."))),
        _section("findings", "Findings", "What the deterministic gate and the critic flagged, "
                 "over every draft round.", _findings_block(data)),
        _section("revisions", "Revisions and hand-offs", "",
                 _grid(_card("Revisions per ticket", _revisions_block(processed, run)),
                       _card("Why tickets need a person", _reasons_block(outcomes)))),
        _section("usage", "Tokens and cost by agent", "", _usage_block(data, outcomes)),
        _section("knowledge", "Knowledge retrieval", "The researcher's knowledge searches: how "
                 "they ranked and which sections they found (per ticket: "
                 "<code>crewbatch show RUN TICKET</code>).", _knowledge_block(data.searches)),
        _section("latency", "Latency", "", _latency_block(processed)),
        _section("top", "Slowest and most expensive tickets", "", _top_block(processed)),
        _section("needs-human", f"Needs a person ({counts.get('needs_human', 0):,})",
                 "The review queue: why each ticket was held back and what was proposed. "
                 "Decide in the review sheet (<code>crewbatch export</code>).",
                 _needs_human_block(outcomes)),
        _section("failed", f"Failed ({counts.get('failed', 0):,})",
                 "Errors that survived the retries; the next run takes these tickets again.",
                 _failed_block(outcomes)),
        _section("rejected", f"Rejected records ({counts.get('rejected', 0):,})",
                 "Input records that could not become tickets; nothing was sent to a model.",
                 _rejected_block(outcomes)),
    ]
    title = f"crewbatch run {run['run_id']}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="crewbatch">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            + "".join(sections) +
            f'<footer>Generated {esc(_when(data.generated_utc))} by crewbatch from '
            f"<code>{esc(data.ledger_path)}</code>. Self-contained: no network needed.</footer>"
            "</main></body></html>\n")


def _section(anchor: str, title: str, intro: str, body: str) -> str:
    # `intro` is markup written here, never ledger text.
    lead = f'<p class="lead">{intro}</p>' if intro else ""
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{lead}{body}</section>'


def _card(title: str, body: str, note: str = "") -> str:
    foot = f'<p class="note">{esc(note)}</p>' if note else ""
    return f'<div class="card"><h3>{esc(title)}</h3>{body}{foot}</div>'


def _grid(*cards: str) -> str:
    return f'<div class="grid">{"".join(cards)}</div>'


def _header(data: ReportData, counts: Counter) -> str:
    run = data.run
    options = _json(run.get("options_json")) or {}
    sources = _json(run.get("sources_json")) or []
    seconds = _seconds_between(run.get("started_utc"), run.get("finished_utc"))
    exit_code = run.get("exit_code")
    exit_text = ("—" if exit_code is None else
                 f"{exit_code} · {EXIT_MEANING.get(exit_code, 'unknown exit code')}")
    tone = RUN_TONE.get(run["status"], "info")
    models = options.get("models") or {}
    model_text = run["model"]
    if isinstance(models, dict) and len(set(models.values())) > 1:
        model_text += " (" + ", ".join(f"{k}: {v}" for k, v in models.items()) + ")"
    opts = ", ".join(f"{k.replace('_', ' ')} {options[k]}" for k in
                     ("concurrency", "batch_size", "revision_limit", "limit") if
                     options.get(k) is not None)
    if options.get("reprocess"):
        opts += ", reprocess"
    meta = [("Model", model_text), ("Started", _when(run.get("started_utc"))),
            ("Finished", _when(run.get("finished_utc"))),
            ("Duration", _ms(seconds * 1000) if seconds is not None else "—"),
            ("Records", f"{sum(counts.values()):,}"), ("Exit status", exit_text),
            ("Options", opts or "—"), ("Sources", ", ".join(map(str, sources)) or "—")]
    if run.get("replay_of"):
        meta.insert(1, ("Replay of", f"run {run['replay_of']}"
                        + (", strict" if options.get("strict") else "")
                        + (", what the recording lacked answered offline"
                           if options.get("misses_answered_by") else "")
                        + "; side effects simulated, nothing sent"))
    items = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in meta)
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in (
        ("statuses", "Outcomes"), ("findings", "Findings"), ("revisions", "Revisions"),
        ("usage", "Tokens"), ("latency", "Latency"), ("top", "Top tickets"),
        ("needs-human", "Needs a person"), ("failed", "Failed"), ("rejected", "Rejected")))
    return (f'<header class="top"><div><div class="eyebrow">crewbatch · run report</div>'
            f'<h1><span class="mute">run</span> <span class="runid">{esc(run["run_id"])}</span>'
            f'</h1></div><div class="badges"><span class="badge {tone}">{esc(run["status"])}'
            f'</span><span class="badge plain">exit {esc("—" if exit_code is None else exit_code)}'
            f'</span></div></header><dl class="meta">{items}</dl><nav>{nav}</nav>')


def _kpis(data: ReportData, counts: Counter, processed: list[dict]) -> str:
    total = sum(counts.values())
    tokens_in = sum(o["prompt_tokens"] for o in data.outcomes)
    tokens_out = sum(o["completion_tokens"] for o in data.outcomes)
    cost = sum(o["cost_usd"] for o in data.outcomes)
    durations = [o["duration_ms"] for o in processed]
    tiles = [("Records", _n(total), "read from the sources", "")]
    for status in ("approved", "needs_human", "failed"):
        tiles.append((status.replace("_", " ").capitalize(), _n(counts.get(status, 0)),
                      _pct(counts.get(status, 0), total) + " of records", status))
    tiles += [("Rejected · skipped",
               f"{counts.get('rejected', 0):,} · {counts.get('skipped', 0):,}",
               "unusable input · already done", ""),
              ("Tokens", _compact(tokens_in + tokens_out),
               f"{_compact(tokens_in)} prompt · {_compact(tokens_out)} completion", ""),
              ("Cost", _usd(cost), "recorded per ticket", ""),
              ("Latency p50", _ms(percentile(durations, .5)),
               f"p90 {_ms(percentile(durations, .9))} · p99 {_ms(percentile(durations, .99))}", "")]
    pending = counts.get("pending", 0) + counts.get("running", 0)
    if pending:
        tiles.insert(5, ("Pending", _n(pending), "left for the next run", "pending"))
    html_tiles = "".join(
        f'<div class="kpi{" k-" + _css_name(s) if s else ""}"><div class="kl">{esc(label)}</div>'
        f'<div class="kv">{esc(value)}</div><div class="ks">{esc(sub)}</div></div>'
        for label, value, sub, s in tiles)
    return f'<section class="kpis">{html_tiles}</section>{_status_strip(counts)}'


def _ordered_statuses(counts: Counter) -> list[str]:
    return [s for s in STATUS_ORDER if counts.get(s)] + sorted(
        s for s in counts if s not in STATUS_ORDER)


def _status_strip(counts: Counter, width: int = 1080) -> str:
    total = sum(counts.values())
    if not total:
        return _empty("This run has no records.")
    out = [f'<svg class="chart strip" viewBox="0 0 {width} 44" width="{width}" role="img" '
           'aria-label="share of records by status">']
    x = 0.0
    for status in _ordered_statuses(counts):
        w = counts[status] / total * width
        color = STATUS_COLOR.get(status, OTHER_COLOR)
        out.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="14" fill="{color}">'
                   f"<title>{esc(status)}: {counts[status]:,} ({_pct(counts[status], total)})"
                   "</title></rect>")
        x += w
    out.append(_legend([(f"{s} {counts[s]:,} ({_pct(counts[s], total)})",
                         STATUS_COLOR.get(s, OTHER_COLOR)) for s in _ordered_statuses(counts)],
                       0, 36))
    out.append("</svg>")
    return "".join(out)


def _status_block(counts: Counter, total: int) -> str:
    statuses = _ordered_statuses(counts)
    chart = hbar_chart([(s, [(s, counts[s], STATUS_COLOR.get(s, OTHER_COLOR))]) for s in statuses],
                       "records by status")
    rows = [[_pill(s), counts[s], _pct(counts[s], total)] for s in statuses]
    attrs = [f' class="status-row" data-status="{esc(s)}"' for s in statuses]
    return chart + table(["status", "records", "share"], rows, {1, 2}, attrs, "compact")


def _category_block(processed: list[dict]) -> str:
    by_cat: dict[str, Counter] = defaultdict(Counter)
    for o in processed:
        by_cat[o["category"] or "(none)"][o["status"]] += 1
    cats = sorted(by_cat, key=lambda c: (-sum(by_cat[c].values()), c))
    present = [s for s in PROCESSED if any(by_cat[c][s] for c in cats)]
    return hbar_chart([(c, [(s, by_cat[c][s], STATUS_COLOR[s]) for s in PROCESSED])
                       for c in cats], "tickets by category",
                      legend=[(s, STATUS_COLOR[s]) for s in present])


def _severity_rows(findings: list[Finding]) -> list[tuple[str, list[tuple[str, float, str]]]]:
    by_check: dict[str, Counter] = defaultdict(Counter)
    for f in findings:
        by_check[f.check][f.severity] += 1
    checks = sorted(by_check, key=lambda c: (-sum(by_check[c].values()), c))
    severities = SEVERITY_ORDER + sorted({f.severity for f in findings} - set(SEVERITY_ORDER))
    return [(c, [(s, by_check[c][s], SEVERITY_COLOR.get(s, OTHER_COLOR)) for s in severities])
            for c in checks]


def _findings_block(data: ReportData) -> str:
    cards = []
    for source, title, note in (
            ("gate", "Gate checks (in code)", "A blocking gate finding cannot be approved by the "
             "critic."),
            ("critic", "Critic's findings", "")):
        found = [f for f in data.findings if f.source == source]
        present = [s for s in SEVERITY_ORDER if any(f.severity == s for f in found)]
        chart = (hbar_chart(_severity_rows(found), f"{source} findings by check",
                            legend=[(s, SEVERITY_COLOR[s]) for s in present])
                 if found else _empty("No findings."))
        if source == "critic" and data.verdicts:
            note = (f"{data.verdicts['approved']:,} verdict(s) approved, "
                    f"{data.verdicts['sent back']:,} sent back.")
        cards.append(_card(title, chart, note))
    body = _grid(*cards)
    if data.findings:
        groups: dict[tuple[str, str, str], list[Finding]] = defaultdict(list)
        for f in data.findings:
            groups[(f.check, f.source, f.severity)].append(f)
        rows = []
        for (check, source, severity), items in sorted(
                groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            tickets = list(dict.fromkeys(f.ticket_id for f in items))
            shown = ", ".join(tickets[:6]) + (f" … +{len(tickets) - 6}" if len(tickets) > 6 else "")
            rows.append([Html(f"<code>{esc(check)}</code>"), source,
                         Html(f'<span class="sev v-{_css_name(severity)}">{esc(severity)}</span>'),
                         len(items), len(tickets), shown, _cut(items[0].detail, 140)])
        body += _card("Every finding type", table(
            ["check", "by", "severity", "findings", "tickets", "ticket ids", "example"],
            rows, {3, 4}, css="findings"))
    return body


def _revisions_block(processed: list[dict], run: dict) -> str:
    limit = (_json(run.get("options_json")) or {}).get("revision_limit")
    top = max([o["revisions"] for o in processed] + [limit if isinstance(limit, int) else 0])
    by_rev: dict[int, Counter] = defaultdict(Counter)
    for o in processed:
        by_rev[o["revisions"]][o["status"]] += 1
    present = [s for s in PROCESSED if any(by_rev[r][s] for r in by_rev)]
    chart = column_chart([(str(r), [(s, by_rev[r][s], STATUS_COLOR[s]) for s in PROCESSED])
                          for r in range(top + 1)], "tickets by number of revisions",
                         "revisions", legend=[(s, STATUS_COLOR[s]) for s in present])
    note = f"Revision limit {limit}: after it the critic hands the ticket to a person." \
        if limit is not None else ""
    return chart + (f'<p class="note">{esc(note)}</p>' if note else "")


def reason_kind(reason: str) -> str:
    """The stable part of a needs_human reason: `policy refused: …` → `policy refused`."""
    head = reason.split(": ", 1)[0].strip()
    return head or "(no reason recorded)"


def _reasons_block(outcomes: list[dict]) -> str:
    kinds = Counter(reason_kind(o["needs_human_reason"]) for o in outcomes
                    if o["status"] == "needs_human")
    if not kinds:
        return _empty("No ticket needs a person.")
    return hbar_chart([(k, [("needs_human", v, STATUS_COLOR["needs_human"])])
                       for k, v in kinds.most_common()], "needs_human tickets by reason",
                      labels_above=True)


def _agent_key(agent: str) -> tuple[int, str]:
    return (AGENT_ORDER.index(agent) if agent in AGENT_ORDER else len(AGENT_ORDER), agent)


def _usage_block(data: ReportData, outcomes: list[dict]) -> str:
    agents: dict[str, dict] = {}
    unpriced: set[str] = set()
    for u in data.usage:
        a = agents.setdefault(u["agent"], {"steps": [], "models": [], "calls": 0, "prompt": 0,
                                           "completion": 0, "ms": 0, "cost": None})
        for key, value in (("steps", u["step"]), ("models", u["model"])):
            if value not in a[key]:
                a[key].append(value)
        a["calls"] += u["calls"]
        a["prompt"] += u["prompt_tokens"] or 0
        a["completion"] += u["completion_tokens"] or 0
        a["ms"] += u["duration_ms"] or 0
        if data.pricing is not None:
            cost = cost_usd(data.pricing, u["model"], u["prompt_tokens"] or 0,
                          u["completion_tokens"] or 0)
            if cost is None:
                if u["prompt_tokens"] or u["completion_tokens"]:
                    unpriced.add(u["model"])
            else:
                a["cost"] = (a["cost"] or 0) + cost
    if not agents:
        return _empty("No agent ran in this run.")
    order = sorted(agents, key=_agent_key)
    chart = hbar_chart([(name, [("prompt", agents[name]["prompt"], PROMPT_COLOR),
                                ("completion", agents[name]["completion"], COMPLETION_COLOR)])
                        for name in order if agents[name]["prompt"] or agents[name]["completion"]],
                       "tokens by agent", fmt=_compact,
                       legend=[("prompt tokens", PROMPT_COLOR),
                               ("completion tokens", COMPLETION_COLOR)], width=1080)
    priced = data.pricing is not None
    headers = ["agent", "steps", "model", "calls", "prompt tokens", "completion tokens",
               "total tokens", "avg time per call"] + (["cost (USD)"] if priced else [])
    rows = []
    for name in order:
        a = agents[name]
        row = [name, ", ".join(a["steps"]), ", ".join(a["models"]), _n(a["calls"]),
               _n(a["prompt"]), _n(a["completion"]), _n(a["prompt"] + a["completion"]),
               _ms(a["ms"] / a["calls"] if a["calls"] else None)]
        rows.append(row + ([_usd(a["cost"])] if priced else []))
    tot_p = sum(a["prompt"] for a in agents.values())
    tot_c = sum(a["completion"] for a in agents.values())
    total_row = [Html("<strong>all</strong>"), "", "", _n(sum(a["calls"] for a in agents.values())),
                 _n(tot_p), _n(tot_c), _n(tot_p + tot_c), ""]
    if priced:
        costs = [a["cost"] for a in agents.values() if a["cost"] is not None]
        total_row.append(_usd(sum(costs)) if costs else "—")
    rows.append(total_row)
    numeric = set(range(3, len(headers)))
    recorded = sum(o["cost_usd"] for o in outcomes)
    if not priced:
        note = ("Tokens only: no pricing was given to the report. The cost recorded on the "
                f"tickets totals {_usd(recorded)}.")
    else:
        note = f"Priced with settings.yaml `pricing`; the cost recorded on the tickets totals " \
               f"{_usd(recorded)}."
        if unpriced:
            note += f" No price for {', '.join(sorted(unpriced))}: shown as —."
    return _card("Tokens by agent", chart + table(headers, rows, numeric, css="usage"), note)


def _knowledge_block(searches: list[dict]) -> str:
    if not searches:
        return _empty("No knowledge searches recorded in this run.")
    methods = Counter(x.get("method", "bm25") for x in searches)
    tokens = sum(int(x.get("embedding_tokens") or 0) for x in searches)
    failed = sum(1 for x in searches if x.get("embedding_error"))
    tickets = len({x["ticket_id"] for x in searches})
    summary = table(["searches", "tickets", "method", "embedding tokens", "per ticket",
                     "embedding failed"],
                    [[f"{len(searches):,}", f"{tickets:,}",
                      ", ".join(f"{m} ({n:,})" for m, n in methods.most_common()),
                      f"{tokens:,}", f"{tokens / max(1, tickets):,.0f}", f"{failed:,}"]],
                    {0, 1, 3, 4, 5})
    found: Counter = Counter()
    first: Counter = Counter()
    for x in searches:
        for n, hit in enumerate(x.get("sections") or []):
            key = (str(hit.get("source", "")), str(hit.get("title", "")))
            found[key] += 1
            first[key] += n == 0
    rows = [[source, title, f"{count:,}", f"{first[(source, title)]:,}"]
            for (source, title), count in found.most_common(12)]
    return summary + table(["source", "section", "found", "ranked first"], rows, {2, 3})


def _latency_block(processed: list[dict]) -> str:
    durations = [float(o["duration_ms"]) for o in processed]
    marks = [(name, percentile(durations, q), color) for name, q, color in
             (("p50", .5, "#2e8b66"), ("p90", .9, "#d99a1e"), ("p99", .99, "#c94a4a"))]
    marks = [(n, v, c) for n, v, c in marks if v is not None]
    stats = "".join(f'<div class="stat"><span>{esc(n)}</span><strong>{esc(_ms(v))}</strong></div>'
                    for n, v, _ in marks)
    if durations:
        stats += (f'<div class="stat"><span>mean</span><strong>'
                  f"{esc(_ms(sum(durations) / len(durations)))}</strong></div>"
                  f'<div class="stat"><span>max</span><strong>{esc(_ms(max(durations)))}'
                  f'</strong></div><div class="stat"><span>tickets</span><strong>'
                  f"{len(durations):,}</strong></div>")
    chart = histogram(durations, "ticket latency histogram",
                      "time per ticket, from hand-over to the crew to the recorded outcome",
                      markers=marks)
    if not durations:
        chart = _empty("No processed tickets, so no latencies.")
    return _card("Time per processed ticket", f'<div class="stats">{stats}</div>{chart}')


def _top_block(processed: list[dict]) -> str:
    slow = sorted(processed, key=lambda o: (-o["duration_ms"], o["outcome_id"]))[:TOP_N]
    slow_rows = [[o["ticket_id"], _pill(o["status"]), o["category"], o["revisions"],
                  _ms(o["duration_ms"]), _n(o["prompt_tokens"] + o["completion_tokens"]),
                  _cut(o.get("subject") or "", 80)] for o in slow]
    priced = any(o["cost_usd"] for o in processed)
    dear = sorted(processed, key=lambda o: (-o["cost_usd"], -(o["prompt_tokens"] +
                                                              o["completion_tokens"]),
                                            o["outcome_id"]))[:TOP_N]
    dear_rows = [[o["ticket_id"], _pill(o["status"]), o["category"], o["revisions"],
                  _usd(o["cost_usd"]), _n(o["prompt_tokens"]), _n(o["completion_tokens"]),
                  _cut(o.get("subject") or "", 80)] for o in dear]
    note = "" if priced else "No ticket has a recorded cost (unpriced model), so ranked by tokens."
    if not processed:
        return _empty("No processed tickets.")
    return (_card(f"Slowest {len(slow)}", table(
                ["ticket", "status", "category", "revisions", "time", "tokens", "subject"],
                slow_rows, {3, 4, 5}))
            + _card(f"Most expensive {len(dear)}", table(
                ["ticket", "status", "category", "revisions", "cost", "prompt tokens",
                 "completion tokens", "subject"], dear_rows, {3, 4, 5, 6}), note))


def _needs_human_block(outcomes: list[dict]) -> str:
    queue = [o for o in outcomes if o["status"] == "needs_human"]
    if not queue:
        return _empty("Nothing is waiting for a person.")
    rows = []
    for o in queue[:TABLE_LIMIT]:
        rows.append([Html(f'<span class="tid">{esc(o["ticket_id"])}</span>'),
                     Html(f'{esc(o.get("subject") or "")}<div class="mute small">'
                          f'{esc(o.get("customer") or "")}</div>'),
                     Html(f'{esc(o["category"])}<div class="mute small">{esc(o["priority"])}'
                          "</div>"),
                     _multiline(o["needs_human_reason"]),
                     _actions_cell(o["actions_json"])])
    return _card("Review queue", table(["ticket", "subject · customer", "category", "reason",
                                        "proposed actions"], rows, css="queue")
                 + _more(len(queue), TABLE_LIMIT))


def _actions_cell(actions_json: str) -> Html:
    actions = _json(actions_json)
    if not isinstance(actions, list) or not actions:
        return Html('<span class="mute">none</span>')
    items = []
    for action in actions:
        try:
            line = describe_actions(json.dumps([action]))
            decision = _css_name(str(action.get("decision", "")))
        except (KeyError, TypeError, AttributeError):
            line, decision = json.dumps(action, ensure_ascii=False), ""
        items.append(f'<li class="d-{decision}">{esc(line)}</li>')
    return Html(f'<ul class="actions">{"".join(items)}</ul>')


def _failed_block(outcomes: list[dict]) -> str:
    failed = [o for o in outcomes if o["status"] == "failed"]
    if not failed:
        return _empty("No ticket failed.")
    rows = [[Html(f'<span class="tid">{esc(o["ticket_id"])}</span>'),
             _cut(o.get("subject") or "", 80),
             Html(f'<pre class="err">{esc(o["error"] or "(no error recorded)")}</pre>'),
             _ms(o["duration_ms"])] for o in failed[:TABLE_LIMIT]]
    return _card("Failed tickets", table(["ticket", "subject", "error", "time"], rows, {3})
                 + _more(len(failed), TABLE_LIMIT))


def _rejected_block(outcomes: list[dict]) -> str:
    rejected = [o for o in outcomes if o["status"] == "rejected"]
    if not rejected:
        return _empty("Every record was usable.")
    rows = [[o["source"], o["ticket_id"], o["reason"]] for o in rejected[:TABLE_LIMIT]]
    return _card("Rejected records", table(["source", "record", "reason"], rows)
                 + _more(len(rejected), TABLE_LIMIT))


CSS = """
:root{--ink:#1f2933;--muted:#66727f;--line:#e3e7ec;--bg:#f4f6f8;--card:#fff;--accent:#3e6db5}
*{box-sizing:border-box}
html{background:var(--bg)}
body{margin:0;color:var(--ink);font:14px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,
"Helvetica Neue",Arial,"Noto Sans","Liberation Sans",sans-serif;font-variant-numeric:tabular-nums}
main{max-width:1160px;margin:0 auto;padding:28px 28px 40px}
code,.runid,.tid,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",
"DejaVu Sans Mono",monospace}
code{font-size:.92em;background:#eef1f5;border-radius:4px;padding:0 4px}
.top{display:flex;justify-content:space-between;align-items:flex-end;gap:16px;
border-bottom:1px solid var(--line);padding-bottom:14px}
.eyebrow{text-transform:uppercase;letter-spacing:.08em;font-size:11px;color:var(--muted);
font-weight:600}
h1{margin:4px 0 0;font-size:26px;font-weight:600}
h2{font-size:18px;font-weight:600;margin:34px 0 4px}
h3{font-size:13px;font-weight:600;margin:0 0 10px;color:#3e4c59;text-transform:uppercase;
letter-spacing:.05em}
.lead{margin:0 0 12px;color:var(--muted)}
.mute{color:var(--muted)}.small{font-size:12px}
.badges{display:flex;gap:8px}
.badge{padding:4px 12px;border-radius:999px;font-weight:600;font-size:13px;border:1px solid}
.badge.good{background:#e6f4ee;color:#1f6b4d;border-color:#b9e0cd}
.badge.warn{background:#fdf3e1;color:#8a5a0b;border-color:#f1d59c}
.badge.bad{background:#fbe9e9;color:#9b2c2c;border-color:#f0c2c2}
.badge.info,.badge.plain{background:#eef2f7;color:#3e4c59;border-color:#d5dde6}
.meta{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:10px 24px;margin:16px 0 10px}
.meta div{min-width:0}.meta dt{font-size:11px;text-transform:uppercase;letter-spacing:.06em;
color:var(--muted)}
.meta dd{margin:2px 0 0;overflow-wrap:anywhere}
nav{display:flex;flex-wrap:wrap;gap:6px 16px;margin:6px 0 18px;font-size:13px}
nav a{color:var(--accent);text-decoration:none}nav a:hover{text-decoration:underline}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(118px,1fr));gap:10px}
.kpi{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px;
border-top:3px solid #cbd2d9}
.kpi.k-approved{border-top-color:#2e8b66}.kpi.k-needs_human{border-top-color:#d99a1e}
.kpi.k-failed{border-top-color:#c94a4a}.kpi.k-pending{border-top-color:#5b8bd6}
.kl{font-size:12px;color:var(--muted)}.kv{font-size:22px;font-weight:600;margin:2px 0}
.ks{font-size:11.5px;color:var(--muted)}
.strip{margin-top:14px}
.grid{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:16px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 18px;
margin-bottom:16px;min-width:0}
.grid .card{margin-bottom:0}.grid+.card{margin-top:16px}
svg.chart{display:block;width:100%;height:auto;overflow:visible}
svg text{font-family:inherit;fill:var(--ink)}
svg .lb{font-size:12px}svg .val{font-size:12px;fill:#3e4c59;font-weight:600}
svg .ax{font-size:11px;fill:var(--muted)}svg .lg{font-size:12px;fill:#3e4c59}
svg .mk{font-size:12px;font-weight:600}
svg .halo{paint-order:stroke;stroke:#fff;stroke-width:4px;stroke-linejoin:round}
svg .track{fill:#f1f3f6}svg .grid{stroke:#edf0f3;stroke-width:1}
svg .base{stroke:#c5ccd4;stroke-width:1}
.empty{color:var(--muted);font-style:italic;margin:8px 0}
.note{color:var(--muted);font-size:12.5px;margin:10px 0 0}
.tw{overflow-x:auto;margin-top:10px}
table{width:100%;border-collapse:collapse;font-size:13px}
th{text-align:left;font-weight:600;color:#3e4c59;font-size:12px;border-bottom:1px solid #cfd6de;
padding:6px 8px;white-space:nowrap}
td{border-bottom:1px solid var(--line);padding:7px 8px;vertical-align:top;overflow-wrap:break-word}
tbody tr:nth-child(even){background:#fafbfc}
.num{text-align:right;white-space:nowrap}
table.compact{width:auto;min-width:60%}
table.queue td:first-child,table.queue td:nth-child(3){white-space:nowrap}
table.queue td:nth-child(2){width:20%}table.queue td:nth-child(4){width:30%}
table.findings td:nth-child(-n+3){white-space:nowrap}table.findings td:nth-child(6){width:18%}
.pill{display:inline-block;padding:1px 8px;border-radius:999px;font-size:12px;font-weight:600;
background:#eef1f5;color:#3e4c59;white-space:nowrap}
.pill.s-approved{background:#e3f2ea;color:#1f6b4d}.pill.s-needs_human{background:#fcf0d8;
color:#85570c}
.pill.s-failed{background:#f9e3e3;color:#9b2c2c}.pill.s-rejected{background:#e8ebef;color:#52606d}
.pill.s-pending,.pill.s-running{background:#e4edfa;color:#2f5596}
.sev{font-size:12px;font-weight:600}.v-critical{color:#a8322d}.v-major{color:#c25a24}
.v-minor{color:#9a7410}.v-info{color:#66727f}
.ml{white-space:pre-wrap}
ul.actions{margin:0;padding-left:16px}
ul.actions li{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;
font-size:12px;margin:1px 0}
li.d-refused{color:#9b2c2c}li.d-performed{color:#1f6b4d}li.d-not_run,li.d-proposed{color:#52606d}
pre.err{margin:0;white-space:pre-wrap;font-size:12px;color:#7b1f1f;background:#fdf3f3;
padding:6px 8px;border-radius:6px}
.stats{display:flex;flex-wrap:wrap;gap:10px 28px;margin:0 0 10px}
.stat span{display:block;font-size:11px;text-transform:uppercase;letter-spacing:.06em;
color:var(--muted)}.stat strong{font-size:18px;font-weight:600}
footer{margin-top:36px;padding-top:12px;border-top:1px solid var(--line);color:var(--muted);
font-size:12px}
@media (max-width:820px){.grid{grid-template-columns:1fr}.meta{grid-template-columns:1fr 1fr}}
@media print{html{background:#fff}.card,.kpi{break-inside:avoid}nav{display:none}}
"""
