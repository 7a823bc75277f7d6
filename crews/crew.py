"""The crew: the four YAML-configured roles run over one ticket, with the revision loop in Python.

research → draft ⇄ review → execute. Each step is a real CrewAI `Task` (built per ticket) executed
by a real pooled `Agent` that runs one execution at a time, so concurrent tickets never share
an executor, through `Agent.execute_task` in the ticket's own thread (`executor.execute_task`:
not `Task.execute_sync`, whose extras a step never uses) — not wrapped in a `Crew`, which
would write a replay log of every task output (ticket text included) to a SQLite file in
CrewAI's storage: a third of the CPU per ticket, and a copy of customer data outside the ledger.
The orchestration a Crew would add is ours anyway. The agents run on our `LeanExecutor`
(executor.py, through CrewAI's `Agent.executor_class`) instead of CrewAI's Flow-based one. The
writer ⇄ critic cycle is a plain loop (not a guardrail), so "still rejected after the revision
limit" is an ordinary `needs_human` outcome with every verdict kept. Ticket text is rendered into
the task descriptions by us — as JSON inside <ticket> tags, never through `kickoff(inputs=...)` —
so braces in a ticket are just text and instructions in it stay data.

Token accounting listens to CrewAI's LLM-call events and attributes each call to the ticket and
step held in a ContextVar (CrewAI's own totals are wrong in batch use); each call carries its
recorded request and answer (recording.py), which a replay's `Tape` answers from.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from contextvars import ContextVar
from typing import Any

from crewai import Agent, Task
from crewai.events.event_bus import crewai_event_bus
from crewai.events.types.llm_events import LLMCallCompletedEvent, LLMCallType
from crewai_core.printer import set_suppress_console_output

from . import gate
from .action_kinds import ESCALATE_TO_HUMAN, QUEUE_REPLY, REQUEST_REFUND, TAG_TICKET
from .action_tools import action_tools
from .actions import ActionDesk, Decision
from .calls import request_counter, request_done, share_generic_cache, step_key, ticket_deadline
from .executor import StepAgent, execute_task
from .knowledge import KnowledgeBase, Orders
from .outputs import Draft, Finding, ProposedAction, models
from .recording import RequestChanged, Tape, current_exchange, recording_step
from .research import Evidence, look_up, research_tools
from .result import TicketResult, Usage
from .settings import Config, Policy
from .ticket import Status, Ticket

# --- prompts -------------------------------------------------------------------------------------


def data_block(tag: str, value: Any) -> str:
    """Untrusted or generated content as JSON between tags; '<' is escaped so no tag can be forged.

    One line, without indentation: a model reads it as well, and the ticket's data is most of a
    prompt's uncached tokens (indentation was 4 % of all input tokens)."""
    text = json.dumps(value, ensure_ascii=False).replace("<", "\\u003c")
    return f"<{tag}>\n{text}\n</{tag}>"


def policy_summary(policy: Policy, escalation: dict | None = None) -> str:
    """config/policy.yaml (and the kinds of ticket escalation.yaml sends to a person) as the rules
    every step's prompt states: the same text for every ticket, so it is part of each prompt's
    cacheable prefix."""
    refunds = policy.refunds
    cap = refunds.per_customer
    lines = [
        f"- Refunds up to {refunds.auto_approve_limit:g} in the order's currency may be requested "
        "automatically; larger refunds need a person's approval (propose them, never promise them).",
        f"- At most {refunds.max_refunds_per_ticket} refund request(s) per ticket.",
        "- An order is never refunded beyond its total. Automatically, an order gets at most "
        f"{refunds.max_auto_refunds_per_order} refund(s), and a customer at most "
        f"{cap.max_refunds} refund(s) and {cap.max_amount:g} per currency in {cap.period_days} "
        "days, across all tickets; beyond that a person decides.",
        "- Never disclose or act on an order or account that does not belong to the ticket's customer.",
        f"- Allowed actions: {', '.join(policy.allowed_actions)}.",
        f"- Queues: {', '.join(policy.queues)}.",
    ]
    if policy.escalate_categories:
        lines.append(f"- Always escalate to a person: {', '.join(policy.escalate_categories)}.")
    kinds = [(k, (escalation or {}).get(k)) for k in policy.escalate_kinds]
    if any(spec is not None for _, spec in kinds):
        lines.append("- A person must see every ticket of these kinds; nothing is sent or carried "
                     "out automatically for them:")
        lines += [f"  - {k.replace('_', ' ')}: {spec.reason}" for k, spec in kinds
                  if spec is not None]
    return "\n".join(lines)


def render(template: str, values: dict[str, str]) -> str:
    # Placeholders were validated by settings.load_config; substituted values are not re-parsed.
    return template.format_map(values)


# --- accounting ----------------------------------------------------------------------------------


class Meter:
    """Per-ticket token counts, by step, filled from LLM-call events."""

    def __init__(self, tape: Tape | None = None) -> None:
        self._lock = threading.Condition()
        self.by_step: dict[str, Usage] = {}
        self.calls: list[dict] = []  # one entry per model request, in completion order
        self.expected: dict[str, int] = {}  # requests the model wrapper saw complete, per step
        self.tape = tape  # the ticket's recording (and, in a replay, what answers it)

    def expect(self, step: str) -> None:
        with self._lock:
            self.expected[step] = self.expected.get(step, 0) + 1

    def settle(self, step: str, timeout: float = 10.0) -> None:
        """Wait until this step's call events have been recorded (CrewAI handles events on its
        own threads); far cheaper under concurrency than flushing the whole event bus."""
        with self._lock:
            told = self.expected.get(step, 0)
            self._lock.wait_for(lambda: self.by_step.get(step, Usage()).calls >= told,
                                timeout=timeout)
        if not told:
            # A model not wrapped in calls.ManagedLLM (a test's, a library user's) says nothing
            # about its requests: wait for every pending event instead.
            crewai_event_bus.flush(timeout)

    def record(self, step: str, usage: dict | None, model: str = "", exchange=None) -> None:
        usage = usage or {}
        details = usage.get("prompt_tokens_details") or {}
        cached = int(usage.get("cached_prompt_tokens") or (
            details.get("cached_tokens") if isinstance(details, dict) else 0) or 0)
        prompt = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        completion = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
        with self._lock:
            u = self.by_step.setdefault(step, Usage())
            u.calls += 1
            u.prompt_tokens += prompt
            u.completion_tokens += completion
            u.cached_tokens += cached
            self.calls.append({"step_key": step, "model": model, "prompt_tokens": prompt,
                               "completion_tokens": completion, "cached_tokens": cached,
                               "exchange": exchange})
            self._lock.notify_all()

    def total(self) -> Usage:
        t = Usage()
        with self._lock:
            for u in self.by_step.values():
                t.add(u)
        return t

    def step(self, key: str) -> Usage:
        with self._lock:
            return self.by_step.get(key, Usage())


_metering: ContextVar[tuple[Meter, str] | None] = ContextVar("crewbatch_metering", default=None)
_installed = False
_install_lock = threading.Lock()


def _install_accounting() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return

        @crewai_event_bus.on(LLMCallCompletedEvent)
        def _on_llm_call(source: Any, event: LLMCallCompletedEvent) -> None:
            current = _metering.get()
            # A model response that asks for tools comes as TOOL_CALL with usage; a tool's own
            # execution is also TOOL_CALL but has no usage and is not a model request.
            if current is not None and (event.call_type == LLMCallType.LLM_CALL
                                        or event.usage is not None):
                meter, step = current
                meter.record(step, event.usage, event.model or "", current_exchange.get())

        _installed = True


# --- one ticket ----------------------------------------------------------------------------------


class CrewRunner:
    """Builds the crew from config and runs it over tickets (thread-safe: agents are per thread)."""

    def __init__(self, config: Config, llms: dict[str, Any], kb: KnowledgeBase, orders: Orders,
                 revision_limit: int):
        self.config = config
        self.llms = llms
        self.kb = kb
        self.orders = orders
        self.revision_limit = revision_limit
        # The ledger's refunds across tickets and runs (`Ledger.refund_history`), set by the run
        # that owns the ledger; the executor's refund tool checks the caps against it.
        self.refund_history = None
        self.refund_as_of = None  # a replay: the moment the caps' rolling period ends
        # A replay (replay.py): `recordings(ticket)` is the ticket's recorded requests (or None),
        # `strict` refuses a request they lack, `effects` stands in for the ledger's side effects.
        self.recordings = None
        self.strict = False
        self.effects = None
        # A ticket's time limit (settings `ticket_timeout_s`); None in batch mode, where one
        # step may wait hours for its batch (the provider's completion window bounds it).
        self.ticket_timeout_s: float | None = config.settings.ticket_timeout_s
        self.policy_text = policy_summary(config.policy, config.escalation)
        self.taxonomy_text = config.taxonomy.prompt()
        self.models = models(config.taxonomy)
        self.gate = gate.Gate.from_config(config, orders, kb, extra_prompts=[self.policy_text])
        self._local = threading.local()
        self._idle: dict[str, list[Agent]] = {role: [] for role in config.agents}
        _install_accounting()

    def close(self) -> None:
        """Release what the runner holds once no ticket is running (the models' connections)."""
        from .llms import close_clients

        close_clients(self.llms.values())

    def _thread_tools(self, step: str, build) -> list:
        """This thread's tool objects for `step`, rebound by the caller to each ticket.

        A thread runs one ticket at a time, so its tools never serve two tickets at once; built
        once per thread instead of per ticket (a CrewAI tool is a pydantic model, ~0.5 ms each).
        """
        tools = self._local.__dict__.setdefault("tools", {})
        if step not in tools:
            tools[step] = build()
        return tools[step]

    def _checkout(self, role: str) -> Agent:
        """An idle agent for `role`: a pooled one, or a new one if every agent is busy.

        An agent and its executor must never run two executions at once, but reusing them one
        after another is what CrewAI does for a crew's consecutive tasks: each execution resets
        the executor's state (messages, iterations, pending tool calls) and takes the task's
        tools. Building them afresh per step cost ~20 ms of CPU a ticket (a new pydantic state
        class per executor); pooled, there are only as many as ever ran at once. Tool-result
        caching stays off, so no tool answer outlives its ticket.

        A thread keeps the agents it used (`_checkin`): its tools are the same objects ticket after
        ticket, so the agent's executor stays prepared for them (`executor.StepAgent`) instead
        of being set up again for another thread's tools at every research and execute step.
        """
        own = self._local.__dict__.setdefault("agents", {})
        if role in own:
            return own.pop(role)
        try:
            return self._idle[role].pop()
        except IndexError:
            spec = self.config.agents[role]
            return StepAgent(role=spec.role, goal=spec.goal, backstory=spec.backstory,
                             llm=self.llms[role], tools=[], max_iter=spec.max_iter,
                             verbose=spec.verbose, allow_delegation=False, max_retry_limit=0,
                             cache=False)

    def warm(self, copies: int) -> None:
        """Build `copies` agents per role, with their executors, before the first ticket.

        This is the crew-copy-per-in-flight-ticket cost paid up front (~15 ms each, ~2 s at
        concurrency 32), while the run is still setting up instead of in a burst of CPU that
        delays the first tickets' model calls.
        """
        import crewai.hooks.contexts  # noqa: F401

        from .llms import size_pools

        size_pools(self.llms.values(), copies)
        share_generic_cache(self.models.values())  # the structured answers' classes, built once

        if any(getattr(llm, "model", "") != "offline" for llm in self.llms.values()):
            # What the first HTTP call would import lazily (~500 modules of the openai SDK, 0.6 s):
            # imported here once, not while every first-wave ticket waits on the import lock.
            import crewai.llms.cache  # noqa: F401
            import openai.pagination  # noqa: F401
            import openai.resources  # noqa: F401

        # The gate's language identifier (about a second to build), before the first drafts
        # are checked rather than while they wait.
        from .language import language_scores

        language_scores("warming up the language identifier before the first ticket")
        for role in self._idle:
            built = [self._checkout(role) for _ in range(copies)]
            for agent in built:
                if agent.agent_executor is None:
                    agent.create_agent_executor(tools=[])
                self._idle[role].append(agent)

    def _checkin(self, role: str, agent: Agent) -> None:
        """Back to this thread's own agents (a thread runs one ticket, so one step, at a time)."""
        self._local.__dict__.setdefault("agents", {})[role] = agent

    def _kickoff(self, step: str, round_no: int, tools: list, values: dict[str, str],
                 meter: Meter, result: TicketResult) -> tuple[str, Any]:
        task_spec = self.config.tasks[step]
        role = task_spec.agent
        llm = self.llms[role]
        agent = self._checkout(role)
        model = self.models.get(task_spec.output_pydantic or "")
        # `response_model` too: the schema goes to the provider as the structured-output format
        # only, not a second time as text after the ticket's data (CrewAI adds it to the prompt
        # for `output_pydantic` alone), which would end every prompt with uncacheable tokens.
        task = Task(description=render(task_spec.description, values),
                    expected_output=render(task_spec.expected_output, values), agent=agent,
                    output_pydantic=model, response_model=model)
        key = f"{round_no}:{step}"
        token = _metering.set((meter, key))
        observer = request_done.set(lambda: meter.expect(key))
        taped = recording_step.set((meter.tape, key) if meter.tape else None)
        stepped = step_key.set(key)
        started = time.monotonic()
        try:
            # The ticket's own tools (bound to its customer and evidence) go with the task; the
            # agent's executor takes them for this execution only.
            raw, structured = execute_task(task, agent, tools)
        finally:
            self._checkin(role, agent)
            step_key.reset(stepped)
            recording_step.reset(taped)
            request_done.reset(observer)
            _metering.reset(token)
            meter.settle(key)
        model = getattr(llm, "model", str(llm))
        result.models.add(model)
        usage = meter.step(key)
        result.steps.append({
            "round": round_no, "step": step, "agent": role, "model": model,
            "output_text": raw,
            "output_json": structured.model_dump_json() if structured is not None else "",
            "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "cached_tokens": usage.cached_tokens, "calls": usage.calls,
            "duration_ms": int((time.monotonic() - started) * 1000),
        })
        return raw, structured

    def run(self, ticket: Ticket) -> TicketResult:
        """Run the crew over one ticket. The per-ticket boundary: any error becomes `failed`."""
        share_generic_cache(self.models.values())  # in this thread's context, before CrewAI copies it
        set_suppress_console_output(True)  # a ContextVar: each worker thread needs its own
        tape = Tape(self.config.settings.recording,
                    self.recordings(ticket) if self.recordings else None, self.strict)
        meter = Meter(tape if tape.active else None)
        result = TicketResult(status=Status.FAILED, detail="")
        deadline = ticket_deadline.set(None if self.ticket_timeout_s is None
                                       else time.monotonic() + self.ticket_timeout_s)
        counted = request_counter.set(itertools.count(1))
        try:
            self._run(ticket, meter, result)
        except RequestChanged as exc:  # a strict replay: the message is the whole story
            result.status, result.error = Status.FAILED, str(exc)[:2000]
            result.detail = "request changed in a strict replay"
        except Exception as exc:  # noqa: BLE001 - recorded on the ticket; the batch goes on
            result.status = Status.FAILED
            result.error = f"{type(exc).__name__}: {exc}"[:2000]
            result.detail = "error in the crew"
        finally:
            request_counter.reset(counted)
            ticket_deadline.reset(deadline)
            result.usage = meter.total()
            result.calls = list(meter.calls)
            # CrewAI's event bus keeps every event of this thread's context (its checkpoint
            # record, prompts included) for as long as the context lives: ~0.3 MB a ticket,
            # without end in a batch. Nothing of crewbatch reads it.
            crewai_event_bus.reset_runtime_state()
        return result

    __call__ = run  # the engine's `Ticket -> TicketResult` (work.Crew)

    def _run(self, ticket: Ticket, meter: Meter, result: TicketResult) -> None:
        cfg = self.config
        evidence = Evidence()
        base = {"ticket": data_block("ticket", ticket.as_prompt_data()), "policy": self.policy_text,
                "taxonomy": self.taxonomy_text}

        research_agent = cfg.tasks["research"].agent
        tools = self._thread_tools("research", lambda: research_tools(
            cfg.agents[research_agent].tools, ticket, evidence, self.kb, self.orders))
        for tool in tools:
            tool.bind(ticket, evidence)
        if cfg.settings.research_lookups:
            look_up(tools, ticket)
        lookups = evidence.items or "nothing yet: use your tools"
        research, _ = self._kickoff("research", 0, tools,
                                    {**base, "lookups": data_block("lookups", lookups)}, meter,
                                    result)
        if evidence.searches:  # how each knowledge search ranked its sections, for `show`
            result.steps[-1]["output_json"] = json.dumps(
                {"knowledge_searches": evidence.searches}, ensure_ascii=False)
        base["research"] = data_block("research_notes", research)
        base["evidence"] = data_block("evidence", evidence.items)

        feedback = "none: this is the first draft"
        draft: Draft | None = None
        checks: list[Finding] = []
        for round_no in range(self.revision_limit + 1):
            _, draft = self._kickoff("draft", round_no, [], {**base, "feedback": feedback}, meter,
                                     result)
            if round_no and draft == result.draft and gate.blocking(checks):
                # The writer answered the feedback with the very draft it was asked to fix: the
                # same deterministic checks block it again, so the critic is not asked again
                # (its verdict could not approve it); the writer gets its next round as usual.
                result.revisions = round_no
                result.steps.append(checks_step(round_no, checks, REPEATED_DRAFT))
                continue
            checks = self.gate.check(draft, ticket, evidence)
            _, verdict = self._kickoff(
                "review", round_no, [],
                {**base, "draft": data_block("draft", draft.model_dump()),
                 "checks": data_block("checks", [c.model_dump() for c in checks])}, meter, result)
            result.steps.append(checks_step(round_no, checks))
            findings = checks + [f for f in verdict.findings
                                 if (f.check, f.detail) not in {(c.check, c.detail) for c in checks}]
            result.draft, result.verdict, result.findings = draft, verdict, findings
            result.revisions = round_no
            # A blocking check (or a blocking finding the critic itself lists) overrides approval.
            if verdict.approved and not gate.blocking(findings):
                break
            feedback = data_block("feedback", {
                "critic_approved": verdict.approved,
                "findings": [f.model_dump() for f in findings if f.severity != "info"],
                "required_changes": verdict.required_changes})
        else:
            problems = [f"{f.check}: {f.detail}" for f in gate.blocking(result.findings)]
            if not problems and result.verdict:
                problems = result.verdict.required_changes
            result.status = Status.NEEDS_HUMAN
            must_see = gate.escalation_reason(result.findings)
            result.needs_human_reason = (
                (f"escalated: {must_see}; " if must_see else "")
                + f"the critic did not approve the draft after {result.revisions} revision(s): "
                + ("; ".join(problems) or (result.verdict.summary if result.verdict else "")))
            result.detail = "revision limit reached"
            return

        result.plan = plan_actions(draft, cfg.policy, gate.escalation_reason(result.findings))
        desk = ActionDesk(ticket, draft, result.plan, cfg.policy, self.orders,
                          history=self.refund_history, as_of=self.refund_as_of)
        executor = cfg.tasks["execute"].agent
        tools = self._thread_tools("execute", lambda: action_tools(cfg.agents[executor].tools,
                                                                   desk))
        for tool in tools:
            tool.bind(desk)
        self._kickoff("execute", result.revisions, tools,
                      {**base, "draft": data_block("draft", draft.model_dump()),
                       "actions": data_block("actions", [a.model_dump() for a in result.plan])},
                      meter, result)
        result.decisions = list(desk.decisions)
        decide(result)


REPEATED_DRAFT = ("identical to the previous round's draft: the same checks block it; "
                  "not reviewed again")


def checks_step(round_no: int, checks: list[Finding], note: str = "") -> dict:
    """The gate's findings of one round as a step of the ticket's trail."""
    lines = [note] if note else []
    lines += [f"[{c.severity}] {c.check}: {c.detail}" for c in checks]
    return {"round": round_no, "step": "checks", "agent": "gate", "model": "deterministic",
            "output_text": "\n".join(lines) or "no findings",
            "output_json": json.dumps([c.model_dump() for c in checks])}


def plan_actions(draft: Draft, policy: Policy, escalate: str = "") -> list[ProposedAction]:
    """The approved plan: the writer's actions, plus sending the reply unless it escalates.

    Categories that policy always escalates get an escalation whatever the writer proposed, and so
    does a ticket the gate says a person must see (`escalate`, e.g. one with injected
    instructions): then nothing is sent or carried out automatically.
    """
    plan: list[ProposedAction] = []
    for action in draft.actions:
        if action not in plan:
            plan.append(action)
    if escalate:
        # The gate's reason comes first, also when the writer escalated for a reason of its own:
        # a reviewer must see "legal: ..." rather than only "the customer is unhappy".
        own = next((a for a in plan if a.kind == ESCALATE_TO_HUMAN), None)
        if own is None:
            plan.append(ProposedAction(kind=ESCALATE_TO_HUMAN, reason=escalate))
        elif escalate not in (own.reason or ""):
            plan[plan.index(own)] = own.model_copy(update={
                "reason": f"{escalate}; {own.reason}" if own.reason else escalate})
    if draft.category in policy.escalate_categories and \
            not any(a.kind == ESCALATE_TO_HUMAN for a in plan):
        plan.append(ProposedAction(kind=ESCALATE_TO_HUMAN,
                                   reason=f"policy escalates every `{draft.category}` ticket"))
    escalates = any(a.kind == ESCALATE_TO_HUMAN for a in plan)
    if escalates:
        plan = [a for a in plan if a.kind != QUEUE_REPLY]
    elif not any(a.kind == QUEUE_REPLY for a in plan):
        plan.insert(0, ProposedAction(kind=QUEUE_REPLY, reason="send the approved reply"))
    return plan


def _carried_out(action: ProposedAction, decisions: list[Decision]) -> bool:
    for d in decisions:
        if not d.allowed or d.kind != action.kind:
            continue
        if action.kind == REQUEST_REFUND and d.args.get("order_id") != action.order_id.upper():
            continue
        if action.kind == TAG_TICKET and d.args.get("queue") != action.queue:
            continue
        return True
    return False


def decide(result: TicketResult) -> None:
    """The ticket's status from what the executor's tools allowed and refused."""
    refused = [d for d in result.decisions if not d.allowed]
    # An escalation in the plan sends the ticket to a person even if the executor skipped the call.
    escalated = [d.args.get("reason", "") for d in result.decisions
                 if d.allowed and d.kind == ESCALATE_TO_HUMAN]
    escalated += [a.reason for a in result.plan
                  if a.kind == ESCALATE_TO_HUMAN and a.reason not in escalated]
    missing = [a for a in result.plan if a.kind != ESCALATE_TO_HUMAN
               and not _carried_out(a, result.decisions)]
    if refused:
        result.status = Status.NEEDS_HUMAN
        # A gate escalation (a threat, a data-protection request) is what a reviewer must read
        # first; a refund refused on top of it comes second.
        must_see = [r for r in escalated if r.startswith("a person must see this ticket")]
        result.needs_human_reason = "".join(f"escalated: {r}; " for r in must_see) + \
            "policy refused: " + "; ".join(f"{d.kind}: {d.reason}" for d in refused)
        result.detail = "executor refused an action"
    elif escalated:
        result.status = Status.NEEDS_HUMAN
        result.needs_human_reason = "escalated: " + "; ".join(r for r in escalated if r)
        result.detail = "escalated to a person"
    elif missing:
        result.status = Status.NEEDS_HUMAN
        result.needs_human_reason = "the executor did not carry out: " + ", ".join(
            a.label() for a in missing)
        result.detail = "approved plan not fully executed"
    else:
        result.status = Status.APPROVED
        result.detail = "critic approved; executor carried out the plan"
