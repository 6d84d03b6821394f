"""Starting and stopping ``aoe serve``: the socket, its limits, and the signals.

It binds 127.0.0.1 unless told otherwise; binding any other address needs a
bearer token (``AOE_API_TOKEN``), which every ``/api/`` request must then carry
(:mod:`aoe.service.app`). Connections are capped and held to deadlines so that
slow clients cannot take the service down (:mod:`aoe.service.connections`).
SIGTERM (or SIGINT) drains: new runs are refused, ``/health`` turns unhealthy,
runs in progress are cancelled — their finished agents are recorded and they
can be resumed with ``aoe resume`` — and the process exits once they are
recorded.

The CLI imports this module only inside ``aoe serve``: it brings in aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from aiohttp import web

from aoe.errors import OptionInvalid
from aoe.service.app import make_app
from aoe.service.connections import (
    Gate,
    Limits,
    Site,
    default_max_connections,
    descriptor_limit,
    most_connections,
)
from aoe.service.local import Service
from aoe.service.options import ServeOptions, is_loopback

if TYPE_CHECKING:
    from aoe.config.settings import Settings
    from aoe.state.store import Store

log = logging.getLogger("aoe.serve")

MOST_SECONDS = 86_400.0  # the longest a client may be given for anything


def connection_limits(options: ServeOptions) -> Limits:
    """The limits on clients; raises OptionInvalid for a ``--max-connections``
    that the limit on open files cannot hold."""
    for flag, seconds in (
        ("--header-timeout", options.header_timeout),
        ("--body-timeout", options.body_timeout),
        ("--idle-timeout", options.idle_timeout),
    ):
        if not 0 < seconds <= MOST_SECONDS:  # (NaN too)
            raise OptionInvalid(f"{flag} must be a number of seconds, up to {MOST_SECONDS:g}")
    descriptors = descriptor_limit()
    cap = options.max_connections
    if cap is None:
        cap = default_max_connections(descriptors)
    elif cap > most_connections(descriptors):
        raise OptionInvalid(
            f"--max-connections {cap} needs more open files than this process may have "
            f"({descriptors}, with some for the run store and providers): give at most "
            f"{most_connections(descriptors)}, or raise the limit (LimitNOFILE, ulimit -n)"
        )
    return Limits(cap, options.header_timeout, options.body_timeout, options.idle_timeout)


def _return_large_blocks() -> None:
    """Keep glibc's malloc from holding on to the memory of large requests.

    A service allocates and frees large blocks all day (request bodies, the
    workflows parsed from them). glibc raises its mmap threshold to the size of
    the first large block freed, and serves later ones from its heap, whose
    freed pages it keeps: `aoe serve` grew by ~0.5 MB per 0.9 MB workflow
    submitted, never given back. A fixed threshold (as ``MALLOC_MMAP_THRESHOLD_``
    would set) keeps blocks over 128 KiB in mmap, returned when freed."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD; musl ignores it
    except (OSError, AttributeError):
        return


async def serve(settings: Settings, store: Store, options: ServeOptions) -> None:
    """Serve until SIGTERM or SIGINT, then drain; says so in the log."""
    if not is_loopback(options.host) and not options.token:
        raise OptionInvalid(
            f"binding {options.host} (beyond this machine) needs a bearer token: set "
            "AOE_API_TOKEN to a long random secret, or bind 127.0.0.1"
        )
    limits = connection_limits(options)
    _return_large_blocks()
    service = Service(settings, store, options)
    service.warm_up()
    if service.shared is not None:
        service.shared.start()
    app = make_app(service)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    assert runner.server is not None
    gate = Gate(runner.server, limits)
    site = Site(runner, options.host, options.port, gate)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise OptionInvalid(
            f"cannot listen on {options.host}:{options.port}: {e.strerror or e}; "
            "choose another --port"
        ) from None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "listening on http://%s:%s (pid %s, %s runs at once, %s connections)",
        options.host, site.port, os.getpid(), service.limit, limits.max_connections,
    )  # fmt: skip
    try:
        await stop.wait()
        log.info("draining: no new runs; cancelling the runs in progress")
        await service.drain()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        if service.shared is not None:
            await service.shared.close()
    log.info("stopped; the runs it cancelled can be resumed with `aoe resume`")
