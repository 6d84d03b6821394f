"""Run records, `aoe resume`, the response cache and `aoe runs`, through the CLI
and the official SDKs against the fake provider; the store is real SQLite."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from aoe.errors import ResumeRefused
from aoe.state.journal import recover
from aoe.state.liveness import HERE
from aoe.state.schema import SCHEMA_VERSION
from aoe.state.store import Store
from tests.conftest import RunCli, WriteFile, child_env, fake_key
from tests.events import attempt_finished, attempt_started
from tests.fakeserver import Fail, FakeProvider, Received, Reply

CHAIN = """\
version: 1
name: chain
inputs:
  topic: {type: string, default: tides}
  tone: {type: string, default: dry}
defaults:
  llm: {provider: openai, model: gpt-4o-mini, max_tokens: 50}
agents:
  a: {prompt: "a about {{ inputs.topic }}"}
  b: {prompt: "b after {{ agents.a.output }}", depends_on: a}
  c: {prompt: "c after {{ agents.b.output }}", depends_on: b}
  side: {prompt: "side in a {{ inputs.tone }} tone"}
outputs:
  final: "{{ agents.c.output }}"
"""


def run(cli: RunCli, env: dict[str, str], *args: Any) -> tuple[int, dict[str, Any], str]:
    result = cli(*args, "--output", "-", env=env)
    document = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, document, result.stderr


def called(fake: FakeProvider) -> list[str]:
    """The agents the server was asked for, by the first word of their prompt."""
    return [r.prompt.split(" ")[0] for r in fake.received]


def unfinished(results: dict[str, Any]) -> list[str]:
    return sorted(a for a, agent in results["agents"].items() if agent["state"] != "completed")


def store(tmp_path: Path) -> Store:
    return Store(tmp_path / ".aoe" / "state.db")


def fail_agent(name: str, status: int = 400) -> Any:
    def respond(request: Received) -> Reply | Fail:
        if request.prompt.startswith(f"{name} "):
            return Fail(status, f"{name} is refused")
        return Reply()

    return respond


# -- the record ------------------------------------------------------------------------


def test_a_run_is_recorded_with_agents_attempts_and_events(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    code, results, stderr = run(cli, provider_env, "run", write(CHAIN))
    assert code == 0, stderr
    db = store(tmp_path)
    record = db.run(results["run_id"])
    assert record.status == "completed"
    assert record.workflow_name == "chain"
    assert record.inputs == {"topic": "tides", "tone": "dry"}
    assert round(record.cost, 6) == results["cost_usd"]  # (the results: to the micro-dollar)
    assert record.outputs == results["outputs"]
    agents = {a.agent_id: a for a in db.agents(record.run_id)}
    assert set(agents) == {"a", "b", "c", "side"}
    for agent_id, agent in agents.items():
        assert agent.state == "completed"
        assert agent.output == results["agents"][agent_id]["output"]
        assert round(agent.cost, 6) == results["agents"][agent_id]["cost_usd"]
        assert (agent.provider, agent.model) == ("openai", "gpt-4o-mini")
    attempts = db.attempts(record.run_id)
    assert len(attempts) == 4
    assert all(a.status == "ok" and len(a.fingerprint or "") == 64 for a in attempts)
    kinds = [e["type"] for e in db.events(record.run_id)]
    assert (kinds[0], kinds[-1]) == ("RunStarted", "RunFinished")
    assert kinds.count("AgentFinished") == 4
    # no secret anywhere in the store
    raw = (tmp_path / ".aoe" / "state.db").read_bytes()
    assert provider_env["OPENAI_API_KEY"].encode() not in raw


def test_each_agent_is_recorded_before_its_dependent_is_called(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    seen: dict[str, set[str]] = {}
    state = tmp_path / ".aoe"
    # calls arrive at once (a and side); mock.patch is not thread-safe: one
    # thread's patch would end under the other's recover
    one_at_a_time = threading.Lock()

    def respond(request: Received) -> Reply:
        # what a crash at the moment each call arrives would leave: the store's
        # files and the journals as they are, recovered by another process
        name = request.prompt.split(" ")[0]
        copy = tmp_path / f"crash-{name}"
        shutil.copytree(state, copy, ignore=shutil.ignore_patterns("*-shm"))
        with (
            one_at_a_time,
            Store(copy / "state.db") as db,
            mock.patch.object(HERE, "runs", set()),
        ):
            db.connection.execute("UPDATE runs SET pid = NULL")  # its process: gone
            recover(db)
            seen[name] = {
                row[0]
                for row in db.connection.execute(
                    "SELECT agent_id FROM agents WHERE state = 'completed'"
                )
            }
            started = {
                row[0]
                for row in db.connection.execute(
                    "SELECT agent_id FROM attempts WHERE status = 'started'"
                )
            }
            assert name in started  # the attempt itself, before the call
        return Reply()

    fake.respond = respond
    code, _, stderr = run(cli, provider_env, "run", write(CHAIN))
    assert code == 0, stderr
    assert seen["a"] <= {"side"}
    assert {"a"} <= seen["b"] <= {"a", "side"}
    assert {"a", "b"} <= seen["c"] <= {"a", "b", "side"}
    assert not list((state / "journal").iterdir())  # all in the store: journals gone


# -- resume --------------------------------------------------------------------------------


def test_resume_reruns_only_what_did_not_complete(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    path = write(CHAIN.replace("name: chain", "name: chain\nallow_partial_completion: true"))
    fake.respond = fail_agent("b")
    code, first, _ = run(cli, provider_env, "run", path)
    assert code == 0  # partial, allowed
    assert first["status"] == "partial"
    assert sorted(called(fake)) == ["a", "b", "side"]

    fake.reset()
    code, second, stderr = run(cli, provider_env, "resume", first["run_id"])
    assert code == 0, stderr
    assert sorted(called(fake)) == ["b", "c"]
    assert second["status"] == "completed"
    assert second["session"] == 2
    assert second["agents"]["a"]["resumed"] is True
    assert second["agents"]["a"]["output"] == first["agents"]["a"]["output"]
    assert "b after fake answer to: a about tides" in fake.received[0].prompt
    # the whole run's spend: the first session's and this one's
    assert second["cost_usd"] == pytest.approx(
        first["cost_usd"] + sum(second["agents"][a]["cost_usd"] for a in ("b", "c"))
    )
    assert "completed before and are kept" in stderr

    fake.reset()
    result = cli("resume", first["run_id"], env=provider_env)
    assert result.exit_code == 0
    assert "already completed" in result.stderr
    assert fake.received == []


def test_resume_of_a_failed_run_keeps_the_original_inputs_unless_overridden(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    path = write(CHAIN)
    fake.respond = fail_agent("c")
    code, first, _ = run(cli, provider_env, "run", path, "-i", "topic=moons")
    assert code == 1
    fake.reset()
    code, second, stderr = run(cli, provider_env, "resume", first["run_id"], "-i", "tone=wry")
    assert code == 0, stderr
    assert second["inputs"] == {"topic": "moons", "tone": "wry"}
    # side reads the changed input: it runs again; a and b do not read it
    assert sorted(called(fake)) == ["c", "side"]
    assert "side in a wry tone" in [r.prompt for r in fake.received]


def test_a_changed_workflow_is_refused_unless_forced_and_then_only_the_change_reruns(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    partial = CHAIN.replace("name: chain", "name: chain\nallow_partial_completion: true")
    path = write(partial)
    fake.respond = fail_agent("side")
    code, first, _ = run(cli, provider_env, "run", path)
    assert unfinished(first) == ["side"]
    fake.reset()

    path.write_text(partial.replace("b after", "b, after"))
    result = cli("resume", first["run_id"], env=provider_env)
    assert result.exit_code == 2
    assert "changed since run" in result.stderr
    assert "the definition of b changed" in result.stderr
    assert "--force" in result.stderr
    assert fake.received == []

    code, second, stderr = run(cli, provider_env, "resume", first["run_id"], "--force")
    assert code == 0, stderr
    # b changed, c reads b, side had not completed; a is kept
    assert sorted(called(fake)) == ["b,", "c", "side"]
    assert second["agents"]["a"].get("resumed") is True


def test_settings_that_do_not_change_answers_keep_finished_work_under_force(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    path = write(CHAIN)
    fake.respond = fail_agent("side")
    code, first, _ = run(cli, provider_env, "run", path)
    assert code == 1
    fake.reset()
    path.write_text(CHAIN.replace("max_tokens: 50}", "max_tokens: 50}\n  timeout: 99"))
    result = cli("resume", first["run_id"], env=provider_env)
    assert result.exit_code == 2
    assert "no agent's definition changed" in result.stderr
    code, _, stderr = run(cli, provider_env, "resume", first["run_id"], "--force")
    assert code == 0, stderr
    assert sorted(called(fake)) == unfinished(first)
    assert "side" in unfinished(first)


def test_resume_works_from_the_record_when_the_file_is_gone(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    prompt = write("c after {{ agents.b.output }}", "prompts/c.txt")
    path = write(
        CHAIN.replace(
            'c: {prompt: "c after {{ agents.b.output }}", depends_on: b}',
            "c: {prompt_file: prompts/c.txt, depends_on: b}",
        )
    )
    fake.respond = fail_agent("c")
    code, first, _ = run(cli, provider_env, "run", path)
    assert code == 1
    path.unlink()
    prompt.unlink()
    fake.reset()
    code, second, stderr = run(cli, provider_env, "resume", first["run_id"])
    assert code == 0, stderr
    assert called(fake) == ["c"]
    assert second["outputs"]["final"].startswith("fake answer to: c after")


def test_resume_latest_continues_an_unfinished_run_or_starts_one(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    path = write(CHAIN)
    fake.respond = fail_agent("c")
    code, first, _ = run(cli, provider_env, "run", path, "--resume-latest")
    assert code == 1
    fake.reset()
    code, second, _ = run(cli, provider_env, "run", path, "--resume-latest")
    assert code == 0
    assert second["run_id"] == first["run_id"]
    assert called(fake) == ["c"]
    fake.reset()
    code, third, _ = run(cli, provider_env, "run", path, "--resume-latest", "--no-cache")
    assert code == 0
    assert third["run_id"] != first["run_id"]  # the latest completed: a new run
    assert len(fake.received) == 4


@pytest.mark.subprocess
def test_resume_refuses_unknown_and_running_runs(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    result = cli("resume", "20990101-000000-abcdef", env=provider_env)
    assert result.exit_code == 2
    assert "no run 20990101-000000-abcdef" in result.stderr
    _, first, _ = run(cli, provider_env, "run", write(CHAIN))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with sqlite3.connect(tmp_path / ".aoe" / "state.db") as db:  # as if it still ran
            db.execute(
                "UPDATE runs SET status = 'running', pid = ?, process = NULL WHERE run_id = ?",
                (other.pid, first["run_id"]),
            )
        result = cli("resume", first["run_id"][:12], env=provider_env)  # a prefix will do
        assert result.exit_code == 2
        assert "is still running" in result.stderr
        assert [r.status for r in store(tmp_path).runs()] == ["running"]
    finally:
        other.kill()
        other.wait()
    # its process is gone: interrupted, and resumable
    assert [r.status for r in store(tmp_path).runs()] == ["interrupted"]
    result = cli("resume", first["run_id"], env=provider_env)
    assert result.exit_code == 0, result.stderr


def test_two_resumes_of_one_run_never_both_run(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    fake.respond = fail_agent("c")
    _, first, _ = run(cli, provider_env, "run", write(CHAIN))
    fake.reset()
    from aoe.config.settings import load_settings
    from aoe.service.resume import plan_resume

    db = store(tmp_path)
    settings = load_settings(environ=provider_env, cwd=tmp_path)
    plans = [plan_resume(db, first["run_id"], settings) for _ in range(2)]  # planned at once
    assert (
        db.begin_session(
            first["run_id"],
            agents={},
            rerun=(),
            inputs={},
            settings={},
            budget=None,
            sessions=plans[0].sessions,
        )
        == 2
    )
    with pytest.raises(ResumeRefused, match="resumed by another process"):
        db.begin_session(
            first["run_id"],
            agents={},
            rerun=(),
            inputs={},
            settings={},
            budget=None,
            sessions=plans[1].sessions,
        )


# -- the response cache ----------------------------------------------------------------


def test_the_cache_is_off_unless_asked_for(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    """A nightly run with the same prompt must get a fresh answer, not
    yesterday's: nothing is answered from the cache, or kept in it, unless the
    run, the workflow, an agent or the engine config asks."""
    path = write(CHAIN)
    for _ in range(2):
        fake.reset()
        code, results, stderr = run(cli, provider_env, "run", path)
        assert code == 0, stderr
        assert len(fake.received) == 4
        assert not any(agent["cached"] for agent in results["agents"].values())
    assert store(tmp_path).cache_stats().entries == 0


def test_the_cache_answers_exact_repeats_for_free(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    path = write(CHAIN)
    code, first, _ = run(cli, provider_env, "run", path, "--cache")
    assert code == 0
    assert len(fake.received) == 4
    fake.reset()
    code, second, stderr = run(cli, provider_env, "run", path, "--cache")
    assert code == 0, stderr
    assert fake.received == []
    assert second["cost_usd"] == 0
    assert second["outputs"] == first["outputs"]
    for agent in second["agents"].values():
        assert agent["cached"] is True
        assert [a["status"] for a in agent["attempts"]] == ["cached"]
        assert agent["cost_usd"] == 0

    # any change in what is asked misses: an input, a parameter
    fake.reset()
    run(cli, provider_env, "run", path, "-i", "tone=wry", "--cache")
    assert called(fake) == ["side"]
    fake.reset()
    longer = write(CHAIN.replace("max_tokens: 50", "max_tokens: 51"), "b.yaml")
    run(cli, provider_env, "run", longer, "--cache")
    assert len(fake.received) == 4
    fake.reset()
    changed = CHAIN.replace(
        'side: {prompt: "side in a {{ inputs.tone }} tone"}',
        'side: {prompt: "side in a {{ inputs.tone }} tone", llm: {temperature: 0.5}}',
    )
    run(cli, provider_env, "run", write(changed, "c.yaml"), "--cache")
    assert called(fake) == ["side"]


def test_the_workflow_an_agent_or_the_engine_config_may_turn_the_cache_on(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """`cache: true` on the workflow (an agent's `cache: false` over it), on an
    agent, or `engine.cache: true`; `--no-cache` always wins."""
    path = write(
        "cache: true\n"
        + CHAIN.replace(
            'a: {prompt: "a about {{ inputs.topic }}"}',
            'a: {prompt: "a about {{ inputs.topic }}", cache: false}',
        )
    )
    run(cli, provider_env, "run", path)
    fake.reset()
    run(cli, provider_env, "run", path)
    assert called(fake) == ["a"]  # the others came from the cache
    fake.reset()
    run(cli, provider_env, "run", path, "--cache")
    assert called(fake) == ["a"]  # an agent's own false stands
    fake.reset()
    run(cli, provider_env, "run", path, "--no-cache")
    assert len(fake.received) == 4
    # one agent
    only = write(
        CHAIN.replace(
            'a: {prompt: "a about {{ inputs.topic }}"}',
            'a: {prompt: "a about {{ inputs.topic }}", cache: true}',
        ),
        "one.yaml",
    )
    fake.reset()
    run(cli, provider_env, "run", only, "-i", "topic=reefs")
    fake.reset()
    run(cli, provider_env, "run", only, "-i", "topic=reefs")
    assert sorted(called(fake)) == ["b", "c", "side"]
    # the engine config
    engine = write("engine: {cache: true}\n", "engine.yaml")
    fresh = write(CHAIN.replace("max_tokens: 50", "max_tokens: 52"), "fresh.yaml")
    for _ in range(2):
        fake.reset()
        run(cli, provider_env, "run", fresh, "--config", engine)
    assert fake.received == []


def test_a_cached_answer_older_than_cache_ttl_is_asked_again(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    path = write("cache: true\ncache_ttl: 3600\n" + CHAIN)
    run(cli, provider_env, "run", path)
    with sqlite3.connect(tmp_path / ".aoe" / "state.db") as db:  # two hours ago
        db.execute("UPDATE cache SET created_at = created_at - 7200")
    fake.reset()
    run(cli, provider_env, "run", path)
    assert len(fake.received) == 4  # too old: asked again, and kept anew
    fake.reset()
    run(cli, provider_env, "run", path)
    assert fake.received == []
    with sqlite3.connect(tmp_path / ".aoe" / "state.db") as db:
        db.execute("UPDATE cache SET created_at = created_at - 7200")
    # an agent's own ttl goes over the workflow's; the engine's is under both
    longer = write(
        "cache: true\n"
        + CHAIN.replace(
            'a: {prompt: "a about {{ inputs.topic }}"}',
            'a: {prompt: "a about {{ inputs.topic }}", cache_ttl: 86400}',
        ),
        "longer.yaml",
    )
    engine = write("engine: {cache_ttl: 60}\n", "engine.yaml")
    fake.reset()
    run(cli, provider_env, "run", longer, "--config", engine)
    assert sorted(called(fake)) == ["b", "c", "side"]


def test_no_cache_and_cache_false_call_the_model(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    path = write(
        CHAIN.replace(
            'a: {prompt: "a about {{ inputs.topic }}"}',
            'a: {prompt: "a about {{ inputs.topic }}", cache: false}',
        )
    )
    run(cli, provider_env, "run", path, "--cache")
    fake.reset()
    run(cli, provider_env, "run", path, "--cache")
    assert called(fake) == ["a"]  # the others came from the cache
    fake.reset()
    run(cli, provider_env, "run", path, "--no-cache")
    assert len(fake.received) == 4


def test_failed_and_invalid_replies_are_never_cached(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    path = write(
        "version: 1\nname: j\ncache: true\nagents:\n  j:\n    prompt: give json\n"
        "    llm: {model: gpt-4o-mini}\n"
        "    output: {format: json, schema: {type: object, required: [n],"
        " properties: {n: {type: integer}}}}\n"
    )
    fake.script(Fail(500, "down"), Reply(text="not json"), Reply(json={"n": 1}))
    code, first, stderr = run(cli, provider_env, "run", path)
    assert code == 0, stderr
    assert [a["status"] for a in first["agents"]["j"]["attempts"]] == ["error", "error", "ok"]
    # only the valid answer is kept, under its own request (which carried the
    # feedback about the invalid reply); the plain question has no valid answer yet
    assert store(tmp_path).cache_stats().entries == 1
    fake.reset()
    fake.script(Reply(json={"n": 2}))
    code, second, _ = run(cli, provider_env, "run", path)
    assert len(fake.received) == 1
    assert second["agents"]["j"]["output"] == {"n": 2}
    fake.reset()
    code, third, _ = run(cli, provider_env, "run", path)
    assert fake.received == []
    assert third["agents"]["j"]["output"] == {"n": 2}


def test_the_mock_provider_is_never_cached(cli: RunCli, write: WriteFile, tmp_path: Path) -> None:
    path = write(CHAIN)
    for _ in range(2):
        code, results, _ = run(cli, {}, "run", path, "--mock")
        assert code == 0
        assert results["cost_usd"] > 0  # a cost rehearsal prices every call
    assert store(tmp_path).cache_stats().entries == 0


def test_cache_stats_and_clear(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    path = write(CHAIN)
    run(cli, provider_env, "run", path, "--cache")
    run(cli, provider_env, "run", path, "--cache")
    stats = json.loads(cli("cache", "stats", "-f", "json").stdout)
    assert stats["entries"] == 4
    assert stats["hits"] == 4
    assert stats["models"] == [
        {"provider": "openai", "model": "gpt-4o-mini", "entries": 4, "hits": 4}
    ]
    assert "entries   4" in cli("cache", "stats").stdout
    result = cli("cache", "clear")
    assert result.exit_code == 2  # not at a terminal: not without --yes
    assert "every cached answer would be deleted: add --yes" in result.stderr
    result = cli("cache", "clear", "--yes")
    assert result.exit_code == 0
    assert "removed 4 cache entries" in result.stderr
    assert json.loads(cli("cache", "stats", "-f", "json").stdout)["entries"] == 0


# -- aoe runs ----------------------------------------------------------------------------


def test_runs_list_show_and_events(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    path = write(CHAIN)
    _, ok, _ = run(cli, provider_env, "run", path)
    fake.respond = fail_agent("c")
    _, failed, _ = run(cli, provider_env, "run", path, "--no-cache")
    listed = json.loads(cli("runs", "list", "-f", "json").stdout)
    assert [r["run_id"] for r in listed] == [failed["run_id"], ok["run_id"]]
    only = json.loads(cli("runs", "list", "--status", "failed", "-f", "json").stdout)
    assert [r["run_id"] for r in only] == [failed["run_id"]]
    assert json.loads(cli("runs", "list", "-w", "nope", "-f", "json").stdout) == []
    table = cli("runs", "list").stdout
    assert [failed["run_id"], "chain", "failed"] == table.splitlines()[1].split()[:3]

    shown = cli("runs", "show", failed["run_id"]).stdout
    assert "c is refused" in shown
    assert f"aoe resume {failed['run_id']}" in shown
    document = json.loads(cli("runs", "show", failed["run_id"], "-f", "json").stdout)
    assert {agent_id: a["state"] for agent_id, a in document["agents"].items()} == {
        "a": "completed",
        "b": "completed",
        "c": "failed",
        "side": "completed",
    }
    lines = cli("runs", "events", failed["run_id"], "--type", "agent_finished", "--last", "2")
    events = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [e["event"] for e in events] == ["AgentFinished", "AgentFinished"]
    assert events[-1]["agent_id"] == "c"
    assert events[-1]["state"] == "failed"


def _differences(one: Any, other: Any, where: str = "") -> list[str]:
    """Where two JSON values differ, as paths with both values."""
    if isinstance(one, dict) and isinstance(other, dict):
        return [
            found
            for key in [*one, *(k for k in other if k not in one)]
            for found in _differences(one.get(key), other.get(key), f"{where}.{key}")
        ]
    if isinstance(one, list) and isinstance(other, list) and len(one) == len(other):
        return [
            d
            for i, (a, b) in enumerate(zip(one, other, strict=True))
            for d in _differences(a, b, f"{where}[{i}]")
        ]
    return [] if one == other else [f"{where}: {one!r} != {other!r}"]


def test_the_results_document_is_rebuilt_from_the_record(
    cli: RunCli,
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """issue 16: `aoe runs results` gives what `--output` and `--junit` wrote
    (one session), and the run as a whole after a resume."""
    calls: dict[str, int] = {}

    def respond(request: Received) -> Reply | Fail:
        agent = request.prompt.split(" ")[0]
        calls[agent] = calls.get(agent, 0) + 1
        if agent == "b" and calls[agent] == 1:
            return Fail(500, "down")  # retried
        if agent == "c":
            return Fail(400, "c is refused")
        if agent == "side":
            return Reply(text="cut", output_tokens=50, finish_reason="length")  # truncated
        return Reply()

    fake.respond = respond
    path = write(CHAIN)
    junit = tmp_path / "run.xml"
    code, written, _ = run(cli, provider_env, "run", path, "--junit", str(junit))
    assert code == 1
    run_id = written["run_id"]
    rebuilt = json.loads(cli("runs", "results", run_id[:12]).stdout)
    assert rebuilt["workflow"].pop("file") == str(path.resolve())
    assert written["workflow"].pop("file") == str(path)
    assert _differences(rebuilt, written) == []
    assert [a["status"] for a in rebuilt["agents"]["b"]["attempts"]] == ["error", "ok"]
    assert rebuilt["agents"]["side"]["truncated"] is True
    assert rebuilt["agents"]["side"]["attempts"][0]["finish_reason"] == "length"
    again = tmp_path / "again.xml"
    out = tmp_path / "again.json"
    done = cli("runs", "results", run_id, "--junit", str(again), "-o", str(out))
    assert (done.exit_code, done.stdout) == (0, "")
    assert again.read_text() == junit.read_text()
    assert json.loads(out.read_text())["run_id"] == run_id
    # resumed: the run as a whole, each attempt naming its session
    fake.respond = lambda request: Reply()
    code, second, _ = run(cli, provider_env, "resume", run_id)
    assert (code, second["session"]) == (0, 2)
    whole = json.loads(cli("runs", "show", run_id, "-f", "json").stdout)
    assert whole["status"] == "completed"
    assert whole["session"] == 2
    assert whole["cost_usd"] == second["cost_usd"]
    assert [(a["session"], a["status"]) for a in whole["agents"]["c"]["attempts"]] == [
        (1, "error"),  # a 400: not retried
        (2, "ok"),
    ]
    assert whole["agents"]["a"]["resumed"] is True
    assert "resumed" not in whole["agents"]["c"]
    assert list(whole["agents"]) == ["a", "b", "c", "side"]  # the workflow's order
    assert whole["outputs"] == second["outputs"]
    # a missing run is exit 2, as everywhere
    assert cli("runs", "results", "nope").exit_code == 2


def test_export_and_import_carry_a_run_to_another_store(
    cli: RunCli,
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    tmp_path: Path,
) -> None:
    path = write(CHAIN)
    fake.respond = fail_agent("c")
    _, first, _ = run(cli, provider_env, "run", path)
    backup = tmp_path / "backup.json"
    assert cli("runs", "export", first["run_id"], "-o", backup).exit_code == 0
    elsewhere = {**provider_env, "AOE_STATE_DIR": str(tmp_path / "elsewhere")}
    result = cli("runs", "import", backup, env=elsewhere)
    assert result.exit_code == 0, result.stderr
    assert cli("runs", "import", backup, env=elsewhere).exit_code == 2  # already there
    assert cli("runs", "import", backup, "--replace", env=elsewhere).exit_code == 0
    fake.reset()
    code, _, stderr = run(cli, elsewhere, "resume", first["run_id"])
    assert code == 0, stderr
    assert called(fake) == ["c"]
    # the original store still has its failed run, untouched
    assert store(tmp_path).run(first["run_id"]).status == "failed"

    (tmp_path / "junk.json").write_text("{}")
    result = cli("runs", "import", tmp_path / "junk.json", env=elsewhere)
    assert result.exit_code == 2
    assert "not an aoe run export" in result.stderr


def test_prune_removes_old_finished_runs_only(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    path = write(CHAIN)
    _, old, _ = run(cli, provider_env, "run", path)
    _, new, _ = run(cli, provider_env, "run", path)
    with sqlite3.connect(tmp_path / ".aoe" / "state.db") as db:
        db.execute(
            "UPDATE runs SET updated_at = ?, created_at = ? WHERE run_id = ?",
            (time.time() - 40 * 86400, time.time() - 40 * 86400, old["run_id"]),
        )
    result = cli("runs", "prune", "--older-than", "30d", "--dry-run")
    assert result.stdout.split() == [old["run_id"]]
    assert len(store(tmp_path).runs()) == 2
    # not at a terminal, it does not delete without --yes (a script, cron)
    result = cli("runs", "prune", "--older-than", "30d")
    assert result.exit_code == 2
    assert "1 run last active over 30 days ago would be deleted: add --yes" in result.stderr
    assert len(store(tmp_path).runs()) == 2
    result = cli("runs", "prune", "--older-than", "30d", "--yes")
    assert result.exit_code == 0
    assert "removed 1 run(s) last active over 30 days ago" in result.stderr
    assert [r.run_id for r in store(tmp_path).runs()] == [new["run_id"]]
    assert store(tmp_path).events(old["run_id"]) == []  # its rows went with it
    assert cli("runs", "prune", "--older-than", "soon").exit_code == 2
    # a number without its unit deleted every run once (30 was seconds): refused
    result = cli("runs", "prune", "--older-than", "30", "--yes")
    assert result.exit_code == 2
    assert "has no unit: write 30d (days)" in result.stderr
    assert len(store(tmp_path).runs()) == 1


def test_prune_and_cache_clear_ask_a_person_at_a_terminal(
    write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    """At a terminal (a real one: tmux is not needed, a pseudo-terminal is one),
    prune and cache clear ask, and do nothing unless told yes."""
    import pty

    env = child_env(provider_env)
    aoe = [sys.executable, "-m", "aoe"]
    path = write(CHAIN)
    subprocess.run([*aoe, "run", path, "--cache", "-q"], env=env, cwd=tmp_path, check=True)
    with sqlite3.connect(tmp_path / ".aoe" / "state.db") as db:
        db.execute("UPDATE runs SET updated_at = updated_at - 7200")

    def at_terminal(*args: str, answer: str) -> tuple[int, str]:
        pid, fd = pty.fork()
        if pid == 0:  # the child: aoe, its stdin and stdout the terminal
            os.chdir(tmp_path)
            os.execve(aoe[0], [*aoe, *args], env)
        os.write(fd, answer.encode() + b"\n")
        said = b""
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child is gone
                break
            if not chunk:
                break
            said += chunk
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), said.decode(errors="replace")

    code, said = at_terminal("runs", "prune", "--older-than", "1h", answer="n")
    assert code == 1, said
    assert "Delete 1 run last active over 1 hour ago, with their records?" in said
    assert "nothing deleted" in said
    assert len(store(tmp_path).runs()) == 1
    code, said = at_terminal("cache", "clear", answer="n")
    assert code == 1, said
    assert "Delete every cached answer?" in said
    assert store(tmp_path).cache_stats().entries == 4
    code, said = at_terminal("runs", "prune", "--older-than", "1h", answer="y")
    assert code == 0, said
    assert store(tmp_path).runs() == []
    code, said = at_terminal("cache", "clear", answer="y")
    assert code == 0, said
    assert store(tmp_path).cache_stats().entries == 0


def test_a_closed_pipe_ends_aoe_quietly(write: WriteFile, tmp_path: Path) -> None:
    """`aoe runs list | head -1` was "internal error: BrokenPipeError", exit 1."""
    path = write(CHAIN)
    for args in (["run", str(path), "--mock", "-o", "-", "-q"], ["runs", "list"], ["schema"]):
        child = subprocess.Popen(
            [sys.executable, "-m", "aoe", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
            cwd=tmp_path,
        )
        assert child.stdout is not None
        assert child.stderr is not None
        child.stdout.close()  # the reader is gone before a byte is written
        with child.stderr:
            said = child.stderr.read().decode()
        assert child.wait(timeout=60) == 141, said  # 128 + SIGPIPE, as a shell says it
        assert said == ""


# -- a store that cannot be used -----------------------------------------------------


def test_a_damaged_store_is_a_clear_error_and_is_left_alone(
    cli: RunCli, write: WriteFile, tmp_path: Path
) -> None:
    folder = tmp_path / ".aoe"
    folder.mkdir()
    damaged = folder / "state.db"
    damaged.write_bytes(b"this is not a database" * 100)
    for args in (("run", write(CHAIN), "--mock"), ("runs", "list")):
        result = cli(*args)
        assert result.exit_code == 2
        assert "damaged or not an aoe store" in result.stderr
        assert "AOE_STATE_DIR" in result.stderr
        assert "Traceback" not in result.stderr
    assert damaged.read_bytes() == b"this is not a database" * 100


def test_a_store_from_a_newer_aoe_is_refused(cli: RunCli, write: WriteFile, tmp_path: Path) -> None:
    code, first, _ = run(cli, {}, "run", write(CHAIN), "--mock")
    assert code == 0
    with sqlite3.connect(tmp_path / ".aoe" / "state.db") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    result = cli("runs", "list")
    assert result.exit_code == 2
    assert "written by a newer aoe" in result.stderr
    assert "upgrade aoe" in result.stderr
    with sqlite3.connect(tmp_path / ".aoe" / "state.db") as db:  # nothing was lost
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    assert Store(tmp_path / ".aoe" / "state.db").run(first["run_id"]).status == "completed"


def test_an_sqlite_file_of_something_else_is_refused(cli: RunCli, tmp_path: Path) -> None:
    (tmp_path / ".aoe").mkdir()
    with sqlite3.connect(tmp_path / ".aoe" / "state.db") as db:
        db.execute("CREATE TABLE mine (x)")
    result = cli("runs", "list")
    assert result.exit_code == 2
    assert "not an aoe store" in result.stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_concurrent_runs_share_one_store(write: WriteFile, tmp_path: Path) -> None:
    path = write(CHAIN.replace("a about", "a {{ inputs.topic }} about"))
    env = child_env(AOE_MOCK_LATENCY="0.02")
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "aoe", "run", str(path), "--mock", "-q", "-i", f"topic=t{i}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        assert stderr == "", stderr  # no store taken for lost (once, in 7 rounds of 15)
    runs = store(tmp_path).runs()
    assert len(runs) == 6
    assert {r.status for r in runs} == {"completed"}
    assert sorted(
        json.loads(json.dumps(store(tmp_path).run(r.run_id).inputs))["topic"] for r in runs
    ) == [f"t{i}" for i in range(6)]


def _open_at(path: str, barrier: Any, errors: Any) -> None:
    barrier.wait()
    try:
        Store(path).close()
    except Exception as e:  # reported to the test
        errors.put(str(e))


@pytest.mark.slow
def test_processes_creating_one_store_at_once_all_open_it(tmp_path: Path) -> None:
    """Workers started together on a fresh folder: SQLite answers "locked" at
    once, without waiting, to all but one of those switching a new file to WAL."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    for round_ in range(15):
        path = str(tmp_path / f"s{round_}" / "state.db")
        barrier = context.Barrier(4)
        processes = [
            context.Process(target=_open_at, args=(path, barrier, errors)) for _ in range(4)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(30)
            assert process.exitcode == 0
    assert errors.empty(), errors.get()


# -- what resume keeps -----------------------------------------------------------------


def test_a_completed_agent_is_kept_even_when_an_agent_before_it_runs_again(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    path = write(
        "version: 1\nname: d\nallow_partial_completion: true\n"
        "defaults: {llm: {model: gpt-4o-mini}}\nagents:\n"
        "  a: {prompt: a}\n"
        "  b: {prompt: b, depends_on: a, trigger_rule: all_done}\n"
        "  c: {prompt: c, depends_on: b}\n"
    )
    fake.respond = lambda r: Fail(400, "no") if r.prompt == "a" else Reply()
    code, first, _ = run(cli, provider_env, "run", path)
    assert first["status"] == "partial"
    assert unfinished(first) == ["a"]
    fake.reset()
    code, second, stderr = run(cli, provider_env, "resume", first["run_id"])
    assert code == 0, stderr
    assert called(fake) == ["a"]  # b and c completed: paid for, never called again
    assert second["agents"]["b"]["resumed"] is True


def test_finished_foreach_items_are_kept_by_a_resume(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    path = write(
        "version: 1\nname: f\nmax_parallel_agents: 4\n"
        "inputs: {things: {type: list, default: [w, x, y, z]}}\n"
        "defaults: {llm: {model: gpt-4o-mini}}\nagents:\n"
        "  each: {prompt: 'item {{ item }}', foreach: inputs.things, cost_limit: 1}\n"
        "  after: {prompt: 'after {{ agents.each.output | join(\",\") }}', depends_on: each}\n"
    )

    def respond(request: Received) -> Reply | Fail:
        if request.prompt == "item y":
            return Fail(400, "y is refused")
        return Reply(delay=0.05)

    fake.respond = respond
    code, first, _ = run(cli, provider_env, "run", path, "--no-cache")
    assert code == 1
    assert first["agents"]["each"]["state"] == "failed"
    assert sorted(called(fake)) == ["item", "item", "item", "item"]
    fake.reset()
    code, second, stderr = run(cli, provider_env, "resume", first["run_id"], "--no-cache")
    assert code == 0, stderr
    prompts = [r.prompt for r in fake.received]
    assert len(prompts) == 2
    assert prompts[0] == "item y"  # only the item that failed
    assert prompts[1].startswith("after ")
    assert second["agents"]["each"]["output"] == [
        "fake answer to: item w",
        "fake answer to: item x",
        "fake answer to: item y",
        "fake answer to: item z",
    ]


def test_force_checks_the_inputs_the_changed_file_declares(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    path = write(CHAIN)
    fake.respond = fail_agent("c")
    _, first, _ = run(cli, provider_env, "run", path)
    fake.reset()
    path.write_text(
        CHAIN.replace("  tone:", "  who: {type: string}\n  tone:").replace(
            "c after", "c for {{ inputs.who }} after"
        )
    )
    result = cli("resume", first["run_id"], "--force", env=provider_env)
    assert result.exit_code == 2
    assert "who" in result.stderr
    assert fake.received == []
    code, _, stderr = run(cli, provider_env, "resume", first["run_id"], "--force", "-i", "who=me")
    assert code == 0, stderr
    assert called(fake) == ["c"]


def test_a_real_run_is_never_finished_by_the_mock(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    path = write(CHAIN)
    fake.respond = fail_agent("c")
    _, first, _ = run(cli, provider_env, "run", path)
    code, mocked, _ = run(cli, provider_env, "run", path, "--resume-latest", "--mock")
    assert code == 0
    assert mocked["run_id"] != first["run_id"]  # a run of its own
    assert store(tmp_path).run(first["run_id"]).status == "failed"
    from aoe.config.settings import load_settings
    from aoe.service.resume import plan_resume

    settings = load_settings(environ=provider_env, cwd=tmp_path)
    with pytest.raises(ResumeRefused, match="was a real run"):
        plan_resume(store(tmp_path), first["run_id"], settings, options={"mock": True})


def test_credentials_in_a_base_url_never_reach_the_store(
    cli: RunCli, write: WriteFile, provider_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **provider_env,
        "OPENAI_BASE_URL": "http://user:hunter2@127.0.0.1:9/v1",
        "MAX_RETRIES": "0",
    }
    code, results, stderr = run(cli, env, "run", write(CHAIN))
    assert code == 1
    assert "cannot reach" in json.dumps(results)
    assert "hunter2" not in json.dumps(results) + stderr
    for file in (tmp_path / ".aoe").rglob("*"):
        assert file.is_dir() or b"hunter2" not in file.read_bytes()


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"format": "aoe-run", "schema": 1, "runs": ["x"]}, id="rows-not-objects"),
        pytest.param({"format": "aoe-run", "schema": "v1", "runs": [{}]}, id="bad-schema"),
        pytest.param({"format": "aoe-run", "schema": 1, "runs": [{"run_id": "r"}]}, id="no-cols"),
        pytest.param([1, 2], id="a-list"),
    ],
)
def test_a_damaged_export_is_refused_cleanly(cli: RunCli, tmp_path: Path, document: Any) -> None:
    (tmp_path / "bad.json").write_text(json.dumps(document))
    result = cli("runs", "import", tmp_path / "bad.json")
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr
    assert "export" in result.stderr


def test_the_journal_is_synced_soon_after_a_write(tmp_path: Path) -> None:
    from aoe.state.journal import Syncer

    journal = tmp_path / "run@1.journal"
    journal.write_bytes(b"lines")
    syncer = Syncer(journal)
    assert syncer.due() is None  # nothing written: nothing to wait for
    syncer.written()  # a write: not synced yet ...
    due = syncer.due()
    assert due is not None
    assert 0 < due <= Syncer.SYNC  # ... but within SYNC seconds
    syncer.since = time.monotonic() - Syncer.SYNC
    assert syncer.due() == 0
    syncer.written()  # another write, once it is due: synced at once
    assert syncer.due() is None
    syncer.now()  # nothing to sync: nothing done
    syncer.close()


def test_journal_lines_read_back_as_the_events_they_were(tmp_path: Path) -> None:
    from aoe.events import AgentFinished, AgentState, AttemptFinished, RunFinished, RunStatus
    from aoe.state.journal import journal_line, read_journal
    from aoe.types import Usage

    key = fake_key("sk-proj-")
    events = [
        AttemptFinished(
            run_id="r1",
            at=1.5,
            agent_id="a",
            item=2,
            attempt=1,
            provider="openai",
            model="gpt-4o-mini",
            duration=0.25,
            usage=Usage(3, 4),
            cost=0.01,
            agent_usage=Usage(3, 4),
            agent_cost=0.01,
            run_usage=Usage(30, 40),
            run_cost=0.1,
            error=f"401: bad key {key}",
            error_kind="auth",
            output={"x": [1, "é"]},
        ),
        AgentFinished(
            run_id="r1",
            at=2.0,
            agent_id="a",
            state=AgentState.COMPLETED,
            duration=1.0,
            usage=Usage(3, 4),
            cost=0.01,
            attempts=1,
            output="out",
        ),
        RunFinished(
            run_id="r1",
            at=3.0,
            status=RunStatus.PARTIAL,
            duration=2.0,
            usage=Usage(3, 4),
            cost=0.01,
            budget=None,
            outputs={"o": 1},
            output_errors={},
        ),
    ]
    data = "".join(journal_line(event) for event in events).encode()
    assert key.encode() not in data  # a secret in an error never reaches the disk
    back = [event for event, _ in read_journal(data, "r1")]
    assert back[1:] == events[1:]
    attempt, _, run_end = back
    assert isinstance(attempt, AttemptFinished)
    assert attempt.error is not None
    assert key not in attempt.error
    assert isinstance(run_end, RunFinished)
    assert isinstance(run_end.usage, Usage)
    assert run_end.status is RunStatus.PARTIAL
    # the offsets are where each line ends; a torn last line ends the journal
    offsets = [offset for _, offset in read_journal(data, "r1")]
    assert offsets[-1] == len(data)
    assert len(list(read_journal(data[:-5], "r1"))) == 2
    assert len(list(read_journal(data + b'["AgentFinished","r1",', "r1"))) == 3


def test_a_renamed_workflow_reruns_its_readers_once(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    text = (
        "version: 1\nname: one\nallow_partial_completion: true\n"
        "defaults: {llm: {model: gpt-4o-mini}}\nagents:\n"
        "  a: {prompt: 'a for {{ workflow.name }}'}\n"
        "  b: {prompt: b}\n"
        "  c: {prompt: c}\n"
    )
    path = write(text)
    fake.respond = lambda r: Fail(400, "no") if r.prompt == "c" else Reply()
    _, first, _ = run(cli, provider_env, "run", path)
    fake.reset()
    fake.respond = lambda r: Fail(400, "no") if r.prompt == "c" else Reply()
    path.write_text(text.replace("name: one", "name: two"))
    run(cli, provider_env, "resume", first["run_id"], "--force", "--no-cache")
    assert sorted(called(fake)) == ["a", "c"]  # a reads the name; c had failed
    fake.reset()
    code, _, stderr = run(cli, provider_env, "resume", first["run_id"], "--no-cache")
    assert code == 0, stderr
    assert called(fake) == ["c"]  # nothing else changed since


@pytest.mark.slow
def test_foreach_items_of_older_inputs_are_not_reused(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    path = write(
        "version: 1\nname: f\nmax_parallel_agents: 1\n"
        "inputs: {suffix: {type: string, default: A}}\n"
        "defaults: {llm: {model: gpt-4o-mini}}\nagents:\n"
        '  each: {prompt: \'item {{ item }} {{ inputs.suffix }}\', foreach: \'["w", "x", "y"]\'}\n'
    )
    fake.respond = lambda r: Fail(400, "no") if r.prompt.startswith("item y") else Reply()
    _, first, _ = run(cli, provider_env, "run", path, "--no-cache")
    assert first["agents"]["each"]["state"] == "failed"
    fake.reset()
    fake.respond = lambda r: Fail(400, "no") if r.prompt.startswith("item w") else Reply()
    code, _, _ = run(cli, provider_env, "resume", first["run_id"], "-i", "suffix=B", "--no-cache")
    assert code == 1
    fake.reset()
    code, third, stderr = run(cli, provider_env, "resume", first["run_id"], "--no-cache")
    assert code == 0, stderr
    assert third["agents"]["each"]["output"] == [
        "fake answer to: item w B",
        "fake answer to: item x B",
        "fake answer to: item y B",
    ]


def test_definition_hashes_do_not_collide_by_how_parts_join(write: WriteFile) -> None:
    from aoe.service.runner import load
    from aoe.state.definitions import definitions

    def agent(extra: str) -> str:
        text = "version: 1\nname: d\nagents:\n  a:\n    prompt: hi\n    llm: {model: gpt-4o"
        return definitions(load(write(text + extra)))["a"]

    plain_agent = agent("}\n")
    assert agent("}\n    system: '-'\n") != plain_agent
    with_params = agent(", params: {type: object}}\n")
    with_schema = agent("}\n    output: {format: json, schema: {type: object}}\n")
    assert len({plain_agent, with_params, with_schema}) == 3
    assert agent("}\n    timeout: 99\n") == plain_agent  # does not change the answer


def test_agent_totals_are_the_exact_sums_of_their_attempts(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    import math

    path = write(
        "version: 1\nname: t\nallow_partial_completion: true\n"
        "defaults: {llm: {model: gpt-4o-mini}}\nagents:\n"
        "  each: {prompt: 'item {{ item }}', foreach: '[1, 2, 3, 4, 5, 6, 7]'}\n"
        "  flaky: {prompt: flaky}\n"
    )
    fake.script(Fail(500, "down"), Fail(503, "down"))
    _, first, _ = run(cli, provider_env, "run", path, "--no-cache")
    db = store(tmp_path)
    attempts = db.attempts(first["run_id"])
    for agent in db.agents(first["run_id"]):
        mine = [a for a in attempts if a.agent_id == agent.agent_id]
        assert agent.attempts == len(mine)
        assert agent.cost == math.fsum(a.cost for a in mine)
        assert agent.input_tokens == sum(a.input_tokens for a in mine)
    assert db.agents(first["run_id"])[0].cost > 0


def test_the_live_view_and_the_lines_say_cached_and_resumed() -> None:
    from io import StringIO

    from aoe.cli.ui.live import LiveView
    from aoe.cli.ui.progress import describe_event
    from aoe.cli.ui.text import console
    from aoe.events import AgentFinished, AgentStarted, AgentState
    from aoe.service.runner import load
    from aoe.types import Usage
    from tests.conftest import WORKFLOWS

    workflow = load(WORKFLOWS / "competitor-brief.yaml")
    buffer = StringIO()
    view = LiveView(workflow, console(buffer, width=120), budget=5.0)
    hit = attempt_finished(agent_id="research", duration=0.0, cached=True)
    view(AgentStarted(run_id="r", at=0.0, agent_id="research"))
    view(hit)
    view(
        AgentFinished(
            run_id="r",
            at=0.0,
            agent_id="research",
            state=AgentState.COMPLETED,
            duration=0.0,
            usage=Usage(),
            cost=0.0,
            attempts=1,
        )
    )
    view(
        AgentFinished(
            run_id="r",
            at=0.0,
            agent_id="competitors",
            state=AgentState.COMPLETED,
            duration=0.0,
            usage=Usage(),
            cost=0.0,
            attempts=1,
            resumed=True,
        )
    )
    view.summary()
    lines = buffer.getvalue().splitlines()
    assert "cached" in next(line for line in lines if line.startswith("research"))
    assert "resumed" in next(line for line in lines if line.startswith("competitors"))
    assert "answered from the cache" in (describe_event(hit) or "")


def test_attempt_events_are_read_from_the_attempts(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    fake.script(Fail(500, "down"))
    _, first, _ = run(cli, provider_env, "run", write(CHAIN))
    lines = cli("runs", "events", first["run_id"], "--type", "AttemptFinished").stdout
    events = [json.loads(line) for line in lines.splitlines()]
    assert len(events) == 5  # four agents, one of them twice
    failed = [e for e in events if e["error"]]
    assert len(failed) == 1
    assert "HTTP 500" in failed[0]["error"]
    assert all(e["usage"]["input_tokens"] > 0 for e in events if not e["error"])
    every = cli("runs", "events", first["run_id"]).stdout.splitlines()
    kinds = [json.loads(line)["event"] for line in every]
    assert kinds[0] == "RunStarted"
    assert kinds[-1] == "RunFinished"
    assert kinds.count("AttemptStarted") == 5
    assert "AgentRetrying" in kinds


def test_recover_writes_a_dead_runs_journal_into_the_store_once(tmp_path: Path) -> None:
    from aoe.events import AgentFinished, AgentStarted, AgentState
    from aoe.state.journal import journal_line
    from aoe.state.schema import journal_path
    from aoe.types import Usage

    with Store(tmp_path / "state.db") as db:
        db.create_run(
            "r1", workflow_name="w", workflow_path="/w.yaml", workflow_sha256="0" * 64,
            workflow_text="", workflow_files={}, inputs={}, settings={}, budget=None,
            agents={"a": "d1", "b": "d2"},
        )  # fmt: skip
        db.connection.execute("UPDATE runs SET pid = NULL")  # its process is gone
        events = [
            AgentStarted(run_id="r1", at=1.0, agent_id="a"),
            attempt_started(run_id="r1", at=1.1, fingerprint="f"),
            attempt_finished(run_id="r1", at=1.5, duration=0.4, usage=Usage(5, 7), cost=0.003),
            AgentFinished(
                run_id="r1",
                at=1.6,
                agent_id="a",
                state=AgentState.COMPLETED,
                duration=0.6,
                usage=Usage(5, 7),
                cost=0.003,
                attempts=1,
                output="A!",
            ),
            AgentStarted(run_id="r1", at=1.7, agent_id="b"),
            attempt_started(run_id="r1", at=1.8, agent_id="b", fingerprint="g"),
        ]
        journal = journal_path(db.path, "r1", 1)
        journal.parent.mkdir()
        # the process died in the middle of writing a line
        journal.write_text("".join(journal_line(e) for e in events) + '["AgentFinished",2.0,"b"')
        assert recover(db) == ["r1"]
        assert not journal.exists()
        agents = {a.agent_id: a for a in db.agents("r1")}
        assert (agents["a"].state, agents["a"].output) == ("completed", "A!")
        assert agents["a"].cost == pytest.approx(0.003)
        assert agents["a"].model == "gpt-4o-mini"
        # b's call may have been made and billed: its reservation counts
        assert [(a.agent_id, a.status) for a in db.attempts("r1")] == [
            ("a", "ok"),
            ("b", "started"),
        ]
        assert db.spent("r1") == pytest.approx(0.023)
        assert db.run("r1").status == "interrupted"
        # a second recover (another process) finds nothing more to write
        journal.write_text("".join(journal_line(e) for e in events))
        db.connection.execute(
            "UPDATE runs SET journal_session = 1, journal_offset = ? WHERE run_id = 'r1'",
            (journal.stat().st_size,),
        )
        kinds = [e["type"] for e in db.events("r1")]
        assert recover(db) == []
        assert not journal.exists()
        assert [e["type"] for e in db.events("r1")] == kinds


@pytest.mark.parametrize(
    ("error", "kind", "advice"),
    [
        pytest.param(
            sqlite3.OperationalError("database is locked"),
            "StateWriteFailed",
            "run again",
            id="busy-past-the-wait",
        ),
        pytest.param(
            sqlite3.DatabaseError("database disk image is malformed"),
            "StateUnusable",
            "move it aside",
            id="damaged",
        ),
    ],
)
def test_a_store_error_after_opening_is_told_for_what_it_is(
    tmp_path: Path, error: sqlite3.Error, kind: str, advice: str
) -> None:
    """A store busy for longer than the wait is not a damaged store: moving it
    aside, as the damaged one's message says, would hide every run record."""
    from aoe.errors import AoeError
    from aoe.state.schema import translated

    with pytest.raises(AoeError) as caught, translated(tmp_path / "state.db"):
        raise error
    assert type(caught.value).__name__ == kind
    assert advice in str(caught.value)


def test_which_kind_of_read_only_a_store_error_was_is_said(tmp_path: Path) -> None:
    """SQLite says "attempt to write a readonly database" for six causes; the
    error names the one it was (here: the file moved from under the connection)."""
    from aoe.errors import StateWriteFailed
    from aoe.state.schema import translated

    path = tmp_path / "x.db"
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("CREATE TABLE t (a)")
    path.unlink()
    said = "readonly database; SQLITE_READONLY_DBMOVED"
    with pytest.raises(StateWriteFailed, match=said), translated(path):
        connection.execute("INSERT INTO t VALUES (1)")
    connection.close()


def test_looking_at_the_store_keeps_sqlites_locks(tmp_path: Path) -> None:
    """Issue 13's store-loss check read the database header with open() and
    close(): closing any descriptor of a file drops every POSIX lock the process
    holds on it, SQLite's shared lock included. Another process's last
    connection then took itself for the last one and deleted the -wal and -shm
    this process was using, and runs started together on a fresh store lost
    records (it took the store for lost, and 'restored' it). The header is read
    through a descriptor kept open, and the log stays."""
    from aoe.state.files import StoreFile

    path = tmp_path / "state.db"
    held = Store(path)  # this process's connection, in WAL mode, with the log open
    wal = os.stat(f"{path}-wal").st_ino
    seen = StoreFile.of(path)
    seen.seen = (0, 0)  # as if the file changed: the next look reads its header
    assert seen.lost() is None
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute('SELECT count(*) FROM runs').fetchall(); c.close()"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
    assert os.stat(f"{path}-wal").st_ino == wal  # the other's close did not delete it
    assert seen.lost() is None
    held.close()


def test_filter_typos_are_refused_naming_the_choices(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """`--status faild` and `-t bogus` printed nothing, exit 0."""
    _, ran, _ = run(cli, provider_env, "run", write(CHAIN))
    result = cli("runs", "list", "--status", "faild")
    assert result.exit_code == 2
    assert "--status 'faild' is none of running, interrupted, completed" in result.stderr
    assert "(did you mean failed?)" in result.stderr
    result = cli("runs", "events", ran["run_id"], "-t", "agent_finishd")
    assert result.exit_code == 2
    assert "(did you mean agent_finished?)" in result.stderr
    for good in ("agent_finished", "AgentFinished", "agent_failed"):
        assert cli("runs", "events", ran["run_id"], "-t", good).exit_code == 0


def test_commands_that_read_the_store_make_none(cli: RunCli, tmp_path: Path) -> None:
    """Read-only commands created `.aoe/` in whatever folder they ran (cron)."""
    result = cli("runs", "list")
    assert result.exit_code == 0
    assert f"there is no run store at {tmp_path / '.aoe' / 'state.db'}" in result.stderr
    assert cli("runs", "list", "-f", "json").stdout.strip() == "[]"
    for args in (["runs", "show", "r1"], ["runs", "output", "r1"], ["runs", "events", "r1"]):
        result = cli(*args)
        assert result.exit_code == 2
        assert "no run r1: there is no run store at" in result.stderr
    assert cli("runs", "prune", "--older-than", "1d").exit_code == 0
    assert json.loads(cli("cache", "stats", "-f", "json").stdout)["entries"] == 0
    assert cli("cache", "clear").exit_code == 0
    assert cli("status").exit_code == 0
    assert not (tmp_path / ".aoe").exists()


def test_resume_latest_says_why_it_starts_a_new_run(cli: RunCli, write: WriteFile) -> None:
    path = write(
        "version: 1\nname: w\nagents:\n"
        "  a: {prompt: hi, llm: {provider: mock, model: gpt-4o, max_tokens: 10,"
        " params: {reply: x}}, output: {format: json}, retry: {max_retries: 0}}\n"
    )
    first = cli("run", path, "--mock", "-q")
    assert first.exit_code == 1
    again = cli("run", path, "--resume-latest", "-q")
    assert "did not complete, but it ran with --mock and this one does not" in again.stderr
    assert "starting a new run" in again.stderr
