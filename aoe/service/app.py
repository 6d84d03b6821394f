"""The HTTP API of ``aoe serve``: its routes, each a method of :class:`Api`.

- ``GET /health`` — healthy / degraded / unhealthy with the reason
  (:mod:`aoe.observe.health`); 200, or 503 when unhealthy. ``GET /health/live``: 200
  while the process serves at all (a liveness probe).
- ``GET /metrics`` — Prometheus metrics (:mod:`aoe.observe.metrics`), unless
  ``ENABLE_METRICS`` is off.
- ``POST /api/v1/runs`` — submit ``{"workflow": YAML, "inputs": {...}}``
  (optionally ``files`` — the prompt and schema files it names, ``{path:
  text}`` — ``name``, ``budget``, ``max_parallel``, ``mock``, ``cache``):
  202 with the run id; 400 with the diagnostics of ``aoe validate`` for a
  workflow or inputs that are wrong, or naming the field that is; 408 for a
  body slower than ``--body-timeout``; 413 for a body over the limit; 429 when
  the queue is full; 503 while draining.
- ``GET /api/v1/runs`` (``?status=&workflow=&limit=``: the runs as lists
  show them), ``GET /api/v1/runs/{id}`` (its results document, rebuilt from the
  store: :func:`aoe.observe.results.recorded`), ``GET /api/v1/runs/{id}/events``
  (Server-Sent Events, :mod:`aoe.service.sse`: what happened so far, then live
  until the run ends; each event as :func:`aoe.observe.results.published`
  gives it), ``POST /api/v1/runs/{id}/cancel``.

With Redis configured, every run route asks the replica's side
(:mod:`aoe.service.shared`) first. Bodies and answers are strict JSON, bodies
and queries checked by the pydantic models of :mod:`aoe.service.models`.

Every error becomes its answer in one place, :meth:`Api.answer`: a
:class:`~aoe.service.models.Refused` its own status and message; an aiohttp
error (no such route, a body over the limit) JSON too; a Redis failure 503 (the
caller may try again, elsewhere); anything else a bug, logged whole and
answered with a bare 500. ``/api/`` routes need the bearer token when one is
set (:meth:`Api.guard`, compared in constant time).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from aoe.errors import DiagnosticsError, RedisFailed, RunNotFound, UserError
from aoe.events import event_dict
from aoe.observe.results import listed, published, recorded
from aoe.service.connections import Connection
from aoe.service.local import END, LAGGED, Listener, LiveRun, Service
from aoe.service.models import (
    BodyInvalid,
    Refused,
    dumps,
    parse_body,
    resume_body,
    runs_query,
    submission,
)
from aoe.service.options import API
from aoe.service.sse import HEARTBEAT, KEEP_ALIVE, event_stream, frame
from aoe.state.rows import RunRow
from aoe.state.store import Store

log = logging.getLogger("aoe.serve")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPENAPI = f"{API}/openapi.json"


_QUIET = ("/health", "/metrics")  # probes and scrapes, every few seconds: at DEBUG


def _logged(request: web.Request, response: web.StreamResponse, took: float) -> None:
    """One line per request (an event stream's when it ends): method, path,
    status, time; the probes' and scrapes' at DEBUG. Never the query string or
    a header (no token ever reaches the log)."""
    level = logging.DEBUG if request.path.startswith(_QUIET) else logging.INFO
    if log.isEnabledFor(level):
        log.log(
            level,
            "%s %s %d %.1f ms",
            request.method,
            request.path,
            response.status,
            took * 1000,
        )


def make_app(service: Service) -> web.Application:
    """The aiohttp application of a service."""
    api = Api(service)
    app = web.Application(middlewares=[api.guard], client_max_size=service.options.max_body)
    app.router.add_get("/health", api.health)
    app.router.add_get("/health/live", api.live)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_post(f"{API}/runs", api.submit)
    app.router.add_get(f"{API}/runs", api.runs)
    app.router.add_get(f"{API}/runs/{{run_id}}", api.one_run)
    app.router.add_get(f"{API}/runs/{{run_id}}/events", api.events)
    app.router.add_post(f"{API}/runs/{{run_id}}/cancel", api.cancel)
    app.router.add_post(f"{API}/runs/{{run_id}}/resume", api.resume)
    app.router.add_get(f"{API}/runs/{{run_id}}/report", api.report)
    app.router.add_get(f"{API}/openapi.json", api.openapi)
    app.router.add_get("/", api.page_runs)
    app.router.add_get("/runs/{run_id}", api.page_run)
    return app


class Api:
    """The routes of one service: each handler asks :class:`Service` (or, with
    Redis, its :class:`~aoe.service.shared.Shared`) and answers in JSON."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.options = service.options
        self._openapi: dict[str, Any] | None = None

    # -- every request ----------------------------------------------------------------
    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The token, for ``/api/``; then the handler, its errors answered."""
        if isinstance(request.protocol, Connection):  # no deadline while it is answered
            request.protocol.busy_with()
        token = self.options.token
        if token is not None and request.path.startswith("/api/") and request.path != OPENAPI:
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), token.encode()
            ):
                return _json(
                    {"error": "a bearer token is required: Authorization: Bearer $AOE_API_TOKEN"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="aoe"'},
                )
        began = time.perf_counter()
        try:
            response = await handler(request)
        except Exception as e:  # (a cancelled request is no Exception: it goes on up)
            response = self.answer(request, e)
        _logged(request, response, time.perf_counter() - began)
        return response

    def answer(self, request: web.Request, error: Exception) -> web.Response:
        """The answer to a request that raised ``error``."""
        if isinstance(error, web.HTTPRequestEntityTooLarge):
            return _error(413, f"the body is over {self.options.max_body:,} bytes")
        if isinstance(error, web.HTTPException):  # no such route, method not allowed: JSON too
            response = _error(error.status, error.reason)
            if "Allow" in error.headers:
                response.headers["Allow"] = error.headers["Allow"]
            return response
        if isinstance(error, Refused):
            return _error(error.status, error.message, **error.more)
        if isinstance(error, UserError):  # a record from Redis this instance cannot use
            if self.service.shared is None:
                return _internal(request, error)
            return _error(503, str(error))
        if self.service.shared is None or not isinstance(error, RedisFailed):
            return _internal(request, error)
        # Redis unreachable, or refusing: the caller may try again (elsewhere)
        log.error("%s %s: Redis failed: %s", request.method, request.path, error)
        return _error(503, f"Redis, where runs are queued and recorded, failed: {error}")

    # -- probes and metrics -----------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        result = self.service.health()
        return _json(result.to_json(), status=result.http_status)

    async def live(self, request: web.Request) -> web.Response:
        return _json({"status": "alive"})

    async def metrics(self, request: web.Request) -> web.Response:
        service = self.service
        if service.metrics is None:
            return _error(404, "metrics are off (ENABLE_METRICS=false)")
        service.health()  # the health and queue gauges, as of now
        active, _ = service.counts()
        service.metrics.active.set(active)
        body, content_type = service.metrics.exposition()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    # -- runs -------------------------------------------------------------------------
    async def submit(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(self.options.body_timeout):
                raw = await request.read()
        except TimeoutError:
            response = _error(
                408,
                f"the body did not arrive within {self.options.body_timeout:g} s (--body-timeout)",
            )
            response.force_close()
            return response
        try:
            body = submission(parse_body(raw))
        except BodyInvalid as e:
            raise Refused(400, str(e)) from None
        try:
            accepted = await self.service.submit(body)
        except Refused:  # a full queue, a workflow too large: as the service said
            raise
        except DiagnosticsError as e:
            raise Refused(
                400, _first_line(e), diagnostics=[d.to_json() for d in e.diagnostics]
            ) from None
        except UserError as e:
            raise Refused(400, str(e)) from None
        except (ValueError, RecursionError) as e:  # a name with a NUL, a deep input
            raise Refused(400, f"the submission cannot be used: {e}") from None
        return _json(accepted, status=202, headers={"Location": accepted["url"]})

    async def runs(self, request: web.Request) -> web.Response:
        try:
            query = runs_query(dict(request.query))
        except BodyInvalid as e:
            raise Refused(400, str(e)) from None
        service = self.service
        if service.shared is not None:
            shared = await service.shared.runs(query.status, query.workflow, query.limit)
            return _json({"runs": [listed(summary) for summary in shared]})
        rows = service.store.runs(status=query.status, workflow=query.workflow, limit=query.limit)
        found = [listed(run.to_dict()) for run in rows]
        for run in found:
            live_run = service.live.get(run["run_id"])
            if live_run is not None and live_run.state == "queued":
                run["status"] = "queued"
        return _json({"runs": found})

    async def one_run(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        service = self.service
        if service.shared is not None:
            shared = await service.shared.run(run_id)
            if shared is not None:
                return _json(shared)
        row = self._find(run_id)
        run = recorded(service.store, row.run_id)  # the results document
        live_run = service.live.get(row.run_id)
        if live_run is not None and live_run.state == "queued":
            run["status"] = "queued"
        return _json(run)

    async def cancel(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        service = self.service
        if service.shared is not None:
            answer = await service.shared.cancel(run_id)
            if answer is not None:
                return _json(answer[1], status=answer[0])
        if service.cancel(run_id):
            return _json({"run_id": run_id, "status": "cancelling"}, status=202)
        run = self._find(run_id)
        raise Refused(409, f"run {run.run_id} is not running here (it is {run.status})")

    async def resume(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        try:
            async with asyncio.timeout(self.options.body_timeout):
                raw = await request.read()
            body = resume_body(raw)
        except TimeoutError:
            raise Refused(408, "the body did not arrive in time (--body-timeout)") from None
        except BodyInvalid as e:
            raise Refused(400, str(e)) from None
        service = self.service
        if service.shared is not None:
            answer = await service.shared.resume(run_id, body.budget)
            if answer is not None:
                return _json(answer, status=202, headers={"Location": answer["url"]})
        run = self._find(run_id)
        answer = await service.resume(run.run_id, body.budget)
        return _json(answer, status=202, headers={"Location": answer["url"]})

    async def report(self, request: web.Request) -> web.Response:
        """The run's HTML report, as ``aoe report`` writes it, following the run
        live in the page (the web view's ``/runs/ID`` shows it)."""
        from aoe.observe.report import gather, render

        run_id = request.match_info["run_id"]
        service = self.service
        store = service.store
        if service.shared is not None:
            found = await service.shared.recorded(run_id)
            if found is not None:
                store = found
        run_id = self._find(run_id, store).run_id
        data = await asyncio.to_thread(gather, store, run_id)
        base = f"{API}/runs/{run_id}"
        live = {
            "report": f"{base}/report",
            "events": f"{base}/events",
            "cancel": f"{base}/cancel",
            "resume": f"{base}/resume",
        }
        return _html(render(data, live=live))

    async def openapi(self, request: web.Request) -> web.Response:
        """The API's OpenAPI description (no token needed: it holds no data)."""
        if self._openapi is None:
            from aoe.observe.results import aoe_version
            from aoe.service.openapi import document

            self._openapi = document(aoe_version())
        return _json(self._openapi)

    async def page_runs(self, request: web.Request) -> web.Response:
        from aoe.service.pages import runs_page

        return _html(runs_page())

    async def page_run(self, request: web.Request) -> web.Response:
        from aoe.service.pages import run_page

        return _html(run_page(request.match_info["run_id"]))

    async def events(self, request: web.Request) -> web.StreamResponse:
        run_id = request.match_info["run_id"]
        service = self.service
        if service.shared is not None:
            streamed = await service.shared.events(request, run_id)
            if streamed is not None:
                return streamed
        live_run = service.live.get(run_id)
        stored: list[dict[str, Any]] = []
        if live_run is None:
            run_id = self._find(run_id).run_id
            live_run = service.live.get(run_id)
            if live_run is None:
                stored = service.store.events(run_id)
        response = await event_stream(request)
        if live_run is None:
            for number, row in enumerate(stored, 1):
                await response.write(frame(number, row["type"], published(row)))
            await response.write(frame(None, "end", {"run_id": run_id}))
            return response
        await _follow(response, live_run, run_id)
        return response

    def _find(self, run_id: str, store: Store | None = None) -> RunRow:
        """A run's record (in ``store``, else the service's); :class:`Refused`
        404 without the store's path, which is the server's business."""
        store = store or self.service.store
        try:
            return store.run(run_id)
        except RunNotFound as e:
            where = str(store.path)
            message = str(e).replace(f" in {where}", "").replace(where, "the run store")
            raise Refused(404, message) from None


async def _follow(response: web.StreamResponse, live_run: LiveRun, run_id: str) -> None:
    """A run of this process over SSE: its events so far, then each as it comes
    until it ends (or the client goes, or falls behind)."""
    listener = Listener()
    backlog = list(live_run.log)  # and from now on, the rest: no gap, no repeat
    finished = live_run.finished
    if not finished:
        live_run.listeners.add(listener)
    try:
        number = 0
        for event in backlog:
            number += 1
            await response.write(frame(number, type(event).__name__, published(event_dict(event))))
        while not finished:
            try:
                item = await asyncio.wait_for(listener.queue.get(), HEARTBEAT)
            except TimeoutError:
                await response.write(KEEP_ALIVE)
                continue
            if item is END:
                break
            if item is LAGGED:
                await response.write(
                    frame(None, "error", {"error": "this stream fell behind: reconnect"})
                )
                return
            number += 1
            await response.write(frame(number, type(item).__name__, published(event_dict(item))))
        await response.write(frame(None, "end", {"run_id": run_id}))
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the client went away
    finally:
        live_run.listeners.discard(listener)


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Every answer: strict JSON (no NaN or Infinity, whatever a record holds)."""
    return web.json_response(value, status=status, headers=headers, dumps=dumps)


# the web view's pages and the report: their own scripts and styles only, no
# frames, no referrer (a run id in a URL is not for other sites)
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _html(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS)


def _error(status: int, message: str, **more: Any) -> web.Response:
    return _json({"error": message, **more}, status=status)


def _first_line(error: Exception) -> str:
    count = len(getattr(error, "diagnostics", ()))
    return f"the workflow or its inputs are invalid ({count} problem{'s' if count != 1 else ''})"


def _internal(request: web.Request, error: BaseException) -> web.Response:
    """A bug: logged (one line in JSON, its traceback in its ``exception``), and
    a JSON 500 that says no more."""
    log.error("%s %s failed: %r", request.method, request.path, error, exc_info=error)
    return _error(500, "internal error: the service's log has the details")
