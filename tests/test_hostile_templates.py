"""Hostile templates and schemas, from outside: what `aoe validate` and `aoe run` say,
how long a run takes and how much the aoe process grows.

What can be seen in the text is refused when the file is read (exit 2 at its
line); what depends on the values is stopped in the sandbox process while the
run goes on: the agent fails with the reason, the others are not held up, and
the aoe process itself stays small.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import RunCli, WriteFile, child_env

_NESTED = "(" * 80 + "1" + ")" * 80


@pytest.mark.parametrize(
    ("field", "message"),
    [
        pytest.param(
            'prompt: "{% for i in range(100000) %}{% for j in range(5000) %}{% endfor %}'
            '{% endfor %}"',
            "its loops would run 500,000,000 times",
            id="nested-loops",
        ),
        pytest.param('prompt: "{{ 2**(2**33) }}"', "too large a number", id="power"),
        pytest.param('prompt: "{{ lipsum(n=10**7) }}"', "lipsum() may make 100", id="lipsum"),
        pytest.param(
            "prompt: \"{{ ('x' * 3000000000)|length }}\"", "3,000,000,000 times", id="repetition"
        ),
        pytest.param(f'prompt: "{{{{ {_NESTED} }}}}"', "nested too deeply", id="parentheses"),
        pytest.param(f'when: "{_NESTED} == 1"', "nested too deeply", id="when-parentheses"),
        pytest.param('foreach: "[1] * 10**9"', "would be too large", id="foreach-repetition"),
        pytest.param(
            "output: {format: json, schema: {type: string, minLength: 2000000000}}",
            "at least 2,000,000,002 characters, more than max_tokens",
            id="schema-min-length",
        ),
        pytest.param(
            "output: {format: json, schema: {type: array, minItems: 20000000}}",
            "at least 40,000,002 characters, more than max_tokens",
            id="schema-min-items",
        ),
    ],
)
def test_what_the_text_shows_is_refused_at_validation(
    cli: RunCli, write: WriteFile, field: str, message: str
) -> None:
    extra = "" if field.startswith("prompt:") else "prompt: hi\n    "
    path = write(
        "version: 1\nname: hostile\nagents:\n"
        "  fine:\n    llm: {provider: mock, model: m}\n    prompt: hello\n"
        f"  bad:\n    llm: {{provider: mock, model: m}}\n    {extra}{field}\n"
    )
    line = 9 if field.startswith("prompt:") else 10
    for command in (["validate", str(path)], ["run", str(path), "--mock", "-q"]):
        result = cli(*command)
        assert result.exit_code == 2, result.stdout + result.stderr
        shown = result.stdout + result.stderr
        assert f"{path.name}:{line}:" in shown, shown
        assert message in shown
        assert "Traceback" not in shown


HOSTILE = """\
version: 1
name: hostile-values
inputs:
  n: {type: integer, default: 100000}
allow_partial_completion: true
agents:
  loops:
    llm: {provider: mock, model: m}
    prompt: "{% for i in range(inputs.n) %}{% for j in range(inputs.n) %}{% endfor %}{% endfor %}"
  doubling:
    llm: {provider: mock, model: m}
    prompt: >-
      {% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}
      {%- endfor %}{{ ns.s | length }}
  repeat:
    llm: {provider: mock, model: m}
    prompt: "{{ 'x' * inputs.n * inputs.n }}"
  condition:
    llm: {provider: mock, model: m}
    prompt: hi
    when: "range(inputs.n) | map('string') | join | length > 0 and 9 ** inputs.n"
  fan:
    llm: {provider: mock, model: m}
    prompt: "{{ item }}"
    foreach: "range(inputs.n) | list"
  long_text:
    llm: {provider: mock, model: m, max_tokens: 1000000}
    prompt: hi
    output: {format: json, schema: {type: string, minLength: 50000000}}
  many_items:
    llm: {provider: mock, model: m, max_tokens: 1000000}
    prompt: hi
    output: {format: json, schema: {type: array, minItems: 20000000}}
  fine:
    llm: {provider: mock, model: m}
    prompt: "{% if inputs.n > 1 %}n is {{ inputs.n + 1 }}{% endif %}"
outputs:
  fine: "{{ agents.fine.output | upper }}"
  big: "{{ range(100000) | join(',') * 100 }}"
"""

_PEAK = """\
import atexit, sys
def peak():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                sys.stderr.write("PEAK " + line.split()[1] + "\\n")
atexit.register(peak)
sys.argv = ["aoe", *sys.argv[1:]]
from aoe.cli.main import main
main()
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_values_that_make_templates_costly_fail_their_agents_only(tmp_path: Path) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_text(HOSTILE)
    result = subprocess.run(
        [sys.executable, "-c", _PEAK, "run", str(path), "--mock", "-q", "--output", "-"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=child_env(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr  # partial completion is allowed
    assert "Traceback" not in result.stderr
    results = json.loads(result.stdout)
    errors = {name: agent["error"] for name, agent in results["agents"].items()}
    assert results["agents"]["fine"]["state"] == "completed"
    assert "took longer than 2 s" in errors["loops"]
    assert "more than the 100 MiB of memory" in errors["doubling"]
    assert "would be too large" in errors["repeat"]
    assert "when condition could not be evaluated" in errors["condition"]
    assert "gave 100,000 items" in errors["fan"]
    assert "is too short" in errors["long_text"]
    assert "is too short" in errors["many_items"]
    assert results["outputs"]["fine"].startswith("MOCK ANSWER")
    assert "would be too large" in results["output_errors"]["big"]
    peak_kb = int(next(line for line in result.stderr.splitlines() if line.startswith("PEAK"))[5:])
    # the aoe process itself: its own size, not its sandbox's; a plain run peaks near 50 MB
    assert peak_kb < 150_000, f"aoe grew to {peak_kb / 1000:.0f} MB"


def test_a_hostile_when_does_not_delay_the_rest_of_the_run(write: WriteFile, cli: RunCli) -> None:
    path = write(
        textwrap.dedent(
            """\
            version: 1
            name: slow-condition
            inputs:
              n: {type: integer, default: 100000}
            allow_partial_completion: true
            agents:
              slow:
                llm: {provider: mock, model: m}
                prompt: hi
                when: "((range(inputs.n) | list) * 40) | sort | unique | list | length > 0"
              quick:
                llm: {provider: mock, model: m, params: {latency: 0.1}}
                prompt: "{{ workflow.name }}"
            """
        )
    )
    result = cli("run", str(path), "--mock", "-q", "--output", "-")
    results = json.loads(result.stdout)
    assert results["agents"]["quick"]["state"] == "completed"
    assert results["agents"]["quick"]["finished_at"] < results["agents"]["slow"]["finished_at"]
    error = results["agents"]["slow"]["error"]
    assert "took longer than 2 s" in error or "of memory it may use" in error


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        pytest.param(
            "inputs:\n  items: {type: list, default: [a]}\nagents:\n"
            "  a: {llm: {provider: mock, model: m}, prompt: '{{ inputs.items }}'}\n",
            "wf.yaml:4:",
            "input 'items' is the name of a method of mappings",
            id="input-items",
        ),
        pytest.param(
            "agents:\n  keys: {llm: {provider: mock, model: m}, prompt: hi}\n",
            "wf.yaml:4:",
            "agent id 'keys' is the name of a method of mappings",
            id="agent-keys",
        ),
    ],
)
def test_names_templates_would_read_as_methods_are_refused(
    cli: RunCli, write: WriteFile, text: str, where: str, message: str
) -> None:
    """Jinja reads `inputs.items` as the dict's method before its key: the run would
    fail on it, so validation says so at the name."""
    path = write("version: 1\nname: methods\n" + text)
    result = cli("validate", str(path))
    assert result.exit_code == 2
    assert where in result.stdout + result.stderr
    assert message in result.stdout + result.stderr


def test_a_thousand_undefined_names_are_told_once_each_and_briefly(
    cli: RunCli, write: WriteFile
) -> None:
    prompt = " ".join(f"{{{{ x{i} }}}}" for i in range(1000)) + " {{ x0 }}" * 1000
    path = write(
        "version: 1\nname: many\nagents:\n"
        f"  a:\n    llm: {{provider: mock, model: m}}\n    prompt: '{prompt}'\n"
    )
    result = cli("validate", str(path))
    assert result.exit_code == 2
    shown = result.stdout + result.stderr
    assert shown.count("'x0' is not defined") == 1
    assert shown.count("is not defined") == 20
    assert "and 980 more problems like these" in shown


def test_half_characters_in_a_reply_are_replaced_and_the_run_is_recorded(
    cli: RunCli, write: WriteFile
) -> None:
    r"""A `\ud83d` escape in a server's JSON is half a character, which no UTF-8
    file can hold: the reply's text gets U+FFFD in its place, and the run's record
    (and its dependents) are whole."""
    path = write(
        "version: 1\nname: halves\nagents:\n"
        '  a:\n    llm: {provider: mock, model: m, params: {reply: \'{"t": "x\\ud83dy"}\'}}\n'
        "    prompt: hi\n    output: {format: json}\n"
        "  b:\n    depends_on: [a]\n    llm: {provider: mock, model: m}\n"
        "    prompt: '{% if true %}{{ agents.a.output.t }}{% endif %}'\n"
    )
    result = cli("run", str(path), "--mock", "-q", "--output", "-")
    assert result.exit_code == 0, result.stderr
    results = json.loads(result.stdout)
    assert results["agents"]["a"]["output"] == {"t": "x\ufffdy"}
    assert results["agents"]["b"]["state"] == "completed"
    shown = cli("runs", "show", results["run_id"])
    assert shown.exit_code == 0
    assert "completed" in shown.stdout
