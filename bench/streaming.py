"""What streaming a reply costs aoe, against one plain request and reply.

Issue 15's goal: a streamed call costs at most 0.1 ms more of aoe's CPU than
the same call not streamed. The fake provider server of the tests answers on
127.0.0.1, in its own threads; what is measured is the CPU time of the thread
that runs aoe's event loop (``time.thread_time``), where the SDK, aoe's
reading of the stream and everything else of a call run, so the server's own
work is left out. Both runs call the same declared provider, once with
``stream: true`` (the default) and once with ``stream: false``, for the same
replies: ``--tokens`` tokens each, streamed a token a piece (as llama.cpp and
vLLM stream), usage reported at the end.

The two alternate, several rounds; the least CPU of each is kept (this
machine's speed drifts over minutes). Reported: CPU per call of each, the
difference per call and per streamed piece, at two reply lengths.

Reading a stream costs the HTTP client a read and the SDK an event per piece,
so no streamed call can be within 0.1 ms of a whole one (200 pieces at even
5 us each is 1 ms). What meets the goal is not streaming where it buys
nothing: ``stream: auto`` (the default) asks the vendors' own APIs, which keep
``max_tokens``, for whole replies unless ``-v`` watches them or a reply could
outlast its timeout; the last lines say which calls ``auto`` streams.

Run with ``make bench`` or ``python bench/streaming.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakeserver

from aoe.config.settings import load_settings
from aoe.events import RunStatus
from aoe.providers.base import streams
from aoe.service.runner import RunOptions, load, run_workflow
from aoe.types import Message, Request
from tests.fakeserver import FakeProvider, Quirks, Reply


def workflow(folder: Path, calls: int, tokens: int) -> Path:
    path = folder / "calls.yaml"
    agents = "".join(
        f"  a{i}: {{prompt: 'call {i}', llm: {{provider: local, model: m, "
        f"max_tokens: {tokens + 10}}}}}\n"
        for i in range(calls)
    )
    path.write_text(f"version: 1\nname: calls\nmax_parallel_agents: 8\nagents:\n{agents}")
    return path


def config(folder: Path, fake: FakeProvider, stream: bool) -> Path:
    path = folder / f"engine-{stream}.yaml"
    path.write_text(
        "providers:\n  local:\n"
        f"    base_url: {fake.openai_url}\n"
        "    default_price: {input: 0, output: 0}\n"
        f"    stream: {'true' if stream else 'false'}\n"
        "rate_limiting: {requests_per_minute: null, requests_per_hour: null,"
        " requests_per_day: null, tokens_per_minute: null, concurrent_requests: null}\n"
    )
    return path


def once(folder: Path, fake: FakeProvider, stream: bool, calls: int, tokens: int) -> float:
    """CPU seconds of the event loop's thread for one run of ``calls`` calls."""
    settings = load_settings(str(config(folder, fake, stream)), environ={})
    loaded = load(workflow(folder, calls, tokens), settings)

    async def run() -> RunStatus:
        return await run_workflow(loaded, {}, settings, RunOptions())

    began = time.thread_time()
    status = asyncio.run(run())
    used = time.thread_time() - began
    assert status is RunStatus.COMPLETED, status
    return used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with FakeProvider() as fake, tempfile.TemporaryDirectory() as folder:
        fake.quirks = Quirks(piece=4)  # a token a piece
        print(f"{args.calls} calls a run, best of {args.rounds} rounds; CPU of aoe's thread")
        for tokens in (20, 200):
            fake.respond = lambda request, n=tokens: Reply(text="tick" * n, output_tokens=n)
            once(Path(folder), fake, True, 20, tokens)  # warm: imports, connections
            best = {True: float("inf"), False: float("inf")}
            for _ in range(args.rounds):
                for stream in (False, True):
                    fake.reset()
                    fake.quirks = Quirks(piece=4)
                    fake.respond = lambda request, n=tokens: Reply(text="tick" * n, output_tokens=n)
                    used = once(Path(folder), fake, stream, args.calls, tokens)
                    best[stream] = min(best[stream], used / args.calls)
            extra = best[True] - best[False]
            print(
                f"replies of {tokens:>3} tokens: plain {best[False] * 1000:.3f} ms a call, "
                f"streamed {best[True] * 1000:.3f} ms; streaming adds {extra * 1000:+.3f} ms "
                f"a call ({extra / tokens * 1e6:+.1f} us a piece; "
                f"{best[True] / best[False]:.2f}x)"
            )
        print("stream: auto (the default), for a 60 s timeout:")
        for keeps, where in ((True, "the vendors' own APIs"), (False, "any other server")):
            for tokens, live in ((200, False), (200, True), (2000, False)):
                request = Request("p", "m", (Message("user", "hi"),), tokens, timeout=60.0)
                how = "streamed" if streams(None, keeps, request, live) else "whole: +0 ms"
                watched = ", -v" if live else ""
                print(f"  {where}, max_tokens {tokens}{watched}: {how}")


if __name__ == "__main__":
    main()
