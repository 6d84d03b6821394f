"""One test per (rule) of the workflow format, through ``aoe validate``.

Each case is a bad file: the test asserts the exit code, the line (and column
where it matters) and the words of the message, as a user would read them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import RunCli, WriteFile

HEAD = """\
version: 1
name: rules
defaults:
  llm: {provider: openai, model: gpt-4o-mini}
"""


def diagnostics(stdout: str, path: Path) -> list[tuple[int, int, str, str]]:
    """(line, column, severity, message) of each diagnostic printed for ``path``."""
    pattern = re.compile(rf"^{re.escape(str(path))}:(\d+):(\d+): (error|warning): (.*)$")
    found = []
    for line in stdout.splitlines():
        match = pattern.match(line)
        if match:
            found.append((int(match[1]), int(match[2]), match[3], match[4]))
    return found


def assert_reported(
    stdout: str,
    path: Path,
    line: int,
    *words: str,
    column: int | None = None,
    severity: str = "error",
) -> None:
    for found_line, found_column, found_severity, message in diagnostics(stdout, path):
        if (
            found_line == line
            and found_severity == severity
            and (column is None or found_column == column)
            and all(w in message for w in words)
        ):
            return
    raise AssertionError(f"no {severity} at line {line} with {words!r}; got:\n{stdout}")


CASES = [
    # -- top level -------------------------------------------------------------------------
    pytest.param(
        "version: 2\nname: x\nagents:\n  a: {prompt: hi, llm: {model: gpt-4o}}\n",
        1,
        ["version must be 1", "not an integer (2)", "write version: 1"],
        id="version-only-1",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: hi\n    depend_on: [b]\n  b: {prompt: x}\n",
        8,
        ["unknown key 'depend_on'", "did you mean 'depends_on'?"],
        id="unknown-key-agent",
    ),
    pytest.param(
        HEAD + "agentz:\n  a: {prompt: hi}\n",
        5,
        ["unknown key 'agentz'", "did you mean 'agents'?"],
        id="unknown-key-top",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: hi\n    llm: {modle: gpt-4o}\n",
        8,
        ["unknown key 'modle'", "agents.a.llm", "did you mean 'model'?"],
        id="unknown-key-nested",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: hi\n    max_tokens: 5\n",
        8,
        ["unknown key 'max_tokens'", "did you mean 'llm.max_tokens'?"],
        id="unknown-key-one-level-too-high",
    ),
    pytest.param(
        "version: 1\nname: ''\nagents:\n  a: {prompt: hi, llm: {model: gpt-4o}}\n",
        2,
        ["name must not be empty"],
        id="name-empty",
    ),
    pytest.param(
        "version: 1\nname: " + "n" * 101 + "\nagents:\n  a: {prompt: hi, llm: {model: gpt-4o}}\n",
        2,
        ["name is longer than 100 characters"],
        id="name-too-long",
    ),
    pytest.param(
        "version: 1\nagents:\n  a: {prompt: hi, llm: {model: gpt-4o}}\n",
        1,
        ["missing the required key 'name'"],
        id="name-missing",
    ),
    pytest.param(HEAD + "agents: {}\n", 5, ["agents must have at least 1"], id="no-agents"),
    pytest.param(
        HEAD + "max_parallel_agents: 0\nagents:\n  a: {prompt: hi}\n",
        5,
        ["max_parallel_agents must be at least 1"],
        id="max-parallel-range",
    ),
    pytest.param(
        HEAD + "cost_budget: -1\nagents:\n  a: {prompt: hi}\n",
        5,
        ["cost_budget must be at least 0"],
        id="cost-budget-range",
    ),
    # -- inputs ------------------------------------------------------------------------------
    pytest.param(
        HEAD + "inputs:\n  n: {type: integer, default: five}\nagents:\n"
        "  a: {prompt: '{{ inputs.n }}'}\n",
        6,
        ["the default is a string (\"five\"), not of the input's type 'integer'"],
        id="input-default-type",
    ),
    pytest.param(
        HEAD + "inputs:\n  n: {type: int}\nagents:\n  a: {prompt: '{{ inputs.n }}'}\n",
        6,
        ["inputs.n.type must be one of string, integer", "did you mean 'integer'?"],
        id="input-type-name",
    ),
    # -- agents ------------------------------------------------------------------------------
    pytest.param(
        HEAD + "agents:\n  fact-check:\n    prompt: hi\n",
        6,
        ["agent id 'fact-check' is not valid", "try 'fact_check'"],
        id="agent-id-hyphen",
    ),
    pytest.param(
        HEAD + "agents:\n  2nd:\n    prompt: hi\n",
        6,
        ["agent id '2nd' is not valid", "not starting with a digit"],
        id="agent-id-digit",
    ),
    pytest.param(
        HEAD + "agents:\n  " + "a" * 65 + ":\n    prompt: hi\n",
        6,
        ["is longer than 64 characters"],
        id="agent-id-too-long",
    ),
    pytest.param(
        "version: 1\nname: x\nagents:\n  a:\n    prompt: hi\n    llm: {temperature: 0.5}\n",
        4,
        ["agent 'a' has no model", "defaults.llm.model"],
        id="model-required",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: hi\n    llm: {max_tokens: 0}\n",
        8,
        ["llm.max_tokens must be at least 1"],
        id="max-tokens-range",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: hi\n    llm: {temperature: 2.5}\n",
        8,
        ["llm.temperature must be at most 2"],
        id="temperature-range",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: hi\n    llm: {top_p: 1.5}\n",
        8,
        ["llm.top_p must be at most 1"],
        id="top-p-range",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: hi\n    llm: {max_tokens: '800'}\n",
        8,
        ['max_tokens must be an integer, not a string ("800")', "remove the quotes"],
        id="wrong-type-quoted-number",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: hi\n    timeout: 0\n",
        8,
        ["timeout must be greater than 0"],
        id="timeout-range",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: hi\n    retry: {base_delay: 10, max_delay: 1}\n",
        8,
        ["max_delay (1) is less than base_delay (10)"],
        id="retry-delays",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: hi\n    trigger_rule: all_success\n",
        8,
        ["trigger_rule must be one of all_completed, all_done, any_completed"],
        id="trigger-rule",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: hi\n    prompt_file: p.md\n",
        8,
        ["give either prompt or prompt_file, not both"],
        id="prompt-and-file",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    system: hi\n",
        6,
        ["the agent has no prompt"],
        id="no-prompt",
    ),
    pytest.param(
        HEAD
        + "agents:\n  a:\n    prompt: hi\n    output: {format: text, schema: {type: object}}\n",
        8,
        ["a schema needs format: json"],
        id="schema-needs-json",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: hi\n    output:\n      format: json\n"
        "      schema: {type: objekt}\n",
        10,
        ["not a valid JSON Schema", "objekt"],
        id="schema-invalid",
    ),
    # -- dependencies --------------------------------------------------------------------
    pytest.param(
        HEAD + "agents:\n  research: {prompt: hi}\n  brief:\n    depends_on: [reserch]\n"
        "    prompt: hi\n",
        8,
        ["'brief' depends on 'reserch'", "not an agent", "did you mean 'research'?"],
        id="unknown-dependency",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    depends_on: a\n    prompt: hi\n",
        7,
        ["agent 'a' depends on itself"],
        id="self-dependency",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    depends_on: [c]\n    prompt: hi\n  b:\n    depends_on: [a]\n"
        "    prompt: hi\n  c:\n    depends_on: [b]\n    prompt: hi\n",
        7,
        ["dependency cycle: a -> c -> b -> a"],
        id="cycle",
    ),
    pytest.param(
        HEAD + "agents:\n  a: {prompt: hi}\n  b:\n    depends_on: [a, a]\n    prompt: hi\n",
        8,
        ["lists 'a' in depends_on twice"],
        id="duplicate-dependency",
    ),
    # -- templates ---------------------------------------------------------------------------
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: |\n      line one\n      {{ inputs.x }\n",
        9,
        ["agent 'a': the prompt template does not parse"],
        id="template-syntax",
    ),
    pytest.param(
        HEAD + 'agents:\n  a:\n    prompt: hi\n    system: "{% for x in y %}"\n',
        8,
        ["agent 'a': the system template does not parse", "not closed"],
        id="template-syntax-system",
    ),
    pytest.param(
        HEAD + "agents:\n  a: {prompt: hi}\n  b:\n    prompt: 'Use {{ agents.a.output }}'\n",
        8,
        ["agent 'b', prompt: reads agents.a but does not depend on it", "add 'a' to depends_on"],
        id="template-undeclared-dependency",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: 'About {{ inputs.topik }}'\n",
        7,
        ["inputs.topik is not a declared input"],
        id="template-undeclared-input",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: 'About {{ topic }}'\n",
        7,
        ["'topic' is not defined"],
        id="template-undefined-name",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: 'Item {{ item }}'\n",
        7,
        ["'item' is only defined in the templates of an agent with foreach"],
        id="item-outside-foreach",
    ),
    pytest.param(
        HEAD + "agents:\n  a: {prompt: hi}\n  b:\n    depends_on: [a]\n"
        "    prompt: '{{ agents.a.outptu }}'\n",
        9,
        ["agents.a.outptu", "did you mean 'output'?"],
        id="template-agent-attribute",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: \"{% include 'secrets.txt' %}\"\n",
        7,
        ["cannot include, import or extend"],
        id="template-include",
    ),
    pytest.param(
        HEAD + "agents:\n  a: {prompt: hi}\n  b:\n    depends_on: [a]\n"
        "    when: \"{{ agents.a.status == 'completed' }}\"\n    prompt: hi\n",
        9,
        ["expression, written without braces"],
        id="when-with-braces",
    ),
    pytest.param(
        HEAD + "agents:\n  a: {prompt: hi}\n  b:\n    depends_on: [a]\n"
        "    when: agents.a.output ==\n    prompt: hi\n",
        9,
        ["agent 'b': the when expression does not parse"],
        id="when-syntax",
    ),
    pytest.param(
        HEAD + "agents:\n  b:\n    foreach: agents.a.output\n    prompt: '{{ item }}'\n",
        7,
        ["agents.a is not an agent"],
        id="foreach-unknown-agent",
    ),
    pytest.param(
        HEAD + "agents:\n  a: {prompt: hi}\noutputs:\n  x: '{{ agents.nope.output }}'\n",
        8,
        ["output 'x'", "agents.nope is not an agent"],
        id="outputs-unknown-agent",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: '{{ inputs | joinn }}'\n",
        7,
        ["Jinja has no filter 'joinn'", "did you mean 'join'?"],
        id="unknown-filter",
    ),
    pytest.param(
        HEAD + "agents:\n  a: {prompt: hi}\n  b:\n    depends_on: a\n"
        "    when: agents.a.status is complete\n    prompt: hi\n",
        9,
        ["Jinja has no test 'complete'"],
        id="unknown-test",
    ),
    pytest.param(
        HEAD + "inputs:\n  files: {type: string, default: a.py}\nagents:\n"
        "  a:\n    foreach: inputs.files\n    prompt: '{{ item }}'\n",
        9,
        ["foreach needs a list", "inputs.files is of type 'string'"],
        id="foreach-not-list",
    ),
    pytest.param(
        HEAD + "agents:\n  a: {prompt: hi}\n  b:\n    depends_on: a\n"
        "    foreach: agents.a.output\n    prompt: '{{ item }}'\n",
        9,
        ["foreach needs a list", "agents.a.output is text"],
        id="foreach-over-text",
    ),
    pytest.param(
        HEAD + "agents:\n  a: {prompt: hi}\n  b:\n    depends_on: a\n"
        "    prompt: '{{ agents.a.output.summary }}'\n",
        9,
        ["the output of 'a' is text", "output.format: json"],
        id="field-of-text-output",
    ),
    pytest.param(
        HEAD + "agents:\n  a: {prompt: '   '}\n",
        6,
        ["the prompt is empty"],
        id="empty-prompt",
    ),
    pytest.param(
        "version: 1.0\nname: x\nagents:\n  a: {prompt: hi, llm: {model: gpt-4o}}\n",
        1,
        ["version must be 1", "not a number (1)"],
        id="version-float",
    ),
    pytest.param(
        HEAD + "cost_budget: .inf\nagents:\n  a: {prompt: hi}\n",
        5,
        ["cost_budget must be a finite number"],
        id="infinite-budget",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: hi\n    depends_on: {b: 1}\n",
        8,
        ["must be an agent id or a list of agent ids, not a mapping"],
        id="depends-on-type",
    ),
    pytest.param(
        HEAD + "agents:\n  alpha: {prompt: hi}\n  b:\n    depends_on: [zzz]\n    prompt: hi\n",
        8,
        ["depends on 'zzz'", "the agents are alpha, b"],
        id="unknown-dependency-listing",
    ),
    # -- YAML --------------------------------------------------------------------------------
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: hi: there\n",
        7,
        ["invalid YAML", "mapping values are not allowed"],
        id="yaml-syntax",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: one\n    prompt: two\n",
        8,
        ["duplicate key 'prompt'", "also at line 7"],
        id="yaml-duplicate-key",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: !!python/object/apply:os.system [ls]\n",
        7,
        ["tag '!!python/object/apply:os.system' is not supported"],
        id="yaml-python-tag",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: !custom hi\n",
        7,
        ["tag '!custom' is not supported"],
        id="yaml-local-tag",
    ),
    pytest.param(
        HEAD + "agents:\n  a:\n    prompt: {{ inputs.x }}\n",
        7,
        ["must be quoted"],
        id="yaml-unquoted-braces",
    ),
    pytest.param(
        HEAD + "agents:\n\ta: {prompt: hi}\n",
        6,
        ["tabs"],
        id="yaml-tab",
    ),
]


@pytest.mark.parametrize(("text", "line", "words"), CASES)
def test_rule(cli: RunCli, write: WriteFile, text: str, line: int, words: list[str]) -> None:
    path = write(text)
    result = cli("validate", path)
    assert result.exit_code == 2, result.stdout
    assert_reported(result.stdout, path, line, *words)
    errors = [d for d in diagnostics(result.stdout, path) if d[2] == "error"]
    assert len(errors) == 1, result.stdout  # one mistake, one message: nothing spurious
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        pytest.param(
            HEAD + "inputs:\n  my-topic: {default: x}\nagents:\n"
            "  a: {prompt: \"{{ inputs['my-topic'] }}\"}\n",
            6,
            ["input 'my-topic' is not a plain name", "inputs['my-topic']"],
            id="input-name",
        ),
        pytest.param(
            HEAD + "agents:\n  a:\n    prompt: hi\n    llm: {provider: anthropic, model: gpt-4o}\n",
            8,
            ["model 'gpt-4o' is an OpenAI model", "set provider: openai"],
            id="provider-model",
        ),
        pytest.param(
            HEAD + "agents:\n  a:\n    prompt: hi\n    trigger_rule: all_done\n",
            8,
            ["trigger_rule has no effect on an agent without depends_on"],
            id="trigger-alone",
        ),
    ],
)
def test_warning(cli: RunCli, write: WriteFile, text: str, line: int, words: list[str]) -> None:
    path = write(text)
    result = cli("validate", path)
    assert result.exit_code == 0, result.stdout
    assert_reported(result.stdout, path, line, *words, severity="warning")


def test_duplicate_key_names_both_lines(cli: RunCli, write: WriteFile) -> None:
    path = write(HEAD + "agents:\n  a: {prompt: hi}\n  a: {prompt: again}\n")
    result = cli("validate", path)
    assert result.exit_code == 2
    assert_reported(result.stdout, path, 7, "duplicate key 'a'", "also at line 6", column=3)


def test_yaml_syntax_error_has_line_and_column(cli: RunCli, write: WriteFile) -> None:
    path = write(HEAD + "agents:\n  a:\n    prompt: [unclosed\n")
    result = cli("validate", path)
    assert result.exit_code == 2
    found = diagnostics(result.stdout, path)
    assert len(found) == 1
    line, column, severity, message = found[0]
    # where the unclosed [ is, not where YAML gave up (the end of the file)
    assert (line, column, severity) == (7, 13, "error")
    assert "invalid YAML" in message
    assert "it starts here; YAML noticed at line 8" in message


def test_an_unclosed_quote_is_reported_where_it_opens(cli: RunCli, write: WriteFile) -> None:
    """Issue 16: it was reported at the end of the file."""
    path = write(
        HEAD + 'agents:\n  a:\n    prompt: "hello\n    llm: {model: gpt-4o}\n  b:\n    prompt: hi\n'
    )
    result = cli("validate", path)
    assert result.exit_code == 2
    [(line, column, _, message)] = diagnostics(result.stdout, path)
    assert (line, column) == (7, 13)
    assert "a quote or bracket is not closed" in message


def test_unknown_key_column_points_at_the_key(cli: RunCli, write: WriteFile) -> None:
    path = write(HEAD + "agents:\n  a:\n    prompt: hi\n    depend_on: [b]\n")
    result = cli("validate", path)
    assert_reported(result.stdout, path, 8, "depend_on", column=5)


def test_template_error_points_into_block_line_and_column(cli: RunCli, write: WriteFile) -> None:
    path = write(
        HEAD + "agents:\n  a:\n    prompt: |\n      First line.\n"
        "      Then {{ inputs.missing }} here.\n"
    )
    result = cli("validate", path)
    assert_reported(result.stdout, path, 9, "inputs.missing", column=15)


@pytest.mark.parametrize(
    ("prompt", "line", "column"),
    [
        pytest.param(
            ">\n      First line\n      then {{ inputs.nope }} here\n", 9, 15, id="folded"
        ),
        pytest.param('"First line\n      then {{ inputs.nope }}"\n', 8, 15, id="double-quoted"),
        pytest.param("First line\n      then {{ inputs.nope }}\n", 8, 15, id="plain"),
        pytest.param('"a\\nb {{ inputs.nope }}"\n', 7, 22, id="escaped-newline"),
        pytest.param("|-\n  \n      x\n      y {{ inputs.nope }}\n", 10, 12, id="literal"),
    ],
)
def test_template_lines_in_every_scalar_style(
    cli: RunCli, write: WriteFile, prompt: str, line: int, column: int
) -> None:
    path = write(HEAD + "agents:\n  a:\n    prompt: " + prompt + "  b: {prompt: hi}\n")
    result = cli("validate", path)
    assert result.exit_code == 2
    assert_reported(result.stdout, path, line, "inputs.nope", column=column)


# -- files (rule) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        pytest.param("prompt_file", "/etc/passwd", ["is an absolute path"], id="absolute"),
        pytest.param(
            "prompt_file",
            "../outside.md",
            ["is outside the workflow file's folder"],
            id="climbs-out",
        ),
        pytest.param(
            "system_file",
            "prompts/../../outside.md",
            ["is outside the workflow file's folder"],
            id="climbs-out-nested",
        ),
        pytest.param(
            "prompt_file",
            "prompts/missing.md",
            ["file 'prompts/missing.md' not found"],
            id="missing",
        ),
    ],
)
def test_file_paths_refused(
    cli: RunCli, write: WriteFile, field: str, value: str, words: list[str]
) -> None:
    write("outside\n", "outside.md")
    prompt = "" if field == "prompt_file" else "    prompt: hi\n"
    path = write(HEAD + f"agents:\n  a:\n{prompt}    {field}: {value}\n", "flow/wf.yaml")
    result = cli("validate", path)
    assert result.exit_code == 2
    line = 7 if field == "prompt_file" else 8
    assert_reported(result.stdout, path, line, *words)


def test_symlink_out_of_the_folder_is_refused(cli: RunCli, write: WriteFile) -> None:
    secret = write("secret\n", "secret.md")
    path = write(HEAD + "agents:\n  a:\n    prompt_file: link.md\n", "flow/wf.yaml")
    (path.parent / "link.md").symlink_to(secret)
    result = cli("validate", path)
    assert_reported(result.stdout, path, 7, "outside the workflow file's folder")


def test_missing_file_suggests_a_close_name(cli: RunCli, write: WriteFile) -> None:
    write("hi\n", "flow/prompts/summary.md")
    path = write(HEAD + "agents:\n  a:\n    prompt_file: prompts/sumary.md\n", "flow/wf.yaml")
    result = cli("validate", path)
    assert_reported(result.stdout, path, 7, "not found", "did you mean 'summary.md'?")


def test_template_error_in_prompt_file_points_into_that_file(cli: RunCli, write: WriteFile) -> None:
    prompt = write("Line one.\nLine two {{ inputs.nope }}.\n", "flow/prompts/p.md")
    path = write(HEAD + "agents:\n  a:\n    prompt_file: prompts/p.md\n", "flow/wf.yaml")
    result = cli("validate", path)
    assert result.exit_code == 2
    expected = f"{path.parent / 'prompts' / 'p.md'}:2:13: error: agent 'a', prompt: inputs.nope"
    assert expected in result.stdout, result.stdout
    assert prompt.exists()


def test_schema_file_is_read_and_checked(cli: RunCli, write: WriteFile) -> None:
    write('{"type": "object", "required": "summary"}', "flow/schemas/out.json")
    path = write(
        HEAD + "agents:\n  a:\n    prompt: hi\n    output: {format: json, schema_file: "
        "schemas/out.json}\n",
        "flow/wf.yaml",
    )
    result = cli("validate", path)
    assert_reported(
        result.stdout, path, 8, "not a valid JSON Schema", "'summary' is not of type 'array'"
    )


# -- costs (rule) -----------------------------------------------------------------------------


def test_unpriced_model_with_a_budget_is_an_error(cli: RunCli, write: WriteFile) -> None:
    path = write(
        "version: 1\nname: x\ncost_budget: 2\nagents:\n  a:\n    prompt: hi\n"
        "    llm: {model: gpt-9-turbo}\n"
    )
    result = cli("validate", path)
    assert result.exit_code == 2
    assert_reported(
        result.stdout,
        path,
        7,
        "model 'gpt-9-turbo' has no price",
        "a budget applies",
        "cost_budget 2 USD",
        "cost_tracking.model_costs",
    )


def test_unpriced_model_by_default_budgets_is_an_error(cli: RunCli, write: WriteFile) -> None:
    path = write("version: 1\nname: x\nagents:\n  a:\n    prompt: hi\n    llm: {model: mystery}\n")
    result = cli("validate", path)
    assert result.exit_code == 2
    assert_reported(
        result.stdout, path, 6, "has no price", "cost_budget 100 USD", "cost_limit 1 USD"
    )


def test_unpriced_model_without_any_budget_is_a_warning(cli: RunCli, write: WriteFile) -> None:
    path = write("version: 1\nname: x\nagents:\n  a:\n    prompt: hi\n    llm: {model: mystery}\n")
    env = {"DEFAULT_WORKFLOW_BUDGET": "none", "DEFAULT_AGENT_BUDGET": "none"}
    result = cli("validate", path, env=env)
    assert result.exit_code == 0, result.stdout
    assert_reported(result.stdout, path, 6, "has no price", "not tracked", severity="warning")


def test_dated_snapshot_takes_the_base_price(cli: RunCli, write: WriteFile) -> None:
    path = write(
        "version: 1\nname: x\nagents:\n  a:\n    prompt: hi\n    llm: {model: gpt-4o-2024-08-06}\n"
        "  b:\n    prompt: hi\n    llm: {model: claude-sonnet-4-5-20250929}\n"
    )
    assert cli("validate", path).exit_code == 0


def test_price_from_config_file_and_provider_default(cli: RunCli, write: WriteFile) -> None:
    config = write(
        "cost_tracking:\n  model_costs:\n    gpt-9: {input: 0.01, output: 0.02}\n"
        "providers:\n  local:\n    base_url: http://localhost:8000/v1\n"
        "    default_price: {input: 0, output: 0}\n",
        "engine.yaml",
    )
    path = write(
        "version: 1\nname: x\nagents:\n  a:\n    prompt: hi\n    llm: {model: gpt-9}\n"
        "  b:\n    prompt: hi\n    llm: {provider: local, model: llama3}\n"
    )
    assert cli("validate", path).exit_code == 2
    result = cli("validate", "--config", config, path)
    assert result.exit_code == 0, result.stdout


def test_mock_provider_needs_no_price(cli: RunCli, write: WriteFile) -> None:
    path = write(
        "version: 1\nname: x\nagents:\n  a:\n    prompt: hi\n"
        "    llm: {provider: mock, model: anything}\n"
    )
    assert cli("validate", path).exit_code == 0


def test_unknown_provider(cli: RunCli, write: WriteFile) -> None:
    path = write(
        "version: 1\nname: x\nagents:\n  a:\n    prompt: hi\n"
        "    llm: {provider: anthropc, model: claude-haiku-4-5}\n"
    )
    result = cli("validate", path)
    assert result.exit_code == 2
    assert_reported(
        result.stdout, path, 6, "unknown provider 'anthropc'", "did you mean 'anthropic'?"
    )


def test_fallback_models_are_priced_too(cli: RunCli, write: WriteFile) -> None:
    path = write(
        HEAD + "agents:\n  a:\n    prompt: hi\n    fallbacks:\n"
        "      - {model: gpt-4o}\n      - {model: no-such-model}\n"
    )
    result = cli("validate", path)
    assert_reported(result.stdout, path, 10, "fallback 2", "model 'no-such-model' has no price")


# -- all at once ---------------------------------------------------------------------------


def test_every_error_of_a_file_is_reported_at_once(cli: RunCli, write: WriteFile) -> None:
    path = write(
        """\
        version: 1
        name: many
        inputs:
          topic: {type: string}
        defaults:
          llm: {model: gpt-4o-mini, temperature: 3}
        agents:
          research:
            prompt: "About {{ inputs.topc }}"
          brief-2:
            depends_on: [research, reserch]
            prompt: "{{ agents.research.output }}"
          loop_a:
            depends_on: loop_b
            prompt: hi
            timeout: -1
          loop_b:
            depends_on: loop_a
            prompt: hi
            prompt: again
        """
    )
    result = cli("validate", path)
    assert result.exit_code == 2
    found = diagnostics(result.stdout, path)
    expected = {
        6: "temperature must be at most 2",
        9: "inputs.topc is not a declared input",
        10: "agent id 'brief-2' is not valid",
        11: "depends on 'reserch'",
        14: "dependency cycle: loop_a -> loop_b -> loop_a",
        16: "timeout must be greater than 0",
        20: "duplicate key 'prompt'",
    }
    for line, words in expected.items():
        assert any(f[0] == line and words in f[3] for f in found), (line, words, result.stdout)
    assert result.stdout.rstrip().endswith(f"invalid ({len(found)} errors)")


def test_every_file_is_checked(cli: RunCli, write: WriteFile) -> None:
    good = write(HEAD + "agents:\n  a: {prompt: hi}\n", "good.yaml")
    bad_one = write(HEAD + "agents:\n  a: {prompt: hi, oops: 1}\n", "bad1.yaml")
    bad_two = write("version: 1\n", "bad2.yaml")
    result = cli(
        "validate", good, bad_one, bad_two, write("", "empty.yaml"), Path("no/such/file.yaml")
    )
    assert result.exit_code == 2
    assert f"{good}: valid (1 agent)" in result.stdout
    assert_reported(result.stdout, bad_one, 6, "unknown key 'oops'")
    assert_reported(result.stdout, bad_two, 1, "missing the required key 'name'")
    assert "empty.yaml:1:1: error: the file holds no workflow (it is empty or null)" in (
        result.stdout
    )
    assert "no/such/file.yaml: error: file not found" in result.stdout
    assert "5 files checked: 1 valid, 4 invalid" in result.stdout


def test_json_format_lists_every_diagnostic(cli: RunCli, write: WriteFile) -> None:
    path = write(HEAD + "agents:\n  a:\n    prompt: hi\n    oops: 1\n    llm: {top_p: 3}\n")
    result = cli("validate", "--format", "json", path)
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert [set(d) for d in report] == [
        {"file", "line", "column", "severity", "code", "message"}
    ] * 2
    assert {(d["line"], d["code"]) for d in report} == {(8, "unknown-key"), (9, "range")}


def test_valid_file_exits_zero_and_says_so(cli: RunCli, write: WriteFile) -> None:
    from tests.conftest import VALID

    path = write(VALID)
    result = cli("validate", path)
    assert result.exit_code == 0
    assert result.stdout == f"{path}: valid (2 agents)\n"
    assert result.stderr == ""
