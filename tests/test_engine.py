"""Scheduling and states, observed from outside: what the provider received, and when."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from aoe.config.settings import Settings, load_settings
from aoe.events import AgentFinished, Event, EventBus, RunFinished, RunStatus
from aoe.format.workflow import Workflow
from aoe.service.runner import RunOptions, load, run_workflow
from aoe.service.wiring import engine_for
from tests.conftest import WriteFile
from tests.fakeserver import Fail, FakeProvider, Received, Reply


@pytest.fixture
def settings(provider_env: dict[str, str], tmp_path: Path) -> Settings:
    return load_settings(environ=provider_env, cwd=tmp_path)


def workflow(write: WriteFile, agents: str, **top: Any) -> Workflow:
    head = "".join(f"{key}: {value}\n" for key, value in top.items())
    return load(
        write(
            f"version: 1\nname: t\n{head}defaults:\n  llm: {{model: gpt-4o-mini}}\n"
            f"agents:\n{agents}"
        )
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def states(self) -> dict[str, str]:
        return {e.agent_id: str(e.state) for e in self.events if isinstance(e, AgentFinished)}

    def outputs(self) -> dict[str, Any]:
        return {e.agent_id: e.output for e in self.events if isinstance(e, AgentFinished)}

    def finished(self) -> RunFinished:
        [event] = [e for e in self.events if isinstance(e, RunFinished)]
        return event


async def run(wf: Workflow, settings: Settings, **options: Any) -> tuple[RunStatus, Recorder]:
    recorder = Recorder()
    inputs = {name: spec.default for name, spec in wf.inputs.items()}
    status = await run_workflow(wf, inputs, settings, RunOptions(**options), subscribers=[recorder])
    return status, recorder


def by_prompt(delays: dict[str, float]) -> Any:
    def respond(request: Received) -> Reply:
        return Reply(text=f"done {request.prompt}", delay=delays.get(request.prompt, 0.0))

    return respond


def seen(fake: FakeProvider, prompt: str) -> Received:
    [request] = [r for r in fake.received if r.prompt == prompt]
    return request


@pytest.mark.slow
async def test_an_agent_starts_when_its_own_dependencies_are_done(
    write: WriteFile, fake: FakeProvider, settings: Settings
) -> None:
    wf = workflow(
        write,
        """\
  fast: {prompt: fast}
  slow: {prompt: slow}
  after_fast: {prompt: after_fast, depends_on: fast}
""",
    )
    fake.respond = by_prompt({"fast": 0.05, "slow": 0.6})
    status, _ = await run(wf, settings)
    assert status is RunStatus.COMPLETED
    slow, after_fast = seen(fake, "slow"), seen(fake, "after_fast")
    assert slow.finished is not None
    assert after_fast.arrived < slow.finished  # not level by level
    assert after_fast.prompt == "after_fast"


async def test_dependency_order_and_outputs_flow(
    write: WriteFile, fake: FakeProvider, settings: Settings
) -> None:
    wf = workflow(
        write,
        """\
  a: {prompt: a}
  b: {prompt: "b after {{ agents.a.output }}", depends_on: a}
  c: {prompt: "c after {{ agents.a.output }} and {{ agents.b.output }}", depends_on: [a, b]}
""",
    )
    fake.respond = lambda request: Reply(text=request.prompt.upper())
    status, recorder = await run(wf, settings)
    assert status is RunStatus.COMPLETED
    assert [r.prompt for r in fake.received] == ["a", "b after A", "c after A and B AFTER A"]
    first, second, third = fake.received
    assert first.finished is not None
    assert second.finished is not None
    assert first.finished <= second.arrived
    assert second.finished <= third.arrived
    assert recorder.outputs()["c"] == "C AFTER A AND B AFTER A"


@pytest.mark.slow
async def test_max_parallel_agents_is_never_exceeded(
    write: WriteFile, fake: FakeProvider, settings: Settings
) -> None:
    agents = "".join(f"  a{i}: {{prompt: p{i}}}\n" for i in range(12))
    wf = workflow(write, agents, max_parallel_agents=3)
    fake.respond = lambda request: Reply(delay=0.05)
    status, _ = await run(wf, settings)
    assert status is RunStatus.COMPLETED
    assert len(fake.received) == 12
    assert fake.max_in_flight == 3
    fake.reset()
    fake.respond = lambda request: Reply(delay=0.05)
    await run(wf, settings, max_parallel=5)  # --max-parallel
    assert fake.max_in_flight == 5


async def test_the_longest_remaining_path_goes_first(
    write: WriteFile, fake: FakeProvider, settings: Settings
) -> None:
    wf = workflow(
        write,
        """\
  short_1: {prompt: short_1}
  short_2: {prompt: short_2}
  long_1: {prompt: long_1}
  long_2: {prompt: long_2, depends_on: long_1}
  long_3: {prompt: long_3, depends_on: long_2}
""",
        max_parallel_agents=1,
    )
    await run(wf, settings)
    assert [r.prompt for r in fake.received][:2] == ["long_1", "long_2"]


async def test_when_and_trigger_rules(
    write: WriteFile, fake: FakeProvider, settings: Settings
) -> None:
    wf = workflow(
        write,
        """\
  triage:
    prompt: triage
    output: {format: json, schema: {type: object, properties: {kind: {type: string}}}}
  bug: {prompt: bug, depends_on: triage, when: "agents.triage.output.kind == 'bug'"}
  question: {prompt: question, depends_on: triage, when: "agents.triage.output.kind == 'question'"}
  after_bug: {prompt: after_bug, depends_on: bug}
  after_bug_done: {prompt: after_bug_done, depends_on: bug, trigger_rule: all_done}
  reply:
    prompt: "reply {{ agents.bug.status }} {{ agents.question.status }}"
    depends_on: [bug, question]
    trigger_rule: any_completed
""",
    )
    fake.respond = lambda r: Reply(json={"kind": "question"}) if r.prompt == "triage" else Reply()
    status, recorder = await run(wf, settings)
    assert status is RunStatus.COMPLETED
    assert recorder.states() == {
        "triage": "completed",
        "bug": "skipped",
        "question": "completed",
        "after_bug": "skipped",
        "after_bug_done": "completed",
        "reply": "completed",
    }
    prompts = [r.prompt for r in fake.received]
    assert "bug" not in prompts
    assert "after_bug" not in prompts
    assert "reply skipped completed" in prompts


async def test_any_completed_with_nothing_completed_is_skipped(
    write: WriteFile, fake: FakeProvider, settings: Settings
) -> None:
    wf = workflow(
        write,
        """\
  a: {prompt: a}
  b: {prompt: b}
  either: {prompt: either, depends_on: [a, b], trigger_rule: any_completed}
""",
        allow_partial_completion="true",
    )
    fake.respond = lambda r: Fail(400, "no")
    status, recorder = await run(wf, settings)
    assert status is RunStatus.FAILED  # no agent completed: failed, never partial
    assert recorder.states()["either"] == "skipped"


async def test_foreach_items_run_concurrently_and_stay_in_order(
    write: WriteFile, fake: FakeProvider, settings: Settings
) -> None:
    wf = workflow(
        write,
        """\
  each:
    foreach: inputs.names
    prompt: "{{ index }}:{{ item }}"
  join: {prompt: "{{ agents.each.output | join(',') }}", depends_on: each}
""",
        inputs="{names: {type: list, default: [ann, bob, cid, dee]}}",
        max_parallel_agents=3,
    )
    delays = {"0:ann": 0.3, "1:bob": 0.2, "2:cid": 0.1, "3:dee": 0.0}
    fake.respond = lambda r: Reply(text=r.prompt.upper(), delay=delays.get(r.prompt, 0))
    status, recorder = await run(wf, settings)
    assert status is RunStatus.COMPLETED
    assert fake.max_in_flight == 3  # items share the run's slots
    assert recorder.outputs()["each"] == ["0:ANN", "1:BOB", "2:CID", "3:DEE"]
    assert seen(fake, "0:ANN,1:BOB,2:CID,3:DEE").prompt


async def test_foreach_over_nothing_completes_with_an_empty_list(
    write: WriteFile, fake: FakeProvider, settings: Settings
) -> None:
    wf = workflow(
        write,
        """\
  each: {foreach: inputs.names, prompt: "{{ item }}"}
""",
        inputs="{names: {type: list, default: []}}",
    )
    status, recorder = await run(wf, settings)
    assert (status, recorder.outputs()["each"], fake.received) == (RunStatus.COMPLETED, [], [])


async def test_fail_fast_keeps_in_flight_work_and_skips_the_rest(
    write: WriteFile, fake: FakeProvider, settings: Settings
) -> None:
    wf = workflow(
        write,
        """\
  breaks: {prompt: breaks}
  in_flight: {prompt: in_flight}
  later: {prompt: later, depends_on: in_flight}
  queued: {prompt: queued}
""",
        max_parallel_agents=2,
    )
    fake.respond = lambda r: Fail(400, "bad request") if r.prompt == "breaks" else Reply(delay=0.2)
    status, recorder = await run(wf, settings)
    assert status is RunStatus.FAILED
    assert recorder.states() == {
        "breaks": "failed",
        "in_flight": "completed",
        "later": "skipped",
        "queued": "skipped",
    }
    assert sorted(r.prompt for r in fake.received) == ["breaks", "in_flight"]


async def test_partial_completion_runs_everything_it_can(
    write: WriteFile, fake: FakeProvider, settings: Settings
) -> None:
    wf = workflow(
        write,
        """\
  breaks: {prompt: breaks}
  after_break: {prompt: after_break, depends_on: breaks}
  fine: {prompt: fine}
  after_fine: {prompt: after_fine, depends_on: fine}
""",
        allow_partial_completion="true",
        max_parallel_agents=1,
    )
    fake.respond = lambda r: Fail(400, "bad") if r.prompt == "breaks" else Reply()
    status, recorder = await run(wf, settings)
    assert status is RunStatus.PARTIAL
    assert recorder.states() == {
        "breaks": "failed",
        "after_break": "skipped",
        "fine": "completed",
        "after_fine": "completed",
    }


async def test_outputs_render_and_a_broken_one_is_reported(
    write: WriteFile, fake: FakeProvider, settings: Settings
) -> None:
    wf = workflow(
        write,
        """\
  a: {prompt: a, output: {format: json}}
""",
        outputs="{ok: '{{ agents.a.output.word }}!', "
        "broken: '{{ agents.a.output.missing.deeper }}'}",
    )
    fake.respond = lambda r: Reply(json={"word": "yes"})
    _, recorder = await run(wf, settings)
    finished = recorder.finished()
    assert finished.outputs == {"ok": "yes!", "broken": None}
    assert "cannot render" in finished.output_errors["broken"]


async def test_cancelling_a_run_cancels_calls_and_leaves_no_tasks(
    write: WriteFile, fake: FakeProvider, settings: Settings
) -> None:
    wf = workflow(
        write,
        """\
  a: {prompt: a}
  b: {prompt: b}
  c: {prompt: c, depends_on: [a, b]}
""",
    )
    fake.respond = lambda r: Reply(delay=5)
    recorder = Recorder()
    task = asyncio.ensure_future(run_workflow(wf, {}, settings, subscribers=[recorder]))
    while len(fake.received) < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert recorder.states() == {"a": "cancelled", "b": "cancelled", "c": "cancelled"}
    assert recorder.finished().status is RunStatus.CANCELLED
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []


async def test_engine_runs_at_most_max_concurrent_workflows(
    write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    settings = load_settings(
        environ={**provider_env, "MAX_CONCURRENT_WORKFLOWS": "1"}, cwd=tmp_path
    )
    wf = workflow(write, "  a: {prompt: a}\n")
    fake.respond = lambda r: Reply(delay=0.1)
    engine = engine_for(settings)
    try:
        statuses = await asyncio.gather(*(engine.run(wf, {}, EventBus()) for _ in range(3)))
    finally:
        await engine.aclose()
    assert statuses == [RunStatus.COMPLETED] * 3
    assert fake.max_in_flight == 1
    starts = sorted(r.arrived for r in fake.received)
    ends = sorted(r.finished or 0 for r in fake.received)
    assert starts[1] >= ends[0]
    assert starts[2] >= ends[1]


def test_event_log_is_bounded() -> None:
    bus = EventBus(keep=5)
    for i in range(50):
        bus.emit(Event(run_id=str(i), at=0.0))
    assert [e.run_id for e in bus.log] == ["45", "46", "47", "48", "49"]


async def test_mock_is_deterministic_and_schema_valid(write: WriteFile, tmp_path: Path) -> None:
    import jsonschema

    schema = {
        "type": "object",
        "required": ["name", "tags", "score", "kind"],
        "properties": {
            "name": {"type": "string", "minLength": 20},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "score": {"type": "integer", "minimum": 3, "maximum": 9},
            "kind": {"enum": ["a", "b", "c"]},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "number"}]},
            "nested": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
        },
    }
    import json as _json

    wf = workflow(
        write,
        f"""\
  a:
    prompt: a
    llm: {{provider: mock, model: gpt-4o}}
    output: {{format: json, schema: {_json.dumps(schema)}}}
  b: {{prompt: b, llm: {{provider: mock, model: gpt-4o}}}}
""",
    )
    settings = load_settings(environ={}, cwd=tmp_path)
    _, first = await run(wf, settings)
    _, second = await run(wf, settings)
    assert first.outputs() == second.outputs()
    jsonschema.validate(first.outputs()["a"], schema)
    assert first.outputs()["b"].startswith("Mock answer")
    assert first.finished().cost > 0  # priced like gpt-4o


async def test_the_engine_uses_the_limiter_and_providers_it_is_handed(
    write: WriteFile, tmp_path: Path
) -> None:
    from aoe.engine.engine import Engine
    from aoe.policy.limits import Permit
    from aoe.providers import ProviderPool

    class Limiter:
        """Admits everything; counts what it is asked."""

        def __init__(self) -> None:
            self.acquired: list[tuple[str, str]] = []
            self.released: list[int | None] = []

        async def acquire(
            self, provider: str, model: str, tokens: int, on_wait: Any = None
        ) -> Permit:
            self.acquired.append((provider, model))
            return Permit(provider, len(self.acquired), 0.0, tokens, 0.0)

        def release(self, permit: Permit, used_tokens: int | None) -> None:
            self.released.append(used_tokens)

    settings = load_settings(environ={}, cwd=tmp_path)
    providers = ProviderPool(settings)
    limiter = Limiter()
    wf = workflow(write, "  a: {prompt: a}\n  b: {prompt: b, depends_on: [a]}\n")
    engine = Engine(settings, providers, limiter)
    try:
        status = await engine.run(wf, {}, EventBus(), mock=True)
    finally:
        await engine.aclose()
    assert status is RunStatus.COMPLETED
    assert engine.providers is providers
    assert limiter.acquired == [("mock", "gpt-4o-mini")] * 2
    assert len(limiter.released) == 2
    assert all(used for used in limiter.released)
