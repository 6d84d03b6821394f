"""Checking a reply against what its agent asked for.

``format: text`` takes the reply as it is. ``format: json`` parses it (a reply
wrapped in a Markdown code fence is unwrapped first) and validates the value
against the output schema with ``jsonschema``; a reply that does not fit fails
the attempt with :class:`aoe.errors.OutputInvalid`, whose message says what is
wrong, so that a retry can tell the model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from aoe.errors import OutputInvalid
from aoe.providers.base import plain
from aoe.workflow import OutputConfig

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n(?P<body>.*?)\n?```", re.DOTALL)
# Validators by schema object (kept with it, so an id is never reused under us).
_validators: dict[int, tuple[Mapping[str, Any], Any]] = {}


def parse_output(text: str, output: OutputConfig) -> Any:
    """The agent's output value from a reply; raises :class:`OutputInvalid`."""
    if output.format != "json":
        return text
    body = text
    try:
        value = json.loads(body)
    except json.JSONDecodeError as e:
        fenced = _FENCE.search(text)  # JSON in a code fence, perhaps after some words
        if fenced is None:
            raise _not_json(e, body) from None
        body = fenced.group("body")
        try:
            value = json.loads(body)
        except json.JSONDecodeError as inner:
            raise _not_json(inner, body) from None
    if output.schema is not None:
        problem = _schema_problem(value, output.schema)
        if problem:
            raise OutputInvalid(f"the reply does not match the output schema: {problem}")
    return value


def _not_json(e: json.JSONDecodeError, body: str) -> OutputInvalid:
    shown = body.strip()[:60].replace("\n", " ")
    more = "..." if len(body.strip()) > 60 else ""
    return OutputInvalid(
        f"the reply is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): "
        f"{shown!r}{more}"
    )


def _schema_problem(value: Any, schema: Mapping[str, Any]) -> str | None:
    cached = _validators.get(id(schema))
    if cached is not None and cached[0] is schema:
        validator = cached[1]
    else:
        from jsonschema import validators

        document = plain(schema)
        validator = validators.validator_for(document)(document)
        if len(_validators) > 256:  # a long-lived engine runs many workflows
            _validators.clear()
        _validators[id(schema)] = (schema, validator)
    from jsonschema.exceptions import best_match

    error = best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{error.message}" + (f" (at output{where})" if where else "")
