"""How long hostile workflows hold the event loop, and how much they grow aoe.

Issue 13's goal: no workflow, request or reply holds the event loop longer
than 50 ms or makes the process grow by more than 100 MB. Each case runs on
one engine in this process, with the mock provider, while a ticker on the
same loop notes the longest gap between its ticks (the loop's longest hold)
and a thread samples the process's resident size (VmRSS, the sandbox
processes not included: they are bounded on their own, 100 MiB each).

The baseline, measured in the same run: a benign workflow of the same shape
(a loop, a filter, a JSON reply), whose holds are the engine's ordinary ones.
Each hostile case is expected to end its agents failed with a reason; its
figures are printed next to the baseline's.

Run with ``make bench`` or ``python bench/hostile.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aoe.config.settings import load_settings
from aoe.engine.engine import Engine
from aoe.events import AgentFinished, Event
from aoe.service.runner import RunOptions, load, run_workflow
from aoe.service.wiring import engine_for

BENIGN = """\
version: 1
name: benign
inputs:
  n: {type: integer, default: 1000}
agents:
  render:
    llm: {provider: mock, model: m}
    prompt: "{% for i in range(inputs.n) %}{{ i | string | upper }} {% endfor %}"
  decide:
    llm: {provider: mock, model: m}
    prompt: hi
    when: "range(inputs.n) | select('odd') | list | length > 10"
  json:
    llm: {provider: mock, model: m}
    prompt: hi
    output: {format: json, schema: {type: array, items: {type: string}, minItems: 50}}
"""

HOSTILE = {
    "nested loops over an input": (
        '"{% for i in range(inputs.n) %}{% for j in range(inputs.n) %}{% endfor %}{% endfor %}"'
    ),
    "string doubling to gigabytes": (
        "\"{% set ns = namespace(s='x') %}{% for i in range(40) %}"
        '{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}"'
    ),
    "repetition by inputs": "\"{{ 'x' * inputs.n * inputs.n }}\"",
    "power by an input": '"{{ 7 ** inputs.n }}"',
    "lipsum by an input": '"{{ lipsum(n=inputs.n) }}"',
    "sorting 4 million items": '"{{ ((range(inputs.n) | list) * 40) | sort | unique | list }}"',
    "placeholders making 5 MB": '"' + "{{ agents.big.output }}" * 50 + '"',
}

SCHEMAS = {
    "schema minLength 50,000,000": "{type: string, minLength: 50000000}",
    "schema minItems 20,000,000": "{type: array, minItems: 20000000}",
    "schema pattern (a+)+$ (ReDoS)": "{type: string, pattern: '^(a+)+$'}",
}


def hostile_workflow(name: str, prompt: str | None, schema: str | None) -> str:
    lines = [
        "version: 1",
        f"name: hostile-{abs(hash(name)) % 10_000}",
        "inputs:",
        "  n: {type: integer, default: 100000}",
        "allow_partial_completion: true",
        "agents:",
        "  big:",
        "    llm: {provider: mock, model: m, max_tokens: 1000000}",
        "    prompt: hi",
        "    output: {format: json, schema: {type: string, minLength: 100000}}",
        "  bad:",
        "    depends_on: [big]",
        "    trigger_rule: all_done",
        "    llm: {provider: mock, model: m, max_tokens: 1000000, params: {reply: "
        + (
            "'\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!\"'"
            if schema and "pattern" in schema
            else "null"
        )
        + "}}",
        f"    prompt: {prompt or 'hi'}",
    ]
    if schema:
        lines.append(f"    output: {{format: json, schema: {schema}}}")
    return "\n".join(lines) + "\n"


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Watch:
    """The loop's longest hold and the process's peak RSS.

    A 1 ms ticker on the loop notes the longest gap between its ticks, in CPU
    time of the loop's thread (what aoe's code ran meanwhile: on a busy machine
    the wall-clock gap also counts the time the process waited for a core),
    and in wall time, reported beside it."""

    def __init__(self) -> None:
        self.hold = 0.0
        self.wall = 0.0
        self.peak = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    async def _tick(self) -> None:
        last, last_cpu = time.perf_counter(), time.thread_time()
        while True:
            await asyncio.sleep(0.001)
            now, cpu = time.perf_counter(), time.thread_time()
            self.wall = max(self.wall, now - last - 0.001)
            self.hold = max(self.hold, cpu - last_cpu)
            last, last_cpu = now, cpu

    async def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        self.peak = rss_mb()
        sampler = threading.Thread(target=self._sample, daemon=True)
        sampler.start()
        ticker = asyncio.create_task(self._tick())
        try:
            return await coroutine
        finally:
            ticker.cancel()
            self._stop.set()
            sampler.join()


async def measure(engine: Engine, path: Path) -> tuple[float, float, float, float, dict[str, str]]:
    settings = engine.settings
    workflow = load(path)
    inputs = {name: spec.default for name, spec in workflow.inputs.items()}
    events: list[Event] = []
    gc.collect()
    before = rss_mb()
    watch = Watch()
    began = time.perf_counter()
    await watch.run(
        run_workflow(
            workflow,
            inputs,
            settings,
            RunOptions(mock=True),
            subscribers=[events.append],
            engine=engine,
        )
    )
    took = time.perf_counter() - began
    errors = {
        e.agent_id: (e.error or str(e.state))
        for e in events
        if isinstance(e, AgentFinished) and e.agent_id == "bad"
    }
    return watch.hold * 1000, watch.wall * 1000, watch.peak - before, took, errors


async def main_async(repeats: int) -> None:
    settings = load_settings(environ={})
    engine = engine_for(settings)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        benign = folder / "benign.yaml"
        benign.write_text(BENIGN)
        await measure(engine, benign)  # the sandbox process started, jsonschema imported
        base = [await measure(engine, benign) for _ in range(repeats)]
        hold = max(b[0] for b in base)
        grow = max(b[2] for b in base)
        print(
            f"baseline (benign loop, condition, JSON reply): longest hold {hold:.1f} ms of CPU "
            f"({max(b[1] for b in base):.1f} wall), RSS +{grow:.1f} MB"
        )
        worst_hold, worst_grow = 0.0, 0.0
        cases: list[tuple[str, str | None, str | None]]
        cases = [(name, prompt, None) for name, prompt in HOSTILE.items()]
        cases += [(name, None, schema) for name, schema in SCHEMAS.items()]
        for name, prompt, schema in cases:
            path = folder / "hostile.yaml"
            path.write_text(hostile_workflow(name, prompt, schema))
            hold_ms, wall_ms, grown, took, errors = await measure(engine, path)
            worst_hold, worst_grow = max(worst_hold, hold_ms), max(worst_grow, grown)
            reason = errors.get("bad", "?")
            print(
                f"  {name:30s} hold {hold_ms:5.1f} ms ({hold_ms / max(hold, 0.1):4.1f}x; "
                f"{wall_ms:5.1f} wall), RSS +{grown:4.1f} MB, {took:5.2f} s: {reason[:60]}"
            )
    await engine.aclose()
    print(
        f"\nlongest hold of the event loop: {worst_hold:.1f} ms (goal <= 50: "
        f"{'met' if worst_hold <= 50 else 'MISSED'}); largest growth of the process: "
        f"{worst_grow:.1f} MB (goal <= 100: {'met' if worst_grow <= 100 else 'MISSED'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"hostile workflows: python {sys.version.split()[0]}\n")
    asyncio.run(main_async(args.repeats))


if __name__ == "__main__":
    main()
