"""Intake: turn ticket sources into a stream of `Ticket`s and `Rejection`s.

Sources are what support teams export: CSV/TSV from a helpdesk (any delimiter, encoding, line
ending), JSON Lines, and mailboxes (mbox, Maildir, a folder of .eml files; see `mail`). The format
comes from --format, else the path, else the first bytes. Readers are generators, so a queue of any
size is read in constant memory. Every record read yields exactly one item — a ticket, or a
rejection with a reason — so a run's counts reconcile; an e-mail thread is one record whose ticket
says how many messages it merged. Column names differ per helpdesk: `map_columns` matches the
common ones unless settings.yaml `intake.columns` names them. Every field passes
`ticket.clean_fields` whatever the format, and every file is opened through `files` (regular files
only), so a hostile export or mail folder yields rejections, never a crash or a hang.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import glob
import io
import itertools
import json
import os
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from . import files, mail
from .settings import FORMATS
from .ticket import FieldProblem, Rejection, Ticket, clean_fields, content_hash, escape

FIELDS = ("ticket_id", "received_at", "customer", "customer_name", "subject", "body")
# Normalised header names (lower case, `_` for anything else) per field, best first. They cover
# Zendesk (Id, Requester email, Subject, Description, Created at), Freshdesk (Ticket ID, Email,
# Full name, Created time, description_text), Help Scout (Conversation ID, Customer email,
# Customer, Preview) and the Kaggle customer-support dataset (Ticket ID, Customer Email, ...).
ALIASES = {
    "ticket_id": ("ticket_id", "id", "ticket", "ticket_number", "ticket_no", "case_id",
                  "case_number", "conversation_id", "conversation_number", "number",
                  "issue_id", "request_id"),
    "received_at": ("received_at", "created_at", "created_time", "created", "date", "timestamp",
                    "submitted_at", "date_created", "ticket_created", "created_on", "opened_at",
                    "creation_date", "time", "datetime"),
    "customer": ("customer_email", "email", "e_mail", "mail", "requester_email",
                 "requester_email_address", "contact_email", "from_email", "sender_email",
                 "email_address", "customer_email_address", "via_source_from_address",
                 "customer", "from", "sender", "requester"),
    "customer_name": ("customer_name", "name", "requester_name", "contact_name", "full_name",
                      "contact", "from_name", "sender_name", "requester", "customer"),
    "subject": ("subject", "title", "ticket_subject", "summary", "topic", "issue", "raw_subject"),
    "body": ("body", "description_text", "description", "ticket_description", "message",
             "text", "content", "comment", "question", "details", "preview", "message_body",
             "issue_description", "customer_message", "request", "utterance", "complaint"),
}
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".mbox": "mbox", ".mbx": "mbox", ".eml": "eml"}
SAMPLE_BYTES = 1 << 20
RAGGED_PROBE = 20  # this many ragged records in a row at the top means the file is mis-read
HTML_BODY = re.compile(r"^\s*<(!doctype|html|body|div|p|br|table|span|font)\b", re.IGNORECASE)
# What to do about a field clean_fields refuses, by where the record came from
TABLE_FIX = "fix the export"
CUSTOMER_FIX = ("fix the export, or name the column that holds the address in config/settings.yaml "
                "intake.columns.customer")
MAIL_FIX = "a person must open the message"

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class SourceError(Exception):
    """A source that cannot be read at all (missing, undecodable); the message says what to do."""


def _norm(header: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in (header or "").strip().lower())
    return "_".join(part for part in cleaned.split("_") if part)


def map_columns(headers: list[str], columns: dict[str, str] | None = None) -> dict[str, str]:
    """Map crewbatch's fields to the export's column names (field -> header).

    `columns` (settings.yaml `intake.columns`) wins: each names a header, exactly or by its
    normalised spelling, or "" to leave the field unmapped; the other fields match ALIASES.
    """
    by_norm: dict[str, str] = {}
    for h in headers:
        by_norm.setdefault(_norm(h), h)
    mapping: dict[str, str] = {}
    chosen = dict(columns or {})
    for fld, col in chosen.items():
        if col and col in headers:
            mapping[fld] = col
        elif col and _norm(col) in by_norm:
            mapping[fld] = by_norm[_norm(col)]
    for fld, aliases in ALIASES.items():
        if fld in chosen:
            continue
        for alias in aliases:
            if alias in by_norm and by_norm[alias] not in mapping.values():
                mapping[fld] = by_norm[alias]
                break
    return {fld: mapping[fld] for fld in FIELDS if fld in mapping}


def _check_columns(path: Path, headers: list[str], options: IntakeOptions) -> dict[str, str]:
    mapping = map_columns(headers, options.columns)
    for fld, col in options.columns.items():
        if fld not in FIELDS:
            hint = difflib.get_close_matches(fld, FIELDS, n=1)
            raise SourceError(f"config/settings.yaml: `intake.columns.{fld}` is not a ticket field"
                              f"{f' (did you mean `{hint[0]}`?)' if hint else ''}; the fields are "
                              f"{', '.join(FIELDS)}")
        if col and fld not in mapping:
            raise SourceError(f"{path}: config/settings.yaml `intake.columns.{fld}` names column "
                              f"`{col}`, which is not in the header; the columns are "
                              f"{', '.join(h for h in headers if h)}")
    return mapping


def expand_sources(patterns: list[str], root: Path, from_settings: bool = False,
                   follow_symlinks: bool = False) -> list[Path]:
    """Source arguments (paths or globs) as files and directories; relative ones are tried from
    cwd, then the root (`sources` of settings.yaml: from the root only, as cron starts in $HOME).
    A glob that matches nothing is an empty source (a nightly drop folder may be empty); a plain
    path that does not exist is an error. A path named is read even if it is a symbolic link; a
    link a glob matched is refused unless `follow_symlinks` (intake.follow_symlinks): a drop
    folder is written by others, as a mail folder is (see `files`)."""
    found: list[Path] = []
    for pattern in patterns:
        candidates = []
        if glob.has_magic(pattern) and not any(
                glob.glob(str(b / pattern)) for b in ((root,) if from_settings
                                                      else (Path.cwd(), root))):
            continue
        for base in ((root,) if from_settings else (Path.cwd(), root)):
            p = Path(pattern).expanduser()
            full = p if p.is_absolute() else base / p
            matches = sorted(Path(m) for m in glob.glob(str(full))) if glob.has_magic(pattern) \
                else ([full] if full.exists() or full.is_symlink() else [])
            if matches:
                candidates = matches
                break
        if not candidates:
            raise SourceError(f"{pattern}: no such file; check the path (relative paths are read "
                              f"from the working directory, then from the project root {root})")
        links = [c for c in candidates if glob.has_magic(pattern) and c.is_symlink()]
        if links and not follow_symlinks:
            raise SourceError(f"{links[0]}: a symbolic link (to {os.readlink(links[0])}) matched "
                              f"by `{pattern}`, not followed; name the file itself, or "
                              f"{files.FOLLOW_HINT}")
        found.extend(candidates)
    return found


@dataclass(frozen=True)
class IntakeOptions:
    """How to read sources: from settings.yaml `intake` and `limits`, overridden by the CLI."""

    max_body_chars: int = 20_000
    format: str | None = None
    encoding: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    follow_symlinks: bool = False      # inside mail folders; a SOURCE named is always followed

    @classmethod
    def from_config(cls, config, format: str | None = None, encoding: str | None = None):
        s = config.settings
        return cls(max_body_chars=s.limits.max_body_chars, format=format or s.intake.format,
                   encoding=encoding or s.intake.encoding, columns=dict(s.intake.columns),
                   follow_symlinks=s.intake.follow_symlinks)


# --- which format --------------------------------------------------------------------------------


def detect_format(path: Path, options: IntakeOptions) -> str:
    """--format if given, else a directory's layout, else the suffix, else the first bytes."""
    fmt = options.format
    if fmt and fmt not in FORMATS:
        raise SourceError(f"unknown format `{fmt}`; use one of {', '.join(FORMATS)}")
    is_dir = _is_folder(path)
    try:
        maildir = is_dir and mail.is_maildir(path)
    except OSError as exc:  # a folder without the x bit: even cur/ cannot be looked at
        raise SourceError(files.read_problem(path, exc)) from exc
    if fmt:
        if is_dir and fmt not in ("maildir", "eml"):
            raise SourceError(f"{path}: is a directory, but the format is {fmt}; a directory is "
                              "read as a Maildir or a folder of .eml files")
        if fmt == "maildir" and not maildir:
            raise SourceError(f"{path}: not a Maildir (it needs cur/ and new/ subdirectories); "
                              "for a folder of message files use --format eml")
        return fmt
    if is_dir:
        return "maildir" if maildir else "eml"
    suffix = path.suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    head = _head(path, 4096)
    _refuse_binary(path, head)
    if mail.looks_like_mbox(head):
        return "mbox"
    if mail.looks_like_message(head) and re.search(
            rb"(?im)^(message-id|received|from|subject|date|mime-version|return-path):", head):
        return "eml"
    text = head.lstrip(codecs.BOM_UTF8).lstrip()
    if suffix == ".json" and text.startswith(b"["):
        raise SourceError(f"{path}: a JSON array; crewbatch reads JSON Lines (one object per "
                          f"line): convert it with `jq -c '.[]' {path.name} > "
                          f"{path.stem}.jsonl`")
    if text.startswith(b"{"):
        return "jsonl"
    return "csv"


def _is_folder(path: Path) -> bool:
    """Whether a SOURCE is a folder (else a regular file); SourceError for anything else."""
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise SourceError(_missing(path)) from exc
    except OSError as exc:
        raise SourceError(files.read_problem(path, exc)) from exc
    if stat.S_ISDIR(st.st_mode):
        return True
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{path}: is {files.kind(st.st_mode)}, not a regular file; crewbatch "
                          "reads regular files and folders")
    return False


def _missing(path: Path) -> str:
    if os.path.islink(path):
        return f"{path}: a symbolic link to {os.readlink(path)}, which does not exist; fix the link"
    return f"{path}: no such file"


def _open_source(path: Path) -> BinaryIO:
    """A SOURCE file, opened as `files` opens input (a link is followed: the operator named it)."""
    try:
        return files.open_regular(path, follow_symlinks=True)
    except files.NotRegularFile as exc:
        raise SourceError(_missing(path) if exc.what == "a broken symbolic link" else
                          f"{path}: is {exc.what}, not a regular file; crewbatch reads regular "
                          "files and folders") from exc
    except FileNotFoundError as exc:
        raise SourceError(_missing(path)) from exc
    except OSError as exc:
        raise SourceError(files.read_problem(path, exc)) from exc


def _head(path: Path, n: int = SAMPLE_BYTES) -> bytes:
    with _open_source(path) as f:
        try:
            return f.read(n)
        except OSError as exc:
            raise SourceError(files.read_problem(path, exc)) from exc


def _refuse_binary(path: Path, head: bytes) -> None:
    if head.startswith(b"PK\x03\x04"):
        raise SourceError(f"{path}: a ZIP archive or Excel workbook, not text; save the sheet as "
                          "CSV UTF-8 and pass the .csv (or unzip the archive)")
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        raise SourceError(f"{path}: an old Excel (.xls) or Outlook (.msg) file; save it as CSV "
                          "UTF-8 (or the mail as .eml) and pass that")
    if head.startswith(b"\x1f\x8b"):
        raise SourceError(f"{path}: gzip-compressed; decompress it first (gunzip {path.name})")


# --- text files: encoding, dialect ---------------------------------------------------------------

BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"))
STRAY_BYTE = re.compile("[\udc80-\udcff]")   # a byte UTF-8 refused, as surrogateescape keeps it
NON_ASCII = re.compile("[^\x00-\x7f]")


def detect_encoding(head: bytes, complete: bool = True) -> tuple[str, str]:
    """(codec, why): a byte-order mark, else UTF-16 by its NUL pattern, else UTF-8 (strict, or
    but for a few stray bytes), else what charset-normalizer finds. `complete`: head is the
    whole file.

    Measured by benchmarks/library_bench.py on 377 files, mail parts and test inputs of known
    text: 353 decoded right before charset-normalizer, 312 by the library alone, 370 by this.
    The library decides where the bytes are neither marked nor UTF-8, after being asked
    whether they read cleanly as cp1252 (by its own mess detector): for 8-bit Western text it
    names cp1250, cp850, hp_roman8 or big5 by language guesses, right for 156 of 210 cases
    where cp1252 is right for all 210; for CJK it is right for 15 of 20 cases, where cp1252 was
    right for 2 (7-bit ISO-2022-JP, which is ASCII to the UTF-8 check, is handed to it too).
    The rules before it stay ours where it is wrong or no better: it names a UTF-8 BOM `utf_8`
    (the BOM would stay in the first column's name: 3 of 5 BOM files wrong); UTF-16 without a
    BOM it reads as well as the NUL rule (80 of 82), but such text is valid UTF-8 too, so the
    NUL rule has to come before the UTF-8 check.
    """
    for bom, codec in BOMS:
        if head.startswith(bom):
            return codec, "byte-order mark"
    if len(head) >= 4:
        even, odd = head[0::2], head[1::2]
        if odd.count(0) > len(odd) * 0.3 and even.count(0) < len(even) * 0.05:
            return "utf-16-le", "detected: NUL in every other byte"
        if even.count(0) > len(even) * 0.3 and odd.count(0) < len(odd) * 0.05:
            return "utf-16-be", "detected: NUL in every other byte"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not complete and exc.reason == "unexpected end of data" and exc.start >= len(head) - 3:
            return "utf-8", "detected"  # the sample ends inside a character, not the file
    else:
        if b"\x1b" in head and head.isascii():  # escape sequences: ISO-2022-JP (7-bit Japanese)
            found = _charset_normalizer(head)
            if found and found[0].startswith("iso2022"):
                return found
        return "utf-8", "detected"
    text = head.decode("utf-8", errors="surrogateescape")
    stray = len(STRAY_BYTE.findall(text))
    if len(NON_ASCII.findall(text)) - stray >= 10 * stray:
        # UTF-8 but for a few stray bytes (one cp1252 record pasted into a UTF-8 export), which
        # the text layer reads as cp1252; charset-normalizer names hp_roman8 for such a file
        # (the repo's test of it), which garbles every UTF-8 record
        return "utf-8", f"detected: UTF-8, {stray} stray byte(s) read as cp1252"
    from charset_normalizer import from_bytes

    if from_bytes(head, cp_isolation=["cp1252"]).best() is None:
        found = _charset_normalizer(head)
        if found:
            return found
    return "cp1252", "detected: not valid UTF-8"


def _charset_normalizer(head: bytes) -> tuple[str, str] | None:
    from charset_normalizer import from_bytes

    found = from_bytes(head).best()
    return (codecs.lookup(found.encoding).name, "detected by charset-normalizer") if found \
        else None


@dataclass
class _Text:
    handle: object
    encoding: str
    why: str
    strict: bool


def _open_text(path: Path, options: IntakeOptions) -> _Text:
    head = _head(path)
    _refuse_binary(path, head)
    if options.encoding:
        try:
            codec = codecs.lookup(options.encoding).name
        except LookupError as exc:
            raise SourceError(f"unknown encoding `{options.encoding}` (--encoding or "
                              "settings.yaml intake.encoding); use a name such as utf-8, cp1252, "
                              "latin-1, utf-16") from exc
        if codec == "utf-8" and head.startswith(codecs.BOM_UTF8):
            codec = "utf-8-sig"
        why, strict = "named", True
    else:
        codec, why = detect_encoding(head, complete=len(head) < SAMPLE_BYTES)
        if _looks_binary(head) and not codec.startswith(("utf-16", "utf-32")):
            raise SourceError(f"{path}: binary data, not text; if it is text in an unusual "
                              "encoding, name it with --encoding (e.g. --encoding utf-16)")
        # UTF-16/32 have no sensible byte-wise fallback; 8-bit text takes cp1252 for a stray byte
        strict = codec.startswith(("utf-16", "utf-32"))
    errors = "strict" if strict else "crewbatch-cp1252"
    handle = io.TextIOWrapper(_open_source(path), encoding=codec, errors=errors, newline="")
    return _Text(handle, codec, why, strict)


CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\x0b\x0c\x1b")


def _looks_binary(head: bytes) -> bool:
    # text has the odd NUL or control byte (csvkit's null_byte.csv); binary data is full of them
    controls = len(head) - len(head.translate(None, CONTROL_BYTES))
    return controls > 8 and controls > len(head) * 0.02


def _decode_error(path: Path, text: _Text, line: int, exc: UnicodeDecodeError) -> SourceError:
    # the text layer decodes ahead in chunks, so find the failing line from the bytes themselves
    line, reason = _locate_decode_error(path, text.encoding) or (line, exc.reason)
    return SourceError(f"{path}: not valid {text.encoding} text near line {line} ({reason}); "
                       "name the file's encoding with --encoding (e.g. --encoding cp1252), or "
                       "leave --encoding out to detect it")


def _locate_decode_error(path: Path, codec: str) -> tuple[int, str] | None:
    decoder = codecs.getincrementaldecoder(codec)()
    line = 1
    with _open_source(path) as f:
        while chunk := f.read(1 << 16):
            try:
                line += decoder.decode(chunk).count("\n")
            except UnicodeDecodeError as exc:
                before = chunk[:max(0, exc.start)].decode(codec, errors="replace")
                return line + before.count("\n"), exc.reason
    return None


def _sniff_delimiter(first_line: str) -> str:
    """The delimiter the header line uses most, outside quotes (ties: , ; TAB |)."""
    counts = dict.fromkeys(",;\t|", 0)
    quoted = False
    for ch in first_line:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


class _Lines:
    """The file's lines for csv.reader, keeping those of the current record (raw text, line no.)."""

    def __init__(self, handle):
        self.handle = handle
        self.taken: list[str] = []
        self.count = 0          # the physical line number of the last line handed out
        self.pushed: list[str] = []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.pushed.pop() if self.pushed else next(self.handle)
        self.count += 1
        self.taken.append(line)
        return line

    def push_back(self, line: str) -> None:
        self.pushed.append(line)
        self.count -= 1


def _ends_inside_quotes(raw: str, delimiter: str) -> bool:
    """Whether a record's text stops inside a quoted field (a file cut off mid-record)."""
    state = "start"
    for ch in raw:
        if state == "quoted":
            if ch == '"':
                state = "quote?"
        elif state == "quote?":
            state = "quoted" if ch == '"' else "start" if ch == delimiter or ch in "\r\n" \
                else "plain"
        elif ch == delimiter or ch in "\r\n":
            state = "start"
        elif state == "start" and ch == '"':
            state = "quoted"
        else:
            state = "plain"
    return state == "quoted"


@dataclass
class TableRecord:
    """A record of a Table: its first line, its cells, its raw text, and why it does not fit the
    header (ragged, cut off), if it does not."""

    line: int
    cells: list[str]
    raw: str
    problem: str = ""


class Table:
    """One delimited file: encoding, delimiter and header decided up front, then its records.

    Every CSV crewbatch reads goes through this: ticket exports, and review sheets coming back
    from a spreadsheet (review.py), so both get the same encodings, delimiters and quoting.
    Use it as a context manager, or call `close`.
    """

    def __init__(self, path: Path, options: IntakeOptions, delimiter: str | None = None):
        self.path = path
        self.text = _open_text(path, options)
        self.lines = _Lines(self.text.handle)
        self.headers: list[str] = []
        try:
            first = next((line for line in self.lines if line.strip()), "")
            if first:
                self.lines.push_back(first)
            self.delimiter = delimiter or _sniff_delimiter(first)
            self.reader = csv.reader(self.lines, delimiter=self.delimiter, quotechar='"',
                                     doublequote=True, strict=False)
            self._read_header()
        except UnicodeDecodeError as exc:
            self.close()
            raise _decode_error(path, self.text, self.lines.count, exc) from exc
        except OSError as exc:
            self.close()
            raise SourceError(files.read_problem(path, exc)) from exc
        except csv.Error as exc:
            self.close()
            raise SourceError(f"{path}: cannot read the header row (line {self.lines.count}: "
                              f"{exc}); check that the file is CSV") from exc

    def close(self) -> None:
        self.text.handle.close()

    def __enter__(self) -> Table:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read_header(self) -> None:
        for row in self.reader:
            if any(cell.strip() for cell in row):
                self.headers = [row[0].lstrip("\ufeff"), *row[1:]]
                return

    @property
    def keys(self) -> list[str]:
        """Unique, non-empty names for the columns (blank headers become column_N)."""
        seen: dict[str, int] = {}
        keys = []
        for i, h in enumerate(self.headers):
            name = h if h.strip() else f"column_{i + 1}"
            if name in seen:
                seen[name] += 1
                name = f"{name}_{seen[name]}"
            seen.setdefault(name, 1)
            keys.append(name)
        return keys

    def records(self) -> Iterator[TableRecord]:
        """Records with their first line; one record of look-ahead finds a file cut mid-record."""
        held: TableRecord | None = None
        width = len(self.headers)
        while True:
            start = self.lines.count + 1
            self.lines.taken = []
            try:
                row = next(self.reader)
            except StopIteration:
                break
            except UnicodeDecodeError as exc:
                raise _decode_error(self.path, self.text, self.lines.count, exc) from exc
            except OSError as exc:  # EIO half-way through: stop, as for an undecodable file
                raise SourceError(files.read_problem(self.path, exc)) from exc
            except csv.Error as exc:
                row, problem = [], f"line {start}: unreadable CSV record ({exc})"
            else:
                problem = ""
            if not problem and not any(cell.strip() for cell in row):
                continue  # blank lines and Excel's all-empty rows are not records
            raw = "".join(self.lines.taken)
            if not problem and len(row) != width:
                if len(row) > width and not any(c.strip() for c in row[width:]):
                    row = row[:width]  # trailing empty cells, as spreadsheets add them
                else:
                    problem = (f"line {start}: row has {len(row)} field{'s' * (len(row) != 1)}, "
                               f"the header has {width}")
            if held is not None:
                yield held
            held = TableRecord(start, row, raw, problem)
        if held is not None:
            if not held.problem and _ends_inside_quotes(held.raw, self.delimiter):
                held.problem = (f"line {held.line}: the file ends inside a quoted field; the "
                                "record is cut off (an incomplete export?)")
            yield held


def read_rows(path: Path, options: IntakeOptions | None = None) -> Iterator[dict[str, str]]:
    """A CSV/TSV/JSONL source's records as header-keyed dicts, cells exactly as written.

    Ragged rows are left out here (read_source reports them); this is what the export says.
    """
    options = options or IntakeOptions()
    fmt = detect_format(path, options)
    if fmt == "jsonl":
        for item in _json_objects(path, options):
            if isinstance(item[1], dict):
                yield item[1]
        return
    if fmt not in ("csv", "tsv"):
        raise SourceError(f"{path}: a {fmt} source has no rows; read it with read_source")
    table = Table(path, options, "\t" if fmt == "tsv" else None)
    try:
        keys = table.keys
        for record in table.records():
            if not record.problem:
                yield dict(zip(keys, record.cells, strict=True))
    finally:
        table.close()


# --- reading any source --------------------------------------------------------------------------


def read_sources(files: list[Path], options: IntakeOptions) -> Iterator[Ticket | Rejection]:
    """Every record of every source, numbered 1, 2, ... across them (a run's record numbers)."""
    count = 0
    for path in files:
        for item in read_source(path, options, start_record=count + 1):
            count += 1
            yield item


def read_source(path: Path, options: IntakeOptions, start_record: int = 1
                ) -> Iterator[Ticket | Rejection]:
    fmt = detect_format(path, options)
    if fmt in ("csv", "tsv"):
        yield from read_csv(path, options, start_record, fmt)
    elif fmt == "jsonl":
        yield from read_jsonl(path, options, start_record)
    else:
        yield from read_mail(path, fmt, options, start_record)


def read_csv(path: Path, options: IntakeOptions, start_record: int = 1, fmt: str = "csv"
             ) -> Iterator[Ticket | Rejection]:
    table = Table(path, options, "\t" if fmt == "tsv" else None)
    try:
        if not table.headers:
            return  # an empty file has no records
        mapping = _check_columns(path, table.headers, options)
        if "body" not in mapping:
            raise SourceError(f"{path}: no column holds the ticket text (looked for "
                              f"{', '.join(ALIASES['body'])}); name it in config/settings.yaml "
                              "under intake.columns (e.g. `body: \"Ticket Description\"`) or "
                              "rename that column to `body`")
        keys = table.keys
        index = {fld: table.headers.index(col) for fld, col in mapping.items()}
        extra_names = {i: " ".join(k.split()) for i, k in enumerate(keys)
                       if i not in index.values()}
        records = table.records()
        probe = list(itertools.islice(records, RAGGED_PROBE))
        if len(probe) == RAGGED_PROBE and all(r.problem for r in probe):
            first = probe[0]
            raise SourceError(
                f"{path}: the first {RAGGED_PROBE} records do not fit the header of "
                f"{len(table.headers)} columns ({first.problem}); the delimiter "
                f"{table.delimiter!r} or the quoting is wrong, as after a spreadsheet re-saved "
                "the file; open it, fix it and export it again as CSV")
        record_no = start_record - 1
        name = _display(path.name)
        for record in _chain(probe, records):
            record_no += 1
            source = f"{name}:{record.line}"
            if record.problem:
                ticket_id = record.cells[index["ticket_id"]].strip() \
                    if "ticket_id" in index and len(record.cells) > index["ticket_id"] else ""
                yield Rejection(record_no, source, record.problem, ticket_id, record.raw[:500])
                continue
            values = {fld: record.cells[i].replace("\x00", "").strip() for fld, i in index.items()}
            extra = {extra_names[i]: cell for i, cell in enumerate(record.cells)
                     if i in extra_names}
            yield _ticket(values, record_no, source, extra, options.max_body_chars)
    finally:
        table.close()


def _chain(first: list, rest: Iterator) -> Iterator:
    yield from first
    yield from rest


def _json_objects(path: Path, options: IntakeOptions) -> Iterator[tuple[int, dict | str, str]]:
    """(line, flattened object or the reason it is not one, raw line) per non-blank line."""
    text = _open_text(path, options)
    line_no = 0
    try:
        with text.handle as handle:
            try:
                for line in handle:
                    line_no += 1
                    if not line.strip():
                        continue
                    try:
                        value = json.loads(line.lstrip("\ufeff"))
                    except json.JSONDecodeError as exc:
                        yield line_no, f"line {line_no}: not valid JSON ({exc.msg} at column " \
                                       f"{exc.colno})", line
                        continue
                    if not isinstance(value, dict):
                        yield line_no, f"line {line_no}: a JSON {type(value).__name__} is not a " \
                                       "ticket record (expected an object)", line
                        continue
                    yield line_no, _flatten(value), line
            except UnicodeDecodeError as exc:
                raise _decode_error(path, text, line_no + 1, exc) from exc
            except OSError as exc:
                raise SourceError(files.read_problem(path, exc)) from exc
    finally:
        text.handle.close()


def _flatten(value: dict, prefix: str = "") -> dict[str, str]:
    # nested objects ({"requester": {"email": ...}}) become "requester.email", as exports name them
    out: dict[str, str] = {}
    for k, v in value.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif v is None:
            out[key] = ""
        elif isinstance(v, str):
            out[key] = v
        else:
            out[key] = json.dumps(v, ensure_ascii=False)
    return out


def read_jsonl(path: Path, options: IntakeOptions, start_record: int = 1
               ) -> Iterator[Ticket | Rejection]:
    record_no = start_record - 1
    mappings: dict[tuple[str, ...], dict[str, str]] = {}
    name = _display(path.name)
    for line, obj, raw in _json_objects(path, options):
        record_no += 1
        source = f"{name}:{line}"
        if isinstance(obj, str):
            yield Rejection(record_no, source, obj, "", raw[:500])
            continue
        keys = tuple(obj)
        if keys not in mappings:
            mappings[keys] = _check_columns(path, list(keys), options)
        mapping = mappings[keys]
        if "body" not in mapping:
            yield Rejection(record_no, source, f"line {line}: no field holds the ticket text "
                            f"(fields: {', '.join(keys)}); name it in config/settings.yaml under "
                            "intake.columns.body", obj.get(mapping.get("ticket_id", ""), ""),
                            raw[:500])
            continue
        values = {fld: obj[col].replace("\x00", "").strip() for fld, col in mapping.items()}
        extra = {k: v for k, v in obj.items() if k not in mapping.values()}
        yield _ticket(values, record_no, source, extra, options.max_body_chars)


def _ticket(values: dict[str, str], record_no: int, source: str, extra: dict,
            max_body_chars: int) -> Ticket | Rejection:
    values = {fld: values.get(fld, "") for fld in FIELDS}
    if HTML_BODY.match(values["body"]):
        values["body"] = mail.html_to_text(values["body"])
    try:
        values = clean_fields(values, extra)
    except FieldProblem as problem:
        fix = CUSTOMER_FIX if problem.kind == "address" else TABLE_FIX
        return Rejection(record_no, source, f"{problem}; {fix}", values["ticket_id"])
    if not values["body"] and not values["subject"]:
        return Rejection(record_no, source, "no ticket text (subject and body are empty)",
                         values["ticket_id"])
    if len(values["body"]) > max_body_chars:
        return Rejection(record_no, source, f"body is {len(values['body'])} characters, over the "
                         f"limit of {max_body_chars} (limits.max_body_chars in settings.yaml)",
                         values["ticket_id"])
    key = values["ticket_id"] or "h-" + content_hash(values["customer"], values["subject"],
                                                     values["body"])[:16]
    return Ticket(key=key, ticket_id=values["ticket_id"] or key, source=source,
                  received_at=values["received_at"], customer=values["customer"].lower(),
                  customer_name=values["customer_name"], subject=values["subject"],
                  body=values["body"] or values["subject"], record_no=record_no, extra=extra)


# --- mailboxes -----------------------------------------------------------------------------------


def _envelopes(path: Path, fmt: str, follow_symlinks: bool) -> Iterator[mail.Envelope]:
    # the SOURCE itself is followed (the operator named it); what is found inside it is not
    if fmt == "mbox":
        yield from mail.scan_mbox(path)
    elif fmt == "maildir":
        for f in mail.maildir_files(path, follow_symlinks):
            yield mail.scan_maildir_file(f, follow_symlinks)
    elif path.is_dir():
        for f in mail.folder_files(path, follow_symlinks):
            yield from mail.scan_file(f, folder=True, follow_symlinks=follow_symlinks)
    else:
        yield mail.Envelope(path, 0, 0, -1, *mail.scan_links(path), follow_symlinks=True)


def read_mail(path: Path, fmt: str, options: IntakeOptions, start_record: int = 1
              ) -> Iterator[Ticket | Rejection]:
    """An mbox, Maildir, .eml folder or single message: one ticket per thread.

    Pass 1 (`_envelopes`) keeps each message's position and ids; `mail.threads` groups them; pass
    2 reads one thread at a time when its last message in file order comes up.
    """
    try:
        envelopes = list(_envelopes(path, fmt, options.follow_symlinks))
    except files.NotRegularFile as exc:  # the SOURCE file itself, replaced since detect_format
        raise SourceError(f"{path}: is {exc.what}, not a regular file; crewbatch reads regular "
                          "files and folders") from exc
    except OSError as exc:
        raise SourceError(files.read_problem(path, exc)) from exc
    base = path if path.is_dir() else None
    counter = iter(range(start_record, sys.maxsize))
    for group in mail.threads(envelopes):
        yield from _thread_items(group, base, counter, options.max_body_chars)


def _display(name: str) -> str:
    """A file name as a record's source: undecodable bytes and control characters escaped (the
    ledger stores UTF-8; a name is the operator's, so it is shown, not refused)."""
    try:
        name = os.fsencode(name).decode("utf-8", "backslashreplace")
    except UnicodeError:
        pass
    return escape(name)


def _label(env: mail.Envelope, base: Path | None) -> str:
    name = _display(env.path.relative_to(base).as_posix() if base else env.path.name)
    return f"{name}:{env.number}" if env.number else name


@dataclass
class _Read:
    env: mail.Envelope
    label: str
    mail: mail.Mail
    copies: int = 1


def _thread_items(group: list[mail.Envelope], base: Path | None, counter: Iterator[int],
                  max_body_chars: int) -> Iterator[Ticket | Rejection]:
    read: list[_Read] = []
    by_id: dict[str, _Read] = {}
    for env in group:
        label = _label(env, base)
        if env.problem:
            yield Rejection(next(counter), label, env.problem)
            continue
        try:
            parsed = mail.parse(env.read())
        except files.NotRegularFile as exc:  # replaced by a link or a FIFO since pass 1
            yield Rejection(next(counter), label, exc.reason)
            continue
        except Exception as exc:  # noqa: BLE001 — the email package fails in many ways on broken input
            yield Rejection(next(counter), label, f"unreadable message ({type(exc).__name__}: "
                            f"{exc})"[:300])
            continue
        if parsed.message_id and parsed.message_id in by_id:
            by_id[parsed.message_id].copies += 1  # the same message delivered twice
            continue
        item = _Read(env, label, parsed)
        read.append(item)
        if parsed.message_id:
            by_id[parsed.message_id] = item
    if not read:
        return
    if all(r.mail.timestamp is not None for r in read):
        read.sort(key=lambda r: r.mail.timestamp)  # stable: file order breaks ties
    usable = [r for r in read if not r.mail.unreadable and (r.mail.text or r.mail.subject)]
    latest = usable[-1] if usable else None
    body = (latest.mail.text or latest.mail.subject) if latest else ""
    if latest is None or len(body) > max_body_chars:
        for r in read:
            reason = _mail_problem(r.mail, body if r is latest else "", max_body_chars)
            for _ in range(r.copies):
                yield Rejection(next(counter), r.label, reason, r.mail.message_id)
        return
    m = latest.mail
    earliest = read[0].mail
    key = (earliest.references[0] if earliest.references else earliest.message_id) or \
        "h-" + content_hash(m.sender, m.subject, body)[:16]
    earlier = [r for r in read if r is not latest]
    history = _history(earlier, max_body_chars) if earlier else m.quoted
    extra = {k: v for k, v in {
        "message_id": m.message_id, "from": m.headers.get("from", ""),
        "to": m.headers.get("to", ""), "cc": m.headers.get("cc", ""),
        "date": m.headers.get("date", ""), "signature": m.signature,
        "thread": ", ".join(r.label for r in earlier)}.items() if v}
    if latest.copies > 1:
        extra["copies"] = str(latest.copies)
    try:
        fields = clean_fields({
            "ticket_id": key, "received_at": m.date, "customer": m.sender,
            "customer_name": m.sender_name,
            "subject": m.subject or next((r.mail.subject for r in read if r.mail.subject), ""),
            "body": body, "history": history}, extra)
        attachments = tuple(clean_fields({"attachment": a})["attachment"] for a in m.attachments)
    except FieldProblem as problem:
        # the thread cannot become a ticket, so each of its messages is rejected, for the count
        for r in read:
            for _ in range(r.copies):
                yield Rejection(next(counter), r.label, f"{problem}; {MAIL_FIX}",
                                r.mail.message_id)
        return
    yield Ticket(key=key, source=latest.label, record_no=next(counter), extra=extra,
                 attachments=attachments, messages=sum(r.copies for r in read), **fields)


def _mail_problem(m: mail.Mail, body: str, max_body_chars: int) -> str:
    if m.unreadable:
        return f"the message cannot be read: {m.unreadable}; a person must open it"
    if body:
        return (f"body is {len(body)} characters, over the limit of {max_body_chars} "
                "(limits.max_body_chars in settings.yaml)")
    if m.text or m.subject:
        return "part of a thread whose latest message was rejected"
    return "no ticket text (the message has no subject and no readable body)"


def _history(earlier: list[_Read], max_chars: int) -> str:
    """The earlier messages, oldest first; the oldest are left out beyond `max_chars`."""
    entries = []
    for r in earlier:
        m = r.mail
        who = f"{m.sender_name} <{m.sender}>" if m.sender_name and m.sender else \
            m.sender or m.sender_name or "unknown sender"
        text = (f"(cannot be read: {m.unreadable})" if m.unreadable else
                m.text or m.quoted or "(no text)")
        lines = [f"--- {m.date or 'undated'} · {who}" + (f" · {m.subject}" if m.subject else "")]
        lines.append(text)
        if m.attachments:
            lines.append("Attachments: " + "; ".join(m.attachments))
        entries.append("\n".join(lines))
    kept: list[str] = []
    size = 0
    for entry in reversed(entries):
        if size + len(entry) > max_chars and kept:
            break
        kept.insert(0, entry[-max_chars:] if len(entry) > max_chars else entry)
        size += len(entry)
    if len(kept) < len(entries):
        kept.insert(0, f"({len(entries) - len(kept)} earlier messages left out: over "
                       "limits.max_body_chars)")
    return "\n\n".join(kept)


# --- what `crewbatch check` shows ----------------------------------------------------------------


@dataclass
class SourceInfo:
    """How a source would be read: its format and, for tables, encoding, delimiter and mapping."""

    path: Path
    format: str
    encoding: str = ""
    delimiter: str = ""
    headers: list[str] = field(default_factory=list)
    mapping: dict[str, str] = field(default_factory=dict)
    configured: tuple[str, ...] = ()     # the fields mapped by settings.yaml intake.columns
    notes: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        lines = [self.format + (f", {self.encoding}" if self.encoding else "") +
                 (f", delimiter {self.delimiter!r}" if self.delimiter else "")]
        if self.headers or self.mapping:
            pairs = [f"{fld} <- {col!r}" + (" (settings)" if fld in self.configured else "")
                     for fld, col in self.mapping.items()]
            lines.append("mapping: " + (", ".join(pairs) or "(none)"))
            used = set(self.mapping.values())
            rest = [h for h in self.headers if h not in used]
            if rest:
                lines.append("other columns (kept as extra): " + ", ".join(rest))
        return lines + self.notes


def inspect_source(path: Path, options: IntakeOptions) -> SourceInfo:
    """The format, encoding, delimiter and column mapping read_source would use (reads the top)."""
    fmt = detect_format(path, options)
    info = SourceInfo(path, fmt, configured=tuple(f for f, c in options.columns.items() if c))
    if fmt in ("csv", "tsv"):
        table = Table(path, options, "\t" if fmt == "tsv" else None)
        table.close()
        info.encoding = f"{table.text.encoding} ({table.text.why})"
        info.delimiter = table.delimiter
        info.headers = table.headers
        info.mapping = _check_columns(path, table.headers, options) if table.headers else {}
    elif fmt == "jsonl":
        for _, obj, _ in _json_objects(path, options):
            if isinstance(obj, dict):
                info.headers = list(obj)
                info.mapping = _check_columns(path, info.headers, options)
                break
    elif fmt == "maildir":
        try:
            loose = sum(1 for _ in mail.folder_files(path, options.follow_symlinks)) - \
                sum(1 for _ in mail.maildir_files(path, options.follow_symlinks))
        except OSError as exc:
            raise SourceError(files.read_problem(path, exc)) from exc
        if loose:
            info.notes.append(f"{loose} file(s) outside cur/ and new/ are not read as a Maildir; "
                              "--format eml reads every file in the folder")
    return info
