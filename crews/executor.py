"""The agent executor of crewbatch's steps: one model call per turn, no Flow around it.

CrewAI's default executor (`crewai.agents.agent_executor.AgentExecutor`) runs each agent execution
as a Flow: a listener search and a thread hand-off per method, state copied into pydantic models,
routers for planning, todos and replanning that a crewbatch step never uses — about 20 ms of CPU
per model call, four times the LangGraph graph of the same steps. `LeanExecutor` is plugged in
through CrewAI's public `Agent.executor_class` and runs the loop a step needs directly: the same
system and user messages CrewAI builds, the same `BaseLLM` object called with the task's tools as
native tool calls (up to `max_iter` rounds, then CrewAI's forced final answer), a tool marked
`result_as_answer` ending the turn, and structured output through the task's pydantic model
(`response_model`); the model emits CrewAI's LLM-call events itself, so accounting is unchanged.

`Agent.executor_class` is typed `type[AgentExecutor]` in crewai 1.15, so this subclasses it (and
so `BaseAgentExecutor`) and overrides `invoke`: the Flow is built once per pooled agent and never
started. What the lean loop does not handle — text (ReAct) tool calling for a model without native
tools, human input, planning, memory — goes to CrewAI's own executor unchanged (`super().invoke`).
"""

from __future__ import annotations

import json
from typing import Any

from crewai import Agent, Task
from crewai.agents.agent_executor import AgentExecutor, AgentExecutorState
from crewai.agents.parser import AgentFinish
from crewai.flow.runtime import FlowState
from crewai.llms.cache import mark_cache_breakpoint
from crewai.utilities.agent_utils import (
    convert_tools_to_openai_schema,
    detect_tool_failure,
    enforce_rpm_limit,
    extract_tool_call_info,
    format_message_for_llm,
    format_native_tool_output_for_agent,
    handle_max_iterations_exceeded,
)
from crewai.utilities.converter import convert_to_model
from crewai.utilities.printer import PRINTER
from crewai.utilities.prompts import SystemPromptResult
from pydantic import BaseModel, PrivateAttr


class ExecutorState(FlowState, AgentExecutorState):
    """AgentExecutor's state with the `id` a Flow's state carries, made once. Given none, a Flow
    whose state type is not a FlowState builds `StateWithId(FlowState, <its state type>)` — a new
    pydantic class, schema and all — for every instance: ~9 ms of CPU per executor built, a
    quarter of a `--batch-api` run's CPU, where each of hundreds of tickets in flight builds its
    own agents (py-spy, 320 tickets)."""


class LeanExecutor(AgentExecutor):
    """Runs one agent execution of a crewbatch step: call, tools, repeat, answer."""

    initial_state: type[BaseModel] | None = ExecutorState

    # Tool schemas per tuple of tool objects: crewbatch's tools are built once per thread and
    # rebound per ticket, so their OpenAI schemas (pydantic schema generation) are made once.
    _schemas: dict[tuple[int, ...], tuple[list, dict, dict, list]] = PrivateAttr(
        default_factory=dict)
    # The tools (by identity) the executor's prompt and tool lists were last built for.
    _prepared_for: tuple[int, ...] | None = PrivateAttr(default=None)

    def invoke(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if not self._handles(inputs):
            return super().invoke(inputs)
        with self._execution_lock:
            if self._is_executing:
                raise RuntimeError("Executor is already running. "
                                   "Cannot invoke the same executor instance concurrently.")
            self._is_executing = True
        try:
            answer = self._run(self._first_messages(inputs))
            return {"output": answer}
        finally:
            self._is_executing = False

    async def invoke_async(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return self.invoke(inputs)

    async def ainvoke(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return self.invoke(inputs)

    def _handles(self, inputs: dict[str, Any]) -> bool:
        agent = self.agent
        return (self.llm is not None and self.prompt is not None
                and not inputs.get("ask_for_human_input")
                and not getattr(agent, "planning_enabled", False)
                and not getattr(agent, "memory", None)
                and (not self.original_tools or self.llm.supports_function_calling()))

    def _first_messages(self, inputs: dict[str, Any]) -> list[dict]:
        """The messages CrewAI's executor starts from (`AgentExecutor._setup_messages`)."""
        if isinstance(self.prompt, SystemPromptResult):
            return [
                mark_cache_breakpoint(format_message_for_llm(
                    self._format_prompt(self.prompt["system"], inputs), role="system")),
                mark_cache_breakpoint(format_message_for_llm(
                    self._format_prompt(self.prompt["user"], inputs))),
            ]
        return [mark_cache_breakpoint(format_message_for_llm(
            self._format_prompt(self.prompt["prompt"], inputs)))]

    def _tools(self) -> tuple[list, dict, dict, list]:
        key = tuple(id(t) for t in self.original_tools)
        found = self._schemas.get(key)
        if found is None:
            schemas, functions, mapping = convert_tools_to_openai_schema(self.original_tools)
            # Held with the entry, so an id in the key is never reused by another object.
            found = self._schemas[key] = (schemas, functions, mapping, list(self.original_tools))
        return found

    def _run(self, messages: list[dict]) -> Any:
        self.messages = messages
        self.iterations = 0
        tools = self.original_tools
        schemas, functions, mapping, _ = self._tools() if tools else (None, {}, {}, None)
        while True:
            if tools and self.iterations >= self.max_iter:
                finish = handle_max_iterations_exceeded(PRINTER, messages, self.llm,
                                                        self.callbacks, verbose=False)
                return finish.output
            enforce_rpm_limit(self.request_within_rpm_limit)
            answer = self.llm.call(
                list(messages), tools=schemas, callbacks=self.callbacks,
                available_functions=None, from_task=self.task, from_agent=self.agent,
                # With tools the final answer is text, converted to the model by the Task
                # afterwards — as CrewAI's executor does.
                response_model=None if tools else self.response_model)
            if answer is None or answer == "":
                raise ValueError("Invalid response from LLM call - None or empty.")
            if tools and isinstance(answer, list) and answer:
                final = self._call_tools(answer, messages, functions, mapping)
                self.iterations += 1
                if final is not None:
                    return final
                continue
            if isinstance(answer, BaseModel):
                text = answer.model_dump_json()
            else:
                text = answer if isinstance(answer, str) else str(answer)
                answer = text
            messages.append(format_message_for_llm(text, role="assistant"))
            self.state.current_answer = AgentFinish(thought="", output=answer, text=text)
            return answer

    def _call_tools(self, calls: list, messages: list[dict], functions: dict,
                    mapping: dict) -> str | None:
        """Run the model's tool calls in order; a `result_as_answer` tool's result ends the turn."""
        parsed = [info for info in map(extract_tool_call_info, calls) if info]
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": name,
                          "arguments": args if isinstance(args, str) else json.dumps(args)}}
            for call_id, name, args in parsed]})
        for call_id, name, args in parsed:
            tool = mapping.get(name)
            failed = True
            try:
                kwargs = json.loads(args) if isinstance(args, str) else dict(args or {})
                if name not in functions:
                    result = f"Tool {name!r} not found"
                else:
                    raw = functions[name](**kwargs)
                    result = format_native_tool_output_for_agent(tool, raw)
                    failed = detect_tool_failure(raw) is not None
            except Exception as error:  # noqa: BLE001 - the model reads it, as in CrewAI
                result = f"Error executing tool: {error}"
            messages.append({"role": "tool", "tool_call_id": call_id, "name": name,
                             "content": result})
            if not failed and getattr(tool, "result_as_answer", False):
                return result
        return None


class StepAgent(Agent):
    """An `Agent` that re-points its executor at each task instead of rebuilding its setup.

    `Agent.execute_task` calls `create_agent_executor` for every task: the tools parsed into
    structured tools again, their text descriptions rendered, the system prompt rebuilt — the
    same result every time for a pooled agent whose tools are the same objects (crewbatch's are
    built once per thread). Then only the task and its output model change; for other tools
    CrewAI's own setup runs.
    """

    executor_class: type[AgentExecutor] = LeanExecutor

    def create_agent_executor(self, tools=None, task=None) -> None:
        executor = self.agent_executor
        key = tuple(id(t) for t in (tools if tools is not None else self.tools or []))
        if isinstance(executor, LeanExecutor) and task is not None \
                and executor._prepared_for == key:
            executor.task = task
            executor.response_model = (task.response_model or task.output_pydantic
                                       or task.output_json)
            return
        super().create_agent_executor(tools=tools, task=task)
        if isinstance(self.agent_executor, LeanExecutor):
            self.agent_executor._prepared_for = key


def execute_task(task: Task, agent: Agent, tools: list) -> tuple[str, BaseModel | None]:
    """One step's (raw text, structured output): CrewAI's public `Agent.execute_task`, then the
    task's output model the way `Task` fills it (the answer itself when the model returned it
    structured, else CrewAI's `convert_to_model` of the text — a tool step's final answer).

    Not `Task.execute_sync`: around the same `Agent.execute_task` it adds what a step of ours
    never uses — task started/completed events, step hooks, guardrails, callbacks, an output
    file, input files, and `clear_task_files`, an `asyncio.run` of a new event loop on every
    task (py-spy, 640 tickets: ~2 % of a live run's CPU on its own).
    """
    result = agent.execute_task(task=task, context=None, tools=tools)
    if isinstance(result, BaseModel):
        return result.model_dump_json(), result if task.output_pydantic else None
    text = result if isinstance(result, str) else str(result)
    if task.output_pydantic is None:
        return text, None
    converted = convert_to_model(text, task.output_pydantic, None, agent, task.converter_cls)
    return text, converted if isinstance(converted, BaseModel) else None
