"""The engine config's models: the sections of ``config/production.yaml`` as
pydantic models, which validate it wherever it comes from — a file, the
environment, flags, or models built in Python code (:class:`EngineConfig`
handed to :func:`aoe.config.settings.load_settings` or to ``aoe.Engine``).

Every section is frozen and strict (``extra="forbid"``): a value built in
code is checked exactly as one read from a file.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from aoe.config.environment import ENVIRONMENT_VARIABLES
from aoe.format.spec import check_delays

__all__ = [
    "CostTrackingSection",
    "EngineConfig",
    "EngineSection",
    "LogLevel",
    "ModelPrice",
    "MonitoringSection",
    "ProviderSection",
    "RateLimitConfig",
    "RateLimitingSection",
    "RateLimits",
    "RedisSection",
    "RetryPolicy",
    "RetryPolicySection",
    "key_variable_problem",
    "url_problem",
]


class _Section(BaseModel):
    # allow_inf_nan=False: an infinite delay or budget is a run that waits forever or
    # a limit lifted by accident ("inf", "1e400", "nan" all parse as floats).
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, defer_build=True, allow_inf_nan=False
    )


class EngineSection(_Section):
    """The engine process."""

    max_concurrent_workflows: int = Field(
        default=50, ge=1, description="Runs one engine (aoe serve, a worker) runs at once."
    )
    state_dir: str = Field(
        default=".aoe", min_length=1, description="Where run records and the cache live."
    )
    cache: bool = Field(
        default=False,
        description="Answer calls from the response cache where an identical call was "
        "answered before, for workflows and agents that do not say (--cache, --no-cache "
        "per run).",
    )
    cache_ttl: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a cached answer may be old to be used, where a workflow or "
        "agent does not say (null: any age).",
    )

    @field_validator("state_dir")
    @classmethod
    def _plain_path(cls, value: str) -> str:
        if "\x00" in value:
            raise PydanticCustomError(
                "path", "must be a folder's path; it contains a NUL character", {}
            )
        return value


class RateLimits(_Section):
    """Limits on calls started in any sliding window.

    At the top of ``rate_limiting`` null means no limit. In ``per_provider``
    and ``per_model`` a key left out keeps the value from above, and an
    explicit null lifts that limit.
    """

    requests_per_minute: int | None = Field(default=None, ge=1, description="Requests per minute.")
    requests_per_hour: int | None = Field(default=None, ge=1, description="Requests per hour.")
    requests_per_day: int | None = Field(default=None, ge=1, description="Requests per day.")
    tokens_per_minute: int | None = Field(default=None, ge=1, description="Tokens per minute.")
    concurrent_requests: int | None = Field(default=None, ge=1, description="Requests in flight.")


class RateLimitingSection(RateLimits):
    """Limits per provider (these values), with optional overrides per provider and per model."""

    requests_per_minute: int | None = Field(default=60, ge=1, description="Requests per minute.")
    requests_per_hour: int | None = Field(default=3000, ge=1, description="Requests per hour.")
    requests_per_day: int | None = Field(default=50000, ge=1, description="Requests per day.")
    tokens_per_minute: int | None = Field(default=100000, ge=1, description="Tokens per minute.")
    concurrent_requests: int | None = Field(default=10, ge=1, description="Requests in flight.")
    per_provider: dict[str, RateLimits] = Field(
        default_factory=dict, description="Limits for one provider, over the values above."
    )
    per_model: dict[str, RateLimits] = Field(
        default_factory=dict, description="Limits for one model, over its provider's."
    )


class ModelPrice(_Section):
    """USD per 1,000 tokens."""

    input: float = Field(ge=0, description="USD per 1,000 input (prompt) tokens.")
    output: float = Field(ge=0, description="USD per 1,000 output (completion) tokens.")


class CostTrackingSection(_Section):
    """Prices and the default budgets."""

    model_costs: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Prices added to (or replacing) the built-in table, USD per 1,000 tokens.",
    )
    default_workflow_budget: float | None = Field(
        default=100.0, ge=0, description="USD a run may spend when its file sets no cost_budget."
    )
    default_agent_budget: float | None = Field(
        default=1.0, ge=0, description="USD an agent may spend when it sets no cost_limit."
    )
    daily_budget: float | None = Field(
        default=None,
        ge=0,
        description="USD all processes sharing Redis may spend per UTC day, every workflow "
        "together (needs Redis).",
    )
    workflow_daily_budgets: dict[str, float] = Field(
        default_factory=dict,
        description="USD per UTC day for a workflow, by its name, shared through Redis.",
    )

    @field_validator("workflow_daily_budgets")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for name, usd in value.items():
            if usd < 0:
                raise PydanticCustomError(
                    "budget", "the budget of {name} must be 0 or more", {"name": name}
                )
        return value


class RetryPolicySection(_Section):
    """How failed attempts are retried, unless an agent says otherwise."""

    max_retries: int = Field(default=3, ge=0, description="Retries after the first attempt.")
    strategy: Literal["exponential_backoff"] = Field(
        default="exponential_backoff", description="The backoff strategy."
    )
    base_delay: float = Field(default=1.0, ge=0, description="First delay, seconds.")
    max_delay: float = Field(default=60.0, ge=0, description="Longest delay, seconds.")
    jitter: bool = Field(default=True, description="Full jitter on every delay.")

    @model_validator(mode="after")
    def _delays_ordered(self) -> RetryPolicySection:
        check_delays(self.base_delay, self.max_delay)
        return self


RateLimitConfig = RateLimitingSection
"""The deployment guide's name for :class:`RateLimitingSection` (the same class)."""
RetryPolicy = RetryPolicySection
"""The deployment guide's name for :class:`RetryPolicySection` (the same class)."""

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class MonitoringSection(_Section):
    """Logs and metrics."""

    enable_metrics: bool = Field(
        default=True, description="Serve Prometheus metrics at /metrics (aoe serve)."
    )
    enable_logging: bool = Field(default=True, description="Write log lines.")
    metrics_interval: float = Field(default=60.0, gt=0, description="Seconds between summaries.")
    prometheus_port: int = Field(
        default=8000, ge=1, le=65535, description="Port of aoe serve (/metrics, /health, the API)."
    )
    log_level: LogLevel = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: Literal["text", "json"] = Field(default="text", description="text or json lines.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


_FREE = {"input": 0, "output": 0}

AZURE_API_VERSION = "2024-10-21"
"""The Azure OpenAI API version asked for unless a provider names another: the
latest generally available one (streamed usage, ``max_completion_tokens``)."""

PRESETS: dict[str, dict[str, Any]] = {
    "ollama": {"base_url": "http://localhost:11434/v1", "default_price": _FREE},
    "vllm": {"base_url": "http://localhost:8000/v1", "default_price": _FREE},
    "lmstudio": {"base_url": "http://localhost:1234/v1", "default_price": _FREE},
    "llamacpp": {"base_url": "http://localhost:8080/v1", "default_price": _FREE},
    "openrouter": {
        "base_url": "https://openrouter.ai/api/v1",
        "api_key_env": "OPENROUTER_API_KEY",
    },
    "gemini": {
        "base_url": "https://generativelanguage.googleapis.com/v1beta/openai/",
        "api_key_env": "GEMINI_API_KEY",
    },
}
"""The common OpenAI-compatible servers at their usual addresses: a provider is
``{preset: ollama}``; any field given as well goes over the preset's. The local
servers are free and need no key (give ``api_key_env`` where one is set up); the
hosted ones read their vendor's usual key variable and take the price table's
prices (or ``prices``)."""


class ProviderSection(_Section):
    """An OpenAI-compatible server (a local Ollama or vLLM, a proxy), named for workflows."""

    preset: Literal["ollama", "vllm", "lmstudio", "llamacpp", "openrouter", "gemini"] | None = (
        Field(
            default=None,
            description="A common server at its usual address (its base_url, key variable "
            "and prices); the fields given go over it.",
        )
    )
    type: Literal["openai", "anthropic", "azure"] = Field(
        default="openai",
        description="The API it speaks: openai (chat completions), anthropic (messages) "
        "or azure (Azure OpenAI: base_url is the resource's endpoint, models name its "
        "deployments); under the name anthropic, anthropic.",
    )
    base_url: str | None = Field(
        default=None,
        description="The server's API root, e.g. http://localhost:11434/v1 (for azure the "
        "resource's endpoint, e.g. https://NAME.openai.azure.com); required but for "
        "openai and anthropic (their own API, or OPENAI_BASE_URL / ANTHROPIC_BASE_URL).",
    )
    api_version: str | None = Field(
        default=None,
        min_length=1,
        description=f"azure only: the API version asked for (null: {AZURE_API_VERSION}).",
    )
    deployment: str | None = Field(
        default=None,
        min_length=1,
        description="azure only: the deployment that serves every model `models` does "
        "not name (null: a deployment named as the model).",
    )
    api_key_env: str | None = Field(
        default=None,
        description="The environment variable holding its API key; null for none.",
    )
    default_price: ModelPrice | None = Field(
        default=None,
        description="Price of every model it serves that `prices` does not name, "
        "over the price table ({input: 0, output: 0} for a local server).",
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Prices of its models (by the workflow's name or the server's), "
        "over default_price and the price table.",
    )
    models: dict[str, str] = Field(
        default_factory=dict,
        description="Workflows' model names and the server's model for each, e.g. "
        "{gpt-4o-mini: gemma-3-270m}: a workflow runs unchanged against it.",
    )
    token_parameter: Literal["max_tokens", "max_completion_tokens"] | None = Field(
        default=None,
        description="The parameter the server reads for a reply's length; null: "
        "max_completion_tokens for api.openai.com, max_tokens elsewhere.",
    )
    stream: bool | Literal["auto"] = Field(
        default="auto",
        description="Stream replies (aoe stops reading at max_tokens whatever the "
        "server does); false: one plain request and reply; auto: stream but from the "
        "vendors' own APIs (which keep max_tokens) only for -v or a reply that could "
        "outlast its timeout.",
    )
    structured_output: Literal["json_schema", "json_object", "none"] | None = Field(
        default=None,
        description="How it takes a JSON Schema for a reply: json_schema (structured "
        "outputs), json_object (JSON mode, schema in the prompt; for type anthropic, a "
        "proxy passing OpenAI's JSON mode on) or none (schema in the prompt); null: "
        "json_schema until the server refuses it, then json_object.",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_preset(cls, data: Any) -> Any:
        """The preset's fields under those given (an unknown preset is left to the
        field's own check, which lists the presets)."""
        if isinstance(data, dict) and isinstance(data.get("preset"), str):
            preset = PRESETS.get(data["preset"])
            if preset is not None:
                return {**preset, **data}
        return data

    @model_validator(mode="after")
    def _azure_fields(self) -> ProviderSection:
        """``api_version`` and ``deployment`` are Azure's words: elsewhere a mistake."""
        if self.type != "azure":
            given = [f for f in ("api_version", "deployment") if getattr(self, f) is not None]
            if given:
                raise PydanticCustomError(
                    "azure_only",
                    "{fields} only for type: azure (Azure OpenAI); this provider speaks "
                    "the {type} API",
                    {"fields": " and ".join(given), "type": self.type},
                )
        return self

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        problem = url_problem(value, "http://localhost:11434/v1")
        if problem is not None:
            raise PydanticCustomError("url", problem, {})
        return value

    @field_validator("api_key_env")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise PydanticCustomError(
                "variable_name",
                "must be the name of an environment variable (letters, digits and "
                "underscores), not its value",
                {},
            )
        problem = key_variable_problem(value)
        if problem is not None:
            raise PydanticCustomError("key_variable", problem, {})
        return value


def url_problem(value: str, example: str) -> str | None:
    """Why ``value`` cannot be a provider's API root (None when it can): an
    http:// or https:// URL with a host, nothing else (API keys are sent there)."""
    expected = f"must be an http:// or https:// URL, e.g. {example}"
    if any(c.isspace() or not c.isprintable() for c in value):
        return f"{expected}; it contains a space or a control character"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsing the port is the check: "host:99999", "host:x"
    except ValueError:
        return f"{expected}; its host or port cannot be read"
    if parts.scheme.lower() not in ("http", "https"):
        return expected
    if not parts.hostname:
        return f"{expected}; it names no host"
    return None


_KEY_SUFFIXES = ("_KEY", "_TOKEN")
_OWN_PREFIXES = ("AOE_", "REDIS_")


def key_variable_problem(name: str) -> str | None:
    """Why a provider's ``api_key_env`` may not name ``name`` (None when it may).

    The value of that variable is sent to the provider's ``base_url`` as a
    bearer token, so only variables meant as keys qualify: a name that ends in
    ``_KEY`` or ``_TOKEN``, and none of aoe's own (``AOE_API_TOKEN`` guards the
    API of ``aoe serve``) or Redis's.
    """
    upper = name.upper()
    if upper.startswith(_OWN_PREFIXES) or name in ENVIRONMENT_VARIABLES:
        return (
            f"{name} is one of aoe's own settings, not a provider's API key; name the "
            "variable that holds this provider's key, e.g. VLLM_API_KEY"
        )
    if not upper.endswith(_KEY_SUFFIXES):
        return (
            f"{name} does not look like an API key's variable: aoe sends a provider only "
            "a variable whose name ends in _KEY or _TOKEN (e.g. VLLM_API_KEY); "
            "put the key in one"
        )
    return None


class RedisSection(_Section):
    """Redis, for limits, budgets and queues shared by several processes."""

    url: str | None = Field(
        default=None,
        repr=False,  # it may carry a password
        description="redis://[:password@]host:port/db; takes precedence over host, port and db.",
    )
    host: str | None = Field(default=None, min_length=1, description="Redis host; unset: no Redis.")
    port: int = Field(default=6379, ge=1, le=65535, description="Redis port.")
    db: int = Field(default=0, ge=0, description="Redis database number.")
    key_prefix: str = Field(default="aoe", min_length=1, description="Prefix of every key.")
    on_unavailable: Literal["fail_closed", "local"] = Field(
        default="fail_closed",
        description="When Redis is unreachable: wait (fail_closed) or fall back to "
        "in-process limits (local).",
    )

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"rediss?://", value):
            raise PydanticCustomError(
                "url", "must be a redis:// or rediss:// URL, e.g. redis://localhost:6379/0", {}
            )
        return value

    @property
    def configured(self) -> bool:
        return self.url is not None or self.host is not None


def base_url_problem(name: str, section: ProviderSection) -> str | None:
    """Why the provider ``name`` cannot be called as declared (no base_url where
    it needs one); None if it can. ``openai`` and ``anthropic`` speak their own
    API at their own address unless given another ``type``."""
    if section.base_url is not None:
        return None
    if name in ("openai", "anthropic"):
        if section.type == name or "type" not in section.model_fields_set:
            return None
        return (
            f"provider '{name}' set to speak the {section.type} API needs the base_url "
            "of a server that does"
        )
    if section.type == "azure":
        return (
            f"provider '{name}' (Azure OpenAI) needs a base_url: its resource's endpoint, "
            "e.g. https://NAME.openai.azure.com"
        )
    return (
        f"provider '{name}' needs a base_url (its API root, e.g. http://localhost:11434/v1) "
        "or a preset (e.g. preset: ollama)"
    )


class EngineConfig(_Section):
    """The engine config file."""

    model_config = ConfigDict(title="aoe engine config")

    engine: EngineSection = Field(default_factory=EngineSection)
    rate_limiting: RateLimitingSection = Field(default_factory=RateLimitingSection)
    cost_tracking: CostTrackingSection = Field(default_factory=CostTrackingSection)
    retry_policy: RetryPolicySection = Field(default_factory=RetryPolicySection)
    monitoring: MonitoringSection = Field(default_factory=MonitoringSection)
    providers: dict[str, ProviderSection] = Field(
        default_factory=dict,
        description="Servers named for workflows; openai and anthropic may be given here "
        "too (another base_url, model names, prices, how they stream and take schemas).",
    )
    redis: RedisSection = Field(default_factory=RedisSection)

    @field_validator("providers")
    @classmethod
    def _not_builtin(cls, value: dict[str, ProviderSection]) -> dict[str, ProviderSection]:
        """``mock`` is aoe's own; ``openai`` and ``anthropic`` speak their own API
        at their own address unless given another (``type`` and ``base_url``: all
        of a workflow's agents to one local server); any other needs its base_url."""
        if "mock" in value:
            raise PydanticCustomError(
                "builtin_provider",
                "'mock' is aoe's offline provider and cannot be declared; pick another name",
                {},
            )
        problems = []
        for name, section in value.items():
            if name in ("openai", "anthropic") and "type" not in section.model_fields_set:
                value[name] = section.model_copy(update={"type": name})  # its vendor's API
            problem = base_url_problem(name, value[name])
            if problem is not None:
                problems.append(problem)
        if problems:  # every one (the config layer says each at its own line)
            raise PydanticCustomError("missing_base_url", "; ".join(problems), {})
        return value
