"""Run-time inputs: ``-i name=value`` and ``--inputs-file``, checked against the workflow.

A required input that is missing, a value of the wrong type, or an input the
workflow does not declare is an error before anything runs; every such
problem is reported at once, pointing at the option or the file line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from aoe.errors import InputsInvalid
from aoe.format.diagnostics import describe
from aoe.format.modelerrors import closest
from aoe.format.spec import non_finite, value_has_type
from aoe.format.workflow import Input
from aoe.format.yamlsource import (
    Mark,
    NumberTooLarge,
    YamlError,
    parse_yaml,
    read_text,
    resolve_scalar,
)
from aoe.types import Diagnostic, Severity

_COMMAND_LINE = "command line"
_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean (true or false)",
    "list": "a list",
    "object": "an object (a mapping)",
}


class GivenInput(NamedTuple):
    """A value given at run time and where it was given, for error messages."""

    value: Any
    file: str
    line: int = 0
    column: int = 0
    label: str = ""


def from_assignments(pairs: Sequence[str], declared: Mapping[str, Input]) -> dict[str, GivenInput]:
    """``-i name=value`` options. Values are YAML scalars (``5``, ``true``); a
    string input takes the text as written, and a list or object input takes
    YAML flow syntax (``[a, b]``, ``{k: v}``)."""
    given: dict[str, GivenInput] = {}
    problems: list[Diagnostic] = []
    for pair in pairs:
        if not _is_text(pair):  # bytes the shell passed that are not UTF-8 (surrogates here)
            shown = pair.encode("utf-8", "backslashreplace").decode("ascii", "replace")[:60]
            problems.append(
                _problem(
                    _COMMAND_LINE,
                    0,
                    0,
                    f"-i {shown}: holds bytes that are not UTF-8 text; give the value as UTF-8",
                )
            )
            continue
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            problems.append(
                _problem(_COMMAND_LINE, 0, 0, f"-i {pair!r}: write an input as NAME=VALUE")
            )
            continue
        kind = declared[name].type if name in declared else None
        label = f"-i {name}"
        if kind == "string":
            value: Any = text
        elif kind in ("list", "object"):
            try:
                value = parse_yaml(text, label).data if text.strip() else None
            except YamlError as e:
                problems.append(
                    _problem(_COMMAND_LINE, 0, 0, f"{label}: {e.diagnostics[0].message}")
                )
                continue
        else:
            try:
                value = resolve_scalar(text)
            except NumberTooLarge as e:
                problems.append(_problem(_COMMAND_LINE, 0, 0, f"{label}: {e.message}"))
                continue
        given[name] = GivenInput(value, _COMMAND_LINE, label=label)
    if problems:
        raise InputsInvalid(problems)
    return given


def from_file(path: str) -> dict[str, GivenInput]:
    """An inputs file: a YAML or JSON mapping of input names to values."""
    try:
        document = parse_yaml(read_text(path), path)
    except YamlError as e:
        raise InputsInvalid(e.diagnostics) from None
    if document.diagnostics:
        raise InputsInvalid(document.diagnostics)
    if not isinstance(document.data, dict):
        raise InputsInvalid(
            [_problem(path, 1, 1, "an inputs file is a mapping of input names to values")]
        )
    given: dict[str, GivenInput] = {}
    for name, value in document.data.items():
        mark: Mark = document.source.key((name,))
        given[name] = GivenInput(value, path, mark.line, mark.column)
    return given


def bind_inputs(declared: Mapping[str, Input], given: Mapping[str, GivenInput]) -> dict[str, Any]:
    """Every declared input's value: given, else its default. Raises
    :class:`InputsInvalid` listing every missing, undeclared or mistyped input."""
    problems: list[Diagnostic] = []
    values: dict[str, Any] = {}
    for name, item in given.items():
        problem = _given_problem(name, item, declared)
        if problem is None:
            values[name] = item.value
        else:
            problems.append(_at(item, problem))
    for name, spec in declared.items():
        if name in values or name in given:
            continue
        if spec.required:
            problems.append(
                _problem(
                    _COMMAND_LINE,
                    0,
                    0,
                    f"input '{name}' is required ({_TYPE_WORDS[spec.type]}): "
                    f"give it with -i {name}=VALUE or in --inputs-file",
                )
            )
        else:
            values[name] = spec.default
    if problems:
        raise InputsInvalid(problems)
    return values


def _given_problem(name: str, item: GivenInput, declared: Mapping[str, Input]) -> str | None:
    """Why a given input cannot be bound (undeclared, mistyped, not text the run's
    record can hold), or None."""
    if not _is_text(name):
        return "an input's name holds text that is not UTF-8"
    spec = declared.get(name)
    if spec is None:
        match = closest(name, list(declared))
        hint = f"did you mean '{match}'?" if match else "it declares no inputs"
        if not match and declared:
            hint = "declared inputs: " + ", ".join(declared)
        return f"{_lead(item)}the workflow has no input '{name}'; {hint}"
    # null fits only an input whose default is null
    null_allowed = item.value is None and not spec.required and spec.default is None
    if not null_allowed and not value_has_type(item.value, spec.type):
        return (
            f"{_lead(item)}input '{name}' must be "
            f"{_TYPE_WORDS[spec.type]}, not {describe(item.value)}"
        )
    where = not_text(item.value)
    if where is not None:  # the run's record and results are UTF-8: they could not hold it
        inside = f"{where} in " if where else ""
        return (
            f"{_lead(item)}{inside}input '{name}' holds text that is not UTF-8 "
            "(a lone surrogate); give it as UTF-8"
        )
    where = non_finite(item.value)
    if where is not None:  # JSON has neither: the run's record and results could not hold it
        inside = f"{where} in " if where else ""
        return f"{_lead(item)}{inside}input '{name}' must be a finite number, not infinity or NaN"
    return None


def _is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def not_text(value: Any) -> str | None:
    """Where in a JSON-like value a string is not UTF-8 text (``a.b[2]``; ``""`` for
    the value itself), or None."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:  # a loop: a value may nest as deep as its file allows
        item, where = stack.pop()
        if isinstance(item, str):
            if not _is_text(item):
                return where
        elif isinstance(item, dict):
            for k, v in item.items():
                label = f"{where}.{k}" if where else str(k)
                if isinstance(k, str) and not _is_text(k):
                    return where or "a key"
                stack.append((v, label))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None


def _lead(item: GivenInput) -> str:
    return f"{item.label}: " if item.label else ""


def _at(item: GivenInput, message: str) -> Diagnostic:
    return _problem(item.file, item.line, item.column, message)


def _problem(file: str, line: int, column: int, message: str) -> Diagnostic:
    return Diagnostic(file, line, column, Severity.ERROR, "input", message)
