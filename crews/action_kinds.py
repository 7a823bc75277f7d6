"""The kinds of action the crew may propose and the executor may carry out, each defined once.

An entry says what the rest of the code needs about a kind: the arguments its tool takes (with the
descriptions a model reads, in the kind's own tool and in the batch tool `carry_out_actions`),
which of them a batch call must give, the tool's description, and how a proposed one is labelled.
The writer's schema (`outputs.ProposedAction`), the executor's tools and their dispatch
(`actions`), a reviewed plan (`review`), the offline model's tool calls (`offline`) and the
settings' known actions all read this table; a new kind is an entry here plus its policy check,
the `actions.ActionDesk` method named after it. No CrewAI here: schemas and settings import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

QUEUE_REPLY = "queue_reply"
TAG_TICKET = "tag_ticket"
ESCALATE_TO_HUMAN = "escalate_to_human"
REQUEST_REFUND = "request_refund"


@dataclass(frozen=True)
class Arg:
    name: str
    type: type
    about: str  # in the kind's own tool
    about_in_batch: str  # in `carry_out_actions`, after "<kind>: "
    # A batch call without it is refused. An escalation's reason is optional: escalating only
    # narrows what happens, so a missing reason must not stop it.
    required: bool = True


@dataclass(frozen=True)
class ActionKind:
    name: str
    description: str  # the kind's own tool's
    args: tuple[Arg, ...] = ()
    label_args: str = ""  # a format over the proposal's fields; the label is `name(label_args)`

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args if a.required)

    def tool_args(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments its tool takes, from a proposed action's fields."""
        return {a.name: fields.get(a.name, "") for a in self.args}

    def label(self, fields: Mapping[str, Any]) -> str:
        return f"{self.name}({self.label_args.format(**fields)})" if self.label_args else self.name


ACTIONS: dict[str, ActionKind] = {k.name: k for k in (
    ActionKind(QUEUE_REPLY, "Queue the approved reply to be sent to the customer (the text is "
                            "fixed)."),
    ActionKind(TAG_TICKET, "Route the ticket to a support queue.",
               (Arg("queue", str, "the queue to route the ticket to",
                    "the queue to route the ticket to"),),
               label_args="{queue}"),
    ActionKind(ESCALATE_TO_HUMAN, "Hand the ticket to a person instead of answering it "
                                  "automatically.",
               (Arg("reason", str, "why a person must handle this ticket",
                    "why a person must handle it", required=False),),
               label_args="{reason}"),
    ActionKind(REQUEST_REFUND, "Request a refund on one of this customer's orders. Policy decides "
                               "whether it can be approved automatically.",
               (Arg("order_id", str, "the order to refund", "the order to refund"),
                Arg("amount", float, "amount to refund, in the order's currency",
                    "amount, in the order's currency"),
                Arg("currency", str, "ISO currency code of the amount",
                    "ISO currency code of the amount")),
               label_args="{order_id}, {amount:.2f} {currency}"),
)}

# The batch tool's fields, in the order its schema lists them (a model fills them in order, and a
# recorded request's hash covers the schema): every kind's arguments, each once.
BATCH_FIELDS = ("order_id", "amount", "currency", "queue", "reason")
BATCH_ARGS = {a.name: (kind, a) for kind in ACTIONS.values() for a in kind.args}
assert set(BATCH_FIELDS) == set(BATCH_ARGS), "BATCH_FIELDS must list every kind's arguments"


def spoken(names) -> str:
    """`a, b, c or d`: the kinds as the schemas' descriptions name them."""
    names = list(names)
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def tool_args(kind: str | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments a proposed action's tool takes ({} for a kind that is not an action)."""
    spec = ACTIONS.get(kind or "")
    return spec.tool_args(fields) if spec else {}
