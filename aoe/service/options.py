"""What an ``aoe serve`` is told: its options and the limits they default to.

Kept apart from the modules that use them (:mod:`aoe.service.local`,
:mod:`aoe.service.shared`, :mod:`aoe.service.app`, :mod:`aoe.service.server`)
so that each of those imports them from below, never from a sibling. It
imports nothing heavy: the CLI builds :class:`ServeOptions` before aiohttp is
loaded.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

API = "/api/v1"
MAX_BODY = 512 << 10  # bytes of a request body: a workflow, its files and inputs
MAX_AGENTS = 5_000  # agents and foreach items of one submitted run: ~6 KB each as it runs
MAX_REPLY_BYTES = 16 << 20  # characters of one run's replies: kept in its events and record


class ServeOptions(NamedTuple):
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_body: int = MAX_BODY
    max_agents: int = MAX_AGENTS
    max_reply_bytes: int = MAX_REPLY_BYTES
    queue_limit: int = 1000  # runs waiting for a slot before new ones are refused
    metrics: bool = True
    worker: bool = True  # with Redis: run queued runs here too, not only take them
    max_connections: int | None = None  # None: derived from the descriptor limit
    header_timeout: float = 10.0  # seconds for a request's line and headers
    body_timeout: float = 30.0  # seconds for a request's body
    idle_timeout: float = 75.0  # seconds a keep-alive connection may wait between requests


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only: binding anything else needs a token."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
