"""Rendering the reports with Jinja2: the environment over templates/, and the run report's page.

Templates are autoescaped with StrictUndefined, so ledger text (hostile: ticket subjects, model
output) is escaped unless a template or this module marks markup as such, and a misspelt name
fails instead of printing nothing. `page_context` turns a ReportData into the charts' geometry and
the rows report.html.j2 lays out. The eval and diff pages still assemble their HTML in Python:
`card`, `table`, `hbar_chart`… below give them the same building blocks, from the same macros.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import jinja2
from markupsafe import Markup, escape

from . import charts, data
from .charts import COMPLETION_COLOR, PROMPT_COLOR
from .formats import FILTERS, compact, n, pct, usd

STATUS_COLOR = {"approved": "#2e8b66", "needs_human": "#d99a1e", "failed": "#c94a4a",
                "rejected": "#7b8794", "skipped": "#b3bcc7", "pending": "#5b8bd6",
                "running": "#8fb0e3"}
SEVERITY_COLOR = {"critical": "#a8322d", "major": "#e0703a", "minor": "#e8b83e", "info": "#9aa5b1"}
OTHER_COLOR = "#7b8794"
NAV = (("statuses", "Outcomes"), ("findings", "Findings"), ("revisions", "Revisions"),
       ("usage", "Tokens"), ("latency", "Latency"), ("top", "Top tickets"),
       ("needs-human", "Needs a person"), ("failed", "Failed"), ("rejected", "Rejected"))
LATENCY_TITLE = "time per ticket, from hand-over to the crew to the recorded outcome"

# The stylesheet every report page inlines (the eval and diff pages add their own rules).
CSS = files(__package__).joinpath("templates/report.css").read_text(encoding="utf-8")


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader(__package__, "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True,
                             # A missing ledger value (NULL) shows as nothing, not "None".
                             finalize=lambda value: "" if value is None else value)
    env.filters.update(FILTERS)
    return env


def render(report: data.ReportData) -> str:
    return environment().get_template("report.html.j2").render(page_context(report))


def page_context(report: data.ReportData) -> dict:
    counts, processed = report.counts, report.processed
    statuses = data.ordered_statuses(counts)
    usage = data.usage(report)
    durations = [float(o.duration_ms) for o in processed]
    marks = data.latency_marks(durations)
    knowledge = data.knowledge(report.searches)
    limit = report.options.get("revision_limit")
    return {
        "css": Markup(CSS), "h": data.header(report), "tiles": data.tiles(report), "nav": NAV,
        "statuses": [(s, counts[s]) for s in statuses], "total": len(report.outcomes),
        "charts": _charts(report, statuses, usage, durations, marks, limit),
        "findings_cards": [
            ("gate", "Gate checks (in code)",
             "A blocking gate finding cannot be approved by the critic."),
            ("critic", "Critic's findings",
             f"{report.verdicts['approved']:,} verdict(s) approved, "
             f"{report.verdicts['sent back']:,} sent back." if report.verdicts else "")],
        "finding_groups": data.finding_groups(report.findings),
        "revision_limit": limit, "usage": usage, "usage_note": _usage_note(usage),
        "knowledge": knowledge, "batches": data.batches(report),
        "methods": ", ".join(f"{m} ({k:,})" for m, k in knowledge.methods) if knowledge else "",
        "marks": marks, "durations": durations,
        "slow": data.slowest(processed), "dear": data.dearest(processed),
        "priced_tickets": any(o.cost_usd for o in processed),
        "queue": report.with_status("needs_human"), "failed": report.with_status("failed"),
        "rejected": report.with_status("rejected"), "limit": data.TABLE_LIMIT,
        "action_lines": data.action_lines,
        "generated": report.generated_utc, "ledger_path": report.ledger_path,
    }


def _charts(report: data.ReportData, statuses: list[str], usage: data.Usage,
            durations: list[float], marks, limit) -> dict:
    counts, processed, total = report.counts, report.processed, len(report.outcomes)
    categories = data.by_category(processed)
    revisions = data.by_revisions(processed, limit)
    out = {
        "strip": charts.strip([(f"{s}: {counts[s]:,} ({pct(counts[s], total)})",
                                counts[s], _status_color(s),
                                f"{s} {counts[s]:,} ({pct(counts[s], total)})")
                               for s in statuses]),
        "status": charts.hbar([(s, [(s, counts[s], _status_color(s))]) for s in statuses]),
        "category": charts.hbar(
            [(c, [(s, by[s], STATUS_COLOR[s]) for s in data.PROCESSED]) for c, by in categories],
            legend_items=_present(data.PROCESSED, [by for _, by in categories], STATUS_COLOR)),
        "revisions": charts.columns(
            [(str(r), [(s, by[s], STATUS_COLOR[s]) for s in data.PROCESSED])
             for r, by in revisions], "revisions",
            _present(data.PROCESSED, [by for _, by in revisions], STATUS_COLOR)),
        "reasons": charts.hbar([(k, [("needs_human", v, STATUS_COLOR["needs_human"])])
                                for k, v in data.reasons(report.outcomes)], labels_above=True),
        "tokens": charts.hbar(
            [(a.agent, [("prompt", a.prompt, PROMPT_COLOR),
                        ("completion", a.completion, COMPLETION_COLOR)])
             for a in usage.agents if a.prompt or a.completion], fmt=compact,
            legend_items=[("prompt tokens", PROMPT_COLOR), ("completion tokens", COMPLETION_COLOR)],
            width=1080),
        "latency": charts.histogram(durations, LATENCY_TITLE, markers=marks),
    }
    for source in ("gate", "critic"):
        found = [f for f in report.findings if f.source == source]
        rows = data.by_check(found)
        severities = data.severities(found)
        out[source] = charts.hbar(
            [(c, [(s, by[s], SEVERITY_COLOR.get(s, OTHER_COLOR)) for s in severities])
             for c, by in rows],
            legend_items=_present(data.SEVERITY_ORDER, [by for _, by in rows], SEVERITY_COLOR))
    return out


def _status_color(status: str) -> str:
    return STATUS_COLOR.get(status, OTHER_COLOR)


def _present(order, counters, colors: dict[str, str]) -> list[tuple[str, str]]:
    """The legend: the names of `order` that some counter holds, with their colours."""
    return [(s, colors[s]) for s in order if any(c[s] for c in counters)]


def _usage_note(usage: data.Usage) -> str:
    if not usage.priced:
        return ("Tokens only: no pricing was given to the report. The cost recorded on the "
                f"tickets totals {usd(usage.recorded_cost)}.")
    note = (f"Priced with settings.yaml `pricing`; the cost recorded on the tickets totals "
            f"{usd(usage.recorded_cost)}.")
    if usage.unpriced:
        note += f" No price for {', '.join(usage.unpriced)}: shown as —."
    return note


# --- building blocks for pages written in Python (eval_report, diff) -------------------------------


def _macro(template: str, name: str):
    return getattr(environment().get_template(template).module, name)


def esc(value: object) -> Markup:
    return escape("" if value is None else value)


def table(headers: list[str], rows: list[list], numeric=frozenset(), css: str = "") -> Markup:
    """An HTML table; cells that are not Markup are escaped."""
    return _macro("macros.html.j2", "table")(headers, rows, numeric, css)


def card(title: str, body: str, note: str = "") -> Markup:
    """A card around `body`, markup its caller wrote (ledger text in it is escaped already)."""
    return _macro("macros.html.j2", "card")(title, Markup(body), note)


def section(anchor: str, title: str, intro: str, body: str) -> Markup:
    """A section; `intro` and `body` are markup written by the caller, never ledger text."""
    return _macro("macros.html.j2", "section")(anchor, title, Markup(intro), Markup(body))


def grid(*cards: str) -> Markup:
    return _macro("macros.html.j2", "grid")(Markup("").join(Markup(c) for c in cards))


def pill(status: str) -> Markup:
    return _macro("macros.html.j2", "pill")(status)


def empty(text: str) -> Markup:
    return _macro("macros.html.j2", "empty")(text)


def hbar_chart(rows, label: str, fmt=n, legend: list[tuple[str, str]] | None = None,
               width: int = 600, labels_above: bool = False) -> Markup:
    """Horizontal bars (charts.hbar) drawn as inline SVG, or "Nothing to show."."""
    return _macro("charts.html.j2", "hbar")(
        charts.hbar(rows, fmt, legend or (), width, labels_above), label)
