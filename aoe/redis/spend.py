"""Spend caps shared by every aoe process that uses one Redis.

``cost_tracking.daily_budget`` caps what all of them together may spend in a
UTC day, and ``cost_tracking.workflow_daily_budgets`` what the runs of one
workflow (by name) may, on top of each run's own budget. They work like the
run's budget (:mod:`aoe.policy.costs`): before each attempt its worst case is
*reserved* — in one Lua script that checks every cap and reserves in all of
them, or in none — and after it the reservation is *settled* with the actual
cost. Spent plus reserved never passes a cap, whatever the number of
processes, so the spend never does either.

A process that dies between the two leaves its reservations counted until the
day ends: the caps err on the side of the bill. The day is UTC, from this
machine's clock; a day's keys expire two days later.

When Redis cannot be reached: ``fail_closed`` waits and retries (no call goes
out unaccounted), ``local`` goes on with each run's own budget alone, with a
warning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from aoe.errors import RedisUnreachable
from aoe.policy.costs import BudgetExceeded

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("aoe.costs")

TTL = 2 * 86400
RETRY = 1.0

# KEYS: day spent, day reserved, workflow spent, workflow reserved
# ARGV: amount, day cap, workflow cap (-1: none), ttl
# -> {1} reserved; {0, which (1 day, 2 workflow), spent, reserved}
RESERVE = """
local amount = tonumber(ARGV[1])
local caps = {tonumber(ARGV[2]), tonumber(ARGV[3])}
for i = 1, 2 do
  if caps[i] >= 0 then
    local spent = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
    local reserved = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
    if spent + reserved + amount > caps[i] + 1e-12 then
      return {0, i, tostring(spent), tostring(reserved)}
    end
  end
end
for i = 1, 2 do
  redis.call('INCRBYFLOAT', KEYS[2 * i], amount)
  redis.call('EXPIRE', KEYS[2 * i], ARGV[4])
end
return {1}
"""

# KEYS: as above; ARGV: reserved amount, actual cost, ttl
SETTLE = """
for i = 1, 2 do
  local left = tonumber(redis.call('INCRBYFLOAT', KEYS[2 * i], -tonumber(ARGV[1])))
  if left < 0 then redis.call('SET', KEYS[2 * i], 0, 'KEEPTTL') end
  redis.call('INCRBYFLOAT', KEYS[2 * i - 1], ARGV[2])
  redis.call('EXPIRE', KEYS[2 * i - 1], ARGV[3])
end
return 1
"""


class SharedSpend:
    """The daily caps, reserved and settled in Redis."""

    def __init__(
        self,
        client: Redis,
        *,
        daily: float | None,
        per_workflow: dict[str, float],
        prefix: str = "aoe",
        on_unavailable: str = "fail_closed",
    ) -> None:
        self.client = client
        self.daily = daily
        self.per_workflow = per_workflow
        self.prefix = prefix
        self.on_unavailable = on_unavailable
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)
        self._pending: set[asyncio.Task[None]] = set()
        self._outage = False

    def keys(self, workflow: str, day: str | None = None) -> list[str]:
        day = day or time.strftime("%Y-%m-%d", time.gmtime())
        tag = f"{self.prefix}:{{spend:{day}}}"
        return [
            f"{tag}:spent",
            f"{tag}:reserved",
            f"{tag}:workflow:{workflow}:spent",
            f"{tag}:workflow:{workflow}:reserved",
        ]

    def applies(self, workflow: str) -> bool:
        return self.daily is not None or workflow in self.per_workflow

    async def reserve(self, workflow: str, amount: float) -> list[str] | None:
        """Reserve ``amount`` in every cap, or raise :class:`BudgetExceeded`;
        returns the keys to settle with (None: nothing was reserved)."""
        if not self.applies(workflow):
            return None
        keys = self.keys(workflow)
        daily = -1.0 if self.daily is None else self.daily
        own = self.per_workflow.get(workflow, -1.0)
        while True:
            try:
                answer = await self._reserve(keys=keys, args=[amount, daily, own, TTL])
            except RedisUnreachable as e:
                if self._unavailable(e):
                    return None
                await asyncio.sleep(RETRY)
                continue
            self._back()
            break
        if int(answer[0]) == 1:
            return keys
        which, spent, reserved = int(answer[1]), float(answer[2]), float(answer[3])
        cap, name = (
            (daily, "the daily budget") if which == 1 else (own, f"{workflow}'s daily budget")
        )
        raise BudgetExceeded(
            f"the next call could cost ${amount:.6f}, over {name} of ${cap:.4f} shared by "
            f"every aoe process (${spent:.6f} spent today, ${reserved:.6f} reserved by calls "
            "in flight); no call was made. It resets at midnight UTC "
            "(cost_tracking.daily_budget, workflow_daily_budgets)",
            run_budget=True,
        )

    def settle(self, keys: list[str] | None, reserved: float, actual: float) -> None:
        """Settle a reservation with what the call cost (in the background)."""
        if keys is None:
            return
        task = asyncio.get_running_loop().create_task(self._settle_now(keys, reserved, actual))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle_now(self, keys: list[str], reserved: float, actual: float) -> None:
        while True:
            try:
                await self._settle(keys=keys, args=[reserved, actual, TTL])
                return
            except RedisUnreachable as e:
                if self._unavailable(e):
                    return
                await asyncio.sleep(RETRY)

    async def today(self, workflow: str = "") -> tuple[float, float]:
        """Spent and reserved today, in all (or by ``workflow``)."""
        keys = self.keys(workflow)
        spent, reserved = await self.client.mget(keys[2:] if workflow else keys[:2])
        return float(spent or 0), float(reserved or 0)

    def _unavailable(self, error: BaseException) -> bool:
        """Redis did not answer: True to go on without the shared caps."""
        if not self._outage:
            self._outage = True
            if self.on_unavailable == "local":
                log.warning(
                    "Redis is unreachable (%s): the shared daily budgets are not held until "
                    "it answers again; each run's own budget still is",
                    error,
                )
            else:
                log.error(
                    "Redis is unreachable (%s): calls wait until it answers again, so that "
                    "the shared daily budgets hold (redis.on_unavailable: fail_closed)",
                    error,
                )
        return self.on_unavailable == "local"

    def _back(self) -> None:
        if self._outage:
            self._outage = False
            log.warning("Redis answers again: the shared daily budgets hold again")

    async def aclose(self, wait: float = 10.0) -> None:
        """Write the settlements still pending (for ``wait`` seconds at most: with
        Redis away, their reservations stay counted until the day ends)."""
        if self._pending:
            _, left = await asyncio.wait(self._pending, timeout=wait)
            for task in left:
                task.cancel()
            if left:
                log.warning(
                    "%d settlements of the shared daily budgets could not be written; "
                    "their reservations count until the day ends",
                    len(left),
                )
        await self.client.aclose()
