"""The response cache and request fingerprints.

A request's fingerprint is the SHA-256 of everything that decides the answer:
provider, model, every message, and every parameter (``max_tokens``,
``temperature``, ``top_p``, ``stop``, ``seed``, the provider ``params``, the
output format and its schema). Two requests with the same fingerprint ask the
same question; any difference, however small, is another question. The
attempt timeout is left out: it does not change the answer.

The cache answers an attempt whose fingerprint matches an earlier valid
answer: no call, no rate limit, no cost. It keeps only answers that produced
a valid output; a failed call or a reply that did not match its schema is
never stored. The ``mock`` provider is never cached: its answers cost nothing
to make, and a cost rehearsal (``aoe run --mock``) must price every call.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from aoe.types import Request, Response, Usage, plain

if TYPE_CHECKING:
    from aoe.state.store import Store


class CachePut(NamedTuple):
    """A valid answer to keep, written with the run's record."""

    key: str
    provider: str
    model: str
    response: Response


class CacheHit(NamedTuple):
    """An answer used again: its count of hits goes up."""

    key: str


def fingerprint(request: Request) -> str:
    """The request's identity: a hex SHA-256 of every part that decides the answer,
    each part typed and length-prefixed so that no two requests share one."""
    digest = hashlib.sha256()
    update = digest.update
    for part in (request.provider, request.model):
        update(b"s%d:%s" % (len(part), part.encode()))
    for message in request.messages:
        content = message.content.encode()
        update(b"m%s:%d:%s" % (message.role.encode(), len(content), content))
    scalars = (request.max_tokens, request.temperature, request.top_p, request.seed)
    update(b"p" + repr(scalars).encode() + request.output_format.encode())
    if request.stop or request.params or request.json_schema is not None:
        extra = [list(request.stop), plain(request.params), plain(request.json_schema)]
        text = json.dumps(extra, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        update(b"j" + text.encode())
    return digest.hexdigest()


class ResponseCache:
    """Reads from the store on the event loop (an indexed lookup); writes go to
    ``record`` (the run's recorder: they are written in its next transaction).

    ``on``: whether it answers the agents that do not say (``cache``) for
    themselves; ``ttl``: the seconds an answer may be old to be used, where an
    agent does not say (None: any age)."""

    def __init__(
        self,
        store: Store,
        record: Callable[[CachePut | CacheHit], None],
        *,
        on: bool = True,
        ttl: float | None = None,
    ) -> None:
        self.store = store
        self.record = record
        self.on = on
        self.ttl = ttl

    def get(self, key: str, ttl: float | None = None) -> Response | None:
        """The answer kept under ``key``, if one is no older than ``ttl`` seconds
        (None: this cache's own ``ttl``)."""
        ttl = ttl if ttl is not None else self.ttl
        found = self.store.cache_get(key, None if ttl is None else time.time() - ttl)
        if found is None:
            return None
        self.record(CacheHit(key))
        return Response(
            text=found["text"],
            usage=Usage(*found["usage"]),
            model=found["model"],
            finish_reason=found.get("finish_reason"),
        )

    def put(self, key: str, request: Request, response: Response) -> None:
        self.record(CachePut(key, request.provider, request.model, response))
