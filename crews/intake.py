"""Intake: turn a source file into a stream of `Ticket`s and `Rejection`s.

Readers are generators, so a queue of any size is read in constant memory; the pipeline pulls one
batch at a time. Every record read yields exactly one item — a ticket, or a rejection with a reason —
so the counts at the end of a run reconcile. Column names of helpdesk exports differ; `map_columns`
matches the common ones automatically (ticket id, subject, body, customer e-mail and name, date).
"""

from __future__ import annotations

import csv
import glob
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .ticket import Rejection, Ticket, content_hash

FIELDS = ("ticket_id", "received_at", "customer", "customer_name", "subject", "body")
ALIASES = {
    "ticket_id": ("ticket_id", "id", "ticket", "ticket_number", "case_id", "case_number",
                  "conversation_id", "number"),
    "received_at": ("received_at", "created_at", "created", "date", "timestamp", "submitted_at",
                    "date_created", "ticket_created"),
    "customer": ("customer", "customer_email", "email", "requester", "requester_email", "from",
                 "contact_email", "sender"),
    "customer_name": ("customer_name", "name", "requester_name", "contact_name", "full_name"),
    "subject": ("subject", "title", "ticket_subject", "summary"),
    "body": ("body", "description", "ticket_description", "message", "text", "content",
             "comment", "question", "details"),
}

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class SourceError(Exception):
    """A source that cannot be read at all (missing, undecodable); the message says what to do."""


def _norm(header: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in (header or "").strip().lower())
    return "_".join(part for part in cleaned.split("_") if part)


def map_columns(headers: list[str]) -> dict[str, str]:
    """Map crewbatch's fields to the export's column names (field -> header)."""
    by_norm = {}
    for h in headers:
        by_norm.setdefault(_norm(h), h)
    mapping = {}
    for fld, aliases in ALIASES.items():
        for alias in aliases:
            if alias in by_norm and by_norm[alias] not in mapping.values():
                mapping[fld] = by_norm[alias]
                break
    return mapping


def expand_sources(patterns: list[str], root: Path) -> list[Path]:
    """Source arguments (paths or globs) as files; relative ones are tried from cwd, then the root."""
    files: list[Path] = []
    for pattern in patterns:
        candidates = []
        for base in (Path.cwd(), root):
            p = Path(pattern).expanduser()
            full = p if p.is_absolute() else base / p
            matches = sorted(Path(m) for m in glob.glob(str(full))) if glob.has_magic(pattern) \
                else ([full] if full.exists() else [])
            if matches:
                candidates = matches
                break
        if not candidates:
            raise SourceError(f"{pattern}: no such file; check the path (relative paths are read "
                              f"from the working directory, then from the project root {root})")
        files.extend(candidates)
    return files


@dataclass(frozen=True)
class IntakeOptions:
    """How to read sources: from settings.yaml `intake` and `limits`, overridden by the CLI."""

    max_body_chars: int = 20_000
    format: str | None = None
    encoding: str | None = None
    columns: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config, format: str | None = None, encoding: str | None = None):
        s = config.settings
        return cls(max_body_chars=s.limits.max_body_chars, format=format or s.intake.format,
                   encoding=encoding or s.intake.encoding, columns=dict(s.intake.columns))


def read_sources(files: list[Path], options: IntakeOptions) -> Iterator[Ticket | Rejection]:
    for path in files:
        yield from read_source(path, options)


def read_source(path: Path, options: IntakeOptions) -> Iterator[Ticket | Rejection]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        yield from read_csv(path, options.max_body_chars)
    else:
        raise SourceError(f"{path}: unsupported source type `{suffix or '(none)'}`; crewbatch reads "
                          ".csv and .tsv files")


def read_csv(path: Path, max_body_chars: int, start_record: int = 1) -> Iterator[Ticket | Rejection]:
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
        sample = handle.read(64 * 1024)
        handle.seek(0)
    except FileNotFoundError as exc:
        raise SourceError(f"{path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it "
                          "as UTF-8") from exc
    with handle:
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
            delimiter = dialect.delimiter
        except csv.Error:
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            headers = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as exc:
            raise SourceError(f"{path}: cannot read the header row: {exc}") from exc
        mapping = map_columns(headers)
        if "body" not in mapping:
            raise SourceError(f"{path}: no column holds the ticket text (looked for "
                              f"{', '.join(ALIASES['body'])}); rename that column to `body`")
        index = {fld: headers.index(col) for fld, col in mapping.items()}
        record_no = start_record - 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as exc:
                record_no += 1
                yield Rejection(record_no, str(path), f"unreadable CSV record: {exc}")
                continue
            record_no += 1
            if not any(cell.strip() for cell in row):
                record_no -= 1  # a blank line is not a record
                continue
            yield _ticket_from_row(path, record_no, headers, row, index, max_body_chars)


def _ticket_from_row(path, record_no, headers, row, index, max_body_chars) -> Ticket | Rejection:
    def get(fld: str) -> str:
        i = index.get(fld)
        return row[i].replace("\x00", "").strip() if i is not None and i < len(row) else ""

    values = {fld: get(fld) for fld in FIELDS}
    source = f"{path.name}:{record_no}"
    if len(row) != len(headers):
        return Rejection(record_no, source, f"row has {len(row)} fields, the header has "
                         f"{len(headers)}", values["ticket_id"], ",".join(row)[:500])
    if not values["body"] and not values["subject"]:
        return Rejection(record_no, source, "no ticket text (subject and body are empty)",
                         values["ticket_id"])
    if len(values["body"]) > max_body_chars:
        return Rejection(record_no, source, f"body is {len(values['body'])} characters, over the "
                         f"limit of {max_body_chars} (limits.max_body_chars in settings.yaml)",
                         values["ticket_id"])
    key = values["ticket_id"] or "h-" + content_hash(values["customer"], values["subject"],
                                                     values["body"])[:16]
    extra = {h: row[i] for i, h in enumerate(headers) if i not in index.values()}
    return Ticket(key=key, ticket_id=values["ticket_id"] or key, source=source,
                  received_at=values["received_at"], customer=values["customer"].lower(),
                  customer_name=values["customer_name"], subject=values["subject"],
                  body=values["body"] or values["subject"], record_no=record_no, extra=extra)
