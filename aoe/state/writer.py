"""The store's rows of a run, written from its events (the recorder's writer).

:class:`RowWriter` turns a batch of events (and response-cache items) into the
rows of ``runs``, ``agents``, ``attempts``, ``events`` and ``cache``: one
``executemany`` per kind of row, within the caller's transaction. The
recorder's writer thread uses it for a running run, :func:`aoe.state.journal.recover`
for the journal of a run whose process is gone.
"""

from __future__ import annotations

import dataclasses
import math
import sqlite3
import time
from typing import Any

from aoe.errors import scrub
from aoe.events import (
    NOT_ANSWERED,
    AgentFinished,
    AgentStarted,
    AttemptFinished,
    AttemptStarted,
    Event,
    RunFinished,
    RunStarted,
)
from aoe.state.cache import CacheHit, CachePut
from aoe.state.schema import dumps
from aoe.types import Usage

_LEFT_OUT = frozenset({"run_id", "at", "agent_id", "output", "outputs"})

Item = Event | CachePut | CacheHit
"""What the recorder hands the writer: the run's events, and the cache's writes."""


class RowWriter:
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
        # what this session wrote already (when recovering from its journal, the
        # part of it that reached the store before the crash)
        for row in connection.execute(
            "SELECT agent_id, session, item, attempt, status, provider, model, reserved,"
            " cost, input_tokens, output_tokens FROM attempts WHERE run_id = ?"
            " ORDER BY session, item, attempt",
            (run_id,),
        ):
            agent_id, in_session, item, attempt, status, provider, model = row[:7]
            reserved, cost, tokens_in, tokens_out = row[7:]
            counts = (reserved if status == "started" else cost, tokens_in, tokens_out)
            if in_session < session:
                t_in, t_out, spent, attempts = self.earlier.get(agent_id, (0, 0, 0.0, 0))
                self.earlier[agent_id] = (
                    t_in + tokens_in,
                    t_out + tokens_out,
                    spent + counts[0],
                    attempts + 1,
                )
            else:
                self.counted.setdefault(agent_id, {})[(item, attempt)] = counts
                if status in ("ok", "cached"):
                    self.answered[agent_id] = (provider, model)
        self.ended.update(
            agent_id
            for (agent_id,) in connection.execute(
                "SELECT agent_id FROM agents WHERE run_id = ? AND session = ? AND finished_at"
                " IS NOT NULL AND state NOT IN ('pending', 'running')",
                (run_id, session),
            )
        )
        self.seq = connection.execute(
            "SELECT coalesce(max(seq), 0) FROM events WHERE run_id = ? AND session = ?",
            (run_id, session),
        ).fetchone()[0]

    def reached(self, offset: int) -> None:
        """Note that the store holds the session's journal up to ``offset``."""
        self.db.execute(
            "UPDATE runs SET journal_session = ?, journal_offset = ? WHERE run_id = ?",
            (self.session, offset, self.run_id),
        )

    def write(self, items: list[Item]) -> None:
        """The rows of ``items``, within the caller's transaction."""
        batch = _Batch()
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
                batch.puts.append(
                    (item.key, item.provider, item.model, text, len(text), time.time())
                )
            elif isinstance(item, CacheHit):
                batch.hits.append((time.time(), item.key))
            elif isinstance(item, AttemptStarted):
                self._started(batch, item)
            elif isinstance(item, AttemptFinished):
                self._finished(batch, item)
            else:
                self._event(batch, item)
        self._flush(batch)

    def _started(self, batch: _Batch, event: AttemptStarted) -> None:
        key = (event.agent_id, -1 if event.item is None else event.item, event.attempt)
        batch.new_attempts[key] = [
            self.run_id, event.agent_id, self.session, key[1], event.attempt, event.provider,
            event.model, event.fingerprint, "started", None, None, event.reserved,
            0.0, 0, 0, event.waited, None, None, event.at, None, None, 0, 0,
        ]  # fmt: skip
        self.count(event.agent_id, key, event.reserved, 0, 0)

    def _finished(self, batch: _Batch, event: AttemptFinished) -> None:
        """An attempt's row completed: the one started in this batch, an update
        of one written before, or (a cache hit, never started) a new one."""
        run_id, session = self.run_id, self.session
        key = (event.agent_id, -1 if event.item is None else event.item, event.attempt)
        status = _status(event)
        if status in ("ok", "cached"):
            self.answered[event.agent_id] = (event.provider, event.model)
        error = None if event.error is None else scrub(event.error)
        output = None if event.item is None or event.error else dumps(event.output)
        tokens_in, tokens_out = event.usage
        ended = (event.finish_reason, int(event.truncated), int(event.usage_estimated))
        row = batch.new_attempts.get(key)
        if row is None and event.cached:  # no AttemptStarted: not a call
            row = batch.new_attempts[key] = [
                run_id, event.agent_id, session, key[1], event.attempt, event.provider,
                event.model, None, "cached", None, None, 0.0, 0.0, 0, 0, 0.0, None,
                None, event.at, None, None, 0, 0,
            ]  # fmt: skip
            self.count(event.agent_id, key, 0.0, 0, 0)
        if row is not None:
            row[6], row[8], row[9], row[10] = event.model, status, error, event.error_kind
            row[12], row[13], row[14] = event.cost, tokens_in, tokens_out
            row[16], row[17], row[19] = output, event.duration, event.at
            row[20], row[21], row[22] = ended
        else:
            batch.finished_attempts.append(
                (status, error, event.error_kind, event.cost, tokens_in, tokens_out,
                 event.duration, event.at, event.model, output, *ended, run_id,
                 event.agent_id, session, key[1], event.attempt)
            )  # fmt: skip
        self.count(event.agent_id, key, event.cost, tokens_in, tokens_out)
        if event.agent_id in self.ended:  # an item that ended after its agent did
            batch.retotal.add(event.agent_id)

    def _event(self, batch: _Batch, event: Event) -> None:
        """Any other event: its row in ``events``, and what it changes of the
        agent's or the run's row. (Attempts are not stored as events: their rows
        in ``attempts`` say it all, and ``Store.events`` reads them there.)"""
        run_id = self.run_id
        if isinstance(event, AgentStarted):
            batch.started_agents.append((event.at, run_id, event.agent_id))
        elif isinstance(event, AgentFinished):
            if event.resumed:
                return  # its record is the one it was restored from
            self._ended(batch, event)
        elif isinstance(event, RunStarted):
            batch.run_rows.append(
                (
                    "UPDATE runs SET budget = ?, updated_at = ? WHERE run_id = ?",
                    (event.budget, event.at, run_id),
                )
            )
        elif isinstance(event, RunFinished):
            batch.run_rows.append(_run_finished(event, run_id))
        self.seq += 1
        batch.events.append(
            (
                run_id,
                self.session,
                self.seq,
                event.at,
                type(event).__name__,
                getattr(event, "agent_id", None),
                dumps(self.data(event)),
            )
        )

    def _ended(self, batch: _Batch, event: AgentFinished) -> None:
        provider, model = self.answered.get(event.agent_id, (None, None))
        self.ended.add(event.agent_id)
        batch.ended_agents[event.agent_id] = {
            "run": self.run_id,
            "agent": event.agent_id,
            "state": str(event.state),
            "output": None if event.output is None else dumps(event.output),
            "error": None if event.error is None else scrub(event.error),
            "duration": event.duration,
            "at": event.at,
            "provider": provider,
            "model": model,
            "session": self.session,
        }

    def _flush(self, batch: _Batch) -> None:
        """One ``executemany`` per kind of row."""
        db = self.db
        if batch.new_attempts:
            db.executemany(
                "INSERT OR REPLACE INTO attempts (run_id, agent_id, session, item, attempt,"
                " provider, model, fingerprint, status, error, error_kind, reserved, cost,"
                " input_tokens, output_tokens, waited, output, duration, started_at,"
                " finished_at, finish_reason, truncated, usage_estimated)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                batch.new_attempts.values(),
            )
        if batch.finished_attempts:
            db.executemany(
                "UPDATE attempts SET status = ?, error = ?, error_kind = ?, cost = ?,"
                " input_tokens = ?, output_tokens = ?, duration = ?, finished_at = ?,"
                " model = ?, output = ?, finish_reason = ?, truncated = ?, usage_estimated = ?"
                " WHERE run_id = ? AND agent_id = ? AND session = ?"
                " AND item = ? AND attempt = ?",
                batch.finished_attempts,
            )
        if batch.started_agents:
            db.executemany(
                "UPDATE agents SET state = 'running', started_at = ? WHERE run_id = ?"
                " AND agent_id = ?",
                batch.started_agents,
            )
        self._flush_agents(batch)
        for statement, values in batch.run_rows:
            db.execute(statement, values)
        if batch.puts:
            db.executemany(
                "INSERT OR REPLACE INTO cache (key, provider, model, response, size, created_at)"
                " VALUES (?,?,?,?,?,?)",
                batch.puts,
            )
        if batch.hits:
            db.executemany(
                "UPDATE cache SET hits = hits + 1, last_hit = ? WHERE key = ?", batch.hits
            )
        if batch.events:
            db.executemany(
                "INSERT INTO events (run_id, session, seq, at, type, agent_id, data)"
                " VALUES (?,?,?,?,?,?,?)",
                batch.events,
            )

    def _flush_agents(self, batch: _Batch) -> None:
        """The ended agents' rows, with their totals; and the totals of agents
        an item of which ended after them."""
        ended_agents = batch.ended_agents
        if ended_agents:
            for ended in ended_agents.values():
                ended["in"], ended["out"], ended["cost"], ended["attempts"] = self.totals(
                    ended["agent"]
                )
            self.db.executemany(
                "UPDATE agents SET state = :state, output = :output, error = :error,"
                " duration = :duration, finished_at = :at, provider = :provider,"
                " model = :model, session = :session, input_tokens = :in,"
                " output_tokens = :out, cost = :cost, attempts = :attempts"
                " WHERE run_id = :run AND agent_id = :agent",
                ended_agents.values(),
            )
        retotal = batch.retotal - ended_agents.keys()
        if retotal:
            self.db.executemany(
                "UPDATE agents SET input_tokens = ?, output_tokens = ?, cost = ?, attempts = ?"
                " WHERE run_id = ? AND agent_id = ?",
                [(*self.totals(agent_id), self.run_id, agent_id) for agent_id in retotal],
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


@dataclasses.dataclass
class _Batch:
    """The rows of one batch of items, gathered to be written by kind."""

    new_attempts: dict[tuple[str, int, int], list[Any]] = dataclasses.field(default_factory=dict)
    finished_attempts: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    started_agents: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    ended_agents: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    retotal: set[str] = dataclasses.field(default_factory=set)
    events: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    puts: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    hits: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    run_rows: list[tuple[str, tuple[Any, ...]]] = dataclasses.field(default_factory=list)


def _run_finished(event: RunFinished, run_id: str) -> tuple[str, tuple[Any, ...]]:
    return (
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


def _status(event: AttemptFinished) -> str:
    if event.cached:
        return "cached"
    if event.error_kind == NOT_ANSWERED:
        return "cancelled"
    return "ok" if event.error is None else "error"
