"""The run's record: a journal written at once, the store written in bulk.

:class:`Recorder` subscribes to a run's bus. Before each call the engine asks it
to make everything so far durable (:meth:`Recorder.flushed`): the events not yet
journaled are appended to the session's journal, a file of its own beside the
store (``journal/``), one line each, in one ``write`` at the end of the loop's
turn for all the calls that asked during it. From then on they survive
any crash of aoe, ``kill -9`` included; the writer thread fsyncs the journal
within 0.2 s, which bounds what a power cut can take. That keeps engine.md's
guarantee ("written when the agent finishes, durably, before any dependent
starts") on the event loop, waiting for no thread: the attempt, and the
``AgentFinished`` of everything the call depends on, were emitted before it.

The same events go to a writer thread that turns them into the store's rows in
large transactions (one at most every 50 ms), each noting how far into the
journal it reaches. The store is what everyone reads; if aoe dies before the
rows of its last events are written, :func:`recover` writes them from the
journal (``aoe resume`` and the commands that read runs call it first). At the
end of the run, once everything is in the store and synced, the journal goes.

If the journal or the store cannot be written (a full disk), the next
``flushed`` raises :class:`StateWriteFailed`: the run makes no call it could
not record.

Before each transaction the writer looks (a few ``stat`` calls) that the store
is still the file it opened (:mod:`aoe.state.files`). If it was deleted,
replaced, truncated, or lost its ``-wal`` file, the writer makes the path safe
to open again and writes the run's record there anew: the record as the
session began (read when the writer opened the store), then the session's
journal, which holds every event of it. The run goes on, and says so loudly:
the records of other runs that were in a deleted or truncated file are not
this run's to rebuild. If the record cannot be written anew, the run stops
as on a full disk, and its journal and starting record are kept for
``aoe runs import`` and ``aoe resume``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import math
import operator
import os
import queue
import sqlite3
import threading
import time
import typing
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from aoe import events as _events
from aoe.errors import AoeError, StateWriteFailed, scrub
from aoe.events import (
    NOT_ANSWERED,
    AgentFinished,
    AgentStarted,
    AgentState,
    AttemptFinished,
    AttemptStarted,
    Event,
    RunFinished,
    RunStarted,
    RunStatus,
)
from aoe.format.files import make_folders
from aoe.state.cache import CacheHit, CachePut
from aoe.state.files import Cleared, Loss, StoreFile
from aoe.state.store import (
    SCHEMA_VERSION,
    Rows,
    Store,
    dumps,
    journal_of,
    journal_path,
    open_store,
    put_rows,
    run_alive,
    run_rows,
    transaction,
    writing,
)
from aoe.types import Usage

_LEFT_OUT = frozenset({"run_id", "at", "agent_id", "output", "outputs"})

_Item = Event | CachePut | CacheHit


class Mirror(Protocol):
    """A copy of the journal kept elsewhere (:class:`aoe.redis.records.RecordMirror`)."""

    def append(self, data: bytes, offset: int) -> None:
        """Send journal bytes that end at ``offset``."""

    def synced(self, offset: int) -> asyncio.Future[None] | None:
        """A future done once the copy holds ``offset`` bytes; None if it already does."""


# journals a Recorder of this process is writing: never recovered from under it
_OPEN: set[Path] = set()

log = logging.getLogger("aoe.store")


@dataclasses.dataclass
class Lost:
    """The run store was lost while a recorder had it open, and what was done."""

    loss: Loss
    cleared: Cleared | None = None  # how the path was made safe again
    rebuilt: bool = False  # the run's record is in the store at the path again
    record: Path | None = None  # where the record as the session began was kept


class Recorder:
    """Records one session of one run in the store at ``path``."""

    # events nobody waits on (the run's end, an agent with no dependents) are
    # journaled and handed to the writer at least this often
    HAND_OVER = 0.005
    # the writer gathers what arrives for this long before each transaction
    BATCH = 0.05

    def __init__(
        self, path: Path, run_id: str, session: int = 1, mirror: Mirror | None = None
    ) -> None:
        self.path = path
        self.mirror = mirror  # the record in Redis too (aoe.redis.records)
        self.run_id = run_id
        self.session = session
        self.journal = journal_path(path, run_id, session)
        self._fd: int | None = None
        self._offset = 0  # bytes journaled (event loop)
        self._queue: queue.SimpleQueue[tuple[list[_Item], int] | None] = queue.SimpleQueue()
        self._pending: list[_Item] = []  # not yet journaled (event loop)
        self._stopping = threading.Event()
        self._failure: BaseException | None = None
        # the store was lost under the writer (set by it, once; read on the loop)
        self.lost: Lost | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        # calls waiting for the journal write at the end of this turn of the loop
        self._waiters: list[asyncio.Future[None]] = []
        self._thread: threading.Thread | None = None

    # -- on the event loop ---------------------------------------------------------
    def start(self) -> None:
        """Open the journal and start the writer; call from the run's event loop."""
        self._loop = asyncio.get_running_loop()
        try:
            make_folders(self.journal.parent)
            # readable too: the writer reads it back to write the record anew
            self._fd = os.open(
                self.journal, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
            self._offset = os.fstat(self._fd).st_size
        except OSError as e:
            self._failure = e
            raise self._failed() from None
        _OPEN.add(self.journal)
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
        """Journal everything pending in one write, give it to the writer, and
        let the calls waiting for it go."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending and self._failure is None and self._fd is not None:
            batch, self._pending = self._pending, []
            data = "".join([_line(item) for item in batch if isinstance(item, Event)]).encode()
            try:
                _write_all(self._fd, data)
            except OSError as e:  # full: stop before the next call (a torn line is
                self._failure = e  # dropped by recover, and nothing follows it)
            else:
                self._offset += len(data)
                self._queue.put((batch, self._offset))
                if self.mirror is not None and data:  # (not for cache items alone)
                    self.mirror.append(data, self._offset)
        waiters, self._waiters = self._waiters, []
        failure = None if self._failure is None else self._failed()
        mirrored = None
        if failure is None and self.mirror is not None and waiters:
            try:
                mirrored = self.mirror.synced(self._offset)
            except StateWriteFailed as e:
                failure = e
        for waiter in waiters:
            if waiter.done():  # its call was cancelled meanwhile
                continue
            if failure is not None:
                waiter.set_exception(failure)
            elif mirrored is not None:  # once Redis has it too
                mirrored.add_done_callback(functools.partial(_follow, waiter))
            else:
                waiter.set_result(None)

    def flushed(self) -> Awaitable[None] | None:
        """None when every event so far is journaled; else a future that is done
        once it is. The calls that ask in one turn of the loop share one write,
        at its end. Raises if the record cannot be written."""
        if self._failure is not None:
            raise self._failed()
        if not self._pending:
            # journaled; with a mirror, perhaps not yet in Redis
            return None if self.mirror is None else self.mirror.synced(self._offset)
        assert self._loop is not None, "Recorder.start() was not called"
        if not self._waiters:
            self._loop.call_soon(self._hand_over)
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        return waiter

    def close(self) -> None:
        """Write what is pending, stop the writer; raises if the store failed."""
        self._hand_over()
        self.join()

    def drain(self) -> None:
        """Journal everything pending (on the loop; then :meth:`join`)."""
        self._hand_over()

    def join(self) -> None:
        """Stop the writer once it has written what it was handed; blocks for a
        commit, so call it off the event loop. Raises if the record failed."""
        if self._thread is not None:
            self._stopping.set()
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            _OPEN.discard(self.journal)
        if self._failure is not None:
            raise self._failed()

    def _failed(self) -> StateWriteFailed:
        error = self._failure
        if isinstance(error, sqlite3.Error | AoeError):
            reason = str(error)
        elif isinstance(error, OSError):
            reason = f"{error.strerror or error}"
        else:
            reason = repr(error)
        if self.lost is not None and not self.lost.rebuilt:
            return StateWriteFailed(self._not_rebuilt(self.lost, reason))
        if isinstance(error, StateWriteFailed):  # says all itself
            return error
        return StateWriteFailed(
            f"the run store {self.path} could not be written ({reason}); the run stopped "
            f"before its next call. Free disk space, then `aoe resume {self.run_id}`"
        )

    def told(self) -> str | None:
        """What happened to the store, once the run's record was written anew;
        None if nothing did."""
        return None if self.lost is None or not self.lost.rebuilt else self._telling(self.lost)

    def _telling(self, lost: Lost) -> str:
        path, cleared = self.path, lost.cleared
        aside = None if cleared is None else cleared.aside
        what = f"the run store {path} was {lost.loss.value} while run {self.run_id} was going on"
        if lost.loss is Loss.REPLACED:
            return f"{what}: the run's record was written from its journal into the file now there"
        if cleared is not None and cleared.copied:
            return (
                f"{what}: a whole copy of it as this process saw it took its place (the file "
                f"left without it is kept as {aside}), and the run's record goes on there"
            )
        rebuilt = f"the run's record was written again from its journal into a new {path}"
        if aside is not None:
            return (
                f"{what}: it is kept as {aside}, and {rebuilt}; the other runs' records are "
                "not in the new store (what is left of them is in the file kept)"
            )
        return f"{what}: {rebuilt}; the other runs' records that were in it are lost"

    def _not_rebuilt(self, lost: Lost, reason: str) -> str:
        text = (
            f"the run store {self.path} was {lost.loss.value} while run {self.run_id} was "
            f"going on, and the run's record could not be written anew ({reason}): the run "
            f"stopped before its next call. Its journal is kept as {self.journal}"
        )
        if lost.record is None:
            return text
        return (
            f"{text}, and its record as this session began as {lost.record}: once "
            f"{self.path} can be used (move aside what is there), `aoe runs import "
            f"{lost.record}`, then `aoe resume {self.run_id}`"
        )

    # -- on the writer thread ------------------------------------------------------
    def _write(self) -> None:
        try:
            target = _Target(self.path, self.run_id, self.session)
        except BaseException as e:
            self._failure = e
            return
        journal = _Syncer(self.journal, self._fd)
        handed = 0  # how far into the journal the writer was handed events
        try:
            stop = False
            while not stop:
                try:
                    first = self._queue.get(timeout=journal.due())
                except queue.Empty:  # nothing new: sync what was journaled
                    journal.now()
                    continue
                journal.written()
                if first is not None:  # gather more, unless the run is ending
                    self._stopping.wait(self.BATCH)
                batches = [first]
                while True:
                    try:
                        batches.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = None in batches
                given = [batch for batch in batches if batch is not None]
                if given:
                    handed = given[-1][1]
                    if not self._look(target, handed):  # (else written with the rest)
                        target.write([item for items, _ in given for item in items], handed)
            # the end: everything is in the store; once the store is on disk,
            # the journal is not needed
            journal.now()
            self._last_look(target, handed)
            target.finish()
            if self._failure is None:
                with contextlib.suppress(OSError):
                    self.journal.unlink()
        except BaseException as e:  # any failure stops the run's calls
            self._failure = e
        finally:
            journal.close()
            target.close()

    def _look(self, target: _Target, handed: int) -> bool:
        """Is the store still the file opened? If not, write the record anew
        (the journal up to ``handed`` included) and say so; True then."""
        loss = target.file.lost()
        if loss is None:
            return False
        lost = Lost(loss)
        try:
            lost.cleared = target.rebuild(loss, self._journaled(handed), handed)
        except BaseException:
            lost.record = self._keep(target.snapshot)
            self.lost = lost
            raise
        lost.rebuilt = True
        if self.lost is None:  # the first loss is the one told at the end
            self.lost = lost
        log.warning("%s", self._telling(lost), extra={"run_id": self.run_id})
        return True

    def _last_look(self, target: _Target, handed: int) -> None:
        """The look before the last checkpoint, which would copy the log into a
        file cut short: a file short of its pages is waited on until it is whole
        again (a checkpoint that was under way) or known to be cut."""
        deadline = time.monotonic() + 2 * StoreFile.SHORT
        while not self._look(target, handed) and target.file.suspect is not None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)

    def _journaled(self, end: int) -> bytes:
        """The session's journal up to ``end``, read through the run's own
        descriptor (the file may have lost its name)."""
        assert self._fd is not None
        chunks = []
        at = 0
        while at < end:
            chunk = os.pread(self._fd, min(end - at, 1 << 24), at)
            if not chunk:
                break
            chunks.append(chunk)
            at += len(chunk)
        return b"".join(chunks)

    def _keep(self, snapshot: Rows) -> Path | None:
        """The record as the session began, beside the journal, in the form of
        ``aoe runs export`` (None if it cannot be written either); the journal
        itself again if its name was deleted with the store's folder."""
        record = record_beside(self.journal)
        document: dict[str, Any] = {"format": "aoe-run", "schema": SCHEMA_VERSION}
        for table, (names, rows) in snapshot.items():
            document[table] = [dict(zip(names, row, strict=True)) for row in rows]
        try:
            make_folders(record.parent)
            if self._fd is not None and not self.journal.exists():
                _write_file(self.journal, self._journaled(os.fstat(self._fd).st_size))
            _write_file(record, (dumps(document) + "\n").encode())
        except OSError:
            return None
        return record


class _Target:
    """The store the writer puts the run's rows in: its connection, the files it
    opened, and the run's record as the session began, to write it anew into
    another store if this one is lost."""

    def __init__(self, path: Path, run_id: str, session: int) -> None:
        self.path = path
        self.run_id = run_id
        self.session = session
        self.connection = self._open()
        try:
            self.writer = _Writer(self.connection, run_id, session)
            self.snapshot = run_rows(self.connection, run_id)
            if not self.snapshot["runs"][1]:
                raise StateWriteFailed(  # (the store went between its record and this)
                    f"run {run_id} is no longer in the run store {path}: it was deleted or "
                    "replaced as the run began, and the run stopped. Run it again"
                )
            self.file = StoreFile.of(path)  # once read: the log is open
        except BaseException:
            self.connection.close()
            raise

    def _open(self) -> sqlite3.Connection:
        connection = open_store(self.path, synchronous="NORMAL")
        # no checkpoint in the middle of a run's commits (it copies the log
        # into the database: tens of ms); they happen when the log is large
        connection.execute("PRAGMA wal_autocheckpoint = 0")
        return connection

    def write(self, items: list[_Item], offset: int) -> None:
        with transaction(self.connection):
            self.writer.write(items)
            self.writer.reached(offset)
        if _large(self.path):
            self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def rebuild(self, loss: Loss, journal: bytes, offset: int) -> Cleared:
        """Make the path safe to open again, then write there the run's record as
        the session began and every event of the session's ``journal``."""
        cleared = self.file.clear(loss, self.connection)
        self.connection.close()  # (on a file no longer at the path: no checkpoint)
        connection = self._open()
        try:
            with transaction(connection):
                put_rows(connection, self.run_id, self.snapshot)
                writer = _Writer(connection, self.run_id, self.session)
                writer.write([event for event, _ in read_journal(journal, self.run_id)])
                writer.reached(offset)
            self.file = StoreFile.of(self.path)
        except BaseException:
            connection.close()
            raise
        self.connection, self.writer = connection, writer
        return cleared

    def finish(self) -> None:
        _fsync(Path(f"{self.path}-wal"))
        self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self.connection.close()


def record_beside(journal: Path) -> Path:
    """Where a recorder that could not write its run's record anew keeps it."""
    return journal.with_name(journal.name.removesuffix(".journal") + ".run.json")


def _follow(waiter: asyncio.Future[None], done: asyncio.Future[None]) -> None:
    if waiter.done():
        return
    if done.cancelled():
        waiter.cancel()
    elif done.exception() is not None:
        waiter.set_exception(done.exception())  # type: ignore[arg-type]
    else:
        waiter.set_result(None)


def _write_file(path: Path, data: bytes) -> None:
    """A file of the run's record, readable by its owner only, like the journal."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # a log checkpointed and removed: nothing to sync
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_LARGE = 64 << 20  # a log this big is copied into the database between commits


def _large(path: Path) -> bool:
    try:
        return os.path.getsize(f"{path}-wal") > _LARGE
    except OSError:
        return False


class _Syncer:
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
                _fsync(self.journal.parent)
            self.named = True
        self.since = None

    def close(self) -> None:
        if self.fd is not None and self.own:
            os.close(self.fd)
        self.fd = None


# -- the journal's lines -----------------------------------------------------------
# One JSON array per event: its type's name, then its fields in order (the run id
# left out: a journal holds one run).
_JOURNAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
_GETTERS: dict[type, tuple[Callable[[Any], tuple[Any, ...]], int]] = {}


def _line(event: Event) -> str:
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
        if named is None or file in _OPEN or (run_id is not None and named[0] != run_id):
            continue
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
            writer = _Writer(db, run_id, session)
            writer.write([event for event, _ in events])
            writer.reached(offset + events[-1][1])
    return bool(events)


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
