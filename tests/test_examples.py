"""The example workflows: each validates cleanly and means what it says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aoe.config.settings import load_settings
from aoe.service.runner import load, validate
from tests.conftest import WORKFLOWS

EXAMPLES = sorted(WORKFLOWS.glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_valid_without_warnings(path: Path, tmp_path: Path) -> None:
    settings = load_settings(environ={}, cwd=tmp_path)
    [result] = validate([path], settings)
    assert result.diagnostics == (), [d.format() for d in result.diagnostics]
    assert result.workflow is not None


def test_examples_use_what_the_format_offers() -> None:
    research = load(WORKFLOWS / "research-brief.yaml")
    angle = research.agents["angle"]
    assert angle.foreach is not None
    assert angle.llm.model == "gpt-4.1-mini"
    assert research.agents["brief"].output.schema is not None  # from schemas/brief.json
    assert set(research.files) == {
        "prompts/analyst-system.md",
        "prompts/angle.md",
        "prompts/brief.md",
        "schemas/brief.json",
    }

    triage = load(WORKFLOWS / "support-triage.yaml")
    assert triage.agents["reply"].trigger_rule == "any_completed"
    assert sum(a.when is not None for a in triage.agents.values()) == 3
    assert triage.allow_partial_completion

    translation = load(WORKFLOWS / "translation.yaml")
    labels = [m.label for m in translation.agents["translate"].models]
    assert labels == ["openai/gpt-4o", "openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"]
    review = translation.agents["review"].models
    assert [m.label for m in review] == [
        "anthropic/claude-sonnet-4-5",
        "anthropic/claude-haiku-4-5",
    ]

    review_flow = load(WORKFLOWS / "code-review.yaml")
    assert review_flow.agents["review"].foreach is not None
    assert review_flow.inputs["files"].required

    brief = load(WORKFLOWS / "competitor-brief.yaml")
    assert brief.graph.critical_path().nodes == ("research", "brief")
    assert brief.agents["brief"].llm.max_tokens == 1500
    assert brief.agents["research"].llm.temperature == 0.2  # from defaults
    assert brief.cost_budget == 5.0


# Inputs the examples require, as a user would give them.
_GIVEN: dict[str, dict[str, Any]] = {
    "code-review": {
        "title": "Retry with jitter",
        "files": [
            {"path": "aoe/retry.py", "diff": "+ jitter = True"},
            {"path": "tests/test_retry.py", "diff": "+ def test_jitter(): ..."},
        ],
    },
    "support-triage": {"ticket": "The export button does nothing since Monday."},
    "translation": {"notes": "# 1.2\n- Faster start-up."},
}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
async def test_example_runs_offline_with_mock(path: Path, tmp_path: Path) -> None:
    """Every template of every example renders (their loops, filters and conditions
    in the sandbox process), and every agent completes or is skipped by its
    condition."""
    from aoe.events import AgentFinished, Event, RunFinished, RunStatus
    from aoe.service.runner import RunOptions, run_workflow

    workflow = load(path)
    events: list[Event] = []
    status = await run_workflow(  # the runner binds the inputs: defaults fill the rest
        workflow,
        _GIVEN.get(path.stem, {}),
        load_settings(environ={}, cwd=tmp_path),
        RunOptions(mock=True),
        subscribers=[events.append],
    )
    states = {e.agent_id: str(e.state) for e in events if isinstance(e, AgentFinished)}
    assert status is RunStatus.COMPLETED, states
    assert set(states.values()) <= {"completed", "skipped"}
    [finished] = [e for e in events if isinstance(e, RunFinished)]
    assert not finished.output_errors
