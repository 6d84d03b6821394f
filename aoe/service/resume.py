"""Planning ``aoe resume``: what a run's record lets the next session skip.

The workflow is the file at the recorded path (or, when that file is gone,
the copy kept in the record, prompt files included). An agent is kept — not
called again, its stored output feeding its dependents — when it completed,
its definition hash (:mod:`aoe.state.definitions`) is unchanged, and every
agent it depends on is kept too. Everything else runs.

A changed workflow file is refused unless ``force``: the record says what
changed so the user can decide. What earlier sessions spent — every
attempt's cost, and the reservation of an attempt whose outcome was never
recorded — counts against the run's budget and each agent's limit.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from aoe.config.checks import checks_for
from aoe.config.settings import Settings
from aoe.engine.resumption import Restored, Resumption
from aoe.errors import ResumeRefused
from aoe.events import AgentState
from aoe.format.inputs import GivenInput, bind_inputs, from_assignments
from aoe.format.loader import load_workflow
from aoe.format.workflow import Workflow
from aoe.service.runner import is_submitted
from aoe.state.definitions import changed_inputs, definitions, reading
from aoe.state.journal import recover
from aoe.state.rows import AgentRow, AttemptRow, AttemptStatus, RecordStatus, RunRow
from aoe.state.store import Store
from aoe.types import Usage


class ResumePlan(NamedTuple):
    run_id: str
    sessions: int  # as read: a resume that started meanwhile makes this one stale
    status: RecordStatus  # the record's status before this session
    workflow: Workflow
    inputs: dict[str, Any]
    options: dict[str, Any]  # budget, max_parallel, mock, cache
    kept: tuple[str, ...]
    rerun: tuple[str, ...]
    changed: tuple[str, ...]  # agents whose definition differs from the record's
    stale: tuple[str, ...]  # those, and every agent after one of them
    file_changed: bool
    definitions: dict[str, str]
    resumption: Resumption
    take_over: bool = False  # the work queue gave it to us: its record's process is gone

    @property
    def done(self) -> bool:
        """The run completed: there is nothing to resume."""
        return self.status is RecordStatus.COMPLETED


def plan_resume(
    store: Store,
    run_id: str,
    settings: Settings,
    *,
    force: bool = False,
    inputs: Mapping[str, GivenInput] | None = None,
    assignments: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
    take_over: bool = False,
) -> ResumePlan:
    """What resuming ``run_id`` will do; raises :class:`ResumeRefused` when it
    may not (still running, or its file changed without ``force``). ``inputs``
    and ``assignments`` (``NAME=VALUE``) override the stored inputs."""
    run = _resumable(store, run_id, take_over)
    run_id = run.run_id
    workflow = _workflow(run, settings)
    values = _inputs(run, workflow, inputs, assignments)
    chosen = _options(run, options)
    defined = definitions(workflow)
    records = {agent.agent_id: agent for agent in store.agents(run_id)}
    changed = _changed(run, workflow, values, defined, records)
    file_changed = workflow.digest != run.workflow_sha256
    if file_changed and not force and run.status is not RecordStatus.COMPLETED:
        raise _file_changed(run_id, workflow, changed)
    stale = _stale(workflow, changed)
    kept = [
        agent_id
        for agent_id in workflow.agents
        if agent_id not in stale and records[agent_id].state is AgentState.COMPLETED
    ]
    rerun = tuple(a for a in workflow.agents if a not in kept)
    return ResumePlan(
        run_id,
        int(run.sessions),
        run.status,
        workflow,
        values,
        chosen,
        tuple(kept),
        rerun,
        changed,
        tuple(a for a in workflow.agents if a in stale),
        file_changed,
        defined,
        _resumption(store, run, records, stale, kept),
        take_over,
    )


def _resumable(store: Store, run_id: str, take_over: bool) -> RunRow:
    """The run's record, its journal beyond the store recovered first; refused
    while another process runs it (unless the work queue gave it to us)."""
    run_id = store.run(run_id).run_id
    recover(store, run_id, take_over=take_over)  # its journal beyond the store, first
    run = store.run(run_id)
    if run.status is RecordStatus.RUNNING and not take_over:
        raise ResumeRefused(
            f"run {run_id} is still running (process {run.pid} on {run.host}): "
            "wait for it to end, or stop it first"
        )
    return run


def _inputs(
    run: RunRow,
    workflow: Workflow,
    inputs: Mapping[str, GivenInput] | None,
    assignments: Sequence[str],
) -> dict[str, Any]:
    """The stored inputs the workflow still declares, then the overrides; checked
    again, since the file (under --force) may declare other inputs now."""
    given = {
        name: GivenInput(value, f"the inputs of run {run.run_id}")
        for name, value in run.inputs.items()
        if name in workflow.inputs
    }
    given.update(inputs or {})
    given.update(from_assignments(assignments, workflow.inputs))
    return bind_inputs(workflow.inputs, given)


def _options(run: RunRow, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run's recorded options, overridden by those given; a run is finished
    as it began, mock or real."""
    chosen = dict(run.settings)
    mock = (options or {}).get("mock")
    if mock is not None and bool(mock) != bool(chosen.get("mock")):
        raise ResumeRefused(
            f"run {run.run_id} was {'a --mock' if chosen.get('mock') else 'a real'} run: it "
            f"cannot be finished {'with --mock' if mock else 'for real'}; start a new run"
        )
    chosen.update({k: v for k, v in (options or {}).items() if v is not None})
    return chosen


def _changed(
    run: RunRow,
    workflow: Workflow,
    values: Mapping[str, Any],
    defined: Mapping[str, str],
    records: Mapping[str, AgentRow],
) -> tuple[str, ...]:
    """The agents whose definition changed (or that never ran), and those reading
    an input (or the workflow's name) whose value is not what it was."""
    moved = changed_inputs(run.inputs, values)
    renamed = workflow.name != run.workflow_name
    reads = reading(workflow, moved, renamed) if moved or renamed else set()
    return tuple(
        agent_id
        for agent_id in workflow.agents
        if agent_id not in records
        or records[agent_id].definition != defined[agent_id]
        or agent_id in reads
    )


def _file_changed(run_id: str, workflow: Workflow, changed: tuple[str, ...]) -> ResumeRefused:
    """The refusal of a run whose workflow file changed, saying what changed so
    the user can decide whether to ``--force``."""
    if changed:
        what = f"the definition of {_listing(changed)} changed"
    else:
        what = "no agent's definition changed (only settings such as timeouts or limits)"
    return ResumeRefused(
        f"the workflow file {workflow.path} changed since run {run_id} started: {what}. "
        f"Use `aoe resume {run_id} --force` to rerun only the agents that changed and "
        "those that depend on them, or `aoe run` to start afresh"
    )


def _stale(workflow: Workflow, changed: tuple[str, ...]) -> set[str]:
    """An agent whose definition changed runs again, and so does everything after
    it (its input may change); every other completed agent is kept, whatever
    became of the agents before it: its output was paid for."""
    stale: set[str] = set()
    for agent_id in workflow.graph.topological_order():
        deps = workflow.agents[agent_id].depends_on
        if agent_id in changed or any(dep in stale for dep in deps):
            stale.add(agent_id)
    return stale


def _resumption(
    store: Store,
    run: RunRow,
    records: Mapping[str, AgentRow],
    stale: set[str],
    kept: list[str],
) -> Resumption:
    """What the next session starts from: the kept agents' outputs, and what
    earlier sessions spent (by the run, each agent and each foreach item)."""
    run_id = run.run_id
    attempts = store.attempts(run_id)
    usage = Usage(sum(a.input_tokens for a in attempts), sum(a.output_tokens for a in attempts))
    agent_spent, item_spent, items = _spent(attempts, records, stale)
    completed = {
        agent_id: Restored(
            records[agent_id].output,
            Usage(records[agent_id].input_tokens, records[agent_id].output_tokens),
            records[agent_id].cost,
            records[agent_id].attempts,
        )
        for agent_id in kept
    }
    return Resumption(
        session=int(run.sessions) + 1,
        completed=completed,
        spent=store.spent(run_id),
        usage=usage,
        agent_spent={a: s for a, s in agent_spent.items() if a not in completed},
        items={a: i for a, i in items.items() if a not in completed},
        item_spent=item_spent,
    )


def _spent(
    attempts: Sequence[AttemptRow],
    records: Mapping[str, AgentRow],
    stale: set[str],
) -> tuple[dict[str, float], dict[str, dict[int, float]], dict[str, dict[int, Any]]]:
    """What each agent spent, and each foreach item of an agent still current
    (its spending and, once it succeeded, its output): an attempt whose outcome
    was never recorded counts at its reservation."""
    agent_spent: dict[str, float] = {}
    item_spent: dict[str, dict[int, float]] = {}
    items: dict[str, dict[int, Any]] = {}
    for attempt in attempts:
        agent_id, item = attempt.agent_id, attempt.item
        spent = attempt.reserved if attempt.status is AttemptStatus.STARTED else attempt.cost
        agent_spent[agent_id] = agent_spent.get(agent_id, 0.0) + spent
        record = records.get(agent_id)
        current = record is not None and attempt.session >= record.since
        if item >= 0 and agent_id not in stale and current:  # a foreach item of today's agent
            by_item = item_spent.setdefault(agent_id, {})
            by_item[item] = by_item.get(item, 0.0) + spent
            if attempt.status.answered and attempt.output is not None:
                items.setdefault(agent_id, {})[item] = json.loads(attempt.output)
    return agent_spent, item_spent, items


def _workflow(run: RunRow, settings: Settings) -> Workflow:
    """The file at the recorded path; when it is gone, the record's own copy."""
    path = run.workflow_path
    if not is_submitted(path) and os.path.exists(path):
        return load_workflow(path, checks=checks_for(settings)).require()
    files: Mapping[str, str] = run.workflow_files or {}
    unsafe = [
        name
        for name in files
        if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts
    ]
    if unsafe:
        raise ResumeRefused(
            f"the workflow file {path} is gone, and its prompt files ({_listing(unsafe)}) lie "
            "outside its folder, so the copy in the record cannot be used: restore the file"
        )
    with tempfile.TemporaryDirectory(prefix="aoe-resume-") as folder:
        copy = Path(folder) / Path(path).name
        copy.write_text(run.workflow_text, encoding="utf-8")
        for name, text in files.items():
            target = Path(folder) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        loaded = load_workflow(
            copy, checks=checks_for(settings), display=f"{path} (from the run record)"
        )
        return loaded.require()._replace(path=path)


def _listing(names: tuple[str, ...] | list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
