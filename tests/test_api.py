"""The Python API (``import aoe``): runs, the engine, its config built in code,
and the README's "From Python" blocks, run as they are written."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import aoe
from tests.conftest import REPO, WORKFLOWS, WriteFile, child_env

EXAMPLE = WORKFLOWS / "competitor-brief.yaml"

MOCK_WORKFLOW = """\
version: 1
name: mocked
inputs:
  topic: {type: string}
  count: {type: integer, default: 2}
defaults:
  llm: {provider: mock, model: gpt-4o-mini}
agents:
  first:
    prompt: "Say {{ inputs.count }} things about {{ inputs.topic }}."
  second:
    depends_on: [first]
    prompt: "Improve: {{ agents.first.output }}"
outputs:
  answer: "{{ agents.second.output }}"
"""


def test_the_surface_is_declared_and_lazy() -> None:
    assert set(aoe.__all__) == {"__version__", *aoe._HOMES}
    for name in aoe.__all__:
        assert getattr(aoe, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        aoe.nothing  # noqa: B018
    # what `aoe --help` pays for: none of the API's modules
    code = "import sys, aoe; print(sorted(m for m in sys.modules if m.startswith('aoe')))"
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=True
    )
    assert shown.stdout.strip() == "['aoe']"


def test_sync_run_binds_the_inputs_of_the_example(tmp_path: Path) -> None:
    """The example declares max_items with a default: given nothing, the run binds
    it (once it ended failed with "'dict object' has no attribute 'max_items'")."""
    result = aoe.run(EXAMPLE, {}, environ={}, mock=True)
    assert result.status is aoe.RunStatus.COMPLETED, result.reason
    assert result.reason is None
    assert result.ok
    assert result.inputs == {"topic": "electric bikes", "max_items": 5, "region": "Europe"}
    assert set(result.outputs) == {"summary"}
    assert result.cost == pytest.approx(sum(a.cost for a in result.agents.values()))
    research = result.agents["research"]
    assert research.state is aoe.AgentState.COMPLETED
    assert research.attempts == 1
    assert research.input_tokens > 0
    assert research.output_tokens > 0
    assert result.duration is not None
    assert result.run_id


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        pytest.param({"max_items": "five"}, "input 'max_items' must be an integer", id="type"),
        pytest.param({"topics": "x"}, "no input 'topics'; did you mean 'topic'", id="undeclared"),
    ],
)
def test_bad_inputs_are_refused_before_the_run(inputs: dict[str, str], message: str) -> None:
    with pytest.raises(aoe.InputsInvalid, match=re.escape(message)) as caught:
        aoe.run(EXAMPLE, inputs, environ={}, mock=True)
    assert caught.value.exit_code == 2


def test_a_required_input_left_out(write: WriteFile) -> None:
    with pytest.raises(aoe.InputsInvalid, match="input 'topic' is required"):
        aoe.run(write(MOCK_WORKFLOW), environ={})


def test_budget_stop_is_a_result_with_its_reason() -> None:
    result = aoe.run(EXAMPLE, environ={}, mock=True, budget=0.0)
    assert result.status is aoe.RunStatus.BUDGET_EXCEEDED
    assert not result.ok
    assert result.reason is not None
    assert "cost_budget" in result.reason
    assert result.budget == 0.0
    assert result.cost == 0.0


async def test_a_sync_run_inside_a_running_loop_says_to_await(write: WriteFile) -> None:
    with pytest.raises(RuntimeError, match=r"await engine\.run"):
        aoe.run(write(MOCK_WORKFLOW), {"topic": "x"}, environ={}, mock=True)


async def test_a_run_that_never_started_is_not_kept(write: WriteFile, tmp_path: Path) -> None:
    async with aoe.Engine(environ={}, cwd=tmp_path) as engine:
        keyless = MOCK_WORKFLOW.replace("provider: mock", "provider: openai")
        with pytest.raises(aoe.MissingApiKey):  # refused inside the runner, before it starts
            await engine.run(write(keyless), {"topic": "x"}, run_id="never")
        with pytest.raises(aoe.RunNotFound):
            engine.run_status("never")


def test_a_misspelled_option_names_the_options(write: WriteFile, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"no 'budgt'; its options are mock, mock_limits, budget"):
        aoe.run(write(MOCK_WORKFLOW), {"topic": "x"}, environ={}, cwd=tmp_path, budgt=2.0)
    settings = aoe.load_settings(environ={}, cwd=str(tmp_path))
    with pytest.raises(TypeError, match="environ and cwd"):
        aoe.Engine(settings, environ={})


def test_dir_lists_the_surface_only() -> None:
    assert dir(aoe) == sorted(aoe.__all__)


def test_the_result_is_the_cli_results_document(
    write: WriteFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The figures are the results JSON's, not worked out again."""
    import json

    monkeypatch.chdir(tmp_path)  # its run store there, not in the checkout

    from typer.testing import CliRunner

    from aoe.cli.app import app

    path = write(MOCK_WORKFLOW)
    out = tmp_path / "results.json"
    invoked = CliRunner().invoke(
        app, ["run", str(path), "-i", "topic=tides", "--output", str(out), "--quiet"]
    )
    assert invoked.exit_code == 0, invoked.output
    document = json.loads(out.read_text())
    result = aoe.RunResult.from_document(document)
    assert result.cost == document["cost_usd"]
    assert result.outputs == document["outputs"]
    assert {a: r.cost for a, r in result.agents.items()} == {
        a: d["cost_usd"] for a, d in document["agents"].items()
    }


async def test_engine_runs_share_it_and_report(write: WriteFile, tmp_path: Path) -> None:
    config = aoe.EngineConfig(
        engine=aoe.EngineSection(max_concurrent_workflows=3),
        rate_limiting=aoe.RateLimitingSection(requests_per_minute=600),
    )
    async with aoe.Engine(config, environ={}, cwd=tmp_path) as engine:
        assert engine.settings.config.engine.max_concurrent_workflows == 3
        workflow = engine.load(write(MOCK_WORKFLOW))
        results = await asyncio.gather(
            *(engine.run(workflow, {"topic": t}, aoe.RunOptions(max_parallel=1)) for t in "ab")
        )
        assert [r.status for r in results] == [aoe.RunStatus.COMPLETED] * 2
        first = results[0]
        assert first.run_id is not None
        assert engine.run_status(first.run_id).outputs == first.outputs
        status = engine.status()
        assert status.health == "healthy", status.reason
        assert status.active_runs == 0
        assert status.max_concurrent_workflows == 3
        assert status.finished == {aoe.RunStatus.COMPLETED: 2}
        assert status.figures["calls"] == 4
        mine = engine.events(first.run_id, last=1000)
        assert {e.run_id for e in mine} == {first.run_id}
        assert type(mine[0]).__name__ == "RunStarted"
        done = engine.events(kind="agent_completed", last=3)
        assert len(done) == 3
        assert all(type(e).__name__ == "AgentFinished" for e in done)
        assert engine.events(kind="run_completed", last=50)[-1].run_id == results[-1].run_id
        assert engine.events(kind="agent_failed") == []
        with pytest.raises(aoe.RunNotFound):
            engine.run_status("20990101-000000-000000")


async def test_failed_agents_are_found_by_kind(write: WriteFile, tmp_path: Path) -> None:
    failing = MOCK_WORKFLOW.replace(  # a reply that is not the JSON asked for
        "  first:\n",
        "  first:\n    llm: {params: {reply: not json}}\n    retry: {max_retries: 0}\n"
        "    output: {format: json, schema: {type: object}}\n",
    )
    async with aoe.Engine(environ={}, cwd=tmp_path) as engine:
        result = await engine.run(write(failing), {"topic": "x"})
    assert result.status is aoe.RunStatus.FAILED
    [failed] = engine.events(kind="agent_failed")
    assert failed.agent_id == "first"  # type: ignore[attr-defined]
    assert result.reason is not None
    assert result.reason.startswith("first: ")


async def test_with_a_state_dir_runs_are_recorded(write: WriteFile, tmp_path: Path) -> None:
    from aoe.state.schema import FILE_NAME
    from aoe.state.store import Store

    async with aoe.Engine(environ={}, cwd=tmp_path, state_dir=tmp_path / "state") as engine:
        result = await engine.run(write(MOCK_WORKFLOW), {"topic": "x"}, mock=True)
    assert result.run_id is not None
    store = Store(tmp_path / "state" / FILE_NAME)
    try:
        assert store.run(result.run_id).status == "completed"
    finally:
        store.close()


def test_config_built_in_code_goes_under_the_environment(tmp_path: Path) -> None:
    """The same precedence as a file: environment over code over defaults, and the
    same validation, located at the variable."""
    config = aoe.EngineConfig(
        rate_limiting=aoe.RateLimitingSection(requests_per_minute=60, requests_per_hour=100),
        retry_policy=aoe.RetryPolicySection(max_retries=5, max_delay=120.0),
    )
    settings = aoe.load_settings(config=config, environ={"RATE_LIMIT_RPM": "30"}, cwd=tmp_path)
    limits = settings.config.rate_limiting
    assert (limits.requests_per_minute, limits.requests_per_hour) == (30, 100)
    assert limits.tokens_per_minute == 100000  # the default: not set in code
    assert settings.config.retry_policy.max_retries == 5
    sources = {s.key: s.source for s in settings.settings()}
    assert sources["rate_limiting.requests_per_minute"] == "env RATE_LIMIT_RPM"
    assert sources["rate_limiting.requests_per_hour"] == "code"
    assert sources["retry_policy.max_retries"] == "code"
    with pytest.raises(aoe.ConfigInvalid, match="RATE_LIMIT_RPM='0'"):
        aoe.Engine(config, environ={"RATE_LIMIT_RPM": "0"}, cwd=tmp_path)
    with pytest.raises(ValueError, match="not both"):
        aoe.load_settings("x.yaml", config=config, environ={})


def test_a_config_model_refuses_bad_values_in_code() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_delay"):
        aoe.RetryPolicySection(base_delay=10.0, max_delay=1.0)


def test_readme_python_blocks_run(tmp_path: Path) -> None:
    """The README's "From Python" blocks, in order, offline; their asserts hold."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    shutil.copytree(WORKFLOWS, tmp_path / "workflows")
    for number, block in enumerate(blocks, start=1):
        script = tmp_path / f"block{number}.py"
        script.write_text(block, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=120,
        )
        assert done.returncode == 0, f"block {number}:\n{block}\n{done.stderr}"
    assert not (tmp_path / ".aoe").exists()  # no state_dir: nothing written
