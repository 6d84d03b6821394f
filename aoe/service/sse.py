"""Server-Sent Events: how ``GET /api/v1/runs/{id}/events`` frames a run's events.

Each event is one frame, ``id:`` its number in the run (absent from the
closing ``end`` or ``error`` frame), ``event:`` its type and ``data:`` its
JSON; a quiet stream gets a comment every :data:`HEARTBEAT` seconds so that
proxies keep it open. Shared by the local routes (:mod:`aoe.service.app`) and
the Redis-backed replica (:mod:`aoe.service.shared`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from aoe.service.models import dumps

HEARTBEAT = 15.0  # seconds between SSE comments on a quiet stream
KEEP_ALIVE = b": keep-alive\n\n"


async def event_stream(request: web.Request) -> web.StreamResponse:
    """The response of an event stream, its headers sent: unbuffered by proxies."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    return response


def frame(number: int | None, kind: str, data: Any) -> bytes:
    """One SSE frame: ``data`` as strict JSON."""
    head = f"id: {number}\n" if number is not None else ""
    return f"{head}event: {kind}\ndata: {dumps(data)}\n\n".encode()
