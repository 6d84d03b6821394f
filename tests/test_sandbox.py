"""The sandbox process: template work bounded in time and memory, off the event loop.

Each test looks from the engine's side: what a call returns or raises, whether
the event loop's thread stayed free of the work meanwhile, and whether the processes were started,
killed and replaced as they should be.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import pytest

from aoe.errors import OutputInvalid
from aoe.sandbox.pool import INLINE_REPLY, Sandbox, SandboxFailed, checks_here
from tests.conftest import until


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    box = Sandbox(deadline=1.0, check_deadline=1.0, memory=48 << 20)
    try:
        yield box
    finally:
        await box.aclose()


class LoopWatch:
    """What the event loop's thread did meanwhile: the CPU time it used (its
    own, not the machine's clock: a template at work in this thread would show
    here in full, however busy the machine) and the ticks of a 5 ms ticker on
    the same loop (it ran other tasks while it waited)."""

    LIMIT = 0.3
    """CPU seconds of the loop's thread a sandboxed call may use: sending,
    receiving, and replacing a killed process; a costly template run here
    instead would use its whole deadline (1 s) or more."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.ticks = 0
        self._began = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.005)
            self.ticks += 1

    async def __aenter__(self) -> LoopWatch:
        self._began = time.thread_time()
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.cpu = time.thread_time() - self._began

    def check(self) -> None:
        print(f"the loop's thread used {self.cpu:.3f} s of CPU; {self.ticks} ticks")
        assert self.cpu < self.LIMIT, f"the event loop's thread worked {self.cpu:.3f} s"
        assert self.ticks > 0, "the loop ran nothing else meanwhile"


CONTEXT = {"inputs": {"n": 100_000, "names": ["a", "b"]}, "agents": {}, "workflow": {"name": "w"}}


async def test_placeholders_and_plain_conditions_never_start_a_process(sandbox: Sandbox) -> None:
    lane = sandbox.lane()
    assert await lane.render("Hi {{ inputs.names }}", CONTEXT) == "Hi ['a', 'b']"
    assert await lane.when("inputs.n == 100000", CONTEXT) is True
    assert await lane.foreach("inputs.names", CONTEXT) == ["a", "b"]
    assert await lane.check('{"a": 1}', {"type": "object"}, here=True) == {"a": 1}
    assert sandbox.started == 0


async def test_full_templates_and_expressions_render_in_the_sandbox(sandbox: Sandbox) -> None:
    lane = sandbox.lane()
    text = "{% for n in inputs.names %}{{ loop.index }}={{ n | upper }} {% endfor %}"
    assert await lane.render(text, CONTEXT) == "1=A 2=B "
    assert await lane.when("inputs.names | length > 1", CONTEXT) is True
    assert await lane.foreach("inputs.names + ['c']", CONTEXT) == ["a", "b", "c"]
    assert sandbox.started == 1  # one process served them all


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param(
            "{% for i in range(inputs.n) %}{% for j in range(inputs.n) %}{% endfor %}{% endfor %}",
            "took longer than 1 s",
            id="nested-loops-over-an-input",
        ),
        pytest.param(
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
            "more than the 48 MiB of memory",
            id="doubling-a-string",
        ),
        pytest.param(
            "{{ 'x' * inputs.n * inputs.n }}", "would be too large", id="repetition-by-inputs"
        ),
        pytest.param("{{ 7 ** inputs.n }}", "too large a number", id="power-by-an-input"),
        pytest.param("{{ lipsum(n=inputs.n) }}", "lipsum() may make", id="lipsum-by-an-input"),
        pytest.param(
            "{{ '%0*d' % (inputs.n, 1) }}{{ '%099999999d' % 1 }}",
            "width or precision",
            id="format-width",
        ),
        pytest.param(
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            "nested too deeply",
            id="endless-recursion",
        ),
        pytest.param(
            "{{ range(100000) | join(',') * 100 }}", "would be too large", id="rendered-too-large"
        ),
    ],
)
@pytest.mark.slow
async def test_a_costly_template_fails_alone_and_the_loop_stays_free(
    sandbox: Sandbox, text: str, reason: str
) -> None:
    lane = sandbox.lane()
    async with LoopWatch() as watch:
        with pytest.raises(SandboxFailed, match=re.escape(reason)):
            await lane.render(text, CONTEXT)
        # the sandbox is usable at once afterwards (a killed process is replaced)
        assert await lane.render("{{ 1 + 1 }}", CONTEXT) == "2"
    watch.check()


@pytest.mark.slow
async def test_a_late_process_is_killed_and_replaced(sandbox: Sandbox) -> None:
    lane = sandbox.lane()
    slow = "{% for i in range(inputs.n) %}{% for j in range(inputs.n) %}{% endfor %}{% endfor %}"
    with pytest.raises(SandboxFailed, match="took longer"):
        await lane.render(slow, CONTEXT)
    await lane.render("{{ 1 + 1 }}", CONTEXT)
    assert sandbox.started == 2


async def test_a_cancelled_request_does_not_leave_its_answer_to_the_next(sandbox: Sandbox) -> None:
    lane = sandbox.lane()
    slow = "{% for i in range(inputs.n) %}{% for j in range(300) %}{% endfor %}{% endfor %}x"
    task = asyncio.create_task(lane.render(slow, CONTEXT))
    await until(lambda: sandbox.sent > 0)  # the request is on its way to the process
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await lane.render("{{ 'second' | upper }}", CONTEXT) == "SECOND"


@pytest.mark.slow
async def test_one_run_holds_one_process_at_a_time(sandbox: Sandbox) -> None:
    """A run's requests queue in its lane, so a hostile run leaves the other
    processes to everyone else."""
    slow = "{% for i in range(inputs.n) %}{% for j in range(inputs.n) %}{% endfor %}{% endfor %}"
    hostile = sandbox.lane()
    jobs = [asyncio.create_task(hostile.render(slow, CONTEXT)) for _ in range(3)]
    await until(lambda: sandbox.sent > 0)  # the first is on its way to a process
    assert await sandbox.lane().render("{{ 2 * 3 }}", CONTEXT) == "6"
    assert not any(job.done() for job in jobs)  # not behind the hostile run's requests
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert all(isinstance(r, SandboxFailed) for r in results)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("{{ inputs.missing.x }}", "has no attribute 'missing'", id="undefined"),
        pytest.param("{{ ''.__class__ }}", "unsafe", id="sandbox-refusal"),
    ],
)
async def test_template_errors_come_back_as_messages(
    sandbox: Sandbox, text: str, problem: str
) -> None:
    with pytest.raises(SandboxFailed, match=problem):
        await sandbox.lane().render(text + "{% if true %}{% endif %}", CONTEXT)


async def test_foreach_must_give_a_list_of_json_values(sandbox: Sandbox) -> None:
    lane = sandbox.lane()
    with pytest.raises(SandboxFailed, match="gave str, not a list"):
        await lane.foreach("inputs.names | join(',')", CONTEXT)
    with pytest.raises(SandboxFailed, match="cannot be passed on as JSON"):
        await lane.foreach("[cycler(1, 2)]", CONTEXT)


@pytest.mark.parametrize(
    ("schema", "here"),
    [
        pytest.param({"type": "object", "required": ["a"]}, True, id="plain"),
        pytest.param({"type": "string", "pattern": "^(a+)+$"}, False, id="pattern"),
        pytest.param({"type": "array", "uniqueItems": True}, False, id="unique-items"),
        pytest.param({"$ref": "#/$defs/a", "$defs": {"a": {}}}, False, id="ref"),
        pytest.param({"enum": list(range(500))}, False, id="large-enum"),
    ],
)
def test_which_schemas_are_checked_in_process(schema: dict[str, object], here: bool) -> None:
    assert checks_here(schema) is here


@pytest.mark.slow
async def test_a_reply_is_checked_in_the_sandbox_when_it_could_be_slow(sandbox: Sandbox) -> None:
    lane = sandbox.lane()
    evil = {"type": "string", "pattern": "^(a+)+$"}
    async with LoopWatch() as watch:
        with pytest.raises(OutputInvalid, match="could not be checked: it took longer"):
            await lane.check('"' + "a" * 40 + '!"', evil, here=False)
    watch.check()
    long_reply = "[" + ",".join(["1"] * INLINE_REPLY) + "]"
    assert await lane.check(long_reply, {"type": "array"}, here=True) == [1] * INLINE_REPLY
    with pytest.raises(OutputInvalid, match="is not of type"):
        await lane.check(long_reply, {"type": "object"}, here=True)
    assert sandbox.started == 2  # the long reply went there too, to a new process


async def test_a_runs_large_inputs_go_to_a_process_once(sandbox: Sandbox) -> None:
    """A foreach over many items renders each item with the same inputs: they are
    sent once per process, not once per item."""
    files = [{"path": f"f{i}.py", "diff": "+" * 10_000} for i in range(100)]  # 1 MB
    context = {"inputs": {"files": files}, "agents": {}, "workflow": {"name": "w"}}
    lane = sandbox.lane()
    text = "{{ index + 1 }} of {{ inputs.files | length }}: {{ inputs.files[index].path }}"
    for index in range(100):
        rendered = await lane.render(text, {**context, "item": files[index], "index": index})
        assert rendered == f"{index + 1} of 100: f{index}.py"
    assert sandbox.sent < 3_500_000  # the inputs once, and each item (10 kB) with its request


async def test_parts_a_process_let_go_are_sent_again(sandbox: Sandbox) -> None:
    """A process keeps the parts of 32 MiB of runs at most: a run whose inputs it
    let go gets them sent again, and renders the same."""
    first = sandbox.lane()
    big = {"inputs": {"text": "x" * 1_000_000, "n": 0}, "agents": {}}
    text = "{{ inputs.n }} {{ inputs.text | length }}"
    assert await first.render(text, big) == "0 1000000"
    for n in range(1, 12):  # eleven other runs' inputs of 4 MB each push the first out
        other = {"inputs": {"text": "y" * 1_000_000, "n": n}, "agents": {}}
        assert await sandbox.lane().render(text, other) == f"{n} 1000000"
    sent = sandbox.sent
    assert await first.render(text, big) == "0 1000000"
    assert sandbox.sent - sent > 1_000_000  # asked without them, told they were gone, sent
    assert sandbox.started == 1


async def test_the_sandbox_process_holds_no_api_keys(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import fake_key

    key = fake_key()
    monkeypatch.setenv("OPENAI_API_KEY", key)
    await sandbox.lane().render("{% if true %}x{% endif %}", CONTEXT)
    [child] = sandbox._idle
    with open(f"/proc/{child.process.pid}/environ", "rb") as environ:
        assert key.encode() not in environ.read()


async def test_a_huge_foreach_list_is_refused_in_the_sandbox(sandbox: Sandbox) -> None:
    """`[[[[]]]] * 4000000` is a few bytes of JSON in the sandbox and four million
    objects once decoded: it never reaches the engine's event loop."""
    async with LoopWatch() as watch:
        with pytest.raises(SandboxFailed, match="it gave 4,000,000 items"):
            await sandbox.lane().foreach("[[[[]]]] * 4000000", CONTEXT)
    watch.check()


async def test_half_characters_pass_through_the_sandbox(sandbox: Sandbox) -> None:
    """A lone surrogate (a server's JSON can hold one) neither breaks the pipe nor
    kills the process."""
    context = {**CONTEXT, "inputs": {"t": "a\ud83db"}}
    assert await sandbox.lane().render("{% if true %}{{ inputs.t }}{% endif %}", context) == (
        "a\ud83db"
    )
    assert sandbox.started == 1


@pytest.mark.slow
async def test_a_run_that_used_its_sandbox_time_is_refused_at_once() -> None:
    from aoe.sandbox.pool import Lane

    box = Sandbox(deadline=0.5)
    try:
        lane = Lane(box, budget=0.8)
        slow = (
            "{% for i in range(inputs.n) %}{% for j in range(inputs.n) %}{% endfor %}{% endfor %}"
        )
        for _ in range(2):
            with pytest.raises(SandboxFailed, match="took longer"):
                await lane.render(slow, CONTEXT)
        sent = box.sent
        with pytest.raises(SandboxFailed, match="has used its"):
            await lane.render("{{ 1 + 1 }}", CONTEXT)
        assert box.sent == sent  # refused at once: nothing sent to a process
        assert await box.lane().render("{{ 1 + 1 }}", CONTEXT) == "2"  # other runs go on
    finally:
        await box.aclose()
