"""The command line as users meet it: exit codes, output streams, help, errors."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from aoe import __version__
from aoe.cli.ui.text import format_diagnostic, use_colour
from aoe.types import Diagnostic, Severity
from tests.conftest import REPO, VALID, WORKFLOWS, RunCli, WriteFile, child_env


def test_version(cli: RunCli) -> None:
    result = cli("--version")
    assert (result.exit_code, result.stdout) == (0, f"aoe {__version__}\n")


def test_help_lists_commands_and_each_has_an_example(cli: RunCli) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("validate", "graph", "schema", "config"):
        assert command in result.stdout
    for words in (["validate"], ["graph"], ["schema"], ["config", "show"]):
        text = cli(*words, "--help").stdout
        assert "Example" in text, words
        assert "aoe " in text, words


def test_unknown_option_is_a_usage_error(cli: RunCli, write: WriteFile) -> None:
    result = cli("validate", "--colour", write(VALID))
    assert result.exit_code == 2
    assert "No such option" in result.stderr


def test_debug_shows_the_traceback_of_a_user_error(cli: RunCli, write: WriteFile) -> None:
    path = write("version: 1\nname: x\nagents:\n  a: {prompt: hi, depends_on: a}\n")
    quiet = cli("graph", path)
    assert quiet.exit_code == 2
    assert "Traceback" not in quiet.stderr
    loud = cli("--debug", "graph", path)
    assert loud.exit_code == 2
    assert "Traceback" in loud.stderr
    assert "WorkflowInvalid" in loud.stderr
    assert "depends on itself" in loud.stderr


def test_debug_may_come_after_the_command(cli: RunCli, write: WriteFile) -> None:
    """Issue 16: `aoe graph wf.yaml --debug` said "No such option"."""
    path = write("version: 1\nname: x\nagents:\n  a: {prompt: hi, depends_on: a}\n")
    loud = cli("graph", path, "--debug")
    assert loud.exit_code == 2
    assert "Traceback" in loud.stderr
    # after `--`, it is an argument like any other
    assert "No such option" not in cli("graph", "--", path).stderr


def test_a_mistyped_command_gets_one_suggestion(cli: RunCli) -> None:
    result = cli("rn")
    assert result.exit_code == 2
    assert result.stderr.count("Did you mean") == 1
    assert "'run'" in result.stderr


def test_help_examples_are_each_on_a_line_of_their_own(cli: RunCli) -> None:
    """They sat on one line joined by ` | `, next to real pipes."""
    text = cli("graph", "--help").stdout
    lines = [line.strip(" │") for line in text.splitlines()]
    assert "aoe graph wf.yaml" in lines
    assert "aoe graph wf.yaml --format dot | dot -Tsvg > wf.svg" in lines
    assert not any("  |  " in line for line in lines)


def test_shell_completion_for_bash(tmp_path: Path) -> None:
    """`aoe completion bash` prints a script; bash, given it, completes commands
    and options by asking aoe."""
    if shutil.which("bash") is None:
        pytest.skip("no bash here")
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "aoe").exists():
        pytest.skip("the aoe console script is not installed beside this Python")
    script = (
        'eval "$(aoe completion bash)"\n'
        "for words in 'aoe runs pr' 'aoe run wf.yaml --no-c' 'aoe vali'; do\n"
        '  read -ra COMP_WORDS <<< "$words"; COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n'
        '  _aoe_completion aoe; echo "${COMPREPLY[*]}"\n'
        "done\n"
    )
    env = child_env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["prune", "--no-cache", "validate"]
    for shell in ("zsh", "fish"):
        shown = subprocess.run(
            [sys.executable, "-m", "aoe", "completion", shell],
            capture_output=True,
            text=True,
            env=env,
        )
        assert shown.returncode == 0
        assert "_AOE_COMPLETE" in shown.stdout


def test_debug_holds_for_its_own_invocation_only(cli: RunCli, write: WriteFile) -> None:
    # --debug travels in Typer's context, not a module global: in one process
    # (as here, and in anything that embeds the app) it must not carry over
    path = write("version: 1\nname: x\nagents:\n  a: {prompt: hi, depends_on: a}\n")
    assert "Traceback" in cli("--debug", "graph", path).stderr
    assert "Traceback" not in cli("graph", path).stderr


def test_an_internal_error_is_short_unless_debug(
    cli: RunCli, write: WriteFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aoe.service.runner

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(aoe.service.runner, "validate", broken)
    result = cli("validate", write(VALID))
    assert result.exit_code == 1
    assert "internal error: RuntimeError: boom" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Traceback" in cli("--debug", "validate", write(VALID)).stderr


def test_unwritable_output_file(cli: RunCli, tmp_path: Path) -> None:
    result = cli("schema", "-o", tmp_path / "no" / "such" / "dir" / "s.json")
    assert result.exit_code == 2
    assert "cannot write" in result.stderr
    assert "Traceback" not in result.stderr


def test_colour_only_on_a_terminal_and_never_with_no_color(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_colour(Terminal())
    assert not use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Terminal())
    d = Diagnostic("f.yaml", 3, 4, Severity.ERROR, "x", "bad")
    assert format_diagnostic(d) == "f.yaml:3:4: error: bad"
    assert "\x1b[" in format_diagnostic(d, colour=True)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO, check=False
    )


@pytest.mark.slow
@pytest.mark.subprocess
def test_python_dash_m_and_exit_codes_in_a_real_process(write: WriteFile) -> None:
    assert run("-m", "aoe", "--version").stdout == f"aoe {__version__}\n"
    ok = run("-m", "aoe", "validate", "workflows/competitor-brief.yaml")
    assert (ok.returncode, ok.stderr) == (0, "")
    bad = run("-m", "aoe", "validate", str(write("version: 1\nname: x\nagents: []\n")))
    assert bad.returncode == 2
    assert "agents must be a mapping" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr


@pytest.mark.subprocess
def test_validate_does_not_import_heavy_optional_modules() -> None:
    result = run("-X", "importtime", "-m", "aoe", "validate", *map(str, WORKFLOWS.glob("*.yaml")))
    assert result.returncode == 0, result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    for heavy in ("openai", "anthropic", "redis", "prometheus_client", "rich", "httpx"):
        assert heavy not in imported, heavy


# -- aoe schema -------------------------------------------------------------------------------


def schema(cli: RunCli) -> dict[str, object]:
    result = cli("schema")
    assert result.exit_code == 0
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def test_schema_validates_every_example(cli: RunCli) -> None:
    import jsonschema
    import yaml

    validator = jsonschema.Draft202012Validator(schema(cli))
    validator.check_schema(validator.schema)
    examples = sorted(WORKFLOWS.glob("*.yaml"))
    assert len(examples) >= 4
    for path in examples:
        errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
        assert errors == [], (path, [e.message for e in errors])


def test_schema_rejects_unknown_keys_and_bad_values(cli: RunCli) -> None:
    import jsonschema
    import yaml

    validator = jsonschema.Draft202012Validator(schema(cli))
    document = yaml.safe_load(VALID)
    document["agents"]["first"]["depend_on"] = ["x"]
    assert any("depend_on" in e.message for e in validator.iter_errors(document))
    document = yaml.safe_load(VALID)
    document["agents"]["first"]["llm"] = {"temperature": 9}
    assert list(validator.iter_errors(document))
    document = yaml.safe_load(VALID)
    document["x-anchors"] = {"anything": True}  # extension fields are allowed
    assert list(validator.iter_errors(document)) == []
    del document["agents"]["first"]["prompt"]
    assert list(validator.iter_errors(document))  # a prompt or a prompt_file is required


def test_shipped_schema_file_is_up_to_date(cli: RunCli) -> None:
    shipped = json.loads((REPO / "workflow.schema.json").read_text())
    assert shipped == schema(cli), "run: aoe schema -o workflow.schema.json"


def test_an_internal_signal_that_escapes_is_reported_as_a_bug() -> None:
    """Signals are in the error tree so that no ``except AoeError`` mistakes them
    for a third party's error; one that reaches the command line is a bug, and
    says so, rather than passing for a user's mistake."""
    from typer.testing import CliRunner

    from aoe.cli.common import handle_errors
    from aoe.errors import Signal

    app = typer.Typer()

    @app.command()
    def leak(ctx: typer.Context) -> None:
        with handle_errors(ctx):
            raise Signal("superseded")

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 1
    assert "internal error: Signal: superseded" in result.output
    assert "This is a bug in aoe" in result.output


def test_the_results_schema_is_shipped_and_up_to_date(cli: RunCli) -> None:
    shipped = json.loads((REPO / "results.schema.json").read_text())
    printed = json.loads(cli("schema", "--results").stdout)
    assert shipped == printed, "run: aoe schema --results -o results.schema.json"
    assert printed["title"] == "aoe run results"
    assert printed["properties"]["results_version"]["const"] == 1


def test_a_results_document_is_valid_against_the_shipped_schema(
    cli: RunCli, write: WriteFile
) -> None:
    """As a pipeline would check it: with a JSON Schema validator, not aoe's models."""
    import jsonschema

    schema = json.loads((REPO / "results.schema.json").read_text())
    path = write(
        "version: 1\nname: w\noutputs: {answer: '{{ agents.b.output }}'}\nagents:\n"
        "  a: {prompt: hi, foreach: '[1, 2]', llm: {provider: mock, model: gpt-4o,"
        " max_tokens: 20}}\n"
        "  b: {prompt: '{{ agents.a.output }}', depends_on: a, llm: {provider: mock,"
        " model: gpt-4o, max_tokens: 20}, output: {format: json}}\n"
    )
    document = json.loads(cli("run", path, "--mock", "--output", "-", "-q").stdout)
    jsonschema.Draft202012Validator(schema).validate(document)
    assert document["results_version"] == 1
    for amount in [document["cost_usd"], *(a["cost_usd"] for a in document["agents"].values())]:
        assert amount == round(amount, 6)  # to the micro-dollar
