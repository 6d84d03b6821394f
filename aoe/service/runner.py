"""The library entry points: what the command line does, callable from Python.

``validate`` checks workflow files; ``load`` returns a runnable workflow or
raises :class:`aoe.errors.WorkflowInvalid`. ``run_workflow`` runs one
on a fresh engine; ``run_until_done`` does it in its own event loop, with
SIGINT and SIGTERM cancelling the run cleanly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from aoe.config.checks import checks_for
from aoe.config.settings import Settings, load_settings
from aoe.format.loader import LoadResult, load_workflow
from aoe.format.workflow import Workflow

if TYPE_CHECKING:
    from aoe.engine.executor import Engine
    from aoe.events import RunStatus, Subscriber
    from aoe.redis.records import RecordMirror
    from aoe.service.resume import ResumePlan
    from aoe.state.store import Store

SUBMITTED = "<submitted>"  # the folder of a workflow sent as text: never one on disk

__all__ = [
    "LoadResult",
    "Settings",
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
    from aoe.engine.executor import providers_of

    return providers_of(workflow, mock=False)


async def run_workflow(
    workflow: Workflow,
    inputs: Mapping[str, Any],
    settings: Settings,
    *,
    subscribers: Sequence[Subscriber] = (),
    mock: bool = False,
    max_parallel: int | None = None,
    budget: float | None = None,
    run_id: str | None = None,
    store: Store | None = None,
    cache: bool = True,
    resume: ResumePlan | None = None,
    engine: Engine | None = None,
    mirror: RecordMirror | None = None,
    max_units: int | None = None,
    max_reply_bytes: int | None = None,
) -> RunStatus:
    """Run a workflow on a fresh engine and close it after (or on ``engine``,
    shared with other runs: its rate limits and its limit on runs hold across
    them, and it stays open); the subscribers get every event. A missing API
    key is refused before any call; ``budget`` (USD) replaces the workflow's
    ``cost_budget``.

    With a ``store`` the run is recorded (resumable; see :mod:`aoe.state`) and,
    unless ``cache`` is false, answers come from the response cache where they
    can. ``resume`` (from :func:`aoe.service.resume.plan_resume`) continues a recorded
    run instead of starting one. ``mirror`` sends the record to Redis as well
    (the work queue's runs; see :mod:`aoe.redis.records`). ``max_units`` bounds the
    run's agents and ``foreach`` items together, ``max_reply_bytes`` the characters
    of its replies (a service's limits per run)."""
    import asyncio
    import logging

    from aoe.engine.executor import new_run_id
    from aoe.errors import MissingApiKey
    from aoe.events import EventBus
    from aoe.providers import missing_keys
    from aoe.service.wiring import engine_for

    if not mock:
        used = providers_used(workflow)
        missing = missing_keys(used, settings)
        if missing:
            raise MissingApiKey(missing)
        for warning in settings.dotenv_warnings(used):  # at every run: keys are about to go
            logging.getLogger("aoe.config").warning(warning)
    own_engine = engine is None
    if engine is None:  # first: a config it refuses is refused before any record
        engine = engine_for(settings)
    bus = EventBus()
    for subscriber in subscribers:
        bus.subscribe(subscriber)
    run_id = resume.run_id if resume is not None else run_id or new_run_id()
    recorder = None
    response_cache = None
    resumption = None
    if store is not None:
        from aoe.state.cache import ResponseCache
        from aoe.state.liveness import HERE
        from aoe.state.recorder import Recorder

        settings_used = {
            "budget": budget,
            "max_parallel": max_parallel,
            "mock": mock,
            "cache": cache,
        }
        session = _record(store, run_id, workflow, inputs, settings_used, resume)
        HERE.runs.add(run_id)
        if resume is not None:
            resumption = resume.resumption._replace(session=session)
        recorder = Recorder(store.path, run_id, session, mirror)
        bus.record_with(recorder)
        if cache:
            response_cache = ResponseCache(store, recorder.cache)
    status = None
    try:
        if recorder is not None:
            if mirror is not None and store is not None:
                await mirror.begin(store, session, recorder.journal)
            recorder.start()
        status = await engine.run(
            workflow,
            inputs,
            bus,
            run_id=run_id,
            max_parallel=max_parallel,
            budget=budget,
            mock=mock,
            cache=response_cache,
            resumption=resumption,
            max_units=max_units,
            max_reply_bytes=max_reply_bytes,
        )
    finally:
        try:
            if own_engine:
                await engine.aclose()
        finally:
            if recorder is not None:  # the last commit, off the event loop
                recorder.drain()
                try:
                    try:
                        if mirror is not None:  # everything, unless the run was stopped
                            await mirror.close(timeout=None if status is not None else 5.0)
                    finally:  # even if that wait was cancelled
                        await asyncio.to_thread(recorder.join)
                finally:
                    HERE.runs.discard(run_id)
    told = None if recorder is None else recorder.told()
    if told is not None:  # said when it happened; said again as the run ends
        logging.getLogger("aoe.store").warning("%s", told, extra={"run_id": run_id})
    if mirror is not None and store is not None:
        await mirror.finish(store.run(run_id))
    if bus.failure is not None:  # a subscriber broke: a bug to report, after the run
        raise bus.failure
    return status


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
    )


def run_until_done(
    workflow: Workflow,
    inputs: Mapping[str, Any],
    settings: Settings,
    **options: Any,
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
            return await run_workflow(workflow, inputs, settings, **options)
        except asyncio.CancelledError:
            task.uncancel()
            return RunStatus.CANCELLED
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(main())
