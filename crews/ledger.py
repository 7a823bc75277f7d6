"""The run ledger: the only shared state of crewbatch, and the only module that speaks SQL.

It is the resume point (every input record has an outcome row from the moment it is read), the
idempotency store (ticket key + content hash; one row per performed side effect), the audit trail
(an append-only event per state transition, written in the same transaction as the change) and the
source of every export. SQLite in WAL mode by default, so `export` and `show` read while a run
writes; PostgreSQL (psycopg 3) when `ledger.url` / CREWBATCH_DATABASE_URL names one, for runs that
span hosts. One code path serves both: the SQL is written in the subset both accept (`?`
placeholders, `ON CONFLICT DO NOTHING`, `RETURNING`), and the few differences — column types in
the migrations, row locks where SQLite relies on its single writer, error wording — are the
`_Dialect` tables below. Schema changes are numbered migrations applied on open.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import threading
import time
import types
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .ticket import DONE, PENDING, RUNNING, Rejection, RunStatus, Status, Ticket

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
-- One row per `crewbatch run`: what `crewbatch runs` lists and what a later run resumes from.
CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,
    started_utc   TEXT NOT NULL,
    finished_utc  TEXT,
    status        TEXT NOT NULL, -- RunStatus: running, completed, stopped, interrupted, crashed
    model         TEXT NOT NULL,
    options_json  TEXT NOT NULL,
    sources_json  TEXT NOT NULL,
    exit_code     INTEGER
);

-- Each distinct ticket content ever read; (ticket_key, content_hash) is the idempotency key,
-- and the stored body is what `crewbatch retry` re-runs from.
CREATE TABLE tickets (
    ticket_key     TEXT NOT NULL,
    content_hash   TEXT NOT NULL,
    ticket_id      TEXT NOT NULL,
    received_at    TEXT NOT NULL,
    customer       TEXT NOT NULL,
    customer_name  TEXT NOT NULL,
    subject        TEXT NOT NULL,
    body           TEXT NOT NULL,
    extra_json     TEXT NOT NULL,
    first_seen_utc TEXT NOT NULL,
    PRIMARY KEY (ticket_key, content_hash)
);

-- One row per input record per run: its status from pending to final, and the reviewable result.
CREATE TABLE outcomes (
    outcome_id          INTEGER PRIMARY KEY,
    run_id              TEXT NOT NULL REFERENCES runs(run_id),
    record_no           INTEGER NOT NULL,
    source              TEXT NOT NULL,
    ticket_id           TEXT NOT NULL,
    ticket_key          TEXT,
    content_hash        TEXT,
    status              TEXT NOT NULL,
    reason              TEXT NOT NULL DEFAULT '',
    category            TEXT NOT NULL DEFAULT '',
    priority            TEXT NOT NULL DEFAULT '',
    language            TEXT NOT NULL DEFAULT '',
    draft_reply         TEXT NOT NULL DEFAULT '',
    critic_verdict      TEXT NOT NULL DEFAULT '',
    critic_notes        TEXT NOT NULL DEFAULT '',
    revisions           INTEGER NOT NULL DEFAULT 0,
    actions_json        TEXT NOT NULL DEFAULT '[]',
    needs_human_reason  TEXT NOT NULL DEFAULT '',
    model               TEXT NOT NULL DEFAULT '',
    prompt_tokens       INTEGER NOT NULL DEFAULT 0,
    completion_tokens   INTEGER NOT NULL DEFAULT 0,
    cost_usd            REAL NOT NULL DEFAULT 0,
    duration_ms         INTEGER NOT NULL DEFAULT 0,
    error               TEXT NOT NULL DEFAULT '',
    decision            TEXT NOT NULL DEFAULT '',
    reviewer_note       TEXT NOT NULL DEFAULT '',
    updated_utc         TEXT NOT NULL,
    UNIQUE (run_id, record_no, source)
);
CREATE INDEX outcomes_by_ticket ON outcomes (ticket_key, content_hash, status);

-- Every agent output of every round, for `crewbatch show` and for auditing a verdict.
CREATE TABLE steps (
    step_id            INTEGER PRIMARY KEY,
    outcome_id         INTEGER NOT NULL REFERENCES outcomes(outcome_id),
    round              INTEGER NOT NULL,
    step               TEXT NOT NULL,       -- research | draft | review | execute
    agent              TEXT NOT NULL,
    model              TEXT NOT NULL,
    output_text        TEXT NOT NULL,
    output_json        TEXT NOT NULL DEFAULT '',
    prompt_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens  INTEGER NOT NULL DEFAULT 0,
    duration_ms        INTEGER NOT NULL DEFAULT 0,
    created_utc        TEXT NOT NULL
);
CREATE INDEX steps_by_outcome ON steps (outcome_id);

-- Each action the writer proposed and what the policy-bound executor decided about it.
CREATE TABLE actions (
    action_id    INTEGER PRIMARY KEY,
    outcome_id   INTEGER NOT NULL REFERENCES outcomes(outcome_id),
    kind         TEXT NOT NULL,
    args_json    TEXT NOT NULL,
    decision     TEXT NOT NULL,             -- performed | refused | not_run
    reason       TEXT NOT NULL DEFAULT '',
    created_utc  TEXT NOT NULL
);
CREATE INDEX actions_by_outcome ON actions (outcome_id);

-- One row per side effect ever carried out, so no reply or refund request happens twice.
CREATE TABLE side_effects (
    idempotency_key  TEXT PRIMARY KEY,
    outcome_id       INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    detail           TEXT NOT NULL,
    performed_utc    TEXT NOT NULL
);

-- Append-only trail of every state transition, written with the change it describes.
CREATE TABLE events (
    event_id     INTEGER PRIMARY KEY,
    run_id       TEXT NOT NULL,
    outcome_id   INTEGER,
    at_utc       TEXT NOT NULL,
    from_status  TEXT NOT NULL DEFAULT '',
    to_status    TEXT NOT NULL,
    detail       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_by_outcome ON events (outcome_id);
"""),
    (2, """
-- One row per model request, attributed to ticket, step and agent: exact accounting under
-- concurrency (CrewAI's own totals are wrong in batch use) and the source of cost by agent.
CREATE TABLE model_calls (
    call_id            INTEGER PRIMARY KEY,
    outcome_id         INTEGER NOT NULL REFERENCES outcomes(outcome_id),
    round              INTEGER NOT NULL,
    step               TEXT NOT NULL,
    agent              TEXT NOT NULL,
    model              TEXT NOT NULL,
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL,
    cost_usd           REAL NOT NULL,
    created_utc        TEXT NOT NULL
);
CREATE INDEX model_calls_by_outcome ON model_calls (outcome_id);
ALTER TABLE steps ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outcomes ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN detail TEXT NOT NULL DEFAULT ''
"""),
    (3, """
-- E-mail tickets carry their thread: `crewbatch retry` must re-run them with it.
ALTER TABLE tickets ADD COLUMN history TEXT NOT NULL DEFAULT '';
ALTER TABLE tickets ADD COLUMN attachments_json TEXT NOT NULL DEFAULT '[]';
ALTER TABLE tickets ADD COLUMN messages INTEGER NOT NULL DEFAULT 1
"""),
    (4, """
-- Every refund requested, automatically or by a reviewer, across tickets and runs: what the
-- per-order and per-customer caps of config/policy.yaml are checked against, in the same
-- transaction that adds a new one (so two tickets racing for one order cannot both pass).
CREATE TABLE refunds (
    idempotency_key  TEXT PRIMARY KEY,
    outcome_id       INTEGER NOT NULL,
    order_id         TEXT NOT NULL,
    customer         TEXT NOT NULL,
    amount           REAL NOT NULL,
    currency         TEXT NOT NULL,
    automatic        INTEGER NOT NULL,      -- 1: no person approved it
    requested_utc    TEXT NOT NULL
);
CREATE INDEX refunds_by_order ON refunds (order_id);
CREATE INDEX refunds_by_customer ON refunds (customer, requested_utc);
INSERT INTO refunds (idempotency_key, outcome_id, order_id, customer, amount, currency, automatic,
                     requested_utc)
    SELECT 'before-migration-4:' || a.action_id, a.outcome_id,
           UPPER(json_extract(a.args_json, '$.order_id')), t.customer,
           CAST(json_extract(a.args_json, '$.amount') AS REAL),
           UPPER(COALESCE(json_extract(a.args_json, '$.currency'), '')), 1, a.created_utc
    FROM actions a JOIN outcomes o ON o.outcome_id = a.outcome_id
    JOIN tickets t ON t.ticket_key = o.ticket_key AND t.content_hash = o.content_hash
    WHERE a.kind = 'request_refund' AND a.decision = 'performed'
"""),
    (5, """
-- Recorded model traffic (settings `recording`), content-addressed: each distinct request part
-- (a request's manifest, a chunk of a message, a tool list, a response schema) and each response
-- is one row, keyed by a hash of its content and zlib-compressed when that is smaller. What
-- `crewbatch replay` answers from; a request's `model_calls` row names its manifest and response.
CREATE TABLE blobs (
    blob_hash   TEXT PRIMARY KEY,
    compressed  INTEGER NOT NULL,           -- 1: zlib
    size_bytes  INTEGER NOT NULL,           -- before compression
    data        BLOB NOT NULL
);
-- A request's place in its ticket, its manifest and response ('' = not recorded), and whether
-- a recording answered it (then it cost nothing).
ALTER TABLE model_calls ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE model_calls ADD COLUMN request_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE model_calls ADD COLUMN response_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE model_calls ADD COLUMN replayed INTEGER NOT NULL DEFAULT 0;
-- A replay (`crewbatch replay`) re-runs another run's tickets; its side effects are simulated,
-- so its outcomes never make a later run skip a ticket.
ALTER TABLE runs ADD COLUMN replay_of TEXT
"""),
    (6, """
-- Every process working a run (the run's own, `--workers`, `crewbatch worker` on other hosts),
-- with its heartbeat: a worker silent for a lease is declared `dead` by a live peer, which takes
-- its tickets over (crews/engine.py). beat_s is seconds since the epoch (the hosts' clocks).
CREATE TABLE workers (
    executor_id  TEXT PRIMARY KEY,
    run_id       TEXT NOT NULL REFERENCES runs(run_id),
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    role         TEXT NOT NULL,             -- run | worker
    state        TEXT NOT NULL,             -- working | left | dead
    joined_utc   TEXT NOT NULL,
    beat_s       REAL NOT NULL
);
CREATE INDEX workers_run ON workers (run_id, state);
-- The worker holding a running ticket: only it may record the ticket's result (a fence against
-- a worker that was cut off while its ticket was handed to another).
ALTER TABLE outcomes ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
-- The ticket's DBOS workflow, and the outcome of a later run that resumed this unfinished one
-- from its checkpoints (since migration 8 in `checkpoints`; before, DBOS steps).
ALTER TABLE outcomes ADD COLUMN workflow_id TEXT NOT NULL DEFAULT '';
ALTER TABLE outcomes ADD COLUMN resumed_by INTEGER;
-- Why the run's workers must start no new ticket (budget, time limit, a stop signal), or ''.
ALTER TABLE runs ADD COLUMN stop_requested TEXT NOT NULL DEFAULT '';
-- A provider's Retry-After, seen by every worker on every host: no request to `model` before
-- until_s (seconds since the epoch).
CREATE TABLE model_pauses (
    model    TEXT PRIMARY KEY,
    until_s  REAL NOT NULL
);
-- Every worker's requests to a rate-limited model in the last minute: its requests- and
-- tokens-per-minute limits hold for the whole fleet, not per process (crews/engine.py).
CREATE TABLE model_requests (
    request_id  INTEGER PRIMARY KEY,
    model       TEXT NOT NULL,
    at_s        REAL NOT NULL,              -- seconds since the epoch
    tokens      INTEGER NOT NULL
);
CREATE INDEX model_requests_at ON model_requests (model, at_s)
"""),
    (7, """
-- Every Batch API batch a run prepared (`crewbatch run --batch-api`), written before anything is
-- uploaded: its input file and the provider's batch id are recorded as soon as they exist, so a
-- run stopped or killed while it is pending resumes polling it instead of submitting it again.
-- wait_s is from submission to the provider's final status.
CREATE TABLE batches (
    batch_no        INTEGER PRIMARY KEY,
    run_id          TEXT NOT NULL,
    model           TEXT NOT NULL,
    state           TEXT NOT NULL,          -- preparing | uploaded | submitted | completed | expired | cancelled | failed | abandoned
    input_file_id   TEXT NOT NULL DEFAULT '',
    batch_id        TEXT NOT NULL DEFAULT '',
    output_file_id  TEXT NOT NULL DEFAULT '',
    error_file_id   TEXT NOT NULL DEFAULT '',
    requests        INTEGER NOT NULL,
    size_bytes      INTEGER NOT NULL,
    created_utc     TEXT NOT NULL,
    submitted_utc   TEXT,
    finished_utc    TEXT,
    wait_s          REAL,
    detail          TEXT NOT NULL DEFAULT ''
);
CREATE INDEX batches_by_run ON batches (run_id);
CREATE INDEX batches_by_state ON batches (state);
-- Each request of a batch, by its custom_id (ticket, round, step, request, attempt and a hash of
-- the request: the same across a crash), and once downloaded its answer — the line's HTTP status
-- and body (a chat.completion, or the error) — which answers it from then on: a downloaded line is
-- never requested again. status_code 0 = the batch ended without answering the line.
CREATE TABLE batch_requests (
    custom_id       TEXT PRIMARY KEY,
    batch_no        INTEGER NOT NULL REFERENCES batches(batch_no),
    outcome_id      INTEGER NOT NULL,
    status_code     INTEGER,
    response_json   TEXT,
    answered_utc    TEXT
);
CREATE INDEX batch_requests_by_batch ON batch_requests (batch_no)
"""),
    (8, """
-- Each model request of a ticket being worked, checkpointed as its answer arrives (the engine's
-- durable step): a ticket resumed after a crash, a stop or a worker's death is answered from here
-- up to the request that was in flight, instead of asking the model again. `seq` is the request's
-- place in the ticket, from 1. A ticket's rows pass to the outcome that resumes it and go when
-- its result is recorded (the recording, model_calls and blobs, keeps what audit and replay need).
CREATE TABLE checkpoints (
    outcome_id     INTEGER NOT NULL,
    seq            INTEGER NOT NULL,
    request_hash   TEXT NOT NULL,
    response_json  TEXT NOT NULL,
    created_utc    TEXT NOT NULL,
    PRIMARY KEY (outcome_id, seq)
)
"""),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
SQLITE_MAGIC = b"SQLite format 3\x00"


class LedgerError(Exception):
    """The ledger cannot be opened, read or written; the message names the file and the fix."""


def _explain(path: Path, exc: BaseException) -> str:
    """One line for an SQLite or OS error on the ledger: what is wrong and what to do."""
    text = str(exc)
    lowered = text.lower()
    if "disk is full" in lowered or getattr(exc, "errno", None) == 28:
        return (f"{path}: the disk is full ({text}); free space on {path.parent} and run again — "
                "tickets in flight stay pending")
    if "readonly" in lowered or "read-only" in lowered or "permission" in lowered or \
            "unable to open" in lowered or getattr(exc, "errno", None) in (1, 13, 30):
        return (f"{path}: cannot write the ledger ({text}); the file or its folder is read-only "
                f"— check the permissions of {path} and {path.parent} for this user")
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return (f"{path}: the ledger is damaged ({text}); restore it from a backup, or move it "
                "away and start a new one with `crewbatch run --new-ledger` (earlier runs will "
                "not be known to it)")
    if "locked" in lowered or "busy" in lowered:
        return (f"{path}: the ledger is locked by another process ({text}); wait for it or stop "
                "it, then run again")
    return f"{path}: ledger error ({type(exc).__name__}: {text}); run `crewbatch check`"


# --- PostgreSQL ----------------------------------------------------------------------------------

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_PASSWORD_PARAM = re.compile(r"([?&]password)=[^&]*", re.IGNORECASE)


def is_postgres_url(target: str | Path) -> bool:
    """Whether a configured ledger names a PostgreSQL database rather than an SQLite file."""
    return isinstance(target, str) and target.lower().startswith(POSTGRES_SCHEMES)


def redact_url(url: str) -> str:
    """A database URL as logs, messages, `crewbatch check` and reports show it: the password, in
    the authority or as a `password=` parameter, replaced by ***. Anything else is unchanged.
    Everything between the user's `:` and the last `@` counts as the password, so an `@` left
    unescaped hides more of the URL, never shows a password."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, after = rest.rpartition("@")
    if sep and at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{after}"
    return _PASSWORD_PARAM.sub(r"\1=***", scheme + sep + rest)


def _pg_conninfo(url: str) -> dict[str, str]:
    """libpq's reading of the URL (host, port, dbname, user, password …), {} if it has none."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        return {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    except Exception:  # noqa: BLE001 — unparsable: the connection attempt says why
        return {}


def _pg_where(info: dict[str, str]) -> str:
    """Host, port, database and user of a connection, for messages (never the password)."""
    host, port = info.get("host") or "", info.get("port") or "5432"
    user = info.get("user") or "(the login user)"
    server = (f"{host}:{port}" if host and not host.startswith("/") else
              f"the Unix socket in {host or 'the default directory'} (port {port})")
    return f"{server}, database {info.get('dbname') or user}, user {user}"


def _explain_pg(location: str, info: dict[str, str], exc: BaseException) -> str:
    """One line for a psycopg error on the ledger: what is wrong, where, and what to do."""
    text = " ".join(str(exc).split())  # libpq's messages run over several lines
    if info.get("password"):
        text = text.replace(info["password"], "***")
    lowered = text.lower()
    state = getattr(exc, "sqlstate", None) or ""
    where = _pg_where(info)
    url_fix = "fix ledger.url in config/settings.yaml or CREWBATCH_DATABASE_URL"
    if state.startswith("28") or "authentication failed" in lowered or \
            "no password supplied" in lowered:
        return (f"{location}: PostgreSQL at {where} refused the login ({text}); check the user "
                "and password in CREWBATCH_DATABASE_URL (or PGPASSWORD / ~/.pgpass) and the "
                "server's pg_hba.conf")
    if state == "3D000" or ("database" in lowered and "does not exist" in lowered):
        return (f"{location}: no such database at {where} ({text}); create it "
                f"(`createdb {info.get('dbname', 'NAME')}`) or {url_fix}")
    if state == "42501" or "permission denied" in lowered:
        return (f"{location}: the user may not create or change the ledger's tables at {where} "
                f"({text}); grant it CREATE on the schema (or use a database it owns)")
    if state == "53100" or "no space left" in lowered or "could not extend file" in lowered:
        return (f"{location}: the database server's disk is full ({text}); free space on it and "
                "run again — tickets in flight stay pending")
    if state == "25006" or "read-only transaction" in lowered:
        return (f"{location}: the server at {where} only reads ({text}); point the URL at the "
                "primary, not a standby")
    if state.startswith(("08", "57P")) or not state:
        probe = " ".join(["pg_isready", *(f"-{flag} {info[key]}" for flag, key in
                                          (("h", "host"), ("p", "port")) if info.get(key))])
        return (f"{location}: cannot reach PostgreSQL at {where} ({text}); check that the "
                f"server runs and accepts connections there (`{probe}`), or {url_fix}; "
                "tickets in flight stay pending")
    return f"{location}: ledger error ({type(exc).__name__}: {text}); run `crewbatch check`"


class _Row(dict):
    """A PostgreSQL row read as sqlite3.Row reads: by column name or by position."""

    __slots__ = ("_values",)

    def __init__(self, names: list[str], values):
        super().__init__(zip(names, values, strict=True))
        self._values = values

    def __getitem__(self, key):
        return self._values[key] if isinstance(key, int) else dict.__getitem__(self, key)


def _pg_rows(cursor):
    names = [c.name for c in cursor.description or ()]
    return lambda values: _Row(names, values)


@functools.lru_cache(maxsize=1024)
def _pg_sql(sql: str) -> str:
    """This module's SQL (sqlite3's `?` placeholders) in psycopg's: `%s`, a literal % doubled."""
    return sql.replace("%", "%%").replace("?", "%s")


def _pg_param(value):
    # PostgreSQL text cannot hold NUL (intake drops it from tickets; model output may carry it),
    # and a bool is no integer to it (SQLite stores True as 1, as the ledger's columns expect).
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "")
    if isinstance(value, bool):
        return int(value)
    return value


IDLE_TX_S = 20  # seconds a PostgreSQL session may sit in an open transaction, waiting for us


class _PgConnection:
    """A psycopg connection that takes this module's SQL the way sqlite3 does: `?` placeholders,
    rows by name or position, `execute` returning the cursor. In autocommit, so a read is a
    statement of its own and `Ledger._tx` brackets a write with BEGIN … COMMIT, as on SQLite."""

    def __init__(self, url: str):
        import psycopg

        given = _pg_conninfo(url)
        # A worker cut off mid-transaction must not hold its row locks until TCP gives up (hours):
        # the server ends a session idle in a transaction after IDLE_TX_S, keepalives find a
        # vanished peer in about half a minute, and the rest of the fleet goes on (the fence in
        # record_result keeps the cut-off worker's late result out).
        defaults = {k: v for k, v in (("connect_timeout", "10"), ("application_name", "crewbatch"),
                                      ("keepalives", "1"), ("keepalives_idle", "10"),
                                      ("keepalives_interval", "5"), ("keepalives_count", "3"))
                    if k not in given}
        defaults["options"] = (given.get("options", "") +
                               f" -c idle_in_transaction_session_timeout={IDLE_TX_S * 1000}").strip()
        self._conn = psycopg.connect(url, autocommit=True, row_factory=_pg_rows, **defaults)

    def execute(self, sql: str, params: Iterable = ()):
        return self._conn.execute(_pg_sql(sql), tuple(_pg_param(p) for p in params))

    def close(self) -> None:
        self._conn.close()


@dataclass(frozen=True)
class _Dialect:
    """Where SQLite and PostgreSQL differ, in one place; every other statement is shared."""

    name: str
    begin: str            # opens a write transaction
    # Appended to a SELECT of the outcome rows a transaction then changes. SQLite needs none:
    # BEGIN IMMEDIATE takes its single write lock first, so transactions never interleave.
    # PostgreSQL (read committed) locks the rows, so a second claim or a recovery racing a
    # result waits for the first and then sees its status.
    for_update: str
    # Serialises transactions that check rows which may not exist yet (the refund caps, the
    # migrations) — what SQLite's single writer does for every transaction. '' = not needed.
    serialize: str
    migration_types: tuple[tuple[str, str], ...]  # regex substitutions on the migrations

    def migration(self, sql: str) -> str:
        for pattern, replacement in self.migration_types:
            sql = re.sub(pattern, replacement, sql)
        return sql


SQLITE = _Dialect("sqlite", "BEGIN IMMEDIATE", "", "", ())
POSTGRES = _Dialect(
    "postgresql", "BEGIN", " FOR UPDATE",
    "SELECT pg_advisory_xact_lock(?)",
    (
        # SQLite's INTEGER PRIMARY KEY is an alias of its rowid, numbered on insert.
        (r"\bINTEGER PRIMARY KEY\b", "INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
        (r"\bREAL\b", "DOUBLE PRECISION"),  # SQLite's REAL is 8 bytes; PostgreSQL's is 4
        (r"\bBLOB\b", "BYTEA"),
        (r"json_extract\(([\w.]+), '\$\.(\w+)'\)", r"(\1::json ->> '\2')"),
    ))
# Keys of the transaction-scoped advisory locks `_Dialect.serialize` takes on PostgreSQL.
MIGRATIONS_LOCK, REFUNDS_LOCK, RATE_LOCK = 0x63726577_0001, 0x63726577_0002, 0x63726577_0003
# The session-scoped one a run holds for its whole life (`Ledger.take_run_lock`).
RUN_LOCK = 0x63726577_0004


RESULT_FIELDS = ("category", "priority", "language", "draft_reply", "critic_verdict",
                 "critic_notes", "revisions", "actions_json", "needs_human_reason", "model",
                 "prompt_tokens", "completion_tokens", "cost_usd", "duration_ms", "error", "reason",
                 "cached_tokens")


# An outcome with the ticket it is about: the rows `_ticket_from_row` rebuilds a Ticket from.
OUTCOME_TICKET = ("SELECT o.outcome_id, o.record_no, o.source, t.* FROM outcomes o JOIN tickets t "
                  "ON t.ticket_key = o.ticket_key AND t.content_hash = o.content_hash ")


def _ticket_from_row(r) -> Ticket:
    """A Ticket rebuilt from a tickets row joined with its outcome's record_no and source."""
    return Ticket(key=r["ticket_key"], ticket_id=r["ticket_id"], source=r["source"],
                  received_at=r["received_at"], customer=r["customer"],
                  customer_name=r["customer_name"], subject=r["subject"], body=r["body"],
                  record_no=r["record_no"], extra=json.loads(r["extra_json"]),
                  history=r["history"], attachments=tuple(json.loads(r["attachments_json"])),
                  messages=r["messages"])


@dataclass(frozen=True)
class Run:
    """One row of `runs`, as every reader of a run sees it (`runs`, `show`, `report`, `diff`,
    `replay`, `review`, `worker`); `crewbatch runs` adds the listing's totals. Its fields are the
    table's columns, so `dataclasses.asdict` of it is what `runs --json` prints."""

    run_id: str
    started_utc: str
    status: str  # a RunStatus value
    model: str
    options_json: str = "{}"
    sources_json: str = "[]"
    finished_utc: str | None = None
    exit_code: int | None = None
    detail: str = ""
    replay_of: str | None = None
    stop_requested: str = ""
    # Only in `Ledger.runs`: the run's outcomes, their summed cost, and a count per status.
    records: int = 0
    cost_usd: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row, **extra) -> Run:
        # Every column by name: a column a migration adds without a field here fails loudly.
        return cls(**dict(row), **extra)

    @property
    def options(self) -> dict:
        """The run's options as started (`options_json`), `{}` when none were stored."""
        return json.loads(self.options_json or "{}")


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """One row of `outcomes` with its ticket's `received_at`, `customer` and `subject`: what
    `show`, `export`, `report`, `diff`, `eval`, `replay` and `review apply` read of a ticket's
    result. Its fields are the table's columns in the table's order (keyword-only, so the order
    can be the table's), so `vars()` of it is the row `show --json` prints."""

    outcome_id: int
    run_id: str
    record_no: int
    source: str
    ticket_id: str
    ticket_key: str | None = None
    content_hash: str | None = None
    status: str  # a Status value
    reason: str = ""
    category: str = ""
    priority: str = ""
    language: str = ""
    draft_reply: str = ""
    critic_verdict: str = ""
    critic_notes: str = ""
    revisions: int = 0
    actions_json: str = "[]"
    needs_human_reason: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    duration_ms: int = 0
    error: str = ""
    decision: str = ""
    reviewer_note: str = ""
    updated_utc: str
    cached_tokens: int = 0
    claimed_by: str = ""
    workflow_id: str = ""
    resumed_by: int | None = None
    # From the ticket (None for a record rejected before it had a ticket key).
    received_at: str | None = None
    customer: str | None = None
    subject: str | None = None

    @classmethod
    def from_row(cls, row) -> Outcome:
        """One row of `OUTCOME_ROWS`."""
        return cls(**dict(row))

    @property
    def actions(self) -> list[dict]:
        """The proposed actions and what became of each (`actions_json`), parsed."""
        return json.loads(self.actions_json or "[]")


# What an `Outcome` is read from: every column of `outcomes` and the three of its ticket.
OUTCOME_ROWS = ("SELECT o.*, t.received_at, t.customer, t.subject FROM outcomes o "
                "LEFT JOIN tickets t ON t.ticket_key = o.ticket_key AND t.content_hash = "
                "o.content_hash ")


@dataclass(frozen=True)
class Step:
    """One row of `steps`: an agent's output in one round of a ticket, as `show` prints it and
    `review` reads the final draft from."""

    step_id: int
    outcome_id: int
    round: int
    step: str  # research | draft | review | execute (and the gate's `checks`)
    agent: str
    model: str
    output_text: str
    created_utc: str
    output_json: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    duration_ms: int = 0

    @classmethod
    def from_row(cls, row) -> Step:
        return cls(**dict(row))

    @property
    def output(self):
        """The structured output (`output_json`) parsed, or None when the step had none."""
        return json.loads(self.output_json) if self.output_json else None


@dataclass
class RefundHistory:
    """The refunds already recorded on one order or for one customer (rows of `refunds`)."""

    order_id: str
    customer: str
    rows: list[dict]

    def on_order(self) -> list[dict]:
        return [r for r in self.rows if r["order_id"] == self.order_id]

    def of_customer_since(self, since_utc: str, automatic_only: bool = True) -> list[dict]:
        return [r for r in self.rows if r["customer"] == self.customer
                and r["requested_utc"] >= since_utc and (r["automatic"] or not automatic_only)]


@dataclass
class RefundRequest:
    key: str
    outcome_id: int
    order_id: str
    customer: str
    amount: float
    currency: str
    automatic: bool
    guard: Callable[[RefundHistory], str | None]


class _Refused(Exception):
    pass


COMPRESS_FROM = 128  # bytes; smaller blobs are stored as they are
KNOWN_BLOBS = 200_000  # blob hashes a ledger remembers having stored (then it forgets them all)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _too_new(location: str, version: int | None) -> list[str]:
    if version is not None and version > SCHEMA_VERSION:
        return [f"{location}: schema version {version} is newer than this crewbatch knows "
                f"({SCHEMA_VERSION}); upgrade crewbatch"]
    return []


def _inspect_pg(url: str) -> list[str]:
    """`Ledger.inspect` of a PostgreSQL ledger: can we log in, may we create the tables (a new
    database), is the schema one we know. PostgreSQL checks its own pages."""
    location, info = redact_url(url), _pg_conninfo(url)
    try:
        import psycopg
    except ImportError as exc:
        return [f"{location}: a PostgreSQL ledger needs psycopg ({exc}); install it with "
                "`pip install 'psycopg[binary]>=3.2'`"]
    try:
        db = _PgConnection(url)
        try:
            if db.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None:
                if not db.execute("SELECT has_schema_privilege(current_schema(), 'CREATE')"
                                  ).fetchone()[0]:
                    return [_explain_pg(location, info, psycopg.errors.InsufficientPrivilege(
                        "permission denied to create tables in the current schema"))]
                return []
            version = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
            return _too_new(location, version)
        finally:
            db.close()
    except psycopg.Error as exc:
        return [_explain_pg(location, info, exc)]


class Ledger:
    """The ledger at `target`: an SQLite file (a path) or a PostgreSQL database (a
    `postgresql://` URL). One connection, serialised by a lock, safe to use from worker threads.
    `location` names it in messages: the path, or the URL without its password."""

    def __init__(self, target: str | Path):
        self._lock = threading.RLock()
        self._known_blobs: set[str] = set()  # stored already: not compressed or sent again
        # The worker (engine executor) this connection records for: a result is recorded only
        # for a ticket it holds. '' = no fence (tools and tests that record directly).
        self.owner = ""
        if is_postgres_url(target):
            self.path, self.location = None, redact_url(str(target))
            self._dialect, self._pg = POSTGRES, _pg_conninfo(str(target))
            self._open_postgres(str(target))
        else:
            self.path = Path(target)
            self.location, self._dialect, self._pg = str(self.path), SQLITE, {}
            self._errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
            self._open_sqlite()
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise LedgerError(f"{self.location}: the ledger has schema version {version}, newer "
                              f"than this crewbatch knows ({SCHEMA_VERSION}); upgrade crewbatch")

    def _open_sqlite(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab+") as f:  # fails now, with the file's name, if unwritable
                f.seek(0)
                head = f.read(len(SQLITE_MAGIC))
        except OSError as exc:
            raise LedgerError(_explain(self.path, exc)) from exc
        if head and head != SQLITE_MAGIC:
            raise LedgerError(_explain(self.path, sqlite3.DatabaseError(
                f"file is not a database: it starts with {head[:8]!r}")))
        try:
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False,
                                       isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._migrate()
        except sqlite3.Error as exc:
            raise LedgerError(_explain(self.path, exc)) from exc

    def _open_postgres(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise LedgerError(f"{self.location}: a PostgreSQL ledger needs psycopg ({exc}); "
                              "install it with `pip install 'psycopg[binary]>=3.2'`") from exc
        self._errors = (psycopg.Error,)
        try:
            self._db = _PgConnection(url)
            self._migrate()
        except psycopg.Error as exc:
            raise LedgerError(self._explain(exc)) from exc

    def _explain(self, exc: BaseException) -> str:
        if self._dialect is POSTGRES:
            return _explain_pg(self.location, self._pg, exc)
        return _explain(self.path, exc)

    @staticmethod
    def is_empty(target: str | Path) -> bool:
        """No ledger at `target`, or one without any run (a 0-byte or freshly created file, a
        database without the ledger's tables)."""
        if is_postgres_url(target):
            try:
                db = _PgConnection(str(target))
            except Exception:  # noqa: BLE001 — unreachable, not empty: opening it says why
                return False
            try:
                if db.execute("SELECT to_regclass('runs')").fetchone()[0] is None:
                    return True
                return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
            except Exception:  # noqa: BLE001
                return False
            finally:
                db.close()
        path = Path(target)
        if not path.exists() or path.stat().st_size == 0:
            return True
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
            finally:
                db.close()
        except sqlite3.Error:
            return False  # damaged, not empty: opening it says so

    @staticmethod
    def inspect(target: str | Path) -> list[str]:
        """What is wrong with the ledger at `target`, read-only (for `crewbatch check`): the
        file and SQLite's integrity check, or whether the PostgreSQL server lets us in and may
        create the tables; and the schema version. Empty when it is sound or absent."""
        if is_postgres_url(target):
            return _inspect_pg(str(target))
        path = Path(target)
        if not path.exists() or path.stat().st_size == 0:
            return []
        try:
            with open(path, "rb") as f:
                head = f.read(len(SQLITE_MAGIC))
            if head != SQLITE_MAGIC:
                return [_explain(path, sqlite3.DatabaseError(
                    f"file is not a database: it starts with {head[:8]!r}"))]
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                rows = db.execute("PRAGMA integrity_check").fetchall()
                problems = [_explain(path, sqlite3.DatabaseError(f"malformed: {r[0]}"))
                            for r in rows if r[0] != "ok"][:5]
                if not problems:
                    version = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
                    problems += _too_new(str(path), version)
                return problems
            finally:
                db.close()
        except (sqlite3.Error, OSError) as exc:
            return [_explain(path, exc)]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection | _PgConnection]:
        with self._lock:
            self._db.execute(self._dialect.begin)
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _serialize(self, db, key: int) -> None:
        """Make this transaction wait for any other holding `key` (PostgreSQL's advisory lock;
        on SQLite every write transaction is serialised already)."""
        if self._dialect.serialize:
            db.execute(self._dialect.serialize, (key,))

    def _migrate(self) -> None:
        with self._tx() as db:
            self._serialize(db, MIGRATIONS_LOCK)  # two hosts opening a new database at once
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                       "(version INTEGER PRIMARY KEY, applied_utc TEXT NOT NULL)")
            done = {r[0] for r in db.execute("SELECT version FROM schema_migrations")}
            for version, sql in MIGRATIONS:
                if version in done:
                    continue
                for statement in filter(str.strip, sql.split(";\n")):
                    db.execute(self._dialect.migration(statement))
                db.execute("INSERT INTO schema_migrations (version, applied_utc) VALUES (?, ?)",
                           (version, utc_now()))

    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]

    # --- runs ------------------------------------------------------------------------------------

    def start_run(self, run_id: str, model: str, options: dict, sources: list[str],
                  replay_of: str | None = None) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO runs (run_id, started_utc, status, model, options_json, "
                       "sources_json, replay_of) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (run_id, utc_now(), RunStatus.RUNNING.value, model, json.dumps(options),
                        json.dumps(sources), replay_of))
            self._event(db, run_id, None, "", RunStatus.RUNNING.value,
                        f"run started with model {model}"
                        + (f", replaying run {replay_of}" if replay_of else ""))

    def finish_run(self, run_id: str, status: str, exit_code: int, detail: str = "") -> bool:
        """End a running run; False if it had ended already (the first end recorded stands:
        a stopping run's main thread and its stop watchdog may both try)."""
        status, exit_code = RunStatus(status).value, int(exit_code)  # plain values, as stored
        with self._tx() as db:
            ended = db.execute("UPDATE runs SET status = ?, finished_utc = ?, exit_code = ?, "
                               "detail = ? WHERE run_id = ? AND status = ?",
                               (status, utc_now(), exit_code, detail, run_id,
                                RunStatus.RUNNING.value)).rowcount == 1
            if ended:
                self._event(db, run_id, None, RunStatus.RUNNING.value, status, detail)
        return ended

    def runs(self, limit: int = 50) -> list[Run]:
        with self._lock:
            rows = self._db.execute(
                "SELECT r.*, (SELECT COUNT(*) FROM outcomes o WHERE o.run_id = r.run_id) AS records,"
                " (SELECT COALESCE(SUM(cost_usd), 0) FROM outcomes o WHERE o.run_id = r.run_id)"
                " AS cost_usd FROM runs r ORDER BY r.started_utc DESC LIMIT ?", (limit,)).fetchall()
            return [Run.from_row(r, counts=self.counts(r["run_id"])) for r in rows]

    def run(self, run_id: str) -> Run | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            return Run.from_row(row) if row else None

    def counts(self, run_id: str) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM outcomes WHERE run_id = ? "
                                    "GROUP BY status", (run_id,)).fetchall()
            return {r[0]: r[1] for r in rows}

    # --- records ---------------------------------------------------------------------------------

    def add_records(self, run_id: str, items: Iterable[Ticket | Rejection], reprocess: bool
                    ) -> list[tuple[int, Ticket]]:
        """Register a batch of input records; return the (outcome_id, ticket) pairs to process.

        Rejections are final at once; a ticket finished earlier with the same key and content, or a
        second copy inside this run, is `skipped`; everything else is `pending`, in one transaction.
        """
        todo: list[tuple[int, Ticket]] = []
        with self._tx() as db:
            for item in items:
                now = utc_now()
                if isinstance(item, Rejection):
                    oid = self._insert_outcome(db, run_id, item.record_no, item.source,
                                               item.ticket_id or f"record-{item.record_no}",
                                               None, None, Status.REJECTED.value, item.reason, now)
                    continue
                db.execute(
                    "INSERT INTO tickets (ticket_key, content_hash, ticket_id, received_at, customer,"
                    " customer_name, subject, body, extra_json, first_seen_utc, history, "
                    "attachments_json, messages) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT DO NOTHING",
                    (item.key, item.content_hash, item.ticket_id, item.received_at, item.customer,
                     item.customer_name, item.subject, item.body,
                     json.dumps(item.extra, ensure_ascii=False), now, item.history,
                     json.dumps(list(item.attachments), ensure_ascii=False), item.messages))
                status, reason = PENDING, ""
                same = db.execute(
                    "SELECT run_id, status FROM outcomes WHERE ticket_key = ? AND content_hash = ? "
                    "AND (run_id = ? OR (status IN (?, ?) AND run_id NOT IN "
                    "(SELECT run_id FROM runs WHERE replay_of IS NOT NULL))) "
                    "ORDER BY outcome_id DESC LIMIT 1",
                    (item.key, item.content_hash, run_id, *DONE)).fetchone()
                if same is not None and same["run_id"] == run_id:
                    status, reason = Status.SKIPPED.value, "duplicate of an earlier record in this run"
                elif same is not None and not reprocess:
                    status = Status.SKIPPED.value
                    reason = f"already {same['status']} in run {same['run_id']} with the same content"
                oid = self._insert_outcome(db, run_id, item.record_no, item.source, item.ticket_id,
                                           item.key, item.content_hash, status, reason, now)
                if status == PENDING:
                    todo.append((oid, item))
        return todo

    def _insert_outcome(self, db, run_id, record_no, source, ticket_id, key, chash, status, reason,
                        now) -> int:
        oid = db.execute(
            "INSERT INTO outcomes (run_id, record_no, source, ticket_id, ticket_key, content_hash, "
            "status, reason, updated_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING outcome_id",
            (run_id, record_no, source, ticket_id, key, chash, status, reason, now)).fetchone()[0]
        self._event(db, run_id, oid, "", status, reason)
        return oid

    def claim(self, outcome_id: int, worker: str) -> Ticket | None:
        """Take a ticket for this worker: a pending one, one it holds already (its own work
        resumed), or one a worker declared dead held. None if it is final or a live worker's,
        or if its run is not running: a crashed run's workflow left on the queue, dequeued by the
        next run before that run cancels it (`Engine._cancel_leftovers`), must not work a ticket
        that the next run has taken from the sources again."""
        with self._tx() as db:
            row = db.execute(OUTCOME_TICKET + "JOIN runs r ON r.run_id = o.run_id "
                             "WHERE o.outcome_id = ? AND r.status = ?",
                             (outcome_id, RunStatus.RUNNING.value)).fetchone()
            if row is None:
                return None
            status, holder = self._claim_state(db, outcome_id)
            if status == PENDING:
                detail = f"claimed by {worker}"
            elif status == RUNNING and holder == worker:
                return _ticket_from_row(row)
            elif status == RUNNING and holder and self._worker_state(db, holder) == "dead":
                detail = f"taken over by {worker} from {holder}, which stopped beating"
            else:
                return None
            self._transition(db, outcome_id, RUNNING, detail, {"claimed_by": worker})
            return _ticket_from_row(row)

    def _claim_state(self, db, outcome_id: int) -> tuple[str, str]:
        row = db.execute("SELECT status, claimed_by FROM outcomes WHERE outcome_id = ?"
                         + self._dialect.for_update, (outcome_id,)).fetchone()
        return row["status"], row["claimed_by"]

    @staticmethod
    def _worker_state(db, executor_id: str) -> str | None:
        row = db.execute("SELECT state FROM workers WHERE executor_id = ?",
                         (executor_id,)).fetchone()
        return row["state"] if row else None

    # --- the workers of a run (crews/engine.py) ----------------------------------------------

    def join_run(self, run_id: str, executor_id: str, host: str, pid: int, role: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO workers (executor_id, run_id, host, pid, role, state, "
                       "joined_utc, beat_s) VALUES (?, ?, ?, ?, ?, 'working', ?, ?)",
                       (executor_id, run_id, host, pid, role, utc_now(), time.time()))
            self._event(db, run_id, None, "", "joined", f"{role} {executor_id} on {host} "
                                                        f"(pid {pid})")

    def heartbeat(self, executor_id: str) -> bool:
        """Beat; False if a peer declared this worker dead meanwhile (it must leave the run)."""
        with self._tx() as db:
            return db.execute("UPDATE workers SET beat_s = ? WHERE executor_id = ? AND "
                              "state = 'working'", (time.time(), executor_id)).rowcount == 1

    def leave_run(self, executor_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE workers SET state = 'left' WHERE executor_id = ? AND "
                       "state = 'working'", (executor_id,))

    def reap_workers(self, run_id: str, lease_s: float, me: str) -> list[str]:
        """Declare the run's workers silent for `lease_s` dead; the ones this call declared
        (a compare-and-set: of several peers noticing at once, one takes each over)."""
        cutoff = time.time() - lease_s
        reaped = []
        with self._tx() as db:
            rows = db.execute("SELECT executor_id, host, pid FROM workers WHERE run_id = ? AND "
                              "state = 'working' AND beat_s < ? AND executor_id <> ?",
                              (run_id, cutoff, me)).fetchall()
            for r in rows:
                if db.execute("UPDATE workers SET state = 'dead' WHERE executor_id = ? AND "
                              "state = 'working' AND beat_s < ?",
                              (r["executor_id"], cutoff)).rowcount == 1:
                    reaped.append(r["executor_id"])
                    self._event(db, run_id, None, "joined", "dead",
                                f"{r['executor_id']} on {r['host']} (pid {r['pid']}) silent for "
                                f"{lease_s:g}s; {me} takes its tickets over")
        return reaped

    def workers(self, run_id: str) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._db.execute(
                "SELECT * FROM workers WHERE run_id = ? ORDER BY joined_utc", (run_id,))]

    def request_stop(self, run_id: str, reason: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET stop_requested = ? WHERE run_id = ? AND "
                       "stop_requested = ''", (reason, run_id))

    def run_state(self, run_id: str) -> tuple[str, str]:
        """(status, stop_requested) of a run, read fresh."""
        with self._lock:
            row = self._db.execute("SELECT status, stop_requested FROM runs WHERE run_id = ?",
                                   (run_id,)).fetchone()
            return (row["status"], row["stop_requested"]) if row else ("", "")

    def active_run(self) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT run_id FROM runs WHERE status = ? ORDER BY "
                                   "started_utc DESC LIMIT 1", (RunStatus.RUNNING.value,)
                                   ).fetchone()
            return row["run_id"] if row else None

    def in_flight(self, run_id: str) -> int:
        """The run's tickets being worked by a live worker (not one declared dead or gone)."""
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM outcomes o JOIN workers w ON w.executor_id = o.claimed_by "
                "WHERE o.run_id = ? AND o.status = ? AND w.state = 'working'",
                (run_id, RUNNING)).fetchone()[0]

    def set_workflow(self, outcome_id: int, workflow_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE outcomes SET workflow_id = ? WHERE outcome_id = ?",
                       (workflow_id, outcome_id))

    def resumable(self, outcome_id: int) -> int | None:
        """The earlier attempt at this outcome's ticket (same key and content) that a run left
        unfinished — crashed, interrupted or stopped — after queueing it, or None. It is claimed
        for this outcome (`resumed_by`, so it is resumed once) and its checkpoints become this
        outcome's, in one transaction."""
        with self._tx() as db:
            row = db.execute(
                "SELECT p.outcome_id FROM outcomes o JOIN outcomes p ON "
                "p.ticket_key = o.ticket_key AND p.content_hash = o.content_hash AND "
                "p.outcome_id < o.outcome_id JOIN runs r ON r.run_id = p.run_id WHERE "
                "o.outcome_id = ? AND p.status = ? AND p.workflow_id <> '' AND p.resumed_by IS "
                "NULL AND r.status <> ? ORDER BY p.outcome_id DESC LIMIT 1",
                (outcome_id, PENDING, RunStatus.RUNNING.value)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE outcomes SET resumed_by = ? WHERE outcome_id = ?",
                       (outcome_id, row["outcome_id"]))
            db.execute("UPDATE checkpoints SET outcome_id = ? WHERE outcome_id = ?",
                       (outcome_id, row["outcome_id"]))
            return row["outcome_id"]

    def checkpoints(self, outcome_id: int) -> dict[int, dict]:
        """The outcome's checkpointed model answers by their place in the ticket:
        {seq: {"request_hash": …, "response": …}} (engine.Checkpoints)."""
        with self._lock:
            rows = self._db.execute("SELECT seq, request_hash, response_json FROM checkpoints "
                                    "WHERE outcome_id = ?", (outcome_id,)).fetchall()
        return {r["seq"]: {"request_hash": r["request_hash"],
                           "response": json.loads(r["response_json"])} for r in rows}

    def checkpoint(self, outcome_id: int, seq: int, request_hash: str, response: dict) -> None:
        """Checkpoint the answer to the outcome's `seq`-th model request. A row already there
        (a worker declared dead wrote it too) stays: both answer the same request."""
        with self._tx() as db:
            db.execute("INSERT INTO checkpoints (outcome_id, seq, request_hash, response_json, "
                       "created_utc) VALUES (?, ?, ?, ?, ?) ON CONFLICT (outcome_id, seq) DO "
                       "NOTHING", (outcome_id, seq, request_hash,
                                   json.dumps(response, ensure_ascii=False), utc_now()))

    def pause_model(self, model: str, until_s: float) -> None:
        """Hold every worker's requests to `model` until `until_s` (a Retry-After), never
        shortening a longer pause another worker set."""
        with self._tx() as db:
            db.execute("INSERT INTO model_pauses (model, until_s) VALUES (?, ?) ON CONFLICT "
                       "(model) DO UPDATE SET until_s = CASE WHEN excluded.until_s > "
                       "model_pauses.until_s THEN excluded.until_s ELSE model_pauses.until_s END",
                       (model, until_s))

    def take_request_slot(self, model: str, rpm: int | None, tpm: int | None, tokens: int,
                          now_s: float, window_s: float = 60.0) -> float:
        """Room for one request of `tokens` to `model` in the fleet's last minute: 0.0 and the
        request counted, or the seconds to wait. One transaction (serialised: an advisory lock
        on PostgreSQL, the write lock on SQLite), so workers never pass a limit together."""
        with self._tx() as db:
            self._serialize(db, RATE_LOCK)
            db.execute("DELETE FROM model_requests WHERE model = ? AND at_s <= ?",
                       (model, now_s - window_s))
            row = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(tokens), 0), MIN(at_s) FROM model_requests "
                "WHERE model = ?", (model,)).fetchone()
            count, used, oldest = row[0], row[1], row[2]  # a PostgreSQL row iterates its names
            wait = 0.0
            if count and ((rpm and count >= rpm) or (tpm and used + tokens > tpm)):
                wait = oldest + window_s - now_s
            if wait <= 0:
                db.execute("INSERT INTO model_requests (model, at_s, tokens) VALUES (?, ?, ?)",
                           (model, now_s, tokens))
                return 0.0
            return wait

    def model_paused_until(self, model: str) -> float:
        with self._lock:
            row = self._db.execute("SELECT until_s FROM model_pauses WHERE model = ?",
                                   (model,)).fetchone()
            return row[0] if row else 0.0

    # --- Batch API (crews/batch.py) ---------------------------------------------------------------

    def prepare_batch(self, run_id: str, model: str, requests: list[tuple[str, int]],
                      size_bytes: int) -> int:
        """A new batch and its requests ((custom_id, outcome_id)), before anything is uploaded."""
        with self._tx() as db:
            batch_no = db.execute(
                "INSERT INTO batches (run_id, model, state, requests, size_bytes, created_utc) "
                "VALUES (?, ?, 'preparing', ?, ?, ?) RETURNING batch_no",
                (run_id, model, len(requests), size_bytes, utc_now())).fetchone()[0]
            for custom_id, outcome_id in requests:
                db.execute("INSERT INTO batch_requests (custom_id, batch_no, outcome_id) "
                           "VALUES (?, ?, ?)", (custom_id, batch_no, outcome_id))
            return batch_no

    def update_batch(self, batch_no: int, **fields: Any) -> None:
        allowed = {"state", "input_file_id", "batch_id", "output_file_id", "error_file_id",
                   "submitted_utc", "finished_utc", "wait_s", "detail"}
        if set(fields) - allowed:
            raise ValueError(f"unknown batch fields: {sorted(set(fields) - allowed)}")
        with self._tx() as db:
            db.execute(f"UPDATE batches SET {', '.join(f'{k} = ?' for k in fields)} "
                       "WHERE batch_no = ?", (*fields.values(), batch_no))

    def abandon_batch(self, batch_no: int, detail: str) -> None:
        """A batch that never reached the provider: its requests are free to be gathered again."""
        with self._tx() as db:
            db.execute("DELETE FROM batch_requests WHERE batch_no = ?", (batch_no,))
            db.execute("UPDATE batches SET state = 'abandoned', detail = ? WHERE batch_no = ?",
                       (detail, batch_no))

    def batch(self, batch_no: int) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM batches WHERE batch_no = ?",
                                   (batch_no,)).fetchone()
            return dict(row) if row else None

    def open_batches(self) -> list[dict]:
        """Batches not finished at the provider (or not submitted yet), oldest first."""
        with self._lock:
            return [dict(r) for r in self._db.execute(
                "SELECT * FROM batches WHERE state IN ('preparing', 'uploaded', 'submitted') "
                "ORDER BY batch_no").fetchall()]

    def batch_request(self, custom_id: str) -> dict | None:
        """A request's row with its batch's state, or None if it was never part of a batch."""
        with self._lock:
            row = self._db.execute(
                "SELECT r.*, b.state, b.batch_id FROM batch_requests r JOIN batches b ON "
                "b.batch_no = r.batch_no WHERE r.custom_id = ?", (custom_id,)).fetchone()
            return dict(row) if row else None

    def finish_batch(self, batch_no: int, state: str, answers: dict[str, tuple[int, str]],
                     fields: dict[str, Any]) -> None:
        """A finished batch's answers ({custom_id: (status_code, body JSON)}, 0 = unanswered
        for the lines the provider did not answer) and final state, in one transaction."""
        now = utc_now()
        with self._tx() as db:
            for custom_id, (code, body) in answers.items():
                db.execute("UPDATE batch_requests SET status_code = ?, response_json = ?, "
                           "answered_utc = ? WHERE custom_id = ? AND batch_no = ? AND "
                           "status_code IS NULL", (code, body, now, custom_id, batch_no))
            db.execute("UPDATE batch_requests SET status_code = 0, response_json = '', "
                       "answered_utc = ? WHERE batch_no = ? AND status_code IS NULL",
                       (now, batch_no))
            sets = {"state": state, "finished_utc": now, **fields}
            db.execute(f"UPDATE batches SET {', '.join(f'{k} = ?' for k in sets)} "
                       "WHERE batch_no = ?", (*sets.values(), batch_no))

    def batches(self, run_id: str | None = None) -> list[dict]:
        with self._lock:
            if run_id is None:
                rows = self._db.execute("SELECT * FROM batches ORDER BY batch_no").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT DISTINCT b.* FROM batches b JOIN batch_requests r ON r.batch_no = "
                    "b.batch_no JOIN outcomes o ON o.outcome_id = r.outcome_id WHERE "
                    "b.run_id = ? OR o.run_id = ? ORDER BY b.batch_no", (run_id, run_id)
                ).fetchall()
            return [dict(r) for r in rows]

    def attempt_root(self, outcome_id: int) -> int:
        """The first outcome of the chain of attempts `outcome_id` resumed (itself if none): a
        ticket's batch requests are named by it, so a resumed attempt finds its earlier ones."""
        with self._lock:
            seen = set()
            while outcome_id not in seen:
                seen.add(outcome_id)
                row = self._db.execute("SELECT outcome_id FROM outcomes WHERE resumed_by = ?",
                                       (outcome_id,)).fetchone()
                if row is None:
                    return outcome_id
                outcome_id = row["outcome_id"]
            return outcome_id

    def final_count(self, run_id: str) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM outcomes WHERE run_id = ? AND status NOT IN (?, ?)",
                (run_id, PENDING, RUNNING)).fetchone()[0]

    def run_cost(self, run_id: str) -> float:
        with self._lock:
            return self._db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM outcomes WHERE "
                                    "run_id = ?", (run_id,)).fetchone()[0]

    def record_result(self, outcome_id: int, status: Status, fields: dict[str, Any],
                      steps: list[dict], actions: list[dict], detail: str,
                      calls: list[dict] = (), blobs: dict[str, bytes] | None = None) -> bool:
        """Write a ticket's final status, its agent outputs, model calls (with the recording's
        `blobs`) and actions at once.

        Only a ticket still `running` is finished: one that recovery put back to pending meanwhile
        belongs to a new run now, and its result is dropped (False) rather than recorded twice.
        """
        unknown = set(fields) - set(RESULT_FIELDS)
        if unknown:
            raise ValueError(f"unknown outcome fields: {sorted(unknown)}")
        packed = self._pack(blobs or {})
        with self._tx() as db:
            current = db.execute("SELECT status, claimed_by FROM outcomes WHERE outcome_id = ?"
                                 + self._dialect.for_update, (outcome_id,)).fetchone()
            if current is not None and (current["status"] != RUNNING or not self._holds(current)):
                return False
            now = utc_now()
            for s in steps:
                db.execute(
                    "INSERT INTO steps (outcome_id, round, step, agent, model, output_text, "
                    "output_json, prompt_tokens, completion_tokens, cached_tokens, duration_ms, "
                    "created_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (outcome_id, s["round"], s["step"], s["agent"], s["model"], s["output_text"],
                     s.get("output_json", ""), s.get("prompt_tokens", 0),
                     s.get("completion_tokens", 0), s.get("cached_tokens", 0),
                     s.get("duration_ms", 0), now))
            for c in calls:
                db.execute(
                    "INSERT INTO model_calls (outcome_id, round, step, agent, model, "
                    "prompt_tokens, completion_tokens, cached_tokens, cost_usd, created_utc, "
                    "seq, request_hash, response_hash, replayed) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (outcome_id, c["round"], c["step"], c["agent"], c["model"],
                     c["prompt_tokens"], c["completion_tokens"], c["cached_tokens"],
                     c["cost_usd"], now, c.get("seq", 0), c.get("request_hash", ""),
                     c.get("response_hash", ""), c.get("replayed", 0)))
            for row in packed:
                db.execute("INSERT INTO blobs (blob_hash, compressed, size_bytes, data) VALUES "
                           "(?, ?, ?, ?) ON CONFLICT DO NOTHING", row)
            for a in actions:
                db.execute(
                    "INSERT INTO actions (outcome_id, kind, args_json, decision, reason, "
                    "created_utc) VALUES (?, ?, ?, ?, ?, ?)",
                    (outcome_id, a["kind"], json.dumps(a["args"], ensure_ascii=False),
                     a["decision"], a.get("reason", ""), now))
            db.execute("DELETE FROM checkpoints WHERE outcome_id = ?", (outcome_id,))
            self._transition(db, outcome_id, status.value, detail, fields)
        self._remember_blobs(row[0] for row in packed)
        return True

    # --- recorded model traffic ------------------------------------------------------------------

    def _pack(self, blobs: dict[str, bytes]) -> list[tuple]:
        """Rows for the blobs not stored yet, compressed where that saves space (outside the
        ledger's lock: it is the CPU-heavy part of storing a recording)."""
        rows = []
        for h, raw in blobs.items():
            if h in self._known_blobs:
                continue
            packed = zlib.compress(raw, 6) if len(raw) >= COMPRESS_FROM else raw
            compressed = len(packed) < len(raw)
            rows.append((h, int(compressed), len(raw), packed if compressed else raw))
        return rows

    def _remember_blobs(self, hashes: Iterable[str]) -> None:
        if len(self._known_blobs) > KNOWN_BLOBS:
            self._known_blobs.clear()
        self._known_blobs.update(hashes)

    def blobs(self, hashes: Iterable[str]) -> dict[str, bytes]:
        """Recorded blobs by hash, uncompressed (missing ones are left out)."""
        wanted = sorted(set(h for h in hashes if h))
        found: dict[str, bytes] = {}
        with self._lock:
            for i in range(0, len(wanted), 500):
                part = wanted[i:i + 500]
                rows = self._db.execute(
                    "SELECT blob_hash, compressed, data FROM blobs WHERE blob_hash IN "
                    f"({', '.join('?' for _ in part)})", part).fetchall()
                for r in rows:
                    found[r[0]] = zlib.decompress(r[2]) if r[1] else bytes(r[2])
        return found

    def recorded_calls(self, outcome_id: int) -> list[dict]:
        """One outcome's model requests, in the order they were made, with their recording."""
        with self._lock:
            rows = self._db.execute(
                "SELECT call_id, seq, round, step, agent, model, request_hash, response_hash, "
                "replayed, prompt_tokens, completion_tokens FROM model_calls WHERE outcome_id = ? "
                "ORDER BY seq, call_id", (outcome_id,)).fetchall()
            return [dict(r) for r in rows]

    def replay_tickets(self, run_id: str, statuses: Iterable[str]) -> list[tuple[int, Ticket]]:
        """(outcome_id, ticket) of a run's outcomes with these statuses, as they were read."""
        marks = list(statuses)
        with self._lock:
            rows = self._db.execute(
                OUTCOME_TICKET + f"WHERE o.run_id = ? AND o.status IN "
                f"({', '.join('?' for _ in marks)}) ORDER BY o.outcome_id",
                (run_id, *marks)).fetchall()
        return [(r["outcome_id"], _ticket_from_row(r)) for r in rows]

    def copy_outcomes(self, from_run: str, to_run: str, statuses: Iterable[str],
                      detail: str) -> int:
        """Copy a run's final outcomes with these statuses (rejected and skipped records a
        replay does not run again) into another run, with their reasons."""
        marks = list(statuses)
        with self._tx() as db:
            rows = db.execute(
                "SELECT record_no, source, ticket_id, ticket_key, content_hash, status, reason "
                f"FROM outcomes WHERE run_id = ? AND status IN ({', '.join('?' for _ in marks)}) "
                "ORDER BY outcome_id", (from_run, *marks)).fetchall()
            now = utc_now()
            for r in rows:
                self._insert_outcome(db, to_run, r["record_no"], r["source"], r["ticket_id"],
                                     r["ticket_key"], r["content_hash"], r["status"],
                                     r["reason"] or detail, now)
        return len(rows)

    def _transition(self, db, outcome_id: int, to_status: str, detail: str, fields: dict) -> None:
        row = db.execute("SELECT run_id, status FROM outcomes WHERE outcome_id = ?"
                         + self._dialect.for_update, (outcome_id,)).fetchone()
        if row is None:
            raise KeyError(f"no outcome {outcome_id}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        sets = f"status = ?, updated_utc = ?{', ' + cols if cols else ''}"
        db.execute(f"UPDATE outcomes SET {sets} WHERE outcome_id = ?",
                   (to_status, utc_now(), *fields.values(), outcome_id))
        self._event(db, row["run_id"], outcome_id, row["status"], to_status, detail)

    def _event(self, db, run_id, outcome_id, from_status, to_status, detail) -> None:
        db.execute("INSERT INTO events (run_id, outcome_id, at_utc, from_status, to_status, detail)"
                   " VALUES (?, ?, ?, ?, ?, ?)",
                   (run_id, outcome_id, utc_now(), from_status, to_status, detail or ""))

    def unfinished(self, run_id: str) -> list[int]:
        with self._lock:
            rows = self._db.execute("SELECT outcome_id FROM outcomes WHERE run_id = ? AND status IN "
                                    "(?, ?)", (run_id, PENDING, RUNNING)).fetchall()
            return [r[0] for r in rows]

    def release_unfinished(self, run_id: str, detail: str) -> int:
        """Put tickets that were handed out but not finished back to pending (run interrupted).
        Read in the transaction that changes them (rows locked on PostgreSQL): a ticket whose
        result lands meanwhile keeps it."""
        with self._tx() as db:
            ids = [r[0] for r in db.execute(
                "SELECT outcome_id FROM outcomes WHERE run_id = ? AND status IN (?, ?) "
                "ORDER BY outcome_id" + self._dialect.for_update, (run_id, PENDING, RUNNING))]
            for oid in ids:
                self._transition(db, oid, PENDING, detail, {"claimed_by": ""})
        return len(ids)

    def take_run_lock(self) -> str | None:
        """One run at a time per ledger, whichever host starts it: on PostgreSQL a session
        advisory lock, held by this connection until it closes — the server frees it when the
        holder's process or host dies, so it is never stale. None when taken; else who holds
        it. On SQLite the ledger is a file of this machine, whose run lock file guards it
        (crews/lock.py)."""
        if not self._dialect.serialize:
            return None
        with self._lock:
            if self._db.execute("SELECT pg_try_advisory_lock(?)", (RUN_LOCK,)).fetchone()[0]:
                return None
            row = self._db.execute(
                "SELECT r.run_id, w.host, w.pid FROM runs r LEFT JOIN workers w ON w.run_id = "
                "r.run_id AND w.role = 'run' WHERE r.status = ? ORDER BY r.started_utc "
                "DESC LIMIT 1", (RunStatus.RUNNING.value,)).fetchone()
        if row is None:
            return "a run that is starting"
        return f"run {row['run_id']}" + (f" on {row['host']} (pid {row['pid']})"
                                         if row["host"] else "")

    def recover_crashed_runs(self, detail: str) -> list[str]:
        """Runs still marked running while we hold the run lock died: mark them crashed and put
        their in-flight tickets back to pending (a later run over the same source redoes them)."""
        with self._lock:
            dead = [r[0] for r in self._db.execute("SELECT run_id FROM runs WHERE status = ?",
                                                   (RunStatus.RUNNING.value,))]
        for run_id in dead:
            self.release_unfinished(run_id, detail)
            with self._tx() as db:
                db.execute("UPDATE runs SET status = ?, finished_utc = ? WHERE run_id = ?",
                           (RunStatus.CRASHED.value, utc_now(), run_id))
                self._event(db, run_id, None, RunStatus.RUNNING.value, RunStatus.CRASHED.value,
                            detail)
        return dead

    def failed_tickets(self, run_id: str) -> list[Ticket]:
        """The run's `failed` tickets, rebuilt from the stored bodies, for `crewbatch retry`."""
        with self._lock:
            rows = self._db.execute(OUTCOME_TICKET + "WHERE o.run_id = ? AND o.status = ? "
                                    "ORDER BY o.outcome_id",
                                    (run_id, Status.FAILED.value)).fetchall()
        return [_ticket_from_row(r) for r in rows]

    def outcome_ticket(self, outcome_id: int) -> Ticket | None:
        """The ticket an outcome row is about, as it was read (thread history included)."""
        with self._lock:
            row = self._db.execute(OUTCOME_TICKET + "WHERE o.outcome_id = ?",
                                   (outcome_id,)).fetchone()
        return _ticket_from_row(row) if row else None

    def record_review(self, outcome_id: int, decision: str, note: str, detail: str) -> None:
        """A reviewer's decision, with its event, in one transaction (the status is unchanged)."""
        with self._tx() as db:
            status = db.execute("SELECT status FROM outcomes WHERE outcome_id = ?"
                                + self._dialect.for_update, (outcome_id,)).fetchone()[0]
            self._transition(db, outcome_id, status, f"review: {detail}",
                             {"decision": decision, "reviewer_note": note})

    # --- side effects ----------------------------------------------------------------------------

    def side_effect_done(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM side_effects WHERE idempotency_key = ? AND "
                                    "performed_utc != ''", (key,)).fetchone() is not None

    def record_side_effect(self, key: str, outcome_id: int, kind: str, detail: str) -> bool:
        """Record that a side effect happened; False if it had already been recorded."""
        with self._tx() as db:
            cur = db.execute("INSERT INTO side_effects (idempotency_key, outcome_id, kind, detail, "
                             "performed_utc) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                             (key, outcome_id, kind, detail, utc_now()))
            return cur.rowcount == 1

    def intend_side_effect(self, key: str, outcome_id: int, kind: str, target: str
                           ) -> tuple[str, bool]:
        """Write-ahead for a side effect that writes a file: (target, already performed).

        The first intent for a key fixes its target (`performed_utc` stays '' until
        `side_effect_performed`); every later attempt — a redo after a crash between the write
        and its record, or a process racing this one — gets that same target back, so the file
        is written in one place only, whatever run retries it.
        """
        with self._tx() as db:
            db.execute("INSERT INTO side_effects (idempotency_key, outcome_id, kind, detail, "
                       "performed_utc) VALUES (?, ?, ?, ?, '') ON CONFLICT DO NOTHING",
                       (key, outcome_id, kind, target))
            row = db.execute("SELECT detail, performed_utc FROM side_effects WHERE "
                             "idempotency_key = ?", (key,)).fetchone()
            return row["detail"], row["performed_utc"] != ""

    def refund_history(self, order_id: str, customer: str,
                       before_utc: str | None = None) -> RefundHistory:
        """Every refund recorded so far on this order or for this customer, across runs (only
        those recorded before `before_utc`, if given: what a replay checks its caps against)."""
        with self._lock:
            history = self._refund_history(self._db, order_id, customer)
        if before_utc is not None:
            history.rows = [r for r in history.rows if r["requested_utc"] < before_utc]
        return history

    @staticmethod
    def _refund_history(db, order_id: str, customer: str) -> RefundHistory:
        rows = db.execute("SELECT * FROM refunds WHERE order_id = ? OR customer = ? ORDER BY "
                          "requested_utc", (order_id.upper(), customer.lower())).fetchall()
        return RefundHistory(order_id.upper(), customer.lower(), [dict(r) for r in rows])

    def reserve_refunds(self, requests: list[RefundRequest]) -> str | None:
        """Record these refunds in one transaction, unless a request's `guard` refuses it given
        the history at that moment; then none is recorded and the refusal is returned. A request
        already recorded (a redo of the same action) passes again without a second row."""
        try:
            with self._tx() as db:
                # The caps are checked against rows a racing transaction may be adding: on
                # PostgreSQL every reservation waits for the one before (an advisory lock), as
                # SQLite's single writer makes it.
                self._serialize(db, REFUNDS_LOCK)
                for r in requests:
                    if db.execute("SELECT 1 FROM refunds WHERE idempotency_key = ?",
                                  (r.key,)).fetchone():
                        continue
                    refusal = r.guard(self._refund_history(db, r.order_id, r.customer))
                    if refusal:
                        raise _Refused(refusal)
                    db.execute("INSERT INTO refunds (idempotency_key, outcome_id, order_id, "
                               "customer, amount, currency, automatic, requested_utc) VALUES "
                               "(?, ?, ?, ?, ?, ?, ?, ?)",
                               (r.key, r.outcome_id, r.order_id.upper(), r.customer.lower(),
                                r.amount, r.currency.upper(), int(r.automatic), utc_now()))
        except _Refused as refused:
            return str(refused)
        return None

    def side_effect_performed(self, key: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE side_effects SET performed_utc = ? WHERE idempotency_key = ? AND "
                       "performed_utc = ''", (utc_now(), key))

    def still_running(self, outcome_id: int) -> bool:
        """Whether a claimed ticket is still this claim's: a crashed run's recovery may have put
        it back to pending (for a new run), or a peer taken it over from a worker it declared
        dead, while a straggling process was still working it."""
        with self._lock:
            row = self._db.execute("SELECT status, claimed_by FROM outcomes WHERE outcome_id = ?",
                                   (outcome_id,)).fetchone()
            return row is not None and row["status"] == RUNNING and self._holds(row)

    def _holds(self, row) -> bool:
        return not self.owner or row["claimed_by"] in ("", self.owner)

    # --- reading back ----------------------------------------------------------------------------

    def outcomes(self, run_id: str) -> list[Outcome]:
        with self._lock:
            rows = self._db.execute(OUTCOME_ROWS + "WHERE o.run_id = ? ORDER BY o.outcome_id",
                                    (run_id,)).fetchall()
            return [Outcome.from_row(r) for r in rows]

    def ticket(self, key: str, chash: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM tickets WHERE ticket_key = ? AND content_hash = ?",
                                   (key, chash)).fetchone()
            return dict(row) if row else None

    def trail(self, run_id: str, ticket_id: str) -> dict | None:
        """One ticket's full trail in a run: outcome, every agent output, actions and events."""
        with self._lock:
            row = self._db.execute(
                "SELECT outcome_id FROM outcomes WHERE run_id = ? AND (ticket_id = ? OR "
                "ticket_key = ?) ORDER BY outcome_id LIMIT 1", (run_id, ticket_id, ticket_id)
            ).fetchone()
        return self.outcome_trail(row["outcome_id"]) if row else None

    def run_ids_like(self, prefix: str) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT run_id FROM runs WHERE run_id LIKE ? ORDER BY run_id",
                                    (prefix + "%",)).fetchall()
            return [r[0] for r in rows]

    def step_usage(self, run_id: str) -> list[dict]:
        """A run's agent steps summed per (agent, step, model): calls, tokens and time."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.agent, s.step, s.model, COUNT(*) AS calls, "
                "SUM(s.prompt_tokens) AS prompt_tokens, "
                "SUM(s.completion_tokens) AS completion_tokens, "
                "SUM(s.duration_ms) AS duration_ms FROM steps s "
                "JOIN outcomes o ON o.outcome_id = s.outcome_id WHERE o.run_id = ? "
                "GROUP BY s.agent, s.step, s.model ORDER BY MIN(s.step_id)", (run_id,)).fetchall()
            return [dict(r) for r in rows]

    def call_usage(self, run_id: str) -> list[dict]:
        """A run's model requests summed per model: tokens (cached too) and recorded cost."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.model, COUNT(*) AS calls, SUM(c.prompt_tokens) AS prompt_tokens, "
                "SUM(c.completion_tokens) AS completion_tokens, SUM(c.cached_tokens) AS "
                "cached_tokens, SUM(c.cost_usd) AS cost_usd FROM model_calls c JOIN outcomes o "
                "ON o.outcome_id = c.outcome_id WHERE o.run_id = ? GROUP BY c.model "
                "ORDER BY c.model", (run_id,)).fetchall()
            return [dict(r) for r in rows]

    def step_outputs(self, run_id: str, steps: Iterable[str]) -> list[dict]:
        """The structured output of the named steps of a run, with the ticket id of each."""
        names = list(steps)
        if not names:
            return []
        marks = ", ".join("?" for _ in names)
        with self._lock:
            rows = self._db.execute(
                "SELECT s.outcome_id, o.ticket_id, s.round, s.step, s.agent, s.output_json "
                "FROM steps s JOIN outcomes o ON o.outcome_id = s.outcome_id "
                f"WHERE o.run_id = ? AND s.step IN ({marks}) ORDER BY s.step_id",
                (run_id, *names)).fetchall()
            return [dict(r) for r in rows]

    def review_outcome(self, outcome_id: int) -> Outcome | None:
        """One outcome as `outcomes` lists it (with its ticket's customer): what a review sheet's
        `ref` signs, read back by `review apply` to check the row against."""
        with self._lock:
            row = self._db.execute(OUTCOME_ROWS + "WHERE o.outcome_id = ?",
                                   (outcome_id,)).fetchone()
            return Outcome.from_row(row) if row else None

    def outcome_trail(self, outcome_id: int) -> dict | None:
        """`trail` of one outcome named by its id (a run may hold the same ticket id twice)."""
        outcome = self.review_outcome(outcome_id)
        if outcome is None:
            return None
        with self._lock:
            q = self._db.execute
            return {
                "outcome": outcome,
                "ticket": self.ticket(outcome.ticket_key, outcome.content_hash)
                if outcome.ticket_key else None,
                "steps": [Step.from_row(r) for r in q("SELECT * FROM steps WHERE outcome_id = ? "
                                                      "ORDER BY step_id", (outcome_id,))],
                "actions": [dict(r) for r in q("SELECT * FROM actions WHERE outcome_id = ? ORDER BY "
                                               "action_id", (outcome_id,))],
                "events": [dict(r) for r in q("SELECT * FROM events WHERE outcome_id = ? ORDER BY "
                                              "event_id", (outcome_id,))],
                # --batch-api: each model request of this outcome and the batch it went in.
                "batch_requests": [dict(r) for r in q(
                    "SELECT r.custom_id, r.batch_no, b.batch_id, b.state, r.status_code, "
                    "r.answered_utc FROM batch_requests r JOIN batches b ON b.batch_no = "
                    "r.batch_no WHERE r.outcome_id = ? ORDER BY r.custom_id", (outcome_id,))],
            }

    def side_effects(self, outcome_id: int) -> list[dict]:
        """The side effects recorded for one outcome (kind, detail: a file or the arguments)."""
        with self._lock:
            rows = self._db.execute("SELECT kind, detail, performed_utc FROM side_effects WHERE "
                                    "outcome_id = ? ORDER BY performed_utc, idempotency_key",
                                    (outcome_id,)).fetchall()
            return [dict(r) for r in rows]


def _guard(method):
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            if isinstance(exc, self._errors):
                raise LedgerError(self._explain(exc)) from exc
            raise
    return guarded


# Every public method turns a database error (disk full, read-only, damaged file, a server that
# went away) into a LedgerError naming the ledger and the fix: the CLI prints it as one line and
# exits 2.
for _name, _member in list(vars(Ledger).items()):
    if isinstance(_member, types.FunctionType) and not _name.startswith("_"):
        setattr(Ledger, _name, _guard(_member))
