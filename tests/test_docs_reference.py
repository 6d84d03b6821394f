"""The reference pages hold: docs/python-api.md names every public name of
``aoe`` and every field of its result types, and its examples run as written;
docs/configuration.md names every key of the config file with its default,
every environment variable with the key it sets, every preset, and its
config files load (or, for its broken example, fail as the page says)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import aoe
from tests.conftest import REPO, RunCli, child_env

PYTHON_PAGE = REPO / "docs" / "python-api.md"
CONFIG_PAGE = REPO / "docs" / "configuration.md"
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", PYTHON_PAGE.read_text(encoding="utf-8"), re.S)
YAML_BLOCKS = re.findall(r"```yaml\n(.*?)```", CONFIG_PAGE.read_text(encoding="utf-8"), re.S)
BROKEN = "# bad.yaml\n"  # the first line of the page's invalid config file


def section(page: str, heading: str) -> str:
    """The text under ``heading`` (a whole line) up to the next heading of its level
    or above (a ``#`` comment in a code block is not a heading)."""
    level = len(heading.split(" ", 1)[0])
    lines = page.splitlines()
    start = lines.index(heading)
    fenced = False
    for end in range(start + 1, len(lines)):
        line = lines[end]
        fenced ^= line.startswith("```")
        if not fenced and re.match(rf"#{{1,{level}}} ", line):
            return "\n".join(lines[start + 1 : end])
    return "\n".join(lines[start + 1 :])


def row(text: str, key: str) -> list[str]:
    """The cells of the table row whose first cell is `key`; [] if there is none."""
    for line in text.splitlines():
        if line.startswith(f"| `{key}` |"):
            return [cell.strip() for cell in line.strip().strip("|").split(" | ")]
    return []


# -- docs/python-api.md ---------------------------------------------------------------------


def test_the_python_page_names_every_public_name() -> None:
    page = PYTHON_PAGE.read_text(encoding="utf-8")
    missing = [n for n in aoe.__all__ if f"`aoe.{n}`" not in page and f"`{n}`" not in page]
    assert missing == []


@pytest.mark.parametrize(
    ("kind", "heading"),
    [
        (aoe.RunOptions, "## `aoe.RunOptions`"),
        (aoe.RunResult, "## `aoe.RunResult` and `aoe.AgentResult`"),
        (aoe.AgentResult, "## `aoe.RunResult` and `aoe.AgentResult`"),
        (aoe.EngineStatus, "## `aoe.EngineStatus`"),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_the_python_page_lists_every_field(kind: type[Any], heading: str) -> None:
    """A field added to a result or option type, and not to its table, fails here."""
    text = section(PYTHON_PAGE.read_text(encoding="utf-8"), heading)
    missing = [f.name for f in dataclasses.fields(kind) if not row(text, f.name)]
    assert missing == []


def test_the_python_page_lists_the_settings_and_the_engine() -> None:
    page = PYTHON_PAGE.read_text(encoding="utf-8")
    settings = section(page, "## Settings: `aoe.load_settings`, `aoe.Settings`")
    missing = [f"Settings.{name}" for name in aoe.Settings._fields if not row(settings, name)]
    engine = section(page, "## `aoe.Engine`")
    public = [
        name
        for name, value in vars(aoe.Engine).items()
        if not name.startswith("_") and callable(value)
    ]
    missing += [f"Engine.{name}" for name in public if f"engine.{name}(" not in engine]
    assert missing == []


def test_the_python_page_names_every_event_and_its_fields() -> None:
    from aoe.events import Event

    text = section(PYTHON_PAGE.read_text(encoding="utf-8"), "## `aoe.Event`")
    missing = []
    for kind in Event.__subclasses__():
        cells = row(text, kind.__name__)
        if not cells:
            missing.append(kind.__name__)
            continue
        missing += [
            f"{kind.__name__}.{f.name}"
            for f in dataclasses.fields(kind)
            if f.name not in ("run_id", "at") and f"`{f.name}`" not in cells[1]
        ]
    assert missing == []


def test_the_python_page_has_its_examples() -> None:
    assert len(PYTHON_BLOCKS) >= 10


@pytest.mark.subprocess
@pytest.mark.parametrize("number", range(len(PYTHON_BLOCKS)), ids=lambda n: f"block{n + 1}")
def test_each_python_example_runs(number: int, tmp_path: Path) -> None:
    """Each block as a program of its own, from the repository's root, offline
    (no API keys), with the run store, if any, in the test's folder: nothing is
    written to the checkout."""
    block = PYTHON_BLOCKS[number]
    script = tmp_path / f"block{number + 1}.py"
    script.write_text(block, encoding="utf-8")
    store_before = (REPO / ".aoe").exists()
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=child_env(AOE_STATE_DIR=str(tmp_path / "state")),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"block {number + 1}:\n{block}\n{done.stderr}"
    assert (REPO / ".aoe").exists() == store_before


# -- docs/configuration.md ------------------------------------------------------------------


def test_the_config_page_names_every_environment_variable() -> None:
    """Each variable that sets a key is in the table with that key; the others
    (keys, URLs, the config file, the mock's latency, the presets' keys) are named."""
    from aoe.config import environment
    from aoe.config.models import PRESETS

    page = CONFIG_PAGE.read_text(encoding="utf-8")
    text = section(page, "## Environment variables")
    missing = [
        variable
        for variable, target in environment.ENVIRONMENT_VARIABLES.items()
        if row(text, variable)[1:2] != [f"`{'.'.join(target)}`"]
    ]
    others = [
        *environment.BUILTIN_KEY_VARIABLES.values(),
        *environment.BUILTIN_URL_VARIABLES.values(),
        environment.CONFIG_FILE_VARIABLE,
        environment.AZURE_KEY_VARIABLE,
        environment.MOCK_LATENCY_VARIABLE,
        *(p["api_key_env"] for p in PRESETS.values() if "api_key_env" in p),
        "AOE_API_TOKEN",
        "AOE_SERVE_URL",
    ]
    missing += [variable for variable in others if not row(text, variable)]
    assert missing == []


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds: ``X``, ``dict[str, X]``, ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _keys(model: type[BaseModel]) -> list[str]:
    """Every field of ``model`` and of the models under it."""
    names = []
    for name, field in model.model_fields.items():
        names.append(name)
        for inner in _models_in(field.annotation):
            names += _keys(inner)
    return names


def _keys_of(annotation: Any) -> list[str]:
    """Every key of the models an annotation holds, and of the models under them."""
    return [key for model in _models_in(annotation) for key in _keys(model)]


def _shown(value: Any) -> str:
    """A default as the page writes it: YAML's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def test_the_config_page_names_every_key_with_its_default() -> None:
    """Each section has its heading; every key of the section (and of the models
    under it: per_provider's limits, a price, a provider) is named there; and every
    key of a section's table shows the model's default."""
    from pydantic_core import PydanticUndefined

    from aoe.config.models import EngineConfig

    page = CONFIG_PAGE.read_text(encoding="utf-8")
    missing = []
    for name, field in EngineConfig.model_fields.items():
        heading = f"### `{name}`"
        if heading not in page.splitlines():
            missing.append(heading)
            continue
        text = section(page, heading)
        missing += [f"{name}.{key}" for key in _keys_of(field.annotation) if f"`{key}`" not in text]
        for model in _models_in(field.annotation):
            for key, spec in model.model_fields.items():
                cells = row(text, key)
                if spec.default_factory is not None:
                    expected = "`{}`"
                elif spec.default is PydanticUndefined:
                    continue
                else:
                    expected = f"`{_shown(spec.default)}`"
                if cells[1:2] != [expected]:
                    missing.append(f"{name}.{key} = {expected}")
    assert missing == []


def test_the_config_page_names_every_preset_with_its_address_and_key() -> None:
    from aoe.config.models import PRESETS

    text = section(CONFIG_PAGE.read_text(encoding="utf-8"), "#### Presets")
    missing = []
    for name, preset in PRESETS.items():
        cells = row(text, name)
        wanted = [preset["base_url"], preset.get("api_key_env") or "none"]
        missing += [f"{name}: {w}" for w in wanted if w not in " ".join(cells)]
    assert missing == []


def test_the_config_page_has_its_examples() -> None:
    assert len(YAML_BLOCKS) >= 6
    assert sum(block.startswith(BROKEN) for block in YAML_BLOCKS) == 1


@pytest.mark.parametrize("number", range(len(YAML_BLOCKS)), ids=lambda n: f"yaml{n + 1}")
def test_each_config_example_is_as_the_page_says(cli: RunCli, tmp_path: Path, number: int) -> None:
    """Each config file on the page loads; the broken one fails with exactly the
    lines the page shows, and exit code 2."""
    from aoe.config.settings import load_settings

    block = YAML_BLOCKS[number]
    if not block.startswith(BROKEN):
        path = tmp_path / "aoe.yaml"
        path.write_text(block, encoding="utf-8")
        load_settings(str(path), environ={}, cwd=tmp_path)
        return
    (tmp_path / "bad.yaml").write_text(block, encoding="utf-8")
    result = cli("config", "show", "--config", "bad.yaml")  # (the cli fixture runs in tmp_path)
    shown = [
        line
        for line in CONFIG_PAGE.read_text(encoding="utf-8").splitlines()
        if line.startswith("bad.yaml:")
    ]
    assert result.exit_code == 2
    assert result.stderr.splitlines() == shown
