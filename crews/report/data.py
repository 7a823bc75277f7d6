"""What a run report shows, read from the ledger and summed up; no markup here.

`collect` reads the run through the ledger's public methods (the run row, the outcomes, the
steps' tokens, the gate's, critic's and researcher's structured outputs); the functions below it
turn that into the typed rows each section of the page shows, so the template only lays them out.
A report can be collected for any run, finished or not.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property

from ..export import describe_actions
from ..ledger import Outcome, Run
from ..pricing import cost_usd
from ..ticket import ExitCode, RunStatus
from .charts import percentile
from .formats import compact, css_name, cut, ms, n, pct, usd, when

STATUS_ORDER = ["approved", "needs_human", "failed", "rejected", "skipped", "pending", "running"]
PROCESSED = ("approved", "needs_human", "failed")
SEVERITY_ORDER = ["critical", "major", "minor", "info"]
AGENT_ORDER = ["researcher", "writer", "critic", "executor", "gate"]
# Every run status, as the colour of the header's badge.
RUN_TONE = {s.value: tone for s, tone in [
    (RunStatus.COMPLETED, "good"), (RunStatus.INTERRUPTED, "warn"), (RunStatus.STOPPED, "warn"),
    (RunStatus.CRASHED, "bad"), (RunStatus.RUNNING, "info")]}
TABLE_LIMIT = 500  # rows of a list table (needs_human, failed, rejected) before "… and N more"
TOP_N = 10


@dataclass
class Finding:
    source: str      # gate | critic
    check: str
    severity: str
    detail: str
    ticket_id: str


@dataclass
class ReportData:
    run: Run
    outcomes: list[Outcome]
    usage: list[dict]
    findings: list[Finding]
    verdicts: Counter
    pricing: dict | None
    ledger_path: str
    generated_utc: str
    searches: list[dict] = field(default_factory=list)  # research steps' knowledge searches
    batches: list[dict] = field(default_factory=list)   # --batch-api: the run's batches
    call_usage: list[dict] = field(default_factory=list)  # tokens and cost per model

    @cached_property
    def counts(self) -> Counter:
        return Counter(o.status for o in self.outcomes)

    @cached_property
    def processed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in PROCESSED]

    @property
    def options(self) -> dict:
        return _json(self.run.options_json) or {}

    def with_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]


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
                      datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), searches,
                      ledger.batches(run_id), ledger.call_usage(run_id))


def _json(text: str):
    try:
        return json.loads(text) if text else None
    except (json.JSONDecodeError, TypeError):
        return None


def _seconds_between(start: str | None, end: str | None) -> float | None:
    try:
        fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
        return (datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds()
    except (TypeError, ValueError):
        return None


def ordered_statuses(counts: Counter) -> list[str]:
    return [s for s in STATUS_ORDER if counts.get(s)] + sorted(
        s for s in counts if s not in STATUS_ORDER)


# --- the header and the tiles ----------------------------------------------------------------------


@dataclass
class Header:
    run_id: str
    status: str
    tone: str
    exit_code: str
    meta: list[tuple[str, str]]


def _meaning(exit_code: int) -> str:
    try:
        return ExitCode(exit_code).meaning
    except ValueError:
        return "unknown exit code"


def header(data: ReportData) -> Header:
    run, options = data.run, data.options
    sources = _json(run.sources_json) or []
    seconds = _seconds_between(run.started_utc, run.finished_utc)
    exit_code = run.exit_code
    exit_text = ("—" if exit_code is None else
                 f"{exit_code} · {_meaning(exit_code)}")
    models = options.get("models") or {}
    model_text = run.model
    if isinstance(models, dict) and len(set(models.values())) > 1:
        model_text += " (" + ", ".join(f"{k}: {v}" for k, v in models.items()) + ")"
    opts = ", ".join(f"{k.replace('_', ' ')} {options[k]}" for k in
                     ("concurrency", "batch_size", "revision_limit", "limit") if
                     options.get(k) is not None)
    if options.get("reprocess"):
        opts += ", reprocess"
    meta = [("Model", model_text), ("Started", when(run.started_utc)),
            ("Finished", when(run.finished_utc)),
            ("Duration", ms(seconds * 1000) if seconds is not None else "—"),
            ("Records", f"{len(data.outcomes):,}"), ("Exit status", exit_text),
            ("Options", opts or "—"), ("Sources", ", ".join(map(str, sources)) or "—")]
    if run.replay_of:
        meta.insert(1, ("Replay of", f"run {run.replay_of}"
                        + (", strict" if options.get("strict") else "")
                        + (", what the recording lacked answered offline"
                           if options.get("misses_answered_by") else "")
                        + "; side effects simulated, nothing sent"))
    return Header(run.run_id, run.status, RUN_TONE.get(run.status, "info"),
                  "—" if exit_code is None else str(exit_code), meta)


@dataclass
class Tile:
    label: str
    value: str
    sub: str
    status: str = ""  # colours the tile's top edge


def tiles(data: ReportData) -> list[Tile]:
    counts, total = data.counts, len(data.outcomes)
    tokens_in = sum(o.prompt_tokens for o in data.outcomes)
    tokens_out = sum(o.completion_tokens for o in data.outcomes)
    durations = [o.duration_ms for o in data.processed]
    out = [Tile("Records", n(total), "read from the sources")]
    for status in PROCESSED:
        out.append(Tile(status.replace("_", " ").capitalize(), n(counts.get(status, 0)),
                        pct(counts.get(status, 0), total) + " of records", status))
    out += [Tile("Rejected · skipped",
                 f"{counts.get('rejected', 0):,} · {counts.get('skipped', 0):,}",
                 "unusable input · already done"),
            Tile("Tokens", compact(tokens_in + tokens_out),
                 f"{compact(tokens_in)} prompt · {compact(tokens_out)} completion"),
            Tile("Cost", usd(sum(o.cost_usd for o in data.outcomes)), "recorded per ticket"),
            Tile("Latency p50", ms(percentile(durations, .5)),
                 f"p90 {ms(percentile(durations, .9))} · p99 {ms(percentile(durations, .99))}")]
    pending = counts.get("pending", 0) + counts.get("running", 0)
    if pending:
        out.insert(5, Tile("Pending", n(pending), "left for the next run", "pending"))
    return out


# --- outcomes, findings, revisions -----------------------------------------------------------------


def by_category(processed: list[Outcome]) -> list[tuple[str, Counter]]:
    """Processed tickets per category (most first), counted by status."""
    by_cat: dict[str, Counter] = defaultdict(Counter)
    for o in processed:
        by_cat[o.category or "(none)"][o.status] += 1
    return sorted(by_cat.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))


def by_check(findings: list[Finding]) -> list[tuple[str, Counter]]:
    """Findings per check (most first), counted by severity."""
    checks: dict[str, Counter] = defaultdict(Counter)
    for f in findings:
        checks[f.check][f.severity] += 1
    return sorted(checks.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))


def severities(findings: list[Finding]) -> list[str]:
    return SEVERITY_ORDER + sorted({f.severity for f in findings} - set(SEVERITY_ORDER))


@dataclass
class FindingGroup:
    check: str
    source: str
    severity: str
    findings: int
    tickets: int
    ticket_ids: str  # the first six, then how many more
    example: str


def finding_groups(findings: list[Finding]) -> list[FindingGroup]:
    groups: dict[tuple[str, str, str], list[Finding]] = defaultdict(list)
    for f in findings:
        groups[(f.check, f.source, f.severity)].append(f)
    out = []
    for (check, source, severity), items in sorted(groups.items(),
                                                   key=lambda kv: (-len(kv[1]), kv[0])):
        tickets = list(dict.fromkeys(f.ticket_id for f in items))
        shown = ", ".join(tickets[:6]) + (f" … +{len(tickets) - 6}" if len(tickets) > 6 else "")
        out.append(FindingGroup(check, source, severity, len(items), len(tickets), shown,
                                cut(items[0].detail, 140)))
    return out


def by_revisions(processed: list[Outcome], limit) -> list[tuple[int, Counter]]:
    """Processed tickets per number of revisions, from 0 to the most (or the limit), by status."""
    top = max([o.revisions for o in processed] + [limit if isinstance(limit, int) else 0])
    by_rev: dict[int, Counter] = defaultdict(Counter)
    for o in processed:
        by_rev[o.revisions][o.status] += 1
    return [(r, by_rev[r]) for r in range(top + 1)]


def reason_kind(reason: str) -> str:
    """The stable part of a needs_human reason: `policy refused: …` → `policy refused`."""
    head = reason.split(": ", 1)[0].strip()
    return head or "(no reason recorded)"


def reasons(outcomes: list[Outcome]) -> list[tuple[str, int]]:
    return Counter(reason_kind(o.needs_human_reason) for o in outcomes
                   if o.status == "needs_human").most_common()


# --- tokens, knowledge, latency --------------------------------------------------------------------


@dataclass
class AgentUsage:
    agent: str
    steps: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    calls: int = 0
    prompt: int = 0
    completion: int = 0
    ms: int = 0
    cost: float | None = None  # None: unpriced (or no pricing given)


@dataclass
class Usage:
    agents: list[AgentUsage]  # in crew order
    unpriced: list[str]       # models without a price that used tokens
    priced: bool
    recorded_cost: float      # what the tickets recorded, for the note


def usage(data: ReportData) -> Usage:
    agents: dict[str, AgentUsage] = {}
    unpriced: set[str] = set()
    for u in data.usage:
        a = agents.setdefault(u["agent"], AgentUsage(u["agent"]))
        for values, value in ((a.steps, u["step"]), (a.models, u["model"])):
            if value not in values:
                values.append(value)
        a.calls += u["calls"]
        a.prompt += u["prompt_tokens"] or 0
        a.completion += u["completion_tokens"] or 0
        a.ms += u["duration_ms"] or 0
        if data.pricing is not None:
            cost = cost_usd(data.pricing, u["model"], u["prompt_tokens"] or 0,
                            u["completion_tokens"] or 0,
                            batch=bool(data.options.get("batch_api")))
            if cost is None:
                if u["prompt_tokens"] or u["completion_tokens"]:
                    unpriced.add(u["model"])
            else:
                a.cost = (a.cost or 0) + cost
    order = sorted(agents, key=lambda name: (
        AGENT_ORDER.index(name) if name in AGENT_ORDER else len(AGENT_ORDER), name))
    return Usage([agents[name] for name in order], sorted(unpriced), data.pricing is not None,
                 sum(o.cost_usd for o in data.outcomes))


@dataclass
class Batches:
    """--batch-api: the run's batches, their waits, and the money saved against live prices."""

    rows: list[dict]
    requests: int
    wait_p50_s: float | None
    wait_max_s: float | None
    states: list[tuple[str, int]]
    cost: float               # recorded, at batch prices
    live_cost: float | None   # the same tokens at live prices (None: unpriced)

    @property
    def saved(self) -> float | None:
        return None if self.live_cost is None else self.live_cost - self.cost


def batches(data: ReportData) -> Batches | None:
    return batch_summary(data.batches, data.call_usage, data.pricing)


def batch_summary(rows: list[dict], call_usage: list[dict], pricing) -> Batches | None:
    """The report's Batch API section and `crewbatch show`'s batch lines: from the ledger's
    `batches` and `call_usage` of a run."""
    if not rows:
        return None
    waits = sorted(b["wait_s"] for b in rows if b["wait_s"] is not None)
    live: float | None = 0.0
    for u in call_usage:
        cost = cost_usd(pricing, u["model"], u["prompt_tokens"] or 0,
                        u["completion_tokens"] or 0, u["cached_tokens"] or 0)
        live = None if cost is None or live is None else live + cost
    return Batches(rows, sum(b["requests"] for b in rows),
                   percentile(waits, .5) if waits else None, waits[-1] if waits else None,
                   sorted(Counter(b["state"] for b in rows).items()),
                   sum(u["cost_usd"] or 0 for u in call_usage), live)


@dataclass
class Knowledge:
    searches: int
    tickets: int
    methods: list[tuple[str, int]]
    embedding_tokens: int
    embedding_failed: int
    sections: list[tuple[str, str, int, int]]  # source, title, found, ranked first (top 12)


def knowledge(searches: list[dict]) -> Knowledge | None:
    if not searches:
        return None
    found: Counter = Counter()
    first: Counter = Counter()
    for x in searches:
        for rank, hit in enumerate(x.get("sections") or []):
            key = (str(hit.get("source", "")), str(hit.get("title", "")))
            found[key] += 1
            first[key] += rank == 0
    return Knowledge(len(searches), len({x["ticket_id"] for x in searches}),
                     Counter(x.get("method", "bm25") for x in searches).most_common(),
                     sum(int(x.get("embedding_tokens") or 0) for x in searches),
                     sum(1 for x in searches if x.get("embedding_error")),
                     [(source, title, count, first[(source, title)])
                      for (source, title), count in found.most_common(12)])


MARKERS = (("p50", .5, "#2e8b66"), ("p90", .9, "#d99a1e"), ("p99", .99, "#c94a4a"))


def latency_marks(durations: list[float]) -> list[tuple[str, float, str]]:
    """The percentile markers of the latency histogram: (name, milliseconds, colour)."""
    marks = [(name, percentile(durations, q), color) for name, q, color in MARKERS]
    return [(name, v, color) for name, v, color in marks if v is not None]


def slowest(processed: list[Outcome]) -> list[Outcome]:
    return sorted(processed, key=lambda o: (-o.duration_ms, o.outcome_id))[:TOP_N]


def dearest(processed: list[Outcome]) -> list[Outcome]:
    """The most expensive tickets; by tokens where nothing has a recorded cost."""
    return sorted(processed, key=lambda o: (-o.cost_usd, -(o.prompt_tokens +
                                                              o.completion_tokens),
                                            o.outcome_id))[:TOP_N]


def action_lines(actions_json: str) -> list[tuple[str, str]]:
    """A proposed action per line, with its decision as a class name (`refused`, `performed`)."""
    actions = _json(actions_json)
    if not isinstance(actions, list):
        return []
    out = []
    for action in actions:
        try:
            out.append((describe_actions(json.dumps([action])),
                        css_name(str(action.get("decision", "")))))
        except (KeyError, TypeError, AttributeError):
            out.append((json.dumps(action, ensure_ascii=False), ""))
    return out
