"""Run records in Redis, so every worker and every ``aoe serve`` sees them.

A run from the work queue may be taken over by a worker on another host, and
asked about through any ``aoe serve`` replica. So, besides its local store, its
record goes to Redis, under keys hash-tagged per run (one cluster slot each):

- ``<prefix>:{run:ID}:head`` — a hash: the run's whole record as it stood when
  its latest session began (``export``, as ``aoe runs export`` writes it), that
  session's number, and a summary (status, workflow, cost, times) kept current;
- ``<prefix>:{run:ID}:journal`` — a stream: that session's journal (see
  :mod:`aoe.state.recorder`), each write of it one entry, with the offset it ends at;
- ``<prefix>:runs`` — a sorted set of the run ids by when they were queued.

:class:`RecordMirror` sends the journal as the recorder writes it, in order. The
recorder's barrier waits for Redis too: before any call, everything it depends
on is in Redis as well as on the local disk, so a worker on another host that
takes the run over (:func:`restore`, then a resume) never calls a completed
agent again. If Redis cannot be reached, ``redis.on_unavailable`` decides:
``fail_closed`` (the default) holds the run's calls until it answers again and
says so; ``local`` goes on with the local record alone, with a warning (a
takeover elsewhere would then redo what Redis missed).

The keys expire ``RECORD_TTL`` after the run's last write. Reading the records
back (a takeover's restore, ``aoe serve``'s answers) is :mod:`aoe.redis.copies`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aoe.errors import RedisUnreachable, Signal, StateWriteFailed
from aoe.events import RunStatus
from aoe.redis.client import text

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from aoe.state.rows import RunRow
    from aoe.state.store import Store

log = logging.getLogger("aoe.records")

RECORD_TTL = 7 * 24 * 3600
RETRY = 1.0  # seconds between tries while Redis is unreachable


def record_keys(prefix: str, run_id: str) -> tuple[str, str]:
    """The run's head and journal, hash-tagged into one cluster slot."""
    tag = f"{prefix}:{{run:{run_id}}}"
    return f"{tag}:head", f"{tag}:journal"


def cancel_key(prefix: str, run_id: str) -> str:
    """Set (by ``aoe serve``'s cancel) to stop a queued or running run."""
    return f"{prefix}:{{run:{run_id}}}:cancel"


async def cancel(client: Redis, prefix: str, run_id: str) -> str | None:
    """Cancel a run of the queue in one step (a run that ends meanwhile is never
    marked cancelled): see ``CANCEL``."""
    head, _ = record_keys(prefix, run_id)
    key = cancel_key(prefix, run_id)
    answer: Any = await client.eval(CANCEL, 2, head, key, RECORD_TTL, time.time())
    return None if answer is None else text(answer)


def index_key(prefix: str) -> str:
    return f"{prefix}:runs"


def summary_of(run: Mapping[str, Any]) -> dict[str, str]:
    """The head's summary fields of a run record (:meth:`Store.run`); "" for
    what it lacks."""
    fields = {
        "status": run.get("status"),
        "workflow_name": run.get("workflow_name"),
        "created_at": run.get("created_at"),
        "updated_at": run.get("updated_at") or time.time(),
        "finished_at": run.get("finished_at"),
        "cost": run.get("cost"),
        "input_tokens": run.get("input_tokens"),
        "output_tokens": run.get("output_tokens"),
        "host": run.get("host"),
        "workflow_path": run.get("workflow_path"),
        "workflow_sha256": run.get("workflow_sha256"),
        "duration": run.get("duration"),
        "budget": run.get("budget"),
        "sessions": run.get("sessions"),
    }
    return {key: "" if value is None else str(value) for key, value in fields.items()}


# Each session of a run that begins takes the next epoch of its head; a writer
# whose epoch is no longer the head's (its run was taken over meanwhile) is
# refused, so one session's record is never written by two processes.
FINAL = frozenset(str(status) for status in RunStatus)  # a run's statuses once it is over
_OVER = " or ".join(f"status == '{status}'" for status in sorted(FINAL))  # (in Lua)

BEGIN = """
local epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
if epoch ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[2])
local new = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return new
"""
# marks a head that no session of this process owns (a run cancelled in the
# queue, a dead letter), unless the run is over already
MARK = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if {_OVER} then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
# cancel a run, unless it is over: its final status; "cancelled-now" (it was
# queued: no worker has it); "cancelling" (its worker stops it); nil (no run)
CANCEL = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return nil end
if {_OVER} then return status end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2])
  return 'cancelled-now'
end
return 'cancelling'
"""
APPEND = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return -1 end
if epoch ~= ARGV[1] then return 0 end
for i = 4, #ARGV, 2 do
  redis.call('XADD', KEYS[2], '*', 's', ARGV[3], 'o', ARGV[i], 'd', ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""
SUMMARIZE = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


class Superseded(Signal):
    """Another process began a later session of the run (it took the run over):
    the mirror stops writing, and says so in the log."""


class RecordMirror:
    """Sends one session of one run's record to Redis; see the module docstring.

    :meth:`begin` (after the session's record exists in the store) writes the
    head; then the recorder calls :meth:`append` with each journal write and
    :meth:`synced` for a future that is done once Redis has everything up to an
    offset; :meth:`close` sends the rest and :meth:`finish` writes the final
    summary."""

    def __init__(
        self,
        client: Redis,
        run_id: str,
        *,
        prefix: str = "aoe",
        on_unavailable: str = "fail_closed",
        ttl: int = RECORD_TTL,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.prefix = prefix
        self.on_unavailable = on_unavailable
        self.ttl = ttl
        self.head, self.journal = record_keys(prefix, run_id)
        self.session = 0
        self.epoch: int | None = None  # this session's, once begun
        self.sent = 0  # offset in the session's journal that Redis holds up to
        self.broken = False  # on_unavailable: local, and Redis went away
        self._chunks: list[tuple[bytes, int]] = []  # (data, offset it ends at)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._outage = False
        self._store_path: Path | None = None
        self._journal_file: Path | None = None
        self._rewriting = False  # writing the record again (Redis lost it)
        self.expected: int | None = None  # the head's epoch when this process looked
        self._begin = client.register_script(BEGIN)
        self._append = client.register_script(APPEND)
        self._summarize = client.register_script(SUMMARIZE)

    # -- the session's start and end -------------------------------------------------
    async def begin(self, store: Store, session: int, journal: Path | None = None) -> None:
        """The head: the record as the session starts, under a new epoch; the old
        session's journal goes. ``journal``: the session's journal file, from
        which the record is written again should Redis lose it."""
        self.session = session
        self._store_path = store.path
        self._journal_file = journal
        try:
            began = await self._retrying(self._write_head)
        except Superseded as e:  # another process began a session since it looked
            self._failure = e
            raise self._failed() from None
        if began:
            self._sender = asyncio.get_running_loop().create_task(
                self._send(), name=f"aoe-mirror-{self.run_id}"
            )

    async def _write_head(self) -> int:
        """The head as the store has the run now, under a new epoch, with an empty
        journal; the journal offset the store's record reaches."""
        assert self._store_path is not None
        document = await asyncio.to_thread(_export, self._store_path, self.run_id)
        run = document["runs"][0]
        reached = int(run.get("journal_offset") or 0)
        if run.get("journal_session") != self.session:
            reached = 0
        fields = {
            **summary_of(run),
            "status": "running",  # this process's own run, whatever a pid says
            "session": str(self.session),
            "export": json.dumps(document, ensure_ascii=False, default=str),
        }
        # the epoch this process saw (at restore; its own, when writing again):
        # if another began a session since, this one has no business here
        expected = "" if self.expected is None else str(self.expected)
        values = [value for pair in fields.items() for value in pair]
        epoch = await self._begin(
            keys=[self.head, self.journal], args=[expected, self.ttl, *values]
        )
        if int(epoch) < 0:
            raise Superseded
        self.epoch = self.expected = int(epoch)
        await self.client.zadd(index_key(self.prefix), {self.run_id: float(run["created_at"])})
        return reached

    async def _write_again(self) -> None:
        """Redis lost the record (it restarted without its data, say): the head
        again, from the store, then the journal beyond it, from the file."""
        log.warning(
            "Redis lost the record of run %s (did it restart without its data?): "
            "writing it there again", self.run_id, extra={"run_id": self.run_id},
        )  # fmt: skip
        self._rewriting = True
        self.expected = None  # the head is gone: a new one, epochs from 1
        reached = await self._write_head()
        data = b""
        if self._journal_file is not None:
            data = await asyncio.to_thread(_read_from, self._journal_file, reached)
        end = reached + len(data)
        if data:
            args: list[Any] = [self.epoch, self.ttl, self.session, end, data]
            await self._append(keys=[self.head, self.journal], args=args)
        self._chunks = [chunk for chunk in self._chunks if chunk[1] > end]
        self.sent = max(self.sent, end)
        self._rewriting = False

    async def close(self, timeout: float | None = None) -> None:
        """Send what was appended (waiting at most ``timeout`` seconds, if given,
        for an unreachable Redis), then stop."""
        if self._sender is None:
            return
        self._wake.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._until_sent(), timeout)
        finally:
            self._sender.cancel()
            await asyncio.wait([self._sender])  # (a cancel of the caller still propagates)
            self._sender = None
            self._release(self._failed() if self._failure else None, everyone=True)
        if isinstance(self._failure, Superseded):  # its end is the new owner's to record
            raise self._failed()

    async def finish(self, run: RunRow) -> None:
        """The head's summary, once the run's record is final (``Store.run``);
        tried even after Redis went away under ``local``."""
        self.broken = False
        fields = [value for pair in summary_of(run.to_dict()).items() for value in pair]
        epoch = "" if self.epoch is None else str(self.epoch)

        async def write() -> None:
            args: list[str | int] = [epoch, self.ttl, *fields]
            if not await self._summarize(keys=[self.head, self.journal], args=args) and epoch:
                raise Superseded

        try:
            await self._retrying(write)
        except Superseded as e:
            self._failure = e
            raise self._failed() from None

    # -- the journal, from the recorder (on the event loop) --------------------------
    def append(self, data: bytes, offset: int) -> None:
        if self.broken or self._sender is None:
            return
        self._chunks.append((data, offset))
        self._wake.set()

    def synced(self, offset: int) -> asyncio.Future[None] | None:
        """None if Redis holds the journal up to ``offset``; else a future done
        once it does (or failing if it never will)."""
        if self._failure is not None:
            raise self._failed()
        if self.broken or self._sender is None or self.sent >= offset:
            return None
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((offset, waiter))
        return waiter

    async def _until_sent(self) -> None:
        while self._chunks and self._failure is None and not self.broken:
            self._wake.set()
            await asyncio.sleep(0.005)  # (at the end of a run only)

    async def _send(self) -> None:
        """The journal's writes, in order; all that waits, in one script call."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._chunks:
                continue
            try:
                sent = await self._retrying(self._send_waiting)
            except Exception as e:  # taken over, or refused (out of memory): no more calls
                self._failure = e
                self._release(self._failed(), everyone=True)
                return
            if not sent:  # local: Redis is given up for this run
                self._chunks.clear()
            self._release(None)
            if self._chunks:
                self._wake.set()

    async def _send_waiting(self) -> None:
        """One try at sending the writes waiting now (under the current epoch:
        a retry after :meth:`_write_again` uses the new one)."""
        if self._rewriting:  # a rewrite that Redis cut short: all of it again
            await self._write_again()
            return
        chunks = list(self._chunks)
        if not chunks:
            return
        args: list[Any] = [self.epoch, self.ttl, self.session]
        for data, offset in chunks:
            args += [offset, data]
        written = await self._append(keys=[self.head, self.journal], args=args)
        if written == -1:  # the record is gone: written again, these included
            await self._write_again()
        elif written == 0:
            raise Superseded
        else:  # (append only adds at the end meanwhile)
            del self._chunks[: len(chunks)]
            self.sent = max(self.sent, chunks[-1][1])

    def _release(self, failure: BaseException | None, *, everyone: bool = False) -> None:
        keep = []
        for offset, waiter in self._waiters:
            if waiter.done():
                continue
            if failure is not None:
                waiter.set_exception(failure)
            elif everyone or self.broken or offset <= self.sent:
                waiter.set_result(None)
            else:
                keep.append((offset, waiter))
        self._waiters = keep

    async def _retrying(self, write: Callable[[], Awaitable[object]]) -> bool:
        """Run ``write``; while Redis is unreachable, retry (fail_closed) or give
        up on Redis for this run (local). True if it was written."""
        while not self.broken:
            try:
                await write()
            except RedisUnreachable as e:
                if self.on_unavailable == "local":
                    log.warning(
                        "Redis is unreachable (%s): run %s is recorded on this host only; a "
                        "worker elsewhere that takes it over would redo its agents",
                        e, self.run_id, extra={"run_id": self.run_id},
                    )  # fmt: skip
                    self.broken = True
                    return False
                if not self._outage:
                    log.error(
                        "Redis is unreachable (%s): run %s waits to record its progress there "
                        "before its next call",
                        e, self.run_id, extra={"run_id": self.run_id},
                    )  # fmt: skip
                    self._outage = True
                await asyncio.sleep(RETRY)
                continue
            if self._outage:
                log.warning("Redis answers again: run %s goes on", self.run_id)
                self._outage = False
            return True
        return False

    def _failed(self) -> StateWriteFailed:
        if isinstance(self._failure, Superseded):
            return StateWriteFailed(
                f"run {self.run_id} was taken over by another worker; it stopped here "
                "before its next call"
            )
        return StateWriteFailed(
            f"the record of run {self.run_id} could not be written to Redis "
            f"({self._failure}); the run stopped before its next call. Once Redis "
            f"takes writes again, `aoe resume {self.run_id}`"
        )


async def mark(client: Redis, prefix: str, run_id: str, fields: Mapping[str, Any]) -> None:
    """Set summary fields of a run's head, if Redis has one and the run is not
    over (a run that ended without a session of its own: cancelled in the
    queue, dead-lettered)."""
    head, _ = record_keys(prefix, run_id)
    values = [str(value) for pair in fields.items() for value in pair]
    await client.eval(MARK, 1, head, RECORD_TTL, *values)


def _export(path: Path, run_id: str) -> dict[str, Any]:
    """The run's export, read in one transaction (its rows and the journal
    offset they reach agree) through a connection of this thread."""
    from aoe.state.store import Store
    from aoe.state.transfer import export_run

    with Store(path) as store:
        store.connection.execute("BEGIN")
        try:
            return export_run(store, run_id)
        finally:
            store.connection.execute("COMMIT")


def _read_from(file: Path, offset: int) -> bytes:
    try:
        with open(file, "rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:  # the run's end removed it: the store has it all
        return b""
