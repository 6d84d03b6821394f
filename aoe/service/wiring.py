"""Building an engine from the settings: the one place that picks what a run
shares with other processes (rate limits, daily spend) — Redis when the config
names one, this process otherwise."""

from __future__ import annotations

import random

from aoe.config.settings import Settings
from aoe.engine.executor import Engine
from aoe.policy.costs import DailySpend
from aoe.policy.limits import Clock, RateLimiter
from aoe.providers import ProviderPool


def engine_for(
    settings: Settings,
    providers: ProviderPool | None = None,
    *,
    clock: Clock | None = None,
    rng: random.Random | None = None,
) -> Engine:
    """An :class:`Engine` whose limits and daily budgets are shared through Redis
    when ``settings`` name one (``redis.host`` or ``redis.url``)."""
    redis = settings.config.redis
    limiter: RateLimiter | None = None
    spend: DailySpend | None = None
    if redis.host is not None or redis.url is not None:
        from aoe.redis.client import configured, connect
        from aoe.redis.limits import shared_limiter

        limiter = shared_limiter(settings)
        costs = settings.config.cost_tracking
        if costs.daily_budget is not None or costs.workflow_daily_budgets:
            from aoe.redis.spend import SharedSpend

            url = configured(redis)
            assert url is not None  # a host or a url was given
            spend = SharedSpend(
                connect(url),
                daily=costs.daily_budget,
                per_workflow=dict(costs.workflow_daily_budgets),
                prefix=redis.key_prefix,
                on_unavailable=redis.on_unavailable,
            )
    return Engine(settings, providers, limiter=limiter, spend=spend, clock=clock, rng=rng)
