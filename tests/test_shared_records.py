"""Run records in Redis (aoe/shared_records.py) on a real redis-server: a later
session fences off the earlier writer, the journal is joined without gaps,
and an unreachable Redis is met by the configured policy."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aoe.errors import StateWriteFailed
from aoe.redis.client import connect
from aoe.redis.copies import Partial, SharedRecord, fetch, head_of
from aoe.redis.records import RecordMirror
from aoe.state.rows import RecordStatus, RunRow
from aoe.state.store import Store
from aoe.state.transfer import export_run
from tests.conftest import until
from tests.events import attempt_started
from tests.redisserver import RedisServer


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "state.db") as store:
        store.create_run(
            "run-1",
            workflow_name="w",
            workflow_path="/w.yaml",
            workflow_sha256="0" * 64,
            workflow_text="version: 1\n",
            workflow_files={},
            inputs={},
            settings={},
            budget=None,
            agents={"a": "d"},
        )
        yield store


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own (the Redis may be shared)."""
    return f"test-{uuid.uuid4().hex[:8]}"


async def test_a_later_session_fences_off_the_earlier_writer(
    redis_url: str, prefix: str, store: Store
) -> None:
    client = connect(redis_url)
    first = RecordMirror(client, "run-1", prefix=prefix)
    second = RecordMirror(client, "run-1", prefix=prefix)
    try:
        await first.begin(store, 1)
        first.append(b"one\n", 4)
        waiter = first.synced(4)
        assert waiter is not None
        await asyncio.wait_for(waiter, 5)
        stale = RecordMirror(client, "run-1", prefix=prefix)
        stale.expected = None  # it looked before the first began: refused
        with pytest.raises(StateWriteFailed, match="taken over"):
            await stale.begin(store, 1)
        second.expected = 1  # another worker took the run over, as restore saw it
        await second.begin(store, 2)
        assert (first.epoch, second.epoch) == (1, 2)
        first.append(b"two\n", 8)  # the old worker, not yet told, goes on
        late = first.synced(8)
        assert late is not None
        with pytest.raises(StateWriteFailed, match="taken over by another worker"):
            await asyncio.wait_for(late, 5)
        with pytest.raises(StateWriteFailed, match="taken over"):  # not its session
            await first.finish(_completed(store))
        with pytest.raises(StateWriteFailed, match="taken over"):  # its run must not end
            await first.close()  # as if done: the new owner records the end
        head = await head_of(client, prefix, "run-1")
        assert head is not None
        assert (head["status"], head["session"], head["epoch"]) == ("running", "2", "2")
        record = await fetch(client, prefix, "run-1")
        assert record is not None
        assert record.chunks == []  # the new session's journal: nothing of the old one
        await second.finish(_completed(store))
        head = await head_of(client, prefix, "run-1")
        assert head is not None
        assert head["status"] == "completed"
    finally:
        with contextlib.suppress(StateWriteFailed):
            await first.close()
        await second.close()
        await client.aclose()


def test_the_journal_is_joined_in_order_and_stops_at_a_gap() -> None:
    record = SharedRecord("r", 1, {}, [(b"cd", 4), (b"ab", 2), (b"gh", 8)])
    assert record.journal_from(0) == b"abcd"  # ef never reached Redis: gh waits
    assert record.journal_from(1) == b"bcd"
    with pytest.raises(Partial):  # what it holds begins past 4: Redis lost ef
        record.journal_from(4)
    assert record.journal_from(8) == b""


async def test_a_record_is_read_on_from_where_a_copy_was_brought_up_to(
    redis_url: str, prefix: str, store: Store, tmp_path: Path
) -> None:
    """What ``aoe serve`` does on each GET: only the journal's new entries are
    read; a copy they do not continue is told so (and then reads it whole)."""
    from aoe.events import AgentFinished, AgentStarted, AgentState
    from aoe.state.journal import journal_line
    from aoe.types import Usage

    client = connect(redis_url)
    mirror = RecordMirror(client, "run-1", prefix=prefix)

    async def send(*events: object) -> None:
        data = "".join(journal_line(e) for e in events).encode()  # type: ignore[arg-type]
        mirror.append(data, sent[0] + len(data))
        sent[0] += len(data)
        waiter = mirror.synced(sent[0])
        assert waiter is not None
        await asyncio.wait_for(waiter, 5)

    sent = [0]
    try:
        await mirror.begin(store, 1)
        await send(
            AgentStarted(run_id="run-1", at=1.0, agent_id="a"),
            attempt_started(run_id="run-1", at=1.1, model="m", fingerprint="f"),
        )
        whole = await fetch(client, prefix, "run-1")
        assert whole is not None
        assert whole.whole
        with Store(tmp_path / "copy.db") as copy:
            assert whole.restore(copy)
            assert [a.state for a in copy.agents("run-1")] == ["running"]
            midway = export_run(copy, "run-1")  # as a worker writes its head again
            done = AgentFinished(
                run_id="run-1",
                at=1.6,
                agent_id="a",
                state=AgentState.COMPLETED,
                duration=0.6,
                usage=Usage(5, 7),
                cost=0.003,
                attempts=1,
                output="A!",
            )
            await send(done)
            newer = await fetch(client, prefix, "run-1", after=whole.last)
            assert newer is not None
            assert not newer.whole
            assert len(newer.chunks) == 1  # the new entry alone
            assert newer.restore(copy)
            agents = copy.agents("run-1")
            assert [(a.state, a.output) for a in agents] == [("completed", "A!")]
            again = await fetch(client, prefix, "run-1", after=newer.last)
            assert again is not None
            assert (again.chunks, again.last) == ([], newer.last)
            assert not again.restore(copy)
        with Store(tmp_path / "fresh.db") as fresh, pytest.raises(Partial):
            newer.restore(fresh)  # no copy at all
        with Store(tmp_path / "behind.db") as behind:
            SharedRecord("run-1", 1, whole.head, []).restore(behind)  # the head alone
            with pytest.raises(Partial):
                newer.restore(behind)
            assert [a.state for a in behind.agents("run-1")] == ["pending"]
            # Redis lost the record and its worker wrote it again from its store:
            # the journal there begins past this copy, the export holds the rest
            again_head = {**whole.head, "export": json.dumps(midway)}
            rewritten = SharedRecord("run-1", 1, again_head, newer.chunks)
            assert rewritten.restore(behind)
            agents = behind.agents("run-1")
            assert [(a.state, a.output) for a in agents] == [("completed", "A!")]
    finally:
        await mirror.close()
        await client.aclose()


@pytest.mark.redis(own=True)  # stops it
@pytest.mark.slow
async def test_fail_closed_holds_the_next_call_until_redis_returns(
    redis_server: RedisServer, store: Store, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """And a Redis that comes back without its data (no persistence) gets the
    run's record again: the store's rows, then the journal file beyond them."""
    client = connect(redis_server.url)
    mirror = RecordMirror(client, "run-1")
    journal = tmp_path / "run-1.journal"
    try:
        await mirror.begin(store, 1, journal)
        redis_server.stop()
        journal.write_bytes(b"one\n")  # as the recorder does, before the mirror
        mirror.append(b"one\n", 4)
        waiter = mirror.synced(4)
        assert waiter is not None
        with caplog.at_level(logging.WARNING, "aoe.records"):
            await until(lambda: "waits to record its progress there" in caplog.text)
            assert not waiter.done()  # the call waits
            redis_server.start()  # empty
            await asyncio.wait_for(waiter, 10)
        assert "writing it there again" in caplog.text
        record = await fetch(client, "aoe", "run-1")
        assert record is not None
        assert record.journal_from(0) == b"one\n"  # nothing lost
    finally:
        await mirror.close(timeout=5)
        await client.aclose()


@pytest.mark.redis(own=True)  # stops it
async def test_local_goes_on_without_redis_and_says_so(
    redis_server: RedisServer, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(redis_server.url)
    mirror = RecordMirror(client, "run-1", on_unavailable="local")
    try:
        await mirror.begin(store, 1)
        redis_server.stop()
        mirror.append(b"one\n", 4)
        waiter = mirror.synced(4)
        assert waiter is not None
        with caplog.at_level(logging.WARNING, "aoe.records"):
            await asyncio.wait_for(waiter, 10)  # released: the run goes on
            assert mirror.synced(8) is None  # and no longer waits for Redis
            await asyncio.wait_for(mirror.finish(_completed(store)), 10)
        assert "is recorded on this host only" in caplog.text
    finally:
        await mirror.close(timeout=5)
        await client.aclose()


def _completed(store: Store) -> RunRow:
    """The record of run-1 as it is once the run completed."""
    return dataclasses.replace(store.run("run-1"), status=RecordStatus.COMPLETED)
