"""What a run would do, without calling anything: ``aoe plan``.

The order agents can run in, the critical path, each agent's worst-case cost
(every attempt of every model it may try, capped by its ``cost_limit``) and
the total against the budget, and the requests and tokens each rate limit
would see, with the least wall time those limits allow.

Prompt sizes are estimated before anything runs: the template's own text,
the inputs' values (or defaults), and each dependency's output at its
``max_tokens``. The engine's reservations at run time use the exact prompt;
the plan's worst case is an estimate of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from aoe.config.settings import Settings
from aoe.format.templates import analyse_expression, analyse_template
from aoe.format.workflow import Agent, SourceText, Workflow
from aoe.policy.limits import DAY, HOUR, MINUTE, Limits, limits_for_config
from aoe.policy.retry import policy_for

_UNKNOWN_VALUE_BYTES = 256  # an input with no value or default yet
_MESSAGE_OVERHEAD = 16
_REQUEST_OVERHEAD = 16


class AgentPlan(NamedTuple):
    id: str
    provider: str
    model: str
    units: int | None  # calls without retries: 1, or a foreach's items (None: not known yet)
    attempts_per_unit: int  # at most: (retries + 1) for the model and each fallback
    prompt_tokens: int  # estimated, per call
    max_tokens: int
    worst_case_per_unit: float | None  # USD, capped by cost_limit; None: no price
    cost_limit: float | None

    @property
    def worst_case(self) -> float | None:
        if self.worst_case_per_unit is None or self.units is None:
            return None
        return self.worst_case_per_unit * self.units


class LimitPlan(NamedTuple):
    scope: str  # a provider, or provider/model
    limit: str  # e.g. requests_per_minute
    allowed: int
    needed: int
    least_seconds: float  # the wall time this limit alone imposes


class Plan(NamedTuple):
    workflow: str
    order: tuple[str, ...]
    critical_path: tuple[str, ...]
    agents: tuple[AgentPlan, ...]
    budget: float | None
    worst_case: float  # the agents whose worst case is known, together
    unknown: tuple[str, ...]  # agents whose worst case cannot be known before the run
    limits: tuple[LimitPlan, ...]
    least_seconds: float

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.worst_case > self.budget

    def to_json(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "order": list(self.order),
            "critical_path": list(self.critical_path),
            "agents": [{**a._asdict(), "worst_case": a.worst_case} for a in self.agents],
            "budget": self.budget,
            "worst_case": self.worst_case,
            "over_budget": self.over_budget,
            "unknown": list(self.unknown),
            "rate_limits": [limit._asdict() for limit in self.limits],
            "least_seconds": self.least_seconds,
        }


def plan(
    workflow: Workflow,
    settings: Settings,
    inputs: Mapping[str, Any] | None = None,
    *,
    budget: float | None = None,
    mock: bool = False,
) -> Plan:
    """The plan of a run of ``workflow`` with ``inputs`` (defaults where not given)."""
    values = {name: spec.default for name, spec in workflow.inputs.items()}
    values.update(inputs or {})
    costs = settings.config.cost_tracking
    run_budget = budget if budget is not None else workflow.cost_budget
    if run_budget is None:
        run_budget = costs.default_workflow_budget
    units = {agent_id: _units(agent, values) for agent_id, agent in workflow.agents.items()}
    agents: list[AgentPlan] = []
    for agent_id in workflow.graph.topological_order():
        agent = workflow.agents[agent_id]
        agents.append(_agent_plan(agent, workflow, values, units, settings, mock))
    unknown = tuple(a.id for a in agents if a.worst_case is None)
    total = sum(a.worst_case for a in agents if a.worst_case is not None)
    limits = _limit_plans(agents, settings)
    return Plan(
        workflow=workflow.name,
        order=workflow.graph.topological_order(),
        critical_path=workflow.graph.critical_path().nodes,
        agents=tuple(agents),
        budget=run_budget,
        worst_case=total,
        unknown=unknown,
        limits=tuple(limits),
        least_seconds=max((limit.least_seconds for limit in limits), default=0.0),
    )


def _agent_plan(
    agent: Agent,
    workflow: Workflow,
    values: Mapping[str, Any],
    units: Mapping[str, int | None],
    settings: Settings,
    mock: bool,
) -> AgentPlan:
    policy = policy_for(agent.retry, settings.config.retry_policy)
    prompt = _prompt_tokens(agent, workflow, values, units)
    limit = agent.cost_limit
    if limit is None:
        limit = settings.config.cost_tracking.default_agent_budget
    worst: float | None = 0.0
    for llm in agent.models:
        price = settings.price_of(llm.provider, llm.model)
        if price is None and mock:
            price = settings.price_of("mock", llm.model)
        if price is None or worst is None:
            worst = None
            continue
        worst += policy.attempts * price.cost(prompt, llm.max_tokens)
    if worst is not None and limit is not None:
        worst = min(worst, limit)
    return AgentPlan(
        id=agent.id,
        provider="mock" if mock else agent.llm.provider,
        model=agent.llm.model,
        units=units[agent.id],
        attempts_per_unit=policy.attempts * len(agent.models),
        prompt_tokens=prompt,
        max_tokens=agent.llm.max_tokens,
        worst_case_per_unit=worst,
        cost_limit=limit,
    )


def _units(agent: Agent, values: Mapping[str, Any]) -> int | None:
    if agent.foreach is None:
        return 1
    whole = analyse_expression(agent.foreach.text).whole
    if whole is not None and whole.kind == "input" and not whole.rest:
        value = values.get(whole.name)
        if isinstance(value, list | tuple):
            return len(value)
    return None  # it depends on what an agent answers


def _prompt_tokens(
    agent: Agent, workflow: Workflow, values: Mapping[str, Any], units: Mapping[str, int | None]
) -> int:
    """An estimate of the prompt's tokens: text bytes, inputs' values, dependencies'
    outputs at their max_tokens (all items of a foreach dependency)."""
    texts: list[SourceText] = [t for t in (agent.system, agent.prompt) if t is not None]
    total = _REQUEST_OVERHEAD + _MESSAGE_OVERHEAD * len(texts)
    for source in texts:
        total += len(source.text.encode("utf-8"))
        for ref in analyse_template(source.text).references:
            if ref.kind == "input":
                value = values.get(ref.name)
                total += (
                    len(json.dumps(value, default=str).encode("utf-8"))
                    if value is not None
                    else _UNKNOWN_VALUE_BYTES
                )
            elif ref.kind == "agent" and ref.name in workflow.agents:
                items = units.get(ref.name) or 1
                total += workflow.agents[ref.name].llm.max_tokens * items
            elif ref.kind == "name" and ref.name == "item":
                total += _UNKNOWN_VALUE_BYTES
    return total


def _limit_plans(agents: list[AgentPlan], settings: Settings) -> list[LimitPlan]:
    limits_for = limits_for_config(settings.config.rate_limiting)
    needed: dict[str, tuple[Limits, int, int]] = {}
    for plan_ in agents:
        if plan_.units is None:
            continue
        key, limits = limits_for(plan_.provider, plan_.model)
        if limits.unlimited:
            continue
        _, requests, tokens = needed.get(key, (limits, 0, 0))
        per_call = plan_.prompt_tokens // 4 + plan_.max_tokens  # counted as providers count
        needed[key] = (limits, requests + plan_.units, tokens + plan_.units * per_call)
    plans: list[LimitPlan] = []
    for key, (limits, requests, tokens) in needed.items():
        for name, window, amount in (
            ("requests_per_minute", MINUTE, requests),
            ("requests_per_hour", HOUR, requests),
            ("requests_per_day", DAY, requests),
            ("tokens_per_minute", MINUTE, tokens),
        ):
            allowed = getattr(limits, name)
            if allowed is None:
                continue
            # a sliding window lets `allowed` start at once, then `allowed` per window
            least = (math.ceil(amount / allowed) - 1) * window if amount else 0.0
            plans.append(LimitPlan(key, name, allowed, amount, max(least, 0.0)))
    return plans
