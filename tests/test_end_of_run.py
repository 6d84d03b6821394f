"""The end of a run, where the person is looking (issue 16).

A failed or budget-stopped run said neither why nor which run; the answer never
reached the terminal; `-q` printed nothing for a partial run with a failed
agent. The summary is a function of the results document (tested here as
text), and `aoe run` prints it (tested through the CLI); `aoe runs output`
prints a stored output raw, for pipes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from aoe.cli.ui.summary import FOLDED_LINES, end_of_run
from tests.conftest import RunCli, WriteFile
from tests.fakeserver import Fail, FakeProvider, Reply

WORKFLOW = """\
version: 1
name: brief
allow_partial_completion: true
agents:
  research: {prompt: research it, llm: {model: gpt-4o-mini, max_tokens: 400}}
  draft: {prompt: "draft {{ agents.research.output }}", depends_on: research,
          llm: {model: gpt-4o-mini, max_tokens: 400}}
  extra: {prompt: fail me, llm: {model: gpt-4o-mini, max_tokens: 50}}
"""


def document(status: str = "completed", **agents: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": "20261205-101500-3fa2c1",
        "status": status,
        "duration_seconds": 12.34,
        "usage": {"input_tokens": 1000, "output_tokens": 234},
        "cost_usd": 0.0123,
        "cost_budget_usd": 1.0,
        "outputs": {},
        "output_errors": {},
        "agents": agents
        or {"a": {"state": "completed", "output": "the answer", "error": None, "attempts": [{}]}},
    }


def test_a_completed_run_shows_its_answer_and_one_line() -> None:
    text = end_of_run(document(), ["a"], resume="aoe resume R", outputs=True, width=80)
    assert text.splitlines() == [
        "── outputs " + "─" * 69,
        "a:",
        "  the answer",
        "aoe: run 20261205-101500-3fa2c1 completed in 12.3 s · 1/1 agents completed ·",
        "  1,234 tokens · $0.0123 of $1.00",
    ]
    # without a terminal (or with -q): no outputs, the one line
    text = end_of_run(document(), ["a"], resume="aoe resume R", outputs=False, width=160)
    assert text == (
        "aoe: run 20261205-101500-3fa2c1 completed in 12.3 s · 1/1 agents completed · "
        "1,234 tokens · $0.0123 of $1.00"
    )


def test_the_workflows_outputs_come_first_and_long_ones_fold() -> None:
    ran = document()
    ran["outputs"] = {"report": "\n".join(f"line {i}" for i in range(40)), "score": {"n": 3}}
    text = end_of_run(ran, ["a"], resume="aoe resume R", outputs=True, width=80)
    assert "a:\n" not in text  # the named outputs, not the last agent's
    assert "report:\n  line 0\n" in text
    assert f"  line {FOLDED_LINES - 1}\n" in text
    assert f"  line {FOLDED_LINES}\n" not in text
    folded = 40 - FOLDED_LINES
    assert f"  … {folded} more lines: aoe runs output 20261205-101500-3fa2c1 report" in text
    assert 'score:\n  {\n    "n": 3\n  }' in text
    # a long line is wrapped to the terminal, not cut
    ran["outputs"] = {"report": "word " * 60}
    text = end_of_run(ran, ["a"], resume="aoe resume R", outputs=True, width=40)
    assert all(len(line) <= 40 for line in text.splitlines())
    assert text.count("word") == 60


def test_a_failed_run_names_each_failure_and_what_to_run_next() -> None:
    failed = document(
        "failed",
        a={"state": "completed", "output": "x", "error": None, "attempts": [{}]},
        b={
            "state": "failed",
            "output": None,
            "error": "openai answered HTTP 400:\nnope",
            "attempts": [{}, {}, {}],
        },
        c={"state": "skipped", "output": None, "error": "b failed", "attempts": []},
    )
    text = end_of_run(failed, ["c"], resume="aoe resume R --config e.yaml", outputs=True, width=0)
    lines = text.splitlines()
    assert lines[0].startswith("── failures ")  # the last agent did not complete: no outputs
    assert lines[1] == "✗ b (failed, 3 attempts): openai answered HTTP 400: nope"
    assert lines[2] == (
        "aoe: run 20261205-101500-3fa2c1 failed in 12.3 s · 1/3 agents completed, "
        "1 failed, 1 skipped · 1,234 tokens · $0.0123 of $1.00"
    )
    assert "fix what failed, then finish it: `aoe resume R --config e.yaml`" in text


def test_a_budget_stopped_run_says_what_it_spent_and_how_to_go_on() -> None:
    stopped = document(
        "budget_exceeded",
        a={"state": "budget_exceeded", "output": None, "error": "over budget", "attempts": []},
    )
    text = end_of_run(stopped, ["a"], resume="aoe resume R", outputs=True, width=200)
    assert "✗ a (budget exceeded): over budget" in text
    assert "run 20261205-101500-3fa2c1 budget exceeded in 12.3 s" in text
    assert "its budget stopped it after $0.0123: finish it with a larger one, " in text
    assert "`aoe resume R --budget USD`" in text


def test_colour_only_where_asked_and_never_in_the_width() -> None:
    plain = end_of_run(document("failed"), ["a"], resume="r", outputs=False, width=80)
    coloured = end_of_run(
        document("failed"), ["a"], resume="r", outputs=False, width=80, colour=True
    )
    assert "\x1b[" not in plain
    assert "\x1b[1;31mfailed\x1b[0m" in coloured
    assert coloured.replace("\x1b[1;31m", "").replace("\x1b[0m", "") == plain
    # the status on the summary line, not the same word in an error above it
    failed = document(
        "failed",
        a={"state": "failed", "output": None, "error": "it failed twice", "attempts": [{}]},
    )
    coloured = end_of_run(failed, ["a"], resume="r", outputs=False, width=0, colour=True)
    assert "it failed twice" in coloured
    assert "aoe: run 20261205-101500-3fa2c1 \x1b[1;31mfailed\x1b[0m in 12.3 s" in coloured


def run(cli: RunCli, env: dict[str, str], *args: Any) -> tuple[int, str]:
    result = cli("run", *args, env=env)
    return result.exit_code, result.stderr


def test_aoe_run_ends_with_the_failures_and_the_command_even_quiet(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """Issue 16: a partial run with -q printed nothing although an agent failed."""
    fake.respond = lambda request: (
        Fail(400, "refused here") if request.prompt == "fail me" else Reply(text="fine")
    )
    path = write(WORKFLOW)
    for quiet in ([], ["-q"]):
        code, stderr = run(cli, provider_env, path, "--no-cache", *quiet)
        assert code == 0  # partial, allowed
        assert "✗ extra (failed, 1 attempt): openai answered HTTP 400: refused here" in stderr
        assert "partial in" in stderr
        assert "2/3 agents completed, 1 failed" in stderr
        assert "then finish it: `aoe resume 2" in stderr
    # -q and all went well: nothing at all
    fake.respond = lambda request: Reply(text="fine")
    code, stderr = run(cli, provider_env, path, "--no-cache", "-q")
    assert code == 0
    assert stderr == ""


def test_aoe_runs_output_prints_a_stored_output_raw(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    fake.respond = lambda request: (
        Fail(400, "refused here") if request.prompt == "fail me" else Reply(text="line 1\nline 2")
    )
    path = write(
        WORKFLOW.replace(
            "version: 1\n", 'version: 1\noutputs: {final: "{{ agents.draft.output }}"}\n'
        )
    )
    result = cli("run", path, "--output", "-", "-q", env=provider_env)
    run_id = json.loads(result.stdout)["run_id"]
    result = cli("runs", "output", run_id[:12])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"final": "line 1\nline 2"}
    assert cli("runs", "output", run_id, "final").stdout == "line 1\nline 2\n"
    assert cli("runs", "output", run_id, "research").stdout == "line 1\nline 2\n"
    result = cli("runs", "output", run_id, "extra")
    assert result.exit_code == 1
    assert "agent extra of run" in result.stderr
    assert "has no output: it is failed: openai answered HTTP 400: refused here" in result.stderr
    result = cli("runs", "output", run_id, "nothing")
    assert result.exit_code == 2
    assert "has no output or agent 'nothing'; it has final, " in result.stderr


@pytest.mark.parametrize("json_output", [True, False])
def test_a_foreach_agents_output_is_json(cli: RunCli, write: WriteFile, json_output: bool) -> None:
    output = ", output: {format: json}" if json_output else ""
    path = write(
        "version: 1\nname: each\nagents:\n"
        "  a: {prompt: 'x {{ item }}', foreach: '[1, 2]', llm: {provider: mock, model: gpt-4o,"
        f" max_tokens: 50}}{output}}}\n"
    )
    result = cli("run", path, "--mock", "--output", "-", "-q")
    run_id = json.loads(result.stdout)["run_id"]
    shown = json.loads(cli("runs", "output", run_id).stdout)
    assert isinstance(shown, list)
    assert len(shown) == 2


def test_a_rate_limit_wait_says_which_limit(cli: RunCli, write: WriteFile) -> None:
    """Issue 16: a wait said neither which limit nor for how long."""
    engine = write(
        "rate_limiting:\n  per_provider:\n    mock: {concurrent_requests: 1}\n", "engine.yaml"
    )
    path = write(
        "version: 1\nname: w\nagents:\n"
        "  a: {prompt: a, llm: {provider: mock, model: gpt-4o, max_tokens: 9,"
        " params: {latency: 0.3}}}\n"
        "  b: {prompt: b, llm: {provider: mock, model: gpt-4o, max_tokens: 9,"
        " params: {latency: 0.3}}}\n"
    )
    result = cli("run", path, "--config", engine)
    assert result.exit_code == 0, result.stderr
    assert ": waiting for mock's rate limits: 1 call at once" in result.stderr


def test_every_failed_state_is_in_the_failures() -> None:
    for state, said in (
        ("failed", "failed"),
        ("rate_limited", "rate limited"),
        ("budget_exceeded", "budget exceeded"),
    ):
        ended = document(
            "failed", a={"state": state, "output": None, "error": "why", "attempts": [{}]}
        )
        text = end_of_run(ended, ["a"], resume="r", outputs=False, width=0)
        assert f"✗ a ({said}, 1 attempt): why" in text
        assert f"0/1 agents completed, 1 {said}" in text
