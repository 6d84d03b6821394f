"""The library's engine: :class:`Engine` (an async context manager, like
``httpx.AsyncClient``) and :func:`run` (one run, synchronously, like
pydantic-ai's ``Agent.run_sync``).

An :class:`Engine` owns what the CLI builds for a run: the settings (from an
:class:`~aoe.config.models.EngineConfig` made in code, a config file, or the
environment and ``AOE_CONFIG`` as ``aoe run`` reads them), the core engine of
:func:`aoe.service.wiring.engine_for` (its rate limits, its daily spend, its
limit on runs at once, shared by every run it makes), and — only when given a
``state_dir`` — the run store. Every run goes through the one runner,
:func:`aoe.service.runner.run_workflow`, so its inputs are bound and checked
and it is recorded exactly as ``aoe run`` would record it.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aoe.api.results import RunResult
from aoe.config.models import EngineConfig
from aoe.config.settings import Settings, load_settings
from aoe.events import AgentFinished, Event, RunFinished, RunStatus, Subscriber
from aoe.format.workflow import Workflow
from aoe.service.runner import RunOptions

if TYPE_CHECKING:
    from aoe.engine.engine import Engine as CoreEngine
    from aoe.observe.health import HealthMonitor
    from aoe.observe.results import Results
    from aoe.state.store import Store

__all__ = ["Engine", "EngineStatus", "run"]

WorkflowLike = Workflow | str | os.PathLike[str]
ConfigLike = EngineConfig | Settings | str | os.PathLike[str] | None
KEEP_EVENTS = 10_000
"""Events an :class:`Engine` keeps for :meth:`Engine.events`, every run together."""
KEEP_RUNS = 1_000
"""Finished runs an :class:`Engine` keeps for :meth:`Engine.run_status` (a
long-lived engine must not grow without end); runs in progress are all kept."""


@dataclass(frozen=True, kw_only=True)
class EngineStatus:
    """How an engine is doing (:meth:`Engine.status`): the figures of ``aoe
    serve``'s ``/health``, for the runs of this engine."""

    health: str
    """``healthy``, ``degraded`` (every run slot taken, long rate-limit waits,
    many provider errors) or ``unhealthy``."""
    reason: str
    """Which figure decided ``health``, with its value."""
    active_runs: int
    max_concurrent_workflows: int
    finished: dict[RunStatus, int]
    """Runs this engine finished, by status."""
    figures: dict[str, Any] = field(default_factory=dict)
    """Mean rate-limit wait, provider error rate and calls, over the last 5 minutes."""


class Engine:
    """Runs workflows from Python; use it as ``async with aoe.Engine(...) as engine``.

    ``config`` is an :class:`aoe.EngineConfig` built in code, the path of a
    config file, ready :class:`~aoe.config.settings.Settings`, or None: then
    ``AOE_CONFIG`` and the defaults, as ``aoe run`` has it. The environment
    (``RATE_LIMIT_RPM``, API keys ...) goes over the config either way; pass
    ``environ`` to choose it rather than ``os.environ`` (``environ={}``: no
    variables but those of the ``.env`` file in ``cwd``, which is still read),
    and ``cwd`` for the folder whose ``.env`` is read.
    A config that is not valid raises :class:`aoe.errors.ConfigInvalid` here.

    ``state_dir`` keeps a record of each run in that folder (resumable with
    ``aoe resume``, listed by ``aoe runs``) and lets runs answer from the
    response cache; without it nothing is written to disk and each result
    lives in this object only. ``AOE_STATE_DIR`` is not read for it: a library
    writes to disk only where its caller says (pass
    ``state_dir=os.environ["AOE_STATE_DIR"]`` to follow the command line). A
    store the engine cannot write is refused as it opens
    (:class:`aoe.errors.StateWriteFailed`), before any run, where ``aoe runs``
    would still read it.

    The runs of one engine share its rate limits and its limit on runs at
    once (``engine.max_concurrent_workflows``); leaving the ``async with``
    block (or :meth:`aclose`) closes its connections and child processes.
    """

    def __init__(
        self,
        config: ConfigLike = None,
        *,
        environ: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.settings = _settings(config, environ, cwd)
        self.state_dir = None if state_dir is None else Path(state_dir)
        self._core: CoreEngine | None = None
        self._store: Store | None = None
        self._runs: dict[str, Results] = {}
        self._active: set[str] = set()
        self._events: deque[Event] = deque(maxlen=KEEP_EVENTS)
        self._finished: dict[RunStatus, int] = {}
        self._health: HealthMonitor | None = None

    def __repr__(self) -> str:
        return f"Engine({self.settings.config_file or 'config in code or defaults'})"

    async def __aenter__(self) -> Engine:
        try:
            self._open()
        except BaseException:  # what was opened before the failure is closed
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _open(self) -> CoreEngine:
        """The core engine and the store, made at first use."""
        if self._core is None:
            from aoe.observe.health import HealthMonitor
            from aoe.service.wiring import engine_for

            if self.state_dir is not None and self._store is None:
                from aoe.state.journal import recover
                from aoe.state.schema import FILE_NAME
                from aoe.state.store import Store

                self._store = Store(self.state_dir / FILE_NAME)
                recover(self._store)  # the journals of runs whose process died
            self._core = engine_for(self.settings)
            self._health = HealthMonitor()
        return self._core

    async def aclose(self) -> None:
        """Close the core engine (its providers' connections, its child
        processes, a shared limiter's Redis connection) and the store."""
        core, self._core = self._core, None
        try:
            if core is not None:
                await core.aclose()
        finally:
            store, self._store = self._store, None
            if store is not None:
                store.close()

    def load(self, path: str | os.PathLike[str]) -> Workflow:
        """A workflow file checked against this engine's settings (its providers
        and prices); raises :class:`aoe.errors.WorkflowInvalid` listing every error."""
        from aoe.service.runner import load

        return load(path, self.settings)

    async def run(
        self,
        workflow: WorkflowLike,
        inputs: Mapping[str, Any] | None = None,
        options: RunOptions | None = None,
        **choices: Any,
    ) -> RunResult:
        """Run ``workflow`` (a :class:`~aoe.format.workflow.Workflow` or a file's
        path) to its end and return its :class:`RunResult`.

        ``inputs`` are bound as ``-i`` would bind them: defaults fill the rest,
        and a missing, undeclared or mistyped one raises
        :class:`aoe.errors.InputsInvalid` before anything runs. ``options`` (an
        :class:`aoe.RunOptions`), or its fields as keywords (``budget=2.0``,
        ``mock=True``), choose how it runs. A run that ends failed, over its
        budget or cancelled is a result too (see ``status`` and ``reason``);
        what raises is a mistake (bad inputs, a missing API key) or a broken
        store.
        """
        from aoe.engine.engine import new_run_id
        from aoe.observe.results import Results
        from aoe.service.runner import bind, run_workflow

        chosen = (options or RunOptions()).but(**choices)  # a misspelled option: TypeError
        core = self._open()
        loaded = workflow if isinstance(workflow, Workflow) else self.load(workflow)
        if chosen.run_id is None:
            chosen = chosen.but(run_id=new_run_id())
        run_id = chosen.run_id
        assert run_id is not None
        results = Results(loaded, bind(loaded, inputs or {}))
        self._runs[run_id] = results
        self._active.add(run_id)
        self._forget()
        subscribers: list[Subscriber] = [results, self._events.append]
        if self._health is not None:
            subscribers.append(self._health)
        try:
            status = await run_workflow(
                loaded,
                inputs or {},
                self.settings,
                chosen,
                subscribers=subscribers,
                store=self._store,
                engine=core,
            )
        except BaseException:
            if results.document["started_at"] is None:  # it never started: not a run
                self._runs.pop(run_id, None)
            raise
        finally:
            self._active.discard(run_id)
        self._finished[status] = self._finished.get(status, 0) + 1
        return RunResult.from_document(results.document)

    def _forget(self) -> None:
        """The oldest finished runs past :data:`KEEP_RUNS` (dicts keep their order)."""
        over = len(self._runs) - KEEP_RUNS
        for old in [r for r in self._runs if r not in self._active][: max(over, 0)]:
            del self._runs[old]

    def run_sync(
        self,
        workflow: WorkflowLike,
        inputs: Mapping[str, Any] | None = None,
        options: RunOptions | None = None,
        **choices: Any,
    ) -> RunResult:
        """:meth:`run` in its own event loop, then :meth:`aclose` (so the engine
        is used once); for a script without ``async``. Inside a running event
        loop (a notebook's, a server's) it raises :class:`RuntimeError`: there,
        ``await engine.run(...)``."""
        import asyncio

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # none: ours to run
        else:
            raise RuntimeError(
                "aoe.run() and Engine.run_sync() start an event loop of their own, and one "
                "is running here (a notebook's, a server's): use `await engine.run(...)` "
                "inside `async with aoe.Engine(...) as engine:` instead"
            )

        async def once() -> RunResult:
            async with self:
                return await self.run(workflow, inputs, options, **choices)

        return asyncio.run(once())

    def run_status(self, run_id: str) -> RunResult:
        """A run of this engine as it stands: its ``status`` is None while it runs.
        Raises :class:`aoe.errors.RunNotFound` for a run it did not make."""
        results = self._runs.get(run_id)
        if results is None:
            from aoe.errors import RunNotFound

            raise RunNotFound(
                f"no run {run_id} was made by this engine (it keeps its last {KEEP_RUNS:,})"
            )
        return RunResult.from_document(results.document)

    def status(self) -> EngineStatus:
        """Runs in progress and finished, and the health figures ``aoe serve``
        reports, for this engine's runs."""
        from aoe.observe.health import HealthMonitor

        limit = self.settings.config.engine.max_concurrent_workflows
        monitor = self._health or HealthMonitor()
        health = monitor.check(
            active=len(self._active), limit=limit, queued=0, queue_limit=1, draining=False
        )
        figures = {
            k: v
            for k, v in health.figures.items()
            if k not in ("active_runs", "max_concurrent_workflows", "queued_runs", "queue_limit")
        }
        return EngineStatus(
            health=health.status,
            reason=health.reason,
            active_runs=len(self._active),
            max_concurrent_workflows=limit,
            finished=dict(self._finished),
            figures=figures,
        )

    def events(
        self, run_id: str | None = None, *, kind: str | None = None, last: int = 50
    ) -> list[Event]:
        """The last ``last`` events (oldest first) of one run, or of every run;
        ``kind`` keeps one kind: an event's type in snake case (``attempt_finished``,
        ``run_started``), or ``agent_<state>`` / ``run_<status>`` for the agents
        and runs that ended so (``agent_failed``, ``run_budget_exceeded``).
        The engine keeps its last 10,000 events."""
        found = [
            e
            for e in self._events
            if (run_id is None or e.run_id == run_id) and (kind is None or kind in kinds(e))
        ]
        return found[-last:] if last > 0 else []


def kinds(event: Event) -> tuple[str, ...]:
    """The kinds an event answers to in :meth:`Engine.events`."""
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(event).__name__).lower()
    if isinstance(event, AgentFinished):
        return name, f"agent_{event.state}"
    if isinstance(event, RunFinished):
        return name, f"run_{event.status}"
    return (name,)


def _settings(
    config: ConfigLike, environ: Mapping[str, str] | None, cwd: str | os.PathLike[str] | None
) -> Settings:
    if isinstance(config, Settings):
        if environ is not None or cwd is not None:
            raise TypeError(
                "environ and cwd are read when settings are made: ready Settings were "
                "made with theirs (give the config file or EngineConfig instead)"
            )
        return config
    folder = None if cwd is None else os.fspath(cwd)
    if isinstance(config, EngineConfig):
        return load_settings(config=config, environ=environ, cwd=folder)
    path = None if config is None else os.fspath(config)
    return load_settings(path, environ=environ, cwd=folder)


def run(
    workflow: WorkflowLike,
    inputs: Mapping[str, Any] | None = None,
    *,
    config: ConfigLike = None,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    options: RunOptions | None = None,
    **choices: Any,
) -> RunResult:
    """Run a workflow to its end, synchronously, on an engine made for it.

    ``aoe.run("wf.yaml", inputs={"topic": "tides"}, budget=2.0)``: the
    keywords after the inputs are :class:`aoe.RunOptions` fields (``mock``,
    ``budget``, ``max_parallel``, ``cache``); ``config``, ``environ``, ``cwd``
    and ``state_dir`` are those of :class:`Engine`. Not from inside a running
    event loop: there, ``await engine.run(...)``.
    """
    (options or RunOptions()).but(**choices)  # a misspelled option, before anything opens
    engine = Engine(config, environ=environ, cwd=cwd, state_dir=state_dir)
    return engine.run_sync(workflow, inputs, options, **choices)
