"""Load on one `aoe serve`: many small workflows submitted at once.

A fake provider server on 127.0.0.1 (the tests' own: it speaks the OpenAI API
and logs every request) answers each call after a short delay. One `aoe serve`
process gets RUNS submissions of a 3-agent workflow from CLIENTS threads at
once, each with its own input, so every request in the server's log names its
run. Reported:

- runs per second, from the first submission to the last run's end;
- submit latency (p50, p95, max): the time to a 202, with the queue filling;
- the service's peak memory (VmHWM);
- none lost (every run completed) and none run twice (each run's agents were
  each called exactly once);
- the baseline, measured in the same run: the same runs in one process through
  the Python API (`aoe.service.runner.run_workflow` on one shared engine), no HTTP; the
  ratio says what the service adds.

Loopback only, bounded in count (--runs) and time (--timeout).
Run with ``make bench`` or ``python bench/serve_load.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fakeserver import FakeProvider, Received, Reply  # noqa: E402

WORKFLOW = """\
version: 1
name: load
inputs:
  job: {type: string}
defaults:
  llm: {provider: openai, model: gpt-4o-mini, max_tokens: 20}
agents:
  a: {prompt: "a {{ inputs.job }}"}
  b: {prompt: "b {{ inputs.job }} {{ agents.a.output }}", depends_on: a}
  c: {prompt: "c {{ inputs.job }}"}
"""


def job_of(request: Received) -> tuple[str, str]:
    agent, job = request.prompt.split(" ")[:2]
    return job, agent


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    began = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.load(response)
        return response.status, answer, time.perf_counter() - began


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.load(response)


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def check_calls(fake: FakeProvider, jobs: list[str]) -> tuple[int, int]:
    """(runs missing a call, runs with a call made twice) in the server's log."""
    calls = collections.Counter(job_of(r) for r in fake.received)
    missing = sum(1 for job in jobs if any(calls[(job, a)] == 0 for a in "abc"))
    twice = sum(1 for job in jobs if any(calls[(job, a)] > 1 for a in "abc"))
    return missing, twice


def environment(fake: FakeProvider, state: Path, concurrency: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AOE_", "OPENAI", "RATE_"))}
    env.update(
        OPENAI_API_KEY="sk-bench-" + os.urandom(8).hex(),
        OPENAI_BASE_URL=fake.openai_url,
        AOE_STATE_DIR=str(state),
        MAX_CONCURRENT_WORKFLOWS=str(concurrency),
        PYTHONPATH=str(REPO),
        # the default limits (60 requests a minute) would make this a test of them
        RATE_LIMIT_RPM="1000000",
        RATE_LIMIT_RPH="10000000",
        RATE_LIMIT_RPD="100000000",
        RATE_LIMIT_TPM="1000000000",
    )
    return env


def through_service(
    fake: FakeProvider, folder: Path, runs: int, clients: int, concurrency: int, timeout: float
) -> dict[str, Any]:
    env = environment(fake, folder / "serve-state", concurrency)
    process = subprocess.Popen(
        [sys.executable, "-m", "aoe", "serve", "--port", "0", "--queue-limit", str(runs)],
        env=env,
        cwd=folder,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    if "listening on " not in line:
        process.kill()
        raise SystemExit(f"aoe serve did not start: {line}{process.stderr.read()}")
    threading.Thread(target=process.stderr.read, daemon=True).start()  # keep the pipe drained
    url = line.split("listening on ")[1].split(" ")[0]
    jobs = [f"job{i:04d}" for i in range(runs)]
    try:
        began = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            submitted = list(
                pool.map(
                    lambda job: post(
                        f"{url}/api/v1/runs",
                        {"workflow": WORKFLOW, "inputs": {"job": job}, "cache": False},
                    ),
                    jobs,
                )
            )
        ids = {answer["run_id"] for _, answer, _ in submitted}
        deadline = time.monotonic() + timeout
        while True:
            listed = get(f"{url}/api/v1/runs?limit={runs + 10}")["runs"]
            finished = {r["run_id"]: r["status"] for r in listed if r["run_id"] in ids}
            if len(finished) == runs and all(
                s != "running" and s != "queued" for s in finished.values()
            ):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - began
        peak = peak_rss_mib(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
    latencies = sorted(seconds for _, _, seconds in submitted)
    completed = sum(1 for s in finished.values() if s == "completed")
    missing, twice = check_calls(fake, jobs)
    return {
        "elapsed": elapsed,
        "completed": completed,
        "accepted": sum(1 for status, _, _ in submitted if status == 202),
        "p50": statistics.median(latencies),
        "p95": latencies[int(0.95 * (len(latencies) - 1))],
        "max": latencies[-1],
        "peak_mib": peak,
        "missing": missing,
        "twice": twice,
    }


def in_process(fake: FakeProvider, folder: Path, runs: int, concurrency: int) -> dict[str, Any]:
    """The baseline: the same runs through the Python API, one engine, no HTTP."""
    os.environ.update(environment(fake, folder / "api-state", concurrency))
    from aoe.config.settings import load_settings
    from aoe.service.runner import RunOptions, load, run_workflow
    from aoe.service.wiring import engine_for
    from aoe.state.store import Store

    path = folder / "load.yaml"
    path.write_text(WORKFLOW)
    settings = load_settings(None)
    workflow = load(path, settings)
    store = Store(folder / "api-state" / "state.db")
    jobs = [f"base{i:04d}" for i in range(runs)]

    async def main() -> list[Any]:
        engine = engine_for(settings)
        engine.providers.get("openai")  # as aoe serve does before it listens
        try:
            return await asyncio.gather(
                *(
                    run_workflow(
                        workflow,
                        {"job": job},
                        settings,
                        RunOptions(cache=False),
                        store=store,
                        engine=engine,
                    )
                    for job in jobs
                )
            )
        finally:
            await engine.aclose()

    import openai  # noqa: F401  (imported before the clock starts, as aoe serve does)

    began = time.perf_counter()
    statuses = asyncio.run(main())
    elapsed = time.perf_counter() - began
    store.close()
    missing, twice = check_calls(fake, jobs)
    return {
        "elapsed": elapsed,
        "completed": sum(1 for s in statuses if str(s) == "completed"),
        "missing": missing,
        "twice": twice,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16, help="submitting at once")
    parser.add_argument("--concurrency", type=int, default=50, help="MAX_CONCURRENT_WORKFLOWS")
    parser.add_argument("--latency", type=float, default=0.05, help="the fake model's seconds")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    with FakeProvider() as fake, tempfile.TemporaryDirectory() as tmp:
        fake.respond = lambda request: Reply(delay=args.latency)
        folder = Path(tmp)
        served = through_service(
            fake, folder, args.runs, args.clients, args.concurrency, args.timeout
        )
        fake.reset()
        fake.respond = lambda request: Reply(delay=args.latency)
        base = in_process(fake, folder, args.runs, args.concurrency)

    rate = served["completed"] / served["elapsed"]
    base_rate = base["completed"] / base["elapsed"]
    print(
        f"serve load: {args.runs} runs of 3 agents, {args.clients} clients submitting at once, "
        f"{args.concurrency} runs at a time, model latency {args.latency * 1000:.0f} ms\n"
    )
    print(
        f"  aoe serve: {served['completed']}/{args.runs} completed in {served['elapsed']:.2f} s "
        f"-> {rate:.1f} runs/s"
    )
    print(
        f"  submit latency: p50 {served['p50'] * 1000:.1f} ms, p95 {served['p95'] * 1000:.1f} "
        f"ms, max {served['max'] * 1000:.1f} ms ({served['accepted']} accepted)"
    )
    print(f"  peak memory of aoe serve: {served['peak_mib']:.0f} MiB")
    print(
        f"  lost: {args.runs - served['completed'] + served['missing']}, run twice: "
        f"{served['twice']} (from the provider's request log)"
    )
    print(
        f"\n  baseline, the Python API in one process: {base['completed']}/{args.runs} in "
        f"{base['elapsed']:.2f} s -> {base_rate:.1f} runs/s (lost {base['missing']}, "
        f"twice {base['twice']})"
    )
    print(f"  aoe serve / baseline: {rate / base_rate:.2f}x the throughput")
    ok = served["completed"] == args.runs and not served["missing"] and not served["twice"]
    if not ok:
        raise SystemExit("FAILED: runs were lost or run twice")


if __name__ == "__main__":
    main()
