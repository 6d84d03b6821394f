"""What a run gives a Python caller: :class:`RunResult` and :class:`AgentResult`.

Both are read from the results document that :class:`aoe.observe.results.Results`
builds from the run's events — the same document ``aoe run --output`` writes —
so a figure here is never computed apart from what the CLI reports: the cost,
the tokens and the outputs are the engine's own, carried by its events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aoe.events import AgentState, RunStatus

__all__ = ["AgentResult", "RunResult"]


@dataclass(frozen=True, kw_only=True)
class AgentResult:
    """One agent of a run: its final state, output, spend and attempts."""

    agent_id: str
    state: AgentState
    """``completed``, ``failed``, ``skipped`` ... (``pending`` or ``running``
    while the run is in progress)."""
    output: Any
    """Its answer (parsed JSON when it declares an output schema), or None."""
    error: str | None
    """Why it did not complete, when it did not."""
    cost: float
    """USD, every attempt together."""
    input_tokens: int
    output_tokens: int
    attempts: int
    """Calls made (or answered from the cache), retries and fallbacks included."""
    provider: str
    model: str
    duration: float | None
    """Seconds from its start to its end; None until it ends."""

    @classmethod
    def from_document(cls, agent_id: str, agent: Mapping[str, Any]) -> AgentResult:
        """One entry of the results document's ``agents``."""
        return cls(
            agent_id=agent_id,
            state=AgentState(agent["state"]),
            output=agent["output"],
            error=agent["error"],
            cost=agent["cost_usd"],
            input_tokens=agent["usage"]["input_tokens"],
            output_tokens=agent["usage"]["output_tokens"],
            attempts=len(agent["attempts"]),
            provider=agent["provider"],
            model=agent["model"],
            duration=agent["duration_seconds"],
        )


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """A run as it ended (or as it stands, from :meth:`aoe.Engine.run_status`).

    ``status`` is None while the run is in progress; a run returned by
    :meth:`aoe.Engine.run` or :func:`aoe.run` has ended and has one.
    ``document`` is the whole results document, as ``aoe run --output`` writes it.
    """

    run_id: str | None
    workflow: str
    status: RunStatus | None
    outputs: dict[str, Any]
    """The workflow's ``outputs``, rendered when the run ended."""
    output_errors: dict[str, str]
    """Outputs that could not be rendered, with why."""
    cost: float
    """USD the run spent (its earlier sessions' included)."""
    budget: float | None
    """USD the run was allowed."""
    input_tokens: int
    output_tokens: int
    duration: float | None
    """Seconds the run took; None until it ends."""
    agents: dict[str, AgentResult]
    inputs: dict[str, Any]
    """The inputs as bound: given, else their defaults."""
    document: dict[str, Any] = field(repr=False)

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> RunResult:
        """The result of a results document (:attr:`aoe.observe.results.Results.document`)."""
        status = document["status"]
        return cls(
            run_id=document["run_id"],
            workflow=document["workflow"]["name"],
            status=None if status == "running" else RunStatus(status),
            outputs=dict(document["outputs"]),
            output_errors=dict(document["output_errors"]),
            cost=document["cost_usd"],
            budget=document["cost_budget_usd"],
            input_tokens=document["usage"]["input_tokens"],
            output_tokens=document["usage"]["output_tokens"],
            duration=document["duration_seconds"],
            agents={
                agent_id: AgentResult.from_document(agent_id, agent)
                for agent_id, agent in document["agents"].items()
            },
            inputs=dict(document["inputs"]),
            document=dict(document),
        )

    @property
    def ok(self) -> bool:
        """It completed (or ended partial, which its workflow allows): exit 0."""
        return self.status is not None and self.status.exit_code == 0

    @property
    def reason(self) -> str | None:
        """Why it did not complete: the error of its first agent (in the
        workflow's order) that failed, ran over a budget or a rate limit, or was
        cancelled; None when it completed or is still running."""
        if self.status is None or self.status is RunStatus.COMPLETED:
            return None
        stopped = [a for a in self.agents.values() if a.state.failure]
        stopped += [a for a in self.agents.values() if a.state is AgentState.CANCELLED]
        for agent in stopped:
            if agent.error:
                return f"{agent.agent_id}: {agent.error}"
        return str(self.status)
