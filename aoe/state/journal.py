"""A run's journal: one file per session of a run, beside the store (``journal/``).

Each line is one event, a JSON array: its type's name, then its fields in order
(the run id left out: a journal holds one run); an error's text is scrubbed of
secrets before it reaches the disk. The :class:`~aoe.state.recorder.Recorder`
appends the lines before any call that depends on them and fsyncs them within
:attr:`Syncer.SYNC` seconds; :func:`read_journal` reads them back (a torn last
line ends it), and :func:`recover` writes what a journal holds beyond the store
into it once the run's process is gone.

``recover`` never takes a journal from under a recorder of this process
(:data:`aoe.state.liveness.HERE` knows them); other processes' recorders are
told apart by their record's pid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import operator
import os
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aoe import events as _events
from aoe.errors import scrub
from aoe.events import AgentState, Event, RunStatus
from aoe.state.liveness import HERE, run_alive
from aoe.state.schema import journal_of, journal_path, transaction, translated, writing
from aoe.state.writer import RowWriter
from aoe.types import Usage

if TYPE_CHECKING:
    from aoe.state.store import Store

# -- the journal's lines -----------------------------------------------------------
# One JSON array per event: its type's name, then its fields in order (the run id
# left out: a journal holds one run).
_JOURNAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
_GETTERS: dict[type, tuple[Callable[[Any], tuple[Any, ...]], int]] = {}


def journal_line(event: Event) -> str:
    """The journal's line of ``event``."""
    known = _GETTERS.get(type(event))
    if known is None:
        names = [f.name for f in dataclasses.fields(event)][1:]  # run_id first
        error = names.index("error") + 1 if "error" in names else 0
        known = _GETTERS[type(event)] = (operator.attrgetter(*names), error)
    getter, error = known
    values = [type(event).__name__, *getter(event)]
    if error and values[error] is not None:  # never a secret on disk (a key, a
        values[error] = scrub(values[error])  # proxy's password)
    return _JOURNAL.encode(values) + "\n"


@functools.cache
def _event_types() -> dict[str, tuple[type[Event], list[tuple[str, Callable[[Any], Any] | None]]]]:
    """Each event type by name, with its fields after ``run_id`` (a journal line's
    values, in order; events are built with keywords) and how to rebuild each
    from its JSON.
    Worked out once: ``get_type_hints`` costs ~5 ms, and every journal read
    (a resume, each GET and SSE entry of a served run) needs the table."""
    types: dict[str, tuple[type[Event], list[tuple[str, Callable[[Any], Any] | None]]]] = {}
    for value in vars(_events).values():
        if isinstance(value, type) and issubclass(value, Event) and value is not Event:
            hints = typing.get_type_hints(value, vars(_events))
            fields: list[tuple[str, Callable[[Any], Any] | None]] = []
            for field in dataclasses.fields(value)[1:]:
                kinds = set(typing.get_args(hints[field.name])) or {hints[field.name]}
                convert: Callable[[Any], Any] | None = None
                if Usage in kinds:
                    convert = _as_usage
                elif AgentState in kinds:
                    convert = _as_state
                elif RunStatus in kinds:
                    convert = _as_status
                fields.append((field.name, convert))
            types[value.__name__] = (value, fields)
    return types


def _as_usage(value: Any) -> Usage | None:
    return None if value is None else Usage(*value)


def _as_state(value: Any) -> AgentState | None:
    return None if value is None else AgentState(value)


def _as_status(value: Any) -> RunStatus | None:
    return None if value is None else RunStatus(value)


def read_journal(data: bytes, run_id: str) -> Iterator[tuple[Event, int]]:
    """The events of a journal's bytes, each with the offset just after it; a
    torn last line (the write a crash cut short) and whatever follows it end it."""
    types = _event_types()
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            return
        try:
            name, *values = json.loads(data[start:end])
            cls, fields = types[name]
            if len(values) > len(fields):
                raise TypeError(f"{name} has {len(fields)} fields")
            given = {}
            for (field, convert), value in zip(fields, values, strict=False):
                given[field] = value if convert is None else convert(value)
            event = cls(run_id=run_id, **given)
        except (ValueError, KeyError, TypeError):
            return
        start = end + 1
        yield event, start


def recover(store: Store, run_id: str | None = None, *, take_over: bool = False) -> list[str]:
    """Write into the store what the journals of runs whose process is gone hold
    beyond it (all such runs, or only ``run_id``), then remove those journals.
    ``take_over``: the work queue gave ``run_id`` to this process (its owner's
    lease ran out), so its record's process is gone whatever its pid says.
    Returns the runs that got records. Safe to run from several processes at
    once: each reads how far the store goes under the write lock."""
    folder = journal_path(store.path, "x", 1).parent
    try:
        files = sorted(folder.iterdir())
    except OSError:
        return []
    recovered = []
    for file in files:
        named = journal_of(file)
        if named is None or file in HERE.journals or (run_id is not None and named[0] != run_id):
            continue
        with translated(store.path):
            if _recover_one(store, file, *named, take_over=take_over):
                recovered.append(named[0])
    return recovered


def _recover_one(
    store: Store, file: Path, run_id: str, session: int, *, take_over: bool = False
) -> bool:
    def journal_from(offset: int) -> bytes:
        return file.read_bytes()[offset:]

    try:
        applied = apply_journal(store, run_id, session, journal_from, take_over=take_over)
    except OSError:
        return False
    if applied is None:
        return False
    with contextlib.suppress(OSError):
        file.unlink()
    with contextlib.suppress(OSError):  # the record kept with it (Recorder._keep), imported
        record_beside(file).unlink()
    return applied


def apply_journal(
    store: Store,
    run_id: str,
    session: int,
    journal_from: Callable[[int], bytes],
    *,
    take_over: bool = True,
) -> bool | None:
    """Write into the store the events of the run's journal of ``session`` beyond
    what the store holds; ``journal_from(offset)`` gives the journal's bytes from
    an offset on. True if there were any; None if the run's own recorder is
    writing it (its process is alive and not ``take_over``), or if the store has
    no record of the run (one that replaced a lost store): the journal is kept
    then, for when the record is back (``aoe runs import``)."""
    with writing(store.path), transaction(store.connection) as db:
        row = db.execute(
            "SELECT status, host, pid, process, sessions, journal_session, journal_offset"
            " FROM runs WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        if row is None:  # a store that lost the run: keep its journal for when it is back
            return None
        status, host, pid, process, sessions, journal_session, offset = row
        if status == "running" and run_alive(run_id, host, pid, process) and not take_over:
            return None  # its own recorder is writing it
        if session != journal_session:
            offset = 0
        if session < sessions:
            return False  # a later session began after this one was recovered
        events = list(read_journal(journal_from(offset), run_id))
        if events:
            writer = RowWriter(db, run_id, session)
            writer.write([event for event, _ in events])
            writer.reached(offset + events[-1][1])
    return bool(events)


def record_beside(journal: Path) -> Path:
    """Where a recorder that could not write its run's record anew keeps it."""
    return journal.with_name(journal.name.removesuffix(".journal") + ".run.json")


def write_file(path: Path, data: bytes) -> None:
    """A file of the run's record, readable by its owner only, like the journal."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # a log checkpointed and removed: nothing to sync
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Syncer:
    """Syncs the journal at most SYNC seconds after a write to it, and at the
    end: one fsync (~150 µs of CPU here) for everything written meanwhile.
    The folder is synced once too, so the file's name survives a power cut."""

    SYNC = 0.2

    def __init__(self, journal: Path, fd: int | None = None) -> None:
        self.journal = journal
        self.fd = fd  # the journal's descriptor: the run's own (it may have lost its name)
        self.own = fd is None
        self.since: float | None = None  # when the first unsynced write was seen
        self.named = False

    def due(self) -> float | None:
        """Seconds until the journal must be synced; None: nothing to sync."""
        if self.since is None:
            return None
        return max(self.SYNC - (time.monotonic() - self.since), 0.0)

    def written(self) -> None:
        if self.since is None:
            self.since = time.monotonic()
        elif time.monotonic() - self.since >= self.SYNC:
            self.now()

    def now(self) -> None:
        if self.since is None:
            return
        if self.fd is None:
            self.fd = os.open(self.journal, os.O_RDONLY | os.O_CLOEXEC)
        os.fsync(self.fd)
        if not self.named:
            with contextlib.suppress(FileNotFoundError):  # a folder gone took the name
                fsync(self.journal.parent)
            self.named = True
        self.since = None

    def close(self) -> None:
        if self.fd is not None and self.own:
            os.close(self.fd)
        self.fd = None
