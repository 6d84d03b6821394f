"""Building an engine from the settings: the one place that picks what its runs
share — the providers, and the rate limits and daily spend they share with
other processes: Redis when the config names one, this process otherwise."""

from __future__ import annotations

import random

from aoe.config.settings import Settings
from aoe.engine.engine import Engine
from aoe.policy.costs import DailySpend
from aoe.policy.limits import Clock, LocalRateLimiter, RateLimiter, SystemClock, limits_for_config
from aoe.providers import ProviderPool


def engine_for(
    settings: Settings,
    providers: ProviderPool | None = None,
    *,
    clock: Clock | None = None,
    rng: random.Random | None = None,
) -> Engine:
    """An :class:`Engine` with ``providers`` (else a pool of its own, made from
    ``settings``), whose limits and daily budgets are shared through Redis when
    ``settings`` name one (``redis.host`` or ``redis.url``), and are this
    process's otherwise (``clock`` times them and the retries)."""
    redis = settings.config.redis
    clock = clock or SystemClock()
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
    if limiter is None:
        limiter = LocalRateLimiter(limits_for_config(settings.config.rate_limiting), clock)
    if providers is None:
        providers = ProviderPool(settings)
    return Engine(settings, providers, limiter, spend=spend, clock=clock, rng=rng)
