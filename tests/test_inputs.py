"""Run-time inputs (rule): missing, mistyped or undeclared inputs fail before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from aoe.errors import InputsInvalid
from aoe.format.inputs import bind_inputs, from_assignments, from_file
from aoe.format.workflow import Workflow
from aoe.service.runner import load
from tests.conftest import WriteFile

WORKFLOW = """\
version: 1
name: inputs
inputs:
  topic: {type: string}
  count: {type: integer, default: 3}
  ratio: {type: number, default: 0.5}
  strict: {type: boolean, default: false}
  tags: {type: list, default: []}
  extra: {type: object, default: {}}
defaults:
  llm: {provider: mock, model: m}
agents:
  a:
    prompt: >-
      {{ inputs.topic }} {{ inputs.count }} {{ inputs.ratio }} {{ inputs.strict }}
      {{ inputs.tags }} {{ inputs.extra }}
"""


@pytest.fixture
def workflow(write: WriteFile) -> Workflow:
    return load(write(WORKFLOW))


def messages(error: InputsInvalid) -> list[str]:
    return [d.format() for d in error.diagnostics]


def test_values_are_parsed_by_type_and_defaults_fill_in(workflow: Workflow) -> None:
    given = from_assignments(
        ["topic=2024", "count=7", "ratio=1", "strict=yes", "tags=[a, b]", "extra={k: v}"],
        workflow.inputs,
    )
    assert bind_inputs(workflow.inputs, given) == {
        "topic": "2024",
        "count": 7,
        "ratio": 1,
        "strict": True,
        "tags": ["a", "b"],
        "extra": {"k": "v"},
    }
    assert bind_inputs(workflow.inputs, from_assignments(["topic=x"], workflow.inputs)) == {
        "topic": "x",
        "count": 3,
        "ratio": 0.5,
        "strict": False,
        "tags": [],
        "extra": {},
    }


def test_missing_required_input(workflow: Workflow) -> None:
    with pytest.raises(InputsInvalid) as caught:
        bind_inputs(workflow.inputs, {})
    assert messages(caught.value) == [
        "command line: error: input 'topic' is required (a string): "
        "give it with -i topic=VALUE or in --inputs-file"
    ]
    assert caught.value.exit_code == 2


def test_wrong_type_and_undeclared_reported_together(workflow: Workflow) -> None:
    given = from_assignments(["topic=x", "count=many", "strict=maybe", "cont=1"], workflow.inputs)
    with pytest.raises(InputsInvalid) as caught:
        bind_inputs(workflow.inputs, given)
    assert messages(caught.value) == [
        "command line: error: -i count: input 'count' must be an integer, not a string (\"many\")",
        "command line: error: -i strict: input 'strict' must be a boolean (true or false), "
        'not a string ("maybe")',
        "command line: error: -i cont: the workflow has no input 'cont'; did you mean 'count'?",
    ]


def test_empty_value_is_null_and_fits_only_a_null_default(write: WriteFile) -> None:
    workflow = load(
        write(
            "version: 1\nname: x\ninputs:\n  n: {type: integer, default: 3}\n"
            "  note: {type: string, default: null}\n  ratio: {type: number}\n"
            "agents:\n  a:\n    prompt: '{{ inputs.n }} {{ inputs.note }} {{ inputs.ratio }}'\n"
            "    llm: {provider: mock, model: m}\n"
        )
    )
    with pytest.raises(InputsInvalid) as caught:
        bind_inputs(workflow.inputs, from_assignments(["n=", "ratio=1e-3"], workflow.inputs))
    assert messages(caught.value) == [
        "command line: error: -i n: input 'n' must be an integer, not empty (null)"
    ]
    values = bind_inputs(workflow.inputs, from_assignments(["ratio=1e-3"], workflow.inputs))
    assert values == {"n": 3, "note": None, "ratio": 0.001}


def test_malformed_assignment(workflow: Workflow) -> None:
    with pytest.raises(InputsInvalid, match="write an input as NAME=VALUE"):
        from_assignments(["topic"], workflow.inputs)


def test_inputs_file_errors_point_at_its_lines(workflow: Workflow, write: WriteFile) -> None:
    path = write("topic: batteries\ncount: '3'\ncolour: red\n", "inputs.yaml")
    with pytest.raises(InputsInvalid) as caught:
        bind_inputs(workflow.inputs, from_file(str(path)))
    assert messages(caught.value) == [
        f"{path}:2:1: error: input 'count' must be an integer, not a string (\"3\")",
        f"{path}:3:1: error: the workflow has no input 'colour'; "
        "declared inputs: topic, count, ratio, strict, tags, extra",
    ]


def test_inputs_file_in_json(workflow: Workflow, write: WriteFile) -> None:
    path = write('{"topic": "solar", "tags": ["x"], "ratio": 1e-3}', "inputs.json")
    values = bind_inputs(workflow.inputs, from_file(str(path)))
    assert (values["topic"], values["tags"], values["ratio"]) == ("solar", ["x"], 0.001)


def test_inputs_file_must_be_a_mapping(write: WriteFile) -> None:
    path = write("- a\n- b\n", "inputs.yaml")
    with pytest.raises(InputsInvalid, match="mapping of input names"):
        from_file(str(path))


def test_missing_inputs_file(tmp_path: Path) -> None:
    with pytest.raises(InputsInvalid, match="file not found"):
        from_file(str(tmp_path / "nope.yaml"))
