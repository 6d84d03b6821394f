"""The layers of the engine config merged into one :class:`EngineConfig`: a
config file (or a config built in code), then the environment, then the
command line's flags; each value remembered with where it came from, and every
problem reported at its origin — the file's line, the variable, the flag.
:func:`aoe.config.settings.load_settings` drives it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from aoe.config.environment import (
    BUILTIN_BASE_URLS,
    BUILTIN_URL_VARIABLES,
    CONFIG_FILE_VARIABLE,
    ENVIRONMENT_VARIABLES,
    MOCK_LATENCY_VARIABLE,
    Environment,
)
from aoe.config.models import EngineConfig, ProviderSection, base_url_problem, url_problem
from aoe.errors import ConfigInvalid
from aoe.format.modelerrors import diagnostic_for, grouped, union_diagnostic, unwrap
from aoe.format.yamlsource import INT_MAX, INT_MIN, SourceMap, YamlError, parse_yaml, read_text
from aoe.types import Diagnostic, Severity

ConfigPath = tuple[str, ...]
"""A setting's place in the config: ``("rate_limiting", "requests_per_minute")``."""


def mask_url(value: Any) -> Any:
    """A URL with its password (``scheme://user:password@host``) hidden."""
    if not isinstance(value, str) or "@" not in value:
        return value
    return re.sub(r"(//[^@/:]*):[^@/]*@", r"\1:********@", value)


def leaves(value: Any, prefix: ConfigPath = ()) -> Iterator[tuple[ConfigPath, Any]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from leaves(item, (*prefix, str(key)))
    elif not isinstance(value, dict):
        yield prefix, value


class Layers:
    """The config's layers merged as they are read — a file (or a config built
    in code), then the environment, then the flags — with where each value came
    from and every problem found on the way."""

    def __init__(self, environment: Environment, diagnostics: list[Diagnostic]) -> None:
        self.environment = environment
        self.diagnostics = diagnostics
        self.merged: dict[str, Any] = {}
        self.sources: dict[ConfigPath, str] = {}
        self.ignored: dict[ConfigPath, str] = {}  # blank variables, noted beside their key
        self.source_map: SourceMap | None = None
        self.yaml_places: set[tuple[int, int]] = set()

    def from_code(self, config: EngineConfig) -> None:
        # exclude_unset: only what the caller set, so the environment still goes
        # over the defaults; and a null in per_provider stays an explicit null
        self.merged = config.model_dump(exclude_unset=True)
        for leaf, _ in leaves(self.merged):
            self.sources[leaf] = "code"

    def from_file(self, path: str, *, named: bool) -> None:
        """The config file; ``named``: by the flag (else by ``AOE_CONFIG``, which a
        message about a file that cannot be read then names)."""
        try:
            document = parse_yaml(read_text(path), path)
        except YamlError as e:
            found = list(e.diagnostics)
            if not named:  # say where the name came from
                origin = self.environment.origin(CONFIG_FILE_VARIABLE)
                found = [
                    d._replace(message=f"{d.message} (named by {origin})") if d.line <= 0 else d
                    for d in found
                ]
            raise ConfigInvalid([*self.diagnostics, *found]) from None
        self.source_map = document.source
        self.diagnostics.extend(document.diagnostics)
        self.yaml_places = {(d.line, d.column) for d in document.diagnostics}
        if not isinstance(document.data, dict):
            raise ConfigInvalid(
                [
                    *self.diagnostics,
                    document.source.diagnostic(
                        (),
                        "type",
                        "the config file must be a mapping of sections "
                        "(engine, rate_limiting, ...)",
                    ),
                ]
            )
        self.merged = document.data
        for leaf, _ in leaves(document.data):
            self.sources[leaf] = f"{path}:{document.source.value(leaf).line}"

    def from_environment(self) -> None:
        environment = self.environment
        for variable, target in ENVIRONMENT_VARIABLES.items():
            raw = environment.get(variable)
            if raw is None:
                blank = environment.blank(variable)
                if blank is not None:
                    self.ignored[target] = f"{blank} is empty: ignored"
                continue
            value, problem = _coerce(raw, target)
            if problem:
                self.diagnostics.append(_env_diagnostic(environment, variable, raw, problem))
                continue
            _put(self.merged, target, value)
            self.sources[target] = environment.origin(variable)

    def from_flags(self, flags: Mapping[str, tuple[Any, str]]) -> None:
        for key, (value, flag) in flags.items():
            target = tuple(key.split("."))
            _put(self.merged, target, value)
            self.sources[target] = f"flag {flag}"
            self.ignored.pop(target, None)

    def _providers_without_base_url(self) -> list[Diagnostic]:
        """What :func:`base_url_problem` says of each provider that is valid on
        its own, at its name in the file."""
        source = self.source_map or SourceMap("(config)")
        found = []
        for name, raw in _providers_of(self.merged):
            if name == "mock":  # (aoe's own: refused as such)
                continue
            try:
                section = ProviderSection.model_validate(raw)
            except ValidationError:
                continue  # its own errors are said
            problem = base_url_problem(str(name), section)
            if problem is not None:
                found.append(
                    source.diagnostic(("providers", name), "missing-base-url", problem, at_key=True)
                )
        return found

    def validate(self) -> EngineConfig | None:
        """The merged config, or None with its problems added, each at its origin."""
        merged = self.merged
        try:
            # Every section is validated inside EngineConfig's own validator; left out,
            # each would be made by its default factory, building its own validator too.
            for section in EngineConfig.model_fields:
                merged.setdefault(section, {})
            return EngineConfig.model_validate(merged)
        except ValidationError as e:
            found = _config_diagnostics(e, self.source_map, self.sources, self.environment)
            # each provider without the base_url it needs, at its own line, whatever
            # else is wrong (pydantic checks them only once every provider is valid)
            found = [d for d in found if d.code != "missing-base-url"]
            found += self._providers_without_base_url()
            source_map = self.source_map
            if source_map is not None:  # not again where the YAML itself was refused
                found = [
                    d
                    for d in found
                    if d.file != source_map.file or (d.line, d.column) not in self.yaml_places
                ]
            self.diagnostics.extend(found)
            return None


def _providers_of(merged: Mapping[str, Any]) -> list[tuple[str, Any]]:
    providers = merged.get("providers")
    return list(providers.items()) if isinstance(providers, dict) else []


def check_environment(environment: Environment) -> list[Diagnostic]:
    """The variables read outside the config's sections, checked now rather than
    at the first call: the built-in providers' URLs (their keys are sent there)
    and the mock's latency (an infinite one is a run that never ends)."""
    found = []
    for provider, variable in BUILTIN_URL_VARIABLES.items():
        url = environment.get(variable)
        problem = url_problem(url, BUILTIN_BASE_URLS[provider]) if url is not None else None
        if url is not None and problem is not None:
            found.append(_env_diagnostic(environment, variable, str(mask_url(url)), problem))
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
    for group in grouped(error.errors(include_url=False)):
        if isinstance(group, list):  # a value no member of a union took: said once
            item = {**group[0], "loc": group[0]["loc"][:-1]}
        else:
            item = group
        origin = sources.get(tuple(str(p) for p in item["loc"]), "")

        def said(source: SourceMap, group: Any = group, item: Any = item) -> Diagnostic:
            if isinstance(group, list):
                return union_diagnostic(group, source)
            return diagnostic_for(item, source, EngineConfig)

        if origin.startswith("flag "):
            found = said(SourceMap(origin[5:]))
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
            found = said(SourceMap(variable))
            raw = environment.get(variable) or ""
            out.append(_env_diagnostic(environment, variable, raw, found.message))
        else:
            out.append(said(source_map or SourceMap("(config)")))
    return out
