"""The files a workflow names (``prompt_file``, ``system_file``, ``schema_file``,
an output schema's ``$ref``), read only from inside the workflow's folder.

A workflow may come from someone else: a name in it must not reach a file
outside its folder, block on a FIFO or read a device without end
(:func:`aoe.format.files.read_limited` does the reading). What is read is kept
in :attr:`Context.files`, the run record's copy.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path as FsPath
from typing import TYPE_CHECKING

from aoe.format.files import FileRefused, read_limited, size_text
from aoe.format.loader.context import Context
from aoe.format.modelerrors import did_you_mean
from aoe.format.schemas import shortened
from aoe.format.workflow import SourceText
from aoe.format.yamlsource import Path

if TYPE_CHECKING:
    from aoe.format.schemadocs import Refusal

MAX_INCLUDED_FILE_BYTES = 1024 * 1024


def source_text(
    ctx: Context, at: Path, field: str, inline: str | None, file: str | None
) -> SourceText | None:
    """A template written inline under ``field``, or read from ``<field>_file``."""
    if file is not None:
        text = read_included(ctx, (*at, f"{field}_file"), file)
        if text is None:
            return None
        return SourceText(text, ctx.display_path(file), 1, 1)
    return ctx.inline_text((*at, field), inline) if inline is not None else None


def read_included(ctx: Context, where: Path, relative: str) -> str | None:
    """A file named in the workflow, read only from inside the workflow's folder.

    Only a regular file is read (a FIFO, a device or a folder is an error at
    ``where``), and never more than :data:`MAX_INCLUDED_FILE_BYTES` of it.
    The text is kept in ``files`` (the run record's copy); None when it
    cannot be used, with the reason reported at ``where``.
    """
    if "\x00" in relative:
        ctx.error(
            where,
            "path",
            f"{relative!r} contains a NUL character; name the file "
            "relative to the workflow file's folder",
        )
        return None
    if os.path.isabs(relative) or relative.startswith("~"):
        ctx.error(
            where,
            "path",
            f"'{relative}' is an absolute path; name the file "
            "relative to the workflow file's folder",
        )
        return None
    try:
        target = (ctx.folder / relative).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop, a name too long
        ctx.error(where, "io", f"cannot read '{relative}': {getattr(e, 'strerror', e) or e}")
        return None
    if not target.is_relative_to(ctx.folder):
        ctx.error(
            where,
            "path",
            f"'{relative}' is outside the workflow file's folder; "
            "keep prompt and schema files next to the workflow (or below it)",
        )
        return None
    try:
        raw = read_limited(target, MAX_INCLUDED_FILE_BYTES)
    except FileRefused as e:
        _refused(ctx, where, relative, target, e)
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        ctx.error(where, "encoding", f"'{relative}' is not UTF-8 text; save it as UTF-8")
        return None
    ctx.files[relative] = text
    return text


def _refused(ctx: Context, where: Path, relative: str, target: FsPath, e: FileRefused) -> None:
    """Report why :func:`read_limited` would not read a file."""
    if e.kind == "not-found":
        hint = ""
        with suppress(OSError):  # a folder that cannot be listed gives no hint
            hint = did_you_mean(target.name, os.listdir(target.parent))
        ctx.error(
            where,
            "file-not-found",
            f"file '{relative}' not found (looked in "
            f"{ctx.display_path(os.path.dirname(relative)) or '.'}){hint}",
        )
    elif e.kind == "too-large":
        ctx.error(
            where,
            "too-large",
            f"'{relative}' is larger than {size_text(MAX_INCLUDED_FILE_BYTES)}",
        )
    elif e.kind == "not-a-file":
        ctx.error(where, "not-a-file", f"'{relative}' {e.message}; name a file")
    else:
        ctx.error(where, "io", f"'{relative}': {e.message}")


def read_referenced(ctx: Context, relative: str) -> str | Refusal:
    """A file an output schema's ``$ref`` names, read as ``prompt_file`` is; a
    refusal is reported by the bundler at the ``$ref``, not here."""
    from aoe.format.schemadocs import Refusal

    before = len(ctx.diagnostics)
    text = read_included(ctx, (), relative)
    refused = ctx.diagnostics[before:]
    del ctx.diagnostics[before:]
    if text is None:
        first = refused[0] if refused else None
        if first is None:
            return Refusal("io", "it cannot be read")
        return Refusal(first.code, shortened(first.message, 300))
    return text
