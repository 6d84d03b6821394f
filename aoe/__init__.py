"""aoe: the Agent Orchestration Engine — declarative YAML workflows of LLM calls.

From Python, one run::

    import aoe
    result = aoe.run("wf.yaml", inputs={"topic": "tides"}, budget=2.0)
    result.status, result.outputs, result.cost, result.agents

or many, on one engine whose rate limits and run slots they share::

    config = aoe.EngineConfig(rate_limiting=aoe.RateLimitingSection(requests_per_minute=60))
    async with aoe.Engine(config) as engine:
        result = await engine.run("wf.yaml", {"topic": "tides"}, aoe.RunOptions(budget=2.0))
        engine.status(); engine.run_status(result.run_id)
        engine.events(result.run_id, kind="agent_failed", last=50)

The names below are the documented surface (``__all__``); they are imported on
first use, so ``import aoe`` stays cheap for the command line. Errors derive
from :class:`AoeError`: :class:`UserError` (exit 2: a workflow, config or input
to fix) apart from the failures of a run, which a :class:`RunResult` reports.
The config models check their values as they are made, as pydantic models do:
a wrong value in code raises pydantic's ``ValidationError`` at that line; an
:class:`Engine` given a config raises :class:`ConfigInvalid` for what only shows
once the environment is laid over it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# the public name -> the module that defines it
_HOMES = {
    "run": "aoe.api.engine",
    "Engine": "aoe.api.engine",
    "EngineStatus": "aoe.api.engine",
    "RunResult": "aoe.api.results",
    "AgentResult": "aoe.api.results",
    "RunOptions": "aoe.service.runner",
    "load": "aoe.service.runner",
    "validate": "aoe.service.runner",
    "Settings": "aoe.config.settings",
    "load_settings": "aoe.config.settings",
    "EngineConfig": "aoe.config.models",
    "EngineSection": "aoe.config.models",
    "RateLimitingSection": "aoe.config.models",
    "RateLimits": "aoe.config.models",
    "CostTrackingSection": "aoe.config.models",
    "ModelPrice": "aoe.config.models",
    "RetryPolicySection": "aoe.config.models",
    "RateLimitConfig": "aoe.config.models",
    "RetryPolicy": "aoe.config.models",
    "MonitoringSection": "aoe.config.models",
    "ProviderSection": "aoe.config.models",
    "RedisSection": "aoe.config.models",
    "Workflow": "aoe.format.workflow",
    "Event": "aoe.events",
    "RunStatus": "aoe.events",
    "AgentState": "aoe.events",
    "AoeError": "aoe.errors",
    "UserError": "aoe.errors",
    "RunError": "aoe.errors",
    "WorkflowInvalid": "aoe.errors",
    "ConfigInvalid": "aoe.errors",
    "InputsInvalid": "aoe.errors",
    "MissingApiKey": "aoe.errors",
    "RunNotFound": "aoe.errors",
}

# the same names as _HOMES (tests/test_api.py checks it): ruff reads a literal list
__all__ = [
    "AgentResult",
    "AgentState",
    "AoeError",
    "ConfigInvalid",
    "CostTrackingSection",
    "Engine",
    "EngineConfig",
    "EngineSection",
    "EngineStatus",
    "Event",
    "InputsInvalid",
    "MissingApiKey",
    "ModelPrice",
    "MonitoringSection",
    "ProviderSection",
    "RateLimitConfig",
    "RateLimitingSection",
    "RateLimits",
    "RedisSection",
    "RetryPolicy",
    "RetryPolicySection",
    "RunError",
    "RunNotFound",
    "RunOptions",
    "RunResult",
    "RunStatus",
    "Settings",
    "UserError",
    "Workflow",
    "WorkflowInvalid",
    "__version__",
    "load",
    "load_settings",
    "run",
    "validate",
]

if TYPE_CHECKING:
    from aoe.api.engine import Engine, EngineStatus, run
    from aoe.api.results import AgentResult, RunResult
    from aoe.config.models import (
        CostTrackingSection,
        EngineConfig,
        EngineSection,
        ModelPrice,
        MonitoringSection,
        ProviderSection,
        RateLimitConfig,
        RateLimitingSection,
        RateLimits,
        RedisSection,
        RetryPolicy,
        RetryPolicySection,
    )
    from aoe.config.settings import Settings, load_settings
    from aoe.errors import (
        AoeError,
        ConfigInvalid,
        InputsInvalid,
        MissingApiKey,
        RunError,
        RunNotFound,
        UserError,
        WorkflowInvalid,
    )
    from aoe.events import AgentState, Event, RunStatus
    from aoe.format.workflow import Workflow
    from aoe.service.runner import RunOptions, load, validate


def __getattr__(name: str) -> Any:
    """A public name, imported when first asked for (then kept in the module)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'aoe' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
