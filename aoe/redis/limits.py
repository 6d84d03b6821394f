"""Rate limits shared by every aoe process that uses one Redis.

:class:`RedisRateLimiter` has the interface of :class:`aoe.policy.limits.RateLimiter`
and the same meaning: exact sliding windows (at most L requests start in any
60 s, 3600 s or 86400 s; at most T tokens reserved in any 60 s) and a cap on
calls in flight. One Lua script checks every dimension of a scope and takes
the request in all of them at once, or in none, by Redis's own clock — the
processes' clocks never matter. Concurrency slots are leases: each process
renews its own every few seconds, so a process that dies frees its slots when
its leases run out (:data:`LEASE` seconds).

A scope's keys share a hash tag (``aoe:{openai}:rpm`` ...), so each script
touches one slot of a Redis Cluster.

Within a process, requests take turns in arrival order, as in the local
limiter; across processes, the next one to ask once room frees gets it.

When Redis cannot be reached, ``redis.on_unavailable`` decides:
``fail_closed`` (the default) waits and retries, saying so in the log, so no
limit is ever passed; ``local`` falls back to this process's own windows, with a
loud warning, until Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aoe.errors import RedisUnreachable
from aoe.policy.limits import (
    Limits,
    LocalRateLimiter,
    OnWait,
    Permit,
    RequestTooLarge,
    Waiting,
    at_once,
)
from aoe.redis.client import configured, connect

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("aoe.limits")

LEASE = 30.0  # seconds a concurrency slot lasts unless its holder renews it
RENEW = 10.0  # seconds between renewals
POLL = 0.05  # seconds between tries when waiting for a slot held elsewhere
RETRY = 1.0  # seconds between tries when Redis is unreachable (fail_closed)
WINDOWS = (60.0, 3600.0, 86400.0)  # the request windows: a minute, an hour, a day
TOKEN_WINDOW = 60.0  # the tokens' window: a minute

# KEYS: rpm, rph, rpd, tpm (zset: id -> start), tpm tokens (hash: id -> tokens),
#       tpm total (string), concurrency (zset: id -> lease end)
# ARGV: id, tokens, rpm, rph, rpd, tpm, concurrent (0: no limit), lease seconds,
#       the lengths of the request windows (3) and of the tokens' window, in seconds
# -> {1, now} taken; {0, seconds} wait that long; {-1, 0} wait for a slot
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local id, tokens = ARGV[1], tonumber(ARGV[2])
local limits = {tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])}
local lengths = {tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])}
local tpm, concurrent, lease = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local minute = tonumber(ARGV[12])
local wait = 0
if concurrent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now)
  if redis.call('ZCARD', KEYS[7]) >= concurrent then
    return {-1, '0'}
  end
end
for i = 1, 3 do
  if limits[i] > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - lengths[i])
    local count = redis.call('ZCARD', KEYS[i])
    if count >= limits[i] then
      local oldest = redis.call('ZRANGE', KEYS[i], count - limits[i], count - limits[i],
        'WITHSCORES')
      wait = math.max(wait, tonumber(oldest[2]) + lengths[i] - now)
    end
  end
end
if tpm > 0 then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - minute)
  for _, member in ipairs(gone) do
    local used = tonumber(redis.call('HGET', KEYS[5], member) or '0')
    redis.call('INCRBYFLOAT', KEYS[6], -used)
    redis.call('HDEL', KEYS[5], member)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - minute)
  local total = tonumber(redis.call('GET', KEYS[6]) or '0')
  local excess = total + tokens - tpm
  if excess > 0 then
    local entries = redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES')
    local freed, at = 0, nil
    for i = 1, #entries, 2 do
      freed = freed + tonumber(redis.call('HGET', KEYS[5], entries[i]) or '0')
      if freed >= excess then
        at = tonumber(entries[i + 1])
        break
      end
    end
    if at == nil then
      wait = math.max(wait, minute)
    else
      wait = math.max(wait, at + minute - now)
    end
  end
end
if wait > 0 then
  return {0, tostring(wait)}
end
for i = 1, 3 do
  if limits[i] > 0 then
    redis.call('ZADD', KEYS[i], now, id)
    redis.call('EXPIRE', KEYS[i], math.ceil(lengths[i]) + 60)
  end
end
if tpm > 0 then
  redis.call('ZADD', KEYS[4], now, id)
  redis.call('HSET', KEYS[5], id, tokens)
  redis.call('INCRBYFLOAT', KEYS[6], tokens)
  for k = 4, 6 do redis.call('EXPIRE', KEYS[k], math.ceil(minute) + 60) end
end
if concurrent > 0 then
  redis.call('ZADD', KEYS[7], now + lease, id)
  redis.call('EXPIRE', KEYS[7], math.ceil(lease) + 60)
end
return {1, tostring(now)}
"""

# KEYS: tpm tokens (hash), tpm total, concurrency; ARGV: id, used tokens (-1: unknown)
RELEASE = """
redis.call('ZREM', KEYS[3], ARGV[1])
local used = tonumber(ARGV[2])
if used >= 0 then
  local before = redis.call('HGET', KEYS[1], ARGV[1])
  if before then
    redis.call('HSET', KEYS[1], ARGV[1], used)
    redis.call('INCRBYFLOAT', KEYS[2], used - tonumber(before))
  end
end
return 1
"""

# KEYS: concurrency; ARGV: lease seconds, ids...: renew the leases still held
RENEW_LEASES = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', until_, ARGV[i])
end
return 1
"""


def scope_keys(prefix: str, scope: str) -> list[str]:
    """The keys of one scope, hash-tagged so that they live in one cluster slot."""
    tag = f"{prefix}:{{{scope}}}"
    names = ("rpm", "rph", "rpd", "tpm", "tpm:tokens", "tpm:total", "concurrent")
    return [f"{tag}:{name}" for name in names]


class RedisRateLimiter:
    """The limiter shared through Redis; see the module's docstring."""

    def __init__(
        self,
        client: Redis,
        limits_for: Callable[[str, str], tuple[str, Limits]],
        *,
        prefix: str = "aoe",
        on_unavailable: str = "fail_closed",
        lease: float = LEASE,
    ) -> None:
        self.client = client
        self._limits_for = limits_for
        self.prefix = prefix
        self.on_unavailable = on_unavailable
        self.lease = lease
        self.local = LocalRateLimiter(limits_for)  # for on_unavailable: local
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._renew = client.register_script(RENEW_LEASES)
        self._turns: dict[str, asyncio.Lock] = {}
        self._held: dict[str, set[str]] = {}  # scope -> ids with a lease, for renewal
        self._ids: dict[int, str] = {}  # permit ident -> its id in Redis
        self._local_permits: dict[int, Permit] = {}  # our id -> the local limiter's permit
        self._count = 0
        self._renewer: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._outage_since: float | None = None
        self.outages = 0  # times Redis was found unreachable

    async def acquire(
        self,
        provider: str,
        model: str,
        tokens: int,
        on_wait: OnWait | None = None,
    ) -> Permit:
        key, limits = self._limits_for(provider, model)
        self._count += 1
        ident = self._count
        arrived = time.monotonic()
        if limits.unlimited:
            return Permit(key, ident, arrived, tokens, 0.0)
        if limits.tokens_per_minute is not None and tokens > limits.tokens_per_minute:
            raise RequestTooLarge.of(key, tokens, limits.tokens_per_minute)
        member = f"{uuid.uuid4().hex}"
        keys = scope_keys(self.prefix, key)
        args = _arguments(member, tokens, limits, self.lease)
        told = False
        turn = self._turns.setdefault(key, asyncio.Lock())
        async with turn:  # this process's requests for the scope, in arrival order
            while True:
                try:
                    taken, value = await self._acquire(keys=keys, args=args)
                except RedisUnreachable as e:
                    local = await self._unavailable(e, provider, model, tokens, on_wait)
                    if local is not None:  # given back to the local limiter by our id
                        self._local_permits[ident] = local
                        return Permit(key, ident, arrived, tokens, time.monotonic() - arrived)
                    continue
                self._recovered()
                if int(taken) == 1:
                    break
                wait = POLL if int(taken) == -1 else min(float(value), 5.0)
                if not told and on_wait is not None:
                    on_wait(_waiting(int(taken), float(value), limits))
                    told = True
                await self._pause(max(wait, 0.001))
        if limits.concurrent_requests:
            self._held.setdefault(key, set()).add(member)
            self._start_renewing()
        permit = Permit(key, ident, arrived, tokens, time.monotonic() - arrived)
        self._ids[ident] = member
        return permit

    def release(self, permit: Permit, used_tokens: int | None) -> None:
        local = self._local_permits.pop(permit.ident, None)
        if local is not None:
            self.local.release(local, used_tokens)
            return
        member = self._ids.pop(permit.ident, None)
        if member is None:
            return  # an unlimited scope
        held = self._held.get(permit.scope)
        if held is not None:
            held.discard(member)
        keys = scope_keys(self.prefix, permit.scope)
        task = asyncio.get_running_loop().create_task(
            self._give_back(keys, member, -1 if used_tokens is None else used_tokens)
        )
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _give_back(self, keys: list[str], member: str, used: int) -> None:
        # unreachable: its lease runs out by itself; its tokens stay reserved, never fewer
        with contextlib.suppress(RedisUnreachable):
            await self._release(keys=[keys[4], keys[5], keys[6]], args=[member, used])
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a call of this process ends meanwhile."""
        if self._changed is None:
            self._changed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)

    def _start_renewing(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        while any(self._held.values()):
            await asyncio.sleep(min(RENEW, self.lease / 3))
            for scope, members in list(self._held.items()):
                if not members:
                    continue
                keys = scope_keys(self.prefix, scope)
                # unreachable: tried again at the next round; a lease lasts LEASE seconds
                with contextlib.suppress(RedisUnreachable):
                    await self._renew(keys=[keys[6]], args=[self.lease, *members])

    async def _unavailable(
        self,
        error: BaseException,
        provider: str,
        model: str,
        tokens: int,
        on_wait: OnWait | None,
    ) -> Permit | None:
        """Redis did not answer: fall back (``local``) or wait and say so."""
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self.outages += 1
            if self.on_unavailable == "local":
                log.warning(
                    "Redis is unreachable (%s): falling back to this process's own rate "
                    "limits; other processes are not counted until it answers again",
                    error,
                )
            else:
                log.error(
                    "Redis is unreachable (%s): calls wait until it answers again "
                    "(redis.on_unavailable: fail_closed); set it to 'local' to fall back "
                    "to this process's own limits",
                    error,
                )
        if self.on_unavailable == "local":
            return await self.local.acquire(provider, model, tokens, on_wait)
        if on_wait is not None:
            on_wait(Waiting("Redis, which does not answer (the shared limits)"))
        await asyncio.sleep(RETRY)
        return None

    def _recovered(self) -> None:
        if self._outage_since is not None:
            log.warning(
                "Redis answers again after %.1f s: shared rate limits are back",
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        await self.client.aclose()


def _arguments(member: str, tokens: int, limits: Limits, lease: float) -> list[str | int | float]:
    """``ACQUIRE``'s ARGV (0: no limit)."""
    return [
        member,
        tokens,
        limits.requests_per_minute or 0,
        limits.requests_per_hour or 0,
        limits.requests_per_day or 0,
        limits.tokens_per_minute or 0,
        limits.concurrent_requests or 0,
        lease,
        *WINDOWS,
        TOKEN_WINDOW,
    ]


def shared_limiter(settings: Any) -> RedisRateLimiter | None:
    """The shared limiter when Redis is configured (``REDIS_HOST`` or ``redis.url``)."""
    from aoe.policy.limits import limits_for_config

    section = settings.config.redis
    url = configured(section)
    if url is None:
        return None
    return RedisRateLimiter(
        connect(url),
        limits_for_config(settings.config.rate_limiting),
        prefix=section.key_prefix,
        on_unavailable=section.on_unavailable,
    )


def _waiting(taken: int, seconds: float, limits: Limits) -> Waiting:
    """What the script's refusal says: every slot taken (-1), or a window full
    for ``seconds`` (which one, it does not say)."""
    if taken == -1:
        return Waiting(f"{at_once(limits.concurrent_requests or 0)}, all processes")
    return Waiting("the rate limits shared by all processes", max(seconds, 0.0))
