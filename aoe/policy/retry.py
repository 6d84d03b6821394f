"""What is retried, and how long to wait before the next attempt.

engine.md: HTTP 429, 408, 409, 5xx (529 included), connection errors, read
timeouts, the attempt timeout and replies that do not match their schema are
retried; other 4xx are not. The delay grows exponentially from ``base_delay``,
is capped at ``max_delay`` and, with ``jitter``, is drawn uniformly below that
("full jitter"); a ``retry-after`` from the provider is the least wait. An
agent's ``retry`` keys override the engine's ``retry_policy`` key by key.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from aoe.config.models import RetryPolicySection
from aoe.errors import RunError
from aoe.format.workflow import RetryOverrides


class RetryPolicy(NamedTuple):
    max_retries: int
    base_delay: float
    max_delay: float
    jitter: bool

    @property
    def attempts(self) -> int:
        return self.max_retries + 1


def policy_for(overrides: RetryOverrides, engine: RetryPolicySection) -> RetryPolicy:
    return RetryPolicy(
        engine.max_retries if overrides.max_retries is None else overrides.max_retries,
        engine.base_delay if overrides.base_delay is None else overrides.base_delay,
        engine.max_delay if overrides.max_delay is None else overrides.max_delay,
        engine.jitter if overrides.jitter is None else overrides.jitter,
    )


def retryable(error: BaseException) -> bool:
    return isinstance(error, RunError) and error.retryable


def delay(
    policy: RetryPolicy, retry_number: int, error: BaseException | None, rng: random.Random
) -> float:
    """Seconds before retry ``retry_number`` (1 for the first retry)."""
    # 2.0 ** 1000 is finite, and any delay reaches max_delay long before it; past
    # 1,024 retries the exact 2 ** n would no longer convert to a float at all.
    ceiling = min(policy.max_delay, policy.base_delay * 2.0 ** min(retry_number - 1, 1000))
    wait = rng.uniform(0.0, ceiling) if policy.jitter else ceiling
    asked = getattr(error, "retry_after", None)
    if asked is not None:
        wait = max(wait, asked)
    return wait
