"""Hostile input files and paths: every one is a user error (exit 2, at its file
and line), never an internal error, and one bad file of a multi-file
``aoe validate`` never hides the report on the others (issue 13, finding 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aoe.format.diagnostics import describe
from tests.conftest import RunCli, WriteFile


def workflow(agent_lines: str = "", top: str = "") -> str:
    """A valid workflow with lines added to its agent ``a`` (indented 4) and its top."""
    return (
        f"version: 1\nname: t\n{top}agents:\n  a:\n"
        "    llm: {provider: mock, model: gpt-4o-mini}\n"
        f"{agent_lines}"
    )


def no_internal_error(result: object) -> None:
    text = getattr(result, "stdout", "") + getattr(result, "stderr", "")
    assert "internal error" not in text
    assert "Traceback" not in text


# -- NUL characters in paths -------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "line"),
    [
        pytest.param('    prompt_file: "a\\0b.txt"\n', 6, id="prompt_file"),
        pytest.param('    prompt: hi\n    system_file: "a\\0b.txt"\n', 7, id="system_file"),
        pytest.param(
            '    prompt: hi\n    output: {format: json, schema_file: "s\\0.json"}\n',
            7,
            id="schema_file",
        ),
    ],
)
def test_nul_in_an_included_file_name(cli: RunCli, write: WriteFile, lines: str, line: int) -> None:
    path = write(workflow(lines))
    result = cli("validate", path)
    assert result.exit_code == 2
    assert f"{path}:{line}:" in result.stdout
    assert "NUL character" in result.stdout
    no_internal_error(result)


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("config", id="engine.state_dir"),
        pytest.param("dotenv", id="AOE_STATE_DIR-in-.env"),
    ],
)
def test_nul_in_the_state_dir(cli: RunCli, write: WriteFile, tmp_path: Path, how: str) -> None:
    path = write(workflow("    prompt: hi\n"))
    args: list[str | Path] = ["run", path, "--mock"]
    if how == "config":
        args += ["--config", write('engine:\n  state_dir: "st\\0ate"\n', "c.yaml")]
        where = f"{tmp_path / 'c.yaml'}:2:"
    else:
        (tmp_path / ".env").write_bytes(b"AOE_STATE_DIR=st\x00ate\n")
        where = ".env:1: error: AOE_STATE_DIR="
    result = cli(*args)
    assert result.exit_code == 2
    assert where in result.stderr
    assert "NUL character" in result.stderr
    no_internal_error(result)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        pytest.param("--config", "c\x00.yaml: error: the file name contains a NUL", id="config"),
        pytest.param("--inputs-file", "the file name contains a NUL", id="inputs-file"),
        pytest.param("--output", "--output 'o\\x00.json': the file name", id="output"),
        pytest.param("--junit", "--junit 'o\\x00.json': the file name", id="junit"),
    ],
)
def test_nul_in_a_path_option(cli: RunCli, write: WriteFile, option: str, message: str) -> None:
    path = write(workflow("    prompt: hi\n"))
    value = {"--config": "c\x00.yaml", "--inputs-file": "i\x00.yaml"}.get(option, "o\x00.json")
    result = cli("run", path, "--mock", option, value)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "started" not in result.stderr  # refused before the run, not after it
    no_internal_error(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["graph", "WF", "-o", "g\x00.txt"], "cannot write 'g\\x00.txt'", id="graph"),
        pytest.param(["schema", "-o", "s\x00.json"], "cannot write 's\\x00.json'", id="schema"),
        pytest.param(
            ["runs", "import", "r\x00.json"],
            "cannot read 'r\\x00.json': the file name",
            id="import",
        ),
    ],
)
def test_nul_in_other_commands_paths(
    cli: RunCli, write: WriteFile, args: list[str], message: str
) -> None:
    path = str(write(workflow("    prompt: hi\n")))
    result = cli(*[path if a == "WF" else a for a in args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "NUL character" in result.stderr
    no_internal_error(result)


def test_nul_in_a_file_of_a_multi_file_validate(cli: RunCli, write: WriteFile) -> None:
    good = write(workflow("    prompt: hi\n"), "good.yaml")
    result = cli("validate", "bad\x00.yaml", good)
    assert result.exit_code == 2
    assert "bad\x00.yaml: error: the file name contains a NUL character" in result.stdout
    assert f"{good}: valid (1 agent)" in result.stdout
    assert "2 files checked: 1 valid, 1 invalid" in result.stdout


# -- huge and odd numbers --------------------------------------------------------------------


HUGE_NUMBERS = [
    pytest.param("1" * 5000, id="decimal-5000-digits"),
    pytest.param("-" + "9" * 4400, id="negative-4400-digits"),
    pytest.param("0x" + "f" * 5000, id="hex-5000-digits"),
    pytest.param("0b" + "1" * 20000, id="binary-20000-digits"),
    pytest.param("0" + "7" * 5000, id="octal-5000-digits"),
    pytest.param("1_" * 3000 + "1", id="underscores"),
    pytest.param("1" + ":30" * 20000, id="base-60-20000-parts"),
    pytest.param("9223372036854775808", id="just-past-64-bits"),
]


@pytest.mark.parametrize("number", HUGE_NUMBERS)
def test_huge_integer_in_a_workflow(cli: RunCli, write: WriteFile, number: str) -> None:
    path = write(workflow(f"    prompt: hi\n    timeout: {number}\n"))
    result = cli("validate", path)
    assert result.exit_code == 2
    assert f"{path}:7:14: error: the integer " in result.stdout
    assert "is too large" in result.stdout
    no_internal_error(result)


@pytest.mark.parametrize("number", HUGE_NUMBERS)
def test_huge_integer_in_a_config_file(cli: RunCli, write: WriteFile, number: str) -> None:
    config = write(f"rate_limiting:\n  requests_per_minute: {number}\n", "c.yaml")
    result = cli("config", "show", "--config", config)
    assert result.exit_code == 2
    assert f"{config}:2:24: error: the integer " in result.stderr
    assert result.stderr.count("error:") == 1  # not again as a type error at the same place
    no_internal_error(result)


@pytest.mark.parametrize(
    ("where", "text"),
    [
        pytest.param("name", "name: 0x" + "f" * 5000, id="hex-where-a-string-goes"),
        pytest.param("x-tagged", "x-tagged: !!int 0x" + "f" * 5000, id="tagged-hex"),
        pytest.param("x-key", "x-big: " + "7" * 5000, id="in-an-extension-key"),
    ],
)
def test_huge_integer_anywhere(cli: RunCli, write: WriteFile, where: str, text: str) -> None:
    path = write(workflow("    prompt: hi\n", top=f"{text}\n"))
    result = cli("validate", path)
    assert result.exit_code == 2
    assert f"{path}:3:" in result.stdout
    assert "is too large" in result.stdout
    no_internal_error(result)


def test_huge_integer_in_a_type_error_message() -> None:
    """The message writer itself: a value past 4,300 digits cannot be str()'d."""
    assert describe(16**5000) == "an integer of about 6,021 digits"
    assert describe(2**64 - 1) == f"an integer ({2**64 - 1})"


@pytest.mark.parametrize(
    "number",
    [
        pytest.param(str(2**63 - 1), id="largest"),
        pytest.param(str(-(2**63)), id="smallest"),
        pytest.param("0x" + "0" * 100 + "1", id="long-but-small-hex"),
    ],
)
def test_integers_in_range_are_still_read(cli: RunCli, write: WriteFile, number: str) -> None:
    path = write(workflow("    prompt: hi\n", top=f"x-big: {number}\n"))
    result = cli("validate", path)
    assert result.exit_code == 0, result.stdout


@pytest.mark.parametrize(
    ("how", "value"),
    [
        pytest.param("-i", "1" * 5000, id="option-5000-digits"),
        pytest.param("-i", "0x" + "f" * 5000, id="option-hex"),
        pytest.param("file", "1" * 5000, id="inputs-file-5000-digits"),
        pytest.param("file", "1" + ":1" * 20000, id="inputs-file-base-60"),
    ],
)
def test_huge_integer_input(cli: RunCli, write: WriteFile, how: str, value: str) -> None:
    path = write(workflow("    prompt: '{{ inputs.n }}'\n", top="inputs:\n  n: {type: integer}\n"))
    if how == "-i":
        result = cli("run", path, "--mock", "-i", f"n={value}")
        assert "command line: error: -i n: the integer" in result.stderr
    else:
        inputs = write(f"n: {value}\n", "in.yaml")
        result = cli("run", path, "--mock", "--inputs-file", inputs)
        assert f"{inputs}:1:4: error: the integer" in result.stderr
    assert result.exit_code == 2
    no_internal_error(result)


# -- nesting past Python's stack ------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "line"),
    [
        pytest.param(
            '    prompt: "{{ ' + "(" * 80 + "1" + ")" * 80 + ' }}"\n', 6, id="template-80-parens"
        ),
        pytest.param(
            '    prompt: hi\n    when: "' + "(" * 80 + "1" + ")" * 80 + '"\n',
            7,
            id="when-80-parens",
        ),
        pytest.param(
            '    prompt: hi\n    foreach: "' + "[" * 200 + "]" * 200 + '"\n',
            7,
            id="foreach-200-brackets",
        ),
    ],
)
def test_deep_template_is_an_error_of_its_file(
    cli: RunCli, write: WriteFile, lines: str, line: int
) -> None:
    bad = write(workflow(lines), "bad.yaml")
    good = write(workflow("    prompt: hi\n"), "good.yaml")
    result = cli("validate", bad, good)
    assert result.exit_code == 2
    assert f"{bad}:{line}:" in result.stdout
    assert f"{good}: valid (1 agent)" in result.stdout
    no_internal_error(result)


def merge_chain(length: int) -> str:
    """Each mapping merges the one before: the source map follows the chain back."""
    lines = ["x-m0: &m0 {timeout: -1}"]
    lines += [f"x-m{i}: &m{i} {{<<: *m{i - 1}}}" for i in range(1, length)]
    return "\n".join(lines) + "\n"


def test_merge_key_chain_longer_than_the_stack(cli: RunCli, write: WriteFile) -> None:
    text = "version: 1\nname: t\n" + merge_chain(1200)
    text += "agents:\n  a:\n    <<: *m1199\n    llm: {provider: mock, model: m}\n    prompt: hi\n"
    path = write(text)
    result = cli("validate", path)
    assert result.exit_code == 2
    assert f"{path}:3:21: error: agents.a.timeout must be greater than 0" in result.stdout
    no_internal_error(result)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("x-deep: " + "[" * 10_000 + "]" * 10_000 + "\n", id="flow-lists"),
        pytest.param("x-deep: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n", id="flow-maps"),
        pytest.param(
            "x-deep:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 2000)), id="block"
        ),
    ],
)
def test_deep_yaml_in_a_workflow_and_a_config(cli: RunCli, write: WriteFile, text: str) -> None:
    path = write(workflow("    prompt: hi\n", top=text))
    result = cli("validate", path)
    assert result.exit_code == 2
    assert f"{path}:" in result.stdout
    assert "deep" in result.stdout
    no_internal_error(result)
    config = write(text.replace("x-deep", "engine"), "c.yaml")
    result = cli("config", "show", "--config", config)
    assert result.exit_code == 2
    assert f"{config}:" in result.stderr
    assert "deep" in result.stderr
    no_internal_error(result)


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("inputs-file-json", id="inputs-file-json"),
        pytest.param("option", id="option"),
    ],
)
def test_deep_inputs(cli: RunCli, write: WriteFile, how: str) -> None:
    path = write(workflow("    prompt: '{{ inputs.l }}'\n", top="inputs:\n  l: {type: list}\n"))
    deep = "[" * 10_000 + "]" * 10_000
    if how == "option":
        result = cli("run", path, "--mock", "-i", f"l={deep}")
        assert "command line: error: -i l: invalid YAML" in result.stderr
    else:
        inputs = write(f'{{"l": {deep}}}', "in.json")
        result = cli("run", path, "--mock", "--inputs-file", inputs)
        assert f"{inputs}:1:" in result.stderr
    assert result.exit_code == 2
    assert "deep" in result.stderr
    no_internal_error(result)


def test_deep_json_in_runs_import(cli: RunCli, write: WriteFile) -> None:
    export = write("[" * 100_000 + "]" * 100_000, "run.json")
    result = cli("runs", "import", export)
    assert result.exit_code == 2
    assert "nests too deeply to be a run export" in result.stderr
    no_internal_error(result)


# -- one file's trouble stays that file's ----------------------------------------------------


@pytest.mark.parametrize("debug", [pytest.param(False, id="plain"), pytest.param(True, id="debug")])
def test_unexpected_exception_is_an_error_of_one_file(
    cli: RunCli, write: WriteFile, monkeypatch: pytest.MonkeyPatch, debug: bool
) -> None:
    """A bug met while checking one file (here: planted) is that file's error; the
    other files are still checked and reported, and --debug shows the traceback."""
    from aoe.format import loader
    from aoe.format.loader.context import Context
    from aoe.format.loader.templates import check_outputs as checked

    def check_outputs(ctx: Context, outputs: object) -> object:
        if ctx.name.endswith("bad.yaml"):
            raise KeyError("planted")
        return checked(ctx, outputs)

    monkeypatch.setattr(loader, "check_outputs", check_outputs)
    first = write(workflow("    prompt: hi\n"), "first.yaml")
    bad = write(workflow("    prompt: hi\n"), "bad.yaml")
    last = write(workflow("    prompt: hi\n    timeout: 0\n"), "last.yaml")
    result = cli(*(["--debug"] if debug else []), "validate", first, bad, last)
    assert result.exit_code == 2
    lines = result.stdout.splitlines()
    assert f"{first}: valid (1 agent)" in lines
    assert f"{bad}: error: aoe could not check this file (KeyError: 'planted'); this is a bug" in (
        result.stdout
    )
    assert f"{last}:7:14: error: agents.a.timeout must be greater than 0" in result.stdout
    assert "3 files checked: 1 valid, 2 invalid" in lines
    assert ("Traceback" in result.stderr) is debug
    json_report = json.loads(cli("validate", bad, "-f", "json").stdout)
    assert [d["code"] for d in json_report] == ["internal"]
