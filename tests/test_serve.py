"""`aoe serve` over real HTTP, in a process of its own, against the fake provider."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import check_listed, child_env, promtool
from tests.fakeserver import Fail, FakeProvider, Received, Reply
from tests.servehelp import Http, Service, services

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

__all__ = ["CHAIN", "Http", "Service", "agent_of", "events_of", "samples", "total"]

CHAIN = """\
version: 1
name: served
inputs:
  topic: {type: string, default: tides}
defaults:
  llm: {provider: openai, model: gpt-4o-mini, max_tokens: 50}
agents:
  a: {prompt: "a about {{ inputs.topic }}"}
  b: {prompt: "b after {{ agents.a.output }}", depends_on: a}
  c: {prompt: "c after {{ agents.b.output }}", depends_on: b}
outputs:
  final: "{{ agents.c.output }}"
"""


def agent_of(request: Received) -> str:
    return request.prompt.split(" ")[0]


@pytest.fixture
def env(openai_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return child_env(openai_env, AOE_STATE_DIR=str(tmp_path / "state"))


@pytest.fixture
def start(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Service]]:
    with services(env, tmp_path) as start:
        yield start


def events_of(
    service: Service, run_id: str, found: list[tuple[str, dict[str, Any]]] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """A run's Server-Sent Events, to the end of the stream; each is added to
    ``found`` as it comes (so another thread can wait for the first)."""
    found = [] if found is None else found
    kind = ""
    for response, line in service.http.lines(f"/api/v1/runs/{run_id}/events"):
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: "):
            found.append((kind, json.loads(line[len("data: ") :])))
    return found


# -- submit, watch, cancel ----------------------------------------------------------------


def test_a_submitted_run_runs_and_is_recorded(
    start: Callable[..., Service], fake: FakeProvider
) -> None:
    service = start()
    run_id = service.submit(CHAIN, inputs={"topic": "moons"}, name="chain.yaml")
    run = service.wait(run_id)
    assert [a["state"] for a in run["agents"].values()] == ["completed"] * 3
    assert run["outputs"]["final"].startswith("fake answer to: c after")
    assert sorted(agent_of(r) for r in fake.received) == ["a", "b", "c"]
    assert "moons" in fake.received[0].prompt
    listed = service.http.get("/api/v1/runs", params={"status": "completed"}).json()["runs"]
    assert [r["run_id"] for r in listed] == [run_id]
    check_listed(listed)  # the results document's names (issue 16)
    assert listed[0]["workflow"] == {**run["workflow"]}
    # the events of a finished run come from its record, then the stream ends
    kinds = [kind for kind, _ in events_of(service, run_id)]
    assert kinds[0] == "RunStarted"
    assert kinds[-2:] == ["RunFinished", "end"]
    assert kinds.count("AgentFinished") == 3
    assert service.stop() == 0
    # issue 16: it logged nothing per run; now a line per request and per run end
    log = "".join(service.lines)
    assert f"run {run_id} of served ended completed in " in log, log
    assert "POST /api/v1/runs 202 " in log
    assert f"GET /api/v1/runs/{run_id}/events 200 " in log
    assert "GET /health " not in log  # probes: at DEBUG


def test_events_stream_live_until_the_run_ends(
    start: Callable[..., Service], fake: FakeProvider
) -> None:
    fake.respond = lambda r: Reply(delay=0.3)
    service = start()
    run_id = service.submit(CHAIN)
    events = events_of(service, run_id)  # connected while it runs: live to the end
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "RunStarted"
    assert kinds[-1] == "end"
    assert [data["agent_id"] for kind, data in events if kind == "AgentFinished"] == [
        "a",
        "b",
        "c",
    ]
    finished = next(data for kind, data in events if kind == "RunFinished")
    assert finished["status"] == "completed"
    # the results document's names: ISO times, money in USD, seconds; no outputs
    assert finished["event"] == "RunFinished"
    assert finished["at"].endswith("Z")
    assert finished["cost_usd"] > 0
    assert finished["duration_seconds"] > 0
    assert "outputs" not in finished
    assert "cost" not in finished
    from aoe.observe.resultschema import Event

    for kind, data in events[:-1]:  # (the closing frame is no event)
        assert Event.model_validate(data).event == kind
    assert service.run(run_id)["status"] == "completed"
    service.stop()


def test_a_run_can_be_cancelled_and_then_resumed(
    start: Callable[..., Service], fake: FakeProvider, env: dict[str, str], tmp_path: Path
) -> None:
    fake.respond = lambda r: Reply(delay=30) if agent_of(r) == "b" else Reply()
    service = start()
    run_id = service.submit(CHAIN)
    deadline = time.monotonic() + 20
    while [agent_of(r) for r in fake.received] != ["a", "b"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # a run of the service's own process is running, not interrupted
    assert service.run(run_id)["status"] == "running"
    listed = service.http.get("/api/v1/runs").json()["runs"]
    assert [r["status"] for r in listed] == ["running"]
    response = service.http.post(f"/api/v1/runs/{run_id}/cancel")
    assert response.status_code == 202
    run = service.wait(run_id, "cancelled")
    states = {agent_id: a["state"] for agent_id, a in run["agents"].items()}
    assert states == {"a": "completed", "b": "cancelled", "c": "cancelled"}
    assert service.http.post(f"/api/v1/runs/{run_id}/cancel").status_code == 409
    assert service.http.post("/api/v1/runs/nope/cancel").status_code == 404
    assert service.stop() == 0
    # the cancelled run is resumable; a is not called again
    fake.reset()
    resumed = subprocess.run(
        [sys.executable, "-m", "aoe", "resume", run_id, "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(agent_of(r) for r in fake.received) == ["b", "c"]


def test_sigterm_drains_and_leaves_runs_resumable(
    start: Callable[..., Service], fake: FakeProvider, env: dict[str, str], tmp_path: Path
) -> None:
    fake.respond = lambda r: Reply(delay=30) if agent_of(r) == "b" else Reply()
    service = start("--max-concurrent", "1")
    running = service.submit(CHAIN)
    queued = service.submit(CHAIN)
    deadline = time.monotonic() + 20
    while "b" not in [agent_of(r) for r in fake.received]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert service.run(queued)["status"] == "queued"
    assert service.stop() == 0
    assert fake.in_flight == 1  # it did not wait for the slow call (held 30 s)
    log = "".join(service.lines)
    assert "draining" in log
    assert "Traceback" not in log
    listed = subprocess.run(
        [sys.executable, "-m", "aoe", "runs", "list", "--format", "json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    statuses = {r["run_id"]: r["status"] for r in json.loads(listed.stdout)}
    assert statuses == {running: "cancelled", queued: "cancelled"}
    fake.reset()
    for run_id, called in ((running, ["b", "c"]), (queued, ["a", "b", "c"])):
        fake.reset()
        resumed = subprocess.run(
            [sys.executable, "-m", "aoe", "resume", run_id, "-q", "--no-cache"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert resumed.returncode == 0, resumed.stderr
        assert sorted(agent_of(r) for r in fake.received) == called


# -- what is refused ------------------------------------------------------------------------


def test_bad_requests_get_the_right_status_and_the_service_lives_on(
    start: Callable[..., Service], fake: FakeProvider, write: Callable[..., Path]
) -> None:
    service = start("--max-body", "4096")
    http = service.http
    big = {"workflow": CHAIN + "#" * 8000}
    assert http.post("/api/v1/runs", json=big).status_code == 413
    response = http.post(
        "/api/v1/runs", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "not JSON" in response.json()["error"]
    assert http.post("/api/v1/runs", json=[1, 2]).status_code == 400
    assert http.post("/api/v1/runs", json={"workflow": 3}).status_code == 400
    assert http.post("/api/v1/runs", json={"workflow": CHAIN, "budget": -1}).status_code == 400
    assert http.post("/api/v1/runs", json={"workflow": CHAIN, "colour": 1}).status_code == 400
    # an invalid workflow: the diagnostics of `aoe validate`, with lines
    broken = CHAIN.replace("depends_on: b}", "depends_on: bb}")
    response = http.post("/api/v1/runs", json={"workflow": broken, "name": "broken.yaml"})
    assert response.status_code == 400
    diagnostics = response.json()["diagnostics"]
    path = write(broken, "broken.yaml")
    validated = subprocess.run(
        [sys.executable, "-m", "aoe", "validate", str(path), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=path.parent,
    )
    expected = json.loads(validated.stdout)
    assert [(d["line"], d["code"], d["message"]) for d in diagnostics] == [
        (d["line"], d["code"], d["message"]) for d in expected
    ]
    assert diagnostics[0]["file"] == "broken.yaml"
    # inputs of the wrong type
    response = http.post("/api/v1/runs", json={"workflow": CHAIN, "inputs": {"topic": [1]}})
    assert response.status_code == 400
    assert response.json()["diagnostics"]
    response = http.post("/api/v1/runs", json={"workflow": CHAIN, "inputs": {"nope": 1}})
    assert response.status_code == 400
    assert http.get("/api/v1/nothing").status_code == 404
    assert http.delete("/api/v1/runs").status_code == 405
    assert service.health().json()["status"] == "healthy"
    assert fake.received == []  # nothing was run
    assert "Traceback" not in "".join(service.lines)
    assert service.stop() == 0


def test_binding_beyond_loopback_needs_a_token(
    start: Callable[..., Service], env: dict[str, str], tmp_path: Path
) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "aoe", "serve", "--host", "0.0.0.0", "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "AOE_API_TOKEN" in refused.stderr
    assert "Traceback" not in refused.stderr
    token = "test-token-" + os.urandom(8).hex()
    service = start("--host", "0.0.0.0", extra={"AOE_API_TOKEN": token})
    url = service.url.replace("0.0.0.0", "127.0.0.1")
    anonymous = Http(url)
    assert anonymous.get("/health").status_code == 200  # probes need no token
    assert anonymous.get("/api/v1/runs").status_code == 401
    wrong = {"Authorization": "Bearer " + token[:-1] + "x"}
    assert anonymous.get("/api/v1/runs", headers=wrong).status_code == 401
    right = {"Authorization": f"Bearer {token}"}
    assert anonymous.get("/api/v1/runs", headers=right).status_code == 200
    assert token not in "".join(service.lines)
    service.stop()


# -- health -----------------------------------------------------------------------------------


def test_health_turns_degraded_when_every_slot_is_taken_and_back(
    start: Callable[..., Service], fake: FakeProvider
) -> None:
    release = threading.Event()
    fake.respond = lambda r: Reply() if release.wait(30) else Fail(500)
    service = start("--max-concurrent", "1", "--queue-limit", "1")
    assert service.health().json()["status"] == "healthy"
    first = service.submit(CHAIN)
    deadline = time.monotonic() + 20
    while service.health().json()["status"] != "degraded":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    health = service.health()
    assert health.status_code == 200
    assert "slot" in health.json()["reason"]
    # one more waits in the queue, which is then full: unhealthy, and refused
    service.submit(CHAIN)
    health = service.health()
    assert health.status_code == 503
    assert "queue is full" in health.json()["reason"]
    assert service.http.post("/api/v1/runs", json={"workflow": CHAIN}).status_code == 429
    release.set()
    service.wait(first)
    deadline = time.monotonic() + 30
    while service.health().json()["status"] != "healthy":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert service.health().json()["active_runs"] == 0
    service.stop()


# -- metrics ---------------------------------------------------------------------------------


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(
        value
        for (metric, have), value in found.items()
        if metric == name and all((k, v) in have for k, v in labels.items())
    )


def test_metrics_pass_promtool_and_match_the_results(
    start: Callable[..., Service], fake: FakeProvider
) -> None:
    attempts = {"n": 0}

    def respond(request: Received) -> Reply | Fail:
        attempts["n"] += 1
        if agent_of(request) == "b" and attempts["n"] == 2:
            return Fail(500, "once")  # one retry
        return Reply(input_tokens=11, output_tokens=7)

    fake.respond = respond
    service = start()
    run_id = service.submit(CHAIN)
    run = service.wait(run_id)
    text = service.http.get("/metrics").text
    found = samples(text)
    assert total(found, "aoe_workflows_total", workflow="served", status="completed") == 1
    assert total(found, "aoe_workflows_failed_total") == 0
    assert total(found, "aoe_cost_dollars_total") == pytest.approx(run["cost_usd"], abs=1e-6)
    assert total(found, "aoe_tokens_total", direction="input") == run["usage"]["input_tokens"] == 33
    assert (
        total(found, "aoe_tokens_total", direction="output") == run["usage"]["output_tokens"] == 21
    )
    assert total(found, "aoe_llm_requests_total", status="ok", model="gpt-4o-mini") == 3
    assert total(found, "aoe_llm_requests_total", status="error") == 1
    assert total(found, "aoe_retries_total") == 1
    assert total(found, "aoe_agent_execution_seconds_count") == 3
    assert total(found, "aoe_rate_limit_wait_seconds_count") == 4
    assert total(found, "aoe_active_workflows") == 0
    assert total(found, "aoe_health_status") == 0
    assert not any(run_id in str(labels) for _, labels in found)  # no run ids as labels
    service.stop()
    checked = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_workflow_that_names_files_is_submitted_with_them(
    start: Callable[..., Service], fake: FakeProvider
) -> None:
    """Issue 16: the shipped research-brief.yaml got 400 for its prompt files."""
    from tests.conftest import WORKFLOWS

    text = (WORKFLOWS / "research-brief.yaml").read_text()
    named = ["prompts/analyst-system.md", "prompts/angle.md", "prompts/brief.md"]
    files = {path: (WORKFLOWS / path).read_text() for path in [*named, "schemas/brief.json"]}
    service = start()
    without = service.http.post("/api/v1/runs", json={"workflow": text, "mock": True})
    assert without.status_code == 400
    assert "prompts/analyst-system.md" in without.text
    run_id = service.submit(text, files=files, mock=True, name="research-brief.yaml")
    run = service.wait(run_id)
    assert run["status"] == "completed"
    assert fake.received == []  # (offline)
    bad = service.http.post(
        "/api/v1/runs", json={"workflow": text, "files": {"../etc/passwd": "x"}, "mock": True}
    )
    assert bad.status_code == 400
    assert "must be a plain relative file name" in bad.text
    assert service.stop() == 0


def test_a_submission_may_rehearse_the_limits(
    start: Callable[..., Service], tmp_path: Path
) -> None:
    service = start()
    refused = service.http.post("/api/v1/runs", json={"workflow": CHAIN, "mock_limits": True})
    assert refused.status_code == 400
    assert refused.json()["error"] == (
        '"mock_limits" rehearses a run offline: set "mock": true too'
    )
    run_id = service.submit(CHAIN, mock=True, mock_limits=True)
    run = service.wait(run_id)
    assert run["status"] == "completed"
    service.stop()
    from aoe.state.store import Store

    with Store(tmp_path / "state" / "state.db") as store:
        assert store.run(run_id).settings["mock_limits"] is True
