"""The results of a run, built from its events: the JSON document and JUnit XML.

:class:`Results` subscribes to the bus and keeps what a pipeline needs:
the run's status, and for each agent its final state, output, usage, cost,
timings and every attempt. It computes nothing the engine already did.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple
from xml.etree import ElementTree

from aoe.events import (
    AgentFinished,
    AgentStarted,
    AgentState,
    AttemptFinished,
    AttemptStarted,
    Event,
    RunFinished,
    RunStarted,
)
from aoe.format.workflow import Workflow
from aoe.types import Usage

if TYPE_CHECKING:
    from aoe.state.rows import AgentRow, AttemptRow, RunRow
    from aoe.state.store import Store

RESULTS_VERSION = 1
"""The version of the results document (described in
:mod:`aoe.observe.resultschema`); a change that is not an addition makes the next."""


def aoe_version() -> str:
    """aoe's version, as installed (``aoe`` itself imports the Python API, above
    this layer)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("aoe")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "0+source"


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"


def _usd(amount: float | None) -> float | None:
    """Money to the micro-dollar (sums of float prices read 0.00047999999999999996)."""
    return None if amount is None else round(amount, 6)


def _usage(usage: Usage) -> dict[str, int]:
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}


class Results:
    """The results document of one run, kept up to date from its events."""

    def __init__(self, workflow: Workflow, inputs: dict[str, Any]) -> None:
        self.workflow = workflow
        self._started: dict[tuple[str, int | None, int], AttemptStarted] = {}
        self.document: dict[str, Any] = {
            "results_version": RESULTS_VERSION,  # (aoe/observe/resultschema.py)
            "run_id": None,
            "workflow": {"name": workflow.name, "file": workflow.path, "sha256": workflow.digest},
            "status": "running",
            "started_at": None,
            "finished_at": None,
            "duration_seconds": None,
            "inputs": inputs,
            "usage": _usage(Usage()),
            "cost_usd": 0.0,
            "cost_budget_usd": None,
            "agents": {
                agent_id: {
                    "state": str(AgentState.PENDING),
                    "provider": agent.llm.provider,
                    "model": agent.llm.model,
                    "output": None,
                    "error": None,
                    "usage": _usage(Usage()),
                    "cost_usd": 0.0,
                    "started_at": None,
                    "finished_at": None,
                    "duration_seconds": None,
                    "waited_seconds": 0.0,
                    "truncated": False,
                    "attempts": [],
                }
                for agent_id, agent in workflow.agents.items()
            },
            "outputs": {},
            "output_errors": {},
        }

    def __call__(self, event: Event) -> None:
        if isinstance(event, AttemptStarted):
            self._started[(event.agent_id, event.item, event.attempt)] = event
        elif isinstance(event, AttemptFinished):
            self._attempt_finished(event)
        elif isinstance(event, AgentStarted):
            agent = self.document["agents"][event.agent_id]
            agent["state"] = "running"
            agent["started_at"] = _iso(event.at)
            if event.items is not None:
                agent["items"] = event.items
        elif isinstance(event, AgentFinished):
            self._agent_finished(event)
        elif isinstance(event, RunStarted):
            self.document.update(
                run_id=event.run_id,
                started_at=_iso(event.at),
                cost_budget_usd=_usd(event.budget),
                session=event.session,
                cost_usd=_usd(event.spent),
            )
        elif isinstance(event, RunFinished):
            self.document.update(
                status=str(event.status),
                finished_at=_iso(event.at),
                duration_seconds=round(event.duration, 6),
                usage=_usage(event.usage),
                cost_usd=_usd(event.cost),
                outputs=event.outputs,
                output_errors=event.output_errors,
            )

    def _attempt_finished(self, event: AttemptFinished) -> None:
        """The attempt, with what its start said (the wait, the reservation)."""
        started = self._started.pop((event.agent_id, event.item, event.attempt), None)
        waited = started.waited if started is not None else 0.0
        attempt = {
            "attempt": event.attempt,
            "session": self.document.get("session") or 1,
            "item": event.item,
            "provider": event.provider,
            "model": event.model,
            "status": "cached" if event.cached else ("ok" if event.error is None else "error"),
            "error": event.error,
            "error_kind": event.error_kind,
            "finish_reason": event.finish_reason,
            "truncated": event.truncated,
            "usage_estimated": event.usage_estimated,
            "duration_seconds": round(event.duration, 6),
            "waited_seconds": round(waited, 6),
            "reserved_usd": _usd(started.reserved) if started is not None else None,
            "usage": _usage(event.usage),
            "cost_usd": _usd(event.cost),
            "finished_at": _iso(event.at),
        }
        agent = self.document["agents"][event.agent_id]
        agent["attempts"].append(attempt)
        agent["waited_seconds"] = round(agent["waited_seconds"] + round(waited, 6), 6)

    def _agent_finished(self, event: AgentFinished) -> None:
        """The agent's end, and which provider and model gave its last answer."""
        agent = self.document["agents"][event.agent_id]
        agent.update(
            state=str(event.state),
            output=event.output,
            error=event.error,
            usage=_usage(event.usage),
            cost_usd=_usd(event.cost),
            finished_at=_iso(event.at),
            duration_seconds=round(event.duration, 6),
        )
        agent["truncated"] = event.truncated
        if event.resumed:
            agent["resumed"] = True  # its output is from an earlier session's record
        answered = [a for a in agent["attempts"] if a["status"] in ("ok", "cached")]
        if answered:
            agent["answered_by"] = {
                "provider": answered[-1]["provider"],
                "model": answered[-1]["model"],
            }
            agent["cached"] = answered[-1]["status"] == "cached"

    def to_json(self) -> str:
        return json.dumps(self.document, indent=2, ensure_ascii=False, default=str) + "\n"

    def to_junit(self) -> str:
        return junit(self.document)


def junit(document: Mapping[str, Any]) -> str:
    """A results document as JUnit XML: one test case per agent, failures as
    failures, skips as skipped."""
    name = document["workflow"]["name"]
    agents = document["agents"]
    failed = sum(1 for a in agents.values() if AgentState(a["state"]).failure)
    skipped = sum(1 for a in agents.values() if a["state"] in ("skipped", "cancelled", "pending"))
    suite = ElementTree.Element(
        "testsuite",
        name=name,
        tests=str(len(agents)),
        failures=str(failed),
        errors="0",
        skipped=str(skipped),
        time=f"{document['duration_seconds'] or 0:.3f}",
        timestamp=document["started_at"] or "",
    )
    properties = ElementTree.SubElement(suite, "properties")
    for key, value in (
        ("run_id", document["run_id"]),
        ("status", document["status"]),
        ("cost_usd", f"{document['cost_usd']:.6f}"),
    ):
        ElementTree.SubElement(properties, "property", name=key, value=str(value))
    for agent_id, agent in agents.items():
        _testcase(suite, name, agent_id, agent)
    ElementTree.indent(suite)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        + ElementTree.tostring(suite, encoding="unicode")
        + "\n"
    )


def _testcase(
    suite: ElementTree.Element, workflow: str, agent_id: str, agent: Mapping[str, Any]
) -> None:
    """The agent as a test case: its attempts' errors under a failure, a skip's reason."""
    case = ElementTree.SubElement(
        suite,
        "testcase",
        classname=workflow,
        name=agent_id,
        time=f"{agent['duration_seconds'] or 0:.3f}",
    )
    if agent.get("truncated"):  # (properties first, as the JUnit schema orders them)
        properties = ElementTree.SubElement(case, "properties")
        ElementTree.SubElement(properties, "property", name="truncated", value="true")
    state = AgentState(agent["state"])
    if state.failure:
        failure = ElementTree.SubElement(
            case, "failure", message=agent["error"] or str(state), type=str(state)
        )
        failure.text = "\n".join(
            f"attempt {a['attempt']}: {a['error']}" for a in agent["attempts"] if a["error"]
        )
    elif state is not AgentState.COMPLETED:
        ElementTree.SubElement(case, "skipped", message=agent["error"] or str(state))
    if agent.get("truncated"):
        out = ElementTree.SubElement(case, "system-out")
        out.text = "its reply was cut off at max_tokens (truncated)"


# -- events, as they leave the process ---------------------------------------------------

_RENAMED = {
    "type": "event",
    "cost": "cost_usd",
    "agent_cost": "agent_cost_usd",
    "run_cost": "run_cost_usd",
    "budget": "cost_budget_usd",
    "spent": "spent_usd",
    "reserved": "reserved_usd",
    "duration": "duration_seconds",
    "waited": "waited_seconds",
    "delay": "delay_seconds",
    "seconds": "wait_seconds",
}
_MONEY = frozenset(name for name in _RENAMED.values() if name.endswith("_usd"))
_DROPPED = frozenset({"seq", "fingerprint", "output", "outputs"})


def published(event: Mapping[str, Any]) -> dict[str, Any]:
    """An event as aoe gives it out (the SSE stream, ``aoe runs events``, JSON
    log lines): the results document's names (``event`` its type, ``at`` ISO
    8601, ``cost_usd``, ``duration_seconds`` ...), money to the micro-dollar; no
    outputs (the results document has them) and nothing internal. ``event`` is
    :func:`aoe.events.event_dict`'s, or a recorded one (:meth:`Store.events`)."""
    kind = event.get("type")
    out: dict[str, Any] = {}
    for name, value in event.items():
        if name in _DROPPED or (name == "session" and kind != "RunStarted"):
            continue
        name = _RENAMED.get(name, name)
        if name == "at":
            value = _iso(value)
        elif name in _MONEY:
            value = _usd(value)
        elif name.endswith("_seconds") and isinstance(value, float):
            value = round(value, 6)
        out[name] = value
    return out


# -- the same document, from a run's record -------------------------------------------


def listed(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run as lists show it (``RunListed`` of :mod:`aoe.observe.resultschema`),
    from its record's columns (:meth:`Store.runs`, or a head in Redis: what
    either lacks is null)."""
    duration = run.get("duration")
    return {
        "run_id": run["run_id"],
        "workflow": {
            "name": run.get("workflow_name") or "",
            "file": run.get("workflow_path") or "",
            "sha256": run.get("workflow_sha256") or None,
        },
        "status": run.get("status"),
        "started_at": _iso(run.get("created_at")),
        "finished_at": _iso(run.get("finished_at")),
        "duration_seconds": None if duration is None else round(duration, 6),
        "usage": {
            "input_tokens": run.get("input_tokens") or 0,
            "output_tokens": run.get("output_tokens") or 0,
        },
        "cost_usd": _usd(run.get("cost") or 0.0),
        "cost_budget_usd": _usd(run.get("budget")),
        "session": run.get("sessions"),
    }


class RunRecord(NamedTuple):
    """A run's record as read from the store, once: what the results document
    and the report are built from."""

    run: RunRow
    agents: list[AgentRow]
    attempts: list[AttemptRow]
    events: list[dict[str, Any]]  # of the types the document (and the caller) read


_DOCUMENT_EVENTS = ("RunStarted", "AgentStarted", "AgentFinished", "RunFinished")


def read_record(store: Store, run_id: str, events: Sequence[str] = ()) -> RunRecord:
    """The run ``run_id`` (a unique prefix is enough): its record, with the
    events the document needs and those of ``events``."""
    run = store.run(run_id)
    return RunRecord(
        run,
        store.agents(run.run_id),
        store.attempts(run.run_id),
        store.events(run.run_id, types=(*_DOCUMENT_EVENTS, *events)),
    )


def recorded(store: Store, run_id: str) -> dict[str, Any]:
    """The results document of a run, rebuilt from its record in ``store``
    (:func:`document_of`)."""
    return document_of(read_record(store, run_id))


def document_of(record: RunRecord) -> dict[str, Any]:
    """The results document of a run's record: the run as a whole, every
    session's attempts (each names its session), agents that ended in an
    earlier session than the last marked ``resumed``. For a run of one session
    it is the document ``--output`` wrote, but for the workflow's ``file``,
    which the record holds as an absolute path. A run in progress reads as it
    stands: attempts in flight ``running``, its cost what it may have been
    billed so far (in-flight reservations included, as :meth:`Store.spent`)."""
    run, rows, attempts, events = record
    running = run.status == "running"
    started = next((e["at"] for e in events if e["type"] == "RunStarted"), run.created_at)
    items: dict[str, int] = {}
    truncated: dict[str, bool] = {}
    for event in events:
        if event["type"] == "AgentStarted" and event.get("items") is not None:
            items[event["agent_id"]] = event["items"]
        elif event["type"] == "AgentFinished":
            truncated[event["agent_id"]] = bool(event.get("truncated"))
    by_agent: dict[str, list[AttemptRow]] = {}
    for attempt in sorted(attempts, key=_in_order):
        by_agent.setdefault(attempt.agent_id, []).append(attempt)
    if run.finished_at is not None and not running:
        usage = {"input_tokens": run.input_tokens, "output_tokens": run.output_tokens}
        cost = run.cost
    else:
        usage = {
            "input_tokens": sum(a.input_tokens for a in attempts),
            "output_tokens": sum(a.output_tokens for a in attempts),
        }
        cost = math.fsum(a.reserved if a.status == "started" else a.cost for a in attempts)
    order = sorted(rows, key=lambda a: (a.position is None, a.position or 0, a.agent_id))
    return {
        "results_version": RESULTS_VERSION,
        "run_id": run.run_id,
        "workflow": {
            "name": run.workflow_name,
            "file": run.workflow_path,
            "sha256": run.workflow_sha256,
        },
        "status": str(run.status),
        "started_at": _iso(started),
        "finished_at": None if running else _iso(run.finished_at),
        "duration_seconds": None if run.duration is None else round(run.duration, 6),
        "inputs": run.inputs,
        "usage": usage,
        "cost_usd": _usd(cost),
        "cost_budget_usd": _usd(run.budget),
        "session": run.sessions,
        "agents": {
            row.agent_id: _recorded_agent(
                row,
                by_agent.get(row.agent_id, []),
                sessions=run.sessions,
                running=running,
                items=items.get(row.agent_id),
                truncated=truncated.get(row.agent_id, False),
            )
            for row in order
        },
        "outputs": run.outputs or {},
        "output_errors": run.output_errors or {},
    }


def _in_order(attempt: AttemptRow) -> tuple[float, float, int]:
    """As the attempts ended (those that did not, last, as they started)."""
    ended = attempt.finished_at
    return (float("inf") if ended is None else ended, attempt.started_at, attempt.attempt)


def _recorded_agent(
    row: AgentRow,
    attempts: list[AttemptRow],
    *,
    sessions: int,
    running: bool,
    items: int | None,
    truncated: bool,
) -> dict[str, Any]:
    first = attempts[0] if attempts else None
    agent: dict[str, Any] = {
        "state": str(row.state),
        "provider": row.llm_provider or (first.provider if first else ""),
        "model": row.llm_model or (first.model if first else ""),
        "output": row.output,
        "error": row.error,
        "usage": {"input_tokens": row.input_tokens, "output_tokens": row.output_tokens},
        "cost_usd": _usd(row.cost),
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
        "duration_seconds": None if row.duration is None else round(row.duration, 6),
        "waited_seconds": _waited(attempts),
        "truncated": truncated,
        "attempts": [_recorded_attempt(a, running) for a in attempts],
    }
    if items is not None:
        agent["items"] = items
    if row.state is AgentState.COMPLETED and row.session < sessions:
        agent["resumed"] = True
    answered = [a for a in attempts if a.status.answered]
    if answered and row.state not in (AgentState.PENDING, AgentState.RUNNING):
        agent["answered_by"] = {"provider": answered[-1].provider, "model": answered[-1].model}
        agent["cached"] = answered[-1].status == "cached"
    return agent


def _waited(attempts: list[AttemptRow]) -> float:
    """The agent's wait, summed as :class:`Results` sums it (each attempt's rounded)."""
    total = 0.0
    for attempt in attempts:
        total = round(total + round(attempt.waited, 6), 6)
    return total


def _recorded_attempt(row: AttemptRow, running: bool) -> dict[str, Any]:
    if row.status == "started":  # no outcome recorded: in flight, or its process died
        status = "running" if running else "interrupted"
    elif row.status == "cancelled":
        status = "error"
    else:
        status = str(row.status)
    return {
        "attempt": row.attempt,
        "session": row.session,
        "item": None if row.item < 0 else row.item,
        "provider": row.provider,
        "model": row.model,
        "status": status,
        "error": row.error,
        "error_kind": row.error_kind,
        "finish_reason": row.finish_reason,
        "truncated": row.truncated,
        "usage_estimated": row.usage_estimated,
        "duration_seconds": None if row.duration is None else round(row.duration, 6),
        "waited_seconds": round(row.waited, 6),
        "reserved_usd": _usd(row.reserved) if row.status != "cached" else None,
        "usage": {"input_tokens": row.input_tokens, "output_tokens": row.output_tokens},
        "cost_usd": _usd(row.cost),
        "finished_at": _iso(row.finished_at),
    }
