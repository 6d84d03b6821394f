"""Logs, metrics and health: JSON log lines, `aoe run --metrics-port` and
`--pushgateway`, `aoe status`, `aoe runs events --type agent_failed`, the health
rules in virtual time, and the dashboards' files."""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aoe.events import AttemptFinished, AttemptStarted, RunFinished, RunStarted, RunStatus
from aoe.observe.health import HealthMonitor
from aoe.observe.metrics import MAX_SERIES, Metrics
from aoe.types import Usage
from tests import events as built
from tests.conftest import REPO, RunCli, WriteFile, child_env, promtool
from tests.fakeserver import Fail, FakeProvider, Reply
from tests.test_serve import CHAIN, agent_of, samples, total


def run(cli: RunCli, env: dict[str, str], *args: Any) -> tuple[int, str, str]:
    result = cli(*args, env=env)
    return result.exit_code, result.stdout, result.stderr


# -- JSON logs --------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_json_log_lines_carry_the_fields_collectors_index(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    fake.respond = lambda r: Fail(400, "bad") if agent_of(r) == "c" else Reply()
    path = write(CHAIN.replace("name: served", "name: logs\nallow_partial_completion: true"))
    code, _, stderr = run(cli, provider_env, "run", path, "--log-format", "json")
    assert code == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines()]
    for line in lines:
        assert {"timestamp", "level", "message", "module", "function", "run_id"} <= set(line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["timestamp"])
    finished = [line for line in lines if line["event"] == "AgentFinished"]
    assert {line["agent_id"] for line in finished} == {"a", "b", "c"}
    attempts = [line for line in lines if line["event"] == "AttemptFinished"]
    assert all(isinstance(line["attempt"], int) for line in attempts)
    assert [line["level"] for line in finished if line["agent_id"] == "c"] == ["ERROR"]
    assert provider_env["OPENAI_API_KEY"] not in stderr
    # LOG_LEVEL leaves out what went well
    code, _, stderr = run(
        cli, {**provider_env, "LOG_LEVEL": "WARNING"}, "run", path, "--log-format", "json",
        "--no-cache",
    )  # fmt: skip
    levels = {json.loads(line)["level"] for line in stderr.splitlines()}
    assert levels == {"WARNING", "ERROR"}


@pytest.mark.subprocess
def test_service_log_lines_are_json_too(tmp_path: Path) -> None:
    env = child_env(AOE_STATE_DIR=str(tmp_path / "state"))
    process = subprocess.Popen(
        [sys.executable, "-m", "aoe", "serve", "--port", "0", "--log-format", "json"],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    first = json.loads(process.stderr.readline())
    process.terminate()
    rest = process.stderr.read()
    process.stderr.close()
    assert process.wait(timeout=30) == 0
    assert first["message"].startswith("listening on http://127.0.0.1:")
    assert (first["level"], first["module"], first["function"]) == ("INFO", "aoe.serve", "serve")
    assert all(json.loads(line)["module"] == "aoe.serve" for line in rest.splitlines())


# -- `aoe run` metrics ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Gateway(http.server.ThreadingHTTPServer):
    """A fake Prometheus Pushgateway: keeps what it was sent."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, str, str]] = []  # method, path, body
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length).decode()
                gateway.pushed.append((self.command, self.path, body))
                self.send_response(200)
                self.end_headers()

            do_POST = do_PUT

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    server = Gateway()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_run_pushes_its_metrics_to_a_pushgateway(
    cli: RunCli,
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    gateway: Gateway,
) -> None:
    fake.respond = lambda r: Reply(input_tokens=5, output_tokens=3)
    url = f"http://127.0.0.1:{gateway.server_address[1]}"
    code, out, stderr = run(
        cli, provider_env, "run", write(CHAIN), "-q", "--pushgateway", url, "-o", "-"
    )
    assert code == 0, stderr
    results = json.loads(out)
    [(method, path, body)] = gateway.pushed
    assert method == "PUT"
    assert path == "/metrics/job/aoe/workflow/served"
    found = samples(body)
    assert total(found, "aoe_workflows_total", status="completed") == 1
    assert total(found, "aoe_tokens_total", direction="input") == 15
    # (the results round to the micro-dollar; the metrics do not)
    assert round(total(found, "aoe_cost_dollars_total"), 6) == results["cost_usd"]


def test_a_failed_push_is_a_warning_not_a_failure(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    url = f"http://user:hunter2@127.0.0.1:{free_port()}"
    code, _, stderr = run(cli, provider_env, "run", write(CHAIN), "-q", "--pushgateway", url)
    assert code == 0
    assert "could not push the metrics" in stderr
    assert "hunter2" not in stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_metrics_are_served_while_the_run_lasts(
    write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    seen: list[str] = []
    port = free_port()

    def respond(request: Any) -> Reply:
        if agent_of(request) == "c":  # scrape in the middle of the run
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                seen.append(r.read().decode())
        return Reply()

    fake.respond = respond
    env = child_env(provider_env, AOE_STATE_DIR=str(tmp_path / "s"))
    done = subprocess.run(
        [sys.executable, "-m", "aoe", "run", str(write(CHAIN)), "-q", "--metrics-port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [text] = seen
    found = samples(text)
    assert total(found, "aoe_active_workflows") == 1
    assert total(found, "aoe_llm_requests_total", status="ok") == 2  # a and b so far
    with pytest.raises(OSError, match="refused"):  # and gone with the run
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_metrics_port_in_use_is_a_clear_error(
    cli: RunCli, write: WriteFile, provider_env: dict[str, str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, stderr = run(cli, provider_env, "run", write(CHAIN), "--metrics-port", str(port))
    assert code == 2
    assert "choose another --metrics-port" in stderr
    code, _, stderr = run(cli, provider_env, "run", write(CHAIN), "--metrics-port", "x:y")
    assert code == 2
    assert "HOST:PORT" in stderr


# -- metrics and health from events ----------------------------------------------------------


def attempt_finished(
    run_id: str, model: str, *, error: str | None = None, kind: str | None = None
) -> AttemptFinished:
    return built.attempt_finished(
        run_id=run_id, model=model, usage=Usage(10, 5), cost=0.001, error=error, error_kind=kind
    )


def test_label_values_stay_bounded() -> None:
    metrics = Metrics()
    for i in range(MAX_SERIES + 50):
        metrics(attempt_finished("r", f"model-{i}"))
    found = samples(metrics.exposition()[0].decode())
    models = {dict(labels)["model"] for name, labels in found if name == "aoe_llm_requests_total"}
    assert len(models) == MAX_SERIES + 1
    assert "other" in models
    assert total(found, "aoe_llm_requests_total") == MAX_SERIES + 50


def test_run_outcomes_are_counted_by_status() -> None:
    metrics = Metrics()
    usage = Usage(0, 0)
    for i, status in enumerate([RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED]):
        run_id = f"r{i}"
        metrics(
            RunStarted(run_id=run_id, at=0.0, workflow="wf", agents=1, max_parallel=1, budget=None)
        )
        metrics(
            RunFinished(
                run_id=run_id,
                at=1.0,
                status=status,
                duration=1.0,
                usage=usage,
                cost=0.0,
                budget=None,
                outputs={},
                output_errors={},
            )
        )
    found = samples(metrics.exposition()[0].decode())
    assert total(found, "aoe_workflows_total", workflow="wf") == 3
    assert total(found, "aoe_workflows_failed_total", workflow="wf") == 1
    assert total(found, "aoe_active_workflows") == 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def started(waited: float) -> AttemptStarted:
    return built.attempt_started(waited=waited, reserved=0.01)


def test_health_degrades_on_waits_and_errors_and_recovers_in_virtual_time() -> None:
    clock = Clock()
    monitor = HealthMonitor(window=60, max_wait=5, max_error_rate=0.25, min_calls=10, clock=clock)

    def check() -> str:
        return monitor.check(active=1, limit=4, queued=0, queue_limit=10, draining=False).status

    assert check() == "healthy"
    for _ in range(3):
        monitor(started(waited=8.0))
    health = monitor.check(active=1, limit=4, queued=0, queue_limit=10, draining=False)
    assert (health.status, health.http_status) == ("degraded", 200)
    assert "rate-limit" in health.reason
    clock.now += 61  # the waits leave the window
    assert check() == "healthy"
    for i in range(12):
        monitor(attempt_finished("r", "m", error="500" if i % 2 else None, kind="ProviderError"))
    assert check() == "degraded"
    assert (
        "failed 50% of 12 calls"
        in monitor.check(active=0, limit=4, queued=0, queue_limit=10, draining=False).reason
    )
    clock.now += 61
    assert check() == "healthy"
    # few calls say little: 3 failures of 3 are not enough to degrade
    for _ in range(3):
        monitor(attempt_finished("r", "m", error="500", kind="ProviderError"))
    assert check() == "healthy"
    drained = monitor.check(active=0, limit=4, queued=0, queue_limit=10, draining=True)
    assert (drained.status, drained.http_status) == ("unhealthy", 503)


# -- status and events from the command line ----------------------------------------------


def test_status_and_failed_events_from_the_local_store(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    fake.respond = lambda r: Fail(400, "refused") if agent_of(r) == "b" else Reply()
    code, out, _ = run(cli, provider_env, "run", write(CHAIN), "-q", "-o", "-")
    assert code == 1
    run_id = json.loads(out)["run_id"]
    code, out, _ = run(cli, provider_env, "status", "--format", "json")
    assert code == 0
    report = json.loads(out)
    assert [r["run_id"] for r in report["failures"]] == [run_id]
    assert report["active"] == []
    assert report["spend"]["runs"] == 1
    code, out, _ = run(cli, provider_env, "status")
    assert "recent failures: 1" in out
    code, out, _ = run(
        cli, provider_env, "runs", "events", run_id, "--type", "agent_failed", "--last", "50"
    )
    assert code == 0
    failed = [json.loads(line) for line in out.splitlines()]
    assert [(e["event"], e["agent_id"], e["state"]) for e in failed] == [
        ("AgentFinished", "b", "failed")
    ]
    code, out, _ = run(cli, provider_env, "runs", "events", run_id, "-t", "attempt_failed")
    assert [json.loads(line)["agent_id"] for line in out.splitlines()] == ["b"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_status_of_a_running_service(
    fake: FakeProvider, openai_env: dict[str, str], tmp_path: Path
) -> None:
    from tests.test_serve import Service

    env = child_env(openai_env, AOE_STATE_DIR=str(tmp_path / "s"))
    service = Service(env, tmp_path)
    try:
        service.wait(service.submit(CHAIN))
        shown = subprocess.run(
            [sys.executable, "-m", "aoe", "status", "--url", service.url, "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        report = json.loads(shown.stdout)
        assert report["health"]["status"] == "healthy"
        assert report["spend"]["runs"] == 1
        assert report["spend"]["last_24h"] > 0
    finally:
        service.stop()
    gone = subprocess.run(
        [sys.executable, "-m", "aoe", "status", "--url", service.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode == 2
    assert "cannot reach aoe serve" in gone.stderr
    assert "Traceback" not in gone.stderr


# -- the dashboards ---------------------------------------------------------------------------


def test_the_dashboard_and_the_prometheus_files_name_real_metrics() -> None:
    names = {metric.name for metric in Metrics().registry.collect()}
    dashboard = json.loads((REPO / "config/grafana/dashboards/aoe.json").read_text())
    used = set(re.findall(r"\baoe_[a-z_]+", json.dumps(dashboard)))
    alerts = set(re.findall(r"\baoe_[a-z_]+", (REPO / "config/alerts.yml").read_text()))
    known = {
        name + suffix for name in names for suffix in ("", "_total", "_bucket", "_sum", "_count")
    }
    assert used
    assert used <= known, used - known
    assert alerts <= known, alerts - known
    titles = {panel["title"].lower() for panel in dashboard["panels"]}
    for wanted in (
        "workflows per minute",
        "success rate",
        "agent execution time p50 / p95",
        "cost per hour",
        "active",
        "error rate",
        "rate-limit wait",
    ):
        assert any(wanted in title for title in titles), wanted


@pytest.mark.subprocess
def test_the_prometheus_config_and_alert_rules_pass_promtool() -> None:
    checker = promtool()
    for args in (
        ["check", "config", str(REPO / "config/prometheus.yml")],
        ["check", "rules", str(REPO / "config/alerts.yml")],
    ):
        checked = subprocess.run([checker, *args], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.subprocess
def test_metrics_are_not_imported_unless_asked_for(tmp_path: Path) -> None:
    code = (
        "import sys, aoe.cli.main, aoe.service.runner, aoe.state.recorder; "
        "print(sorted(m for m in ('prometheus_client', 'aiohttp', 'redis') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert out.stdout.strip() == "[]"
