"""Configuration: find the project root, load the YAML files of config/, validate them all at once.

Everything a user tunes lives in config/ (settings, agents, tasks, policy, escalation, taxonomy).
Each file is loaded into pydantic models that refuse unknown keys, then cross-checked (tasks name
real agents, placeholders exist, tools exist, knowledge files exist, the policy's queues are the
taxonomy's). Every problem is collected and reported together, each
naming the file, the key and the fix, so one `crewbatch check` shows the whole list and no model is
ever called with a broken configuration. Command-line options, environment variables and
settings.yaml are merged in exactly one place: `resolve_options`.
"""

from __future__ import annotations

import difflib
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .action_kinds import ACTIONS, TAG_TICKET
from .taxonomy import TAXONOMY_FILE, Taxonomy
from .taxonomy import problems as taxonomy_problems

SETTINGS_FILE = "config/settings.yaml"
AGENTS_FILE = "config/agents.yaml"
TASKS_FILE = "config/tasks.yaml"
POLICY_FILE = "config/policy.yaml"
ESCALATION_FILE = "config/escalation.yaml"

ROLES = ("researcher", "writer", "critic", "executor")
# The pipeline's four steps, in order, and the placeholders each task description may use.
STEPS = ("research", "draft", "review", "execute")
STEP_PLACEHOLDERS = {
    "research": {"ticket", "policy", "lookups"},
    "draft": {"ticket", "policy", "research", "evidence", "feedback", "taxonomy"},
    "review": {"ticket", "policy", "research", "evidence", "draft", "checks", "taxonomy"},
    "execute": {"ticket", "policy", "draft", "actions"},
}
# Placeholders that carry an earlier task's output, so the task must list that task in `context`.
OUTPUT_PLACEHOLDERS = {"research": "research", "evidence": "research", "draft": "draft"}
STRUCTURED_OUTPUTS = {"draft": "Draft", "review": "Verdict"}
RESEARCH_TOOLS = ("search_knowledge", "lookup_order", "customer_orders")
ACTION_TOOLS = tuple(ACTIONS)
# The executor's tools: one per action kind, or the batch tool that takes the whole plan at once.
BATCH_TOOL = "carry_out_actions"
EXECUTOR_TOOLS = (BATCH_TOOL, *ACTION_TOOLS)
OFFLINE = "offline"


class ConfigError(Exception):
    """One or more configuration problems; each is a complete sentence naming file, key and fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- settings.yaml -------------------------------------------------------------------------------


class LLMSettings(_Strict):
    model: str = OFFLINE
    base_url: str | None = None
    temperature: float | None = 0.2
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(0, ge=0, le=10)  # the SDK's own; crewbatch's `retry` owns retries
    # `live`: each request is an HTTP call; `batch`: through the provider's Batch API (`batch`
    # below; the same as `crewbatch run --batch-api`).
    mode: Literal["live", "batch"] = "live"


class BatchSettings(_Strict):
    """`crewbatch run --batch-api`: every model request through the provider's Batch API."""

    # Tickets in flight (the run's concurrency in batch mode unless --concurrency is given): a
    # wave is the next request of every ticket in flight, so the default takes them all.
    concurrency: int = Field(1000, ge=1, le=10_000)
    # A wave is sent once every ticket in flight waits on a model request and none has asked for
    # `gather_s`; while the crew's CPU for a wave takes longer than `max_gather_s`, what has
    # gathered goes out every `max_gather_s` (README: Batch API has the measured trade of batches
    # against wall time).
    gather_s: float = Field(0.5, ge=0, le=600)
    max_gather_s: float = Field(10.0, gt=0, le=86_400)
    # Tickets running crew code at once between waves (batch.Turns): the others wait their turn,
    # so requests come out one ticket after another and a part-wave can go at `max_gather_s`.
    turns: int = Field(2, ge=1, le=256)
    poll_s: float = Field(30.0, gt=0, le=3600)          # how often a pending batch is looked at
    completion_window: str = "24h"
    # The provider's limits per batch file (OpenAI: 50,000 requests, 200 MB): a wave is split.
    max_requests: int = Field(50_000, ge=1, le=50_000)
    max_bytes: int = Field(200 * 1024 * 1024, ge=1024, le=200 * 1024 * 1024)


class RetrySettings(_Strict):
    max_attempts: int = Field(4, ge=1, le=10)
    repair_attempts: int = Field(1, ge=0, le=5)
    base_delay_s: float = Field(1.0, ge=0)
    max_delay_s: float = Field(30.0, ge=0)


class RateLimit(_Strict):
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)


class Price(_Strict):
    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)
    # Input tokens served from the provider's prompt cache; without it they cost the full price.
    cached_input_per_million: float | None = Field(None, ge=0)
    # The Batch API's prices (`--batch-api`): each given one, else the live price times
    # `batch_discount` (OpenAI and Anthropic bill batches at half price).
    batch_discount: float = Field(0.5, gt=0, le=1)
    batch_input_per_million: float | None = Field(None, ge=0)
    batch_cached_input_per_million: float | None = Field(None, ge=0)
    batch_output_per_million: float | None = Field(None, ge=0)


class Paths(_Strict):
    knowledge: str = "data/knowledge"
    orders: str = "data/orders.csv"
    runs: str = "runs"
    ledger: str = "runs/ledger.db"


class LedgerSettings(_Strict):
    # A PostgreSQL database for the ledger (postgresql://user@host:5432/dbname), for runs whose
    # workers are on several hosts; null = the SQLite file at `paths.ledger`. No password here:
    # CREWBATCH_DATABASE_URL (environment or .env) overrides the whole URL, or PGPASSWORD.
    url: str | None = None


class Limits(_Strict):
    max_body_chars: int = Field(20_000, ge=100)
    max_reply_chars: int = Field(4_000, ge=100)


class KnowledgeSettings(_Strict):
    # none = BM25 only (offline default); local = all-MiniLM-L6-v2 from the `[local]` extra;
    # any other name = an embedding model on the chat model's OpenAI-compatible endpoint.
    embedding_model: str = "none"
    fusion: Literal["weighted", "rrf"] = "weighted"   # how the two rankings combine (measured)


# The source formats --format and intake.format name (intake reads them); defined here, with the
# settings, so the command line offers them without importing the readers.
FORMATS = ("csv", "tsv", "jsonl", "mbox", "maildir", "eml")


class IntakeSettings(_Strict):
    format: str | None = None          # one of FORMATS; None = by suffix/content
    encoding: str | None = None        # None = detect
    columns: dict[str, str] = {}       # crewbatch field -> the export's column name
    # A symlink inside a mail folder or matched by a glob is rejected unless this is true (a link
    # to .env or /etc/shadow must never become a ticket body); FIFOs and devices are never opened.
    follow_symlinks: bool = False


class Settings(_Strict):
    llm: LLMSettings = LLMSettings()
    intake: IntakeSettings = IntakeSettings()
    batch_size: int = Field(20, ge=1, le=10_000)
    concurrency: int = Field(4, ge=1, le=256)
    workers: int = Field(1, ge=1, le=64)
    revision_limit: int = Field(2, ge=0, le=10)
    sources: list[str] = []
    paths: Paths = Paths()
    ledger: LedgerSettings = LedgerSettings()
    limits: Limits = Limits()
    pricing: dict[str, Price] = {}
    batch: BatchSettings = BatchSettings()
    retry: RetrySettings = RetrySettings()
    rate_limits: dict[str, RateLimit] = {}
    ticket_timeout_s: float = Field(600.0, gt=0)
    # After SIGTERM/Ctrl-C, in-flight tickets get this long to finish; then the run is recorded
    # as interrupted and the process exits 3 whatever it is blocked on (a second signal: at once).
    stop_grace_s: float = Field(60.0, gt=0)
    # A worker silent this long is declared dead and its tickets go to the live workers.
    lease_s: float = Field(30.0, ge=1, le=600)
    log_json: bool = False
    research_lookups: bool = True
    knowledge: KnowledgeSettings = KnowledgeSettings()
    # What the ledger keeps of every model request, for `crewbatch replay`: `full` (the request's
    # content and its response), `responses` (the request's hash and parts' hashes, and the
    # response: replays just as well, but cannot show a changed prompt's old words) or `off`.
    recording: Literal["full", "responses", "off"] = "full"

    @field_validator("recording", mode="before")
    @classmethod
    def _off_is_not_false(cls, value: Any) -> Any:
        # YAML reads a bare `off` as the boolean false.
        return "off" if value is False else value

    @field_validator("llm", mode="before")
    @classmethod
    def _llm_may_be_a_name(cls, value: Any) -> Any:
        # `llm: offline` is shorthand for `llm: {model: offline}`.
        return {"model": value} if isinstance(value, str) else value


# --- agents.yaml / tasks.yaml / policy.yaml ------------------------------------------------------


class AgentSpec(_Strict):
    role: str
    goal: str
    backstory: str
    tools: list[str] = []
    llm: str | None = None
    max_iter: int = Field(6, ge=1, le=50)
    verbose: bool = False


class TaskSpec(_Strict):
    description: str
    expected_output: str
    agent: str
    context: list[str] = []
    output_pydantic: str | None = None


class CustomerRefundCap(_Strict):
    """Automatic refunds one customer may get in a rolling period, across tickets and runs."""

    period_days: int = Field(30, ge=1)
    max_refunds: int = Field(2, ge=0)
    max_amount: float = Field(100.0, ge=0)   # per currency


class RefundPolicy(_Strict):
    auto_approve_limit: float = Field(50.0, ge=0)
    max_refunds_per_ticket: int = Field(1, ge=0)
    # Across tickets and runs, checked against the ledger: an order is never refunded beyond its
    # total, and gets at most this many automatic refunds (a person may approve more).
    max_auto_refunds_per_order: int = Field(1, ge=0)
    per_customer: CustomerRefundCap = CustomerRefundCap()


class EscalationKind(_Strict):
    """One kind of ticket a person must see: why, and the phrases (regexes) that show it."""

    reason: str
    phrases: dict[str, list[str]]   # language -> case-insensitive regular expressions

    def pattern(self) -> re.Pattern:
        return re.compile("|".join(f"(?:{ph})" for phs in self.phrases.values() for ph in phs),
                          re.IGNORECASE)


ESCALATE_KINDS = ["threat", "legal", "data_protection", "chargeback", "fraud",
                  "account_takeover", "safety", "self_harm"]


class Policy(_Strict):
    refunds: RefundPolicy = RefundPolicy()
    require_customer_match: bool = True
    allowed_actions: list[str] = list(ACTION_TOOLS)
    queues: list[str] = ["general"]
    escalate_categories: list[str] = []
    # Kinds of config/escalation.yaml that always go to a person (nothing sent automatically).
    escalate_kinds: list[str] = list(ESCALATE_KINDS)
    # A gate check's severity (critical | major | minor | info) or `off`, by check name.
    checks: dict[str, str] = {}

    @field_validator("allowed_actions")
    @classmethod
    def _known_actions(cls, value: list[str]) -> list[str]:
        unknown = [a for a in value if a not in ACTION_TOOLS]
        if unknown:
            raise ValueError(
                f"unknown action(s) {', '.join(unknown)}; known actions: {', '.join(ACTION_TOOLS)}"
            )
        return value


@dataclass
class Config:
    root: Path
    settings: Settings
    agents: dict[str, AgentSpec]
    tasks: dict[str, TaskSpec]
    policy: Policy
    escalation: dict[str, EscalationKind] = field(default_factory=dict)
    taxonomy: Taxonomy | None = None
    # CREWBATCH_DATABASE_URL, else settings `ledger.url` (`database_url` merges them); None = SQLite.
    database_url: str | None = None

    def path(self, relative: str) -> Path:
        """A configured path, resolved from the project root (never the working directory)."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def knowledge_dir(self) -> Path:
        return self.path(self.settings.paths.knowledge)

    @property
    def orders_file(self) -> Path:
        return self.path(self.settings.paths.orders)

    @property
    def runs_dir(self) -> Path:
        return self.path(self.settings.paths.runs)

    @property
    def ledger_file(self) -> Path:
        return self.path(self.settings.paths.ledger)

    @property
    def ledger_url(self) -> str:
        """What `Ledger(...)` opens: the PostgreSQL URL, else the SQLite file's path."""
        return self.database_url or str(self.ledger_file)

    @property
    def ledger_name(self) -> str:
        """The ledger as messages, logs and reports name it: never with its password."""
        from .ledger import redact_url

        return redact_url(self.database_url) if self.database_url else str(self.ledger_file)

    def model_for(self, role: str, default_model: str) -> str:
        override = self.agents[role].llm
        return override or default_model


# --- the project root ----------------------------------------------------------------------------


def find_root(explicit: str | os.PathLike | None = None, cwd: Path | None = None) -> Path:
    """`--root`, else CREWBATCH_ROOT, else the nearest directory at or above cwd with config/settings.yaml."""
    chosen = explicit or os.environ.get("CREWBATCH_ROOT")
    if chosen:
        root = Path(chosen).expanduser().resolve()
        if not (root / SETTINGS_FILE).is_file():
            raise ConfigError(
                [f"{root}: no {SETTINGS_FILE} there; point --root (or CREWBATCH_ROOT) at the "
                 "crewbatch project directory, the one holding config/settings.yaml"]
            )
        return root
    start = (cwd or Path.cwd()).resolve()
    for candidate in (start, *start.parents):
        if (candidate / SETTINGS_FILE).is_file():
            return candidate
    raise ConfigError(
        [f"{start}: no {SETTINGS_FILE} here or in any parent directory; run crewbatch inside the "
         "project, or pass --root DIR (or set CREWBATCH_ROOT)"]
    )


# --- loading -------------------------------------------------------------------------------------


def _read_yaml(root: Path, name: str, problems: list[str], required: bool = True) -> Any:
    path = root / name
    if not path.is_file():
        if required:
            problems.append(f"{name}: file is missing; restore it from the crewbatch repository")
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problems.append(f"{name}{where}: not valid YAML: {getattr(exc, 'problem', exc)}; fix the syntax")
        return None
    except UnicodeDecodeError:
        problems.append(f"{name}: not UTF-8 text; save it as UTF-8")
        return None
    if data is None:
        problems.append(f"{name}: file is empty; it must define the keys documented in README.md")
    return data


def _suggest(word: str, choices) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean `{match[0]}`?)" if match else ""


def _describe(name: str, prefix: str, model: type[BaseModel], err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join([prefix, *loc] if prefix else loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            parent = _model_at(model, e["loc"][:-1])
            allowed = sorted(parent.model_fields) if parent else []
            out.append(
                f"{name}: unknown key `{key}`{_suggest(loc[-1], allowed)}; "
                f"allowed keys here: {', '.join(allowed)}"
            )
        elif e["type"] == "missing":
            out.append(f"{name}: `{key}` is required; add it")
        else:
            out.append(f"{name}: `{key}`: {e['msg']} (got {e.get('input')!r}); fix the value")
    return out


def _model_at(model: type[BaseModel], loc) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `loc`, for listing the keys it allows."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        fld = getattr(current, "model_fields", {}).get(part)
        if fld is None:
            # a dict[str, Model] value: the key is a name, the model is the dict's value type
            args = getattr(current, "__args__", None)
            current = args[-1] if args else None
            continue
        annotation = fld.annotation
        args = getattr(annotation, "__args__", None)
        current = args[-1] if args and not isinstance(annotation, type) else annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def load_model(name: str, data: Any, model: type[BaseModel], problems: list[str], keys: str):
    """A YAML file's content validated as `model`, or None with every problem listed (a file
    that is missing or empty was reported by `_read_yaml` already)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        problems.append(f"{name}: must be a mapping {keys}")
        return None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems.extend(_describe(name, "", model, err))
        return None


def _load_mapping(name, data, model, problems, what) -> tuple[dict[str, Any], set[str]]:
    """The valid entries, and every name defined (valid or not, so cross-checks don't cascade)."""
    if data is None:
        return {}, set()
    if not isinstance(data, dict):
        problems.append(f"{name}: must be a mapping of {what} names to their settings")
        return {}, set()
    loaded = {}
    for key, body in data.items():
        if not isinstance(body, dict):
            problems.append(f"{name}: `{key}` must be a mapping of keys such as "
                            f"{', '.join(list(model.model_fields)[:3])}")
            continue
        try:
            loaded[key] = model.model_validate(body)
        except ValidationError as err:
            problems.extend(_describe(name, str(key), model, err))
    return loaded, {str(k) for k in data}


def _placeholders(text: str) -> set[str]:
    names = set()
    try:
        for _, field_name, _, _ in string.Formatter().parse(text):
            if field_name is not None:
                names.add(field_name)
    except ValueError:
        names.add("{")  # an unbalanced brace; reported by the caller
    return names


def load_config(root: Path, check_files: bool = True) -> Config:
    """Load and cross-check every config file; raise ConfigError listing every problem found."""
    problems: list[str] = []

    settings = load_model(SETTINGS_FILE, _read_yaml(root, SETTINGS_FILE, problems), Settings,
                          problems, "of keys (llm, batch_size, ...)") or Settings()

    agents, agent_names = _load_mapping(AGENTS_FILE, _read_yaml(root, AGENTS_FILE, problems),
                                        AgentSpec, problems, "agent")
    tasks, task_names = _load_mapping(TASKS_FILE, _read_yaml(root, TASKS_FILE, problems),
                                      TaskSpec, problems, "task")

    policy = load_model(POLICY_FILE, _read_yaml(root, POLICY_FILE, problems), Policy, problems,
                        "of keys (refunds, allowed_actions, queues, ...)") or Policy()

    _check_agents(agents, agent_names, problems)
    _check_tasks(tasks, task_names, agent_names, agents, problems)
    escalation = _load_escalation(root, policy, problems)
    taxonomy = _load_taxonomy(root, policy, problems)
    from .gate.registry import override_problems

    problems.extend(override_problems(policy.checks, POLICY_FILE))

    config = Config(root, settings, agents, tasks, policy, escalation, taxonomy,
                    database_url(settings, os.environ, problems))
    if check_files:
        _check_files(config, problems)
    if problems:
        raise ConfigError(problems)
    return config


DATABASE_URL_ENV = "CREWBATCH_DATABASE_URL"


def database_url(settings: Settings, environ, problems: list[str]) -> str | None:
    """The ledger's PostgreSQL URL: CREWBATCH_DATABASE_URL > settings `ledger.url`; None = the
    SQLite file. A URL is checked, never echoed with its password."""
    from .ledger import POSTGRES_SCHEMES, redact_url

    fix = "postgresql://USER@HOST:5432/DBNAME"
    configured = settings.ledger.url or None
    if configured and not configured.lower().startswith(POSTGRES_SCHEMES):
        problems.append(f"{SETTINGS_FILE}: `ledger.url` is {redact_url(configured)!r}, not a "
                        f"PostgreSQL URL; write it as {fix}, or remove it for the SQLite ledger "
                        f"at `paths.ledger`")
    elif configured and redact_url(configured) != configured:
        problems.append(f"{SETTINGS_FILE}: `ledger.url` holds a password; config/ is no place for "
                        f"a secret — put the whole URL in {DATABASE_URL_ENV} (environment or "
                        ".env) or the password in PGPASSWORD or ~/.pgpass, and keep "
                        f"{redact_url(configured).replace(':***@', '@')!r} here")
    env = environ.get(DATABASE_URL_ENV) or None
    if env and not env.lower().startswith(POSTGRES_SCHEMES):
        problems.append(f"environment: {DATABASE_URL_ENV}={redact_url(env)!r} is not a "
                        f"PostgreSQL URL; write it as {fix}, or unset it")
    return env or configured


def _load_escalation(root: Path, policy: Policy, problems: list[str]
                     ) -> dict[str, EscalationKind]:
    """config/escalation.yaml: every kind policy.yaml escalates must be defined, and every
    phrase must compile."""
    kinds, defined = _load_mapping(ESCALATION_FILE, _read_yaml(root, ESCALATION_FILE, problems),
                                   EscalationKind, problems, "escalation kind")
    for kind, spec in kinds.items():
        for lang, phrases in spec.phrases.items():
            for phrase in phrases:
                try:
                    re.compile(phrase)
                except re.error as exc:
                    problems.append(f"{ESCALATION_FILE}: `{kind}.phrases.{lang}`: {phrase!r} is "
                                    f"not a valid regular expression ({exc}); fix it")
    for kind in policy.escalate_kinds:
        if defined and kind not in defined:
            problems.append(f"{POLICY_FILE}: `escalate_kinds` names `{kind}`, which "
                            f"{ESCALATION_FILE} does not define{_suggest(kind, defined)}; the "
                            f"kinds are {', '.join(sorted(defined))}")
    return kinds


def _load_taxonomy(root: Path, policy: Policy, problems: list[str]) -> Taxonomy | None:
    """config/taxonomy.yaml, and the policy's queues and escalated categories checked against it."""
    taxonomy = load_model(TAXONOMY_FILE, _read_yaml(root, TAXONOMY_FILE, problems), Taxonomy,
                          problems, "with the keys categories, priorities, queues and offline")
    if taxonomy is None:
        return None
    found = taxonomy_problems(taxonomy)
    for queue in policy.queues:
        if queue not in taxonomy.queues:
            found.append(f"{POLICY_FILE}: `queues` names `{queue}`, which {TAXONOMY_FILE} does not "
                         f"define{_suggest(queue, taxonomy.queues)}; its queues are "
                         f"{', '.join(taxonomy.queues)}")
    for category in policy.escalate_categories:
        if category not in taxonomy.categories:
            found.append(f"{POLICY_FILE}: `escalate_categories` names `{category}`, which "
                         f"{TAXONOMY_FILE} does not define{_suggest(category, taxonomy.categories)}"
                         f"; its categories are {', '.join(taxonomy.categories)}")
    for name, spec in taxonomy.categories.items():
        if spec.queue in taxonomy.queues and spec.queue not in policy.queues:
            found.append(f"{TAXONOMY_FILE}: category `{name}` goes to queue `{spec.queue}`, which "
                         f"{POLICY_FILE} `queues` does not allow; add it there ({TAG_TICKET} would "
                         "refuse it)")
    problems.extend(found)
    return None if found else taxonomy


def _check_agents(agents: dict[str, AgentSpec], names: set[str], problems: list[str]) -> None:
    if not names:
        return
    for role in ROLES:
        if role not in names:
            problems.append(f"{AGENTS_FILE}: agent `{role}` is missing{_suggest(role, names)}; "
                            f"crewbatch needs the four roles {', '.join(ROLES)}")
    for name in sorted(names):
        if name not in ROLES:
            problems.append(f"{AGENTS_FILE}: agent `{name}` is not one of the four roles "
                            f"{', '.join(ROLES)}{_suggest(name, ROLES)}; rename or remove it")
    known = set(RESEARCH_TOOLS) | set(EXECUTOR_TOOLS)
    for name, spec in agents.items():
        for tool in spec.tools:
            if tool not in known:
                problems.append(f"{AGENTS_FILE}: agent `{name}` lists tool `{tool}`, which does not "
                                f"exist{_suggest(tool, known)}; known tools: {', '.join(sorted(known))}")
            elif tool in EXECUTOR_TOOLS and name != "executor":
                problems.append(f"{AGENTS_FILE}: agent `{name}` lists action tool `{tool}`; only the "
                                "executor may act (remove it from this agent)")


def _check_tasks(tasks: dict[str, TaskSpec], names: set[str], agent_names: set[str],
                 agents: dict[str, AgentSpec], problems: list[str]) -> None:
    if not names:
        return
    for step in STEPS:
        if step not in names:
            problems.append(f"{TASKS_FILE}: task `{step}` is missing{_suggest(step, names)}; "
                            f"crewbatch runs the tasks {', '.join(STEPS)} in that order")
    for name in sorted(names):
        if name not in STEPS:
            problems.append(f"{TASKS_FILE}: task `{name}` is not one of {', '.join(STEPS)}"
                            f"{_suggest(name, STEPS)}; rename or remove it")
    for name, spec in tasks.items():
        if agent_names and spec.agent not in agent_names:
            problems.append(f"{TASKS_FILE}: task `{name}` names agent `{spec.agent}`, which is not "
                            f"in {AGENTS_FILE}{_suggest(spec.agent, agent_names)}")
        if name not in STEPS:
            continue
        earlier = STEPS[: STEPS.index(name)]
        for ctx in spec.context:
            if ctx not in earlier:
                problems.append(f"{TASKS_FILE}: task `{name}` has `{ctx}` in its context, but only "
                                f"earlier tasks can be: {', '.join(earlier) or '(none)'}")
        allowed = STEP_PLACEHOLDERS[name]
        for text_key in ("description", "expected_output"):
            for ph in sorted(_placeholders(getattr(spec, text_key))):
                if ph == "{":
                    problems.append(f"{TASKS_FILE}: task `{name}` {text_key} has an unbalanced brace; "
                                    "write a literal brace as {{ or }}")
                elif ph not in allowed:
                    problems.append(f"{TASKS_FILE}: task `{name}` {text_key} uses {{{ph}}}, which is not "
                                    f"available here{_suggest(ph, allowed)}; available: "
                                    f"{', '.join('{' + a + '}' for a in sorted(allowed))}")
                elif ph in OUTPUT_PLACEHOLDERS and OUTPUT_PLACEHOLDERS[ph] not in spec.context:
                    problems.append(f"{TASKS_FILE}: task `{name}` uses {{{ph}}} but `"
                                    f"{OUTPUT_PLACEHOLDERS[ph]}` is not in its context; add "
                                    f"`context: [{OUTPUT_PLACEHOLDERS[ph]}]`")
        expected = STRUCTURED_OUTPUTS.get(name)
        if spec.output_pydantic != expected:
            want = f"`output_pydantic: {expected}`" if expected else "no output_pydantic"
            problems.append(f"{TASKS_FILE}: task `{name}` has output_pydantic "
                            f"`{spec.output_pydantic}`; this step needs {want}")
    if "execute" in tasks and agents and tasks["execute"].agent in agents:
        tools = agents[tasks["execute"].agent].tools
        if not any(t in EXECUTOR_TOOLS for t in tools):
            problems.append(f"{AGENTS_FILE}: agent `{tasks['execute'].agent}` runs task `execute` but "
                            f"has no action tools; give it {BATCH_TOOL} or some of "
                            f"{', '.join(ACTION_TOOLS)}")


def _check_files(config: Config, problems: list[str]) -> None:
    kdir = config.knowledge_dir
    if not kdir.is_dir():
        problems.append(f"{SETTINGS_FILE}: `paths.knowledge` is {config.settings.paths.knowledge}, "
                        f"but {kdir} is not a directory; create it with your policy and FAQ files")
    elif not any(p.suffix.lower() in (".md", ".txt") for p in kdir.rglob("*")):
        problems.append(f"{SETTINGS_FILE}: `paths.knowledge` ({kdir}) holds no .md or .txt files; "
                        "add your policies and FAQ there")
    if not config.orders_file.is_file():
        problems.append(f"{SETTINGS_FILE}: `paths.orders` is {config.settings.paths.orders}, but "
                        f"{config.orders_file} does not exist; point it at your orders CSV")


# --- one precedence order ------------------------------------------------------------------------

# The environment layer is read here, not by click's `envvar=` (tried, click 8.5: its message
# for CREWBATCH_CONCURRENCY=many names the variable well, but it reads a variable only for a
# command that has the option). The layer has to hold for every command that resolves options:
# `check` has no --model yet must check CREWBATCH_MODEL's key, and `retry`, `replay` and `eval`
# take CREWBATCH_BATCH_SIZE, _REVISION_LIMIT and _WORKERS without those options. With `envvar=`
# the same variable would be read in two places (click for `run`, this loop for the rest), or
# cron's CREWBATCH_REVISION_LIMIT would silently not apply to a `retry`. One loop, one message.
ENV_OPTIONS = {
    "model": "CREWBATCH_MODEL",
    "concurrency": "CREWBATCH_CONCURRENCY",
    "batch_size": "CREWBATCH_BATCH_SIZE",
    "revision_limit": "CREWBATCH_REVISION_LIMIT",
    "workers": "CREWBATCH_WORKERS",
}


@dataclass(frozen=True)
class RunOptions:
    model: str
    concurrency: int
    batch_size: int
    revision_limit: int
    limit: int | None = None
    reprocess: bool = False
    max_cost: float | None = None
    max_minutes: float | None = None
    workers: int = 1
    # Tickets one process (this one, a --workers process or a `crewbatch worker`) works at once;
    # None = concurrency / workers.
    worker_concurrency: int | None = None
    new_ledger: bool = False  # start a new ledger although earlier run folders exist
    # False (only `crewbatch eval`): the crew decides every action, nothing is carried out.
    side_effects: bool = True
    # Every model request through the provider's Batch API (`--batch-api`, `llm.mode: batch`).
    batch_api: bool = False


def resolve_options(config: Config, cli: dict[str, Any], environ=os.environ) -> RunOptions:
    """Command-line option > environment variable > config/settings.yaml > default, in one place."""
    s = config.settings
    base = {"model": s.llm.model, "concurrency": s.concurrency, "batch_size": s.batch_size,
            "revision_limit": s.revision_limit, "workers": s.workers}
    problems = []
    for key, var in ENV_OPTIONS.items():
        raw = environ.get(var)
        if raw in (None, ""):
            continue
        if key == "model":
            base[key] = raw
            continue
        try:
            value = int(raw)
            if value < 1 and key != "revision_limit":
                raise ValueError
            base[key] = value
        except ValueError:
            problems.append(f"environment: {var}={raw!r} is not a positive whole number; fix or unset it")
    if problems:
        raise ConfigError(problems)
    for key in base:
        if cli.get(key) is not None:
            base[key] = cli[key]
    if cli.get("offline"):
        base["model"] = OFFLINE
    batch_api = bool(cli.get("batch_api")) or s.llm.mode == "batch"
    if batch_api and base["model"] == OFFLINE:
        if cli.get("batch_api"):
            raise ConfigError(["--batch-api sends requests to a provider's Batch API, but the "
                               "model is `offline` (answered in-process): drop --offline or "
                               "name a model with --model"])
        batch_api = False  # `llm.mode: batch` with --offline: the offline model has no batches
    if batch_api and cli.get("concurrency") is None and not environ.get("CREWBATCH_CONCURRENCY"):
        base["concurrency"] = s.batch.concurrency  # a wave takes every ticket it can
    if not batch_api and base["concurrency"] > 256:
        problems.append(f"--concurrency {base['concurrency']}: at most 256 tickets in flight "
                        "live (each is a thread); more only with --batch-api")
        raise ConfigError(problems)
    if batch_api and base["workers"] > 1:
        raise ConfigError(["--batch-api runs in one process (a wave is one batch): use "
                           "--workers 1 (or unset `workers` in config/settings.yaml)"])
    return RunOptions(batch_api=batch_api, limit=cli.get("limit"), reprocess=bool(cli.get("reprocess")),
                      max_cost=cli.get("max_cost"), max_minutes=cli.get("max_minutes"),
                      new_ledger=bool(cli.get("new_ledger")),
                      worker_concurrency=cli.get("worker_concurrency"), **base)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "x"
