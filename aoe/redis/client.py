"""The Redis client of aoe, and the one place redis-py's errors enter aoe.

Every module that talks to Redis (limits, spend, records, the queue, the
service) holds a client made by :func:`connect`. Its commands, pipelines and
scripts raise aoe's own errors, translated here once (:func:`translated`), as
httpx translates httpcore's:

- :class:`~aoe.errors.RedisUnreachable` when Redis cannot be reached: down,
  restarting, still loading its data, a replica not yet promoted in a failover
  (read-only), or a socket that timed out; what waiting or falling back is for;
- :class:`~aoe.errors.RedisFailed` when it answered with an error: out of
  memory, a script's error, a missing stream or group. Its message is Redis's
  own, so a caller that knows one reply (``BUSYGROUP``) can tell it apart.

redis-py is imported on the first :func:`connect`, never before: ``aoe --help``
and ``aoe validate`` do not pay for it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from aoe.errors import RedisFailed, RedisUnreachable

if TYPE_CHECKING:
    from redis.asyncio import Redis


def redis_url(host: str | None, port: int, db: int, url: str | None) -> str | None:
    """The Redis to use, or None: ``url`` first, else ``host`` (and port, db)."""
    if url:
        return url
    if host:
        return f"redis://{host}:{port}/{db}"
    return None


def configured(section: Any) -> str | None:
    """The URL of the Redis the config's ``redis`` section names, or None."""
    return redis_url(section.host, section.port, section.db, section.url)


def connect(url: str) -> Redis:
    """A client for ``url`` whose errors are aoe's; nothing is sent until the
    first command."""
    client: Redis = _client_class().from_url(url, socket_timeout=5, socket_connect_timeout=5)
    return client


def text(value: bytes | str) -> str:
    """A Redis reply's bytes as text."""
    return value.decode() if isinstance(value, bytes) else value


@functools.cache
def _unreachable() -> tuple[type[BaseException], ...]:
    from redis.exceptions import BusyLoadingError, ReadOnlyError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    # ReadOnlyError: a replica that has not been promoted yet, during a failover
    return (
        OSError,
        TimeoutError,
        RedisConnectionError,
        RedisTimeoutError,
        BusyLoadingError,
        ReadOnlyError,
    )


@functools.cache
def _passed_on() -> tuple[type[BaseException], ...]:
    from redis.exceptions import NoScriptError

    # redis-py's own scripts catch it (to load the script and call it again)
    return (NoScriptError,)


@functools.cache
def _failed() -> type[BaseException]:
    from redis.exceptions import RedisError

    return RedisError


@contextmanager
def translated() -> Iterator[None]:
    """redis-py's errors raised inside, as aoe's; see the module docstring. The
    ``except`` clauses name redis-py's classes only when an error is raised, so
    entering this costs no import."""
    try:
        yield
    except RedisFailed:
        raise
    except _passed_on():
        raise
    except _unreachable() as e:
        raise RedisUnreachable(str(e)) from e
    except _failed() as e:
        raise RedisFailed(str(e)) from e


@functools.cache
def _client_class() -> Any:
    """The client class, made on first use so that redis-py is imported then."""
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    class Translated(Pipeline):
        """A pipeline whose ``execute`` raises aoe's errors."""

        async def execute(self, raise_on_error: bool = True) -> list[Any]:
            with translated():
                return await super().execute(raise_on_error)

    class Client(Redis):
        """A client whose every command (scripts' included) raises aoe's errors."""

        async def execute_command(self, *args: Any, **options: Any) -> Any:
            with translated():
                return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

        def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
            return Translated(
                self.connection_pool, self.response_callbacks, transaction, shard_hint
            )

    return Client
