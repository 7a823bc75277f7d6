"""The executor agent's tools: CrewAI tools that hand every call to the policy desk.

The executor may only call these, and none decides anything itself: each passes its arguments to
`actions.ActionDesk`, which checks them in code against config/policy.yaml. `carry_out_actions`
takes the whole plan in one call and hands each action to those same checks; its answer is the
executor's final answer (`result_as_answer`), so the executor costs one model call instead of a
tool round plus a summary. Kept apart from actions.py so that carrying out a result needs no
CrewAI.
"""

from __future__ import annotations

import json
from typing import Any

from crewai.tools import BaseTool
from pydantic import BaseModel, Field, PrivateAttr, create_model

from .action_kinds import ACTIONS, BATCH_ARGS, BATCH_FIELDS, ActionKind, spoken
from .actions import ActionDesk
from .outputs import CachedSchema
from .settings import BATCH_TOOL


class _DeskTool(BaseTool):
    _desk: ActionDesk = PrivateAttr()

    def bind(self, desk: ActionDesk) -> _DeskTool:
        self._desk = desk
        return self


class ActionTool(_DeskTool):
    """A kind's own tool (`action_kinds.ACTIONS`): its call goes to the desk's check of that kind."""

    def _run(self, **args: Any) -> str:
        return self._desk.call(self.name, args)


def _args_model(kind: ActionKind) -> type[BaseModel]:
    return create_model(f"{kind.name}_args", __base__=CachedSchema,
                        **{a.name: (a.type, Field(description=a.about)) for a in kind.args})


_ARGS_MODELS = {kind.name: _args_model(kind) for kind in ACTIONS.values()}


def _batch_field(name: str) -> tuple:
    kind, arg = BATCH_ARGS[name]
    return (arg.type | None, Field(None, description=f"{kind.name}: {arg.about_in_batch}"))


ActionCall = create_model(
    "ActionCall", __base__=CachedSchema,
    kind=(str, Field(description=f"the action: {spoken(ACTIONS)}")),
    **{name: _batch_field(name) for name in BATCH_FIELDS})


class _BatchArgs(CachedSchema):
    actions: list[ActionCall] = Field(description="every approved action, in the order given")


class CarryOutActions(_DeskTool):
    name: str = BATCH_TOOL
    description: str = (
        "Carry out all the approved actions in this one call (leave a field null when the action "
        "does not use it). Policy checks each action on its own; the answer lists, per action, "
        "whether it was done or refused and why.")
    args_schema: type[BaseModel] = _BatchArgs
    # The per-action answers are the executor's report: no second model call to summarise them.
    result_as_answer: bool = True

    def _run(self, actions: list[dict | ActionCall]) -> str:
        answers = []
        for item in actions:
            call = item if isinstance(item, ActionCall) else ActionCall.model_validate(item)
            answer = json.loads(self._one(call))
            answers.append({"action": call.kind, **answer})
        return json.dumps(answers, ensure_ascii=False)

    def _one(self, call: ActionCall) -> str:
        desk = self._desk
        given = {k: v for k, v in call.model_dump(exclude={"kind"}).items() if v is not None}
        kind = call.kind.strip()
        spec = ACTIONS.get(kind)
        if spec is None:
            name = kind[:80] or "(none)"
            return desk.refuse(name, given, f"`{name}` is not an action; the actions are "
                                            f"{', '.join(ACTIONS)}")
        missing = [k for k in spec.required if given.get(k) is None]
        if missing:
            return desk.refuse(kind, given, f"{kind} needs {', '.join(spec.required)}; "
                                            f"missing: {', '.join(missing)}")
        return desk.call(kind, {a.name: given.get(a.name) for a in spec.args})


def _tool(name: str) -> _DeskTool:
    if name == BATCH_TOOL:
        return CarryOutActions()
    kind = ACTIONS[name]
    return ActionTool(name=kind.name, description=kind.description,
                      args_schema=_ARGS_MODELS[kind.name])


TOOLS = (BATCH_TOOL, *ACTIONS)


def action_tools(names: list[str], desk: ActionDesk) -> list[BaseTool]:
    return [_tool(n).bind(desk) for n in names if n in TOOLS]
