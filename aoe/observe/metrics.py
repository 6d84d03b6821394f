"""Prometheus metrics, from the engine's events.

:class:`Metrics` is a subscriber of the event bus, like the live view and the
run record: every figure comes from an event the engine already computed (an
attempt's cost and usage, an agent's duration, a run's status), never
recomputed. ``prometheus_client`` is imported only when metrics are on.

Names follow Prometheus conventions, under the ``aoe_`` prefix; counters end
in ``_total``. Label values stay bounded: provider, model, workflow name and a
small fixed set of statuses — never a run id — and past :data:`MAX_SERIES`
distinct values a label reads ``other``, so a service that runs whatever it is
sent cannot grow its series without end.

``aoe run --metrics-port`` serves them while the run lasts;
``aoe run --pushgateway URL`` pushes them when it ends (the batch-job way);
``aoe serve`` serves them at ``/metrics``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from aoe.events import (
    NOT_ANSWERED,
    AgentFinished,
    AgentRetrying,
    AgentState,
    AttemptFinished,
    AttemptStarted,
    Event,
    RunFinished,
    RunStarted,
    RunStatus,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

MAX_SERIES = 200  # distinct values of one label, beyond which it reads "other"
OTHER = "other"

# seconds: from a cached answer to a long generation
AGENT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HEALTH_VALUES = {"healthy": 0, "degraded": 1, "unhealthy": 2}


def request_status(event: AttemptFinished) -> str:
    """One of a fixed few: ok, rate_limited, timeout, cancelled, error."""
    kind = event.error_kind
    if event.error is None:
        return "ok"
    if kind == "RateLimited":
        return "rate_limited"
    if kind == "AttemptTimeout":
        return "timeout"
    if kind == NOT_ANSWERED:
        return "cancelled"
    return "error"


class _Bounded:
    """A label's values, at most MAX_SERIES of them; later ones are OTHER."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        with self.lock:
            if len(self.seen) < MAX_SERIES:
                self.seen.add(value)
                return value
        return OTHER


class Metrics:
    """The ``aoe_*`` metrics in a registry of their own; call with each event."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.workflows = Counter(
            "aoe_workflows", "Runs that ended, by workflow and status.", ["workflow", "status"],
            registry=r,
        )  # fmt: skip
        self.workflows_failed = Counter(
            "aoe_workflows_failed", "Runs that failed (exit code not 0, not cancelled).",
            ["workflow"], registry=r,
        )  # fmt: skip
        self.active = Gauge("aoe_active_workflows", "Runs in progress.", registry=r)
        self.queued = Gauge(
            "aoe_queued_workflows", "Runs accepted and waiting for a slot (aoe serve).",
            registry=r,
        )  # fmt: skip
        self.agent_seconds = Histogram(
            "aoe_agent_execution_seconds", "Time from an agent's start to its end.",
            ["provider", "model"], buckets=AGENT_BUCKETS, registry=r,
        )  # fmt: skip
        self.cost = Counter(
            "aoe_cost_dollars", "USD spent on model calls.", ["provider", "model"], registry=r
        )
        self.requests = Counter(
            "aoe_llm_requests", "Model calls made, by outcome (cached answers are not calls).",
            ["provider", "model", "status"], registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "aoe_tokens", "Tokens billed.", ["provider", "model", "direction"], registry=r
        )
        self.retries = Counter(
            "aoe_retries", "Attempts retried after a failure.", ["provider", "model"], registry=r
        )
        self.wait = Histogram(
            "aoe_rate_limit_wait_seconds", "Time an attempt waited for the rate limits.",
            ["provider"], buckets=WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.budget_exceeded = Counter(
            "aoe_budget_exceeded", "Agents stopped by a budget.", ["workflow"], registry=r
        )
        self.cache_hits = Counter(
            "aoe_cache_hits", "Answers taken from the response cache.", ["provider", "model"],
            registry=r,
        )  # fmt: skip
        self.health = Gauge(
            "aoe_health_status", "0 healthy, 1 degraded, 2 unhealthy (aoe serve).", registry=r
        )
        self._workflow = _Bounded()
        self._model = _Bounded()
        self._provider = _Bounded()
        # run -> workflow name; (run, agent) -> (provider, model) of its last attempt
        self._runs: dict[str, str] = {}
        self._answered: dict[tuple[str, str], tuple[str, str]] = {}
        self._lock = threading.Lock()

    # -- the subscriber ----------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        if isinstance(event, AttemptFinished):
            self._attempt(event)
        elif isinstance(event, AttemptStarted):
            self.wait.labels(self._provider(event.provider)).observe(event.waited)
        elif isinstance(event, AgentRetrying):
            provider, model = self._answered.get((event.run_id, event.agent_id), (OTHER, OTHER))
            self.retries.labels(provider, model).inc()
        elif isinstance(event, AgentFinished):
            self._agent(event)
        elif isinstance(event, RunStarted):
            with self._lock:
                self._runs[event.run_id] = self._workflow(event.workflow)
            self.active.inc()
        elif isinstance(event, RunFinished):
            self._run(event)

    def _attempt(self, event: AttemptFinished) -> None:
        provider, model = self._provider(event.provider), self._model(event.model)
        self._answered[(event.run_id, event.agent_id)] = (provider, model)
        if event.cached:
            self.cache_hits.labels(provider, model).inc()
            return
        self.requests.labels(provider, model, request_status(event)).inc()
        if event.cost:
            self.cost.labels(provider, model).inc(event.cost)
        tokens_in, tokens_out = event.usage
        if tokens_in:
            self.tokens.labels(provider, model, "input").inc(tokens_in)
        if tokens_out:
            self.tokens.labels(provider, model, "output").inc(tokens_out)

    def _agent(self, event: AgentFinished) -> None:
        answered = self._answered.pop((event.run_id, event.agent_id), None)
        if event.resumed or event.state is AgentState.SKIPPED:
            return  # nothing ran in this process
        if event.state is AgentState.BUDGET_EXCEEDED:
            self.budget_exceeded.labels(self._runs.get(event.run_id, OTHER)).inc()
        if answered is not None:
            self.agent_seconds.labels(*answered).observe(event.duration)

    def _run(self, event: RunFinished) -> None:
        with self._lock:
            workflow = self._runs.pop(event.run_id, OTHER)
        self.active.dec()
        self.workflows.labels(workflow, str(event.status)).inc()
        if event.status.exit_code != 0 and event.status is not RunStatus.CANCELLED:
            self.workflows_failed.labels(workflow).inc()

    # -- exposition ------------------------------------------------------------------------
    def exposition(self) -> tuple[bytes, str]:
        """The text format Prometheus scrapes, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def serve(self, host: str, port: int) -> Any:
        """Serve ``/metrics`` on ``host:port`` from a thread; returns the server
        (``shutdown()`` and ``server_close()`` it)."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server

    def push(self, url: str, workflow: str) -> None:
        """Push every metric to a Pushgateway, grouped by job ``aoe`` and the
        workflow's name: each workflow's last run replaces its previous one."""
        from prometheus_client import push_to_gateway

        push_to_gateway(
            url, job="aoe", registry=self.registry, grouping_key={"workflow": workflow}, timeout=10
        )


def parse_address(address: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port);
    raises ValueError with what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = default_host, address
    host = host.strip("[]") or default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not PORT or HOST:PORT (a port is 0 to 65535)")
    return host, int(port)


def health_value(state: str) -> int:
    return HEALTH_VALUES[state]
