"""The results document of a run, described: version 1.

What ``aoe run --output`` writes (:class:`aoe.observe.results.Results` builds
it from the run's events, as plain dicts: a run emits several events per call,
and they are not validated on the way). These models say what each field is;
:func:`json_schema` is shipped as ``results.schema.json`` and printed by ``aoe
schema --results``, and the tests check every document against it. Times are
ISO 8601 in UTC, money is USD rounded to the micro-dollar, durations seconds.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

State = Literal[
    "pending",
    "waiting",
    "running",
    "completed",
    "failed",
    "rate_limited",
    "budget_exceeded",
    "skipped",
    "cancelled",
]
Status = Literal[
    "queued",
    "running",
    "interrupted",
    "completed",
    "partial",
    "failed",
    "budget_exceeded",
    "cancelled",
]
"""``queued`` (an ``aoe serve`` has it, no worker yet), ``running``,
``interrupted`` (its process is gone: ``aoe resume`` continues it), or how it ended."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tokens(_Model):
    """Tokens as the provider billed them (or aoe counted them, where it said none)."""

    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)


class WorkflowRef(_Model):
    """Which workflow ran."""

    name: str
    file: str = Field(
        description="The workflow file: as it was given to `aoe run`, or (a document "
        "rebuilt from the run's record) its absolute path; `<submitted>/NAME` for one "
        "sent to `aoe serve`."
    )
    sha256: str | None = Field(
        description="Of the file and the prompt and schema files it names (null for a run "
        "queued whose workflow no worker has read yet)."
    )


class AnsweredBy(_Model):
    provider: str
    model: str = Field(description="As the server named it (a provider's models may alias).")


class Attempt(_Model):
    """One call of an agent (of one foreach item), or its answer from the cache."""

    attempt: int = Field(ge=1, description="1 for the first call of the agent (or item).")
    session: int = Field(ge=1, description="The session of the run that made it.")
    item: int | None = Field(description="The foreach item's index; null for an agent.")
    provider: str
    model: str
    status: Literal["ok", "error", "cached", "running", "interrupted"] = Field(
        description="`running`: in flight; `interrupted`: its process ended before it did "
        "(its reservation counts as spent)."
    )
    error: str | None = Field(description="Why it failed; null when it did not.")
    error_kind: str | None = Field(description="The error's kind: RateLimited, OutputInvalid ...")
    finish_reason: str | None = Field(description="As the server said it: stop, length ...")
    truncated: bool = Field(description="Its reply was cut off at max_tokens.")
    usage_estimated: bool = Field(description="The server said no usage: aoe counted it.")
    duration_seconds: float | None = Field(ge=0, description="Null until it ends.")
    waited_seconds: float = Field(ge=0, description="Held back by the rate limits first.")
    reserved_usd: float | None = Field(
        description="The worst case reserved against the budgets before the call."
    )
    usage: Tokens
    cost_usd: float = Field(ge=0)
    finished_at: str | None


class Agent(_Model):
    """An agent of the run: its final state, output, totals and attempts."""

    state: State
    provider: str = Field(description="As the workflow names it.")
    model: str = Field(description="As the workflow names it.")
    output: Any = Field(description="Its output: text, or the JSON value; a foreach's list.")
    error: str | None
    usage: Tokens
    cost_usd: float = Field(ge=0)
    started_at: str | None
    finished_at: str | None
    duration_seconds: float | None
    waited_seconds: float = Field(ge=0)
    truncated: bool = Field(description="Its output is a reply cut off at max_tokens.")
    attempts: list[Attempt]
    items: int | None = Field(default=None, description="A foreach agent's number of items.")
    answered_by: AnsweredBy | None = Field(
        default=None, description="Who gave its last answer (a fallback, maybe)."
    )
    cached: bool | None = Field(default=None, description="Its last answer came from the cache.")
    resumed: bool | None = Field(
        default=None, description="Its output is from an earlier session of the run (a resume)."
    )


class RunResults(_Model):
    """The results of one run of a workflow (one session of it: a resume writes
    its own, earlier sessions' completed agents marked ``resumed``)."""

    model_config = ConfigDict(extra="forbid", title="aoe run results")

    results_version: Literal[1] = Field(description="This document's version: 1.")
    run_id: str | None
    workflow: WorkflowRef
    status: Status
    started_at: str | None
    finished_at: str | None
    duration_seconds: float | None
    inputs: dict[str, Any]
    usage: Tokens
    cost_usd: float = Field(ge=0, description="The whole run's, earlier sessions included.")
    cost_budget_usd: float | None
    session: int | None = Field(
        default=None, ge=1, description="1, then one more for each `aoe resume`."
    )
    agents: dict[str, Agent]
    outputs: dict[str, Any] = Field(description="The workflow's named outputs.")
    output_errors: dict[str, str] = Field(description="Outputs that could not be rendered.")


class RunListed(_Model):
    """A run as lists show it (``aoe runs list -f json``, ``GET /api/v1/runs``):
    the results document's head, without agents, inputs and outputs."""

    run_id: str
    workflow: WorkflowRef
    status: Status
    started_at: str | None
    finished_at: str | None
    duration_seconds: float | None
    usage: Tokens
    cost_usd: float = Field(ge=0)
    cost_budget_usd: float | None
    session: int | None = Field(ge=1, description="How many sessions it has had.")


class RunList(_Model):
    """``GET /api/v1/runs``: the newest first."""

    runs: list[RunListed]


class Event(BaseModel):
    """One event of a run as aoe gives it out: a frame's ``data`` on ``GET
    /api/v1/runs/ID/events``, a line of ``aoe runs events``, the fields of a
    ``--log-format json`` line. The names are the results document's; the
    fields besides these depend on ``event`` (docs/results.md lists them)."""

    model_config = ConfigDict(extra="allow")

    event: str = Field(description="Its type: RunStarted, AgentFinished, AttemptFinished ...")
    at: str = Field(description="When, ISO 8601 in UTC.")
    run_id: str
    agent_id: str | None = Field(default=None, description="The agent it is about, if one.")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the results document (``results.schema.json``); a
    listed run (``RunListed``) and an event (``Event``) are among its ``$defs``."""
    schema = RunResults.model_json_schema(ref_template="#/$defs/{model}")
    definitions = schema.setdefault("$defs", {})
    for model in (RunListed, Event):
        extra = model.model_json_schema(ref_template="#/$defs/{model}")
        definitions.update(extra.pop("$defs", {}))
        definitions[model.__name__] = extra
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
