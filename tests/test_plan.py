"""`aoe plan`: what a run would do, computed without a single call."""

from __future__ import annotations

import json

from tests.conftest import WORKFLOWS, RunCli, WriteFile
from tests.fakeserver import FakeProvider


def test_plan_of_the_example(cli: RunCli, fake: FakeProvider) -> None:
    result = cli("plan", WORKFLOWS / "competitor-brief.yaml", "--format", "json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["order"] == ["research", "competitors", "brief"]
    assert plan["critical_path"] == ["research", "brief"]
    brief = next(a for a in plan["agents"] if a["id"] == "brief")
    assert (brief["provider"], brief["model"], brief["units"]) == (
        "anthropic",
        "claude-sonnet-4-5",
        1,
    )
    assert brief["attempts_per_unit"] == 4  # three retries, no fallbacks
    assert brief["prompt_tokens"] > 1600  # the two dependencies' outputs at max_tokens
    # claude-sonnet-4-5: $3 / $15 per million; four attempts, under the $1 cost_limit
    expected = 4 * (brief["prompt_tokens"] * 0.003 + 1500 * 0.015) / 1000
    assert brief["worst_case"] == expected
    assert plan["worst_case"] == sum(a["worst_case"] for a in plan["agents"])
    assert (plan["budget"], plan["over_budget"]) == (5.0, False)
    assert fake.received == []


def test_over_budget_is_a_warning(cli: RunCli) -> None:
    result = cli("plan", WORKFLOWS / "competitor-brief.yaml", "--budget", "0.05")
    assert result.exit_code == 0
    assert "worst case: $0.1466 of the $0.0500 budget" in result.stdout
    assert "warning: the worst case is over the budget" in result.stdout


def test_foreach_items_and_unknowns(cli: RunCli) -> None:
    result = cli(
        "plan",
        WORKFLOWS / "code-review.yaml",
        "-i",
        "title=x",
        "-i",
        "files=[{path: a}, {path: b}, {path: c}]",
        "-f",
        "json",
    )
    plan = json.loads(result.stdout)
    review = next(a for a in plan["agents"] if a["id"] == "review")
    assert review["units"] == 3
    assert review["worst_case"] == 3 * review["worst_case_per_unit"]
    result = cli("plan", WORKFLOWS / "code-review.yaml", "-f", "json")
    plan = json.loads(result.stdout)
    assert plan["unknown"] == ["review"]  # how many files: known only at run time
    text = cli("plan", WORKFLOWS / "code-review.yaml").stdout
    assert "not counted" in text
    assert "review" in text


def test_least_wall_time_from_the_rate_limits(cli: RunCli, write: WriteFile) -> None:
    agents = "".join(f"  a{i}: {{prompt: hi, llm: {{model: gpt-4o-mini}}}}\n" for i in range(5))
    path = write("version: 1\nname: x\nagents:\n" + agents)
    result = cli("plan", path, "-f", "json", env={"RATE_LIMIT_RPM": "2"})
    plan = json.loads(result.stdout)
    minute = next(p for p in plan["rate_limits"] if p["limit"] == "requests_per_minute")
    assert (minute["needed"], minute["allowed"], minute["least_seconds"]) == (5, 2, 120.0)
    assert plan["least_seconds"] == 120.0
    text = cli("plan", path, env={"RATE_LIMIT_RPM": "2"}).stdout
    assert "least wall time the rate limits allow: 2 min 00 s" in text


def test_plan_of_an_invalid_file(cli: RunCli, write: WriteFile) -> None:
    result = cli("plan", write("version: 1\nname: x\nagents: {}\n"))
    assert result.exit_code == 2
