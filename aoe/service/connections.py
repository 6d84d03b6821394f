"""The connections of ``aoe serve``: how many at once, and how long a client may take.

Slow clients must not take the service down: 1,100 connections sending a byte
every 2 s used to exhaust 1,024 descriptors, after which no probe was answered
and every failed ``accept()`` logged a traceback. So:

- **A cap on connections** (``--max-connections``; by default derived from the
  limit on open files, :func:`default_max_connections`). The service accepts
  connections itself (:class:`Site`) and only while there is room: at the cap,
  the connection idle the longest — one that has not sent a whole request yet,
  or a kept-alive one between requests — is closed first; when every
  connection is busy with a request, new ones wait in the kernel's queue
  until one ends. The descriptors never run out, and a probe, which sends its
  request at once, gets in even while slow connections crowd the rest.
- **A header deadline** (``--header-timeout``): a request's line and headers
  must arrive whole within that many seconds of the connection opening, or of
  its first byte after the previous response; else the connection is closed.
- **An idle deadline** (``--idle-timeout``): a kept-alive connection that sends
  nothing for that long is closed (aiohttp's ``keepalive_timeout``).
- **A stall deadline** (``--body-timeout``): a client that takes nothing of its
  response for that long is cut off. The body deadline itself is kept where a
  body is read (:mod:`aoe.service.app`).
- ``accept()`` failing anyway (the descriptors used up elsewhere) is retried
  each second and logged once per interval, not once per try with a traceback.

Each of these is logged at most once per :data:`LOG_EVERY` seconds, saying how
many times it happened: a flood of clients cannot flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import re
import socket
from collections.abc import Callable
from typing import Any, NamedTuple

from aiohttp import web

from aoe.observe.logs import Every

log = logging.getLogger("aoe.serve")

LOG_EVERY = 60.0  # seconds: at most one line per kind of event in this long
BACKLOG = 1024  # connections the kernel holds for accept(): a burst waits there
MOST_CONNECTIONS = 1000  # the default cap, where descriptors allow it
SPARE = 64  # descriptors kept at least for the rest: the store, journals, providers
WANT_DESCRIPTORS = 65_536  # the soft limit aoe serve raises itself to, if allowed
ACCEPT_RETRY = 1.0  # seconds before accept() is tried again after it failed


class Limits(NamedTuple):
    """What a client may take; every value is an option of ``aoe serve``."""

    max_connections: int
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 75.0


def descriptor_limit() -> int:
    """How many descriptors this process may open: its soft limit, raised first
    to the hard limit (at most :data:`WANT_DESCRIPTORS`), as systemd advises
    programs that use no ``select()`` (asyncio uses epoll or kqueue)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = WANT_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, WANT_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):  # a platform that caps it lower
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    return WANT_DESCRIPTORS if soft == resource.RLIM_INFINITY else int(soft)


def default_max_connections(descriptors: int) -> int:
    """``min(1000, descriptors - spare)``, the spare being a quarter (at least 64)
    for the run store, the journals and the provider and Redis connections:
    768 under the common limit of 1,024, 192 under 256, 1,000 under
    ``LimitNOFILE=65536``."""
    spare = max(SPARE, descriptors // 4)
    return max(16, min(MOST_CONNECTIONS, descriptors - spare))


def most_connections(descriptors: int) -> int:
    """The most ``--max-connections`` may be: with fewer than 32 descriptors for
    the rest, the runs would fail instead of the clients."""
    return max(1, descriptors - 32)


class Gate:
    """The connections of a service: makes each (:meth:`__call__`, a protocol
    factory), counts them, and decides when one more may be accepted."""

    def __init__(self, server: web.Server, limits: Limits) -> None:
        self.server = server
        self.limits = limits
        self.open = 0  # connections made and not yet lost
        self.accepting = 0  # sockets accepted whose connection is not made yet
        self.leaving = 0  # connections closed here and not yet lost
        # connections not busy with a request, the one idle the longest first
        self.idle: dict[Connection, None] = {}
        self.changed = asyncio.Event()  # one was lost, or turned idle
        self.evicted = Every(LOG_EVERY)
        self.full = Every(LOG_EVERY)
        self.timed_out = Every(LOG_EVERY)
        self.stalled = Every(LOG_EVERY)
        self.bad = Every(LOG_EVERY)
        self.accept_failed = Every(LOG_EVERY)

    def __call__(self) -> Connection:
        return Connection(
            self,
            self.server,
            loop=asyncio.get_running_loop(),
            keepalive_timeout=self.limits.idle_timeout,
            access_log=None,
        )

    async def room(self) -> None:
        """Until one more connection may be accepted. At the cap, the connection
        idle the longest is closed (and gone) first; when every connection is
        busy with a request, until one ends."""
        cap = self.limits.max_connections
        while self.open + self.accepting >= cap:
            if not self.leaving:  # (one closed already makes the room)
                oldest = next(iter(self.idle), None)
                if oldest is not None:
                    oldest.close_now()
                    if count := self.evicted.count():
                        log.warning(
                            "%d connections open (--max-connections): closed the one idle "
                            "the longest to let a new one in (%s)",
                            cap, _times(count),
                        )  # fmt: skip
                elif count := self.full.count():
                    log.warning(
                        "%d connections open (--max-connections), each busy with a request: "
                        "new ones wait until one ends (%s)",
                        cap, _times(count),
                    )  # fmt: skip
            self.changed.clear()
            await self.changed.wait()

    def made(self, connection: Connection) -> None:
        self.open += 1
        self.idle[connection] = None

    def lost(self, connection: Connection) -> None:
        self.open -= 1
        if connection.leaving:
            self.leaving -= 1
        self.idle.pop(connection, None)
        self.changed.set()

    def rested(self, connection: Connection) -> None:
        """Its response is written: idle again, the one idle the shortest."""
        self.idle[connection] = None
        self.changed.set()

    def cannot_accept(self, error: OSError) -> None:
        if count := self.accept_failed.count():
            log.error(
                "cannot accept connections: %s, with %d open (%s); tried again each second. "
                "Raise the limit on open files (LimitNOFILE, ulimit -n) or lower "
                "--max-connections",
                error.strerror or error, self.open, _times(count),
            )  # fmt: skip

    def too_slow(self) -> None:
        if count := self.timed_out.count():
            log.warning(
                "closed a connection that sent no whole request head within %g s "
                "(--header-timeout) (%s)",
                self.limits.header_timeout, _times(count),
            )  # fmt: skip

    def not_reading(self) -> None:
        if count := self.stalled.count():
            log.warning(
                "closed a connection that took nothing of its response for %g s "
                "(--body-timeout) (%s)",
                self.limits.body_timeout, _times(count),
            )  # fmt: skip

    def bad_request(self, peer: str | None, reason: str) -> None:
        if count := self.bad.count():
            log.warning("bad request from %s: %s (%s)", peer or "a client", reason, _times(count))


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times in the last {LOG_EVERY:g} s"


class Connection(web.RequestHandler):
    """aiohttp's connection, counted by its :class:`Gate` and held to the header
    and stall deadlines. The app says when a request is handed to it
    (:meth:`busy_with`); :meth:`finish_response` when its response is written."""

    def __init__(self, gate: Gate, manager: web.Server, **options: Any) -> None:
        super().__init__(manager, **options)
        self.gate = gate
        self.made = False
        self.busy = False
        self.leaving = False
        self.deadline: asyncio.TimerHandle | None = None  # for a request's head
        self.stall: asyncio.TimerHandle | None = None  # for a response not taken

    # -- the connection ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True
        self.gate.made(self)
        super().connection_made(transport)
        self.deadline = self._later(self.gate.limits.header_timeout, self._head_late)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.made:
            self.made = False
            self._disarm()
            self._unstall()
            self.gate.lost(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and not self.busy and self.deadline is None and self.made:
            # the first byte of a request: its head is due
            self.deadline = self._later(self.gate.limits.header_timeout, self._head_late)
        super().data_received(data)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._unstall()
        self.stall = self._later(self.gate.limits.body_timeout, self._not_reading)

    def resume_writing(self) -> None:
        self._unstall()
        super().resume_writing()

    def close_now(self) -> None:
        """Closed by the service (deadline, or room for another): at once,
        whatever it still had to send."""
        if not self.leaving:
            self.leaving = True
            self.gate.leaving += 1
        self._disarm()
        self.gate.idle.pop(self, None)
        if self.transport is not None:
            self.transport.abort()
        self.force_close()

    # -- deadlines ----------------------------------------------------------------
    def _later(self, seconds: float, then: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(seconds, then)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _unstall(self) -> None:
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None

    def _head_late(self) -> None:
        self.deadline = None
        if self.made and not self.busy:
            self.gate.too_slow()
            self.close_now()

    def _not_reading(self) -> None:
        self.stall = None
        if self.made:
            self.gate.not_reading()
            self.close_now()

    # -- requests -------------------------------------------------------------------
    def busy_with(self) -> None:
        """Its request's head arrived and is being handled: neither the header
        deadline nor making room applies until its response is written."""
        self._disarm()
        self.busy = True
        self.gate.idle.pop(self, None)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            if self.busy and self.made and not self.leaving:
                self.busy = False
                self.gate.rested(self)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp could not parse (or, rarely, an error outside the
        app): a JSON answer and one log line, not aiohttp's text and traceback."""
        if status >= 500:
            log.error("%s %s failed: %r", request.method, request.path, exc, exc_info=exc)
            reason = "internal error: the service's log has the details"
        else:
            said = getattr(exc, "message", None) or message or str(exc)
            reason = _one_line(said or "bad request")
            self.gate.bad_request(request.remote, reason)
        if request.writer.output_size > 0:  # a response began: nothing more can be said
            raise ConnectionError("the response was sent already: cannot send another")
        response = web.Response(
            status=status, text=json.dumps({"error": reason}), content_type="application/json"
        )
        response.force_close()
        return response


def _one_line(text: str, limit: int = 300) -> str:
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class Site(web.BaseSite):
    """A TCP site that accepts connections only while its :class:`Gate` has room
    (asyncio's own server accepts all it can, then fails and logs each try)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, gate: Gate) -> None:
        super().__init__(runner, backlog=BACKLOG)
        self.host = host
        self.asked = port
        self.gate = gate
        self.sockets: list[socket.socket] = []
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def port(self) -> int:
        """The port listened on (the one the system chose, for 0)."""
        return int(self.sockets[0].getsockname()[1]) if self.sockets else self.asked

    async def start(self) -> None:
        await super().start()
        self.sockets = _listen(self.host, self.asked, self._backlog)
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._accept(sock)) for sock in self.sockets]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for sock in self.sockets:
            sock.close()
        await super().stop()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.gate.room()
            try:
                client, _ = await loop.sock_accept(sock)
            except OSError as e:
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue  # that client gave up: the next one
                self.gate.cannot_accept(e)  # out of descriptors, or of memory
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            self.gate.accepting += 1
            try:
                await loop.connect_accepted_socket(self.gate, client)
            except OSError:  # gone before its connection was made
                client.close()
            finally:
                self.gate.accepting -= 1


def _listen(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets on every address of ``host`` (one for port 0), as
    asyncio's ``create_server`` makes them; raises OSError."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
            if port == 0:  # each address would get a port of its own
                break
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
