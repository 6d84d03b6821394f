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

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from aoe.diagnostics import Diagnostic, Severity
from aoe.errors import ConfigInvalid
from aoe.modelerrors import diagnostic_for, unwrap
from aoe.pricing import BUILTIN_PRICES, Price, PriceTable
from aoe.spec import BUILTIN_PROVIDERS, check_delays
from aoe.yamlsource import SourceMap, YamlError, parse_yaml, read_text


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)


class EngineSection(_Section):
    """The engine process."""

    max_concurrent_workflows: int = Field(
        default=50, ge=1, description="Runs one engine (aoe serve, a worker) runs at once."
    )
    state_dir: str = Field(
        default=".aoe", min_length=1, description="Where run records and the cache live."
    )


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
        if not re.match(r"https?://[^/\s]+", value):
            raise PydanticCustomError(
                "url", "must be an http:// or https:// URL, e.g. http://localhost:11434/v1", {}
            )
        return value

    @field_validator("api_key_env")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise PydanticCustomError(
                "variable_name",
                "must be the name of an environment variable (letters, digits and "
                "underscores), not its value",
                {},
            )
        return value


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


class Environment:
    """Environment variables, with a ``.env`` file under them; never printed whole.

    Values set in the real environment win over the ``.env`` file, as with
    every other tool that reads one.
    """

    __slots__ = ("_dotenv_file", "_dotenv_lines", "_values")

    def __init__(
        self,
        environ: Mapping[str, str],
        dotenv: Mapping[str, tuple[str, int]] | None = None,
        dotenv_file: str = ".env",
    ) -> None:
        self._values: dict[str, tuple[str, str]] = {}
        self._dotenv_lines: dict[str, int] = {}
        self._dotenv_file = dotenv_file
        for name, (value, line) in (dotenv or {}).items():
            self._values[name] = (value, dotenv_file)
            self._dotenv_lines[name] = line
        for name, value in environ.items():
            self._values[name] = (value, "env")
            self._dotenv_lines.pop(name, None)

    def __repr__(self) -> str:
        return f"Environment({len(self._values)} variables)"

    def get(self, name: str) -> str | None:
        entry = self._values.get(name)
        return entry[0] if entry is not None else None

    def origin(self, name: str) -> str:
        """``env NAME`` or ``.env:LINE NAME``: where a variable was set."""
        line = self._dotenv_lines.get(name)
        return f"{self._dotenv_file}:{line} {name}" if line is not None else f"env {name}"

    def __contains__(self, name: object) -> bool:
        return name in self._values

    @property
    def dotenv_file(self) -> str:
        return self._dotenv_file


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
        for provider in ("openai", "anthropic"):
            url_var = BUILTIN_URL_VARIABLES[provider]
            url = self.environment.get(url_var)
            rows.append(
                Setting(
                    f"providers.{provider}.base_url",
                    _mask_url(url) if url else "(SDK default)",
                    self.environment.origin(url_var) if url else "default",
                )
            )
        for provider in self.provider_names:
            variable = self.api_key_variable(provider)
            if variable is None:
                continue
            value = self.environment.get(variable)
            rows.append(
                Setting(
                    f"providers.{provider}.api_key",
                    value,
                    self.environment.origin(variable) if value else f"unset: {variable}",
                    secret=True,
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
    if path:
        try:
            document = parse_yaml(read_text(path), path)
        except YamlError as e:
            found = e.diagnostics
            if not config_file:  # say where the name came from
                origin = environment.origin(CONFIG_FILE_VARIABLE)
                found = [
                    d._replace(message=f"{d.message} (named by {origin})") if d.line <= 0 else d
                    for d in found
                ]
            raise ConfigInvalid([*diagnostics, *found]) from None
        source_map = document.source
        diagnostics.extend(document.diagnostics)
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

    for variable, target in ENVIRONMENT_VARIABLES.items():
        raw = environment.get(variable)
        if raw is None:
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

    try:
        # Every section is validated inside EngineConfig's own validator; left out,
        # each would be made by its default factory, building its own validator too.
        for section in EngineConfig.model_fields:
            merged.setdefault(section, {})
        config = EngineConfig.model_validate(merged)
    except ValidationError as e:
        diagnostics.extend(_config_diagnostics(e, source_map, sources, environment))
    if diagnostics:
        raise ConfigInvalid(diagnostics)
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
    )


def _read_environment(
    environ: Mapping[str, str], directory: Path
) -> tuple[Environment, list[Diagnostic]]:
    dotenv_path = directory / ".env"
    dotenv: dict[str, tuple[str, int]] = {}
    diagnostics: list[Diagnostic] = []
    if dotenv_path.is_file():
        try:
            dotenv = parse_dotenv(dotenv_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            diagnostics.append(
                Diagnostic(".env", 0, 0, Severity.ERROR, "io", f"cannot read .env: {e}")
            )
    return Environment(environ, dotenv), diagnostics


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
            return int(text), None
        except ValueError:
            return None, "must be a whole number" + (" or none" if nullable else "")
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
