"""The workflow file format (version 1) as pydantic models.

These models describe the file as written: every key optional where the
format allows, nothing merged yet. They are the single source of the JSON
Schema that ``aoe schema`` prints. The loader (:mod:`aoe.format.loader`) validates a
file against them and then resolves it (defaults merged, files read) into the
:class:`aoe.format.workflow.Workflow` the engine runs.

One job, the models and the validators that give their messages; at about 450
lines it reads in one sitting, and a model split from its neighbours would only
send the reader between files.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from aoe.format.diagnostics import describe

FORMAT_VERSION = 1
AGENT_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
AGENT_ID_MAX = 64
AGENT_ID_RE = re.compile(AGENT_ID_PATTERN)
DEFAULT_MAX_TOKENS = 4096
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_PARALLEL_AGENTS = 4
BUILTIN_PROVIDERS = ("openai", "anthropic", "mock")

InputType = Literal["string", "integer", "number", "boolean", "list", "object"]
TriggerRule = Literal["all_completed", "all_done", "any_completed"]
OutputFormat = Literal["text", "json"]

AgentId = Annotated[
    str,
    StringConstraints(pattern=AGENT_ID_PATTERN, max_length=AGENT_ID_MAX),
]


def _one_or_many(what: str) -> BeforeValidator:
    """Accept one string as a list of one; refuse anything but a string or a list."""

    def accept(value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise PydanticCustomError(
                "one_or_many",
                "must be {what}, not {found}",
                {"what": what, "found": describe(value)},
            )
        return value

    return BeforeValidator(accept)


def _one_or_many_schema(description: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
            ],
            "description": description,
        }
    )


DependsOn = Annotated[
    list[str],
    _one_or_many("an agent id or a list of agent ids"),
    _one_or_many_schema("An agent id, or a list of agent ids, that must finish first."),
]
StopSequences = Annotated[
    list[str],
    _one_or_many("a string or a list of strings"),
    _one_or_many_schema("A stop sequence, or a list of them."),
]
Template = Annotated[str, Field(description="A Jinja2 template.")]


class _Model(BaseModel):
    """Strict, closed models: unknown keys and wrong types are errors, not coerced."""

    # defer_build: a model's validator is built when first used, so commands that
    # never validate (or use only part of the format) do not pay for all of it.
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, defer_build=True, allow_inf_nan=False
    )


class InputSpec(_Model):
    """A parameter of the workflow, given at run time with ``-i name=value``."""

    type: InputType = Field(
        default="string",
        description="The value's type: string, integer, number, boolean, list or object.",
    )
    default: Any = Field(
        default=None,
        description="The value used when none is given at run time. "
        "Without a default the input is required.",
    )
    description: str | None = Field(default=None, description="What the input is for.")

    @field_validator("default")
    @classmethod
    def _default_has_type(cls, value: Any, info: Any) -> Any:
        kind = info.data.get("type")
        if kind is None:  # the type itself is wrong, and reported: nothing to compare with
            return value
        if value is not None and not value_has_type(value, kind):
            raise PydanticCustomError(
                "input_default_type",
                "the default is {value}, not of the input's type '{kind}'",
                {"value": describe(value), "kind": kind},
            )
        return check_finite(value)

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set


_V = TypeVar("_V")


def non_finite(value: Any) -> str | None:
    """Where in a JSON-like value a number is infinite or NaN (``a.b[2]``; ``""``
    for the value itself), or None. YAML writes them ``.inf`` and ``.nan`` (and
    ``1e400`` overflows to one); JSON has neither, so nothing aoe sends or
    records may hold one."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:  # a loop: a value may nest as deep as its file allows
        item, where = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return where
        elif isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None


def check_finite(value: _V) -> _V:
    """``value`` itself, or a validation error naming the number that is not finite."""
    where = non_finite(value)
    if where is not None:
        raise PydanticCustomError(
            "finite_number_inside",
            "{what} must be finite: JSON has no infinity or NaN (.inf, .nan, 1e400)",
            {"what": f"the number at {where}" if where else "the number"},
        )
    return value


def value_has_type(value: Any, kind: str) -> bool:
    """Whether a (YAML or JSON) value is of an input type."""
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    return False


class LLMSpec(_Model):
    """Which model answers and with what parameters. Every key may come from ``defaults.llm``."""

    provider: str | None = Field(
        default=None,
        min_length=1,
        description="openai, anthropic, mock, or a provider declared in the engine config. "
        "When unset anywhere: anthropic for claude-* models, else openai.",
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        description="The model name, e.g. gpt-4o-mini or claude-sonnet-4-5. "
        "Required after merging with defaults.",
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description=f"Most tokens the reply may have (default {DEFAULT_MAX_TOKENS}); "
        "also bounds the cost reserved before each attempt.",
    )
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Sampling temperature, 0 to 2."
    )
    top_p: float | None = Field(default=None, ge=0, le=1, description="Nucleus sampling, 0 to 1.")
    stop: StopSequences | None = Field(default=None, description="Stop sequences.")
    seed: int | None = Field(
        default=None, description="Sampling seed, where the provider supports one."
    )
    params: dict[str, Any] | None = Field(
        default=None,
        description="Extra parameters passed to the provider unchanged.",
    )

    @field_validator("params")
    @classmethod
    def _params_finite(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_finite(value)


class RetrySpec(_Model):
    """How failed attempts are retried; unset keys come from the engine's retry_policy."""

    max_retries: int | None = Field(
        default=None, ge=0, description="Retries after the first attempt."
    )
    base_delay: float | None = Field(
        default=None, ge=0, description="First backoff delay, seconds."
    )
    max_delay: float | None = Field(
        default=None, ge=0, description="Longest backoff delay, seconds; at least base_delay."
    )
    jitter: bool | None = Field(default=None, description="Randomise each delay (full jitter).")

    @model_validator(mode="after")
    def _delays_ordered(self) -> RetrySpec:
        if self.base_delay is not None and self.max_delay is not None:
            check_delays(self.base_delay, self.max_delay)
        return self


def check_delays(base_delay: float, max_delay: float) -> None:
    """Backoff delays must not shrink: ``max_delay`` at least ``base_delay``."""
    if max_delay < base_delay:
        raise PydanticCustomError(
            "max_delay_below_base",
            "max_delay ({max_delay}) is less than base_delay ({base_delay}); "
            "make max_delay at least base_delay",
            {"max_delay": f"{max_delay:g}", "base_delay": f"{base_delay:g}"},
        )


class OutputSpec(_Model):
    """What the reply must be: free text, or JSON checked against a JSON Schema."""

    model_config = ConfigDict(populate_by_name=False)

    format: OutputFormat = Field(default="text", description="text, or json (the reply is parsed).")
    json_schema: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description="A JSON Schema the parsed reply must match (format: json).",
    )
    schema_file: str | None = Field(
        default=None,
        min_length=1,
        description="A JSON or YAML file holding the JSON Schema, relative to the workflow file.",
    )
    allow_truncated: bool = Field(
        default=True,
        description="Accept a reply cut off at max_tokens (marked truncated); false: "
        "such a reply fails the attempt, which is retried.",
    )

    @field_validator("json_schema")
    @classmethod
    def _schema_finite(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_finite(value)

    @model_validator(mode="after")
    def _schema_fits_format(self) -> OutputSpec:
        if self.json_schema is not None and self.schema_file is not None:
            raise PydanticCustomError(
                "schema_and_file", "give either schema or schema_file, not both", {}
            )
        if self.format != "json" and (self.json_schema is not None or self.schema_file):
            raise PydanticCustomError(
                "schema_needs_json", "a schema needs format: json; add format: json", {}
            )
        return self


class _AgentSettings(_Model):
    """The settings that ``defaults`` can give every agent."""

    llm: LLMSpec | None = Field(default=None, description="Model and parameters.")
    timeout: float | None = Field(
        default=None,
        gt=0,
        description=f"Seconds one attempt may wait for its reply, counted from the "
        f"last piece of a streamed reply (default {DEFAULT_TIMEOUT:g}).",
    )
    timeout_total: float | None = Field(
        default=None,
        gt=0,
        description="Seconds one attempt may take in all, however live its streamed "
        "reply (default: no such limit).",
    )
    retry: RetrySpec | None = Field(default=None, description="Retry settings over the engine's.")
    cost_limit: float | None = Field(
        default=None,
        ge=0,
        description="USD this agent may spend over all its attempts "
        "(default: the engine's DEFAULT_AGENT_BUDGET).",
    )


class Defaults(_AgentSettings):
    """Settings merged under every agent's own (the agent's keys win)."""


class AgentSpec(_AgentSettings):
    """One LLM call: a prompt rendered from inputs and the outputs it depends on."""

    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": ["prompt"]}, {"required": ["prompt_file"]}]}
    )

    prompt: Template | None = Field(default=None, description="The user message (a template).")
    prompt_file: str | None = Field(
        default=None, min_length=1, description="A file holding the prompt template."
    )
    system: Template | None = Field(default=None, description="The system message (a template).")
    system_file: str | None = Field(
        default=None, min_length=1, description="A file holding the system template."
    )
    description: str | None = Field(default=None, description="Shown by aoe graph and in reports.")
    depends_on: DependsOn = Field(
        default_factory=list, description="Agents that must finish before this one starts."
    )
    output: OutputSpec | None = Field(default=None, description="The reply's format and schema.")
    cache: bool | None = Field(
        default=None,
        description="Whether an identical earlier call may answer it from the response "
        "cache (default: the workflow's cache, else off).",
    )
    cache_ttl: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a cached answer may be old to be used (default: the "
        "workflow's, else the engine's, else any age).",
    )
    when: str | None = Field(
        default=None,
        min_length=1,
        description="A Jinja expression (no braces); the agent is skipped when it is false.",
    )
    trigger_rule: TriggerRule = Field(
        default="all_completed",
        description="Which dependency outcomes let the agent start: all_completed, "
        "all_done or any_completed.",
    )
    foreach: str | None = Field(
        default=None,
        min_length=1,
        description="A Jinja expression giving a list; the agent runs once per item "
        "(item and index in the template context).",
    )
    fallbacks: list[LLMSpec] = Field(
        default_factory=list,
        description="Models tried in order when this one gives up, each merged over llm.",
    )

    @model_validator(mode="after")
    def _one_source_per_template(self) -> AgentSpec:
        if self.prompt is not None and self.prompt_file is not None:
            raise PydanticCustomError(
                "prompt_and_file", "give either prompt or prompt_file, not both", {}
            )
        if self.prompt is None and self.prompt_file is None:
            raise PydanticCustomError(
                "prompt_missing", "the agent has no prompt; add prompt: or prompt_file:", {}
            )
        if self.system is not None and self.system_file is not None:
            raise PydanticCustomError(
                "system_and_file", "give either system or system_file, not both", {}
            )
        return self


class _WorkflowHeader(_Model):
    """Everything at the top of a workflow file except its agents."""

    version: Literal[1] = Field(description="The format version; only 1 exists.")

    @field_validator("version", mode="wrap")
    @classmethod
    def _known_version(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            if type(value) is not int:  # not 1.0, not true
                raise ValueError(value)
            return handler(value)
        except (ValidationError, ValueError):
            raise PydanticCustomError(
                "unsupported_version",
                "version must be 1, the only format version, not {value}; write version: 1",
                {"value": describe(value)},
            ) from None

    name: str = Field(
        min_length=1,
        max_length=100,
        description="The workflow's name, used in run records, metrics and reports.",
    )
    description: str | None = Field(default=None, description="Free text.")
    inputs: dict[str, InputSpec] = Field(
        default_factory=dict, description="Parameters given at run time."
    )
    defaults: Defaults | None = Field(
        default=None, description="llm, timeout, retry and cost_limit merged under every agent."
    )
    cost_budget: float | None = Field(
        default=None,
        ge=0,
        description="USD the whole run may spend (default: the engine's DEFAULT_WORKFLOW_BUDGET).",
    )
    max_parallel_agents: int = Field(
        default=DEFAULT_MAX_PARALLEL_AGENTS,
        ge=1,
        description="Agents of this run in flight at once.",
    )
    allow_partial_completion: bool = Field(
        default=False, description="Keep running the rest of the graph after an agent fails."
    )
    cache: bool | None = Field(
        default=None,
        description="Let identical earlier calls answer this run's agents from the "
        "response cache (default: the engine config's engine.cache, off).",
    )
    cache_ttl: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a cached answer may be old to be used (default: the "
        "engine's engine.cache_ttl, else any age).",
    )
    outputs: dict[str, Template] | None = Field(
        default=None, description="The run's named results: templates over inputs and agents."
    )


class WorkflowFile(_WorkflowHeader):
    """A workflow file: a directed acyclic graph of agents (format version 1)."""

    model_config = ConfigDict(
        title="aoe workflow",
        json_schema_extra={"patternProperties": {"^x-": {}}},
    )

    agents: dict[AgentId, AgentSpec] = Field(
        min_length=1,
        description="The agents, by id (letters, digits and underscores; at most 64).",
    )


class WorkflowHeader(_WorkflowHeader):
    """The header validated on its own, so errors in agents do not hide errors above them."""

    agents: dict[str, Any] = Field(min_length=1)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the workflow format, for editors and other tools."""
    schema = WorkflowFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://aoe.dev/schema/workflow-v1.json"
    return schema
