"""The one runner: what every caller of a run (the CLI, the HTTP service, the
queue's worker, resume and the Python API) goes through.

``validate`` checks workflow files; ``load`` returns a runnable workflow or
raises :class:`aoe.errors.WorkflowInvalid`. ``run_workflow`` wires a run —
its inputs bound and checked, its record, response cache and Redis mirror,
its subscribers — and runs it on a fresh engine or a shared one, with the
choices of the run in one frozen :class:`RunOptions`; ``run_until_done`` does
it in its own event loop, with SIGINT and SIGTERM cancelling the run cleanly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from aoe.config.checks import checks_for
from aoe.config.settings import Settings, load_settings
from aoe.format.inputs import GivenInput, bind_inputs
from aoe.format.loader import LoadResult, load_workflow
from aoe.format.workflow import Workflow

if TYPE_CHECKING:
    from aoe.engine.engine import Engine
    from aoe.events import RunStatus, Subscriber, TextListener
    from aoe.redis.records import RecordMirror
    from aoe.service.resume import ResumePlan
    from aoe.state.store import Store

SUBMITTED = "<submitted>"  # the folder of a workflow sent as text: never one on disk

__all__ = [
    "LoadResult",
    "RunOptions",
    "Settings",
    "bind",
    "load",
    "load_settings",
    "providers_used",
    "run_until_done",
    "run_workflow",
    "validate",
]


def validate(
    paths: Sequence[str | os.PathLike[str]], settings: Settings | None = None
) -> list[LoadResult]:
    """Check every file, each with all its diagnostics.

    With ``settings`` (the engine configuration), providers and prices are
    checked too; :func:`aoe.config.settings.load_settings` gives the effective one.
    """
    return [load_workflow(path, checks=checks_for(settings)) for path in paths]


def load(path: str | os.PathLike[str], settings: Settings | None = None) -> Workflow:
    """A valid workflow, or :class:`aoe.errors.WorkflowInvalid` listing every error."""
    return load_workflow(path, checks=checks_for(settings)).require()


def load_text(
    text: str,
    name: str,
    settings: Settings | None = None,
    files: Mapping[str, str] | None = None,
) -> Workflow:
    """A workflow sent as text (``aoe serve``'s API, the work queue): checked like
    a file named ``name`` beside ``files`` (its prompt and schema files, by path
    relative to it); raises :class:`aoe.errors.WorkflowInvalid`, or UserError for
    a name or a path that is not plain. Its path is ``<submitted>/name``, which
    never exists, so a resume uses the record's copy."""
    import tempfile
    from pathlib import Path, PurePosixPath

    from aoe.errors import UserError

    def plain(path: str, what: str) -> PurePosixPath:
        parts = PurePosixPath(path)
        if (
            not path
            or len(path) > 255
            or "\x00" in path
            or "\\" in path
            or parts.is_absolute()
            or any(part in ("..", ".") or part.startswith(".") for part in parts.parts)
        ):
            raise UserError(f"{what} {path!r} must be a plain relative file name")
        return parts

    if len(plain(name, "the workflow's name").parts) != 1:
        raise UserError(f"the workflow's name {name!r} must be a file name, with no folder")
    with tempfile.TemporaryDirectory(prefix="aoe-submit-") as folder:
        path = Path(folder) / name
        path.write_text(text, encoding="utf-8")
        for relative, content in (files or {}).items():
            target = Path(folder).joinpath(*plain(relative, "the file").parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
        workflow = load_workflow(path, checks=checks_for(settings), display=name).require()
    return workflow._replace(path=f"{SUBMITTED}/{name}")


def is_submitted(path: str) -> bool:
    """A workflow sent as text (:func:`load_text`): its record's copy is the
    only one, whatever lies at that path on this machine."""
    return SUBMITTED in PurePath(path).parts


def providers_used(workflow: Workflow) -> list[str]:
    """Every provider the workflow may call, fallbacks included, in order of use."""
    from aoe.engine.engine import providers_of

    return providers_of(workflow, mock=False)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """The choices of one run, apart from its workflow and inputs.

    Frozen so that one value can be handed from the CLI, the HTTP service, the
    queue or the Python API down to the engine without anyone changing it on
    the way; :meth:`recorded` is what the run's record keeps of it (and what a
    resume reads back with :meth:`from_record`).
    """

    mock: bool = False
    """Answer every agent with the offline mock provider (no keys, no cost)."""
    mock_limits: bool = False
    """With ``mock``: hold the calls to the rate limits of the providers the
    workflow names, in windows of their own (not the real ones), so the
    rehearsal takes as long as those limits make the real run take."""
    budget: float | None = None
    """USD the run may spend; replaces the workflow's ``cost_budget``."""
    max_parallel: int | None = None
    """Agents (and ``foreach`` items) called at once; None: the workflow's own."""
    cache: bool | None = None
    """The response cache (runs with a store only): True answers every agent from
    it where it can (``--cache``), False none (``--no-cache``, which always
    wins); None, as the workflow, its agents and the engine config say (off)."""
    run_id: str | None = None
    """The run's id; None: a new one. A resume keeps its plan's."""
    max_units: int | None = None
    """A service's limit on the run's agents and ``foreach`` items together."""
    max_reply_bytes: int | None = None
    """A service's limit on the characters of the run's replies."""

    def recorded(self) -> dict[str, Any]:
        """The options a run's record keeps (``runs.settings``): the ones a resume
        reuses. A service's limits are not kept: they belong to the service."""
        return {
            "budget": self.budget,
            "max_parallel": self.max_parallel,
            "mock": self.mock,
            "mock_limits": self.mock_limits,
            "cache": self.cache,
        }

    @classmethod
    def from_record(cls, chosen: Mapping[str, Any], **more: Any) -> RunOptions:
        """The options a record or a queued message kept (absent keys: defaults)."""
        return cls(
            mock=bool(chosen.get("mock")),
            mock_limits=bool(chosen.get("mock_limits")),
            budget=chosen.get("budget"),
            max_parallel=chosen.get("max_parallel"),
            cache=_tristate(chosen.get("cache")),
            max_units=chosen.get("max_units"),
            max_reply_bytes=chosen.get("max_reply_bytes"),
        ).but(**more)

    def but(self, **changes: Any) -> RunOptions:
        """A copy with ``changes`` (``options.but(mock=True)``); a name that is
        not an option raises :class:`TypeError` naming the options."""
        names = [f.name for f in fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise TypeError(
                f"RunOptions has no {', '.join(map(repr, unknown))}; its options are "
                f"{', '.join(names)}"
            )
        return replace(self, **changes) if changes else self


def _tristate(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def bind(
    workflow: Workflow, inputs: Mapping[str, Any], given_by: str = "the inputs"
) -> dict[str, Any]:
    """Every declared input's value: given, else its default; raises
    :class:`aoe.errors.InputsInvalid` (a user error, exit 2) listing every
    missing, undeclared or mistyped one. A value may be a :class:`GivenInput`
    (which says where it was given: ``-i``, a file's line); any other value is
    said to be given by ``given_by``. Binding bound values again changes nothing."""
    return bind_inputs(
        workflow.inputs,
        {
            name: value if isinstance(value, GivenInput) else GivenInput(value, given_by)
            for name, value in inputs.items()
        },
    )


async def run_workflow(
    workflow: Workflow,
    inputs: Mapping[str, Any],
    settings: Settings,
    options: RunOptions = RunOptions(),
    *,
    subscribers: Sequence[Subscriber] = (),
    store: Store | None = None,
    resume: ResumePlan | None = None,
    engine: Engine | None = None,
    mirror: RecordMirror | None = None,
    text: TextListener | None = None,
) -> RunStatus:
    """Run a workflow on a fresh engine and close it after (or on ``engine``,
    shared with other runs: its rate limits and its limit on runs hold across
    them, and it stays open); the subscribers get every event. The inputs are
    bound first (:func:`bind`): a bad one is :class:`aoe.errors.InputsInvalid`
    before anything runs. A missing API key is refused before any call.

    With a ``store`` the run is recorded (resumable; see :mod:`aoe.state`) and,
    unless ``options.cache`` is false, answers come from the response cache
    where they can. ``resume`` (from :func:`aoe.service.resume.plan_resume`)
    continues a recorded run instead of starting one. ``mirror`` sends the
    record to Redis as well (the work queue's runs; see :mod:`aoe.redis.records`).
    ``text`` is told each piece of each reply as it arrives (a view's ``-v``)."""
    from aoe.errors import MissingApiKey
    from aoe.providers import missing_keys
    from aoe.service.wiring import engine_for

    values = bind(workflow, inputs)
    if not options.mock:
        import logging

        used = providers_used(workflow)
        missing = missing_keys(used, settings)
        if missing:
            raise MissingApiKey(missing)
        for warning in settings.dotenv_warnings(used):  # at every run: keys are about to go
            logging.getLogger("aoe.config").warning(warning)
    own_engine = engine is None
    if engine is None:  # first: a config it refuses is refused before any record
        engine = engine_for(settings)
    return await _wired(
        workflow, values, options, subscribers, store, resume, (engine, own_engine), mirror, text
    )


async def _wired(
    workflow: Workflow,
    values: dict[str, Any],
    options: RunOptions,
    subscribers: Sequence[Subscriber],
    store: Store | None,
    resume: ResumePlan | None,
    engine_owned: tuple[Engine, bool],
    mirror: RecordMirror | None,
    text: TextListener | None = None,
) -> RunStatus:
    """The run on the engine with its bus, and with a store its recording;
    closed in order however the run ends: the engine first (when it is the
    run's own), then the recording."""
    from aoe.engine.engine import new_run_id
    from aoe.events import EventBus

    engine, own_engine = engine_owned
    bus = EventBus()
    for subscriber in subscribers:
        bus.subscribe(subscriber)
    bus.text = text
    run_id = resume.run_id if resume is not None else options.run_id or new_run_id()
    recording = None
    if store is not None:
        config_file = engine.settings.config_file
        kept = {
            **options.recorded(),
            "config_file": os.path.abspath(config_file) if config_file else None,
        }
        caching = _caching(workflow, options, engine.settings)
        recording = _Recording(
            store, run_id, workflow, values, kept, options, resume, mirror, caching
        )
        bus.record_with(recording.recorder)
    status = None
    try:
        if recording is not None:
            await recording.start()
        status = await engine.run(
            workflow,
            values,
            bus,
            run_id=run_id,
            max_parallel=options.max_parallel,
            budget=options.budget,
            mock=options.mock,
            mock_limits=options.mock_limits,
            cache=None if recording is None else recording.cache,
            resumption=None if recording is None else recording.resumption,
            max_units=options.max_units,
            max_reply_bytes=options.max_reply_bytes,
        )
    finally:
        try:
            if own_engine:
                await engine.aclose()
        finally:
            if recording is not None:
                await recording.close(finished=status is not None)
    if recording is not None:
        await recording.finish()
    if bus.failure is not None:  # a subscriber broke: a bug to report, after the run
        raise bus.failure
    return status


def _caching(
    workflow: Workflow, options: RunOptions, settings: Settings
) -> tuple[bool, float | None] | None:
    """How a run uses the response cache: None, not at all (``--no-cache``,
    which always wins); else whether it answers the agents that do not say for
    themselves (``--cache``, else the workflow's ``cache``, else the engine
    config's ``engine.cache``: off), and the age an answer may have (the
    workflow's ``cache_ttl``, else the engine's). An agent's own ``cache`` and
    ``cache_ttl`` go over these."""
    if options.cache is False:
        return None
    engine = settings.config.engine
    if options.cache:
        on = True
    else:
        on = workflow.cache if workflow.cache is not None else engine.cache
    return on, workflow.cache_ttl if workflow.cache_ttl is not None else engine.cache_ttl


class _Recording:
    """A run's record: its row (or its next session's), the recorder that
    journals its events, the response cache it reads through, and the Redis
    mirror it is copied to. Made before the run starts, so a store that
    refuses it refuses the run."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        workflow: Workflow,
        values: dict[str, Any],
        kept: Mapping[str, Any],
        options: RunOptions,
        resume: ResumePlan | None,
        mirror: RecordMirror | None,
        caching: tuple[bool, float | None] | None = None,
    ) -> None:
        """``kept``: what the record keeps of how the run was started (its
        options, and the engine config file its settings came from);
        ``caching``: see :func:`_caching`."""
        from aoe.engine.resumption import Resumption
        from aoe.state.cache import ResponseCache
        from aoe.state.liveness import HERE
        from aoe.state.recorder import Recorder

        self.store, self.run_id, self.mirror = store, run_id, mirror
        self.session = _record(store, run_id, workflow, values, kept, resume)
        HERE.runs.add(run_id)
        self.resumption: Resumption | None = None
        if resume is not None:
            self.resumption = resume.resumption._replace(session=self.session)
        self.recorder = Recorder(store.path, run_id, self.session, mirror)
        self.cache = None
        if caching is not None:  # (on or off for the agents that do not say)
            on, ttl = caching
            self.cache = ResponseCache(store, self.recorder.cache, on=on, ttl=ttl)

    async def start(self) -> None:
        if self.mirror is not None:
            await self.mirror.begin(self.store, self.session, self.recorder.journal)
        self.recorder.start()

    async def close(self, *, finished: bool) -> None:
        """The last commit, off the event loop; the mirror sent everything unless
        the run was stopped (then it has 5 s)."""
        import asyncio

        from aoe.state.liveness import HERE

        self.recorder.drain()
        try:
            try:
                if self.mirror is not None:
                    await self.mirror.close(timeout=None if finished else 5.0)
            finally:  # even if that wait was cancelled
                await asyncio.to_thread(self.recorder.join)
        finally:
            HERE.runs.discard(self.run_id)

    async def finish(self) -> None:
        """What the store could not keep, said again as the run ends (it was said
        when it happened); the mirror's copy of the final record."""
        import logging

        told = self.recorder.told()
        if told is not None:
            logging.getLogger("aoe.store").warning("%s", told, extra={"run_id": self.run_id})
        if self.mirror is not None:
            await self.mirror.finish(self.store.run(self.run_id))


def _record(
    store: Store,
    run_id: str,
    workflow: Workflow,
    inputs: Mapping[str, Any],
    settings_used: Mapping[str, Any],
    resume: ResumePlan | None,
) -> int:
    """The run's record before it starts (or its next session's); the session number."""
    if resume is None:
        from aoe.state.definitions import definitions

        store.create_run(
            run_id,
            workflow_name=workflow.name,
            # a submitted workflow has no path here: not this process's folder
            workflow_path=(
                workflow.path if is_submitted(workflow.path) else os.path.abspath(workflow.path)
            ),
            workflow_sha256=workflow.digest,
            workflow_text=workflow.text,
            workflow_files=workflow.files,
            inputs=inputs,
            settings=settings_used,
            budget=settings_used.get("budget"),
            agents=definitions(workflow),
            described=_described(workflow),
        )
        return 1
    changed = None
    if resume.file_changed:
        changed = {
            "sha256": workflow.digest,
            "text": workflow.text,
            "files": workflow.files,
            "name": workflow.name,
        }
    return store.begin_session(
        run_id,
        agents=resume.definitions,
        rerun=resume.rerun,
        inputs=inputs,
        settings=settings_used,
        budget=settings_used.get("budget"),
        workflow=changed,
        sessions=resume.sessions,
        reset=resume.stale,
        take_over=resume.take_over,
        described=_described(workflow),
    )


def _described(workflow: Workflow) -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """Each agent's provider and model as the workflow names them, and what it
    depends on, in the workflow's order (the record keeps them for the results
    document and the report)."""
    graph = workflow.graph
    return {
        agent_id: (agent.llm.provider, agent.llm.model, graph.dependencies(agent_id))
        for agent_id, agent in workflow.agents.items()
    }


def run_until_done(
    workflow: Workflow,
    inputs: Mapping[str, Any],
    settings: Settings,
    options: RunOptions = RunOptions(),
    **wiring: Any,
) -> RunStatus:
    """:func:`run_workflow` in its own event loop; SIGINT and SIGTERM cancel it
    cleanly (calls in flight are cancelled, the run ends ``cancelled``)."""
    import asyncio
    import signal

    from aoe.events import RunStatus

    async def main() -> RunStatus:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await run_workflow(workflow, inputs, settings, options, **wiring)
        except asyncio.CancelledError:
            task.uncancel()
            return RunStatus.CANCELLED
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(main())
