"""Shared fixtures: workflow files in a temporary folder, and the CLI in-process."""

from __future__ import annotations

import os
import secrets
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

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
        result = runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return _run


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


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Until ``condition()`` holds (polled); fails the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may stop and start."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """The Redis that .ci/run started (AOE_TEST_REDIS_URL), else one of our own;
    a test on it keeps to keys of its own."""
    shared = os.environ.get("AOE_TEST_REDIS_URL")
    if shared:
        yield shared
        return
    server = RedisServer(tmp_path)
    yield server.url
    server.stop()
