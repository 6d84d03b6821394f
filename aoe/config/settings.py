"""Engine configuration: command-line flags > environment (and ``.env``) > config file > defaults.

The config file (``--config FILE`` or ``AOE_CONFIG``) has the sections of the
deployment guide's ``config/production.yaml``: ``engine``, ``rate_limiting``,
``cost_tracking``, ``retry_policy``, ``monitoring``, ``providers`` and
``redis`` (their models: :mod:`aoe.config.models`). The environment variables
keep the guide's names (``RATE_LIMIT_RPM``, ``DEFAULT_WORKFLOW_BUDGET`` ...;
:mod:`aoe.config.environment`). :func:`load_settings` merges the layers,
validates the result with the same located diagnostics as workflow files, and
remembers where every value came from for ``aoe config show``. An
:class:`EngineConfig` built in code takes the config file's place, under the
same environment and flags. API keys stay in the environment; they are read
through :class:`Environment`, which never shows them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from aoe.config.environment import (
    AZURE_KEY_VARIABLE,
    BUILTIN_BASE_URLS,
    BUILTIN_KEY_VARIABLES,
    BUILTIN_URL_VARIABLES,
    CONFIG_FILE_VARIABLE,
    MOCK_LATENCY_VARIABLE,
    Environment,
    read_environment,
)
from aoe.config.layers import ConfigPath, Layers, check_environment, leaves, mask_url
from aoe.config.models import EngineConfig
from aoe.config.prices import BUILTIN_PRICES, Price, PriceTable
from aoe.errors import ConfigInvalid
from aoe.format.spec import BUILTIN_PROVIDERS


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

        A declared provider's own first: its ``prices`` (by the workflow's model
        name, then by the server's, its ``models`` alias), then its
        ``default_price``; then the price table (a dated snapshot takes its base
        model's price). The mock provider costs what the model it names costs,
        and nothing if that has no price.
        """
        declared = self.config.providers.get(provider)
        if declared is not None:
            own = declared.prices.get(model) or declared.prices.get(
                declared.models.get(model, model)
            )
            own = own or declared.default_price
            if own is not None:
                return Price(own.input, own.output)
        price = self.prices.lookup(model)
        if price is not None:
            return price
        if provider == "mock":
            return Price(0.0, 0.0)
        return None

    def api_key_variable(self, provider: str) -> str | None:
        """The environment variable that holds a provider's API key (None: needs no key)."""
        declared = self.config.providers.get(provider)
        if declared is not None and declared.type == "azure":  # Azure's own, unless told
            if "api_key_env" in declared.model_fields_set:
                return declared.api_key_env
            return AZURE_KEY_VARIABLE
        if provider in BUILTIN_KEY_VARIABLES:  # its vendor's variable, unless told another
            if declared is not None and "api_key_env" in declared.model_fields_set:
                return declared.api_key_env
            return BUILTIN_KEY_VARIABLES[provider]
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
        declared = self.config.providers.get(provider)
        if provider in BUILTIN_URL_VARIABLES:  # the environment's, the config's, the vendor's
            url_variable = BUILTIN_URL_VARIABLES[provider]
            url = self.environment.get(url_variable)
            if url is None and (declared is None or declared.base_url is None):
                return KeyRoute(provider, variable, BUILTIN_BASE_URLS[provider], "default")
            if url is not None:
                origin = self.environment.origin(url_variable)
                dotenv = origin if self.environment.from_dotenv(url_variable) else None
                return KeyRoute(provider, variable, url, origin, dotenv)
        if declared is None or declared.base_url is None:
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
                    f"'{provider}' sends {key} to {mask_url(route.url)}"
                )
            else:
                what = (
                    f"{variable} is set by {self.environment.dotenv_path} (line {line}): "
                    f"provider '{provider}' sends {key} to {mask_url(route.url)}"
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
        for path, value in leaves(self.config.model_dump(mode="json")):
            source = self._source_of(path)
            if path[:2] in (("rate_limiting", "per_provider"), ("rate_limiting", "per_model")) and (
                source == "default"
            ):
                continue  # not overridden there: the value above applies
            if (
                path[0] == "providers"
                and path[1] in BUILTIN_URL_VARIABLES
                and path[2:] == ("base_url",)
            ):
                continue  # a vendor's: its effective one follows (the environment's may win)
            rows.append(Setting(".".join(path), mask_url(value), source))
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
                Setting(f"providers.{provider}.base_url", mask_url(route.url), route.origin)
            )
        rows.extend(self._provider_rows())
        order = {name: i for i, name in enumerate(EngineConfig.model_fields)}
        rows.sort(key=lambda r: (order.get(r.key.split(".")[0], len(order)), r.key))
        return rows

    def _provider_rows(self) -> Iterator[Setting]:
        """Each provider's key (masked) and where it is sent, with who chose that."""
        for provider in self.provider_names:
            variable = self.api_key_variable(provider)
            if variable is not None:
                value = self.environment.get(variable)
                yield (
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
                yield (
                    Setting(
                        f"providers.{provider}.key_sent_to",
                        f"{route.variable or '(no key)'} -> {mask_url(route.url)}",
                        source,
                    )
                )

    def _source_of(self, path: ConfigPath) -> str:
        for cut in range(len(path), 0, -1):
            source = self.sources.get(path[:cut])
            if source is not None:
                return source
        return "default"


def load_settings(
    config_file: str | None = None,
    *,
    config: EngineConfig | None = None,
    flags: Mapping[str, tuple[Any, str]] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> Settings:
    """The effective engine configuration.

    ``flags`` maps a dotted key (``monitoring.log_format``) to its value and the
    option that set it (``--log-format``). ``environ`` defaults to the process
    environment; a ``.env`` file in ``cwd`` (default: the working directory)
    is read under it. Raises :class:`ConfigInvalid` with every problem found.

    ``config``, an :class:`EngineConfig` built in code, takes the config file's
    place: the values it was given (not its defaults) are the bottom layer, the
    environment and the flags go over them, and the result is validated as a
    file's would be (its values' source is ``code``). With it, neither
    ``config_file`` nor ``AOE_CONFIG`` is read.
    """
    if config is not None and config_file is not None:
        raise ValueError("give the engine config as a file or as an EngineConfig, not both")
    directory = Path(cwd) if cwd is not None else Path.cwd()
    environment, diagnostics = read_environment(
        os.environ if environ is None else environ, directory
    )
    layers = Layers(environment, diagnostics)
    path: str | None = None
    named_by = None
    if config is not None:
        layers.from_code(config)
    else:
        path = config_file or environment.get(CONFIG_FILE_VARIABLE)
        if path:
            named_by = "flag --config" if config_file else environment.origin(CONFIG_FILE_VARIABLE)
            layers.from_file(path, named=config_file is not None)
    layers.from_environment()
    layers.from_flags(flags or {})
    diagnostics.extend(check_environment(environment))
    validated = layers.validate()
    if diagnostics or validated is None:
        # each source's in the order of its lines (the environment's, the
        # command line's and the file's apart, each where it first appears)
        first = {d.file: i for i, d in reversed(list(enumerate(diagnostics)))}
        raise ConfigInvalid(sorted(diagnostics, key=lambda d: (first[d.file], d.line, d.column)))
    sources = layers.sources
    for target, note in layers.ignored.items():
        sources[target] = f"{sources.get(target, 'default')}; {note}"
    prices = dict(BUILTIN_PRICES)
    for model, price in validated.cost_tracking.model_costs.items():
        prices[model] = Price(price.input, price.output)
    return Settings(
        validated,
        environment,
        path or None,
        sources,
        PriceTable(prices),
        tuple(dict.fromkeys((*BUILTIN_PROVIDERS, *validated.providers))),
        named_by,
    )
