"""Shared fixtures: workflow files in a temporary folder, and the CLI in-process."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aoe.cli.app import app
from tests.fakeserver import FakeProvider
from tests.redisserver import RedisServer

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"

# A minimal valid workflow; tests change one thing at a time.
VALID = """\
version: 1
name: minimal
defaults:
  llm: {provider: openai, model: gpt-4o-mini}
agents:
  first:
    prompt: Say hello.
  second:
    depends_on: [first]
    prompt: "Improve: {{ agents.first.output }}"
"""


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


WriteFile = Callable[..., Path]
RunCli = Callable[..., CliResult]


@pytest.fixture
def write(tmp_path: Path) -> WriteFile:
    """Write a file (dedented) under the test's folder and return its path."""

    def _write(text: str, name: str = "wf.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No aoe-related environment variables, and a working directory without .env."""
    from aoe.config.environment import (
        BUILTIN_KEY_VARIABLES,
        BUILTIN_URL_VARIABLES,
        ENVIRONMENT_VARIABLES,
    )

    for name in [
        *ENVIRONMENT_VARIABLES,
        *BUILTIN_KEY_VARIABLES.values(),
        *BUILTIN_URL_VARIABLES.values(),
        "AOE_CONFIG",
        "NO_COLOR",
    ]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def cli(clean_env: None) -> RunCli:
    """Run ``aoe`` in-process; stdout and stderr apart."""
    runner = CliRunner()

    def _run(*args: str | Path, env: dict[str, str] | None = None) -> CliResult:
        words = [str(a) for a in args]
        result = runner.invoke(app, words, env=env, catch_exceptions=False)
        if result.exit_code in (0, 1) and result.stdout.strip():
            _check_printed(words, result.stdout)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return _run


def _writes_results(words: list[str]) -> bool:
    return any(w in ("--output", "-o") and n == "-" for w, n in itertools.pairwise(words))


def _check_printed(words: list[str], printed: str) -> None:
    """What a command printed, if it is a results document or a list of runs."""
    json_asked = any(w in ("-f", "--format") and n == "json" for w, n in itertools.pairwise(words))
    plain_results = not {"-o", "--output", "--junit"} & {*words}
    if (
        (words[0] in ("run", "resume") and _writes_results(words))
        or (words[:2] == ["runs", "results"] and plain_results)
        or (words[:2] == ["runs", "show"] and json_asked)
    ):
        check_results(json.loads(printed))
    elif words[:2] == ["runs", "list"] and json_asked:
        check_listed(json.loads(printed))


def check_listed(runs: Any) -> None:
    """A list of runs (`aoe runs list -f json`, ``GET /api/v1/runs``), checked
    against the results schema's ``RunListed``."""
    from aoe.observe.resultschema import RunListed

    for run in runs:
        RunListed.model_validate(run)


def check_results(document: Any) -> None:
    """Every results document a test reads from `aoe run --output -`, `aoe runs
    show -f json` or `aoe runs results` is checked against the results schema
    (`results.schema.json`): a field added, renamed or of another type fails
    the test that met it."""
    from aoe.observe.resultschema import RunResults

    RunResults.model_validate(document)


# -- the fake provider server -------------------------------------------------------------


def child_env(*layers: Mapping[str, str], **extra: str) -> dict[str, str]:
    """The environment of an ``aoe`` child process: this one's without anything
    aoe reads (the machine's settings never leak into a test), then ``layers``
    and ``extra``, with this checkout on PYTHONPATH."""
    from aoe.config.environment import (
        BUILTIN_KEY_VARIABLES,
        BUILTIN_URL_VARIABLES,
        ENVIRONMENT_VARIABLES,
    )

    ours = {
        *ENVIRONMENT_VARIABLES,
        *BUILTIN_KEY_VARIABLES.values(),
        *BUILTIN_URL_VARIABLES.values(),
    }
    env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("AOE_")}
    for layer in layers:
        env.update(layer)
    env.update(extra, PYTHONPATH=str(REPO))
    return env


def fake_key(prefix: str = "sk-") -> str:
    """An API key shaped like the vendors' (so the scrubbing is tested on the real
    shape), made up afresh at each test session: no key-like text is committed."""
    return prefix + "test-" + secrets.token_hex(16)


OPENAI_KEY = fake_key()
ANTHROPIC_KEY = fake_key("sk-ant-")


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeProvider]:
    with FakeProvider() as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeProvider) -> FakeProvider:
    """The fake provider, fresh for this test."""
    fake_server.reset()
    return fake_server


@pytest.fixture
def provider_env(fake: FakeProvider) -> dict[str, str]:
    """Environment variables that point both SDKs at the fake server."""
    return {
        "OPENAI_API_KEY": OPENAI_KEY,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "OPENAI_BASE_URL": fake.openai_url,
        "ANTHROPIC_BASE_URL": fake.anthropic_url,
        # retries as configured, but quick: these tests talk to a real server in real time
        "RETRY_BASE_DELAY": "0.01",
        "RETRY_MAX_DELAY": "0.05",
    }


@pytest.fixture
def openai_env(provider_env: dict[str, str]) -> dict[str, str]:
    """:func:`provider_env` with the OpenAI key only: for an `aoe serve` whose
    runs use no Anthropic agent. A service makes the client of every provider
    whose key it has before it listens, and importing Anthropic's SDK costs
    about a second of CPU, at every start of a process."""
    return {k: v for k, v in provider_env.items() if not k.startswith("ANTHROPIC_")}


def promtool() -> str:
    """The path of Prometheus's promtool; a missing one skips the test, saying so
    (``-ra`` lists it), or fails it where AOE_REQUIRE_PROMTOOL is set (as in CI)."""
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("AOE_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is required here (AOE_REQUIRE_PROMTOOL is set) but missing")
        pytest.skip("promtool not installed: its checks did not run (apt-get install prometheus)")
    return found


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Until ``condition()`` holds (polled); fails the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


class Lines(list[str]):
    """The lines a process writes to its stderr, read by a thread as they come."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        super().__init__()
        assert process.stderr is not None
        self._stream = process.stderr
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._stream:
            for line in self._stream:
                self.append(line)

    def done(self) -> Lines:
        """Every line, once the process has ended (closed its stderr)."""
        self._thread.join(timeout=30)
        return self


def read_lines(process: subprocess.Popen[str]) -> Lines:
    """Read ``process``'s stderr (a text pipe) as it is written."""
    return Lines(process)


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """:func:`wait_for` in a coroutine: the event loop runs meanwhile."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.005)


@pytest.fixture(scope="session")
def session_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis for the session (for each xdist worker), emptied before each test
    that uses it (arq's way): starting one per test costs more than the test."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """The session's Redis, emptied; a test marked ``redis(own=True)`` (one that
    stops Redis and starts it again) gets one of its own, with an append-only
    file if ``persistent=True`` (so a restart keeps the data, as deployments run it)."""
    marker = request.node.get_closest_marker("redis")
    if marker is not None and marker.kwargs.get("own"):
        own = RedisServer(tmp_path, persistent=marker.kwargs.get("persistent", False))
        yield own
        own.stop()
        return
    server: RedisServer = request.getfixturevalue("session_redis")
    server.flush()
    yield server
    if server.process is None or server.process.poll() is not None:
        server.start()  # for the tests after this one
        raise AssertionError("a test that stops Redis needs @pytest.mark.redis(own=True)")


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of :func:`redis_server`."""
    return redis_server.url


# -- markers ------------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a Redis is marked ``redis`` (``-m "not redis"`` leaves them out)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if ("redis_server" in names or "redis_url" in names) and not item.get_closest_marker(
            "redis"
        ):
            item.add_marker(pytest.mark.redis)
