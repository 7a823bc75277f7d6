"""The structured answers the writer and the critic must give, as pydantic models.

tasks.yaml names them (`output_pydantic: Draft`, `output_pydantic: Verdict`); CrewAI asks the model
for JSON of this shape and validates it. Everything downstream — the gate, the executor's plan, the
ledger, results.csv — reads these fields, never free text. `Draft` itself takes any category and
priority (a draft read back from the ledger keeps what was recorded); the crew asks for
`draft_model(taxonomy)`, the same model with both fields restricted to config/taxonomy.yaml's
names, so the strict json_schema response_format carries them as enums and an answer outside the
taxonomy fails validation like any other malformed answer.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, create_model

from .action_kinds import ACTIONS, REQUEST_REFUND, TAG_TICKET, spoken
from .taxonomy import Taxonomy

_schemas: dict[tuple, str] = {}


class CachedSchema(BaseModel):
    """A model whose JSON schema is generated once per process, not on every model call.

    CrewAI (task prompt, tool list) and the openai SDK (response_format) each ask for the schema
    of every structured output and tool argument model on every call, and pydantic builds it anew
    each time: ~0.7 ms a time, about a tenth of a ticket's CPU. Callers edit the schema they get
    (strict mode, titles), so each gets its own copy.
    """

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        key = (cls, args, tuple(sorted(kwargs.items(), key=lambda kv: kv[0])))
        text = _schemas.get(key)
        if text is None:
            text = _schemas[key] = json.dumps(super().model_json_schema(*args, **kwargs))
        return json.loads(text)

ActionKind = Literal[tuple(ACTIONS)]


class ProposedAction(CachedSchema):
    kind: ActionKind = Field(description=spoken(ACTIONS))
    order_id: str = Field("", description="the order the action is about, if any")
    amount: float = Field(0.0, description=f"refund amount in the order's currency ({REQUEST_REFUND})")
    currency: str = Field("", description=f"ISO currency of the amount ({REQUEST_REFUND})")
    queue: str = Field("", description=f"the queue to route to ({TAG_TICKET})")
    reason: str = Field("", description="one line: why this action")

    def label(self) -> str:
        return ACTIONS[self.kind].label(self.model_dump())


class Draft(CachedSchema):
    taxonomy: ClassVar[Taxonomy | None] = None  # set on draft_model's classes
    category: str = Field(description="one of the taxonomy's categories")
    priority: str = Field(description="one of the taxonomy's priorities")
    language: str = Field(description="ISO 639-1 code of the language of the reply, e.g. en, de")
    reply: str = Field(description="the complete reply to the customer, ready to send")
    actions: list[ProposedAction] = Field(default_factory=list)
    internal_note: str = Field("", description="a note for the support team; never sent")


class Finding(CachedSchema):
    check: str = Field(description="short name of the problem, e.g. invented_fact, over_policy")
    severity: Literal["info", "minor", "major", "critical"]
    detail: str


class Verdict(CachedSchema):
    approved: bool
    findings: list[Finding] = Field(default_factory=list)
    required_changes: list[str] = Field(default_factory=list)
    summary: str = ""


_drafts: dict[str, type[Draft]] = {}


def draft_model(taxonomy: Taxonomy) -> type[Draft]:
    """`Draft` with category and priority restricted to the taxonomy (one class per taxonomy).

    The class keeps the name `Draft` (the schema name a model and the offline model see) and
    carries the taxonomy, so the offline model classifies with the same names.
    """
    key = taxonomy.model_dump_json()
    model = _drafts.get(key)
    if model is None:
        model = create_model(
            "Draft", __base__=Draft,
            category=(Literal[tuple(taxonomy.categories)],
                      Field(description="the ticket's category: "
                                        + ", ".join(taxonomy.categories))),
            priority=(Literal[tuple(taxonomy.priorities)],
                      Field(description="the ticket's priority, lowest first: "
                                        + ", ".join(taxonomy.priorities))))
        model.taxonomy = taxonomy
        model.__doc__ = "The writer's draft, triaged into config/taxonomy.yaml."
        _drafts[key] = model
    return model


def models(taxonomy: Taxonomy) -> dict[str, type[CachedSchema]]:
    """The structured outputs tasks.yaml may name, for this project's taxonomy."""
    return {"Draft": draft_model(taxonomy), "Verdict": Verdict}
