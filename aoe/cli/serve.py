"""``aoe serve``, ``status``, ``submit`` and ``worker``: aoe as a service, a look
at how it goes, and the Redis work queue.

Like every command of :mod:`aoe.cli`, these parse, call, print, and turn errors
into exit codes; the service itself is :mod:`aoe.service.server` (aiohttp) and
the queue :mod:`aoe.service.worker`, imported only inside the commands.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer

from aoe.cli.common import (
    CacheOption,
    ConfigOption,
    InputOption,
    InputsFileOption,
    LogFormatOption,
    MaxParallelOption,
    ReportFormat,
    existing_store,
    finite,
    given_inputs,
    handle_errors,
    open_store,
    read_settings,
)

commands = typer.Typer()
"""serve, status, submit and worker; :mod:`aoe.cli.app` adds them to ``aoe`` itself."""

LOCAL_WINDOW = 86_400.0  # seconds of history `aoe status` sums from the local store


@commands.command(
    epilog="Examples:\n\naoe serve\n\nAOE_API_TOKEN=... aoe serve --host 0.0.0.0 --port 8000\n\n"
    "curl -s localhost:8000/health"
)
def serve(
    ctx: typer.Context,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to bind. Beyond 127.0.0.1 a bearer token (AOE_API_TOKEN) is required.",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            "-p",
            min=0,
            max=65535,
            help="Port (default: PROMETHEUS_PORT, 8000). 0 picks a free one.",
        ),
    ] = None,
    max_concurrent: Annotated[
        int | None,
        typer.Option(
            "--max-concurrent",
            min=1,
            help="Runs in progress at once (default: MAX_CONCURRENT_WORKFLOWS); more wait.",
        ),
    ] = None,
    queue_limit: Annotated[
        int,
        typer.Option("--queue-limit", min=1, help="Runs that may wait; beyond, 429."),
    ] = 1000,
    max_body: Annotated[
        int,
        typer.Option("--max-body", min=1024, help="Largest request body, in bytes; beyond, 413."),
    ] = 512 << 10,
    max_agents: Annotated[
        int,
        typer.Option(
            "--max-agents",
            min=1,
            help="Agents and foreach items one submitted run may have (each costs ~6 KB "
            "while it runs); a workflow with more is refused, a foreach that goes beyond "
            "fails its agent.",
        ),
    ] = 5000,
    max_reply_bytes: Annotated[
        int,
        typer.Option(
            "--max-reply-bytes",
            min=1024,
            help="Characters of one run's replies, all agents and attempts together; "
            "beyond, the agent whose reply passes it fails (each is kept in the run's "
            "events and record).",
        ),
    ] = 16 << 20,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker",
            help="With Redis: also run queued runs here (--no-worker: only take them).",
        ),
    ] = True,
    max_connections: Annotated[
        int | None,
        typer.Option(
            "--max-connections",
            min=1,
            help="Client connections open at once (default: 1000, or fewer if the limit on "
            "open files is low: that limit less a quarter). Beyond it, the connection idle "
            "the longest is closed to let a new one in.",
        ),
    ] = None,
    header_timeout: Annotated[
        float,
        typer.Option(
            "--header-timeout",
            min=0.1,
            help="Seconds a client has to send a request's line and headers; else it is "
            "disconnected.",
            metavar="SECONDS",
        ),
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(
            "--body-timeout",
            min=0.1,
            help="Seconds a client has to send a request's body; else 408.",
            metavar="SECONDS",
        ),
    ] = 30.0,
    idle_timeout: Annotated[
        float,
        typer.Option(
            "--idle-timeout",
            min=0.1,
            help="Seconds a kept-alive connection may wait for its next request.",
            metavar="SECONDS",
        ),
    ] = 75.0,
    config: ConfigOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Run a service: GET /health, GET /metrics and an HTTP API to submit,
    list, watch (Server-Sent Events) and cancel runs.

    Runs share one engine: its rate limits and MAX_CONCURRENT_WORKFLOWS hold
    across them. SIGTERM drains: no new runs, runs in progress are cancelled
    and stay resumable (`aoe resume`).

    With Redis (REDIS_HOST or redis.url), submitted runs go on the work queue,
    where this service's worker and any `aoe worker` take them, and every
    replica reports any run from its record in Redis.
    """
    with handle_errors(ctx):
        import asyncio

        from aoe.config.environment import env_value
        from aoe.config.settings import load_settings
        from aoe.observe.logs import setup
        from aoe.service.options import ServeOptions
        from aoe.service.server import serve as run_service

        flags: dict[str, tuple[Any, str]] = {}
        if log_format is not None:
            flags["monitoring.log_format"] = (log_format.value, "--log-format")
        if max_concurrent is not None:
            flags["engine.max_concurrent_workflows"] = (max_concurrent, "--max-concurrent")
        settings = load_settings(config, flags=flags)
        monitoring = settings.config.monitoring
        setup(monitoring.log_format, monitoring.log_level)
        options = ServeOptions(
            host=host,
            port=monitoring.prometheus_port if port is None else port,
            token=env_value("AOE_API_TOKEN"),
            max_body=max_body,
            max_agents=max_agents,
            max_reply_bytes=max_reply_bytes,
            queue_limit=queue_limit,
            metrics=monitoring.enable_metrics,
            worker=worker,
            max_connections=max_connections,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            idle_timeout=idle_timeout,
        )
        store = open_store(settings)
        try:
            asyncio.run(run_service(settings, store, options))
        finally:
            store.close()


@commands.command(
    epilog="Examples:\n\naoe status\n\naoe status --url http://127.0.0.1:8000\n\n"
    "aoe status --format json | jq .spend"
)
def status(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="A running `aoe serve` (default: $AOE_SERVE_URL; else the local run store).",
            metavar="URL",
        ),
    ] = None,
    format: Annotated[
        ReportFormat, typer.Option("--format", "-f", help="Text, or JSON.")
    ] = ReportFormat.text,
    config: ConfigOption = None,
) -> None:
    """Active runs, recent failures and spend: from `aoe serve` (with its
    health), or from the local run store (the last 24 hours)."""
    with handle_errors(ctx):
        from aoe.config.environment import env_value

        url = url or env_value("AOE_SERVE_URL")
        report = _remote(url) if url else _local(config)
        if format is ReportFormat.json:
            sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
            return
        _print(report)


def _local(config: str | None) -> dict[str, Any]:
    from aoe.observe.results import listed

    settings = read_settings(config)
    store = existing_store(settings)
    if store is None:  # (nothing recorded here, and nothing made: a reader)
        from aoe.state.schema import store_path

        empty = {"last_24h": 0.0, "runs": 0}
        return {"active": [], "failures": [], "spend": empty, "source": str(store_path(settings))}
    try:
        summary = store.summary(time.time() - LOCAL_WINDOW)
    finally:
        store.close()
    return {
        "active": [listed(run.to_dict()) for run in summary.active],
        "failures": [listed(run.to_dict()) for run in summary.failures],
        "spend": {"last_24h": round(summary.last_24h, 6), "runs": summary.runs},
        "source": str(store.path),
    }


def _remote(url: str) -> dict[str, Any]:
    """What a service says: its health and its recent runs."""
    import urllib.error
    import urllib.request

    from aoe.errors import OptionInvalid, scrub

    base = url.rstrip("/")
    from aoe.config.environment import env_value

    token = env_value("AOE_API_TOKEN")

    def get(path: str, *, ok: tuple[int, ...] = (200,)) -> Any:
        request = urllib.request.Request(base + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return json.load(e)
            detail = e.read().decode("utf-8", "replace")[:200]
            raise OptionInvalid(f"{scrub(base)}{path} answered {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise OptionInvalid(
                f"cannot reach aoe serve at {scrub(base)} ({reason}): is it running? "
                "(--url or AOE_SERVE_URL)"
            ) from None

    health = get("/health", ok=(200, 503))
    runs = get("/api/v1/runs?limit=200")["runs"]
    since = time.time() - LOCAL_WINDOW
    recent = [r for r in runs if _epoch(r.get("started_at")) >= since]
    spent = round(sum(r.get("cost_usd") or 0.0 for r in recent), 6)
    return {
        "source": base,
        "health": health,
        "active": [r for r in runs if r["status"] in ("running", "queued")],
        "failures": [r for r in recent if r["status"] in _FAILURES][:20],
        "spend": {"last_24h": spent, "runs": len(recent)},
    }


def _epoch(iso: str | None) -> float:
    """``2026-12-05T10:00:00.123Z`` as seconds since the epoch; 0 if none."""
    import datetime

    if not iso:
        return 0.0
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


_FAILURES = ("failed", "budget_exceeded", "partial", "interrupted")


def _print(report: dict[str, Any]) -> None:
    from aoe.cli.ui.text import money

    out = sys.stdout
    health = report.get("health")
    if health is not None:
        out.write(f"{report['source']}: {health['status']} ({health['reason']})\n")
    else:
        out.write(f"{report['source']}\n")
    active = report["active"]
    out.write(f"active runs: {len(active)}\n")
    for run in active:
        out.write(f"  {run['run_id']}  {run['workflow']['name']}  {run['status']}\n")
    failures = report["failures"]
    out.write(f"recent failures: {len(failures)}\n")
    for run in failures:
        out.write(
            f"  {run['run_id']}  {run['workflow']['name']}  {run['status']}  "
            f"{money(run.get('cost_usd') or 0.0)}\n"
        )
    spend = report["spend"]
    out.write(f"spend in the last 24 h: {money(spend['last_24h'])} over {spend['runs']} runs\n")


@commands.command(
    epilog="Examples:\n\naoe submit wf.yaml -i topic=solar\n\nREDIS_HOST=redis aoe submit wf.yaml"
)
def submit(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="The workflow file.", metavar="WORKFLOW")],
    input: InputOption = None,
    inputs_file: InputsFileOption = None,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget", min=0, callback=finite, help="USD the run may spend.", metavar="USD"
        ),
    ] = None,
    max_parallel: MaxParallelOption = None,
    mock: Annotated[
        bool, typer.Option("--mock", help="Run it offline, on the mock provider.")
    ] = False,
    cache: CacheOption = None,
    config: ConfigOption = None,
) -> None:
    """Queue a run for `aoe worker` (Redis): checked here first, as `aoe run`
    would; prints the run's id."""
    with handle_errors(ctx):
        import asyncio
        from pathlib import Path

        from aoe.config.settings import load_settings
        from aoe.redis.queue import enqueue
        from aoe.service.runner import RunOptions, bind, load

        settings = load_settings(config)
        workflow = load(file, settings)
        given = given_inputs(workflow, input, inputs_file)
        bind(workflow, given)  # refused here, not in a worker
        inputs = {name: value.value for name, value in given.items()}
        chosen = RunOptions(budget=budget, max_parallel=max_parallel, mock=mock, cache=cache)
        options = chosen.recorded()
        run_id = asyncio.run(
            enqueue(settings, workflow.text, Path(file).name, inputs, options, dict(workflow.files))
        )
        sys.stdout.write(run_id + "\n")


@commands.command(epilog="Examples:\n\naoe worker\n\nREDIS_HOST=redis aoe worker --concurrency 8")
def worker(
    ctx: typer.Context,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Runs this worker runs at once.")
    ] = 4,
    lease: Annotated[
        float,
        typer.Option(
            "--lease",
            min=1,
            callback=finite,
            help="Seconds without a sign of life after which another worker takes a run over.",
        ),
    ] = 30.0,
    max_deliveries: Annotated[
        int,
        typer.Option(
            "--max-deliveries", min=1, help="Deliveries of one run before its dead letter."
        ),
    ] = 3,
    config: ConfigOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Run the queued runs (Redis Stream, one consumer group): each finished
    run is acknowledged once its record is final; a dead worker's runs are
    taken over and resumed. SIGTERM drains."""
    with handle_errors(ctx):
        import asyncio

        from aoe.config.settings import load_settings
        from aoe.observe.logs import setup
        from aoe.service.worker import work

        flags: dict[str, tuple[Any, str]] = {}
        if log_format is not None:
            flags["monitoring.log_format"] = (log_format.value, "--log-format")
        settings = load_settings(config, flags=flags)
        setup(settings.config.monitoring.log_format, settings.config.monitoring.log_level)
        store = open_store(settings)
        try:
            asyncio.run(
                work(
                    settings,
                    store,
                    concurrency=concurrency,
                    lease=lease,
                    max_deliveries=max_deliveries,
                )
            )
        finally:
            store.close()
