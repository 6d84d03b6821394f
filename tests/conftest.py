"""Shared fixtures: workflow files in a temporary folder, and the CLI in-process."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aoe.cli import app

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
    from aoe.config import BUILTIN_KEY_VARIABLES, BUILTIN_URL_VARIABLES, ENVIRONMENT_VARIABLES

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
