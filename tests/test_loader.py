"""Resolution: defaults merged under agents, providers inferred, warnings given."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aoe.config.settings import load_settings
from aoe.errors import WorkflowInvalid
from aoe.format.schemas import plainly_valid, schema_problem
from aoe.format.spec import DEFAULT_MAX_TOKENS, DEFAULT_TIMEOUT
from aoe.service.runner import load, validate
from tests.conftest import VALID, WriteFile


def test_defaults_merge_under_each_agent(write: WriteFile) -> None:
    workflow = load(
        write("""\
        version: 1
        name: merge
        defaults:
          llm: {provider: openai, model: gpt-4o-mini, temperature: 0.2, params: {a: 1, b: 1}}
          timeout: 30
          retry: {max_retries: 5, base_delay: 2}
          cost_limit: 0.5
        agents:
          plain: {prompt: hi}
          custom:
            prompt: hi
            llm: {model: gpt-4o, params: {b: 2, c: 3}, stop: END}
            retry: {max_delay: 9}
            timeout: 5
            cost_limit: 0.1
        """)
    )
    plain, custom = workflow.agents["plain"], workflow.agents["custom"]
    assert plain.llm.label == "openai/gpt-4o-mini"
    assert (plain.llm.temperature, plain.llm.max_tokens) == (0.2, DEFAULT_MAX_TOKENS)
    assert (plain.timeout, plain.cost_limit, plain.retry.max_retries) == (30, 0.5, 5)
    assert custom.llm.label == "openai/gpt-4o"
    assert custom.llm.temperature == 0.2
    assert dict(custom.llm.params) == {"a": 1, "b": 2, "c": 3}
    assert custom.llm.stop == ("END",)
    assert (custom.retry.max_retries, custom.retry.base_delay, custom.retry.max_delay) == (5, 2, 9)
    assert (custom.timeout, custom.cost_limit) == (5, 0.1)


def test_without_defaults(write: WriteFile) -> None:
    workflow = load(
        write(
            "version: 1\nname: x\nagents:\n  a:\n    prompt: hi\n"
            "    llm: {model: claude-haiku-4-5}\n"
        )
    )
    agent = workflow.agents["a"]
    assert agent.llm.provider == "anthropic"  # inferred from the model's name
    assert (agent.timeout, agent.cost_limit, agent.retry.max_retries) == (
        DEFAULT_TIMEOUT,
        None,
        None,
    )
    assert workflow.cost_budget is None
    assert workflow.max_parallel_agents == 4


def test_fallback_providers_follow_their_model_unless_set(write: WriteFile) -> None:
    workflow = load(
        write("""\
        version: 1
        name: x
        agents:
          inferred:
            prompt: hi
            llm: {model: gpt-4o}
            fallbacks: [{model: claude-haiku-4-5}, {model: gpt-4o-mini, max_tokens: 10}]
          explicit:
            prompt: hi
            llm: {provider: openai, model: gpt-4o}
            fallbacks: [{model: gpt-4o-mini}]
        """)
    )
    inferred = workflow.agents["inferred"].models
    assert [m.label for m in inferred] == [
        "openai/gpt-4o",
        "anthropic/claude-haiku-4-5",
        "openai/gpt-4o-mini",
    ]
    assert inferred[2].max_tokens == 10
    assert inferred[1].max_tokens == DEFAULT_MAX_TOKENS
    assert [m.label for m in workflow.agents["explicit"].models] == [
        "openai/gpt-4o",
        "openai/gpt-4o-mini",
    ]


def test_extension_fields_and_merge_keys(write: WriteFile) -> None:
    workflow = load(
        write("""\
        version: 1
        name: x
        x-common: &common
          llm: {model: gpt-4o-mini, temperature: 0}
          timeout: 10
        agents:
          a:
            <<: *common
            prompt: hi
            timeout: 20
        """)
    )
    agent = workflow.agents["a"]
    assert (agent.llm.model, agent.llm.temperature, agent.timeout) == ("gpt-4o-mini", 0, 20)


def test_unknown_key_inside_an_anchor_points_at_the_anchor(write: WriteFile) -> None:
    path = write("""\
        version: 1
        name: x
        x-common: &common
          llm: {model: gpt-4o-mini, temprature: 0}
        agents:
          a:
            <<: *common
            prompt: hi
        """)
    [result] = validate([path])
    assert [d.format() for d in result.diagnostics] == [
        f"{path}:4:29: error: unknown key 'temprature' in agents.a.llm; did you mean 'temperature'?"
    ]


def test_warnings_do_not_fail(write: WriteFile, tmp_path: object) -> None:
    path = write("""\
        version: 1
        name: x
        inputs:
          used: {type: string, default: a}
          unused: {type: string, default: b}
        agents:
          a:
            prompt: "{{ inputs.used }}"
            llm: {model: gpt-4o}
            fallbacks: [{model: gpt-4o}]
        """)
    [result] = validate([path], load_settings(environ={}, cwd=str(tmp_path)))
    assert result.ok
    assert [(d.severity, d.line, d.code) for d in result.diagnostics] == [
        ("warning", 5, "unused-input"),
        ("warning", 10, "fallback-repeated"),
    ]


def test_dynamic_input_access_silences_the_unused_warning(write: WriteFile) -> None:
    path = write(
        "version: 1\nname: x\ninputs:\n  a: {default: 1, type: integer}\nagents:\n"
        "  x:\n    prompt: '{% for k in inputs %}{{ k }}{% endfor %}'\n"
        "    llm: {model: gpt-4o}\n"
    )
    [result] = validate([path])
    assert result.diagnostics == ()


def test_require_raises_with_the_errors(write: WriteFile) -> None:
    with pytest.raises(WorkflowInvalid) as caught:
        load(write(VALID.replace("gpt-4o-mini", "gpt-4o-mini, top_p: 7")))
    assert caught.value.exit_code == 2
    assert "top_p must be at most 1" in str(caught.value)


def test_digest_covers_prompt_files(write: WriteFile) -> None:
    write("Hello {{ inputs.x }}", "p.md")
    path = write(
        "version: 1\nname: x\ninputs: {x: {default: a}}\nagents:\n"
        "  a: {prompt_file: p.md, llm: {model: gpt-4o}}\n"
    )
    before = load(path).digest
    assert load(path).digest == before
    write("Hello again {{ inputs.x }}", "p.md")
    assert load(path).digest != before


# -- output schemas: the quick check never accepts what jsonschema refuses -----------------

_SCHEMA: st.SearchStrategy[dict[str, object]] = st.recursive(
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(
                [
                    "string",
                    "object",
                    "array",
                    "number",
                    "integer",
                    "boolean",
                    "null",
                    "strng",
                    ["string", "null"],
                    ["a"],
                    [],
                    5,
                ]
            ),
            "required": st.sampled_from([["a"], ["a", "a"], "a", [1], []]),
            "minLength": st.sampled_from([0, 3, -1, 1.5, True]),
            "maximum": st.sampled_from([1, 2.5, "9", None, False]),
            "enum": st.sampled_from([[1, 2], [], "x"]),
            "title": st.sampled_from(["t", 3]),
            "format": st.just("uri"),
        },
    ),
    lambda inner: st.fixed_dictionaries(
        {},
        optional={
            "properties": st.dictionaries(st.text(max_size=3), inner, max_size=3),
            "items": inner | st.booleans() | st.just([]),
            "additionalProperties": inner | st.booleans() | st.just("no"),
        },
    ),
    max_leaves=6,
)


@given(_SCHEMA)
@settings(max_examples=500, deadline=None)
@pytest.mark.slow
def test_quick_schema_check_agrees_with_jsonschema(schema: dict[str, object]) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if plainly_valid(schema):
        Draft202012Validator.check_schema(schema)  # must not raise
    valid = True
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError:
        valid = False
    assert (schema_problem(schema) is None) == valid
