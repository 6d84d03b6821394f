"""The run's record, written from its events by a thread of its own.

:class:`Recorder` subscribes to a run's bus. On the event loop it only numbers
each event and queues it (well under a microsecond); a writer thread takes
everything queued, writes it in one transaction and commits — so a burst of
finished agents costs one commit, not one each — then tells the loop how far
the record goes.

The guarantee of engine.md ("written when the agent finishes, durably, before
any dependent starts") is kept by :meth:`Recorder.flushed`: the engine awaits
it after an attempt's ``AttemptStarted`` and before the call, and it returns
once everything queued so far is committed — the attempt itself, and the
``AgentFinished`` of every agent the call depends on, which were queued
earlier. Most of the time the commit has already happened and nothing is
awaited at all.

If the store cannot be written (a full disk), every later ``flushed`` raises
:class:`StateWriteFailed`: the run makes no call it could not record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, NamedTuple

from aoe.engine.events import (
    AgentFinished,
    AgentStarted,
    AttemptFinished,
    AttemptStarted,
    Event,
    RunFinished,
    RunStarted,
)
from aoe.errors import StateWriteFailed
from aoe.providers.base import Response, Usage, scrub
from aoe.state.store import connect, dumps, transaction

_NOT_ANSWERED = "cancelled"  # AttemptFinished.error_kind of a call cancelled in flight
_LEFT_OUT = frozenset({"run_id", "at", "agent_id", "output", "outputs"})
# An agent's usage, cost and attempts over every session: a crashed session's
# attempts were paid for too (those never answered at their reservation).
_TOTALS = (
    "UPDATE agents SET (input_tokens, output_tokens, cost, attempts) = (SELECT"
    " coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),"
    " coalesce(sum(CASE WHEN status = 'started' THEN reserved ELSE cost END), 0),"
    " count(*) FROM attempts WHERE run_id = :run AND agent_id = :agent)"
    " WHERE run_id = :run AND agent_id = :agent"
)


class CachePut(NamedTuple):
    key: str
    provider: str
    model: str
    response: Response


class CacheHit(NamedTuple):
    key: str


_Item = Event | CachePut | CacheHit


class Recorder:
    """Records one session of one run in the store at ``path``."""

    def __init__(self, path: Path, run_id: str, session: int = 1) -> None:
        self.path = path
        self.run_id = run_id
        self.session = session
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._queued = 0  # items queued (event loop)
        self._committed = 0  # items committed (writer thread)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._fields: dict[type, tuple[str, ...]] = {}

    # -- on the event loop ---------------------------------------------------------
    def start(self) -> None:
        """Start the writer; call from the loop that runs the run."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._write, name=f"aoe-record-{self.run_id}", daemon=True
        )
        self._thread.start()

    def __call__(self, event: Event) -> None:
        self._queued += 1
        self._queue.put(event)

    def cache(self, item: CachePut | CacheHit) -> None:
        self._queued += 1
        self._queue.put(item)

    def flushed(self) -> Awaitable[None] | None:
        if self._failure is not None:
            raise self._failed()
        if self._committed >= self._queued:
            return None
        assert self._loop is not None, "Recorder.start() was not called"
        waiter = self._loop.create_future()
        self._waiters.append((self._queued, waiter))
        return waiter

    def close(self) -> None:
        """Write what is queued, stop the writer; raises if the store failed."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._failure is not None:
            raise self._failed()

    def _wake(self) -> None:
        committed = self._committed
        failure = self._failed() if self._failure is not None else None
        waiting = []
        for upto, waiter in self._waiters:
            if waiter.done():
                continue
            if failure is not None:
                waiter.set_exception(failure)
            elif upto <= committed:
                waiter.set_result(None)
            else:
                waiting.append((upto, waiter))
        self._waiters = waiting

    def _failed(self) -> StateWriteFailed:
        error = self._failure
        reason = str(error) if isinstance(error, sqlite3.Error) else repr(error)
        return StateWriteFailed(
            f"the run store {self.path} could not be written ({reason}); the run stopped "
            f"before its next call. Free disk space, then `aoe resume {self.run_id}`"
        )

    # -- on the writer thread ------------------------------------------------------
    def _write(self) -> None:
        try:
            connection = connect(self.path)
        except sqlite3.Error as e:
            self._fail(e)
            return
        writer = _Writer(connection, self.run_id, self.session, self._fields)
        try:
            stop = False
            while not stop:
                batch = [self._queue.get()]
                while True:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = batch[-1] is None
                items = [item for item in batch if item is not None]
                if items:
                    with transaction(connection):
                        for item in items:
                            writer.write(item)
                    self._committed += len(items)
                    self._notify()
        except BaseException as e:  # any failure stops the run's calls
            self._fail(e)
        finally:
            connection.close()

    def _fail(self, error: BaseException) -> None:
        self._failure = error
        self._notify()

    def _notify(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._wake)


class _Writer:
    """Turns items into rows; used by the writer thread only."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        run_id: str,
        session: int,
        fields: dict[type, tuple[str, ...]],
    ) -> None:
        self.db = connection
        self.run_id = run_id
        self.session = session
        self.fields = fields
        self.seq = 0
        self.answered: dict[str, tuple[str, str]] = {}  # agent -> provider, model
        self.ended: set[str] = set()  # agents whose final state is written

    def write(self, item: _Item) -> None:
        if isinstance(item, CachePut):
            text = dumps(
                {
                    "text": item.response.text,
                    "usage": list(item.response.usage),
                    "model": item.response.model,
                    "finish_reason": item.response.finish_reason,
                }
            )
            self.db.execute(
                "INSERT OR REPLACE INTO cache (key, provider, model, response, size, created_at)"
                " VALUES (?,?,?,?,?,?)",
                (item.key, item.provider, item.model, text, len(text), time.time()),
            )
            return
        if isinstance(item, CacheHit):
            self.db.execute(
                "UPDATE cache SET hits = hits + 1, last_hit = ? WHERE key = ?",
                (time.time(), item.key),
            )
            return
        self.event(item)

    def event(self, event: Event) -> None:
        db, run_id = self.db, self.run_id
        if isinstance(event, AttemptStarted):
            db.execute(
                "INSERT OR REPLACE INTO attempts (run_id, agent_id, session, item, attempt,"
                " provider, model, fingerprint, status, reserved, waited, started_at)"
                " VALUES (?,?,?,?,?,?,?,?,'started',?,?,?)",
                (
                    run_id,
                    event.agent_id,
                    self.session,
                    -1 if event.item is None else event.item,
                    event.attempt,
                    event.provider,
                    event.model,
                    event.fingerprint,
                    event.reserved,
                    event.waited,
                    event.at,
                ),
            )
        elif isinstance(event, AttemptFinished):
            if event.cached:
                status = "cached"
            elif event.error_kind == _NOT_ANSWERED:
                status = "cancelled"
            else:
                status = "ok" if event.error is None else "error"
            if status in ("ok", "cached"):
                self.answered[event.agent_id] = (event.provider, event.model)
            if event.cached:  # no AttemptStarted: a cached answer is not a call
                db.execute(
                    "INSERT OR REPLACE INTO attempts (run_id, agent_id, session, item, attempt,"
                    " provider, model, status, started_at) VALUES (?,?,?,?,?,?,?,'cached',?)",
                    (
                        run_id,
                        event.agent_id,
                        self.session,
                        -1 if event.item is None else event.item,
                        event.attempt,
                        event.provider,
                        event.model,
                        event.at,
                    ),
                )
            db.execute(
                "UPDATE attempts SET status = ?, error = ?, error_kind = ?, cost = ?,"
                " input_tokens = ?, output_tokens = ?, duration = ?, finished_at = ?, model = ?,"
                " output = ? WHERE run_id = ? AND agent_id = ? AND session = ? AND item = ?"
                " AND attempt = ?",
                (
                    status,
                    None if event.error is None else scrub(event.error),
                    event.error_kind,
                    event.cost,
                    event.usage.input_tokens,
                    event.usage.output_tokens,
                    event.duration,
                    event.at,
                    event.model,
                    # a foreach item's output: a resume keeps the items that finished
                    None if event.item is None or event.error else dumps(event.output),
                    run_id,
                    event.agent_id,
                    self.session,
                    -1 if event.item is None else event.item,
                    event.attempt,
                ),
            )
            if event.agent_id in self.ended:  # an item that ended after its agent did
                db.execute(_TOTALS, {"run": run_id, "agent": event.agent_id})
        elif isinstance(event, RunStarted):
            db.execute(
                "UPDATE runs SET budget = ?, updated_at = ? WHERE run_id = ?",
                (event.budget, event.at, run_id),
            )
        elif isinstance(event, AgentStarted):
            db.execute(
                "UPDATE agents SET state = 'running', started_at = ? WHERE run_id = ?"
                " AND agent_id = ?",
                (event.at, run_id, event.agent_id),
            )
        elif isinstance(event, AgentFinished):
            if event.resumed:
                return  # its record is the one it was restored from
            provider, model = self.answered.get(event.agent_id, (None, None))
            self.ended.add(event.agent_id)
            db.execute(
                "UPDATE agents SET state = :state, output = :output, error = :error,"
                " duration = :duration, finished_at = :at, provider = :provider,"
                " model = :model, session = :session WHERE run_id = :run AND agent_id = :agent",
                {
                    "run": run_id,
                    "agent": event.agent_id,
                    "state": str(event.state),
                    "output": None if event.output is None else dumps(event.output),
                    "error": None if event.error is None else scrub(event.error),
                    "duration": event.duration,
                    "at": event.at,
                    "provider": provider,
                    "model": model,
                    "session": self.session,
                },
            )
            db.execute(_TOTALS, {"run": run_id, "agent": event.agent_id})
        elif isinstance(event, RunFinished):
            db.execute(
                "UPDATE runs SET status = ?, finished_at = ?, updated_at = ?, duration ="
                " coalesce(duration, 0) + ?, input_tokens = ?, output_tokens = ?, cost = ?,"
                " budget = ?, outputs = ?, output_errors = ? WHERE run_id = ?",
                (
                    str(event.status),
                    event.at,
                    event.at,
                    event.duration,
                    event.usage.input_tokens,
                    event.usage.output_tokens,
                    event.cost,
                    event.budget,
                    dumps(event.outputs),
                    dumps(event.output_errors),
                    run_id,
                ),
            )
        self.seq += 1
        db.execute(
            "INSERT INTO events (run_id, session, seq, at, type, agent_id, data)"
            " VALUES (?,?,?,?,?,?,?)",
            (
                run_id,
                self.session,
                self.seq,
                event.at,
                type(event).__name__,
                getattr(event, "agent_id", None),
                dumps(self.data(event)),
            ),
        )

    def data(self, event: Event) -> dict[str, Any]:
        names = self.fields.get(type(event))
        if names is None:
            names = tuple(f.name for f in dataclasses.fields(event) if f.name not in _LEFT_OUT)
            self.fields[type(event)] = names
        data = {}
        for name in names:
            value = getattr(event, name)
            if isinstance(value, Usage):
                value = {"input_tokens": value.input_tokens, "output_tokens": value.output_tokens}
            elif name == "error" and isinstance(value, str):
                value = scrub(value)
            data[name] = value
        return data
