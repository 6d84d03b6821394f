"""The HTML run report, read in a real browser: Debian's chromium, driven
headless by Playwright. What is asserted is what a person sees: one bar per
attempt, the critical path marked, failed agents red, a click on the graph
opening the agent's section. Screenshots are kept in ``test-artifacts/``
(``AOE_TEST_ARTIFACTS`` moves them)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OPENAI_KEY, REPO, RunCli, WriteFile
from tests.fakeserver import Fail, FakeProvider, Received, Reply

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("AOE_REQUIRE_CHROMIUM"):
        raise RuntimeError("AOE_REQUIRE_CHROMIUM is set and chromium is not installed")
    pytest.skip("chromium is not installed", allow_module_level=True)

ARTIFACTS = Path(os.environ.get("AOE_TEST_ARTIFACTS", REPO / "test-artifacts"))

CHAIN = """\
version: 1
name: chain
inputs:
  topic: {type: string, default: tides}
defaults:
  llm: {provider: openai, model: gpt-4o-mini, max_tokens: 50}
agents:
  a: {prompt: "a about {{ inputs.topic }}"}
  b: {prompt: "b after {{ agents.a.output }}", depends_on: a}
  c: {prompt: "c after {{ agents.b.output }}", depends_on: b}
  side: {prompt: "side in a dry tone"}
outputs:
  final: "{{ agents.c.output }}"
"""

RED = "rgb(198, 40, 40)"
GREEN = "rgb(46, 125, 50)"


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless chromium. (Playwright's sync API runs an event loop on this
    thread while it lasts: the in-process `aoe` commands run before it starts.)"""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def failing_run(
    cli: RunCli, write: WriteFile, fake: FakeProvider, env: dict[str, str], *more: str
) -> tuple[dict[str, Any], Path]:
    """CHAIN with b retried once (a 500) and c refused (a 400): partial."""
    calls: dict[str, int] = {}

    def respond(request: Received) -> Reply | Fail:
        agent = request.prompt.split(" ")[0]
        calls[agent] = calls.get(agent, 0) + 1
        if agent == "b" and calls[agent] == 1:
            return Fail(500, "down for a moment")
        if agent == "c":
            return Fail(400, "c is refused")
        return Reply()

    fake.respond = respond
    path = write(CHAIN)
    report = path.parent / "report.html"
    result = cli("run", str(path), "--report", str(report), "-o", "-", *more, env=env)
    assert result.exit_code == 1, result.stderr
    return json.loads(result.stdout), report


def test_the_report_shows_every_attempt_the_critical_path_and_the_failures(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    document, report = failing_run(cli, write, fake, provider_env)
    text = report.read_text()
    # self-contained: nothing fetched from anywhere, no key
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|url\(\s*['\"]?http", text)
    assert OPENAI_KEY not in text
    attempts = sum(len(agent["attempts"]) for agent in document["agents"].values())
    assert attempts == 5  # a, b twice, c, side

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(report.as_uri())
        assert page.title() == f"aoe report · chain · {document['run_id']}"
        # one bar per attempt, each with its outcome
        assert page.locator("svg.gantt rect.attempt").count() == attempts
        statuses = page.eval_on_selector_all(
            'rect.attempt[data-agent="b"]', "bars => bars.map(b => b.dataset.status)"
        )
        assert sorted(statuses) == ["error", "ok"]
        # failed agents red, completed ones green, as a person sees them
        fill = "el => getComputedStyle(el).fill"
        assert page.eval_on_selector('a.node[data-agent="c"] rect', fill) == RED
        assert page.eval_on_selector('a.node[data-agent="a"] rect', fill) == GREEN
        # the critical path: c ended last, after b, after a; side is off it
        marked = page.eval_on_selector_all(
            "a.node.critical", "nodes => nodes.map(n => n.dataset.agent)"
        )
        assert marked == ["a", "b", "c"]
        assert page.locator("path.edge.critical").count() == 2
        width = "el => getComputedStyle(el).strokeWidth"
        assert page.eval_on_selector('a.node[data-agent="b"] rect', width) == "3px"
        assert page.eval_on_selector('a.node[data-agent="side"] rect', width) in ("0px", "1px")
        assert page.locator('svg.gantt rect.attempt.critical[data-agent="b"]').count() == 2
        # the failure, where a person looks first
        assert "c is refused" in page.inner_text("#failures")
        assert page.eval_on_selector("#agent-c", "d => d.open") is True
        # a click on a node opens that agent: its rendered prompt and output
        assert page.eval_on_selector("#agent-a", "d => d.open") is False
        page.click('a.node[data-agent="a"]')
        page.wait_for_function("document.getElementById('agent-a').open")
        page.click("#agent-a summary + p + details summary")  # its prompt, folded
        assert "a about tides" in page.inner_text("#agent-a")
        assert document["agents"]["a"]["output"] in page.inner_text("#agent-a")
        # costs against the budget, per model
        assert "gpt-4o-mini" in page.inner_text("#costs")
        shot(page, "report-failed-run")
        # filtering the agents by state
        page.uncheck('input[data-filter="completed"]')
        assert page.is_hidden("#agent-a")
        assert page.is_visible("#agent-c")


def test_aoe_report_writes_the_report_of_a_recorded_run(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    document, first = failing_run(cli, write, fake, provider_env)
    run_id = document["run_id"]
    again = first.parent / "again.html"
    result = cli("report", run_id[:15], "-o", str(again))
    assert result.exit_code == 0, result.stderr
    assert str(again) in result.stderr

    def without_time(path: Path) -> str:
        return re.sub(r"<footer>.*</footer>", "", path.read_text())

    assert without_time(again) == without_time(first)  # from the record, as the run wrote it
    assert cli("report", "nope", "-o", str(again)).exit_code == 2
    missing = first.parent / "no" / "r.html"
    refused = cli("run", str(first.parent / "chain.yaml"), "--report", str(missing))
    assert refused.exit_code == 2  # checked before any call
    assert "--report" in refused.stderr


def test_a_report_of_a_thousand_agents_stays_small(
    cli: RunCli, write: WriteFile, tmp_path: Path
) -> None:
    """1,000 agents in 10 layers: under 2 MB, and whole in the browser (its time
    to DOMContentLoaded is measured by bench/report.py, not asserted here)."""
    lines = ["version: 1", "name: wide", "max_parallel_agents: 50", "agents:"]
    for layer in range(10):
        for i in range(100):
            needs = f", depends_on: [l{layer - 1}_{i}]" if layer else ""
            lines.append(
                f"  l{layer}_{i}: {{prompt: 'step {layer} {i}', "
                f"llm: {{provider: mock, model: gpt-4o-mini, params: {{latency: 0}}}}{needs}}}"
            )
    path = write("\n".join(lines) + "\n", "wide.yaml")
    report = tmp_path / "wide.html"
    result = cli("run", str(path), "--mock", "-q", "--report", str(report))
    assert result.exit_code == 0, result.stderr
    assert report.stat().st_size < 2_000_000
    with chromium() as browser:
        page = browser.new_page()
        page.goto(report.as_uri())
        assert page.locator("a.node").count() == 1000
        assert page.locator("rect.attempt").count() == 1000
        assert page.locator("details.agent").count() == 1000


def test_a_fallback_is_marked_on_the_timeline(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """Retries on the agent's model, then its fallback's attempt, marked."""
    fake.respond = lambda r: Fail(503, "overloaded") if r.model == "gpt-4o-mini" else Reply()
    path = write(
        """\
        version: 1
        name: falls
        agents:
          a:
            prompt: "a"
            llm: {provider: openai, model: gpt-4o-mini}
            retry: {max_retries: 1, base_delay: 0.01, max_delay: 0.02}
            fallbacks: [{model: gpt-4o}]
        """
    )
    report = path.parent / "falls.html"
    result = cli("run", str(path), "--report", str(report), env=provider_env)
    assert result.exit_code == 0, result.stderr
    with chromium() as browser:
        page = browser.new_page()
        page.goto(report.as_uri())
        bars = page.eval_on_selector_all(
            "rect.attempt",
            "bars => bars.map(b => [b.dataset.status, b.classList.contains('fallback')])",
        )
        assert bars == [["error", False], ["error", False], ["ok", True]]
        dash = page.eval_on_selector(
            "rect.attempt.fallback", "b => getComputedStyle(b).strokeDasharray"
        )
        assert dash not in ("none", "")
