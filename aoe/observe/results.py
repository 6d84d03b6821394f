"""The results of a run, built from its events: the JSON document and JUnit XML.

:class:`Results` subscribes to the bus and keeps what a pipeline needs:
the run's status, and for each agent its final state, output, usage, cost,
timings and every attempt. It computes nothing the engine already did.
"""

from __future__ import annotations

import json
import time
from typing import Any
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

RESULTS_VERSION = 1
"""The version of the results document (described in
:mod:`aoe.observe.resultschema`); a change that is not an addition makes the next."""


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
        agent["waited_seconds"] = round(agent["waited_seconds"] + waited, 6)

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
        """One test case per agent: failures as failures, skips as skipped."""
        document = self.document
        agents = document["agents"]
        failed = sum(1 for a in agents.values() if AgentState(a["state"]).failure)
        skipped = sum(
            1 for a in agents.values() if a["state"] in ("skipped", "cancelled", "pending")
        )
        suite = ElementTree.Element(
            "testsuite",
            name=self.workflow.name,
            tests=str(len(agents)),
            failures=str(failed),
            errors="0",
            skipped=str(skipped),
            time=f"{document['duration_seconds'] or 0:.3f}",
            timestamp=document["started_at"] or "",
        )
        properties = ElementTree.SubElement(suite, "properties")
        for name, value in (
            ("run_id", document["run_id"]),
            ("status", document["status"]),
            ("cost_usd", f"{document['cost_usd']:.6f}"),
        ):
            ElementTree.SubElement(properties, "property", name=name, value=str(value))
        for agent_id, agent in agents.items():
            self._testcase(suite, agent_id, agent)
        ElementTree.indent(suite)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            + ElementTree.tostring(suite, encoding="unicode")
            + "\n"
        )

    def _testcase(self, suite: ElementTree.Element, agent_id: str, agent: dict[str, Any]) -> None:
        """The agent as a test case: its attempts' errors under a failure, a skip's reason."""
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname=self.workflow.name,
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
