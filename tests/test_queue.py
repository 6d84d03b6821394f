"""`aoe submit` and `aoe worker` on a real Redis, against the fake provider:
runs done once, a killed worker's run taken over and resumed, dead letters."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from aoe.state.store import Store
from tests.conftest import WriteFile, child_env, read_lines, wait_for
from tests.fakeserver import FakeProvider, Received, Reply
from tests.redisserver import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

CHAIN = """\
version: 1
name: queued
inputs:
  topic: {type: string, default: tides}
defaults:
  llm: {provider: openai, model: gpt-4o-mini, max_tokens: 20}
agents:
  a: {prompt: "a {{ inputs.topic }}"}
  b: {prompt: "b {{ inputs.topic }} {{ agents.a.output }}", depends_on: a}
  c: {prompt: "c {{ inputs.topic }} {{ agents.b.output }}", depends_on: b}
"""


def called(fake: FakeProvider) -> list[tuple[str, str]]:
    """(agent, topic) of every request that reached the server."""
    return [tuple(r.prompt.split(" ")[:2]) for r in fake.received if r.body]  # type: ignore[misc]


@pytest.fixture
def env(redis_server: RedisServer, openai_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return child_env(
        openai_env,
        AOE_STATE_DIR=str(tmp_path / "state"),  # the workers share it
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(redis_server.port),
    )


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, state: str | None = None) -> subprocess.Popen[str]:
        """A worker; ``state``: its own run store (as on a host of its own)."""
        own = env if state is None else {**env, "AOE_STATE_DIR": str(tmp_path / state)}
        process = subprocess.Popen(
            [sys.executable, "-m", "aoe", "worker", *args],
            cwd=tmp_path,
            env=own,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def submit(env: dict[str, str], path: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "aoe", "submit", str(path), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def stall_first_call_of(agent: str, fake: FakeProvider) -> list[str]:
    """The fake provider holds the first call of ``agent`` for 30 s (a worker
    dies or drains meanwhile); the agents called, in order, fill the list."""
    seen: list[str] = []

    def respond(request: Received) -> Reply:
        seen.append(request.prompt.split(" ")[0])
        return Reply(delay=30) if seen.count(agent) == 1 and seen[-1] == agent else Reply()

    fake.respond = respond
    return seen


def statuses(env: dict[str, str]) -> dict[str, str]:
    path = Path(env["AOE_STATE_DIR"]) / "state.db"
    if not path.exists():
        return {}
    with Store(path) as store:
        return {r.run_id: r.status for r in store.runs(limit=None)}


def test_queued_runs_are_run_once_and_acknowledged(
    env: dict[str, str],
    workers: Callable[..., subprocess.Popen[str]],
    write: WriteFile,
    fake: FakeProvider,
    redis_server: RedisServer,
) -> None:
    path = write(CHAIN)
    ids = [submit(env, path, "-i", f"topic=t{n}", "--no-cache") for n in range(4)]
    first, second = workers("--concurrency", "2"), workers("--concurrency", "2")
    wait_for(lambda: [statuses(env).get(i) for i in ids] == ["completed"] * 4)
    wait_for(lambda: redis_server.pending() == 0)
    assert sorted(called(fake)) == sorted((a, f"t{n}") for a in "abc" for n in range(4))
    for process in (first, second):
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr


def test_a_killed_workers_run_is_taken_over_and_resumed(
    env: dict[str, str],
    workers: Callable[..., subprocess.Popen[str]],
    write: WriteFile,
    fake: FakeProvider,
    redis_server: RedisServer,
) -> None:
    seen = stall_first_call_of("b", fake)  # the first worker dies while b is in flight
    doomed = workers("--lease", "2")
    run_id = submit(env, write(CHAIN), "--no-cache")
    wait_for(lambda: "b" in seen)
    doomed.kill()  # SIGKILL: no goodbye, its message stays claimed
    doomed.communicate(timeout=30)
    assert redis_server.pending() == 1  # held under the dead worker's lease
    # as if it had run on another host, where its pid tells this one nothing:
    # the queue's lease decides, not the record
    with Store(Path(env["AOE_STATE_DIR"]) / "state.db") as store:
        store.connection.execute("UPDATE runs SET host = 'another-host'")
    heir = workers("--lease", "2")  # takes it over once the lease ran out (XAUTOCLAIM)
    wait_for(lambda: statuses(env).get(run_id) == "completed")
    assert [agent for agent, _ in called(fake)] == ["a", "b", "b", "c"]  # a: once
    wait_for(lambda: redis_server.pending() == 0)
    heir.send_signal(signal.SIGTERM)
    _, stderr = heir.communicate(timeout=30)
    assert "resuming after another worker" in stderr


def test_poison_messages_go_to_the_dead_letters(
    env: dict[str, str],
    workers: Callable[..., subprocess.Popen[str]],
    write: WriteFile,
    fake: FakeProvider,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    try:
        client.xadd("aoe:{queue}:runs", {"run_id": "r-bad", "workflow": "agents: [", "name": "x"})
        target = tmp_path / "escaped.yaml"
        client.xadd(
            "aoe:{queue}:runs",
            {"run_id": "r-path", "workflow": "version: 1", "name": str(target)},
        )
        fake.respond = lambda request: Reply(delay=30)  # the first worker dies mid-run
        doomed = workers("--lease", "2", "--max-deliveries", "1")
        run_id = submit(env, write(CHAIN), "--no-cache")
        wait_for(lambda: len(fake.received) == 1)
        doomed.kill()
        doomed.communicate(timeout=30)
        workers("--lease", "2", "--max-deliveries", "1")
        wait_for(lambda: client.xlen("aoe:{queue}:dead") == 3)
        dead: Any = client.xrange("aoe:{queue}:dead")
        letters = {fields["run_id"]: fields["reason"] for _, fields in dead}
        assert "cannot be run" in letters["r-bad"]
        assert "plain relative file name" in letters["r-path"]
        assert not target.exists()  # nothing written outside its folder
        # twice, or three times if a worker on a busy machine renewed its 2 s
        # lease too late and took the message over from itself
        assert re.search(r"delivered [23] times", letters[run_id]), letters[run_id]
        wait_for(lambda: redis_server.pending() == 0)  # both acknowledged
        assert len(fake.received) == 1  # the poison run was not run again
        # its record in Redis says so (those never queued by `aoe submit` have none)
        assert shared_status(redis_server, run_id) == "failed"
        head = client.hgetall(f"aoe:{{run:{run_id}}}:head")
        assert re.search(r"delivered [23] times", str(head["error"])), head["error"]
        assert shared_status(redis_server, "r-bad") is None
    finally:
        client.close()


def test_submit_checks_first_and_needs_redis(
    env: dict[str, str], write: WriteFile, tmp_path: Path
) -> None:
    bad = write(CHAIN.replace("depends_on: b", "depends_on: bb"), "bad.yaml")
    done = subprocess.run(
        [sys.executable, "-m", "aoe", "submit", str(bad)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "bad.yaml:" in done.stderr
    without = {k: v for k, v in env.items() if not k.startswith("REDIS_")}
    done = subprocess.run(
        [sys.executable, "-m", "aoe", "submit", str(write(CHAIN))],
        env=without,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "REDIS_HOST" in done.stderr


def shared_status(server: RedisServer, run_id: str) -> str | None:
    """The run's status as the record in Redis has it."""
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        status = client.hget(f"aoe:{{run:{run_id}}}:head", "status")
        return None if status is None else str(status)
    finally:
        client.close()


def test_a_run_is_taken_over_on_another_host_from_its_record_in_redis(
    env: dict[str, str],
    workers: Callable[..., subprocess.Popen[str]],
    write: WriteFile,
    fake: FakeProvider,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    seen = stall_first_call_of("c", fake)  # the first worker dies while c is in flight
    doomed = workers("--lease", "2", state="host-1")
    run_id = submit(env, write(CHAIN), "--no-cache")
    wait_for(lambda: "c" in seen)
    assert shared_status(redis_server, run_id) == "running"
    doomed.kill()  # SIGKILL: its store stays on its host, out of reach
    doomed.communicate(timeout=30)
    heir = workers("--lease", "2", state="host-2")
    wait_for(lambda: shared_status(redis_server, run_id) == "completed")
    assert [agent for agent, _ in called(fake)] == ["a", "b", "c", "c"]  # a, b: once
    wait_for(lambda: redis_server.pending() == 0)
    heir.send_signal(signal.SIGTERM)
    _, stderr = heir.communicate(timeout=30)
    assert "resuming after another worker (2 agents kept)" in stderr
    with Store(tmp_path / "host-2" / "state.db") as store:  # the whole record, here
        run = store.run(run_id)
        assert (run.status, run.sessions) == ("completed", 2)
        agents = {a.agent_id: a for a in store.agents(run_id)}
        assert [agents[a].state for a in "abc"] == ["completed"] * 3
        assert [agents[a].session for a in "abc"] == [1, 1, 2]
        assert run.cost == pytest.approx(sum(a.cost for a in agents.values()))


def test_a_drained_worker_hands_its_run_back_at_once(
    env: dict[str, str],
    workers: Callable[..., subprocess.Popen[str]],
    write: WriteFile,
    fake: FakeProvider,
    redis_server: RedisServer,
) -> None:
    seen = stall_first_call_of("b", fake)
    leaving = workers("--lease", "30")
    run_id = submit(env, write(CHAIN), "--no-cache")
    wait_for(lambda: "b" in seen)
    leaving.send_signal(signal.SIGTERM)  # a rolling restart, say
    _, stderr = leaving.communicate(timeout=30)
    assert leaving.returncode == 0, stderr
    assert "handed back to the queue" in stderr
    assert redis_server.pending() == 0  # queued anew, held by no one: no lease to wait out
    workers("--lease", "30")
    wait_for(lambda: statuses(env).get(run_id) == "completed")
    assert [agent for agent, _ in called(fake)] == ["a", "b", "b", "c"]
    wait_for(lambda: redis_server.pending() == 0)
    client = redis.Redis(port=redis_server.port)
    try:
        assert client.xlen("aoe:{queue}:dead") == 0  # a drain is not a delivery
    finally:
        client.close()


@pytest.mark.redis(own=True, persistent=True)  # stops it; a restart keeps the queue
def test_redis_stopped_mid_run_holds_a_workers_run_and_loses_nothing(
    env: dict[str, str],
    workers: Callable[..., subprocess.Popen[str]],
    write: WriteFile,
    fake: FakeProvider,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """fail_closed: the run's next call waits until Redis has its record; once
    Redis is back the run finishes, each agent called once, and the record in
    Redis is whole (another host could take it over from there)."""
    import asyncio

    from aoe.redis.client import connect
    from aoe.redis.copies import fetch

    stopped = threading.Event()

    def respond(request: Received) -> Reply:
        if request.prompt.startswith("a ") and not stopped.is_set():
            redis_server.stop()  # Redis goes away while the run is under way
            stopped.set()
        return Reply()

    fake.respond = respond
    worker = workers(state="host-1")
    run_id = submit(env, write(CHAIN), "--no-cache")
    assert stopped.wait(60)
    lines = read_lines(worker)
    wait_for(lambda: any("Redis is unreachable" in line for line in lines))
    assert [agent for agent, _ in called(fake)] == ["a"]  # the run waits for Redis
    redis_server.start()
    wait_for(lambda: shared_status(redis_server, run_id) == "completed")
    assert [agent for agent, _ in called(fake)] == ["a", "b", "c"]  # each once
    # its queue reader tries again each second: stopped before, it would not say so
    wait_for(lambda: any("answers again" in line for line in lines))
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)
    stderr = "".join(lines.done())
    assert "Redis is unreachable" in stderr
    assert "answers again" in stderr
    assert "Traceback" not in stderr

    async def record() -> Any:
        client = connect(redis_server.url)
        try:
            return await fetch(client, "aoe", run_id)
        finally:
            await client.aclose()

    shared = asyncio.run(record())
    assert shared is not None
    with Store(tmp_path / "elsewhere.db") as store:
        shared.restore(store)
        agents = {a.agent_id: a.state for a in store.agents(run_id)}
        assert agents == {"a": "completed", "b": "completed", "c": "completed"}
