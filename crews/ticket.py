"""The records that flow through crewbatch: input tickets, rejections, and final statuses.

A `Ticket` is what intake hands the pipeline: already validated, with a stable key (the export's
ticket id, or a hash of the content when there is none) and a content hash, which together are the
idempotency key of the ledger. A `Rejection` is an input record that could not become a ticket;
it still gets an outcome row, so every record read ends in exactly one `Status`.
"""

from __future__ import annotations

import enum
import hashlib
import json
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


def content_hash(*parts: str) -> str:
    normalised = json.dumps([" ".join((p or "").split()) for p in parts], ensure_ascii=False)
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:32]
