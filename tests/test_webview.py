"""The web view of `aoe serve`, in a real browser (Debian's chromium through
Playwright): the runs page asks for the token and filters the runs; a run's
page is its report, live while the run goes, with its cancel and resume
buttons. Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import child_env
from tests.fakeserver import Fail, FakeProvider, Received, Reply
from tests.servehelp import Service, services
from tests.test_report import chromium, shot

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

CHAIN = """\
version: 1
name: served
defaults:
  llm: {provider: openai, model: gpt-4o-mini, max_tokens: 50}
agents:
  a: {prompt: "a first"}
  b: {prompt: "b after {{ agents.a.output }}", depends_on: a}
  c: {prompt: "c after {{ agents.b.output }}", depends_on: b}
outputs:
  final: "{{ agents.c.output }}"
"""

TOKEN = "web-token-" + os.urandom(8).hex()


def agent_of(request: Received) -> str:
    return request.prompt.split(" ")[0]


@pytest.fixture
def start(openai_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Service]]:
    env = child_env(openai_env, AOE_STATE_DIR=str(tmp_path / "state"), AOE_API_TOKEN=TOKEN)
    with services(env, tmp_path) as start:
        yield start


def until(page: Any, expression: str, timeout: float = 10.0) -> None:
    """Until ``expression`` is true in the page. (Playwright's wait_for_function
    compiles it in the page, which the pages' policy forbids: no eval.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true within {timeout} s: {expression}"
        page.wait_for_timeout(100)


def sign_in(page: Any) -> None:
    """The form the page shows when the API says 401."""
    page.wait_for_selector("#login", state="visible")
    page.fill("#token", TOKEN)
    page.click("#login button")


def test_the_runs_page_asks_for_the_token_and_filters_the_runs(
    start: Callable[..., Service], fake: FakeProvider
) -> None:
    fake.respond = lambda r: Fail(400, "c is refused") if agent_of(r) == "c" else Reply()
    service = start()
    failed = service.wait(service.submit(CHAIN), "failed", "partial")
    fake.respond = lambda r: Reply()
    done = service.wait(service.submit(CHAIN))
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(service.url + "/")
        sign_in(page)
        until(page, "document.querySelectorAll('#runs tbody tr').length === 2")
        shown = page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.run)")
        assert shown == [done["run_id"], failed["run_id"]]  # newest first
        page.select_option("#status", "completed")
        until(page, "document.querySelectorAll('#runs tbody tr').length === 1")
        assert page.inner_text("#runs tbody").startswith(done["run_id"])
        page.select_option("#status", "")
        page.fill("#workflow", "nothing-like-it")
        page.wait_for_selector("#empty", state="visible")
        page.fill("#workflow", "served")
        until(page, "document.querySelectorAll('#runs tbody tr').length === 2")
        shot(page, "web-runs")
        # a run's page: its report, the token kept in the tab, never in a URL
        page.click(f'a[href="/runs/{failed["run_id"]}"]')
        page.wait_for_selector("svg.gantt")
        assert TOKEN not in page.url
        assert page.eval_on_selector("body", "b => b.dataset.status") == failed["status"]
        assert page.is_visible("#act-resume")
        assert page.is_hidden("#act-cancel")
        assert "c is refused" in page.inner_text("#failures")
        shot(page, "web-run-failed")
    service.stop()
    assert TOKEN not in "".join(service.lines)  # nor in the log


def test_a_run_page_follows_the_run_and_cancels_and_resumes_it(
    start: Callable[..., Service], fake: FakeProvider
) -> None:
    fake.respond = lambda r: Reply(delay=30) if agent_of(r) == "b" else Reply()
    service = start()
    run_id = service.submit(CHAIN)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(f"{service.url}/runs/{run_id}")
        sign_in(page)
        page.wait_for_selector("svg.dag")
        # live: the page changes as the run goes, without a reload
        until(page, "document.body.dataset.status === 'running'")
        until(
            page, "document.querySelector('a.node[data-agent=\"a\"]').dataset.state === 'completed'"
        )
        until(
            page, "document.querySelector('a.node[data-agent=\"b\"]').dataset.state === 'running'"
        )
        assert page.is_visible("#act-cancel")
        shot(page, "web-run-live")
        page.click("#act-cancel")
        until(page, "document.body.dataset.status === 'cancelled'", 20)
        assert page.is_visible("#act-resume")
        # resumed: a is kept (not asked again), b and c run
        fake.respond = lambda r: Reply()
        page.click("#act-resume")
        until(page, "document.body.dataset.status === 'completed'", 20)
        until(page, "document.querySelectorAll('a.node[data-state=\"completed\"]').length === 3")
        assert "fake answer to: c after" in page.inner_text("#outputs")
        shot(page, "web-run-resumed")
    assert sorted(agent_of(r) for r in fake.received) == ["a", "b", "b", "c"]
    assert service.run(run_id)["session"] == 2
    service.stop()


def test_the_pages_are_locked_down(start: Callable[..., Service]) -> None:
    """No data without the token; pages that run nothing from elsewhere."""
    service = start()
    for path in ("/", "/runs/anything"):
        page = service.http.get(path)
        assert page.status_code == 200
        policy = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy
        assert "frame-ancestors 'none'" in policy
        assert page.headers["Referrer-Policy"] == "no-referrer"
    from tests.servehelp import Http

    anonymous = Http(service.url)
    assert anonymous.get("/api/v1/runs/x/report").status_code == 401
    assert anonymous.post("/api/v1/runs/x/resume").status_code == 401
    # a run id that tries to end the script is only text in it
    hostile = service.http.get("/runs/</script><script>alert(1)</script>").text
    assert "</script><script>alert(1)" not in hostile
    service.stop()
