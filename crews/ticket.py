"""The records that flow through crewbatch: input tickets, rejections, and final statuses.

A `Ticket` is what intake hands the pipeline: already validated, with a stable key (the export's
ticket id, or a hash of the content when there is none) and a content hash, which together are the
idempotency key of the ledger. A `Rejection` is an input record that could not become a ticket;
it still gets an outcome row, so every record read ends in exactly one `Status`. `clean_fields`
holds what a field may contain: ticket ids and addresses end up in mail headers and file names, and
everything ends up in SQLite as UTF-8, so those rules are checked here, once, for every reader.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field


class Status(str, enum.Enum):
    """Final ticket statuses, with the exact strings of DESIGN.md."""

    APPROVED = "approved"
    NEEDS_HUMAN = "needs_human"
    FAILED = "failed"
    REJECTED = "rejected"
    SKIPPED = "skipped"


# Where a ticket is before it is final; never appears in results.csv of a completed run.
PENDING = "pending"
RUNNING = "running"
FINAL = tuple(s.value for s in Status)
# A ticket finished in an earlier run with the same key and content is skipped, not redone.
DONE = (Status.APPROVED.value, Status.NEEDS_HUMAN.value)


class RunStatus(str, enum.Enum):
    """A run's status in the ledger's `runs` table, as `crewbatch runs` and the report show it.

    Store `.value`: the PostgreSQL driver writes an enum member by its name.
    """

    RUNNING = "running"  # started and not finished, or its process died unnoticed so far
    COMPLETED = "completed"  # every record reached a final status
    STOPPED = "stopped"  # on purpose: --max-cost or --max-minutes; the rest stays pending
    INTERRUPTED = "interrupted"  # a signal (SIGTERM, Ctrl-C) or a forced stop; the rest is pending
    CRASHED = "crashed"  # an error outside any ticket ended it, or a later run found it
    #                      still `running`: its process died

    def __str__(self) -> str:  # as stored and shown, on every Python version
        return self.value


class ExitCode(enum.IntEnum):
    """What a run exits with (`crewbatch run`, `retry`, `replay`, `eval`), as the README's table
    says; any command that cannot start exits CANNOT_RUN. `diff`, `replay --strict`, `review
    apply` and `eval --baseline` answer a question with 0 (nothing to look at) or 1 (something).
    """

    meaning: str

    def __new__(cls, code: int, meaning: str) -> ExitCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.meaning = meaning
        return member

    OK = 0, "every record reached a final status"
    FAILED = 1, "some tickets failed"
    CANNOT_RUN = 2, "it could not run"
    STOPPED = 3, "it stopped early; the rest is pending"

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class Ticket:
    key: str
    ticket_id: str
    source: str
    received_at: str
    customer: str
    customer_name: str
    subject: str
    body: str
    record_no: int
    extra: dict = field(default_factory=dict, compare=False)
    # E-mail tickets: the earlier messages of the thread (oldest first) or, without them, the text
    # the message quotes; attachments by name and type (never opened); how many input messages
    # this ticket stands for (a thread is one ticket, so records reconcile per message as well).
    history: str = ""
    attachments: tuple[str, ...] = ()
    messages: int = 1

    @property
    def content_hash(self) -> str:
        return content_hash(self.customer, self.subject, self.body)

    def as_prompt_data(self) -> dict:
        """The fields a model sees, as data (never as instructions)."""
        return {
            "ticket_id": self.ticket_id,
            "received_at": self.received_at,
            "customer_email": self.customer,
            "customer_name": self.customer_name,
            "subject": self.subject,
            "body": self.body,
            **({"history": self.history} if self.history else {}),
            **({"attachments": list(self.attachments)} if self.attachments else {}),
        }


@dataclass(frozen=True)
class Rejection:
    record_no: int
    source: str
    reason: str
    ticket_id: str = ""
    raw: str = ""

    def __post_init__(self):
        # A rejection carries what the input said (an id, a file name, an exception's text), and
        # the ledger stores it as UTF-8, where a lone surrogate raises: escape, never fail here.
        for name in ("source", "reason", "ticket_id"):
            object.__setattr__(self, name, escape(getattr(self, name)))
        object.__setattr__(self, "raw", escape(self.raw, keep_controls=True))


def content_hash(*parts: str) -> str:
    normalised = json.dumps([" ".join((p or "").split()) for p in parts], ensure_ascii=False)
    # surrogatepass: a hash must not fail; for valid text it is the same bytes as plain UTF-8
    return hashlib.sha256(normalised.encode("utf-8", "surrogatepass")).hexdigest()[:32]


# --- what a field may contain --------------------------------------------------------------------

SURROGATE = re.compile(r"[\ud800-\udfff]")
# C0, DEL, C1, and the two Unicode separators that str.splitlines() and mail headers treat as breaks
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
CONTROL_RUN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
UNSAFE = re.compile(r"[\ud800-\udfff\x00-\x1f\x7f-\x9f\u2028\u2029]")
# in text: the other line breaks (VT, FF, FS/GS/RS, NEL, U+2028/9) become "\n"; the remaining
# controls (NUL, BEL, backspace, ESC of terminal colour codes, C1) are removed; TAB, LF, CR stay
TEXT_BREAK = re.compile(r"[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
TEXT_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f]")
# RFC 5322 atext (and any non-ASCII letter, as RFC 6531 allows) in a dot-atom, "@", then a domain
# of letters, digits and hyphens (IDN letters too) or a bracketed address literal
_ATEXT = r'[^\s\x00-\x1f\x7f-\x9f"(),.:;<>@\[\\\]]'
PLAIN_ADDRESS = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*@(?:[\w-]+(?:\.[\w-]+)*|\[[\w.:-]+\])")
IDENTIFIERS = ("ticket_id", "customer")
TEXTS = ("body", "history")


class FieldProblem(ValueError):
    """A record field that cannot go into a ticket; the message names the field, not the fix
    (that depends on where the record came from). `kind`: "unicode", "control" or "address"."""

    def __init__(self, field: str, kind: str, message: str):
        self.field, self.kind = field, kind
        super().__init__(message)


def clean_fields(fields: Mapping[str, str], extra: Mapping[str, str] | None = None
                 ) -> dict[str, str]:
    """`fields` made safe to store, print and put in a reply's headers, or FieldProblem.

    - Any field, `extra` (the other columns) included, with a lone surrogate (a JSON "\\ud800"
      escape, a UTF-7 body) is refused: SQLite stores UTF-8, which cannot encode it.
    - `ticket_id` and `customer` with a line break or control character are refused: they become
      the reply's To: and X-Crewbatch-Ticket: headers and its file name ("a@x\\nBcc: b@y" is an
      injected header), and there is no safe guess which part was meant.
    - `customer`, when not empty, must be one plain address (local@domain): no display name, no
      second address, no comment, no RFC 2047 encoded word; that is what the reply is sent to.
    - `body` and `history` keep TAB, LF and CR; other line breaks become LF, other controls go.
    - every other field (`subject`, `customer_name`, `received_at`, an attachment's name) is one
      line: each run of line breaks and control characters becomes one space.
    `extra` is kept as written (it is stored as JSON, which escapes controls).
    """
    pairs = list(itertools.chain(fields.items(), (extra or {}).items()))
    if SURROGATE.search("".join(itertools.chain.from_iterable(pairs))):  # one pass, then which
        for name, value in pairs:
            for text, what in ((name, "a field name"), (value, f"field {escape(name)}")):
                found = SURROGATE.search(text)
                if found:
                    raise FieldProblem(name, "unicode", f"{what} is not valid Unicode (lone "
                                                        f"surrogate {_shown(found.group())})")
    cleaned = {}
    for name, value in fields.items():
        if name in IDENTIFIERS:
            found = CONTROL.search(value)
            if found:
                raise FieldProblem(name, "control", f"{name} contains a line break or control "
                                                    f"character ({_shown(found.group())})")
            cleaned[name] = value
        elif name in TEXTS:
            cleaned[name] = TEXT_CONTROL.sub("", TEXT_BREAK.sub("\n", value)).strip()
        else:
            cleaned[name] = one_line(value)
    customer = cleaned.get("customer", "")
    if customer and ("=?" in customer or not PLAIN_ADDRESS.fullmatch(customer)):
        raise FieldProblem("customer", "address", "customer is not one plain e-mail address "
                                                  f"({customer[:80]!r})")
    return cleaned


def one_line(value: str) -> str:
    return CONTROL_RUN.sub(" ", value).strip()


def escape(value: str, keep_controls: bool = False) -> str:
    """`value` with lone surrogates (and, unless `keep_controls`, control characters) written as
    Python escapes (\\ud800, \\n): printable, storable, and still says what the input held."""
    pattern = SURROGATE if keep_controls else UNSAFE
    return pattern.sub(lambda m: _shown(m.group()), value or "")


def _shown(ch: str) -> str:
    return repr(ch)[1:-1]
