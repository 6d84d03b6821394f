"""Is the run store a connection opened still the file at its path?

SQLite keeps using the file it opened whatever happens to its name: deleted,
a connection goes on writing to a file nobody will ever open again; replaced,
it writes beside the new one; truncated, it reads pages of zeros, and its next
checkpoint leaves a damaged store behind. Deleting the ``-wal`` and ``-shm``
files alone splits the store in two: the processes that opened it before go
on with the old log, those after it start a new one, and both copy theirs
into the same database file.

:class:`StoreFile` is what a connection opened — the database file and its
two companions, by device and inode — and says, with a few ``stat`` calls,
when the path no longer holds them (:meth:`StoreFile.lost`). It then makes
the path safe to open again (:meth:`StoreFile.clear`): a database file that
is still the one opened but damaged, or that lost its log, is moved aside
with its companions (never deleted; one that only lost its log is replaced
by a whole copy read through the connection, which still sees it all); the
log of a database that is gone is removed, so that a new store at the path
does not take it for its own. The
recorder (:mod:`aoe.state.recorder`) writes its run's record again after that; a
long-lived :class:`~aoe.state.store.Store` (``aoe serve``'s) opens the path
again.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from aoe.format.files import make_folders

_MAGIC = b"SQLite format 3\x00"
_HEADER = 100  # bytes of the database header


class Loss(enum.Enum):
    """What happened to a store's file while it was open."""

    DELETED = "deleted"
    REPLACED = "replaced by another file"
    DAMAGED = "truncated or overwritten"
    LOG = "left without its -wal or -shm file"


_Key = tuple[int, int]  # st_dev, st_ino


class Cleared(NamedTuple):
    """What :meth:`StoreFile.clear` did: where the file opened was moved (None:
    it was gone already), and whether a whole copy of it took its place."""

    aside: Path | None
    copied: bool


def _key(path: str) -> _Key | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _held(keys: tuple[_Key | None, ...]) -> bool | None:
    """Whether this process holds a file with one of ``keys`` open (its own
    connections' log, which a new ``-wal`` at the path would split in two); None
    where that cannot be told (no ``/proc``: not Linux).

    A ``-wal`` or ``-shm`` that is not the one looked at before is the store's
    loss only if a connection of this process still holds the old one: SQLite
    deletes them with the last connection that closes, and a connection that
    had none open (the store was new, another process made them) sees them made
    anew by the next, with all it had checkpointed into the database."""
    wanted = {key for key in keys if key is not None}
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for descriptor in descriptors:
        try:
            stat = os.stat(f"/proc/self/fd/{descriptor}")
        except OSError:  # closed meanwhile, or not a file
            continue
        if (stat.st_dev, stat.st_ino) in wanted:
            return True
    return False


# The database files this process reads headers from, by key, each opened once
# and never closed: closing any descriptor of a file drops every POSIX lock the
# process holds on it, SQLite's included (its shared lock on the database: then
# another process's last connection, closing, takes itself for the last one
# and deletes the -wal and -shm this process's connections still use). A store
# per process, and one more for each loss seen, so a handful at most.
_READERS: dict[_Key, int] = {}


def _header(path: Path, key: _Key) -> tuple[bytes, int] | None:
    """The first bytes of the database file ``key`` and its size; None if it
    cannot be read now (gone since its ``stat``: the next look says so; or no
    longer readable by this process, which still reads it through its
    connection). Read through a descriptor kept open: see ``_READERS``."""
    descriptor = _READERS.get(key)
    try:
        if descriptor is None:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            stat = os.fstat(descriptor)
            opened = (stat.st_dev, stat.st_ino)
            _READERS[opened] = descriptor  # kept, whichever file it is (never closed)
            if opened != key:  # another file took the path between stat and open
                return None
        return os.pread(descriptor, _HEADER, 0), os.fstat(descriptor).st_size
    except OSError:
        return None


def _whole(header: bytes, size: int) -> bool:
    """Does the file hold every page its header says the database has? (A file
    cut short keeps its header; the page count in it tells.)"""
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # the count holds only if written with the change counter there now
    return not pages or header[24:28] != header[92:96] or size >= pages * page_size


# what this process found and did about each store file it saw lost, by the
# file's key: the next connection of the process to notice (the recorder of
# another run, aoe serve's own) tells the same story, not "replaced"
_CLEARED: dict[_Key, tuple[Loss, Cleared]] = {}


@dataclass
class StoreFile:
    """The files a connection to the store at ``path`` opened."""

    path: Path
    db: _Key
    wal: _Key | None
    shm: _Key | None
    seen: tuple[int, int]  # the database file's size and mtime when last looked at
    suspect: float | None = None  # since when its size has been short of its header's

    # a database file whose size is short of what its header says may be in the
    # middle of a checkpoint (its first page is written first): short for this
    # long, unchanged, it was cut
    SHORT = 1.0

    @classmethod
    def of(cls, path: Path) -> StoreFile:
        """The files at ``path`` now; call once a connection has read the store
        (in WAL mode it then holds the log open until it closes)."""
        stat = os.stat(path)
        return cls(
            path,
            (stat.st_dev, stat.st_ino),
            _key(f"{path}-wal"),
            _key(f"{path}-shm"),
            (stat.st_size, stat.st_mtime_ns),
        )

    def lost(self) -> Loss | None:
        """None while the path holds the files opened, sound; else what happened.
        Three ``stat`` calls; the header is read only when the file changed."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return _CLEARED.get(self.db, (Loss.DELETED,))[0]
        except OSError:  # the folder cannot be read now: nothing to tell
            return None
        if (stat.st_dev, stat.st_ino) != self.db:
            return _CLEARED.get(self.db, (Loss.REPLACED,))[0]
        wal, shm = _key(f"{self.path}-wal"), _key(f"{self.path}-shm")
        if (self.wal is not None and wal != self.wal) or (self.shm is not None and shm != self.shm):
            if _held((self.wal, self.shm)) is not False:
                return Loss.LOG
            # SQLite itself made them anew: this process holds none of the old ones
            # (they were another's, gone with its last connection), so nothing is split
            self.wal, self.shm = wal, shm
        return self._damaged((stat.st_size, stat.st_mtime_ns))

    def _damaged(self, seen: tuple[int, int]) -> Loss | None:
        """The file at the path is the one opened: is it whole? Its header, read
        when its size or time changed; a file short of its pages is waited on
        for :attr:`SHORT` seconds (a checkpoint may be under way)."""
        if seen == self.seen and self.suspect is None:
            return None
        changed, self.seen = seen != self.seen, seen
        read = _header(self.path, self.db)
        if read is None:
            return None
        header, size = read
        if len(header) < _HEADER or not header.startswith(_MAGIC):
            return Loss.DAMAGED
        if _whole(header, size):
            self.suspect = None
            return None
        now = time.monotonic()
        if changed or self.suspect is None:
            self.suspect = now
        return Loss.DAMAGED if now - self.suspect >= self.SHORT else None

    def clear(self, loss: Loss, connection: sqlite3.Connection | None = None) -> Cleared:
        """Make the path safe to open a store at again, after ``loss``. A file
        still the one opened (damaged, or without its log) is moved aside with
        its companions; with ``connection``, still open on it and able to read
        it whole (its log lost, not its pages), a copy of it is put in its
        place. Done under a lock on the folder: of several processes that
        noticed, the first acts, and the others find a new file there."""
        path = self.path
        make_folders(path.parent)  # (a folder deleted whole)
        with _locked(path.parent):
            if self.db in _CLEARED:
                return _CLEARED[self.db][1]
            cleared = self._clear(loss, connection)
            _CLEARED[self.db] = (loss, cleared)
            return cleared

    def _clear(self, loss: Loss, connection: sqlite3.Connection | None) -> Cleared:
        path = self.path
        if _key(str(path)) != self.db:  # deleted or replaced: its log must go too
            for suffix, known in (("-wal", self.wal), ("-shm", self.shm)):
                if known is not None and _key(f"{path}{suffix}") == known:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{path}{suffix}")
            return Cleared(None, False)
        copy = None
        if loss is Loss.LOG and connection is not None:
            copy = _copy(connection, path)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = path.with_name(f"{path.name}.{stamp}-{os.getpid()}.{loss.name.lower()}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.rename(f"{path}{suffix}", f"{aside}{suffix}")
        if copy is not None:
            os.rename(copy, path)
        return Cleared(aside, copy is not None)


def _copy(connection: sqlite3.Connection, path: Path) -> Path | None:
    """A whole copy of the store as ``connection`` reads it, in one file beside
    ``path``; None if it cannot be made (the copy is removed)."""
    copy = path.with_name(f".{path.name}.copy-{os.getpid()}")
    try:
        target = sqlite3.connect(copy)
        try:
            connection.backup(target)
            target.execute("PRAGMA journal_mode = DELETE")  # one file, nothing beside it
        finally:
            target.close()
    except (sqlite3.Error, OSError):
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(f"{copy}{suffix}")
        return None
    return copy


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    import fcntl  # (POSIX; only here, when a store was lost)

    fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
