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
journal it reaches (the rows: :mod:`aoe.state.writer`). The store is what
everyone reads; if aoe dies before the rows of its last events are written,
:func:`aoe.state.journal.recover` writes them from the journal (``aoe resume``
and the commands that read runs call it first). At the end of the run, once
everything is in the store and synced, the journal goes.

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

The journal's format and files are :mod:`aoe.state.journal`'s; this module is
the recorder on the event loop and its writer thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

from aoe.errors import AoeError, StateWriteFailed
from aoe.events import Event
from aoe.format.files import make_folders
from aoe.state.cache import CacheHit, CachePut
from aoe.state.files import Cleared, Loss, StoreFile
from aoe.state.journal import (
    Syncer,
    fsync,
    journal_line,
    read_journal,
    record_beside,
    write_all,
    write_file,
)
from aoe.state.liveness import HERE
from aoe.state.schema import (
    SCHEMA_VERSION,
    Rows,
    dumps,
    journal_path,
    open_store,
    put_rows,
    run_rows,
    transaction,
)
from aoe.state.writer import Item, RowWriter


class Mirror(Protocol):
    """A copy of the journal kept elsewhere (:class:`aoe.redis.records.RecordMirror`)."""

    def append(self, data: bytes, offset: int) -> None:
        """Send journal bytes that end at ``offset``."""

    def synced(self, offset: int) -> asyncio.Future[None] | None:
        """A future done once the copy holds ``offset`` bytes; None if it already does."""


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
        self._queue: queue.SimpleQueue[tuple[list[Item], int] | None] = queue.SimpleQueue()
        self._pending: list[Item] = []  # not yet journaled (event loop)
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
        HERE.journals.add(self.journal)
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
        self._journal_pending()
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

    def _journal_pending(self) -> None:
        """The pending items' lines in the journal, in one write; the items to
        the writer, and the lines to the mirror."""
        if self._pending and self._failure is None and self._fd is not None:
            batch, self._pending = self._pending, []
            data = "".join(
                [journal_line(item) for item in batch if isinstance(item, Event)]
            ).encode()
            try:
                write_all(self._fd, data)
            except OSError as e:  # full: stop before the next call (a torn line is
                self._failure = e  # dropped by recover, and nothing follows it)
            else:
                self._offset += len(data)
                self._queue.put((batch, self._offset))
                if self.mirror is not None and data:  # (not for cache items alone)
                    self.mirror.append(data, self._offset)

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
            HERE.journals.discard(self.journal)
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
        journal = Syncer(self.journal, self._fd)
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
                        items = [item for items, _ in given for item in items]
                        try:
                            target.write(items, handed)
                        except sqlite3.DatabaseError:
                            # a file cut short reads as malformed before a look can
                            # be sure it was cut: wait for its word (rebuilt: written)
                            if not self._until_sure(target, handed):
                                raise
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
        self._until_sure(target, handed)

    def _until_sure(self, target: _Target, handed: int) -> bool:
        """Look until the store is known sound or lost (and its record written
        anew: True); a file short of its pages is waited on for up to twice
        :attr:`StoreFile.SHORT`."""
        deadline = time.monotonic() + 2 * StoreFile.SHORT
        while True:
            if self._look(target, handed):
                return True
            if target.file.suspect is None or time.monotonic() > deadline:
                return False
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
                write_file(self.journal, self._journaled(os.fstat(self._fd).st_size))
            write_file(record, (dumps(document) + "\n").encode())
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
            self.writer = RowWriter(self.connection, run_id, session)
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

    def write(self, items: list[Item], offset: int) -> None:
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
                writer = RowWriter(connection, self.run_id, self.session)
                writer.write([event for event, _ in read_journal(journal, self.run_id)])
                writer.reached(offset)
            self.file = StoreFile.of(self.path)
        except BaseException:
            connection.close()
            raise
        self.connection, self.writer = connection, writer
        return cleared

    def finish(self) -> None:
        fsync(Path(f"{self.path}-wal"))
        self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self.connection.close()


def _follow(waiter: asyncio.Future[None], done: asyncio.Future[None]) -> None:
    if waiter.done():
        return
    if done.cancelled():
        waiter.cancel()
    elif done.exception() is not None:
        waiter.set_exception(done.exception())  # type: ignore[arg-type]
    else:
        waiter.set_result(None)


_LARGE = 64 << 20  # a log this big is copied into the database between commits


def _large(path: Path) -> bool:
    try:
        return os.path.getsize(f"{path}-wal") > _LARGE
    except OSError:
        return False
