"""The run store: SQLite in WAL mode under ``.aoe/`` (``AOE_STATE_DIR`` moves it).

One file holds every run's record — the workflow as it was (text, prompt files,
hash), the inputs and settings, the status and totals — with each agent's
state, output, usage, cost and answering model, every attempt (recorded as
started, with its request's fingerprint, before the call is made), the run's
events, and the response cache.

Several ``aoe`` processes may share a store: WAL lets readers and one writer
work at once, every write is a short ``BEGIN IMMEDIATE`` transaction, and a
busy store is waited for rather than failed. A running run's events reach
its journal before any call that depends on them and its tables in batches
(:mod:`aoe.state.recorder`); everything else is ``synchronous=FULL``.

The schema, its migrations and the connections are :mod:`aoe.state.schema`'s;
what the queries answer are the typed rows of :mod:`aoe.state.rows`; whether a
run's process is alive is :mod:`aoe.state.liveness`'s; exports and imports are
:mod:`aoe.state.transfer`'s. Any failure to open or read the store is a
:class:`StateUnusable` naming the file and what to do (sqlite3's errors are
translated by each method); nothing here ever deletes or rewrites a store it
cannot read. (At some 540 lines the module is :class:`Store` alone: its
writes and queries share one connection, one check that the file is still
there, and one translation of sqlite3's errors.)

A store open for long (``aoe serve``'s) looks every quarter second that its
file is still the one at the path (:mod:`aoe.state.files`): deleted, replaced
or damaged under it, it opens the path again rather than go on with a file
nobody else sees.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from aoe.errors import ResumeRefused, RunNotFound, StateUnusable
from aoe.events import AgentState
from aoe.state.files import Loss, StoreFile
from aoe.state.liveness import identity, run_alive
from aoe.state.rows import (
    AgentRow,
    AttemptRow,
    AttemptStatus,
    CacheStats,
    ModelEntries,
    RecordStatus,
    RunListed,
    RunRow,
    Summary,
    attempt_events,
    enum_of,
)
from aoe.state.schema import (
    dumps,
    loads,
    open_store,
    store_path,
    transaction,
    translated,
    writing,
)

if TYPE_CHECKING:
    from aoe.config.settings import Settings

log = logging.getLogger("aoe.store")


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _translated(
    method: Callable[Concatenate[Store, _P], _R],
) -> Callable[Concatenate[Store, _P], _R]:
    """sqlite3's errors of the method, as aoe's (:func:`aoe.state.schema.translated`):
    where a store that broke after it was opened enters aoe."""

    @functools.wraps(method)
    def translating(self: Store, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with translated(self.path):
            return method(self, *args, **kwargs)

    return translating


class Store:
    """The run records and the response cache in one SQLite file."""

    # seconds between two looks at whether the file is still the one opened
    CHECK = 0.25

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._connection = open_store(self.path)
        self._file = self._opened()
        self._checked = time.monotonic()

    @classmethod
    def for_settings(cls, settings: Settings) -> Store:
        return cls(store_path(settings))

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection to the file at the path: if it was deleted, replaced or
        damaged since it was opened, the path is opened again (a new store, or
        the file now there) and the old connection left to close."""
        if time.monotonic() - self._checked >= self.CHECK:
            return self._look()
        return self._connection

    def _look(self) -> sqlite3.Connection:
        """The connection, after looking at the file now (before a run's record
        is written: its recorder opens the path, and must find it there)."""
        self._checked = time.monotonic()
        loss = self._file.lost()
        if loss is not None:
            self._reopen(loss)
        return self._connection

    def _opened(self) -> StoreFile:
        try:
            return StoreFile.of(self.path)
        except OSError as e:  # gone again at once
            raise StateUnusable(
                f"the run store {self.path} went as it was opened ({e.strerror or e}); "
                "is something else deleting it? Run again"
            ) from None

    def _reopen(self, loss: Loss) -> None:
        cleared = self._file.clear(loss, self._connection)
        self._connection = open_store(self.path)  # the old one closes once unused
        self._file = self._opened()
        kept = "" if cleared.aside is None else f" (the file is kept as {cleared.aside})"
        log.warning(
            "the run store %s was %s while this process had it open%s; opened it again%s",
            self.path,
            loss.value,
            kept,
            ", from a whole copy" if cleared.copied else "",
        )

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs ----------------------------------------------------------------------
    @_translated
    def create_run(
        self,
        run_id: str,
        *,
        workflow_name: str,
        workflow_path: str,
        workflow_sha256: str,
        workflow_text: str,
        workflow_files: Mapping[str, str],
        inputs: Mapping[str, Any],
        settings: Mapping[str, Any],
        budget: float | None,
        agents: Mapping[str, str],
        described: Mapping[str, Described] | None = None,
    ) -> None:
        """The run's record, before anything runs; ``agents``: id -> definition
        hash; ``described``: id -> what the workflow says of it (:data:`Described`)."""
        now = time.time()
        with writing(self.path), transaction(self._look()) as db:
            db.execute(
                "INSERT INTO runs (run_id, workflow_name, workflow_path, workflow_sha256,"
                " workflow_text, workflow_files, inputs, settings, status, created_at,"
                " updated_at, budget, host, pid, process)"
                " VALUES (?,?,?,?,?,?,?,?,'running',?,?,?,?,?,?)",
                (
                    run_id,
                    workflow_name,
                    workflow_path,
                    workflow_sha256,
                    workflow_text,
                    dumps(dict(workflow_files)),
                    dumps(dict(inputs)),
                    dumps(dict(settings)),
                    now,
                    now,
                    budget,
                    socket.gethostname(),
                    os.getpid(),
                    identity(os.getpid()),
                ),
            )
            db.executemany(
                "INSERT INTO agents (run_id, agent_id, definition, state) VALUES (?,?,?,'pending')",
                [(run_id, agent_id, definition) for agent_id, definition in agents.items()],
            )
            _describe(db, run_id, described)

    @_translated
    def begin_session(
        self,
        run_id: str,
        *,
        agents: Mapping[str, str],
        rerun: Sequence[str],
        inputs: Mapping[str, Any],
        settings: Mapping[str, Any],
        budget: float | None,
        workflow: Mapping[str, Any] | None = None,
        sessions: int | None = None,
        reset: Sequence[str] = (),
        take_over: bool = False,
        described: Mapping[str, Described] | None = None,
    ) -> int:
        """A resume: the run is running again in this process; ``rerun`` agents go
        back to pending with their new definitions. Returns the session number.

        ``reset`` are the agents whose definition or inputs changed: what their
        earlier sessions produced (finished foreach items) no longer counts.
        ``sessions`` is the count the resume was planned on: if another process
        resumed the run since (or is resuming it now), this one is refused — under
        the write lock, so two resumes started at once never both run.
        ``take_over``: the work queue decided its last process is gone (its lease
        ran out), whatever its pid says (it may be on another host)."""
        with writing(self.path), transaction(self._look()) as db:
            row = db.execute(
                "SELECT sessions, status, host, pid, process FROM runs WHERE run_id = ?",
                (run_id,),
            ).fetchone()
            if row is None:
                raise RunNotFound(f"no run {run_id} in {self.path}")
            count, status, host, pid, process = row
            alive = status == "running" and run_alive(run_id, host, pid, process)
            if (alive and not take_over) or (sessions is not None and count != sessions):
                raise ResumeRefused(
                    f"run {run_id} was resumed by another process (pid {pid} on {host}) "
                    "meanwhile: `aoe runs show` tells how it goes"
                )
            session = int(count) + 1
            db.execute(
                "UPDATE runs SET status = 'running', sessions = ?, updated_at = ?, host = ?,"
                " pid = ?, process = ?, inputs = ?, settings = ?, budget = ?, finished_at = NULL"
                " WHERE run_id = ?",
                (
                    session,
                    time.time(),
                    socket.gethostname(),
                    os.getpid(),
                    identity(os.getpid()),
                    dumps(dict(inputs)),
                    dumps(dict(settings)),
                    budget,
                    run_id,
                ),
            )
            if workflow is not None:  # --force: the file as it is now
                db.execute(
                    "UPDATE runs SET workflow_sha256 = ?, workflow_text = ?, workflow_files = ?,"
                    " workflow_name = ? WHERE run_id = ?",
                    (
                        workflow["sha256"],
                        workflow["text"],
                        dumps(dict(workflow["files"])),
                        workflow["name"],
                        run_id,
                    ),
                )
            known = {
                r[0] for r in db.execute("SELECT agent_id FROM agents WHERE run_id = ?", (run_id,))
            }
            for agent_id in rerun:
                if agent_id in known:
                    db.execute(
                        "UPDATE agents SET definition = ?, state = 'pending', output = NULL,"
                        " error = NULL, provider = NULL, model = NULL WHERE run_id = ?"
                        " AND agent_id = ?",
                        (agents[agent_id], run_id, agent_id),
                    )
                else:
                    db.execute(
                        "INSERT INTO agents (run_id, agent_id, definition, state, since)"
                        " VALUES (?,?,?,'pending',?)",
                        (run_id, agent_id, agents[agent_id], session),
                    )
            db.executemany(
                "UPDATE agents SET since = ? WHERE run_id = ? AND agent_id = ?",
                [(session, run_id, agent_id) for agent_id in reset],
            )
            _describe(db, run_id, described)
        return session

    @_translated
    def run(self, run_id: str) -> RunRow:
        """One run's record; a unique prefix of its id is enough."""
        rows = self.connection.execute(
            "SELECT * FROM runs WHERE run_id = ? UNION ALL "
            "SELECT * FROM runs WHERE run_id LIKE ? || '%' ESCAPE '\\' AND run_id != ? LIMIT 3",
            (run_id, run_id.replace("\\", "").replace("%", "").replace("_", "\\_"), run_id),
        )
        found = [RunRow.of(_run_columns(rows, row)) for row in rows.fetchall()]
        if not found:
            raise RunNotFound(f"no run {run_id} in {self.path}: `aoe runs list` shows the runs")
        if found[0].run_id == run_id or len(found) == 1:
            return found[0]
        raise RunNotFound(
            f"{run_id} could be more than one run ({', '.join(r.run_id for r in found)}"
            "...): give more of the id"
        )

    @_translated
    def runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int | None = 20,
        since: float | None = None,
    ) -> list[RunListed]:
        """Recent runs, newest first; ``workflow`` matches the name or the file;
        ``since``: started at or after that time."""
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        if workflow is not None:
            where.append("(workflow_name = ? OR workflow_path = ?)")
            args.extend((workflow, workflow))
        query = (
            "SELECT run_id, workflow_name, workflow_path, workflow_sha256, status, created_at,"
            " updated_at, finished_at, duration, input_tokens, output_tokens, cost, budget,"
            " sessions, host, pid FROM runs"
        )
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY created_at DESC, run_id DESC"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        cursor = self.connection.execute(query, args)
        return [RunListed.of(_run_columns(cursor, row)) for row in cursor.fetchall()]

    @_translated
    def latest_unfinished(self, workflow_path: str) -> RunRow | None:
        """The newest run of this file that did not complete (for --resume-latest)."""
        cursor = self.connection.execute(
            "SELECT * FROM runs WHERE workflow_path = ? ORDER BY created_at DESC,"
            " run_id DESC LIMIT 1",
            (workflow_path,),
        )
        row = cursor.fetchone()
        if row is None:
            return None
        run = RunRow.of(_run_columns(cursor, row))
        return None if run.status.done else run

    @_translated
    def summary(self, since: float) -> Summary:
        """For ``aoe status``: runs in progress, the failures and the spend of the
        runs started since ``since`` (a time.time())."""
        recent = self.runs(limit=None, since=since)
        running = self.runs(status="running", limit=None)
        return Summary(
            active=[r for r in running if r.status is RecordStatus.RUNNING],
            failures=[r for r in recent if r.status in _FAILURES][:20],
            last_24h=math.fsum(r.cost or 0.0 for r in recent),
            runs=len(recent),
        )

    @_translated
    def mark_cancelled(self, run_id: str) -> None:
        """A run that was cancelled before it started (``aoe serve``'s queue), or
        whose process could not finish it: ``cancelled``, so it can be resumed."""
        now = time.time()
        with writing(self.path), transaction(self.connection) as db:
            db.execute(
                "UPDATE runs SET status = 'cancelled', finished_at = ?, updated_at = ?"
                " WHERE run_id = ? AND status = 'running'",
                (now, now, run_id),
            )

    @_translated
    def agents(self, run_id: str) -> list[AgentRow]:
        cursor = self.connection.execute(
            "SELECT * FROM agents WHERE run_id = ? ORDER BY coalesce(started_at, 9e18), agent_id",
            (run_id,),
        )
        names = [c[0] for c in cursor.description]
        agents = []
        for row in cursor.fetchall():
            agent = dict(zip(names, row, strict=True))
            agent["output"] = loads(agent["output"])
            agent["needs"] = loads(agent.get("needs"))
            agent["state"] = enum_of(AgentState, agent["state"], "the agent state")
            agents.append(AgentRow.of(agent))
        return agents

    @_translated
    def attempts(self, run_id: str) -> list[AttemptRow]:
        cursor = self.connection.execute(
            "SELECT * FROM attempts WHERE run_id = ? ORDER BY started_at, agent_id, item, attempt",
            (run_id,),
        )
        names = [c[0] for c in cursor.description]
        attempts = []
        for row in cursor.fetchall():
            attempt = dict(zip(names, row, strict=True))
            attempt["status"] = enum_of(AttemptStatus, attempt["status"], "the attempt status")
            attempt["truncated"] = bool(attempt.get("truncated"))
            attempt["usage_estimated"] = bool(attempt.get("usage_estimated"))
            attempts.append(AttemptRow.of(attempt))
        return attempts

    @_translated
    def spent(self, run_id: str) -> float:
        """What the run may have been billed so far: every attempt's cost, and the
        reservation of any attempt whose outcome was never recorded (a crash)."""
        row = self.connection.execute(
            "SELECT coalesce(sum(CASE WHEN status = 'started' THEN reserved ELSE cost END), 0)"
            " FROM attempts WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        return float(row[0])

    @_translated
    def events(
        self, run_id: str, *, types: Sequence[str] = (), last: int | None = None
    ) -> list[dict[str, Any]]:
        """A run's events, oldest first. Attempts are not stored as events: their
        rows in ``attempts`` hold every field, and the events are read from there.

        Each event is the JSON document ``aoe runs events`` and the HTTP API print
        (its type, where it sits in the run, and the fields of its type), not a
        typed row: the fields differ with the type, and nothing reads them but
        to print them or to filter on a few."""
        query = "SELECT session, seq, at, type, agent_id, data FROM events WHERE run_id = ?"
        args: list[Any] = [run_id]
        if types:
            query += f" AND type IN ({','.join('?' * len(types))})"
            args.extend(types)
        found = [
            {
                "session": session,
                "seq": seq,
                "at": at,
                "type": kind,
                "agent_id": agent_id,
                **loads(data),
            }
            for session, seq, at, kind, agent_id, data in self.connection.execute(query, args)
        ]
        wanted = set(types) if types else {"AttemptStarted", "AttemptFinished"}
        if wanted & {"AttemptStarted", "AttemptFinished"}:
            found.extend(attempt_events(self.attempts(run_id), wanted))
        found.sort(key=lambda e: (e["session"], e["at"], e["seq"] or 0))
        return found[-last:] if last is not None else found

    # -- prune ----------------------------------------------------------------------
    @_translated
    def prune(self, older_than: float, *, dry_run: bool = False, copies: bool = False) -> list[str]:
        """Remove finished runs last touched more than ``older_than`` seconds ago;
        a run still running is kept whatever its age, unless the store holds
        ``copies`` of records kept elsewhere (an ``aoe serve``'s ``shared.db``),
        which say nothing of a process here. Returns their ids."""
        cutoff = time.time() - older_than
        candidates = self.connection.execute(
            "SELECT run_id, status, host, pid, process FROM runs WHERE updated_at < ?",
            (cutoff,),
        ).fetchall()
        doomed = [
            run_id
            for run_id, status, host, pid, process in candidates
            if copies or status != "running" or not run_alive(run_id, host, pid, process)
        ]
        if doomed and not dry_run:
            with writing(self.path), transaction(self.connection) as db:
                db.executemany("DELETE FROM runs WHERE run_id = ?", [(r,) for r in doomed])
            with writing(self.path):
                self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return doomed

    # -- the response cache ------------------------------------------------------------
    @_translated
    def cache_get(self, key: str, since: float | None = None) -> dict[str, Any] | None:
        """The answer kept under ``key``; with ``since`` (epoch seconds), only if
        it was kept since then."""
        query = "SELECT response FROM cache WHERE key = ? AND created_at >= ?"
        row = self.connection.execute(query, (key, -1.0 if since is None else since)).fetchone()
        return None if row is None else dict(loads(row[0]))

    @_translated
    def cache_stats(self) -> CacheStats:
        entries, size, hits, oldest, newest = self.connection.execute(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(hits), 0),"
            " min(created_at), max(created_at) FROM cache"
        ).fetchone()
        by_model = [
            ModelEntries(p, m, n, h)
            for p, m, n, h in self.connection.execute(
                "SELECT provider, model, count(*), sum(hits) FROM cache"
                " GROUP BY provider, model ORDER BY count(*) DESC"
            )
        ]
        return CacheStats(str(self.path), entries, size, hits, oldest, newest, by_model)

    @_translated
    def cache_clear(self, older_than: float | None = None) -> int:
        with writing(self.path), transaction(self.connection) as db:
            if older_than is None:
                removed = db.execute("DELETE FROM cache").rowcount
            else:
                removed = db.execute(
                    "DELETE FROM cache WHERE coalesce(last_hit, created_at) < ?",
                    (time.time() - older_than,),
                ).rowcount
        with writing(self.path):
            self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(removed)


_FAILURES = (
    RecordStatus.FAILED,
    RecordStatus.BUDGET_EXCEEDED,
    RecordStatus.PARTIAL,
    RecordStatus.INTERRUPTED,
)


Described = tuple[str, str, Sequence[str]]
"""What the workflow says of an agent that the results and the report show:
its provider and model as written, and the agents it depends on."""


def _describe(
    db: sqlite3.Connection, run_id: str, described: Mapping[str, Described] | None
) -> None:
    """Each agent's provider and model as the workflow names them (the results
    document says them of agents that never ran), its dependencies, and its
    place in the workflow (``described`` is in the workflow's order)."""
    if described:
        db.executemany(
            "UPDATE agents SET llm_provider = ?, llm_model = ?, needs = ?, position = ?"
            " WHERE run_id = ? AND agent_id = ?",
            [
                (provider, model, dumps(list(needs)), position, run_id, agent_id)
                for position, (agent_id, (provider, model, needs)) in enumerate(described.items())
            ],
        )


def _run_columns(cursor: sqlite3.Cursor, row: Sequence[Any]) -> dict[str, Any]:
    """A ``runs`` row's columns by name, decoded: its JSON, and its status (a
    running run whose process is gone is ``interrupted``: resumable)."""
    run = dict(zip([c[0] for c in cursor.description], row, strict=True))
    for key in ("workflow_files", "inputs", "settings", "outputs", "output_errors"):
        if key in run:
            run[key] = loads(run[key])
    status = enum_of(RecordStatus, run["status"], "the run status")
    if status is RecordStatus.RUNNING and not run_alive(
        run["run_id"], run.get("host"), run.get("pid"), run.get("process")
    ):
        status = RecordStatus.INTERRUPTED  # its process is gone: resumable
    run["status"] = status
    return run
