"""`aoe serve` with Redis: submissions go on the work queue, a replica's worker
runs them, and every replica reports, streams and cancels any run from its
record in Redis. Real processes, a real redis-server, the fake provider."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import check_listed, child_env, wait_for
from tests.fakeserver import FakeProvider, Reply
from tests.redisserver import RedisServer
from tests.test_serve import CHAIN, Service, agent_of, events_of

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


@pytest.fixture
def env(redis_server: RedisServer, openai_env: dict[str, str]) -> dict[str, str]:
    return child_env(openai_env, REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis_server.port))


@pytest.fixture
def start(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """A replica with a state directory of its own (as on a host of its own)."""
    started: list[Service] = []

    def _start(name: str, *args: str) -> Service:
        own = {**env, "AOE_STATE_DIR": str(tmp_path / name)}
        service = Service(own, tmp_path, *args)
        started.append(service)
        return service

    yield _start
    for service in started:
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait(timeout=30)
        service.close()


def test_a_run_submitted_to_one_replica_runs_on_another_and_both_report_it(
    start: Callable[..., Service], fake: FakeProvider, redis_server: RedisServer, tmp_path: Path
) -> None:
    runner = start("runner")
    front = start("front", "--no-worker")  # takes runs, runs none
    run_id = front.submit(CHAIN, inputs={"topic": "moons"}, name="chain.yaml")
    run = front.wait(run_id)
    assert [a["state"] for a in run["agents"].values()] == ["completed"] * 3
    assert run["outputs"]["final"].startswith("fake answer to: c after")
    spent = sum(a["cost_usd"] for a in run["agents"].values())
    # each rounded to the micro-dollar: at most half of one off each
    assert run["cost_usd"] == pytest.approx(spent, abs=len(run["agents"]) * 1e-6)
    assert runner.run(run_id)["status"] == "completed"
    assert sorted(agent_of(r) for r in fake.received) == ["a", "b", "c"]  # once each
    listed = front.http.get("/api/v1/runs", params={"status": "completed"}).json()["runs"]
    assert [(r["run_id"], r["workflow"]["name"]) for r in listed] == [(run_id, "served")]
    check_listed(listed)
    # the list says what the document says (from Redis's heads; the document
    # from the replica's copy of the record)
    assert listed[0]["workflow"] == run["workflow"]
    assert (listed[0]["cost_usd"], listed[0]["usage"]) == (run["cost_usd"], run["usage"])
    kinds = [kind for kind, _ in events_of(front, run_id)]
    assert kinds[0] == "RunStarted"
    assert kinds[-2:] == ["RunFinished", "end"]
    assert kinds.count("AgentFinished") == 3
    # each GET reads on from where the replica's copy was; a copy that lost the
    # run is brought up from the whole record
    with contextlib.closing(sqlite3.connect(tmp_path / "front" / "shared.db")) as copy:
        copy.execute("PRAGMA foreign_keys = ON")
        copy.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
        copy.commit()
    assert front.run(run_id)["agents"] == run["agents"]
    wait_for(lambda: redis_server.pending() == 0)  # acknowledged
    assert front.http.get("/api/v1/runs/nope").status_code == 404
    for service in (front, runner):
        assert service.stop() == 0
        assert not any("Traceback" in line for line in service.lines)


def test_live_events_and_a_cancel_go_through_any_replica(
    start: Callable[..., Service], fake: FakeProvider, redis_server: RedisServer
) -> None:
    fake.respond = lambda r: Reply(delay=30) if agent_of(r) == "b" else Reply()
    runner = start("runner")
    front = start("front", "--no-worker")
    run_id = front.submit(CHAIN)
    wait_for(lambda: [agent_of(r) for r in fake.received] == ["a", "b"])
    assert front.run(run_id)["status"] == "running"
    streamed: list[tuple[str, dict[str, Any]]] = []
    reader = threading.Thread(target=events_of, args=(front, run_id, streamed))
    reader.start()
    wait_for(lambda: bool(streamed))  # the stream is open (its first frame came) mid-run
    response = front.http.post(f"/api/v1/runs/{run_id}/cancel")
    assert response.status_code == 202, response.text
    run = front.wait(run_id, "cancelled")
    states = {agent_id: a["state"] for agent_id, a in run["agents"].items()}
    assert states == {"a": "completed", "b": "cancelled", "c": "cancelled"}
    reader.join(timeout=30)
    kinds = [kind for kind, _ in streamed]
    assert kinds[0] == "RunStarted"
    assert kinds[-1] == "end"
    finished = next(data for kind, data in streamed if kind == "RunFinished")
    assert finished["status"] == "cancelled"
    wait_for(lambda: redis_server.pending() == 0)  # final: no other worker resumes it
    assert front.http.post(f"/api/v1/runs/{run_id}/cancel").status_code == 409
    assert [agent_of(r) for r in fake.received] == ["a", "b"]
    # resumed through the replica that runs nothing: queued again, a worker
    # resumes it from its record (a is not asked again)
    fake.respond = lambda r: Reply()
    response = front.http.post(f"/api/v1/runs/{run_id}/resume", json={"budget": 1})
    assert response.status_code == 202, response.text
    run = front.wait(run_id, "completed")
    assert (run["session"], run["cost_budget_usd"]) == (2, 1.0)
    assert [agent_of(r) for r in fake.received] == ["a", "b", "b", "c"]
    refused = front.http.post(f"/api/v1/runs/{run_id}/resume")
    assert (refused.status_code, "nothing to resume" in refused.text) == (409, True)
    assert front.http.post("/api/v1/runs/nope/resume").status_code == 404
    for service in (front, runner):
        assert service.stop() == 0


def test_a_queued_run_can_be_cancelled_and_a_full_queue_refuses(
    start: Callable[..., Service],
    fake: FakeProvider,
    redis_server: RedisServer,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    front = start("front", "--no-worker", "--queue-limit", "2")
    first, second = front.submit(CHAIN), front.submit(CHAIN)
    assert front.run(first)["status"] == "queued"
    response = front.http.post(f"/api/v1/runs/{first}/cancel")
    assert (response.status_code, response.json()["status"]) == (200, "cancelled")
    assert front.run(first)["status"] == "cancelled"
    # two wait in the queue: the service says it is full (degraded, not out of
    # service: the queue is every replica's), and refuses more
    wait_for(lambda: "the work queue is full" in front.health().json()["reason"])
    assert front.health().status_code == 200
    assert front.http.post("/api/v1/runs", json={"workflow": CHAIN}).status_code == 429
    worker = subprocess.Popen(
        [sys.executable, "-m", "aoe", "worker"],
        cwd=tmp_path,
        env={**env, "AOE_STATE_DIR": str(tmp_path / "worker")},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: front.run(second)["status"] == "completed")
        wait_for(lambda: redis_server.pending() == 0)
    finally:
        worker.terminate()
        _, stderr = worker.communicate(timeout=30)
    assert f"run {first} cancelled on request" in stderr
    assert sorted(agent_of(r) for r in fake.received) == ["a", "b", "c"]  # the second only
    assert front.run(first)["status"] == "cancelled"
    wait_for(lambda: front.health().json()["status"] == "healthy")
    assert front.stop() == 0


def test_events_follow_a_run_across_a_drain_and_a_takeover(
    start: Callable[..., Service], fake: FakeProvider, redis_server: RedisServer
) -> None:
    seen: list[str] = []

    def respond(request: Any) -> Reply:
        seen.append(agent_of(request))
        return Reply(delay=30) if seen == ["a", "b"] else Reply()

    fake.respond = respond
    leaving = start("leaving")
    front = start("front", "--no-worker")
    run_id = front.submit(CHAIN)
    wait_for(lambda: seen == ["a", "b"])
    streamed: list[tuple[str, dict[str, Any]]] = []
    reader = threading.Thread(target=events_of, args=(front, run_id, streamed))
    reader.start()
    wait_for(lambda: bool(streamed))  # the stream is open: its first frame came
    assert leaving.stop() == 0  # a rolling restart: its run goes back to the queue
    start("arriving")  # and is resumed here
    reader.join(timeout=60)
    assert not reader.is_alive()
    finished = [data["status"] for kind, data in streamed if kind == "RunFinished"]
    kinds = " ".join(kind for kind, _ in streamed)
    # the stream went on past the first, and through the whole second session
    # (which may begin and end within a second of the drain)
    assert finished == ["cancelled", "completed"], kinds
    assert streamed[-1][0] == "end"
    assert seen == ["a", "b", "b", "c"]  # a: once
    assert front.run(run_id)["status"] == "completed"
    wait_for(lambda: redis_server.pending() == 0)


@pytest.mark.redis(own=True)  # stops it
def test_without_redis_the_api_answers_503_and_health_says_why(
    start: Callable[..., Service], redis_server: RedisServer
) -> None:
    front = start("front", "--no-worker")
    assert front.http.get("/api/v1/runs").status_code == 200
    redis_server.stop()
    response = front.http.get("/api/v1/runs")
    assert response.status_code == 503
    assert "Redis" in response.json()["error"]
    assert front.http.post("/api/v1/runs", json={"workflow": CHAIN}).status_code == 503
    wait_for(lambda: front.health().status_code == 503)
    assert "Redis is unreachable" in front.health().json()["reason"]
    redis_server.start()
    wait_for(lambda: front.health().json()["status"] == "healthy")
    assert front.http.get("/api/v1/runs").status_code == 200
    assert front.stop() == 0
    assert not any("Traceback" in line for line in front.lines)


def test_old_copies_in_shared_db_are_dropped(start: Callable[..., Service], tmp_path: Path) -> None:
    """A replica's copies of records (shared.db) go as their records in Redis
    expire, whatever they say: a copy's status names no process of this host."""
    from aoe.redis.records import RECORD_TTL
    from aoe.state.store import Store

    (tmp_path / "front").mkdir()
    with Store(tmp_path / "front" / "shared.db") as copies:
        for run_id in ("old", "recent"):
            copies.create_run(
                run_id, workflow_name="w", workflow_path="/w.yaml", workflow_sha256="0" * 64,
                workflow_text="version: 1\n", workflow_files={}, inputs={}, settings={},
                budget=None, agents={"a": "d"},
            )  # fmt: skip
        copies.connection.execute("UPDATE runs SET host = 'a-worker-elsewhere'")
        copies.connection.execute(
            "UPDATE runs SET updated_at = ? WHERE run_id = 'old'", (time.time() - RECORD_TTL - 60,)
        )
        # a store of its own would keep it: running, for all it can tell
        assert copies.prune(RECORD_TTL, dry_run=True) == []
    front = start("front", "--no-worker")

    def kept() -> list[str]:
        with contextlib.closing(sqlite3.connect(tmp_path / "front" / "shared.db")) as db:
            return [row[0] for row in db.execute("SELECT run_id FROM runs")]

    wait_for(lambda: kept() == ["recent"])
    assert front.stop() == 0
