"""`crewbatch eval`: run the crew over labelled tickets and score it against the labels.

An eval is a normal, recorded run (its id is the eval's id; `crewbatch show EVAL_ID TICKET` shows
any ticket's trail) with side effects off: the crew decides every action and nothing is carried
out. The dataset goes through the normal intake; label columns stay in `Ticket.extra`, and `--map`
maps their values onto config/taxonomy.yaml (a value that maps to nothing is reported and scored
as its own class, never dropped). Every record of the dataset is read before the run, because a
seeded sample and the baselines' training part (the records outside the sample) need them all.
Each eval ticket gets a ticket key of its own (`eval:<nonce>:<record>`), so an eval never skips a
ticket an earlier run answered, no later run skips a ticket because an eval saw it, and two
identical rows of a dataset are both scored.

The result is a typed log shaped like inspect_ai's EvalLog (spec, per-sample results, metrics),
written with a per-ticket CSV and an HTML report to `runs/evals/<eval_id>/` (or `-o DIR`).
`--baseline EVAL_ID` compares with an earlier log; `--max-drop` turns a fall into exit 1.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import secrets
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from . import baselines, intake, metrics
from .action_kinds import TAG_TICKET
from .export import neutralise
from .files import write_atomically
from .settings import Config, ConfigError, RunOptions, _suggest
from .ticket import ExitCode, Rejection, RunStatus, Status, Ticket

if TYPE_CHECKING:
    from .ledger import Outcome

FIELDS = ("category", "priority", "queue", "needs_human")
EVALS_DIR = "evals"
LOG_FILE, SAMPLES_FILE, REPORT_FILE = "eval.json", "samples.csv", "report.html"
DECIDED = (Status.APPROVED.value, Status.NEEDS_HUMAN.value)
TRUE = {"true", "yes", "y", "1", "human", "escalated", "person"}
FALSE = {"false", "no", "n", "0", "auto", "automatic", "bot"}
ANY_VALUE = "*"  # in a map file: every value the map does not name


class EvalError(Exception):
    """The eval cannot run (a label column, the map file, a baseline); the message says the fix."""


# --- the typed log (inspect_ai's EvalLog, cut to what crewbatch measures) ----------------------


class Metric(BaseModel):
    name: str
    value: float


class Score(BaseModel):
    """One scored field: its headline metrics and the tables behind them."""

    name: str                       # category, priority, queue, needs_human
    scorer: str                     # crew, majority, tfidf_logreg
    scored_samples: int
    unscored_samples: int
    metrics: dict[str, Metric]
    metadata: dict[str, Any] = {}   # per_class, confusion (labels, matrix), unmapped values


class EvalDataset(BaseModel):
    name: str
    location: list[str]
    records: int                    # read from the dataset
    samples: int                    # in this eval
    sample: int | None = None
    seed: int | None = None
    limit: int | None = None
    labels: dict[str, str]          # field -> column
    map_file: str | None = None


class EvalSpec(BaseModel):
    eval_id: str
    run_id: str
    created: str
    task: str = "crewbatch triage"
    dataset: EvalDataset
    model: str
    models: dict[str, str]
    config: dict[str, Any] = {}
    packages: dict[str, str] = {}


class Sample(BaseModel):
    id: str                         # source:line of the dataset record
    ticket_id: str
    input: str                      # subject and body (cut)
    target: dict[str, Any]          # the mapped labels
    raw_target: dict[str, str]      # the dataset's values
    output: dict[str, Any]          # the crew's prediction per field (None: no answer)
    scores: dict[str, bool]         # field -> correct
    status: str
    reason: str = ""
    cost_usd: float = 0.0
    tokens: int = 0
    duration_ms: int = 0
    baselines: dict[str, dict[str, Any]] = {}


class EvalResults(BaseModel):
    total_samples: int
    completed_samples: int          # ended approved or needs_human
    scores: list[Score]
    metadata: dict[str, Any] = {}   # reliability, statuses, gate findings, cost, latency


class EvalStats(BaseModel):
    started_at: str
    completed_at: str
    wall_s: float
    model_usage: dict[str, dict[str, float]] = {}


class Comparison(BaseModel):
    baseline_eval_id: str
    deltas: dict[str, dict[str, float]]            # "field.metric" -> {now, before, delta}
    better: dict[str, list[str]]                   # field -> sample ids now right, before wrong
    worse: dict[str, list[str]]
    max_drop: float | None = None
    dropped: list[str] = []                        # metrics that fell by more than max_drop


class EvalLog(BaseModel):
    version: int = 1
    status: str                     # success | cancelled
    eval: EvalSpec
    results: EvalResults
    stats: EvalStats
    baselines: dict[str, Any] = {}  # scorer -> {available, note, scores: [Score]}
    comparison: Comparison | None = None
    samples: list[Sample]


# --- what to score and how the labels read -----------------------------------------------------


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """`--label FIELD=COLUMN` options as {field: column}."""
    labels: dict[str, str] = {}
    for pair in pairs:
        field, sep, column = pair.partition("=")
        field, column = field.strip(), column.strip()
        if not sep or not field or not column:
            raise EvalError(f"--label {pair!r}: write FIELD=COLUMN, e.g. --label category=type")
        if field not in FIELDS:
            raise EvalError(f"--label {pair!r}: `{field}` is not a field the crew predicts"
                            f"{_suggest(field, FIELDS)}; the fields are {', '.join(FIELDS)}")
        labels[field] = column
    if not labels:
        raise EvalError("name at least one label column: --label FIELD=COLUMN (fields: "
                        f"{', '.join(FIELDS)})")
    return labels


@dataclasses.dataclass
class LabelMap:
    """The map file: per field, dataset value -> taxonomy value (`*`: any other value)."""

    path: str | None
    values: dict[str, dict[str, Any]]

    def target(self, field: str, raw: str) -> tuple[Any, bool]:
        """(the label in the taxonomy, whether it mapped); an unmapped value stays as it is."""
        table = self.values.get(field)
        if table is not None:
            if raw in table:
                return table[raw], True
            if ANY_VALUE in table:
                return table[ANY_VALUE], True
            return raw, False
        if field == "needs_human":
            low = raw.strip().lower()
            return (True, True) if low in TRUE else (False, True) if low in FALSE else (raw, False)
        return raw, None  # checked against the taxonomy by the caller


def load_map(path: str | None, config: Config) -> LabelMap:
    if path is None:
        return LabelMap(None, {})
    name = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EvalError(f"{name}: no such map file; check the path") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise EvalError(f"{name}: not valid YAML ({exc}); fix the syntax") from exc
    if not isinstance(data, dict):
        raise EvalError(f"{name}: must map each field ({', '.join(FIELDS)}) to a table of "
                        "dataset value: taxonomy value")
    taxonomy = config.taxonomy
    allowed = {"category": taxonomy.categories, "priority": taxonomy.priorities,
               "queue": taxonomy.queues}
    problems, values = [], {}
    for field, table in data.items():
        if field not in FIELDS:
            problems.append(f"{name}: `{field}` is not a field{_suggest(str(field), FIELDS)}; "
                            f"the fields are {', '.join(FIELDS)}")
            continue
        if not isinstance(table, dict):
            problems.append(f"{name}: `{field}` must be a table of dataset value: taxonomy value")
            continue
        values[field] = {}
        for raw, target in table.items():
            raw = str(raw)
            if field == "needs_human":
                if not isinstance(target, bool):
                    problems.append(f"{name}: `needs_human.{raw}` is {target!r}; write true (a "
                                    "person handled it) or false")
            elif target not in allowed[field]:
                problems.append(f"{name}: `{field}.{raw}` maps to `{target}`, which is not one of "
                                f"the {field} names of config/taxonomy.yaml"
                                f"{_suggest(str(target), allowed[field])}: "
                                f"{', '.join(allowed[field])}")
            values[field][raw] = target
    if problems:
        raise ConfigError(problems)
    return LabelMap(name, values)


# --- the dataset -------------------------------------------------------------------------------


@dataclasses.dataclass
class Dataset:
    records: list[Ticket | Rejection]   # every record read
    chosen: list[int]                   # indices of the eval's records
    pool: list[int]                     # the labelled tickets outside the eval (baselines train)


def read_dataset(files: list[Path], intake_options: intake.IntakeOptions, labels: dict[str, str],
                 limit: int | None, sample: int | None, seed: int) -> Dataset:
    records = list(intake.read_sources(files, intake_options))
    tickets = [r for r in records if isinstance(r, Ticket)]
    if not tickets:
        raise EvalError(f"{', '.join(map(str, files))}: no tickets in the dataset")
    columns = {k for t in tickets[:200] for k in t.extra}
    for field, column in labels.items():
        if column not in columns:
            raise EvalError(f"--label {field}={column}: the dataset has no column `{column}` "
                            f"besides the ticket's own fields{_suggest(column, columns)}; its other "
                            f"columns are {', '.join(sorted(columns)) or '(none)'}")
    order = list(range(len(records)))
    if sample is not None:
        chosen = sorted(random.Random(seed).sample(order, min(sample, len(order))))
    else:
        chosen = order[:limit] if limit else order
    taken = set(chosen)
    pool = [i for i in order if i not in taken and isinstance(records[i], Ticket)]
    return Dataset(records, chosen, pool)


def eval_records(dataset: Dataset, nonce: str) -> list[Ticket | Rejection]:
    """The eval's records with ticket keys of their own (see the module docstring)."""
    out: list[Ticket | Rejection] = []
    for i in dataset.chosen:
        r = dataset.records[i]
        if isinstance(r, Ticket):
            own_id = not r.ticket_id.startswith("h-")
            r = dataclasses.replace(r, key=f"eval:{nonce}:{r.record_no}",
                                    ticket_id=r.ticket_id if own_id else r.source)
        out.append(r)
    return out


def text_of(ticket: Ticket) -> str:
    return f"{ticket.subject}\n{ticket.body}"


# --- running and scoring -----------------------------------------------------------------------


@dataclasses.dataclass
class EvalOptions:
    datasets: list[str]
    labels: dict[str, str]
    map_file: str | None = None
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    baseline: str | None = None
    max_drop: float | None = None
    output: str | None = None


@dataclasses.dataclass
class EvalOutcome:
    log: EvalLog
    directory: Path
    exit_code: int
    summary: Any  # the run's pipeline.RunSummary


def run_eval(config: Config, options: RunOptions, spec: EvalOptions,
             intake_options: intake.IntakeOptions | None = None, stop=None,
             progress=None) -> EvalOutcome:
    from . import pipeline
    from .eval_report import render
    from .ledger import Ledger

    intake_options = intake_options or intake.IntakeOptions.from_config(config)
    label_map = load_map(spec.map_file, config)
    before = load_baseline(config, spec.baseline) if spec.baseline else None
    files = intake.expand_sources(spec.datasets, config.root,
                                  follow_symlinks=config.settings.intake.follow_symlinks)
    started_at, started = _now(), time.monotonic()
    dataset = read_dataset(files, intake_options, spec.labels, spec.limit, spec.sample, spec.seed)
    records = eval_records(dataset, secrets.token_hex(4))
    run_options = dataclasses.replace(options, side_effects=False, limit=None, reprocess=False)
    summary = pipeline.run(config, run_options, [str(f) for f in files], intake_options,
                           stop=stop, progress=progress, records=records)
    with Ledger(config.ledger_url) as ledger:
        outcomes = {(o.source, o.record_no): o for o in ledger.outcomes(summary.run_id)}
        checks = ledger.step_outputs(summary.run_id, ("checks",))
    log = score(config, options.model, summary, dataset, records, outcomes, checks, spec,
                label_map, started_at, time.monotonic() - started)
    if before is not None:
        log.comparison = compare(log, before, spec.max_drop)
    directory = Path(spec.output) if spec.output else config.runs_dir / EVALS_DIR / log.eval.eval_id
    write_log(log, directory / LOG_FILE)
    write_samples(log, directory / SAMPLES_FILE)
    write_atomically(directory / REPORT_FILE, render(log).encode("utf-8"))
    exit_code = (ExitCode.STOPPED if summary.exit_code == ExitCode.STOPPED else
                 1 if log.comparison is not None and log.comparison.dropped else 0)
    return EvalOutcome(log, directory, exit_code, summary)


def predicted(outcome: Outcome | None, config: Config) -> dict[str, Any]:
    """What the crew said about a ticket, per field; None throughout if it gave no answer."""
    if outcome is None or outcome.status not in DECIDED:
        return dict.fromkeys(FIELDS)
    queue = next((a["args"].get("queue") for a in outcome.actions if a["kind"] == TAG_TICKET),
                 None)
    category = outcome.category or None
    return {"category": category, "priority": outcome.priority or None,
            "queue": queue or config.taxonomy.queue_of(category or ""),
            "needs_human": outcome.status == Status.NEEDS_HUMAN.value}


def score(config: Config, model: str, summary, dataset: Dataset, records: list, outcomes: dict,
          checks: list, spec: EvalOptions, label_map: LabelMap, started_at: str, wall_s: float
          ) -> EvalLog:
    taxonomy = config.taxonomy
    known = {"category": list(taxonomy.categories), "priority": list(taxonomy.priorities),
             "queue": list(taxonomy.queues)}
    samples: list[Sample] = []
    unmapped: dict[str, Counter] = {f: Counter() for f in spec.labels}
    statuses: Counter = Counter()
    tickets = []
    for r in records:
        outcome = outcomes.get((r.source, r.record_no))
        statuses[outcome.status if outcome else "pending"] += 1
        if not isinstance(r, Ticket):
            continue
        tickets.append(r)
        target, raw = {}, {}
        for field, column in spec.labels.items():
            value = str(r.extra.get(column) or "").strip()
            if not value:
                continue
            mapped, ok = label_map.target(field, value)
            if ok is None:
                ok = mapped in known[field]
            if not ok:
                unmapped[field][value] += 1
            raw[field], target[field] = value, mapped
        output = predicted(outcome, config)
        samples.append(Sample(
            id=r.source, ticket_id=r.ticket_id, input=text_of(r)[:2000], target=target,
            raw_target=raw, output=output,
            scores={f: output.get(f) == v for f, v in target.items()},
            status=outcome.status if outcome else "pending",
            reason=outcome and (outcome.needs_human_reason or outcome.error) or "",
            cost_usd=outcome.cost_usd if outcome else 0.0,
            tokens=outcome.prompt_tokens + outcome.completion_tokens if outcome else 0,
            duration_ms=outcome.duration_ms if outcome else 0))
    scores = [field_score(f, "crew", samples, [s.output.get(f) for s in samples],
                          unmapped.get(f), known) for f in spec.labels]
    scores = [s for s in scores if s is not None]
    decided = [s for s in samples if s.status in DECIDED]
    durations = [s.duration_ms for s in decided]
    from .report import percentile

    flagged = {(f.get("check"), row["outcome_id"]) for row in checks
               for f in json.loads(row["output_json"] or "[]") if isinstance(f, dict)}
    gate = Counter(check for check, _ in flagged)  # tickets with the finding, in any round
    cost = sum(s.cost_usd for s in samples)
    tokens = sum(s.tokens for s in samples)
    meta = {
        "statuses": dict(statuses),
        "tickets": len(samples), "rejected_records": statuses.get(Status.REJECTED.value, 0),
        "reliability": len(decided) / len(samples) if samples else 0.0,
        "approval_rate": statuses.get(Status.APPROVED.value, 0) / len(samples) if samples else 0,
        "gate_findings": dict(gate.most_common()),
        "tokens": tokens, "cost_usd": cost,
        "cost_per_ticket": cost / len(samples) if samples else 0.0,
        "tokens_per_ticket": tokens / len(samples) if samples else 0.0,
        "latency_p50_ms": percentile(durations, .5), "latency_p95_ms": percentile(durations, .95),
        "tickets_per_s": len(samples) / wall_s if wall_s else 0.0,
    }
    from .llms import role_models

    log = EvalLog(
        status="success" if summary.status == RunStatus.COMPLETED else "cancelled",
        eval=EvalSpec(
            eval_id=summary.run_id, run_id=summary.run_id, created=started_at,
            dataset=EvalDataset(name=Path(spec.datasets[0]).name, location=spec.datasets,
                                records=len(dataset.records), samples=len(records),
                                sample=spec.sample, seed=spec.seed if spec.sample else None,
                                limit=spec.limit, labels=spec.labels, map_file=label_map.path),
            model=",".join(sorted(set(role_models(config, model).values()))),
            models=role_models(config, model),
            config={"taxonomy": taxonomy.model_dump(exclude={"offline"}),
                    "revision_limit": config.settings.revision_limit},
            packages=_packages()),
        results=EvalResults(total_samples=len(samples), completed_samples=len(decided),
                            scores=scores, metadata=meta),
        stats=EvalStats(started_at=started_at, completed_at=_now(), wall_s=round(wall_s, 3),
                        model_usage={"all": {"tokens": tokens, "cost_usd": cost}}),
        samples=samples)
    log.baselines = run_baselines(log, dataset, tickets, spec, label_map, known)
    return log


def field_score(field: str, scorer: str, samples: list[Sample], outputs: list,
                unmapped: Counter | None, known: dict[str, list[str]]) -> Score | None:
    """One field's metrics; the classes are laid out in the taxonomy's order (`known`), then any
    value the taxonomy does not have."""
    pairs = [(s.target[field], o) for s, o in zip(samples, outputs, strict=True)
             if field in s.target]
    unscored = len(samples) - len(pairs)
    if field == "needs_human":
        pairs = [(g, o) for g, o in pairs if isinstance(g, bool)]
        if not pairs:
            return None
        b = metrics.binary([g for g, _ in pairs], [o for _, o in pairs])
        return Score(name=field, scorer=scorer, scored_samples=len(pairs),
                     unscored_samples=len(samples) - len(pairs),
                     metrics={k: Metric(name=k, value=b[k]) for k in ("precision", "recall", "f1")}
                     | {"accuracy": Metric(name="accuracy", value=metrics.accuracy(
                         [g for g, _ in pairs], [o is True for _, o in pairs]))},
                     metadata={"counts": {k: b[k] for k in ("tp", "fp", "fn", "tn")},
                               "unmapped": dict((unmapped or Counter()).most_common())})
    if not pairs:
        return None
    gold = [g for g, _ in pairs]
    pred = [metrics.NONE if o is None else o for _, o in pairs]
    order = known[field]
    found = metrics.classes(gold, pred)
    labels = [c for c in order if c in found] + [c for c in found if c not in order]
    return Score(
        name=field, scorer=scorer, scored_samples=len(pairs), unscored_samples=unscored,
        metrics={"accuracy": Metric(name="accuracy", value=metrics.accuracy(gold, pred)),
                 "macro_f1": Metric(name="macro_f1", value=metrics.macro_f1(gold, pred, labels))},
        metadata={"per_class": metrics.per_class(gold, pred, labels),
                  "confusion": {"labels": labels, "matrix": metrics.confusion(gold, pred, labels)},
                  "unmapped": dict((unmapped or Counter()).most_common()),
                  "no_answer": pred.count(metrics.NONE)})


def run_baselines(log: EvalLog, dataset: Dataset, tickets: list[Ticket], spec: EvalOptions,
                  label_map: LabelMap, known: dict) -> dict[str, Any]:
    """Majority and TF-IDF + logistic regression, cross-fitted (baselines.py), per field."""
    texts = [text_of(t) for t in tickets]
    pool = [dataset.records[i] for i in dataset.pool]
    pool_texts = [text_of(t) for t in pool]
    out: dict[str, Any] = {}
    missing = baselines.learned_available()
    for scorer, fit, note in (
            ("majority", baselines.majority, "the most common label of the training part"),
            ("tfidf_logreg", baselines.tfidf_logreg,
             "TF-IDF word 1-2-grams + logistic regression (scikit-learn)")):
        if scorer == "tfidf_logreg" and missing:
            out[scorer] = {"available": False, "note": f"skipped: {missing}", "scores": []}
            continue
        scores = []
        for field in spec.labels:
            gold = [s.target.get(field) for s in log.samples]
            pool_gold = [_pool_target(t, spec.labels[field], field, label_map) for t in pool]
            predictions = baselines.cross_fit(texts, gold, pool_texts, pool_gold, fit, spec.seed)
            for s, p in zip(log.samples, predictions, strict=True):
                s.baselines.setdefault(scorer, {})[field] = p
            result = field_score(field, scorer, log.samples, predictions, None, known)
            if result is not None:
                scores.append(result)
        out[scorer] = {"available": True, "note": note, "scores": [s.model_dump() for s in scores],
                       "training_pool": len(pool)}
    return out


def _pool_target(ticket: Ticket, column: str, field: str, label_map: LabelMap):
    value = str(ticket.extra.get(column) or "").strip()
    if not value:
        return None
    mapped, _ = label_map.target(field, value)
    return mapped


# --- comparing with an earlier eval --------------------------------------------------------------


def headline(log: EvalLog) -> dict[str, float]:
    """The metrics `--baseline` compares and `--max-drop` guards, by `field.metric`."""
    out = {f"{s.name}.{k}": m.value for s in log.results.scores for k, m in s.metrics.items()}
    meta = log.results.metadata
    out["run.reliability"] = meta.get("reliability", 0.0)
    out["run.approval_rate"] = meta.get("approval_rate", 0.0)
    return out


def compare(now: EvalLog, before: EvalLog, max_drop: float | None) -> Comparison:
    a, b = headline(now), headline(before)
    deltas = {k: {"now": a[k], "before": b[k], "delta": a[k] - b[k]} for k in a if k in b}
    old = {s.id: s for s in before.samples}
    better: dict[str, list[str]] = {}
    worse: dict[str, list[str]] = {}
    for s in now.samples:
        prior = old.get(s.id)
        if prior is None:
            continue
        for field, right in s.scores.items():
            if field in prior.scores and right != prior.scores[field]:
                (better if right else worse).setdefault(field, []).append(s.id)
    dropped = [k for k, d in deltas.items() if max_drop is not None and
               k.rsplit(".", 1)[1] in ("accuracy", "macro_f1", "precision", "recall",
                                       "reliability") and d["delta"] < -max_drop - 1e-12]
    return Comparison(baseline_eval_id=before.eval.eval_id, deltas=deltas, better=better,
                      worse=worse, max_drop=max_drop, dropped=dropped)


def load_baseline(config: Config, ref: str) -> EvalLog:
    """An earlier eval: a path to its eval.json, or its id (a prefix will do) in runs/evals/."""
    path = Path(ref)
    if not path.is_file():
        folder = config.runs_dir / EVALS_DIR
        matches = sorted(p for p in folder.glob(f"{ref}*") if (p / LOG_FILE).is_file()) \
            if folder.is_dir() else []
        if len(matches) != 1:
            listed = ", ".join(p.name for p in matches[:5])
            raise EvalError(f"--baseline {ref}: " + (
                f"matches {len(matches)} evals ({listed}); give more of the id" if matches else
                f"no eval with that id in {folder} and no such file; name an eval id or an "
                "eval.json"))
        path = matches[0] / LOG_FILE
    try:
        return EvalLog.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError, OSError) as exc:
        raise EvalError(f"{path}: not an eval log crewbatch can read ({exc}); "
                        "run the baseline eval again") from exc


# --- writing -------------------------------------------------------------------------------------


def write_log(log: EvalLog, path: Path) -> None:
    write_atomically(path, log.model_dump_json(indent=1).encode("utf-8"))


SAMPLE_COLUMNS = ["id", "ticket_id", "field", "label", "dataset_value", "prediction", "correct",
                  "status", "reason", "majority", "tfidf_logreg", "text"]


def write_samples(log: EvalLog, path: Path) -> None:
    """One row per ticket and scored field; UTF-8 with BOM, formula-neutralised."""
    import io

    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\r\n")
    out.writerow(SAMPLE_COLUMNS)
    for s in log.samples:
        for field in s.target or {"": None}:
            row = [s.id, s.ticket_id, field, _cell(s.target.get(field)),
                   s.raw_target.get(field, ""), _cell(s.output.get(field)),
                   "" if field not in s.scores else "yes" if s.scores[field] else "no",
                   s.status, s.reason,
                   _cell(s.baselines.get("majority", {}).get(field)),
                   _cell(s.baselines.get("tfidf_logreg", {}).get(field)), s.input]
            out.writerow([neutralise(c) for c in row])
    write_atomically(path, buffer.getvalue().encode("utf-8-sig"))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _packages() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("crewbatch", "crewai", "scikit-learn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def summary_lines(outcome: EvalOutcome) -> list[str]:
    """What `crewbatch eval` prints on stdout: the eval id, then a line per metric."""
    log = outcome.log
    base = {name: {s["name"]: s for s in b.get("scores", [])} for name, b in log.baselines.items()}
    deltas = log.comparison.deltas if log.comparison else {}
    lines = [log.eval.eval_id]
    for score in log.results.scores:
        for key, metric in score.metrics.items():
            others = "  ".join(
                f"{scorer} {base[scorer][score.name]['metrics'][key]['value']:.3f}"
                for scorer in ("majority", "tfidf_logreg") if score.name in base.get(scorer, {}))
            d = deltas.get(f"{score.name}.{key}")
            lines.append(f"{score.name:<12} {key:<10} {metric.value:.3f}  {others}"
                         + (f"  (Δ {d['delta']:+.3f})" if d else ""))
    meta = log.results.metadata
    lines.append(f"reliability {meta['reliability']:.3f}; approved {meta['approval_rate']:.3f}; "
                 f"{log.results.total_samples} tickets; ${meta['cost_per_ticket']:.5f}/ticket; "
                 f"p50 {meta['latency_p50_ms'] or 0:.0f} ms, p95 {meta['latency_p95_ms'] or 0:.0f} ms")
    for name, b in log.baselines.items():
        if not b.get("available"):
            lines.append(f"{name}: {b['note']}")
    if log.comparison is not None and log.comparison.dropped:
        lines.append(f"fell by more than {log.comparison.max_drop:g}: "
                     + ", ".join(log.comparison.dropped))
    lines.append(f"report: {outcome.directory / REPORT_FILE}")
    return lines
