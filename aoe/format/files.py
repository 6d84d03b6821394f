"""Reading a file that a user named, without hanging and within a size limit.

Every file aoe reads because someone named it goes through :func:`read_limited`:
a workflow and its prompt, system and schema files, the engine config
(``--config``, ``AOE_CONFIG``), an inputs file, ``.env``, a run export.

A plain ``open`` is not enough for a name that comes from outside: opening a
FIFO waits for a writer that may never come, a device gives bytes without end,
and a 3 GB file would be read whole before any size check. So the name is
checked with ``stat`` first (a regular file, not over the limit), opened
without waiting (``O_NONBLOCK``: a FIFO swapped in meanwhile cannot block),
checked again on the open descriptor, and read at most ``limit + 1`` bytes
(``/proc`` files say they are empty, and a file may grow while it is read).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

from aoe.errors import UserError

if TYPE_CHECKING:
    from pathlib import Path

_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


class FileRefused(UserError):
    """A named file that cannot be read; ``kind`` says why, ``message`` says it in words.

    Kinds: ``path`` (the name itself is unusable), ``not-found``, ``not-a-file``
    (a directory, a FIFO, a device, a socket), ``too-large`` and ``io``. Callers
    turn it into their own diagnostics, usually with ``message`` as it is.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def read_limited(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Raises :class:`FileRefused` for a name with a NUL character, a missing
    file, anything but a regular file, a file over ``limit`` bytes, and any
    other error of the operating system. It never blocks on a FIFO and never
    reads more than ``limit + 1`` bytes.
    """
    try:
        before = os.stat(path)
        _check(before, limit)
        fd = os.open(path, _OPEN_FLAGS)
    except ValueError:  # "embedded null byte"
        raise FileRefused(
            "path", "the file name contains a NUL character; give the name of a file"
        ) from None
    except OSError as e:
        raise _refused(e) from None
    try:
        opened = os.fstat(fd)
        _check(opened, limit)  # the name may have been pointed elsewhere meanwhile
        with open(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise _refused(e) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise _too_large(limit)
    return data


def _check(status: os.stat_result, limit: int) -> None:
    mode = status.st_mode
    if not stat.S_ISREG(mode):
        raise FileRefused("not-a-file", f"{_kind_of(mode)}, not a regular file")
    if status.st_size > limit:
        raise _too_large(limit)


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "is a directory"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "is a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device"
    return "is not a file"


def _too_large(limit: int) -> FileRefused:
    return FileRefused("too-large", f"the file is larger than {size_text(limit)}")


def size_text(limit: int) -> str:
    """``16 MiB``, ``1 MiB``, ``512 KiB``: a limit as people write it."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if limit >= size and limit % size == 0:
            return f"{limit // size} {unit}"
    return f"{limit:,} bytes"


def _refused(error: OSError) -> FileRefused:
    if error.errno == errno.ENOENT:
        return FileRefused("not-found", "file not found; check the path")
    if error.errno == errno.EISDIR:
        return FileRefused("not-a-file", "is a directory, not a regular file")
    if error.errno == errno.ENOTDIR:
        return FileRefused("not-found", "file not found (a part of the path is not a folder)")
    return FileRefused("io", f"cannot read the file: {error.strerror or error}")


def make_folders(path: Path) -> None:
    """``path`` and the folders above it that are missing, as ``mkdir -p`` makes
    them, but without recursion: pathlib's ``mkdir(parents=True)`` recurses once
    per missing folder, and a state folder 2,000 levels deep ran out of stack."""
    missing = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise
