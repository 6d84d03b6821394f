"""`aoe run` through the official SDKs, over real HTTP, against the fake provider."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from tests.conftest import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    REPO,
    WORKFLOWS,
    RunCli,
    WriteFile,
)
from tests.events import attempt_finished
from tests.fakeserver import Drop, Fail, FakeProvider, Reply

TWO_STEPS = """\
version: 1
name: two-steps
inputs:
  topic: {type: string, default: tides}
agents:
  draft:
    system: You are terse.
    prompt: Write about {{ inputs.topic }}.
    llm: {provider: openai, model: gpt-4o-mini, max_tokens: 50, temperature: 0.3, top_p: 0.9,
          stop: [END], seed: 7, params: {presence_penalty: 0.5}}
  polish:
    depends_on: draft
    system: You are an editor.
    prompt: "Polish this: {{ agents.draft.output }}"
    llm: {provider: anthropic, model: claude-haiku-4-5, max_tokens: 60, temperature: 0.1,
          stop: [STOP]}
outputs:
  final: "{{ agents.polish.output }}"
"""


def run(cli: RunCli, env: dict[str, str], *args: Any) -> tuple[int, dict[str, Any], str]:
    """``aoe run ... --output -``: exit code, the results document, stderr."""
    result = cli("run", *args, "--output", "-", env=env)
    document = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, document, result.stderr


def test_prompts_parameters_and_usage_reach_the_providers(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    fake.script(
        Reply(text="Tides rise twice a day.", input_tokens=31, output_tokens=7),
        Reply(text="Tides rise, twice daily.", input_tokens=44, output_tokens=6),
    )
    code, results, stderr = run(cli, provider_env, write(TWO_STEPS), "-i", "topic=tides")
    assert code == 0, stderr
    draft, polish = fake.received
    assert (draft.api, draft.model) == ("openai", "gpt-4o-mini")
    assert draft.body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Write about tides."},
    ]
    # the limit as an OpenAI-compatible server reads it (this one is not api.openai.com)
    assert draft.body["max_tokens"] == 50
    assert "max_completion_tokens" not in draft.body
    # streamed, with the usage asked for at the end
    assert draft.body["stream"] is True
    assert draft.body["stream_options"] == {"include_usage": True}
    assert (draft.body["temperature"], draft.body["top_p"], draft.body["seed"]) == (0.3, 0.9, 7)
    assert draft.body["stop"] == ["END"]
    assert draft.body["presence_penalty"] == 0.5  # params pass through unchanged
    assert draft.headers["authorization"] == f"Bearer {OPENAI_KEY}"

    assert (polish.api, polish.model) == ("anthropic", "claude-haiku-4-5")
    assert polish.body["system"] == "You are an editor."
    assert polish.body["messages"] == [
        {"role": "user", "content": "Polish this: Tides rise twice a day."}
    ]
    assert (polish.body["max_tokens"], polish.body["temperature"]) == (60, 0.1)
    assert polish.body["stream"] is True
    assert polish.body["stop_sequences"] == ["STOP"]
    # the SDK sends the key as x-api-key or (from 2.x) as a bearer token
    assert ANTHROPIC_KEY in (
        polish.headers.get("x-api-key"),
        polish.headers.get("authorization", "")[7:],
    )

    assert results["status"] == "completed"
    assert results["outputs"] == {"final": "Tides rise, twice daily."}
    agents = results["agents"]
    assert agents["draft"]["usage"] == {"input_tokens": 31, "output_tokens": 7}
    assert agents["polish"]["usage"] == {"input_tokens": 44, "output_tokens": 6}
    assert results["usage"] == {"input_tokens": 75, "output_tokens": 13}
    # priced from the table: gpt-4o-mini $0.15/$0.60, claude-haiku-4-5 $1/$5 per 1M tokens
    expected = (31 * 0.00015 + 7 * 0.0006 + 44 * 0.001 + 6 * 0.005) / 1000
    assert results["cost_usd"] == round(expected, 6)  # to the micro-dollar
    assert agents["polish"]["answered_by"] == {"provider": "anthropic", "model": "claude-haiku-4-5"}
    attempt = agents["draft"]["attempts"][0]
    assert attempt["status"] == "ok"
    assert attempt["duration_seconds"] >= 0
    assert results["inputs"] == {"topic": "tides"}


JSON_AGENT = """\
version: 1
name: json-out
agents:
  extract:
    prompt: Extract the facts.
    llm: {{provider: {provider}, model: {model}}}
    output:
      format: json
      schema:
        type: object
        required: [title, score]
        properties:
          title: {{type: string}}
          score: {{type: number, minimum: 0}}
"""


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5")],
)
def test_json_output_is_asked_for_parsed_and_validated(
    cli: RunCli,
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    provider: str,
    model: str,
) -> None:
    path = write(JSON_AGENT.format(provider=provider, model=model))
    fake.script(Reply(text='```json\n{"title": "Tides", "score": 4.5}\n```'))
    code, results, stderr = run(cli, provider_env, path)
    assert code == 0, stderr
    assert results["agents"]["extract"]["output"] == {"title": "Tides", "score": 4.5}
    [request] = fake.received
    if provider == "openai":
        assert request.body["response_format"]["type"] == "json_schema"
        assert request.body["response_format"]["json_schema"]["schema"]["required"] == [
            "title",
            "score",
        ]
    else:
        assert request.body["output_config"]["format"]["type"] == "json_schema"
    assert "JSON" in (request.system or "")

    once = {**provider_env, "MAX_RETRIES": "0"}
    fake.script(Reply(json={"title": "Tides", "score": -1}))
    code, results, _ = run(cli, once, path, "--no-cache")  # the valid answer is cached
    assert code == 1
    agent = results["agents"]["extract"]
    assert agent["state"] == "failed"
    assert "does not match the output schema" in agent["error"]
    assert "-1 is less than the minimum of 0" in agent["error"]

    fake.script(Reply(text="Sure! Here it is: title Tides"))
    code, results, _ = run(cli, once, path, "--no-cache")
    assert code == 1
    assert "the reply is not valid JSON" in results["agents"]["extract"]["error"]


@pytest.mark.parametrize(
    ("failure", "state", "words"),
    [
        pytest.param(
            Fail(400, "max_tokens is too large"),
            "failed",
            "HTTP 400: max_tokens is too large",
            id="400",
        ),
        pytest.param(Fail(401, "invalid x-api-key"), "failed", "HTTP 401", id="401"),
        pytest.param(Fail(404, "model not found"), "failed", "HTTP 404: model not found", id="404"),
        pytest.param(Fail(429, "slow down", retry_after=30), "rate_limited", "HTTP 429", id="429"),
        pytest.param(Fail(500, "boom"), "failed", "HTTP 500", id="500"),
        pytest.param(Fail(529, "overloaded"), "failed", "HTTP 529", id="529"),
        pytest.param(Drop(), "failed", "cannot reach", id="dropped"),
    ],
)
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_provider_errors_fail_the_agent_with_the_providers_message(
    cli: RunCli,
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    provider: str,
    failure: Any,
    state: str,
    words: str,
) -> None:
    model = "gpt-4o-mini" if provider == "openai" else "claude-haiku-4-5"
    path = write(
        f"version: 1\nname: x\nagents:\n  a:\n    prompt: hi\n"
        f"    llm: {{provider: {provider}, model: {model}}}\n"
    )
    fake.script(failure)
    code, results, stderr = run(cli, {**provider_env, "MAX_RETRIES": "0"}, path)
    assert code == 1, stderr
    agent = results["agents"]["a"]
    assert agent["state"] == state
    assert words in agent["error"], agent["error"]
    assert len(fake.received) == 1  # the SDK made no retries of its own
    assert OPENAI_KEY not in json.dumps(results) + stderr
    assert ANTHROPIC_KEY not in json.dumps(results) + stderr


def test_attempt_timeout(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    path = write(
        "version: 1\nname: x\nagents:\n  a:\n    prompt: hi\n    timeout: 0.2\n"
        "    retry: {max_retries: 1}\n    llm: {model: gpt-4o-mini}\n"
    )
    fake.respond = lambda request: Reply(text="late", delay=1.0)
    code, results, _ = run(cli, provider_env, path)
    assert code == 1
    agent = results["agents"]["a"]
    assert agent["error"] == "no answer within the timeout of 0.2 s"
    assert [a["error_kind"] for a in agent["attempts"]] == ["AttemptTimeout"] * 2
    # no answer came: the provider may have billed it, so it is charged as reserved
    reserved = sum(a["reserved_usd"] for a in agent["attempts"])
    assert agent["cost_usd"] == pytest.approx(reserved, abs=1.01e-6)  # (micro-dollars)


def test_missing_api_key_is_exit_2_before_any_call(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    env = {**provider_env, "ANTHROPIC_API_KEY": ""}
    result = cli("run", write(TWO_STEPS), env=env)
    assert result.exit_code == 2
    assert "no API key for provider 'anthropic': set ANTHROPIC_API_KEY" in result.stderr
    assert "--mock" in result.stderr
    assert fake.received == []
    assert cli("run", write(TWO_STEPS), "--mock", env=env).exit_code == 0


def test_named_compatible_provider(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    config = write(
        f"providers:\n  local:\n    base_url: {fake.openai_url}\n    api_key_env: LOCAL_KEY\n"
        "    default_price: {input: 0, output: 0}\n",
        "engine.yaml",
    )
    path = write(
        "version: 1\nname: x\nagents:\n  a:\n    prompt: hi\n"
        "    llm: {provider: local, model: llama3.1, max_tokens: 9}\n"
    )
    missing = cli("run", path, "--config", config, env=provider_env)
    assert missing.exit_code == 2
    assert "set LOCAL_KEY" in missing.stderr
    code, results, _ = run(
        cli, {**provider_env, "LOCAL_KEY": "local-secret"}, path, "--config", config
    )
    assert code == 0
    [request] = fake.received
    assert request.body["max_tokens"] == 9  # compatible servers get max_tokens
    assert request.headers["authorization"] == "Bearer local-secret"
    assert results["cost_usd"] == 0


def test_exit_codes(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    path = write(
        "version: 1\nname: x\nagents:\n  a:\n    prompt: hi\n    llm: {model: gpt-4o-mini}\n"
    )
    assert cli("run", path, env=provider_env).exit_code == 0
    fake.script(Fail(400, "no"))
    assert cli("run", path, "--no-cache", env=provider_env).exit_code == 1
    assert cli("run", write("version: 1\n", "bad.yaml"), env=provider_env).exit_code == 2
    assert cli("run", path, "-i", "nope=1", env=provider_env).exit_code == 2


def test_a_run_in_which_no_agent_completed_failed_even_if_partial_is_allowed(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    path = write(
        "version: 1\nname: none\nallow_partial_completion: true\nagents:\n"
        "  a: {prompt: fail me, llm: {model: gpt-4o-mini}}\n"
        "  b: {prompt: fail me, llm: {model: gpt-4o-mini}}\n"
        "  c: {prompt: hi, depends_on: [a, b], llm: {model: gpt-4o-mini}}\n"
    )
    fake.respond = lambda request: Fail(400, "nope")
    result = cli("run", path, "--output", "-", env=provider_env)
    assert result.exit_code == 1, result.stderr
    results = json.loads(result.stdout)
    assert results["status"] == "failed"
    states = {name: agent["state"] for name, agent in results["agents"].items()}
    assert states == {"a": "failed", "b": "failed", "c": "skipped"}


def test_results_junit_and_plain_progress(
    cli: RunCli,
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    tmp_path: Path,
) -> None:
    path = write(
        "version: 1\nname: mixed\nallow_partial_completion: true\nagents:\n"
        "  good: {prompt: hi, llm: {model: gpt-4o-mini}}\n"
        "  bad: {prompt: fail me, llm: {model: gpt-4o-mini}}\n"
        "  after_bad: {prompt: hi, depends_on: bad, llm: {model: gpt-4o-mini}}\n"
    )
    fake.respond = lambda request: Fail(400, "nope") if request.prompt == "fail me" else Reply()
    out, junit = tmp_path / "results.json", tmp_path / "junit.xml"
    result = cli(
        "run", path, "--output", out, "--junit", junit, "--max-parallel", "1", env=provider_env
    )
    assert result.exit_code == 0  # partial, and partial completion is allowed
    results = json.loads(out.read_text())
    assert results["status"] == "partial"
    states = {name: agent["state"] for name, agent in results["agents"].items()}
    assert states == {"good": "completed", "bad": "failed", "after_bad": "skipped"}
    suite = ElementTree.fromstring(junit.read_text())
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert cases["bad"].find("failure") is not None
    assert "HTTP 400: nope" in (cases["bad"].find("failure").get("message") or "")  # type: ignore[union-attr]
    assert cases["after_bad"].find("skipped") is not None
    # not a terminal: one plain line per event on stderr, no escape codes
    assert "\x1b[" not in result.stderr
    lines = result.stderr.splitlines()
    assert any(
        " bad: failed" in line and line.endswith("openai answered HTTP 400: nope") for line in lines
    )
    assert any("good: attempt 1 answered in" in line for line in lines)
    assert "run " in lines[0]
    assert "mixed started, 3 agents, up to 1 at once" in lines[0]
    assert result.stdout == ""


def test_json_log_lines(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    result = cli("run", write(TWO_STEPS), "--log-format", "json", env=provider_env)
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"timestamp", "level", "message", "module", "run_id"} <= set(records[0])
    kinds = [r["event"] for r in records]
    assert kinds[0] == "RunStarted"
    assert kinds[-1] == "RunFinished"
    attempts = [r for r in records if r["event"] == "AttemptFinished"]
    assert [(r["agent_id"], r["attempt"]) for r in attempts] == [("draft", 1), ("polish", 1)]
    assert OPENAI_KEY not in result.stderr


def test_quiet_prints_nothing_on_success(
    cli: RunCli, write: WriteFile, provider_env: dict[str, str]
) -> None:
    result = cli("run", write(TWO_STEPS), "--quiet", env=provider_env)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_runs_with_mock(cli: RunCli, path: Path, fake: FakeProvider) -> None:
    inputs = {
        "code-review": ["-i", "title=Fix", "-i", "files=[{path: a.py, diff: '+x'}]"],
        "support-triage": ["-i", "ticket=I was charged twice"],
        "translation": ["-i", "notes=# 1.0\nFirst release."],
    }.get(path.stem, [])
    result = cli("run", path, "--mock", *inputs, "--output", "-", env={})
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["status"] == "completed"
    assert fake.received == []  # --mock calls nothing
    assert document["cost_usd"] > 0  # priced like the models the agents name


# -- interruption, in a real process -------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.slow
@pytest.mark.subprocess
def test_signal_cancels_cleanly(
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    tmp_path: Path,
    sig: signal.Signals,
) -> None:
    path = write(
        "version: 1\nname: slow\nagents:\n"
        "  a: {prompt: one, llm: {model: gpt-4o-mini}}\n"
        "  b: {prompt: two, llm: {model: gpt-4o-mini}}\n"
        "  c: {prompt: three, depends_on: [a, b], llm: {model: gpt-4o-mini}}\n"
    )
    fake.respond = lambda request: Reply(delay=5.0)
    out = tmp_path / "results.json"
    env = {**os.environ, **provider_env, "PYTHONWARNINGS": "default", "NO_COLOR": "1"}
    process = subprocess.Popen(
        [sys.executable, "-X", "dev", "-m", "aoe", "run", str(path), "--output", str(out)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while len(fake.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(fake.received) == 2
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "was destroyed" not in stderr
    assert "never awaited" not in stderr
    assert "Unclosed" not in stderr
    assert "ResourceWarning" not in stderr
    results = json.loads(out.read_text())
    assert results["status"] == "cancelled"
    assert {a["state"] for a in results["agents"].values()} == {"cancelled"}
    assert len(fake.received) == 2  # c never started
    assert REPO.exists()
    assert stdout == ""


def test_inputs_file_and_options_together(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    inputs = write('{"topic": "rivers"}', "inputs.json")
    code, _, _ = run(cli, provider_env, write(TWO_STEPS), "--inputs-file", inputs)
    assert code == 0
    assert fake.received[0].prompt == "Write about rivers."
    # -i wins over the file
    fake.reset()
    code, _results, _ = run(
        cli, provider_env, write(TWO_STEPS), "--inputs-file", inputs, "-i", "topic=lakes"
    )
    assert fake.received[0].prompt == "Write about lakes."


@pytest.mark.subprocess
def test_mock_runs_import_no_vendor_sdk(write: WriteFile, tmp_path: Path) -> None:
    path = write(TWO_STEPS)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "aoe", "run", str(path), "--mock", "--quiet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert "openai" not in imported
    assert "anthropic" not in imported


def test_live_view_renders_rows_progress_and_spend() -> None:
    from io import StringIO

    from aoe.cli.ui.live import LiveView
    from aoe.cli.ui.text import console
    from aoe.events import AgentFinished, AgentStarted, AgentState, RunStarted
    from aoe.service.runner import load
    from aoe.types import Usage

    workflow = load(WORKFLOWS / "competitor-brief.yaml")
    buffer = StringIO()
    view = LiveView(workflow, console(buffer, width=120), budget=5.0)
    view(AgentStarted(run_id="r", at=0.0, agent_id="research"))
    view(attempt_finished(agent_id="research", duration=1.5, usage=Usage(1200, 300), cost=0.00036))
    view(
        AgentFinished(
            run_id="r",
            at=0.0,
            agent_id="research",
            state=AgentState.COMPLETED,
            duration=1.5,
            usage=Usage(1200, 300),
            cost=0.00036,
            attempts=1,
        )
    )
    view(AgentStarted(run_id="r", at=0.0, agent_id="competitors"))
    view.summary()
    text = buffer.getvalue()
    research = next(line for line in text.splitlines() if line.startswith("research"))
    assert research.split() == [
        "research",
        "completed",
        "openai/gpt-4o-mini",
        "1",
        "1,500",
        "$0.00036",
        "1.5",
        "s",
    ]
    assert "competitors" in text
    assert "running" in text
    header = view.header()
    assert "1/3 completed, 1 running" in header
    assert "1,500 tokens" in header
    assert "$0.00036 of $5.00" in header
    # the run's id and time once it started; after Ctrl-C, what never ran is not "done"
    view(
        RunStarted(
            run_id="20261205-101500-3fa2c1",
            at=0.0,
            workflow="w",
            agents=3,
            max_parallel=4,
            budget=5.0,
        )
    )
    for agent_id in ("competitors", "brief"):
        view(
            AgentFinished(
                run_id="r",
                at=0.0,
                agent_id=agent_id,
                state=AgentState.CANCELLED,
                duration=0.0,
                usage=Usage(),
                cost=0.0,
                attempts=0,
            )
        )
    header = view.header()
    assert "20261205-101500-3fa2c1" in header
    assert "1/3 completed, 2 cancelled" in header
    assert " s  ·  " in header  # the time it has taken


def test_live_view_honours_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    from io import StringIO

    from rich.console import Console

    from aoe.cli.ui.live import LiveView
    from aoe.events import AgentFinished, AgentState
    from aoe.service.runner import load
    from aoe.types import Usage

    workflow = load(WORKFLOWS / "competitor-brief.yaml")
    for no_color, coloured in (("1", False), (None, True)):
        if no_color:
            monkeypatch.setenv("NO_COLOR", no_color)
        else:
            monkeypatch.delenv("NO_COLOR", raising=False)
        buffer = StringIO()
        view = LiveView(workflow, Console(file=buffer, force_terminal=True, width=120))
        view(
            AgentFinished(
                run_id="r",
                at=0.0,
                agent_id="research",
                state=AgentState.FAILED,
                duration=1.0,
                usage=Usage(),
                cost=0.0,
                attempts=1,
            )
        )
        view.summary()
        assert ("\x1b[31m" in buffer.getvalue() or "\x1b[1;31m" in buffer.getvalue()) == coloured


@pytest.mark.parametrize("option", ["--output", "--junit"])
def test_a_results_file_that_cannot_be_written_is_refused_before_any_call(
    cli: RunCli,
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    tmp_path: Path,
    option: str,
) -> None:
    """`-o /missing/dir/out.json` was found out after the paid run, then exit 2
    ("bad usage") for a run that had completed."""
    path = write("version: 1\nname: w\nagents:\n  a: {prompt: hi, llm: {model: gpt-4o-mini}}\n")
    missing = tmp_path / "missing" / "out.json"
    result = cli("run", path, option, missing, env=provider_env)
    assert result.exit_code == 2
    assert f"{option} {missing}: the folder {missing.parent} is not there" in result.stderr
    result = cli("run", path, option, tmp_path, env=provider_env)
    assert result.exit_code == 2
    assert "that is a folder" in result.stderr
    assert fake.received == []
    assert "no runs recorded yet" in cli("runs", "list").stderr


def test_the_live_view_keeps_agents_apart_at_80_columns_and_rows_in_place() -> None:
    """Issue 16: at 80 columns seven agents all read `report_section_…` and
    `openai/gpt-4o-…` hid which model; rows jumped as states changed; a
    foreach agent showed attempts, not items."""
    from io import StringIO

    from aoe.cli.ui.live import LiveView, _shortened
    from aoe.cli.ui.text import console
    from aoe.events import AgentStarted
    from aoe.service.runner import load_text

    agents = "".join(
        f"  report_section_{i}_{'detail' if i % 2 else 'summary'}: {{prompt: 's{i}',"
        " llm: {provider: openai, model: gpt-4o-mini, max_tokens: 9}}\n"
        for i in range(1, 8)
    )
    each = "  each: {prompt: 'x', foreach: '[1, 2, 3]', llm: {model: gpt-4o, max_tokens: 9}}\n"
    workflow = load_text(f"version: 1\nname: report\nagents:\n{agents}{each}", "wf.yaml")
    buffer = StringIO()
    view = LiveView(workflow, console(buffer, width=80))
    before = [line.split()[0] for line in _rows(view)]
    view(AgentStarted(run_id="r", at=0.0, agent_id="each", items=3))
    view(AgentStarted(run_id="r", at=0.0, agent_id="report_section_7_detail"))
    for item in (0, 1):
        view(attempt_finished(agent_id="each", item=item, model="gpt-4o"))
    rows = _rows(view)
    assert [line.split()[0] for line in rows] == before  # in place, running or not
    names = [line.split()[0] for line in rows[:7]]
    assert len(set(names)) == 7  # apart
    assert names[0] == "…1_detail"
    assert all("gpt-4o-mini" in line and "openai/" not in line for line in rows[:7])
    assert "running 2/3" in rows[7]
    assert all(len(line) <= 80 for line in rows)
    assert _shortened("a_very_long_agent_name_indeed", 12) == "a_ver…indeed"


def _rows(view: Any) -> list[str]:
    from io import StringIO

    from aoe.cli.ui.text import console

    buffer = StringIO()
    console(buffer, width=80).print(view.table())
    return buffer.getvalue().splitlines()[1:]


def test_mock_limits_rehearses_and_is_kept_for_a_resume(
    cli: RunCli, write: WriteFile, tmp_path: Path
) -> None:
    path = write(
        "version: 1\nname: r\nagents:\n"
        "  a: {prompt: hi, llm: {provider: openai, model: gpt-4o-mini}}\n"
    )
    refused = cli("run", str(path), "--mock-limits")
    assert refused.exit_code == 2
    assert "give --mock too" in refused.stderr
    done = cli("run", str(path), "--mock", "--mock-limits", "-q", "-o", "-")
    assert done.exit_code == 0, done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    from aoe.state.store import Store

    with Store(tmp_path / ".aoe" / "state.db") as store:
        shown = store.run(run_id).settings
    assert shown["mock_limits"] is True  # the record keeps it: a resume rehearses alike


def test_an_output_that_reads_an_agent_that_did_not_complete_is_not_rendered(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """issue 16: `final: "{{ agents.b.output }}"` of a run whose b failed read
    "None", as if that were the answer. It is not rendered, and says why; an
    output that looks at the agent's status says what it likes."""
    fake.respond = lambda r: Fail(400, "b is refused") if r.prompt.startswith("b") else Reply()
    path = write(
        """\
        version: 1
        name: o
        allow_partial_completion: true
        defaults: {llm: {provider: openai, model: gpt-4o-mini}}
        agents:
          a: {prompt: "a"}
          b: {prompt: "b"}
        outputs:
          final: "{{ agents.b.output }} and {{ agents.b.output }}"
          first: "{{ agents.a.output }}"
          either: >-
            {% if agents.b.status == 'completed' %}{{ agents.b.output }}{% else %}none{% endif %}
        """
    )
    result = cli("run", str(path), "-o", "-", "-q", env=provider_env)
    document = json.loads(result.stdout)
    assert document["outputs"]["final"] is None
    assert document["output_errors"]["final"] == (
        "not rendered: it reads agents.b.output, and b failed"
    )
    assert document["outputs"]["first"].startswith("fake answer to: a")
    assert document["outputs"]["either"] == "none"
    assert set(document["output_errors"]) == {"final"}
