"""The store's records as typed rows: what :class:`aoe.state.store.Store` answers.

Each row is frozen and has the table's columns as fields, in the table's
order; JSON columns (inputs, settings, outputs ...) are decoded, and statuses
are enums: :class:`RecordStatus` for a run's record, :class:`AttemptStatus` for
an attempt, :class:`aoe.events.AgentState` for an agent. ``to_dict()`` gives
the row as the JSON the CLI and the HTTP API print (the columns by name, in
order), so those shapes do not depend on how the rows are typed here.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import Any, TypeVar

from aoe.errors import StateUnusable
from aoe.events import AgentState, RunStatus


class RecordStatus(StrEnum):
    """A run record's status: ``running`` (``interrupted`` when its process is
    gone, so it can be resumed), or the run's final :class:`RunStatus`."""

    RUNNING = "running"
    INTERRUPTED = "interrupted"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    BUDGET_EXCEEDED = "budget_exceeded"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """The run is over (whether or not it may be resumed)."""
        return self.value in _FINAL

    @property
    def done(self) -> bool:
        """The run needs no resume: everything that could run did."""
        return self in (RecordStatus.COMPLETED, RecordStatus.PARTIAL)


_FINAL = frozenset(str(status) for status in RunStatus)


class AttemptStatus(StrEnum):
    """An attempt's row: ``started`` (recorded before the call), then how it ended."""

    STARTED = "started"
    OK = "ok"
    ERROR = "error"
    CANCELLED = "cancelled"  # stopped in flight: no answer, maybe billed
    CACHED = "cached"  # answered from the response cache: not a call

    @property
    def answered(self) -> bool:
        return self in (AttemptStatus.OK, AttemptStatus.CACHED)


_Row = TypeVar("_Row", bound="_Columns")


class _Columns:
    """What every row shares: built from a cursor's columns, printed as a dict."""

    @classmethod
    def of(cls: type[_Row], columns: dict[str, Any]) -> _Row:
        """The row of a query's columns (by name); columns it has no field for
        (added by a later schema) are left out."""
        names = cls.__dataclass_fields__  # type: ignore[attr-defined]
        return cls(**{name: value for name, value in columns.items() if name in names})

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON prints it: the columns by name, in the table's order."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True, slots=True)
class RunListed(_Columns):
    """A run as :meth:`Store.runs` lists it: its record without the workflow's
    text, files, inputs, settings and outputs."""

    run_id: str
    workflow_name: str
    workflow_path: str
    workflow_sha256: str
    status: RecordStatus
    created_at: float
    updated_at: float
    finished_at: float | None
    duration: float | None
    input_tokens: int
    output_tokens: int
    cost: float
    budget: float | None
    sessions: int
    host: str | None
    pid: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class RunRow(_Columns):
    """A run's whole record (:meth:`Store.run`)."""

    run_id: str
    workflow_name: str
    workflow_path: str
    workflow_sha256: str
    workflow_text: str
    workflow_files: dict[str, str]
    inputs: dict[str, Any]
    settings: dict[str, Any]
    status: RecordStatus
    created_at: float
    updated_at: float
    finished_at: float | None
    duration: float | None
    input_tokens: int
    output_tokens: int
    cost: float
    budget: float | None
    outputs: dict[str, Any] | None
    output_errors: dict[str, str] | None
    sessions: int
    host: str | None
    pid: int | None
    process: str | None
    journal_session: int | None = None
    journal_offset: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class AgentRow(_Columns):
    """An agent of a run: its state, output and totals over every session."""

    run_id: str
    agent_id: str
    definition: str  # the hash of what decides its output
    state: AgentState
    output: Any
    error: str | None
    input_tokens: int
    output_tokens: int
    cost: float
    attempts: int
    duration: float | None
    started_at: float | None
    finished_at: float | None
    provider: str | None  # who answered
    model: str | None
    session: int  # the session that ended it
    since: int  # its definition and inputs hold from this session
    llm_provider: str | None = None  # as the workflow names them (None: recorded before)
    llm_model: str | None = None
    position: int | None = None  # its place in the workflow
    needs: list[str] | None = None  # the agents it depends on


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptRow(_Columns):
    """One attempt of one agent (of one ``foreach`` item: ``item`` -1 if none)."""

    run_id: str
    agent_id: str
    session: int
    item: int
    attempt: int
    provider: str
    model: str
    fingerprint: str | None
    status: AttemptStatus
    error: str | None
    error_kind: str | None
    reserved: float
    cost: float
    input_tokens: int
    output_tokens: int
    waited: float
    output: str | None  # JSON: a foreach item's output
    duration: float | None
    started_at: float
    finished_at: float | None
    finish_reason: str | None = None
    truncated: bool = False  # its reply was cut off at max_tokens
    usage_estimated: bool = False  # the server said no usage: aoe counted it


@dataclasses.dataclass(frozen=True, slots=True)
class Summary:
    """What ``aoe status`` shows of a store: runs in progress, recent failures, spend."""

    active: list[RunListed]
    failures: list[RunListed]
    last_24h: float
    runs: int


@dataclasses.dataclass(frozen=True, slots=True)
class ModelEntries:
    """The response cache's entries of one model."""

    provider: str
    model: str
    entries: int
    hits: int


@dataclasses.dataclass(frozen=True, slots=True)
class CacheStats:
    """The response cache (``aoe cache stats``)."""

    path: str
    entries: int
    bytes: int
    hits: int
    oldest: float | None
    newest: float | None
    models: list[ModelEntries]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def enum_of(kind: type[StrEnum], value: str, what: str) -> Any:
    """``value`` as a member of ``kind``: a value the store should never hold
    (a damaged import) is a :class:`StateUnusable`, not a crash."""
    try:
        return kind(value)
    except ValueError:
        raise StateUnusable(
            f"the run store holds {what} {value!r}, which this aoe does not know: "
            "was the record imported from a newer aoe? Upgrade aoe"
        ) from None


def attempt_events(attempts: list[AttemptRow], wanted: set[str]) -> list[dict[str, Any]]:
    """AttemptStarted and AttemptFinished, as the engine emitted them, from the
    rows (the store keeps no events of attempts: their rows say it all)."""
    events = []
    for row in attempts:
        common: dict[str, Any] = {
            "session": row.session,
            "seq": None,
            "agent_id": row.agent_id,
            "item": None if row.item < 0 else row.item,
            "attempt": row.attempt,
            "provider": row.provider,
            "model": row.model,
        }
        if "AttemptStarted" in wanted and row.status is not AttemptStatus.CACHED:
            events.append(
                {
                    **common,
                    "at": row.started_at,
                    "type": "AttemptStarted",
                    "waited": row.waited,
                    "reserved": row.reserved,
                    "fingerprint": row.fingerprint,
                }
            )
        if "AttemptFinished" in wanted and row.finished_at is not None:
            events.append(
                {
                    **common,
                    "at": row.finished_at,
                    "type": "AttemptFinished",
                    "duration": row.duration,
                    "usage": {
                        "input_tokens": row.input_tokens,
                        "output_tokens": row.output_tokens,
                    },
                    "cost": row.cost,
                    "error": row.error,
                    "error_kind": row.error_kind,
                    "finish_reason": row.finish_reason,
                    "truncated": row.truncated,
                    "usage_estimated": row.usage_estimated,
                    "cached": row.status is AttemptStatus.CACHED,
                }
            )
    return events
