"""The engine: runs workflows with what it is handed, many runs at a time.

It is handed what its runs share: the providers, the rate limiter and the
daily spend (:func:`aoe.service.wiring.engine_for` picks them from the
settings: Redis-backed when the config names a Redis, this process's
otherwise); it never picks them itself. Each run is a
:class:`~aoe.engine.scheduler.Run`; at most ``max_concurrent_workflows`` of
them run at once.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aoe.config.settings import Settings
from aoe.engine.resumption import Resumption
from aoe.engine.scheduler import Run
from aoe.errors import UserError
from aoe.events import EventBus, RunStatus
from aoe.format.workflow import Workflow
from aoe.policy.costs import DailySpend
from aoe.policy.limits import Clock, RateLimiter, SystemClock
from aoe.providers import ProviderPool
from aoe.sandbox.pool import Sandbox
from aoe.state.cache import ResponseCache


def new_run_id() -> str:
    """A short, sortable, unique id: UTC time then randomness."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class Engine:
    """Runs workflows with shared providers, shared rate limits and a limit on runs."""

    def __init__(
        self,
        settings: Settings,
        providers: ProviderPool,
        limiter: RateLimiter,
        *,
        spend: DailySpend | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """An engine for ``settings`` with the ``providers`` and the rate ``limiter``
        its runs share, and ``spend``, the daily budgets (required when the config
        sets them). ``clock`` sleeps between retries; ``rng`` draws their jitter."""
        self.settings = settings
        self.providers = providers
        self.limiter = limiter
        self.clock: Clock = clock or SystemClock()
        self.spend = spend
        costs = settings.config.cost_tracking
        if spend is None and (costs.daily_budget is not None or costs.workflow_daily_budgets):
            raise UserError(
                "cost_tracking.daily_budget and workflow_daily_budgets are shared through "
                "Redis: set REDIS_HOST (or redis.url), or remove them"
            )
        self.rng = rng or random.Random()
        self.sandbox = Sandbox()  # its processes start when a template first needs one
        self._slots: asyncio.Semaphore | None = None

    async def run(
        self,
        workflow: Workflow,
        inputs: Mapping[str, Any],
        bus: EventBus,
        *,
        run_id: str | None = None,
        max_parallel: int | None = None,
        budget: float | None = None,
        mock: bool = False,
        mock_limits: bool = False,
        cache: ResponseCache | None = None,
        resumption: Resumption | None = None,
        max_units: int | None = None,
        max_reply_bytes: int | None = None,
    ) -> RunStatus:
        """Run a workflow to its end; the events on ``bus`` tell how it went.
        ``budget`` (USD) replaces the workflow's ``cost_budget``; ``cache`` answers
        repeated requests; ``resumption`` continues a run from its record;
        ``max_units`` bounds its agents and ``foreach`` items together, and
        ``max_reply_bytes`` the characters of its replies (a service running other
        people's workflows: each costs memory). ``mock_limits``: a ``mock`` run
        held to the named providers' rate limits, in windows of their own."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.config.engine.max_concurrent_workflows)
        run = Run(
            self,
            workflow,
            inputs,
            bus,
            run_id or new_run_id(),
            max_parallel=max_parallel,
            budget=budget,
            mock=mock,
            mock_limits=mock_limits,
            cache=cache,
            max_units=max_units,
            max_reply_bytes=max_reply_bytes,
        )
        if resumption is not None:
            run.resume(resumption)
        # SDKs are imported here, before any call is out: an import blocks the loop
        for provider in providers_of(workflow, mock):
            self.providers.get(provider)
        async with self._slots:
            return await run.execute()

    async def aclose(self) -> None:
        await self.sandbox.aclose()
        await self.providers.aclose()
        close = getattr(self.limiter, "aclose", None)
        if close is not None:  # a shared limiter's connection
            await close()
        if self.spend is not None:  # its last settlements, then its connection
            await self.spend.aclose()


def providers_of(workflow: Workflow, mock: bool) -> list[str]:
    """Every provider a run may call, fallbacks included, in order of first use."""
    if mock:
        return ["mock"]
    return list(
        dict.fromkeys(llm.provider for agent in workflow.agents.values() for llm in agent.models)
    )
