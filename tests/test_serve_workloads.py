"""Hostile workflows sent to a running `aoe serve`: it keeps answering its probes,
stays small, and says why each workflow was refused or failed.

Issue 13: one small request held `/health/live` for 13.5 s, another took 7.6 GB.
Here a prober asks `/health/live` every 50 ms on a fresh connection while the
payloads go in, and the service's memory (its own process: the sandbox
processes are bounded on their own) and the CPU time of its event loop's thread
are read from /proc as they run: what must not happen on that thread is seen
in its CPU time, which a busy machine does not inflate as it does the clock.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import child_env
from tests.servehelp import Service, services
from tests.test_hostile_templates import HOSTILE

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

_NESTED = "(" * 80 + "1" + ")" * 80

STATIC = [
    pytest.param(
        "{% for i in range(100000) %}{% for j in range(5000) %}{% endfor %}{% endfor %}",
        "its loops would run 500,000,000 times",
        id="nested-loops",
    ),
    pytest.param("{{ 2**(2**33) }}", "too large a number", id="power"),
    pytest.param("{{ lipsum(n=10**7) }}", "lipsum() may make 100", id="lipsum"),
    pytest.param("{{ ('x' * 3000000000)|length }}", "3,000,000,000 times", id="repetition"),
    pytest.param("{{ " + _NESTED + " }}", "nested too deeply", id="parentheses"),
]


def workflow(prompt: str) -> str:
    quoted = prompt.replace("\\", "\\\\").replace('"', '\\"')
    return (
        "version: 1\nname: probe\nagents:\n"
        f'  a:\n    llm: {{provider: mock, model: m}}\n    prompt: "{quoted}"\n'
    )


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def loop_cpu(pid: int) -> float:
    """CPU seconds used so far by the main thread of process ``pid``: the thread
    of `aoe serve`'s event loop (workflows are read in another thread, templates
    rendered in sandbox processes). CPU time, not the clock's: it says what that
    thread did, however busy the machine is."""
    with open(f"/proc/{pid}/task/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class Prober:
    """Asks /health/live every 50 ms on a fresh connection. A probe unanswered
    within PATIENCE fails (a service that stopped answering); the slowest answer
    is printed, not judged (the figure is bench/hostile.py's)."""

    PATIENCE = 10.0

    def __init__(self, url: str) -> None:
        self.url = url + "/health/live"
        self.slowest = 0.0
        self.failures: list[str] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)

    def _probe(self) -> None:
        while True:
            began = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=self.PATIENCE) as answer:
                    answer.read()
            except Exception as e:
                self.failures.append(f"{type(e).__name__}: {e}")
            self.slowest = max(self.slowest, time.perf_counter() - began)
            self.count += 1
            if self._stop.wait(0.05):
                return

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        print(f"{self.count} probes, the slowest answered in {self.slowest * 1000:.0f} ms")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("workloads")
    with services(child_env(AOE_STATE_DIR=str(folder / "state")), folder) as start:
        service = start("--max-body", str(2 << 20))  # the 0.9 MB prompts of the issue
        # warm up: the sandbox process started, jsonschema imported, the store open
        warm = service.submit(HOSTILE.split("agents:")[0] + "agents:\n" + _FINE, mock=True)
        service.wait(warm, "completed", timeout=60)
        yield service


_FINE = """\
  fine:
    llm: {provider: mock, model: m}
    prompt: "{% if inputs.n > 1 %}n is {{ inputs.n + 1 }}{% endif %}"
    output: {format: json, schema: {type: object, properties: {a: {type: string}}}}
"""


@pytest.mark.parametrize(("prompt", "reason"), STATIC)
def test_what_can_be_seen_in_the_text_is_a_400_with_the_reason(
    served: Service, prompt: str, reason: str
) -> None:
    with Prober(served.url) as prober:
        answer = served.http.post("/api/v1/runs", json={"workflow": workflow(prompt)})
    assert answer.status_code == 400, answer.text
    [diagnostic] = answer.json()["diagnostics"]
    assert reason in diagnostic["message"]
    assert (diagnostic["file"], diagnostic["line"]) == ("submitted.yaml", 6)
    assert not prober.failures


def test_hostile_values_fail_their_agents_while_the_service_answers_and_stays_small(
    served: Service,
) -> None:
    pid = served.process.pid
    before = rss_kb(pid)
    peak = before
    worked = loop_cpu(pid)
    with Prober(served.url) as prober:
        runs = [served.submit(HOSTILE, mock=True) for _ in range(3)]
        finished = []
        for run_id in runs:
            deadline = time.monotonic() + 120
            while True:
                peak = max(peak, rss_kb(pid))
                run = served.run(run_id)
                if run["status"] not in ("queued", "running"):
                    finished.append(run)
                    break
                assert time.monotonic() < deadline, run
                time.sleep(0.05)
    worked = loop_cpu(pid) - worked
    print(f"the event loop's thread used {worked:.2f} s of CPU")
    assert prober.count > 20
    assert not prober.failures, prober.failures[:3]
    # three runs, each with a template killed at its 2 s deadline and a string
    # doubled to the sandbox's memory limit: none of it on the loop's thread
    assert worked < 1.5, f"the event loop's thread worked {worked:.2f} s"
    grown = (max(peak, rss_kb(pid, "VmHWM")) - before) / 1024
    assert grown < 100, f"aoe serve grew by {grown:.0f} MB"
    for run in finished:
        assert run["status"] == "partial"
        agents = run["agents"]
        assert agents["fine"]["state"] == "completed"
        assert "took longer than 2 s" in agents["loops"]["error"]
        assert "of memory it may use" in agents["doubling"]["error"]
        assert "gave 100,000 items" in agents["fan"]["error"]
        assert "is too short" in agents["many_items"]["error"]


def test_many_distinct_large_prompts_do_not_grow_the_service(served: Service) -> None:
    """Issue 13: 300 submissions of distinct ~0.9 MB prompts grew aoe serve from
    57 MB to 619 MB, kept for good in its template caches; they are bounded by
    bytes now (16 MiB each)."""
    pid = served.process.pid
    filler = "word " * 180_000  # 0.9 MB
    served.submit(workflow("{% if true %}x{% endif %} {{ workflow.name }} " + filler), mock=True)
    before = rss_kb(pid)
    with Prober(served.url) as prober:
        for i in range(100):
            text = f"{{% if true %}}{i}{{% endif %}} {{{{ workflow.name }}}} {filler}"
            run_id = served.submit(workflow(text), mock=True)
        served.wait(run_id, "completed", timeout=120)
    grown = (rss_kb(pid) - before) / 1024
    print(f"grown {grown:.1f} MB")
    assert grown < 60, f"aoe serve kept {grown:.0f} MB after 100 prompts of 0.9 MB"
    assert not prober.failures


def test_a_run_larger_than_the_service_allows_is_refused(tmp_path: Path) -> None:
    """Each agent, foreach item and reply costs memory while it runs: a service
    bounds them per run (--max-agents, --max-reply-bytes), before the run (its
    agents) and as it goes (its items and replies)."""
    six = "version: 1\nname: six\nagents:\n" + "".join(
        f"  a{i}: {{llm: {{provider: mock, model: m}}, prompt: hi}}\n" for i in range(6)
    )
    fan = (
        "version: 1\nname: fan\ninputs:\n  n: {type: integer, default: 10}\nagents:\n"
        "  one: {llm: {provider: mock, model: m}, prompt: hi}\n"
        "  many:\n    llm: {provider: mock, model: m}\n    prompt: '{{ item }}'\n"
        "    foreach: range(inputs.n) | list\n"
    )
    with services(child_env(AOE_STATE_DIR=str(tmp_path / "state")), tmp_path) as start:
        service = start("--max-agents", "5", "--max-reply-bytes", "1024")
        answer = service.http.post("/api/v1/runs", json={"workflow": six, "mock": True})
        assert answer.status_code == 400
        assert "has 6 agents; this service runs at most 5" in answer.json()["error"]
        run = service.wait(service.submit(fan, mock=True), "failed", timeout=60)
        agents = run["agents"]
        assert "gave 10 items" in agents["many"]["error"]
        assert "over the 5 this service runs in one run" in agents["many"]["error"]
        small = service.submit(fan, mock=True, inputs={"n": 4})
        assert service.wait(small, "completed", timeout=60)["status"] == "completed"
        talkative = "version: 1\nname: talk\nagents:\n" + "".join(
            f"  t{i}: {{llm: {{provider: mock, model: m, params: {{reply: {'x' * 600}}}}}, "
            f"prompt: hi{', depends_on: [t' + str(i - 1) + ']' if i else ''}}}\n"
            for i in range(3)
        )
        run = service.wait(service.submit(talkative, mock=True), "failed", timeout=60)
        agents = run["agents"]
        assert agents["t0"]["state"] == "completed"
        assert "replies came to over 1,024 characters" in agents["t1"]["error"]
