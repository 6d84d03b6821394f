"""The run's record, written from its events by a thread of its own.

:class:`Recorder` subscribes to a run's bus. On the event loop it only keeps
each event in a list; the list goes to a writer thread in one piece when a call
waits on it (or within 5 ms when none does). The writer writes everything it
was given in one transaction — so a burst of finished agents costs one commit,
not one each — syncs the log to disk when a call waits on it, then tells the
loop how far the record goes.

The guarantee of engine.md ("written when the agent finishes, durably, before
any dependent starts") is kept by :meth:`Recorder.flushed`: the engine awaits
it after an attempt's ``AttemptStarted`` and before the call, and it returns
once everything emitted so far is committed and synced — the attempt itself,
and the ``AgentFinished`` of every agent the call depends on, which came
earlier. When nothing new is pending, nothing is awaited at all.

If the store cannot be written (a full disk), every later ``flushed`` raises
:class:`StateWriteFailed`: the run makes no call it could not record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from aoe.engine.events import (
    NOT_ANSWERED,
    AgentFinished,
    AgentStarted,
    AttemptFinished,
    AttemptStarted,
    Event,
    RunFinished,
    RunStarted,
)
from aoe.errors import StateWriteFailed
from aoe.providers.base import Usage, scrub
from aoe.state.cache import CacheHit, CachePut
from aoe.state.store import connect, dumps, transaction

_LEFT_OUT = frozenset({"run_id", "at", "agent_id", "output", "outputs"})


_Item = Event | CachePut | CacheHit


class Recorder:
    """Records one session of one run in the store at ``path``."""

    # Events nobody waits on (the run's end, an agent with no dependents) are
    # handed to the writer at least this often.
    HAND_OVER = 0.005

    def __init__(self, path: Path, run_id: str, session: int = 1) -> None:
        self.path = path
        self.run_id = run_id
        self.session = session
        self._queue: queue.SimpleQueue[list[_Item] | None] = queue.SimpleQueue()
        self._pending: list[_Item] = []  # not yet handed to the writer (event loop)
        self._queued = 0  # items handed over (event loop)
        self._committed = 0  # items committed (writer thread)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False  # a hand-over is scheduled for the end of this turn
        self._thread: threading.Thread | None = None

    # -- on the event loop ---------------------------------------------------------
    def start(self) -> None:
        """Start the writer; call from the loop that runs the run."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._write, name=f"aoe-record-{self.run_id}", daemon=True
        )
        self._thread.start()

    def __call__(self, event: Event) -> None:
        self._pending.append(event)
        if self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(self.HAND_OVER, self._hand_over)

    def cache(self, item: CachePut | CacheHit) -> None:
        self._pending.append(item)

    def _hand_over(self) -> None:
        """Give the writer everything pending, in one piece (one wake-up)."""
        self._soon = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            batch, self._pending = self._pending, []
            self._queued += len(batch)
            self._queue.put(batch)

    def flushed(self) -> Awaitable[None] | None:
        if self._failure is not None:
            raise self._failed()
        upto = self._queued + len(self._pending)
        if self._committed >= upto:
            return None
        assert self._loop is not None, "Recorder.start() was not called"
        if self._committed >= self._queued:
            self._hand_over()  # the writer is idle: at once
        elif self._pending and not self._soon:
            # the writer is busy: what more becomes ready meanwhile goes over in one
            # piece, when it is done or at the end of this turn of the loop
            self._soon = True
            self._loop.call_soon(self._hand_over)
        waiter = self._loop.create_future()
        self._waiters.append((upto, waiter))
        return waiter

    def close(self) -> None:
        """Write what is pending, stop the writer; raises if the store failed."""
        self._hand_over()
        self.join()

    def drain(self) -> None:
        """Hand everything pending to the writer (on the loop; then :meth:`join`)."""
        self._hand_over()

    def join(self) -> None:
        """Stop the writer once it has written what it was handed; may block for a
        commit, so call it off the event loop. Raises if the store failed."""
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
            connection = connect(self.path, synchronous="NORMAL")
            # no checkpoint in the middle of a commit a call waits on (it copies the
            # log into the database: tens of ms); they happen between, see below
            connection.execute("PRAGMA wal_autocheckpoint = 0")
        except BaseException as e:
            self._fail(e)
            return
        try:
            writer = _Writer(connection, self.run_id, self.session)
        except BaseException as e:
            connection.close()
            self._fail(e)
            return
        wal = _Syncer(Path(f"{self.path}-wal"))
        try:
            stop = False
            while not stop:
                try:
                    batches = [self._queue.get(timeout=wal.due())]
                except queue.Empty:  # nothing new: sync what was committed
                    wal.now()
                    continue
                while True:
                    try:
                        batches.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = None in batches
                items = [item for batch in batches if batch is not None for item in batch]
                if items:
                    with transaction(connection):
                        writer.write(items)
                    wal.maybe()
                    if any(isinstance(item, AttemptStarted) for item in items):
                        # a call waits on this: what it depends on is on disk
                        # before it is made, power cut or not (engine.md)
                        wal.now()
                    self._committed += len(items)
                    self._notify()
                    if wal.large():
                        connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            wal.now()
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
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


class _Syncer:
    """Commits are ``synchronous=NORMAL``: in the write-ahead log, safe from any
    crash of aoe itself (``kill -9`` included). The log is synced here before a
    call that waits on a commit may go out (so what it depends on survives a
    power cut too), else at most SYNC seconds after a commit, and at the end:
    one fsync (~150 µs of CPU here) for many commits where nothing waits."""

    SYNC = 0.2

    def __init__(self, wal: Path) -> None:
        self.wal = wal
        self.last = time.monotonic()
        self.dirty = False

    LARGE = 64 << 20  # a log this big is copied into the database between commits

    def large(self) -> bool:
        try:
            return os.path.getsize(self.wal) > self.LARGE
        except OSError:
            return False

    def due(self) -> float | None:
        """Seconds until the log must be synced; None: nothing to sync."""
        if not self.dirty:
            return None
        return max(self.SYNC - (time.monotonic() - self.last), 0.0)

    def maybe(self) -> None:
        self.dirty = True
        if time.monotonic() - self.last >= self.SYNC:
            self.now()

    def now(self) -> None:
        if not self.dirty:
            return
        try:
            fd = os.open(self.wal, os.O_RDONLY)
        except FileNotFoundError:  # checkpointed and removed: the database file is synced
            pass
        else:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.last = time.monotonic()
        self.dirty = False


class _Writer:
    """Turns a batch of items into rows: one ``executemany`` per kind of row,
    the agents' totals kept here rather than summed by a query each time.
    Used by the writer thread only."""

    def __init__(self, connection: sqlite3.Connection, run_id: str, session: int) -> None:
        self.db = connection
        self.run_id = run_id
        self.session = session
        self.seq = 0
        self.fields: dict[type, tuple[str, ...]] = {}
        self.answered: dict[str, tuple[str, str]] = {}  # agent -> provider, model
        self.ended: set[str] = set()  # agents whose final state is written
        # agent -> attempt key -> (reserved or cost, input tokens, output tokens):
        # what each attempt of this session counts for (a started one, its
        # reservation; a finished one, its cost)
        self.counted: dict[str, dict[tuple[int, int], tuple[float, int, int]]] = {}
        # agent -> what its attempts of earlier sessions add up to
        self.earlier: dict[str, tuple[int, int, float, int]] = {}
        for agent_id, tokens_in, tokens_out, cost, attempts in connection.execute(
            "SELECT agent_id, sum(input_tokens), sum(output_tokens), sum(CASE WHEN"
            " status = 'started' THEN reserved ELSE cost END), count(*) FROM attempts"
            " WHERE run_id = ? GROUP BY agent_id",
            (run_id,),
        ):
            self.earlier[agent_id] = (tokens_in, tokens_out, cost, attempts)

    def write(self, items: list[_Item]) -> None:
        run_id, session = self.run_id, self.session
        new_attempts: dict[tuple[str, int, int], list[Any]] = {}
        finished_attempts: list[tuple[Any, ...]] = []
        started_agents: list[tuple[Any, ...]] = []
        ended_agents: dict[str, dict[str, Any]] = {}
        retotal: set[str] = set()
        events: list[tuple[Any, ...]] = []
        puts: list[tuple[Any, ...]] = []
        hits: list[tuple[Any, ...]] = []
        run_rows: list[tuple[str, tuple[Any, ...]]] = []
        for item in items:
            if isinstance(item, CachePut):
                text = dumps(
                    {
                        "text": item.response.text,
                        "usage": list(item.response.usage),
                        "model": item.response.model,
                        "finish_reason": item.response.finish_reason,
                    }
                )
                puts.append((item.key, item.provider, item.model, text, len(text), time.time()))
                continue
            if isinstance(item, CacheHit):
                hits.append((time.time(), item.key))
                continue
            event = item
            if isinstance(event, AttemptStarted):
                key = (event.agent_id, -1 if event.item is None else event.item, event.attempt)
                new_attempts[key] = [
                    run_id, event.agent_id, session, key[1], event.attempt, event.provider,
                    event.model, event.fingerprint, "started", None, None, event.reserved,
                    0.0, 0, 0, event.waited, None, None, event.at, None,
                ]  # fmt: skip
                self.count(event.agent_id, key, event.reserved, 0, 0)
            elif isinstance(event, AttemptFinished):
                key = (event.agent_id, -1 if event.item is None else event.item, event.attempt)
                status = _status(event)
                if status in ("ok", "cached"):
                    self.answered[event.agent_id] = (event.provider, event.model)
                error = None if event.error is None else scrub(event.error)
                output = None if event.item is None or event.error else dumps(event.output)
                tokens_in, tokens_out = event.usage
                row = new_attempts.get(key)
                if row is None and event.cached:  # no AttemptStarted: not a call
                    row = new_attempts[key] = [
                        run_id, event.agent_id, session, key[1], event.attempt, event.provider,
                        event.model, None, "cached", None, None, 0.0, 0.0, 0, 0, 0.0, None,
                        None, event.at, None,
                    ]  # fmt: skip
                    self.count(event.agent_id, key, 0.0, 0, 0)
                if row is not None:
                    row[6], row[8], row[9], row[10] = event.model, status, error, event.error_kind
                    row[12], row[13], row[14] = event.cost, tokens_in, tokens_out
                    row[16], row[17], row[19] = output, event.duration, event.at
                else:
                    finished_attempts.append(
                        (status, error, event.error_kind, event.cost, tokens_in, tokens_out,
                         event.duration, event.at, event.model, output, run_id, event.agent_id,
                         session, key[1], event.attempt)
                    )  # fmt: skip
                self.count(event.agent_id, key, event.cost, tokens_in, tokens_out)
                if event.agent_id in self.ended:  # an item that ended after its agent did
                    retotal.add(event.agent_id)
            elif isinstance(event, AgentStarted):
                started_agents.append((event.at, run_id, event.agent_id))
            elif isinstance(event, AgentFinished):
                if event.resumed:
                    continue  # its record is the one it was restored from
                provider, model = self.answered.get(event.agent_id, (None, None))
                self.ended.add(event.agent_id)
                ended_agents[event.agent_id] = {
                    "run": run_id,
                    "agent": event.agent_id,
                    "state": str(event.state),
                    "output": None if event.output is None else dumps(event.output),
                    "error": None if event.error is None else scrub(event.error),
                    "duration": event.duration,
                    "at": event.at,
                    "provider": provider,
                    "model": model,
                    "session": session,
                }
            elif isinstance(event, RunStarted):
                run_rows.append(
                    (
                        "UPDATE runs SET budget = ?, updated_at = ? WHERE run_id = ?",
                        (event.budget, event.at, run_id),
                    )
                )
            elif isinstance(event, RunFinished):
                run_rows.append(
                    (
                        "UPDATE runs SET status = ?, finished_at = ?, updated_at = ?, duration ="
                        " coalesce(duration, 0) + ?, input_tokens = ?, output_tokens = ?,"
                        " cost = ?, budget = ?, outputs = ?, output_errors = ? WHERE run_id = ?",
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
                )
            if isinstance(event, AttemptStarted | AttemptFinished):
                continue  # its row in attempts says it all (Store.events reads it there)
            self.seq += 1
            events.append(
                (
                    run_id,
                    session,
                    self.seq,
                    event.at,
                    type(event).__name__,
                    getattr(event, "agent_id", None),
                    dumps(self.data(event)),
                )
            )
        db = self.db
        if new_attempts:
            db.executemany(
                "INSERT OR REPLACE INTO attempts (run_id, agent_id, session, item, attempt,"
                " provider, model, fingerprint, status, error, error_kind, reserved, cost,"
                " input_tokens, output_tokens, waited, output, duration, started_at,"
                " finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                new_attempts.values(),
            )
        if finished_attempts:
            db.executemany(
                "UPDATE attempts SET status = ?, error = ?, error_kind = ?, cost = ?,"
                " input_tokens = ?, output_tokens = ?, duration = ?, finished_at = ?,"
                " model = ?, output = ? WHERE run_id = ? AND agent_id = ? AND session = ?"
                " AND item = ? AND attempt = ?",
                finished_attempts,
            )
        if started_agents:
            db.executemany(
                "UPDATE agents SET state = 'running', started_at = ? WHERE run_id = ?"
                " AND agent_id = ?",
                started_agents,
            )
        if ended_agents:
            for ended in ended_agents.values():
                ended["in"], ended["out"], ended["cost"], ended["attempts"] = self.totals(
                    ended["agent"]
                )
            db.executemany(
                "UPDATE agents SET state = :state, output = :output, error = :error,"
                " duration = :duration, finished_at = :at, provider = :provider,"
                " model = :model, session = :session, input_tokens = :in,"
                " output_tokens = :out, cost = :cost, attempts = :attempts"
                " WHERE run_id = :run AND agent_id = :agent",
                ended_agents.values(),
            )
        retotal -= ended_agents.keys()
        if retotal:
            db.executemany(
                "UPDATE agents SET input_tokens = ?, output_tokens = ?, cost = ?, attempts = ?"
                " WHERE run_id = ? AND agent_id = ?",
                [(*self.totals(agent_id), run_id, agent_id) for agent_id in retotal],
            )
        for statement, values in run_rows:
            db.execute(statement, values)
        if puts:
            db.executemany(
                "INSERT OR REPLACE INTO cache (key, provider, model, response, size, created_at)"
                " VALUES (?,?,?,?,?,?)",
                puts,
            )
        if hits:
            db.executemany("UPDATE cache SET hits = hits + 1, last_hit = ? WHERE key = ?", hits)
        if events:
            db.executemany(
                "INSERT INTO events (run_id, session, seq, at, type, agent_id, data)"
                " VALUES (?,?,?,?,?,?,?)",
                events,
            )

    def count(
        self,
        agent_id: str,
        key: tuple[str, int, int],
        cost: float,
        tokens_in: int,
        tokens_out: int,
    ) -> None:
        """What an attempt counts for in its agent's totals, replacing what it
        counted for before (its reservation, until it is settled)."""
        self.counted.setdefault(agent_id, {})[key[1:]] = (cost, tokens_in, tokens_out)

    def totals(self, agent_id: str) -> tuple[int, int, float, int]:
        """Input tokens, output tokens, cost and attempts, over every session;
        the cost summed exactly (math.fsum), not drifted by corrections."""
        tokens_in, tokens_out, cost, attempts = self.earlier.get(agent_id, (0, 0, 0.0, 0))
        counted = self.counted.get(agent_id, {}).values()
        return (
            tokens_in + sum(c[1] for c in counted),
            tokens_out + sum(c[2] for c in counted),
            math.fsum([cost, *(c[0] for c in counted)]),
            attempts + len(counted),
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


def _status(event: AttemptFinished) -> str:
    if event.cached:
        return "cached"
    if event.error_kind == NOT_ANSWERED:
        return "cancelled"
    return "ok" if event.error is None else "error"
