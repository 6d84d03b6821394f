"""Crash tests: `aoe run` in a subprocess against the fake provider, stopped by
SIGKILL at random moments, by SIGINT, and by its budget; then `aoe resume`.

Judged from outside, as engine.md promises: the run completes with the same
outputs as an uninterrupted one, and the server's own request log shows that
no agent completed before the stop was called again — nor any agent called
before everything it depends on was on disk.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aoe.cli.app import app
from aoe.events import AgentState
from aoe.state.journal import recover
from aoe.state.rows import RecordStatus
from aoe.state.store import Store
from tests.conftest import WriteFile, child_env, fake_key, wait_for
from tests.fakeserver import FakeProvider, Received, Reply

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

LAYERS, WIDTH = 6, 5


def thirty_agents() -> tuple[str, dict[str, list[str]]]:
    """6 layers of 5; each agent after one or two of the layer before."""
    rng = random.Random(5)
    deps: dict[str, list[str]] = {}
    lines = [
        "version: 1",
        "name: thirty",
        "max_parallel_agents: 5",
        "defaults:",
        "  llm: {provider: openai, model: gpt-4o-mini, max_tokens: 40}",
        "agents:",
    ]
    for layer in range(LAYERS):
        for i in range(WIDTH):
            name = f"n{layer}x{i}"
            before = [f"n{layer - 1}x{j}" for j in range(WIDTH)] if layer else []
            deps[name] = sorted(rng.sample(before, rng.randint(1, 2))) if before else []
            reads = " ".join(f"[{{{{ agents.{d}.output[-24:] }}}}]" for d in deps[name])
            lines.append(f'  {name}: {{prompt: "{name} after {reads}", depends_on: {deps[name]}}}')
    return "\n".join(lines) + "\n", deps


def delays(request: Received) -> Reply:
    """Each agent answers after its own fixed 30-120 ms."""
    name = request.prompt.split(" ")[0]
    return Reply(delay=0.03 + (sum(map(ord, name)) % 10) / 100)


def env_for(fake: FakeProvider, state: Path) -> dict[str, str]:
    return child_env(
        OPENAI_API_KEY=fake_key(),
        OPENAI_BASE_URL=fake.openai_url,
        AOE_STATE_DIR=str(state),
        RETRY_BASE_DELAY="0.01",
        RETRY_MAX_DELAY="0.05",
    )


def aoe(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aoe", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def agent_of(request: Received) -> str:
    return request.prompt.split(" ")[0]


class Crash:
    """One interrupted run and its resume, judged by the server's log."""

    def __init__(self, fake: FakeProvider, tmp_path: Path, name: str) -> None:
        self.fake = fake
        self.folder = tmp_path
        self.state = tmp_path / name
        self.env = env_for(fake, self.state)

    def run(self, path: Path, *args: str) -> subprocess.Popen[str]:
        """`aoe run` in a process of its own, against a fresh server log."""
        self.fake.reset()
        self.fake.respond = delays
        return aoe(self.env, self.folder, "run", str(path), "--no-cache", *args)

    def record(self) -> tuple[str, RecordStatus, dict[str, AgentState]]:
        """The run as the next aoe command finds it: its journal written into the
        store (the process that wrote it is gone)."""
        store = Store(self.state / "state.db")
        recover(store)
        [run] = store.runs()
        states = {a.agent_id: a.state for a in store.agents(run.run_id)}
        store.close()
        return run.run_id, run.status, states

    def resume(self, *args: str) -> tuple[dict[str, Any], list[str]]:
        """`aoe resume` in this process (the stopped run was another process)."""
        run_id, _, _ = self.record()
        self.fake.reset()
        self.fake.respond = delays
        results = self.state / "results.json"
        outcome = CliRunner().invoke(
            app, ["resume", run_id, "--output", str(results), *args], env=self.env
        )
        assert outcome.exit_code == 0, outcome.stderr
        called = [agent_of(r) for r in self.fake.received if r.body]
        return json.loads(results.read_text()), called


@pytest.fixture
def workflow(write: WriteFile) -> tuple[Path, dict[str, list[str]]]:
    text, deps = thirty_agents()
    return write(text, "thirty.yaml"), deps


@pytest.fixture
def reference(
    fake: FakeProvider, tmp_path: Path, workflow: tuple[Path, dict[str, list[str]]]
) -> dict[str, Any]:
    """The outputs of an uninterrupted run."""
    fake.respond = delays
    out = tmp_path / "reference.json"
    process = aoe(
        env_for(fake, tmp_path / "ref"), tmp_path, "run", str(workflow[0]), "-q", "-o", str(out)
    )
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    document = json.loads(out.read_text())
    return {a: agent["output"] for a, agent in document["agents"].items()}


def check_on_disk_before_dependents(
    before: list[Received], states: dict[str, AgentState], deps: dict[str, list[str]]
) -> None:
    """Every call the server got before the stop had its dependencies recorded."""
    for request in before:
        for dep in deps[agent_of(request)]:
            assert states[dep] == "completed", (
                f"{agent_of(request)} called before {dep} was on disk"
            )


KILLS = sorted(random.Random(11).uniform(0.0, 0.8) for _ in range(12))
"""Seconds after the first request reached the server: twelve moments, in two
halves that each span the run (the even and the odd ones), run side by side."""


@pytest.mark.parametrize("half", [0, 1], ids=["even-moments", "odd-moments"])
def test_sigkill_at_random_moments_then_resume(
    fake: FakeProvider,
    tmp_path: Path,
    workflow: tuple[Path, dict[str, list[str]]],
    reference: dict[str, Any],
    half: int,
) -> None:
    path, deps = workflow
    moments = KILLS[half::2]
    killed_mid_run = 0
    for number, moment in enumerate(moments):
        crash = Crash(fake, tmp_path, f"kill{number}")
        process = crash.run(path, "-q")
        wait_for(lambda: len(fake.received) > 0)
        time.sleep(moment)
        process.kill()
        process.communicate(timeout=30)
        # a request cut off mid-body by the kill never reached the model
        before = [r for r in fake.received if r.body]
        _, status, states = crash.record()
        check_on_disk_before_dependents(before, states, deps)
        done = {a for a, s in states.items() if s == "completed"}
        if status == "completed":
            continue  # the kill came after the end: nothing to resume
        killed_mid_run += 1
        assert status == "interrupted"
        assert 0 < len(done) < 30 or len(before) > 0
        results, called = crash.resume("--no-cache")
        assert results["status"] == "completed"
        assert not set(called) & done, (
            f"completed before the kill and called again: {set(called) & done}"
        )
        assert sorted(called) == sorted(set(called))  # each at most once
        assert set(called) | done == set(deps)
        assert {a: agent["output"] for a, agent in results["agents"].items()} == reference
    print(f"{killed_mid_run} of 6 kills landed during a run")
    assert killed_mid_run >= 5, f"only {killed_mid_run} of 6 kills landed during a run"


def test_sigint_then_resume(
    fake: FakeProvider,
    tmp_path: Path,
    workflow: tuple[Path, dict[str, list[str]]],
    reference: dict[str, Any],
) -> None:
    path, deps = workflow
    crash = Crash(fake, tmp_path, "sigint")
    process = crash.run(path)
    wait_for(lambda: len(fake.received) >= 8)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "aoe resume" in stderr
    before = [r for r in fake.received if r.body]
    _, status, states = crash.record()
    assert status == "cancelled"
    check_on_disk_before_dependents(before, states, deps)
    done = {a for a, s in states.items() if s == "completed"}
    assert done
    assert "cancelled" in states.values()
    results, called = crash.resume("--no-cache")
    assert not set(called) & done
    assert set(called) | done == set(deps)
    assert {a: agent["output"] for a, agent in results["agents"].items()} == reference


def test_budget_stop_then_resume_with_a_larger_budget(
    fake: FakeProvider,
    tmp_path: Path,
    workflow: tuple[Path, dict[str, list[str]]],
    reference: dict[str, Any],
) -> None:
    path, deps = workflow
    crash = Crash(fake, tmp_path, "budget")
    process = crash.run(path, "-q", "--budget", "0.0004")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 3, stderr
    run_id, status, states = crash.record()
    assert status == "budget_exceeded"
    done = {a for a, s in states.items() if s == "completed"}
    assert 0 < len(done) < 30
    store = Store(crash.state / "state.db")
    spent_before = store.run(run_id).cost
    assert spent_before <= 0.0004

    results, called = crash.resume("--no-cache", "--budget", "0.01")
    assert not set(called) & done
    assert set(called) | done == set(deps)
    assert {a: agent["output"] for a, agent in results["agents"].items()} == reference
    # the budget covers the whole run, both sessions
    record = store.run(run_id)
    assert record.cost == pytest.approx(sum(a.cost for a in store.attempts(run_id)))
    assert record.cost > spent_before
    assert record.cost <= 0.01
    assert results["cost_usd"] == round(record.cost, 6)  # (results: to the micro-dollar)


# -- a full disk -----------------------------------------------------------------------


def big_outputs(agents: int = 60) -> str:
    """A chain whose every output is 4 KB (the workflow itself stays small)."""
    lines = [
        "version: 1",
        "name: big",
        "defaults:",
        f"  llm: {{provider: mock, model: gpt-4o, params: {{reply: '{'word ' * 800}'}}}}",
        "agents:",
    ]
    for i in range(agents):
        after = f", depends_on: [a{i - 1}]" if i else ""
        lines.append(f"  a{i}: {{prompt: 'part {i}'{after}}}")
    return "\n".join(lines) + "\n"


def fill_and_fail(
    tmp_path: Path, write: WriteFile, state: Path, preexec: Callable[[], None] | None
) -> tuple[str, str]:
    """A run recorded fine, then one that the store cannot hold; (first run id, stderr)."""
    env = env_for_mock(state)
    small = write(
        "version: 1\nname: small\nagents:\n  x: {prompt: hi, llm: {model: gpt-4o}}\n", "small.yaml"
    )
    first = subprocess.run(
        [sys.executable, "-m", "aoe", "run", str(small), "--mock", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert first.returncode == 0, first.stderr
    with closing(Store(state / "state.db")) as store:
        [run] = store.runs()
    big = write(big_outputs(), "big.yaml")
    failed = subprocess.run(
        [sys.executable, "-m", "aoe", "run", str(big), "--mock"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=preexec,
    )
    assert failed.returncode == 1, failed.stderr
    return run.run_id, failed.stderr


def env_for_mock(state: Path) -> dict[str, str]:
    return child_env(AOE_STATE_DIR=str(state))


def check_nothing_lost(tmp_path: Path, state: Path, first: str, stderr: str) -> None:
    assert "could not be written" in stderr
    assert "aoe resume" in stderr
    assert "Traceback" not in stderr
    with closing(Store(state / "state.db")) as store:
        recover(store)  # as the next aoe command does: the journal into the store
        check_records(tmp_path, state, store, first)


def check_records(tmp_path: Path, state: Path, store: Store, first: str) -> None:
    assert store.run(first).status == "completed"  # the other run is intact
    [big] = [r for r in store.runs() if r.run_id != first]
    assert big.status == "interrupted"
    done = [a.agent_id for a in store.agents(big.run_id) if a.state == "completed"]
    assert 0 < len(done) < 60
    resumed = subprocess.run(
        [sys.executable, "-m", "aoe", "resume", big.run_id, "-q"],
        cwd=tmp_path,
        env=env_for_mock(state),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert store.run(big.run_id).status == "completed"
    attempts = store.attempts(big.run_id)
    assert all(sum(a.agent_id == d for a in attempts) == 1 for d in done)  # not again


def test_a_store_that_cannot_grow_stops_the_run_and_loses_nothing(
    tmp_path: Path, write: WriteFile
) -> None:
    import resource

    state = tmp_path / "state"
    state.mkdir()

    def limit() -> None:  # files of this process may not grow past 160 KB
        resource.setrlimit(resource.RLIMIT_FSIZE, (160_000, 160_000))

    first, stderr = fill_and_fail(tmp_path, write, state, limit)
    check_nothing_lost(tmp_path, state, first, stderr)


def test_a_full_disk_stops_the_run_and_loses_nothing(tmp_path: Path, write: WriteFile) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); RLIMIT_FSIZE covers it")
    try:
        state = disk / "state"
        state.mkdir()
        first, stderr = fill_and_fail(tmp_path, write, state, None)
        assert "full" in stderr
        # the user makes room; then nothing is lost and the run can finish
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        check_nothing_lost(tmp_path, state, first, stderr)
    finally:
        if subprocess.run(["umount", str(disk)], check=False).returncode:
            subprocess.run(["umount", "-l", str(disk)], check=False)
