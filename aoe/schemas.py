"""JSON Schemas of agent outputs: is a schema itself valid?

``jsonschema`` is the authority, but it takes longer to import than the rest of
``aoe validate`` does to run. Most output schemas use a handful of keywords
with plainly valid values (``type: object``, ``required: [a, b]`` ...); for
those, :func:`plainly_valid` gives the same answer without it. Everything
else goes to ``jsonschema``'s own check against the meta-schema.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})


def _is_type(value: Any) -> bool:
    if isinstance(value, str):
        return value in _TYPES
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, str) and t in _TYPES for t in value)
        and len(set(value)) == len(value)
    )


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_names(value: Any) -> bool:
    return (
        isinstance(value, list)
        and all(isinstance(v, str) for v in value)
        and len(set(value)) == len(value)
    )


def _is_schema_map(value: Any) -> bool:
    return isinstance(value, dict) and all(plainly_valid(v) for v in value.values())


def _is_list(value: Any) -> bool:
    return isinstance(value, list)


# Keywords whose valid values are obvious, with the test of a valid value.
_KEYWORDS: dict[str, Callable[[Any], bool]] = {
    "type": _is_type,
    "properties": _is_schema_map,
    "required": _is_names,
    "items": lambda v: plainly_valid(v),
    "additionalProperties": lambda v: plainly_valid(v),
    "enum": _is_list,
    "description": _is_text,
    "title": _is_text,
    "minimum": _is_number,
    "maximum": _is_number,
    "minLength": _is_count,
    "maxLength": _is_count,
    "minItems": _is_count,
    "maxItems": _is_count,
}


def plainly_valid(schema: Any) -> bool:
    """True when ``schema`` uses only simple keywords with valid values.

    False does not mean invalid: only that the full check is needed.
    """
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict):
        return False
    for key, value in schema.items():
        test = _KEYWORDS.get(key)
        if test is None or not test(value):
            return False
    return True


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why ``schema`` is not a valid JSON Schema, or None if it is."""
    if plainly_valid(schema):
        return None
    from jsonschema import validators
    from jsonschema.exceptions import SchemaError

    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as e:
        inside = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in e.path)
        return e.message + (f" (at schema{inside})" if inside else "")
    return None
