"""How much the engine adds to a run, against a hand-written asyncio baseline.

Four generated graphs run on the mock provider, each agent reading its
dependencies' outputs in its prompt:

- a fan-out of 10,000 (one root, 10,000 agents after it), and of 1,000;
- a chain of 1,000;
- a layered graph, 50 layers of 20, each agent after 1-3 of the layer before;
- a random DAG of 1,000 agents, each after 0-3 earlier ones.

The baseline is what a careful programmer would write by hand for the same
graph: one task per node, an ``asyncio.Event`` per node, ``sleep`` for the
call. Both run in this process, one after the other, several times; the best
CPU time of each is kept; the two take turns, as this machine's speed drifts
over minutes.

Figures:
- overhead: the engine's CPU time minus the baseline's, per agent, with a
  latency of 0 (everything the engine does: scheduling, rendering prompts,
  the mock call, events, costs). Goal: at most 0.1 ms, at 1,000 and 10,000.
- makespan: wall time of the jittered graphs (latency 100 ms ± 50 %; model
  calls take seconds) against their critical path, the longest chain of
  latencies. Goal: within 3 %. The same at 20 ms as a stress figure, next to
  the hand-written version, which pays asyncio's own costs too.
- memory: peak RSS of a process that loads and runs the 10,000-agent fan-out.
  Goal: under 150 MB.
- the same with the run store on (issue 5): every event appended to the run's
  journal on the event loop before the call that needs it, and written into
  SQLite by the recorder's thread in batches. Reported next to each figure,
  twice: the process's CPU time (the writer thread's included), and the event
  loop's alone (the engine's hot path, which sets the pace of a run).

For scale, LangGraph measured on this machine spends 0.27-1.2 ms of CPU per
node and runs such jittered graphs at 1.6-2.8x their critical path.
Run with ``make bench`` or ``python bench/engine_overhead.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from aoe.cli.ui.progress import PlainProgress
from aoe.config.settings import Settings, load_settings
from aoe.engine.executor import Engine
from aoe.events import EventBus, RunStatus
from aoe.format.workflow import Workflow
from aoe.observe.results import Results
from aoe.service.runner import load, run_workflow
from aoe.state.store import Store

Graph = dict[str, list[str]]


def fan_out(n: int, rng: random.Random) -> Graph:
    graph: Graph = {"root": []}
    graph.update({f"a{i}": ["root"] for i in range(n)})
    return graph


def chain(n: int, rng: random.Random) -> Graph:
    return {f"a{i}": [f"a{i - 1}"] if i else [] for i in range(n)}


def layered(n: int, rng: random.Random, width: int = 20) -> Graph:
    graph: Graph = {}
    for i in range(n):
        layer = i // width
        if layer == 0:
            graph[f"a{i}"] = []
        else:
            first = (layer - 1) * width
            picks = {first + rng.randrange(width) for _ in range(rng.randint(1, 3))}
            graph[f"a{i}"] = [f"a{p}" for p in sorted(picks)]
    return graph


def random_dag(n: int, rng: random.Random) -> Graph:
    graph: Graph = {}
    for i in range(n):
        picks = {rng.randrange(i) for _ in range(rng.randint(0, 3))} if i else set()
        graph[f"a{i}"] = [f"a{p}" for p in sorted(picks)]
    return graph


def to_yaml(name: str, graph: Graph, latency: dict[str, float]) -> str:
    lines = [
        "version: 1",
        f"name: {name}",
        f"max_parallel_agents: {len(graph)}",
        "inputs:",
        "  topic: {type: string, default: tides}",
        "agents:",
    ]
    for node, deps in graph.items():
        lines.append(f"  {node}:")
        if deps:
            lines.append(f"    depends_on: [{', '.join(deps)}]")
        reads = " ".join(f"{{{{ agents.{d}.output }}}}" for d in deps[:2])
        lines.append(f'    prompt: "Step {node} on {{{{ inputs.topic }}}}. {reads}"')
        params = f", params: {{latency: {latency[node]:.6f}}}" if latency[node] else ""
        lines.append(f"    llm: {{provider: mock, model: gpt-4o-mini, max_tokens: 64{params}}}")
    return "\n".join(lines) + "\n"


async def baseline(graph: Graph, latency: dict[str, float]) -> None:
    """The same graph, by hand: a task and an Event per node, sleep for the call."""
    done = {node: asyncio.Event() for node in graph}

    async def node(name: str) -> None:
        for dep in graph[name]:
            await done[dep].wait()
        await asyncio.sleep(latency[name])
        done[name].set()

    await asyncio.gather(*(node(name) for name in graph))


async def recorded_run(workflow: Workflow, settings: Settings, store: Store) -> None:
    """The engine with the run store on, as ``aoe run`` runs it: every event
    journaled before the call that needs it, and written into SQLite by the
    recorder's thread."""
    status = await run_workflow(workflow, {"topic": "tides"}, settings, store=store)
    assert status is RunStatus.COMPLETED, status


async def engine_run(workflow: Workflow, settings: Settings, subscribed: bool = False) -> None:
    """The engine alone, or (``subscribed``) with what ``aoe run`` always attaches:
    the results document and a line per event (to /dev/null)."""
    bus = EventBus()
    sink = None
    if subscribed:
        sink = open(os.devnull, "w")  # noqa: SIM115
        bus.subscribe(Results(workflow, {"topic": "tides"}))
        bus.subscribe(PlainProgress(sink))
    engine = Engine(settings)
    try:
        status = await engine.run(workflow, {"topic": "tides"}, bus)
    finally:
        await engine.aclose()
        if sink is not None:
            sink.close()
    assert status is RunStatus.COMPLETED, status


def measure(run: Callable[[], Coroutine[Any, Any, None]], repeats: int) -> tuple[float, float]:
    """Best CPU seconds and best wall seconds over ``repeats`` runs."""
    cpu, wall = [], []
    for _ in range(repeats):
        gc.collect()
        started_cpu, started_wall = time.process_time(), time.perf_counter()
        asyncio.run(run())
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started_wall)
    return min(cpu), min(wall)


def interleaved(
    runs: Sequence[Callable[[], Coroutine[Any, Any, None]]], repeats: int
) -> tuple[list[float], list[float]]:
    """Best CPU seconds of each, the runs taken in turn (this machine's speed drifts
    by up to 2x over minutes, and each figure is compared with the first): of the
    whole process, and of the event loop's thread alone."""
    best = [float("inf")] * len(runs)
    loop = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            gc.collect()
            started, started_loop = time.process_time(), time.thread_time()
            asyncio.run(run())
            best[i] = min(best[i], time.process_time() - started)
            loop[i] = min(loop[i], time.thread_time() - started_loop)
    return best, loop


def critical_path(graph: Graph, latency: dict[str, float]) -> float:
    finish: dict[str, float] = {}
    for node in graph:  # generated in topological order
        finish[node] = latency[node] + max((finish[d] for d in graph[node]), default=0.0)
    return max(finish.values())


def build(kind: str, n: int, seed: int, jitter_base: float) -> tuple[Graph, dict[str, float]]:
    rng = random.Random(seed)
    graph = {"fan-out": fan_out, "chain": chain, "layered": layered, "random": random_dag}[kind](
        n, rng
    )
    if jitter_base:
        latency = {node: jitter_base * rng.uniform(0.5, 1.5) for node in graph}
    else:
        latency = dict.fromkeys(graph, 0.0)
    return graph, latency


def load_generated(folder: Path, name: str, graph: Graph, latency: dict[str, float]) -> Workflow:
    path = folder / f"{name}.yaml"
    path.write_text(to_yaml(name, graph, latency))
    return load(path)


def makespan(folder: Path, settings: Settings, base: float, stress: bool, repeats: int) -> None:
    """Wall time of jittered graphs against their critical path, and the same by hand."""
    title = "stress: latency" if stress else "makespan, latency"
    note = (
        " (no goal: asyncio's own timer and loop costs alone are ~1 ms a hop here)"
        if stress
        else ""
    )
    print(f"\n{title} {base * 1000:.0f} ms +-50 %, unlimited slots (wall time){note}:")
    for kind, n in (("layered", 1_000), ("random", 1_000), ("chain", 50)):
        graph, latency = build(kind, n, 2, base)
        bound = critical_path(graph, latency)
        workflow = load_generated(folder, f"{kind}-jitter", graph, latency)
        _, base_wall = measure(partial(baseline, graph, latency), repeats)
        _, wall = measure(partial(engine_run, workflow, settings), repeats)
        store = Store(folder / f"store-{kind}-jitter-{base}" / "state.db")
        _, stored = measure(partial(recorded_run, workflow, settings, store), repeats)
        store.close()
        ratio = wall / bound
        verdict = "" if stress else f", goal <= 1.03: {'met' if ratio <= 1.03 else 'MISSED'}"
        print(
            f"  {kind:8s} {len(graph):6,} agents: critical path {bound:6.3f} s, engine "
            f"{wall:6.3f} s ({ratio:5.3f}x{verdict}); by hand {base_wall:6.3f} s "
            f"({base_wall / bound:5.3f}x); with the run store {stored / bound:5.3f}x"
        )


def peak_rss_child(n: int) -> None:
    """Child mode: load and run the n-agent fan-out, print peak RSS in MiB."""
    settings = load_settings(environ={})
    graph, latency = build("fan-out", n, 1, 0.0)
    with tempfile.TemporaryDirectory() as folder:
        workflow = load_generated(Path(folder), "rss", graph, latency)
        asyncio.run(engine_run(workflow, settings))
    print(peak_rss_mib())


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries
    that across exec, so a child forked from this large benchmark would report
    the parent's size."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        peak_rss_child(args.rss_child)
        return

    settings = load_settings(environ={})
    print(
        f"engine benchmark: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"best of {args.repeats} runs each\n"
    )
    print("overhead, latency 0 (CPU time; engine minus hand-written asyncio):")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for kind, n in (
            ("fan-out", 1_000),
            ("fan-out", 10_000),
            ("chain", 1_000),
            ("layered", 1_000),
            ("random", 1_000),
        ):
            graph, latency = build(kind, n, 1, 0.0)
            workflow = load_generated(folder, f"{kind}-{n}", graph, latency)
            runs = [partial(baseline, graph, latency), partial(engine_run, workflow, settings)]
            if (kind, n) == ("fan-out", 10_000):
                runs.append(partial(engine_run, workflow, settings, True))
            store = Store(folder / f"store-{kind}-{n}" / "state.db")
            runs.append(partial(recorded_run, workflow, settings, store))
            (base_cpu, cpu, *full, stored), loop = interleaved(runs, args.repeats)
            stored_loop = loop[-1]
            store.close()
            per_agent = (cpu - base_cpu) / len(graph) * 1000
            verdict = "met" if per_agent <= 0.1 else "MISSED"
            print(
                f"  {kind:8s} {len(graph):6,} agents: engine {cpu:6.3f} s CPU, baseline "
                f"{base_cpu:6.3f} s ({cpu / base_cpu:4.1f}x) -> {per_agent:6.3f} ms per agent "
                f"(goal <= 0.1: {verdict})"
            )
            print(
                f"    with the run store on: {(stored - base_cpu) / len(graph) * 1000:.3f} ms "
                f"per agent in all ({(stored - cpu) / len(graph) * 1000:+.3f} for recording "
                f"it), {(stored_loop - base_cpu) / len(graph) * 1000:.3f} on the event loop"
            )
            if full:
                print(
                    "    with the results and the event lines of aoe run attached: "
                    f"{(full[0] - base_cpu) / len(graph) * 1000:.3f} ms per agent"
                )

        for base, stress in ((0.100, False), (0.020, True)):
            makespan(folder, settings, base, stress, args.repeats)

    child = subprocess.run(
        [sys.executable, __file__, "--rss-child", "10000"],
        capture_output=True,
        text=True,
        check=True,
    )
    rss = float(child.stdout.strip())
    verdict = "met" if rss < 150 else "MISSED"
    print(
        f"\nmemory: load + run of the 10,000-agent fan-out: peak RSS {rss:.0f} MiB "
        f"(goal < 150: {verdict})"
    )


if __name__ == "__main__":
    main()
