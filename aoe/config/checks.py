"""What a workflow needs of the engine config: providers that exist, a price for
each model a budget applies to, and retry delays that still make sense with the
config's ``retry_policy`` under the workflow's own."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic_core import PydanticCustomError

from aoe.config.settings import Settings
from aoe.format.loader import Check, Report
from aoe.format.modelerrors import closest, did_you_mean
from aoe.format.spec import check_delays
from aoe.format.workflow import Agent, LLMConfig
from aoe.format.yamlsource import Path


def against_settings(settings: Settings) -> Check:
    """A :class:`~aoe.format.loader.Check` of a workflow against ``settings``."""

    def check(
        agents: Mapping[str, Agent],
        cost_budget: float | None,
        origins: Mapping[tuple[str, int], Mapping[str, Path]],
        report: Report,
    ) -> None:
        costs = settings.config.cost_tracking
        run_budget = cost_budget if cost_budget is not None else costs.default_workflow_budget
        for agent in agents.values():
            limit = agent.cost_limit if agent.cost_limit is not None else costs.default_agent_budget
            budgets = [
                f"cost_budget {run_budget:g} USD" if run_budget is not None else "",
                f"cost_limit {limit:g} USD" if limit is not None else "",
            ]
            for i, llm in enumerate(agent.models):
                where = {"agent": ("agents", agent.id), **origins.get((agent.id, i), {})}
                which = f"agent '{agent.id}'" + (f", fallback {i}" if i else "")
                _check_model(settings, llm, which, where, [b for b in budgets if b], report)
            _check_delays(settings, agent, report)

    return check


def checks_for(settings: Settings | None) -> list[Check]:
    """The checks of a workflow against ``settings``; none without settings."""
    return [] if settings is None else [against_settings(settings)]


def _check_model(
    settings: Settings,
    llm: LLMConfig,
    which: str,
    where: Mapping[str, Path],
    budgets: list[str],
    report: Report,
) -> None:
    """The model's provider exists, and the model has a price if a budget applies
    (else its cost is not tracked: a warning). ``where`` has the places of its
    ``provider`` and ``model`` fields, and of its ``agent``."""
    provider_at = where.get("provider", where["agent"])
    model_at = where.get("model", where["agent"])
    if llm.provider not in settings.provider_names:
        report.error(
            provider_at,
            "unknown-provider",
            f"{which}: unknown provider '{llm.provider}'"
            f"{did_you_mean(llm.provider, settings.provider_names)}; "
            "use openai, anthropic or mock, or declare it under providers: "
            "in the engine config",
        )
        return
    if settings.price_of(llm.provider, llm.model) is not None:
        return
    if budgets:
        example = f"{llm.model}: {{input: 0.001, output: 0.002}}"
        own = ""
        if llm.provider in settings.config.providers:  # a server of the user's
            own = (
                f"; a server of your own that costs nothing: give provider "
                f"'{llm.provider}' default_price: {{input: 0, output: 0}}"
            )
        report.error(
            model_at,
            "unpriced-model",
            f"{which}: model '{llm.model}' has no price, and a budget applies "
            f"({' and '.join(budgets)}); add it to the engine config under "
            f"cost_tracking.model_costs (USD per 1,000 tokens), e.g. "
            f"'{example}'" + _price_hint(llm.model, settings) + own,
        )
    else:
        report.warn(
            model_at,
            "unpriced-model",
            f"{which}: model '{llm.model}' has no price, so its cost is not "
            "tracked; add it under cost_tracking.model_costs in the engine "
            "config",
        )


def _check_delays(settings: Settings, agent: Agent, report: Report) -> None:
    """The agent's retry delays, over the config's ``retry_policy``, do not shrink."""
    policy = settings.config.retry_policy
    base = policy.base_delay if agent.retry.base_delay is None else agent.retry.base_delay
    top = policy.max_delay if agent.retry.max_delay is None else agent.retry.max_delay
    try:
        check_delays(base, top)
    except PydanticCustomError as e:
        report.error(
            ("agents", agent.id, "retry"),
            "retry-delays",
            f"agent '{agent.id}': with the engine's retry_policy under it, {e}",
        )


def _price_hint(model: str, settings: Settings) -> str:
    match = closest(model, settings.prices.names())
    return f" (or did you mean '{match}'?)" if match else ""
