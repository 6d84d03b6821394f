"""What ``aoe serve``'s API accepts and how it answers: strict JSON both ways.

A request body is parsed as strict JSON — no ``NaN`` or ``Infinity``, no
number that overflows to one (``1e400``), no integer beyond 64 bits (a
5,000-digit one used to end in a 500) — and then validated by a pydantic
model with ``extra="forbid"``. Every problem is a 400 with a message that
names the field and says what it must be.

A request refused for what it asks (:class:`Refused`) carries the status and
message of its answer.

Every answer is strict JSON too (:func:`dumps`): a record that holds a
non-finite number (written before these checks) shows it as ``null``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from aoe.errors import Signal, UserError

MOST_PARALLEL = 1000  # "max_parallel" of a submission at most
MOST_RUNS_LISTED = 1000  # "limit" of GET /api/v1/runs at most
INT_RANGE = 1 << 63  # integers in a body: -2**63 <= n < 2**63
FIELDS = (
    "workflow",
    "files",
    "inputs",
    "name",
    "budget",
    "max_parallel",
    "mock",
    "mock_limits",
    "cache",
)


class BodyInvalid(UserError, ValueError):
    """A request body, or query, that cannot be used; its message says why (answered
    with 400; a ``ValueError`` too, as the parsers it is raised from)."""


class Refused(Signal):
    """A request the service will not serve, and the answer to give: ``status``
    and a JSON body of ``{"error": message, **more}``. Raised by the service
    (a full queue: 429; draining: 503) and by the routes, and answered in one
    place (:mod:`aoe.service.app`)."""

    def __init__(self, status: int, message: str, **more: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.more = more


def _integer(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > 19:  # checked before converting: a huge one costs time to convert
        raise BodyInvalid(
            f"the body has an integer of {digits:,} digits: numbers must fit in 64 bits"
        )
    value = int(text)
    if not -INT_RANGE <= value < INT_RANGE:
        raise BodyInvalid(f"the body has the integer {text}: numbers must fit in 64 bits")
    return value


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise BodyInvalid(f"the body has the number {shown}, beyond what a float can hold")
    return value


def _constant(name: str) -> Any:
    raise BodyInvalid(f"the body has {name}, which is not JSON: numbers must be finite")


def parse_body(raw: bytes) -> Any:
    """A request body as strict JSON; raises :class:`BodyInvalid`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyInvalid("the body is not UTF-8 JSON") from None
    try:
        body = json.loads(text, parse_int=_integer, parse_float=_number, parse_constant=_constant)
    except json.JSONDecodeError as e:
        raise BodyInvalid(f"the body is not JSON: {e}") from None
    except RecursionError:
        raise BodyInvalid("the body is nested too deeply") from None
    if "\\ud" in text.lower():  # an escaped surrogate: only a pair makes a character
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BodyInvalid("the body has a lone surrogate (\\ud800-\\udfff): not text") from None
    return body


MOST_FILES = 200
"""The most files a submission may carry (their bytes count in --max-body)."""


class Submission(BaseModel):
    """The body of ``POST /api/v1/runs``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    workflow: str = Field(description="The workflow file's YAML text.")
    files: dict[str, str] = Field(
        default_factory=dict,
        max_length=MOST_FILES,
        description="The files the workflow names (prompt_file, system_file, schema_file, "
        "a schema's $ref), by their path relative to it: their text.",
    )
    inputs: dict[str, Any] = Field(
        default_factory=dict, description="The run's inputs, by name (as `-i name=value`)."
    )
    name: str = Field(
        default="submitted.yaml",
        max_length=255,
        description="A file name for the workflow, shown in diagnostics and the run's record.",
    )
    budget: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="USD the run may spend."
    )
    max_parallel: int | None = Field(
        default=None, ge=1, le=MOST_PARALLEL, description="Agents of the run in flight at once."
    )
    mock: bool = Field(default=False, description="Run it offline, on the mock provider.")
    mock_limits: bool = Field(
        default=False,
        description="With mock: hold the calls to the rate limits of the providers the "
        "workflow names, in windows of their own (a rehearsal of the real run's pace).",
    )
    cache: bool | None = Field(
        default=None,
        description="true: answer from the response cache where it can; false: never; "
        "null: as the workflow and the engine config say (off).",
    )

    @field_validator("workflow")
    @classmethod
    def _text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty")
        return value

    @model_validator(mode="after")
    def _rehearsal(self) -> Submission:
        if self.mock_limits and not self.mock:
            raise ValueError('"mock_limits" rehearses a run offline: set "mock": true too')
        return self

    @field_validator("name")
    @classmethod
    def _plain(cls, value: str) -> str:
        if not value or "/" in value or "\\" in value or value.startswith(".") or "\x00" in value:
            raise ValueError("not a plain file name")
        return value


# what each field must be, said the same way whatever pydantic found wrong
_MUST = {
    "workflow": "the workflow file's YAML text",
    "files": f"an object of at most {MOST_FILES} paths to their text",
    "inputs": "an object of input names to values",
    "name": 'a plain file name, such as "brief.yaml"',
    "budget": "a number of USD, 0 or more",
    "max_parallel": f"a whole number from 1 to {MOST_PARALLEL:,}",
    "mock": "true or false",
    "mock_limits": "true or false",
    "cache": "true, false or null",
}


def submission(body: Any) -> Submission:
    """The submission in a parsed body; raises :class:`BodyInvalid`."""
    if not isinstance(body, dict):
        raise BodyInvalid('the body must be a JSON object: {"workflow": YAML, "inputs": {}}')
    try:
        return Submission.model_validate(body)
    except ValidationError as e:
        raise BodyInvalid(_problems(e)) from None


def _problems(error: ValidationError) -> str:
    said: list[str] = []
    for problem in error.errors(include_url=False, include_input=False):
        field = str(problem["loc"][0]) if problem["loc"] else ""
        if problem["type"] == "extra_forbidden":
            line = f"unknown field {field!r} (the fields: {', '.join(FIELDS)})"
        elif problem["type"] == "missing" and field in _MUST:
            line = f'"{field}" is required: {_MUST[field]}'
        elif field in _MUST:
            line = f'"{field}" must be {_MUST[field]}'
        else:
            line = problem["msg"].removeprefix("Value error, ")
        if line not in said:
            said.append(line)
    return "; ".join(said)


class ResumeBody(BaseModel):
    """The body of ``POST /api/v1/runs/{id}/resume`` (it may be empty)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    budget: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="USD the whole run may spend, earlier sessions included (else its own).",
    )


def resume_body(raw: bytes) -> ResumeBody:
    """The body of a resume (none: the run's own settings); raises :class:`BodyInvalid`."""
    if not raw.strip():
        return ResumeBody()
    body = parse_body(raw)
    if not isinstance(body, dict):
        raise BodyInvalid('the body must be a JSON object: {"budget": USD}, or nothing')
    try:
        return ResumeBody.model_validate(body)
    except ValidationError as e:
        fields = {str(p["loc"][0]) for p in e.errors(include_url=False) if p["loc"]}
        unknown = sorted(fields - {"budget"})
        said = [f"unknown field {name!r} (the field: budget)" for name in unknown]
        if "budget" in fields:
            said.append('"budget" must be a number of USD, 0 or more')
        raise BodyInvalid("; ".join(said)) from None


class RunsQuery(BaseModel):
    """The query of ``GET /api/v1/runs``; other parameters are ignored."""

    model_config = ConfigDict(extra="ignore")

    status: str | None = Field(default=None, max_length=64, description="Only runs in this status.")
    workflow: str | None = Field(
        default=None, max_length=4096, description="Only runs of this workflow (name or file)."
    )
    limit: int = Field(default=50, ge=1, le=MOST_RUNS_LISTED, description="At most this many runs.")


def runs_query(query: dict[str, str]) -> RunsQuery:
    try:
        return RunsQuery.model_validate(query)
    except ValidationError as e:
        fields = {str(p["loc"][0]) for p in e.errors(include_url=False) if p["loc"]}
        said = []
        if "limit" in fields:
            said.append(f"limit must be a whole number from 1 to {MOST_RUNS_LISTED:,}")
        said += [f"{field} is too long" for field in sorted(fields - {"limit"})]
        raise BodyInvalid("; ".join(said)) from None


def dumps(value: Any) -> str:
    """Strict JSON: a non-finite number becomes ``null``, anything else not JSON
    its text."""
    try:
        return json.dumps(value, default=str, allow_nan=False)
    except ValueError:  # a NaN or an infinity somewhere: rare, so looked for only then
        return json.dumps(_finite(value), default=str, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {
            (str(key) if isinstance(key, float) else key): _finite(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
