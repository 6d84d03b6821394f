"""The work queue's transport: a Redis Stream of runs read as one consumer group.

``<prefix>:{queue}:runs`` holds the runs submitted (their YAML, inputs and
options); ``<prefix>:{queue}:dead`` the messages no worker could run, with the
reason. Both keys share a hash tag, so they live in one cluster slot. What a
worker does with a message — run it, resume it, when to acknowledge it — is
:mod:`aoe.service.worker`'s; this module only moves messages.

Acknowledging, and handing a message back, happen only while this consumer
holds the message: one another worker took over (this one seemed dead) is that
worker's to acknowledge.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from aoe.errors import OptionInvalid, RedisFailed, RedisUnreachable
from aoe.redis.client import configured, connect, text
from aoe.redis.records import RECORD_TTL, cancel_key, index_key, record_keys

if TYPE_CHECKING:
    from collections.abc import Iterable

    from redis.asyncio import Redis

    from aoe.config.settings import Settings

GROUP = "workers"
# acknowledge a message only while this consumer holds it (one another worker
# took over is that worker's to acknowledge)
ACK = """
local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1, ARGV[3])
if #held == 0 then return 0 end
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
"""
# a drained worker's message, queued again as a new one (a drain is not a
# delivery) and acknowledged, both only while this consumer holds it
HAND_BACK = """
local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1, ARGV[3])
if #held == 0 then return 0 end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[1], '*', unpack(fields))
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
"""


class Message(NamedTuple):
    """A message of the queue: its id, its fields, and how often it was delivered."""

    message_id: str
    fields: dict[str, str]
    deliveries: int


def stream_keys(prefix: str) -> tuple[str, str]:
    """The queue and its dead letters, hash-tagged into one cluster slot."""
    return f"{prefix}:{{queue}}:runs", f"{prefix}:{{queue}}:dead"


def client_for(settings: Settings) -> Redis:
    """The client of the Redis the queue is in; :class:`OptionInvalid` if none is named."""
    url = configured(settings.config.redis)
    if url is None:
        raise OptionInvalid(
            "the work queue is in Redis: set REDIS_HOST (or redis.url in the config file)"
        )
    return connect(url)


async def enqueue(
    settings: Settings,
    text: str,
    name: str,
    inputs: dict[str, Any],
    options: dict[str, Any],
    files: dict[str, str] | None = None,
    *,
    workflow_name: str | None = None,
    client: Redis | None = None,
    run_id: str | None = None,
) -> str:
    """Append a run to the queue; its id. The caller checked the workflow.
    Its record in Redis says ``queued`` until a worker starts it. With
    ``run_id``, a run recorded before, queued again: the worker that takes it
    resumes it from its record."""
    from aoe.engine.engine import new_run_id

    own = client is None
    if client is None:
        client = client_for(settings)
    prefix = settings.config.redis.key_prefix
    queue, _ = stream_keys(prefix)
    run_id = run_id or new_run_id()
    fields = {
        "run_id": run_id,
        "name": name,
        "workflow": text,
        "inputs": json.dumps(inputs),
        "options": json.dumps(options),
        "files": json.dumps(files or {}),  # its prompt and schema files, by path
    }
    head, _ = record_keys(prefix, run_id)
    now = time.time()
    summary = {
        "status": "queued",
        "workflow_name": workflow_name or name,
        "workflow_path": f"<submitted>/{name}",  # (aoe.service.runner.SUBMITTED)
        "created_at": now,
    }
    try:
        # the record first: a worker may start the run at once. (Not one
        # transaction: the keys are in different cluster slots.) The index
        # forgets the runs whose records expired.
        async with client.pipeline(transaction=False) as pipe:
            pipe.hset(head, mapping=summary)  # type: ignore[arg-type]
            pipe.expire(head, RECORD_TTL)
            pipe.zadd(index_key(prefix), {run_id: now})
            pipe.zremrangebyscore(index_key(prefix), "-inf", now - RECORD_TTL)
            await pipe.execute()
        try:
            await client.xadd(queue, fields)  # type: ignore[arg-type]
        except Exception:
            with contextlib.suppress(Exception):  # no record of a run never queued
                await client.delete(head)
                await client.zrem(index_key(prefix), run_id)
            raise
    except RedisUnreachable as e:
        raise OptionInvalid(f"cannot reach Redis to queue the run: {e}") from None
    finally:
        if own:
            await client.aclose()
    return run_id


class RunQueue:
    """The queue as one consumer (``consumer``, a worker) of the group sees it."""

    def __init__(self, client: Redis, prefix: str, consumer: str) -> None:
        self.client = client
        self.prefix = prefix
        self.consumer = consumer
        self.stream, self.dead = stream_keys(prefix)
        self._cursor = "0-0"

    async def setup(self) -> None:
        """The consumer group (and the stream), unless they are there already."""
        try:
            await self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except RedisFailed as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def reclaimed(self, count: int, lease: float) -> list[Message]:
        """Messages whose worker stopped renewing them for ``lease`` seconds."""
        answer: Any = await self.client.xautoclaim(
            self.stream, GROUP, self.consumer, int(lease * 1000), self._cursor, count=count
        )
        cursor, claimed = answer[0], answer[1]
        self._cursor = text(cursor)  # the next call goes on from here (0-0: from the start)
        found = []
        for message_id, fields in claimed:
            pending = await self.client.xpending_range(
                self.stream, GROUP, min=message_id, max=message_id, count=1
            )
            deliveries = int(pending[0]["times_delivered"]) if pending else 1
            found.append(Message(text(message_id), _fields(fields), deliveries))
        return found

    async def new(self, count: int) -> list[Message]:
        """Messages no consumer read yet (waiting up to a second for one)."""
        answer: Any = await self.client.xreadgroup(
            GROUP, self.consumer, {self.stream: ">"}, count=count, block=1000
        )
        return [
            Message(text(message_id), _fields(fields), 1)
            for _, messages in answer or []
            for message_id, fields in messages
        ]

    async def ack(self, message_id: str) -> None:
        """Acknowledge a message, if this consumer still holds it."""
        await self.client.eval(ACK, 1, self.stream, GROUP, message_id, self.consumer)

    async def bury(self, message_id: str, fields: dict[str, str], reason: str) -> None:
        """A copy of the message, with ``reason``, in the dead letters (not acknowledged)."""
        letter: dict[Any, Any] = {**fields, "reason": reason, "message": message_id}
        await self.client.xadd(self.dead, letter)

    async def cancels(self, run_ids: Iterable[str]) -> list[bool]:
        """Whether a cancel was asked (``aoe serve``) for each of ``run_ids``."""
        async with self.client.pipeline(transaction=False) as pipe:
            for run_id in run_ids:  # one key per run's slot: no MGET
                pipe.exists(cancel_key(self.prefix, run_id))
            found: list[Any] = await pipe.execute()
        return [bool(value) for value in found]

    async def cancel_asked(self, run_id: str) -> bool:
        return bool(await self.client.exists(cancel_key(self.prefix, run_id)))

    async def held(self) -> set[str]:
        """The messages this consumer holds now."""
        mine: Any = await self.client.xpending_range(
            self.stream, GROUP, min="-", max="+", count=10_000, consumername=self.consumer
        )
        return {text(entry["message_id"]) for entry in mine}

    async def renew(self, message_ids: list[Any], idle: int) -> None:
        """Reset the idle time of messages this consumer holds, if idle ``idle`` ms."""
        await self.client.xclaim(self.stream, GROUP, self.consumer, idle, message_ids, justid=True)

    async def hand_back(self, message_id: str, fields: dict[str, str]) -> bool:
        """Queue the message again as a new one and acknowledge it, in one step,
        if this consumer holds it; whether it did."""
        values = [value for pair in fields.items() for value in pair]
        handed: Any = await self.client.eval(
            HAND_BACK, 1, self.stream, GROUP, message_id, self.consumer, *values
        )
        return bool(handed)


async def backlog(client: Redis, stream: str) -> int:
    """Runs in the queue no worker has read yet (Redis 7's ``lag``)."""
    try:
        groups: Any = await client.xinfo_groups(stream)
    except RedisFailed as e:
        if isinstance(e, RedisUnreachable) or "no such key" not in str(e).lower():
            raise
        return 0
    for group in groups:
        if text(group.get("name", b"")) == GROUP:
            lag = group.get("lag")
            if lag is not None:
                return int(lag)
    return int(await client.xlen(stream)) if not groups else 0


def _fields(fields: dict[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in fields.items()}
