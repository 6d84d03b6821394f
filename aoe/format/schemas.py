"""JSON Schemas of agent outputs: is a schema itself valid?

``jsonschema`` is the authority, but it takes longer to import than the rest of
``aoe validate`` does to run. Most output schemas use a handful of keywords
with plainly valid values (``type: object``, ``required: [a, b]`` ...); for
those, :func:`plainly_valid` gives the same answer without it. Everything
else goes to ``jsonschema``'s own check against the meta-schema.

The ``$ref``s of a schema are resolved by :mod:`aoe.format.schemarefs`; what a
reference names inside one bundled schema is found by :func:`pointer_target`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple
from urllib.parse import unquote

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


MAX_SHOWN = 200
"""The most characters of a message that quotes a schema or a reply."""


def shortened(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters (a schema or a reply may be huge)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why ``schema`` is not a valid JSON Schema, or None if it is."""
    if plainly_valid(schema):
        return None
    from jsonschema import validators
    from jsonschema.exceptions import SchemaError

    dialect = schema.get("$schema")
    if dialect is not None and (
        not isinstance(dialect, str)
        # an unknown draft gives the default back (None here) instead of a warning
        or validators.validator_for(schema, default=None) is None  # type: ignore[arg-type]
    ):
        return (
            "its $schema names no draft aoe knows: use "
            "https://json-schema.org/draft/2020-12/schema (or 2019-09, draft-07, -06, -04, -03)"
        )
    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as e:
        inside = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in e.path)
        return shortened(e.message) + (f" (at schema{shortened(inside)})" if inside else "")
    return None


class SchemaFault(NamedTuple):
    """Where a schema breaks the meta-schema, and why in words that quote none of it."""

    path: tuple[str | int, ...]
    message: str


_KINDS = {
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


def schema_fault(schema: Any, dialect: Mapping[str, Any]) -> SchemaFault | None:
    """Why ``schema`` is not a valid JSON Schema of ``dialect``'s draft, or None.

    For a file an output schema refers to: the message names the keyword and what
    the meta-schema wants there, never the value found (the file may be anything,
    a credentials file among them).
    """
    if isinstance(schema, bool) or (plainly_valid(schema) and "$schema" not in dialect):
        return None
    from jsonschema import validators
    from jsonschema.exceptions import best_match

    cls = validators.validator_for(dict(dialect))
    meta = validators.validator_for(cls.META_SCHEMA, default=cls)  # as check_schema does
    error = best_match(meta(cls.META_SCHEMA, format_checker=cls.FORMAT_CHECKER).iter_errors(schema))
    if error is None:
        return None
    path = tuple(error.absolute_path)
    keyword = next((p for p in reversed(path) if isinstance(p, str)), None)
    what = f"the value of '{shortened(keyword, 60)}'" if keyword else "the schema"
    return SchemaFault(path, f"{what} must be {shortened(_wanted(error, keyword))}")


def _wanted(error: Any, keyword: str | None) -> str:
    """What the meta-schema wants where a schema went wrong, in words (a
    ``jsonschema`` ``ValidationError``, by its validator)."""
    if keyword == "type":
        return "one of " + ", ".join(sorted(_TYPES)) + ", or a list of them"
    if error.validator == "type":
        names = error.validator_value
        names = [names] if isinstance(names, str) else list(names)
        return " or ".join(_KINDS.get(str(n), str(n)) for n in names)
    if error.validator == "enum":
        return "one of " + ", ".join(repr(v) for v in error.validator_value)
    if error.validator in ("minimum", "minItems", "minLength"):
        return f"at least {error.validator_value}"
    if error.validator == "uniqueItems":
        return "a list without repeats"
    return f"what the meta-schema's '{error.validator}' asks"


def same_dialect(one: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether two schemas are of one draft of JSON Schema (by their ``$schema``)."""
    from jsonschema import validators

    def draft(schema: Mapping[str, Any]) -> Any:
        dialect = schema.get("$schema")
        if dialect is not None and not isinstance(dialect, str):
            return None  # not a draft at all: the schema's check says so
        return validators.validator_for({k: v for k, v in schema.items() if k == "$schema"})

    return bool(draft(one) is draft(other))


def pointer_target(root: Mapping[str, Any], ref: str) -> Any:
    """What a ``$ref`` of the form ``#`` or ``#/a/b`` names in ``root``, or None.

    The bundled schemas of :mod:`aoe.format.schemarefs` refer to their parts this way only
    (where no nested ``$id`` changes the base), so this is all a reader of one needs.
    """
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for raw in unquote(ref[2:]).split("/"):
        segment = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and segment in node:
            node = node[segment]
        elif isinstance(node, list) and segment.isdigit() and int(segment) < len(node):
            node = node[int(segment)]
        else:
            return None
    return node


CHARS_PER_TOKEN = 100
"""More characters than any model's token decodes to: a bound, not an estimate."""


def least_reply_chars(schema: Any, limit: int) -> int:
    """The fewest characters of JSON any value valid for ``schema`` can take, as
    far as its plain keywords tell (``minLength``, ``minItems``, ``required``...;
    anything else counts as one character), and at most ``limit``: enough to say
    that ``minLength: 2000000000`` cannot fit in a reply of 800 tokens."""
    return min(_least(schema, limit, 0), limit)


def _least(schema: Any, limit: int, depth: int) -> int:
    if not isinstance(schema, Mapping) or depth > 32:
        return 1
    kind = schema.get("type")
    if kind == "string":
        return 2 + _count(schema.get("minLength"))
    if kind == "array":
        items = schema.get("items")
        each = _least(items, limit, depth + 1) + 1 if isinstance(items, Mapping) else 2
        return min(2 + _count(schema.get("minItems")) * each, limit)
    if kind == "object":
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        required = schema.get("required")
        total = 2
        for name in required if isinstance(required, list) else []:
            if not isinstance(name, str):
                continue
            total += len(name) + 4 + _least(properties.get(name), limit, depth + 1)
            if total >= limit:
                return limit
        return max(total, 2 + 5 * _count(schema.get("minProperties")))
    return 1


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")


def has_refs(schema: Any) -> bool:
    """Whether any mapping in ``schema`` has a reference keyword (a cheap scan: a
    schema without one is used as written, and :mod:`aoe.format.schemarefs` is not even
    imported for it)."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if any(keyword in node for keyword in REF_KEYWORDS):
                return True
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, dict | list))
    return False
