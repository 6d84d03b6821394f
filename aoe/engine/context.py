"""What a run's templates see, and the workflow's outputs rendered at its end.

A prompt, a ``when`` or a ``foreach`` sees the run's inputs, the output and
status of each agent it depends on, the workflow's name and, in a
``foreach`` unit, its item and index; the workflow's ``outputs`` see every
agent. An agent that did not complete shows no output. What a template
that failed says is :func:`reason`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aoe.engine.agents import AgentRun
from aoe.events import AgentState
from aoe.format.rendering import inline
from aoe.format.workflow import Agent, Workflow
from aoe.sandbox.pool import Lane, SandboxFailed


def context_of(
    agents: Mapping[str, AgentRun],
    inputs: Mapping[str, Any],
    workflow: Workflow,
    agent: Agent | None,
    item: int | None = None,
) -> dict[str, Any]:
    """What ``agent``'s templates see (``item``: a foreach unit's); with no agent,
    what the workflow's outputs see."""
    names = agent.depends_on if agent is not None else tuple(agents)
    seen = {}
    for name in names:
        dep = agents[name]
        seen[name] = {
            "output": dep.output if dep.state is AgentState.COMPLETED else None,
            "status": str(dep.state),
        }
    found: dict[str, Any] = {
        "inputs": inputs,
        "agents": seen,
        "workflow": {"name": workflow.name},
    }
    if agent is not None and item is not None:
        found["item"] = agents[agent.id].foreach[item]
        found["index"] = item
    return found


async def render_outputs(
    workflow: Workflow, seen: Mapping[str, Any], lane: Lane, *, cancelled: bool
) -> tuple[dict[str, Any], dict[str, str]]:
    """The workflow's outputs rendered with ``seen``, and why any could not be.
    A cancelled run renders only what needs no sandbox process."""
    outputs: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, source in workflow.outputs.items():
        if cancelled and not inline(source.text):
            outputs[name] = None  # not worth a sandbox process while stopping
            errors[name] = "not rendered: the run was cancelled"
            continue
        missing = _unfinished(source.text, seen)
        if missing:  # ("None" in its place read as an answer)
            outputs[name] = None
            errors[name] = "not rendered: it reads " + ", ".join(
                f"agents.{agent}.output, and {agent} {status}" for agent, status in missing
            )
            continue
        try:
            outputs[name] = await lane.render(source.text, seen)
        except Exception as e:
            outputs[name] = None
            errors[name] = f"cannot render: {reason(e)}"
    return outputs, errors


def _unfinished(text: str, seen: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The agents whose output ``text`` reads that did not complete, with their
    state; not those whose ``status`` it reads too (it says what to show then)."""
    from aoe.format.templates import analyse_template

    agents = seen["agents"]
    references = analyse_template(text).references
    checked = {r.name for r in references if r.kind == "agent" and r.attribute == "status"}
    read = dict.fromkeys(
        r.name for r in references if r.kind == "agent" and r.attribute == "output"
    )
    return [
        (agent, agents[agent]["status"])
        for agent in read
        if agent in agents and agent not in checked and agents[agent]["status"] != "completed"
    ]


def reason(error: Exception) -> str:
    """What a template or expression that failed says (the sandbox's own words)."""
    return error.message if isinstance(error, SandboxFailed) else str(error)
