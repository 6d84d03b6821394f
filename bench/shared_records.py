"""What recording a run in Redis as well costs: the work queue's runs.

A worker records each run in its run store and, before every call, sends the
run's journal to Redis too (aoe/shared_records.py), so a worker on another host
can take the run over. This runs the same workflows on the mock provider at
latency 0 — the worst case, where nothing hides the recording — in turn:

- recorded as ``aoe run`` records them (the store, the journal);
- the same, plus the record in Redis (a private redis-server on 127.0.0.1, a
  free port, no persistence), as ``aoe worker`` runs them.

Reported per agent: wall time and CPU time of this process (the best of
``--repeats``), the difference, and the ratio; and how much memory Redis
holds per agent for the record (``MEMORY USAGE`` of its keys). A chain is the
worst shape: every hop waits for a round trip to Redis before its call.

Then what ``aoe serve`` does for a GET of such a run from another replica: read
its record from Redis and bring a local copy up to it. Reported: the first GET
(the whole record into an empty copy), and a repeated GET (the median of
twenty) reading the whole record again — the baseline — against reading on
from where the copy was, the head without its export, as the service does.

Run with ``make bench`` or ``python bench/shared_records.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aoe.config.settings import load_settings  # noqa: E402
from aoe.events import RunStatus  # noqa: E402
from aoe.redis.client import connect  # noqa: E402
from aoe.redis.copies import fetch, head_of, restore_into  # noqa: E402
from aoe.redis.records import RecordMirror, record_keys  # noqa: E402
from aoe.service.runner import RunOptions, load, run_workflow  # noqa: E402
from aoe.state.store import Store  # noqa: E402
from tests.redisserver import RedisServer  # noqa: E402


def workflow_text(name: str, deps: dict[str, list[str]]) -> str:
    lines = ["version: 1", f"name: {name}", f"max_parallel_agents: {len(deps)}", "agents:"]
    for node, needs in deps.items():
        lines.append(f"  {node}:")
        if needs:
            lines.append(f"    depends_on: [{', '.join(needs)}]")
        lines.append(f'    prompt: "Step {node}"')
        lines.append("    llm: {provider: mock, model: gpt-4o-mini, max_tokens: 64}")
    return "\n".join(lines) + "\n"


def shapes(size: int) -> dict[str, dict[str, list[str]]]:
    chain = {f"a{i}": ([f"a{i - 1}"] if i else []) for i in range(size)}
    fan = {"root": [], **{f"a{i}": ["root"] for i in range(size - 2)}}
    fan["end"] = [f"a{i}" for i in range(size - 2)]
    return {f"chain of {size}": chain, f"fan-out of {size}": fan}


async def one_run(path: Path, state: Path, url: str | None, number: int) -> float:
    """One recorded run; with ``url``, mirrored to Redis. Redis's bytes for it."""
    settings = load_settings(None)
    workflow = load(path, settings)
    client = mirror = None
    run_id = f"bench-{number}"
    if url is not None:
        client = connect(url)
        mirror = RecordMirror(client, run_id, prefix="bench")
    with Store(state / f"{number}.db") as store:
        status = await run_workflow(
            workflow,
            {},
            settings,
            RunOptions(run_id=run_id, cache=False),
            store=store,
            mirror=mirror,
        )
    assert status is RunStatus.COMPLETED, status
    used = 0.0
    if client is not None:
        for key in record_keys("bench", run_id):
            used += float(await client.memory_usage(key) or 0)
        await client.aclose()
    return used


async def reads(url: str, run_id: str, copy: Path) -> tuple[float, float, float]:
    """A GET's reading of the run: the first, then repeated ones whole and on."""
    client = connect(url)

    async def get(after: str | None) -> str:
        head = await head_of(client, "bench", run_id, export=after is None)
        record = await fetch(client, "bench", run_id, head, after=after)
        assert record is not None
        restore_into(record, copy)
        return record.last

    try:
        start = time.perf_counter()
        last = await get(None)
        first = time.perf_counter() - start
        whole, on = [], []
        for _ in range(20):
            start = time.perf_counter()
            await get(None)
            whole.append(time.perf_counter() - start)
            start = time.perf_counter()
            await get(last)
            on.append(time.perf_counter() - start)
    finally:
        await client.aclose()
    return first, statistics.median(whole), statistics.median(on)


def measure(path: Path, state: Path, url: str | None, repeats: int, counter: list[int]) -> Any:
    walls, cpus, used = [], [], 0.0
    for _ in range(repeats):
        gc.collect()
        counter[0] += 1
        wall, cpu = time.perf_counter(), time.process_time()
        used = asyncio.run(one_run(path, state, url, counter[0]))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=300, help="agents per workflow")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(Path(folder))
        try:
            url = server.url
            print("run records in Redis: redis-server on 127.0.0.1, mock provider, latency 0\n")
            counter = [0]
            for name, deps in shapes(options.size).items():
                path = Path(folder) / f"{name.replace(' ', '-')}.yaml"
                path.write_text(workflow_text("bench", deps))
                state = Path(folder) / "state"
                state.mkdir(exist_ok=True)
                measure(path, state, None, 1, counter)  # warm up both
                measure(path, state, url, 1, counter)
                wall0, cpu0, _ = measure(path, state, None, options.repeats, counter)
                wall1, cpu1, used = measure(path, state, url, options.repeats, counter)
                n = len(deps)
                print(f"{name}:")
                print(
                    f"  wall per agent: {wall0 / n * 1e3:.3f} ms recorded here, "
                    f"{wall1 / n * 1e3:.3f} ms with Redis too "
                    f"(+{(wall1 - wall0) / n * 1e3:.3f} ms, {wall1 / wall0:.2f}x)"
                )
                print(
                    f"  CPU per agent (this process): {cpu0 / n * 1e3:.3f} ms, "
                    f"{cpu1 / n * 1e3:.3f} ms (+{(cpu1 - cpu0) / n * 1e3:.3f} ms)"
                )
                print(f"  Redis memory for the record: {used / n:,.0f} bytes per agent")
                first, whole, on = asyncio.run(
                    reads(url, f"bench-{counter[0]}", state / f"copy-{counter[0]}.db")
                )
                print(
                    f"  a GET from another replica: first {first * 1e3:.1f} ms; again "
                    f"{whole * 1e3:.2f} ms reading the whole record, {on * 1e3:.2f} ms "
                    f"reading on ({whole / on:.1f}x less)\n"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
