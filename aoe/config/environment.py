"""The environment the engine reads: variables with a ``.env`` file under them.

The variables keep the deployment guide's names (``RATE_LIMIT_RPM``,
``DEFAULT_WORKFLOW_BUDGET`` ...; :data:`ENVIRONMENT_VARIABLES` says where each
goes in the config). :class:`Environment` is given its variables explicitly
(``environ``), so a test or a library is not at the mercy of ``os.environ``;
only :func:`env_value` and the callers that pass ``os.environ`` read the
process's own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from aoe.format.files import FileRefused, read_limited
from aoe.types import Diagnostic, Severity

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
AZURE_KEY_VARIABLE = "AZURE_OPENAI_API_KEY"
"""The key of an Azure OpenAI provider (``type: azure``) unless it names another."""
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


def read_environment(
    environ: Mapping[str, str], directory: Path
) -> tuple[Environment, list[Diagnostic]]:
    """The variables of ``environ`` over the ``.env`` file in ``directory`` (if
    any), and the problems of reading that file."""
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
