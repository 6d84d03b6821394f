"""Run records read back from Redis (:mod:`aoe.redis.records` writes them).

A worker that takes a run over first brings its own store up to what Redis
holds (:func:`restore`); an ``aoe serve`` replica answers for a run of the
queue from its head's summary, and keeps a copy of each record it was asked
about in its ``shared.db``, brought up to date from the journal's newer
entries (:class:`SharedRecord`) and pruned as the records expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aoe.errors import Signal
from aoe.redis.client import text
from aoe.redis.records import index_key, record_keys

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from aoe.state.rows import RunRow
    from aoe.state.store import Store

_CHUNK = 1000  # journal entries read per XRANGE
SCAN = 10_000  # runs a filtered list looks through at most


async def head_of(
    client: Redis, prefix: str, run_id: str, *, export: bool = True
) -> dict[str, str] | None:
    """The run's head (summary, session, epoch and, unless not ``export``, the
    run's export, its largest part); None if Redis has no record."""
    head_key, _ = record_keys(prefix, run_id)
    if export:
        head = {text(k): text(v) for k, v in (await client.hgetall(head_key)).items()}
    else:
        values = await client.hmget(head_key, _HEAD)
        head = {k: text(v) for k, v in zip(_HEAD, values, strict=True) if v is not None}
    return head or None


async def fetch(
    client: Redis,
    prefix: str,
    run_id: str,
    head: dict[str, str] | None = None,
    *,
    after: str | None = None,
) -> SharedRecord | None:
    """What Redis holds of ``run_id`` (its ``head``, if read already); None if
    nothing, or if no worker has started it yet. With ``after`` (the ``last`` of
    an earlier fetch of the same session), only the journal's entries since."""
    if head is None or (after is None and "export" not in head):
        head = await head_of(client, prefix, run_id)
    if head is None or not head.get("session"):  # set with the export as a session begins
        return None
    _, journal_key = record_keys(prefix, run_id)
    session = int(head["session"])
    chunks: list[tuple[bytes, int]] = []
    start, last = ("-", "0-0") if after is None else ("(" + after, after)
    while True:
        entries: Any = await client.xrange(journal_key, min=start, max="+", count=_CHUNK)
        for entry_id, fields in entries:
            # a session's begin empties the journal and fences off earlier
            # writers: another session's entry is of one that began since the
            # head was read. Not read past, so a reader going on from ``last``
            # (an SSE stream) gets that session from its start
            if int(fields[b"s"]) != session:
                return SharedRecord(run_id, session, head, chunks, last, whole=after is None)
            chunks.append((bytes(fields[b"d"]), int(fields[b"o"])))
            last = text(entry_id)
        if len(entries) < _CHUNK:
            break
        start = "(" + last
    return SharedRecord(run_id, session, head, chunks, last, whole=after is None)


class Partial(Signal):
    """The journal read begins past where the store's copy of the run is
    (``offset``): the reader reads the run whole instead."""

    def __init__(self, run_id: str, offset: int) -> None:
        super().__init__(run_id, offset)
        self.offset = offset


class SharedRecord:
    """A run's record as Redis holds it: the head and its session's journal
    (``whole``), or the journal's entries after an earlier read."""

    def __init__(
        self,
        run_id: str,
        session: int,
        head: dict[str, str],
        chunks: list[tuple[bytes, int]],
        last: str = "0-0",
        *,
        whole: bool = True,
    ) -> None:
        self.run_id = run_id
        self.session = session
        self.head = head
        self.chunks = chunks
        self.last = last  # the id of the journal's last entry read
        self.whole = whole

    def journal_from(self, offset: int) -> bytes:
        """The session's journal from ``offset`` on, as far as Redis has it
        without a gap. :class:`Partial` if the chunks read start after ``offset``
        (and so do not hold all of it)."""
        data = bytearray()
        reached = offset
        for chunk, end in sorted(self.chunks, key=lambda c: c[1]):
            start = end - len(chunk)
            if end <= reached:
                continue
            if start > reached:  # a gap: nothing after it can be applied
                if reached == offset:  # what was read begins past the store's copy
                    raise Partial(self.run_id, offset)
                break
            data += chunk[reached - start :]
            reached = end
        return bytes(data)

    def restore(self, store: Store) -> bool:
        """Bring ``store``'s record of the run up to this one; True if it changed.
        A local record of a later session is newer and left alone. A record not
        ``whole`` that does not continue the store's raises :class:`Partial`."""
        from aoe.errors import RunNotFound
        from aoe.state.journal import apply_journal
        from aoe.state.transfer import import_run

        try:
            local: RunRow | None = store.run(self.run_id)
        except RunNotFound:
            local = None
        if local is not None and local.sessions > self.session:
            return False
        export = None
        if local is not None and local.sessions == self.session:
            try:
                return bool(apply_journal(store, self.run_id, self.session, self.journal_from))
            except Partial as e:
                # the journal read begins past this copy: read on from an
                # earlier read (not whole), or written again from its worker's
                # store (Redis had lost it), whose export then reaches further
                if not self.whole:
                    raise
                export = json.loads(self.head["export"])
                run = export["runs"][0]
                if run.get("journal_session") != self.session or (
                    int(run.get("journal_offset") or 0) <= e.offset
                ):
                    return False  # a part Redis lost: nothing after it applies
        elif not self.whole:
            raise Partial(self.run_id, 0)
        import_run(store, export or json.loads(self.head["export"]), replace=True)
        with contextlib.suppress(Partial):  # Redis lost the journal's start: the export is all
            apply_journal(store, self.run_id, self.session, self.journal_from)
        return True


async def restore(client: Redis, prefix: str, store: Store, run_id: str) -> int | None:
    """Bring the local record of ``run_id`` up to what Redis holds (another
    worker's progress); the head's epoch then (None: no session began yet),
    which the next session's :meth:`RecordMirror.begin` must still find."""
    head = await head_of(client, prefix, run_id)
    record = await fetch(client, prefix, run_id, head)
    if record is not None:
        await asyncio.to_thread(restore_into, record, store.path)
    epoch = (head or {}).get("epoch")
    return int(epoch) if epoch else None


def restore_into(record: SharedRecord, path: Path) -> None:
    """``record`` into the store at ``path``, through a connection of this thread."""
    from aoe.state.store import Store

    with Store(path) as store:
        record.restore(store)


def prune_copies(path: Path, older_than: float) -> list[str]:
    """Drop from the store of copies at ``path`` the runs that began (or last
    resumed or ended) ``older_than`` seconds ago; their ids. Through a
    connection of this thread."""
    from aoe.state.store import Store

    with Store(path) as store:
        return store.prune(older_than, copies=True)


_SUMMARY = (
    "status",
    "workflow_name",
    "created_at",
    "updated_at",
    "finished_at",
    "cost",
    "input_tokens",
    "output_tokens",
    "host",
    "error",
    "workflow_path",
    "workflow_sha256",
    "duration",
    "budget",
    "sessions",
)
_HEAD = (*_SUMMARY, "session", "epoch")  # a head without its export
_NUMBERS = {
    "created_at": float,
    "updated_at": float,
    "finished_at": float,
    "cost": float,
    "duration": float,
    "budget": float,
}
_COUNTS = {"input_tokens", "output_tokens", "sessions"}


def summary_from(run_id: str, values: Mapping[str, str | None]) -> dict[str, Any]:
    """A head's summary as JSON values (numbers as numbers, "" as None)."""
    summary: dict[str, Any] = {"run_id": run_id}
    for key in _SUMMARY:
        value = values.get(key) or None
        if value is not None and key in _NUMBERS:
            value = float(value)  # type: ignore[assignment]
        elif value is not None and key in _COUNTS:
            value = int(value)  # type: ignore[assignment]
        summary[key] = value
    return summary


async def list_runs(
    client: Redis,
    prefix: str,
    *,
    status: str | None = None,
    workflow: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The newest runs Redis has records of (their summaries), newest first."""
    found: list[dict[str, Any]] = []
    start, page = 0, max(limit, 100)
    while len(found) < limit and start < SCAN:
        newest: Any = await client.zrevrange(index_key(prefix), start, start + page - 1)
        ids = [text(i) for i in newest]
        if not ids:
            break
        async with client.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hmget(record_keys(prefix, run_id)[0], list(_SUMMARY))
            rows: list[Any] = await pipe.execute()
        gone = []
        for run_id, row in zip(ids, rows, strict=True):
            values = dict(zip(_SUMMARY, [None if v is None else text(v) for v in row], strict=True))
            if values["status"] is None:  # its record expired
                gone.append(run_id)
                continue
            summary = summary_from(run_id, values)
            if (status is None or summary["status"] == status) and (
                workflow is None or summary["workflow_name"] == workflow
            ):
                found.append(summary)
        if gone:
            await client.zrem(index_key(prefix), *gone)
        start += page
    return found[:limit]
