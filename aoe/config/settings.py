"""Engine configuration: command-line flags > environment (and ``.env``) > config file > defaults.

The config file (``--config FILE`` or ``AOE_CONFIG``) has the sections of the
deployment guide's ``config/production.yaml``: ``engine``, ``rate_limiting``,
``cost_tracking``, ``retry_policy``, ``monitoring``, ``providers`` and
``redis``. The environment variables keep the guide's names
(``RATE_LIMIT_RPM``, ``DEFAULT_WORKFLOW_BUDGET`` ...). :func:`load_settings`
merges the layers, validates the result with the same located diagnostics as
workflow files, and remembers where every value came from for
``aoe config show``. API keys stay in the environment; they are read through
:class:`Environment`, which never shows them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from aoe.config.prices import BUILTIN_PRICES, Price, PriceTable
from aoe.errors import ConfigInvalid
from aoe.format.files import FileRefused, read_limited
from aoe.format.modelerrors import diagnostic_for, unwrap
from aoe.format.spec import BUILTIN_PROVIDERS, check_delays
from aoe.format.yamlsource import INT_MAX, INT_MIN, SourceMap, YamlError, parse_yaml, read_text
from aoe.types import Diagnostic, Severity


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


class ProviderSection(_Section):
    """An OpenAI-compatible server (a local Ollama or vLLM, a proxy), named for workflows."""

    type: Literal["openai"] = Field(default="openai", description="The API it speaks.")
    base_url: str = Field(description="The server's API root, e.g. http://localhost:11434/v1.")
    api_key_env: str | None = Field(
        default=None,
        description="The environment variable holding its API key; null for none.",
    )
    default_price: ModelPrice | None = Field(
        default=None,
        description="Price of its models that the price table does not list "
        "({input: 0, output: 0} for a local server).",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
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


class EngineConfig(_Section):
    """The engine config file."""

    model_config = ConfigDict(title="aoe engine config")

    engine: EngineSection = Field(default_factory=EngineSection)
    rate_limiting: RateLimitingSection = Field(default_factory=RateLimitingSection)
    cost_tracking: CostTrackingSection = Field(default_factory=CostTrackingSection)
    retry_policy: RetryPolicySection = Field(default_factory=RetryPolicySection)
    monitoring: MonitoringSection = Field(default_factory=MonitoringSection)
    providers: dict[str, ProviderSection] = Field(
        default_factory=dict, description="Named OpenAI-compatible servers."
    )
    redis: RedisSection = Field(default_factory=RedisSection)

    @field_validator("providers")
    @classmethod
    def _not_builtin(cls, value: dict[str, ProviderSection]) -> dict[str, ProviderSection]:
        taken = [name for name in value if name in BUILTIN_PROVIDERS]
        if taken:
            raise PydanticCustomError(
                "builtin_provider",
                "{names} built in and cannot be redeclared; pick other names, or point "
                "the built-in ones elsewhere with OPENAI_BASE_URL / ANTHROPIC_BASE_URL",
                {
                    "names": " and ".join(f"'{n}'" for n in taken)
                    + (" is" if len(taken) == 1 else " are")
                },
            )
        return value


# Environment variable -> where its value goes (the deployment guide's names).
ENVIRONMENT_VARIABLES: Mapping[str, tuple[str, ...]] = {
    "RATE_LIMIT_RPM": ("rate_limiting", "requests_per_minute"),
    "RATE_LIMIT_RPH": ("rate_limiting", "requests_per_hour"),
    "RATE_LIMIT_RPD": ("rate_limiting", "requests_per_day"),
    "RATE_LIMIT_TPM": ("rate_limiting", "tokens_per_minute"),
    "RATE_LIMIT_CONCURRENT": ("rate_limiting", "concurrent_requests"),
    "DEFAULT_WORKFLOW_BUDGET": ("cost_tracking", "default_workflow_budget"),
    "DEFAULT_AGENT_BUDGET": ("cost_tracking", "default_agent_budget"),
    "MAX_RETRIES": ("retry_policy", "max_retries"),
    "RETRY_BASE_DELAY": ("retry_policy", "base_delay"),
    "RETRY_MAX_DELAY": ("retry_policy", "max_delay"),
    "MAX_CONCURRENT_WORKFLOWS": ("engine", "max_concurrent_workflows"),
    "LOG_LEVEL": ("monitoring", "log_level"),
    "ENABLE_METRICS": ("monitoring", "enable_metrics"),
    "PROMETHEUS_PORT": ("monitoring", "prometheus_port"),
    "REDIS_HOST": ("redis", "host"),
    "REDIS_PORT": ("redis", "port"),
    "REDIS_DB": ("redis", "db"),
    "AOE_STATE_DIR": ("engine", "state_dir"),
}
CONFIG_FILE_VARIABLE = "AOE_CONFIG"
# API keys and endpoints of the built-in providers, read by their SDKs' conventions.
BUILTIN_KEY_VARIABLES: Mapping[str, str] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
}
BUILTIN_URL_VARIABLES: Mapping[str, str] = {
    "openai": "OPENAI_BASE_URL",
    "anthropic": "ANTHROPIC_BASE_URL",
}
BUILTIN_BASE_URLS: Mapping[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}
"""Where the vendors' SDKs send requests (and keys) when no base URL is set."""
MOCK_LATENCY_VARIABLE = "AOE_MOCK_LATENCY"
"""Seconds every mock call takes (``--mock`` runs, demos)."""
MAX_DOTENV_BYTES = 1024 * 1024


class Environment:
    """Environment variables, with a ``.env`` file under them; never printed whole.

    Values set in the real environment win over the ``.env`` file, as with
    every other tool that reads one. A variable set to nothing (or to blanks)
    counts as unset, as pydantic-settings' ``env_ignore_empty`` has it: an
    unset compose variable (``RATE_LIMIT_RPM=``) must not lift a limit, and
    the value under it (``.env``, the config file, the default) applies.
    """

    __slots__ = ("_blank", "_dotenv_file", "_dotenv_lines", "_dotenv_path", "_values")

    def __init__(
        self,
        environ: Mapping[str, str],
        dotenv: Mapping[str, tuple[str, int]] | None = None,
        dotenv_file: str = ".env",
        dotenv_path: str | None = None,
    ) -> None:
        self._values: dict[str, tuple[str, str]] = {}
        self._dotenv_lines: dict[str, int] = {}
        self._blank: dict[str, str] = {}
        self._dotenv_file = dotenv_file
        self._dotenv_path = dotenv_path or dotenv_file
        for name, (value, line) in (dotenv or {}).items():
            if value.strip():
                self._values[name] = (value, dotenv_file)
                self._dotenv_lines[name] = line
            else:
                self._blank[name] = f"{dotenv_file}:{line} {name}"
        for name, value in environ.items():
            if value.strip():
                self._values[name] = (value, "env")
                self._dotenv_lines.pop(name, None)
                self._blank.pop(name, None)
            elif name not in self._values:
                self._blank[name] = f"env {name}"

    def __repr__(self) -> str:
        return f"Environment({len(self._values)} variables)"

    def get(self, name: str) -> str | None:
        """The variable's value; None when it is unset, empty or blank."""
        entry = self._values.get(name)
        return entry[0] if entry is not None else None

    def origin(self, name: str) -> str:
        """``env NAME`` or ``.env:LINE NAME``: where a variable was set."""
        line = self._dotenv_lines.get(name)
        return f"{self._dotenv_file}:{line} {name}" if line is not None else f"env {name}"

    def blank(self, name: str) -> str | None:
        """Where the variable was set to nothing (``env NAME``, ``.env:LINE NAME``), if
        it was and no value is set for it elsewhere; None otherwise."""
        return self._blank.get(name)

    def from_dotenv(self, name: str) -> bool:
        """Whether the value in use comes from the ``.env`` file."""
        return name in self._dotenv_lines

    def __contains__(self, name: object) -> bool:
        return name in self._values

    @property
    def dotenv_file(self) -> str:
        return self._dotenv_file

    @property
    def dotenv_path(self) -> str:
        """The ``.env`` file as a full path, for messages that must say which one."""
        return self._dotenv_path


def env_value(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """A variable read from the process environment only (never ``.env``: a
    ``.env`` must not choose ``AOE_API_TOKEN``), unset when empty or blank."""
    value = (os.environ if environ is None else environ).get(name)
    return value if value is not None and value.strip() else None


_DOTENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def parse_dotenv(text: str) -> dict[str, tuple[str, int]]:
    """``KEY=value`` lines (``export``, quotes and ``#`` comments allowed) with their line."""
    values: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _DOTENV_LINE.match(line)
        if match is None:
            continue
        name, raw = match.groups()
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
            value = raw[1:-1]
            if raw[0] == '"':
                value = value.replace("\\n", "\n").replace('\\"', '"')
        else:
            value = re.split(r"\s+#", raw, maxsplit=1)[0]
        values[name] = (value, number)
    return values


class Setting(NamedTuple):
    """One effective value and where it came from (``default``, ``file:LINE``, ``env X`` ...)."""

    key: str
    value: Any
    source: str
    secret: bool = False

    @property
    def shown(self) -> str:
        """The value as ``aoe config show`` prints it: secrets masked."""
        if self.secret:
            return "(not set)" if self.value is None else "******** (set)"
        if self.value is None:
            return "null"
        if isinstance(self.value, bool):
            return str(self.value).lower()
        return str(self.value)


ConfigPath = tuple[str, ...]


class KeyRoute(NamedTuple):
    """Where a provider's API key goes: the variable that holds it, the URL it is
    sent to, and where that URL was set (for ``aoe config show`` and warnings)."""

    provider: str
    variable: str | None
    """None: the provider is sent no key."""
    url: str
    origin: str
    """``default``, ``env OPENAI_BASE_URL``, ``.env:3 OPENAI_BASE_URL``, ``FILE:LINE``."""
    chosen_by_dotenv: str | None = None
    """What in a ``.env`` file chose the URL (``.env:3 OPENAI_BASE_URL``), if it did."""


class Settings(NamedTuple):
    """The effective engine configuration, and where each value came from."""

    config: EngineConfig
    environment: Environment
    config_file: str | None
    sources: Mapping[ConfigPath, str]
    prices: PriceTable
    """The built-in price table with the config file's prices over it."""
    provider_names: tuple[str, ...]
    """The built-in providers and the declared ones."""
    config_named_by: str | None = None
    """Who named the config file: ``flag --config``, ``env AOE_CONFIG``, ``.env:2 AOE_CONFIG``."""

    def price_of(self, provider: str, model: str) -> Price | None:
        """The price of a model at a provider, or None if it has none.

        The price table first (a dated snapshot takes its base model's price),
        then a declared provider's ``default_price``. The mock provider costs
        what the model it names costs, and nothing if that has no price.
        """
        price = self.prices.lookup(model)
        if price is not None:
            return price
        declared = self.config.providers.get(provider)
        if declared is not None and declared.default_price is not None:
            return Price(declared.default_price.input, declared.default_price.output)
        if provider == "mock":
            return Price(0.0, 0.0)
        return None

    def api_key_variable(self, provider: str) -> str | None:
        """The environment variable that holds a provider's API key (None: needs no key)."""
        if provider in BUILTIN_KEY_VARIABLES:
            return BUILTIN_KEY_VARIABLES[provider]
        declared = self.config.providers.get(provider)
        return declared.api_key_env if declared is not None else None

    def base_url(self, provider: str) -> str | None:
        """The API root a provider's requests (and key) go to; None for the mock.

        The vendors' own default is given explicitly rather than left to the SDK,
        which would read the process environment itself (and take a blank value)."""
        route = self.key_route(provider)
        return route.url if route is not None else None

    def key_route(self, provider: str) -> KeyRoute | None:
        """Where a provider's key goes and who chose that; None for the mock."""
        variable = self.api_key_variable(provider)
        if provider in BUILTIN_URL_VARIABLES:
            url_variable = BUILTIN_URL_VARIABLES[provider]
            url = self.environment.get(url_variable)
            if url is None:
                return KeyRoute(provider, variable, BUILTIN_BASE_URLS[provider], "default")
            origin = self.environment.origin(url_variable)
            dotenv = origin if self.environment.from_dotenv(url_variable) else None
            return KeyRoute(provider, variable, url, origin, dotenv)
        declared = self.config.providers.get(provider)
        if declared is None:
            return None
        origin = self.sources.get(("providers", provider, "base_url"), "config file")
        named_by = self.config_named_by or ""
        dotenv = named_by if named_by.startswith(self.environment.dotenv_file + ":") else None
        return KeyRoute(provider, variable, declared.base_url, origin, dotenv)

    def dotenv_warnings(self, providers: Iterable[str]) -> list[str]:
        """What to say before keys go where a ``.env`` file chose: a ``.env`` comes
        with the folder aoe runs in (a checkout, a download), not from the user."""
        warnings = []
        for provider in dict.fromkeys(providers):
            route = self.key_route(provider)
            if route is None or route.chosen_by_dotenv is None:
                continue
            where, _, variable = route.chosen_by_dotenv.partition(" ")
            line = where.rpartition(":")[2]
            key = f"its key ({route.variable})" if route.variable else "its requests"
            if variable == CONFIG_FILE_VARIABLE:
                what = (
                    f"the engine config {self.config_file} is named by {variable} in "
                    f"{self.environment.dotenv_path} (line {line}), and provider "
                    f"'{provider}' sends {key} to {_mask_url(route.url)}"
                )
            else:
                what = (
                    f"{variable} is set by {self.environment.dotenv_path} (line {line}): "
                    f"provider '{provider}' sends {key} to {_mask_url(route.url)}"
                )
            warnings.append(
                f"{what}; if that is not meant, remove the line (a .env file comes "
                "with the folder aoe runs in)"
            )
        return warnings

    @property
    def mock_latency(self) -> float:
        """Seconds each mock call takes (``AOE_MOCK_LATENCY``; checked when loaded)."""
        return float(self.environment.get(MOCK_LATENCY_VARIABLE) or 0)

    def settings(self) -> list[Setting]:
        """Every effective value with its source, secrets masked, for ``aoe config show``."""
        rows: list[Setting] = []
        for path, value in _leaves(self.config.model_dump(mode="json")):
            source = self._source_of(path)
            if path[:2] in (("rate_limiting", "per_provider"), ("rate_limiting", "per_model")) and (
                source == "default"
            ):
                continue  # not overridden there: the value above applies
            rows.append(Setting(".".join(path), _mask_url(value), source))
        file_models = set(self.config.cost_tracking.model_costs)
        for model, price in sorted(BUILTIN_PRICES.items()):
            if model not in file_models:
                for side in ("input", "output"):
                    rows.append(
                        Setting(
                            f"cost_tracking.model_costs.{model}.{side}",
                            getattr(price, side),
                            "built-in",
                        )
                    )
        for provider in BUILTIN_URL_VARIABLES:
            route = self.key_route(provider)
            assert route is not None
            rows.append(
                Setting(f"providers.{provider}.base_url", _mask_url(route.url), route.origin)
            )
        for provider in self.provider_names:
            variable = self.api_key_variable(provider)
            if variable is not None:
                value = self.environment.get(variable)
                rows.append(
                    Setting(
                        f"providers.{provider}.api_key",
                        value,
                        self.environment.origin(variable) if value else f"unset: {variable}",
                        secret=True,
                    )
                )
            route = self.key_route(provider)
            if route is not None:
                source = route.origin
                if route.chosen_by_dotenv == route.origin:
                    source += "; a .env file chose it, check it"
                elif route.chosen_by_dotenv is not None:
                    source += f"; the config file is named by {route.chosen_by_dotenv}, check it"
                rows.append(
                    Setting(
                        f"providers.{provider}.key_sent_to",
                        f"{route.variable or '(no key)'} -> {_mask_url(route.url)}",
                        source,
                    )
                )
        order = {name: i for i, name in enumerate(EngineConfig.model_fields)}
        rows.sort(key=lambda r: (order.get(r.key.split(".")[0], len(order)), r.key))
        return rows

    def _source_of(self, path: ConfigPath) -> str:
        for cut in range(len(path), 0, -1):
            source = self.sources.get(path[:cut])
            if source is not None:
                return source
        return "default"


def _mask_url(value: Any) -> Any:
    """A URL with its password (``scheme://user:password@host``) hidden."""
    if not isinstance(value, str) or "@" not in value:
        return value
    return re.sub(r"(//[^@/:]*):[^@/]*@", r"\1:********@", value)


def _leaves(value: Any, prefix: ConfigPath = ()) -> Iterator[tuple[ConfigPath, Any]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, (*prefix, str(key)))
    elif not isinstance(value, dict):
        yield prefix, value


def load_settings(
    config_file: str | None = None,
    *,
    flags: Mapping[str, tuple[Any, str]] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> Settings:
    """The effective engine configuration.

    ``flags`` maps a dotted key (``monitoring.log_format``) to its value and the
    option that set it (``--log-format``). ``environ`` defaults to the process
    environment; a ``.env`` file in ``cwd`` (default: the working directory)
    is read under it. Raises :class:`ConfigInvalid` with every problem found.
    """
    directory = Path(cwd) if cwd is not None else Path.cwd()
    environment, diagnostics = _read_environment(
        os.environ if environ is None else environ, directory
    )
    sources: dict[ConfigPath, str] = {}
    merged: dict[str, Any] = {}
    source_map: SourceMap | None = None

    path = config_file or environment.get(CONFIG_FILE_VARIABLE)
    named_by = None
    if path:
        named_by = "flag --config" if config_file else environment.origin(CONFIG_FILE_VARIABLE)
        try:
            document = parse_yaml(read_text(path), path)
        except YamlError as e:
            found = list(e.diagnostics)
            if not config_file:  # say where the name came from
                origin = environment.origin(CONFIG_FILE_VARIABLE)
                found = [
                    d._replace(message=f"{d.message} (named by {origin})") if d.line <= 0 else d
                    for d in found
                ]
            raise ConfigInvalid([*diagnostics, *found]) from None
        source_map = document.source
        diagnostics.extend(document.diagnostics)
        yaml_places = {(d.line, d.column) for d in document.diagnostics}
        if not isinstance(document.data, dict):
            raise ConfigInvalid(
                [
                    *diagnostics,
                    document.source.diagnostic(
                        (),
                        "type",
                        "the config file must be a mapping of sections "
                        "(engine, rate_limiting, ...)",
                    ),
                ]
            )
        merged = document.data
        for leaf, _ in _leaves(document.data):
            sources[leaf] = f"{path}:{document.source.value(leaf).line}"

    ignored: dict[ConfigPath, str] = {}
    for variable, target in ENVIRONMENT_VARIABLES.items():
        raw = environment.get(variable)
        if raw is None:
            blank = environment.blank(variable)
            if blank is not None:
                ignored[target] = f"{blank} is empty: ignored"
            continue
        value, problem = _coerce(raw, target)
        if problem:
            diagnostics.append(_env_diagnostic(environment, variable, raw, problem))
            continue
        _put(merged, target, value)
        sources[target] = environment.origin(variable)

    for key, (value, flag) in (flags or {}).items():
        target = tuple(key.split("."))
        _put(merged, target, value)
        sources[target] = f"flag {flag}"
        ignored.pop(target, None)
    diagnostics.extend(_check_environment(environment))

    try:
        # Every section is validated inside EngineConfig's own validator; left out,
        # each would be made by its default factory, building its own validator too.
        for section in EngineConfig.model_fields:
            merged.setdefault(section, {})
        config = EngineConfig.model_validate(merged)
    except ValidationError as e:
        found = _config_diagnostics(e, source_map, sources, environment)
        if source_map is not None:  # not again where the YAML itself was refused
            found = [
                d
                for d in found
                if d.file != source_map.file or (d.line, d.column) not in yaml_places
            ]
        diagnostics.extend(found)
    if diagnostics:
        raise ConfigInvalid(diagnostics)
    for target, note in ignored.items():
        sources[target] = f"{sources.get(target, 'default')}; {note}"
    prices = dict(BUILTIN_PRICES)
    for model, price in config.cost_tracking.model_costs.items():
        prices[model] = Price(price.input, price.output)
    return Settings(
        config,
        environment,
        path or None,
        sources,
        PriceTable(prices),
        (*BUILTIN_PROVIDERS, *config.providers),
        named_by,
    )


def _check_environment(environment: Environment) -> list[Diagnostic]:
    """The variables read outside the config's sections, checked now rather than
    at the first call: the built-in providers' URLs (their keys are sent there)
    and the mock's latency (an infinite one is a run that never ends)."""
    found = []
    for provider, variable in BUILTIN_URL_VARIABLES.items():
        url = environment.get(variable)
        problem = url_problem(url, BUILTIN_BASE_URLS[provider]) if url is not None else None
        if url is not None and problem is not None:
            found.append(_env_diagnostic(environment, variable, str(_mask_url(url)), problem))
    latency = environment.get(MOCK_LATENCY_VARIABLE)
    if latency is not None:
        try:
            seconds = float(latency)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds >= 0):
            found.append(
                _env_diagnostic(
                    environment,
                    MOCK_LATENCY_VARIABLE,
                    latency,
                    "must be a number of seconds, 0 or more (e.g. 0.4)",
                )
            )
    return found


def _read_environment(
    environ: Mapping[str, str], directory: Path
) -> tuple[Environment, list[Diagnostic]]:
    dotenv_path = directory / ".env"
    dotenv: dict[str, tuple[str, int]] = {}
    diagnostics: list[Diagnostic] = []
    try:
        dotenv = parse_dotenv(read_limited(dotenv_path, MAX_DOTENV_BYTES).decode("utf-8-sig"))
    except FileRefused as e:
        # none, or not a file (a virtualenv is often called .env): nothing to read
        if e.kind not in ("not-found", "not-a-file"):
            diagnostics.append(
                Diagnostic(".env", 0, 0, Severity.ERROR, "io", f"cannot read .env: {e.message}")
            )
    except UnicodeDecodeError:
        diagnostics.append(
            Diagnostic(
                ".env", 0, 0, Severity.ERROR, "encoding", "cannot read .env: it is not UTF-8 text"
            )
        )
    return Environment(environ, dotenv, dotenv_path=str(dotenv_path.absolute())), diagnostics


def _field_type(target: tuple[str, ...]) -> Any:
    model: Any = EngineConfig
    annotation: Any = None
    for part in target:
        annotation = model.model_fields[part].annotation
        model = unwrap(annotation)
    return annotation


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(raw: str, target: tuple[str, ...]) -> tuple[Any, str | None]:
    """An environment variable's text as the type its setting needs."""
    annotation = _field_type(target)
    kind = unwrap(annotation)
    text = raw.strip()
    nullable = "None" in str(annotation)
    if nullable and text.lower() in ("", "none", "null"):
        return None, None
    if kind is bool:
        if text.lower() in _TRUE:
            return True, None
        if text.lower() in _FALSE:
            return False, None
        return None, "must be true or false"
    if kind is int:
        try:
            number = int(text)
        except ValueError:  # 4,300 digits and more are a ValueError too
            number = None
        if number is None or not INT_MIN <= number <= INT_MAX:
            return None, "must be a whole number" + (" or none" if nullable else "")
        return number, None
    if kind is float:
        try:
            return float(text), None
        except ValueError:
            return None, "must be a number" + (" or none" if nullable else "")
    return text, None


def _env_diagnostic(environment: Environment, variable: str, raw: str, problem: str) -> Diagnostic:
    origin = environment.origin(variable)
    shown = raw if len(raw) <= 30 else raw[:27] + "..."
    if origin.startswith("env "):
        file, line = "environment", 0
    else:
        file, line = origin.split(":", 1)[0], int(origin.split(":", 1)[1].split()[0])
    return Diagnostic(file, line, 0, Severity.ERROR, "env", f"{variable}={shown!r}: {problem}")


def _put(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _config_diagnostics(
    error: ValidationError,
    source_map: SourceMap | None,
    sources: Mapping[ConfigPath, str],
    environment: Environment,
) -> list[Diagnostic]:
    """Each error at its origin: the config file's line, the variable, or the flag."""
    out: list[Diagnostic] = []
    for item in error.errors(include_url=False):
        origin = sources.get(tuple(str(p) for p in item["loc"]), "")
        if origin.startswith("flag "):
            found = diagnostic_for(item, SourceMap(origin[5:]), EngineConfig)
            out.append(
                Diagnostic(
                    "command line",
                    0,
                    0,
                    Severity.ERROR,
                    found.code,
                    f"{origin[5:]}: {found.message}",
                )
            )
        elif origin.startswith(("env ", environment.dotenv_file)):
            variable = origin.split()[-1]
            found = diagnostic_for(item, SourceMap(variable), EngineConfig)
            raw = environment.get(variable) or ""
            out.append(_env_diagnostic(environment, variable, raw, found.message))
        else:
            out.append(diagnostic_for(item, source_map or SourceMap("(config)"), EngineConfig))
    return out
