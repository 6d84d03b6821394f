"""Checking a reply against what its agent asked for.

``format: text`` takes the reply as it is. ``format: json`` parses it (a reply
wrapped in a Markdown code fence is unwrapped first) and validates the value
against the output schema with ``jsonschema``; a reply that does not fit fails
the attempt with :class:`aoe.errors.OutputInvalid`, whose message says what is
wrong, so that a retry can tell the model.

The loader has resolved and bundled every ``$ref`` (:mod:`aoe.format.schemarefs`), so
the validator never needs to fetch anything, and is built so that it cannot: a
``$ref`` it does not find is refused, never retrieved. A schema that cannot be
applied fails the attempt with :class:`aoe.errors.SchemaUnusable`, in aoe's
words: jsonschema's own messages may quote the schema whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from aoe.errors import OutputInvalid, SchemaUnusable
from aoe.format.bounded import ByteLRU
from aoe.format.schemas import shortened
from aoe.format.workflow import OutputConfig
from aoe.types import plain

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n(?P<body>.*?)\n?```", re.DOTALL)
# Validators by schema object (kept with it, so an id is never reused under us),
# bounded by bytes: a service sees schemas of every size (about 3x their JSON).
_validators: ByteLRU[int, tuple[Mapping[str, Any], Any, int]] = ByteLRU(
    8 << 20, lambda key, entry: entry[2]
)


def parse_output(text: str, output: OutputConfig) -> Any:
    """The agent's output value from a reply; raises :class:`OutputInvalid` (or
    :class:`SchemaUnusable`, not the reply's fault)."""
    if output.format != "json":
        return text
    body = text
    try:
        value = _loads(body)
    except json.JSONDecodeError as e:
        fenced = _FENCE.search(text)  # JSON in a code fence, perhaps after some words
        if fenced is None:
            raise _not_json(e, body) from None
        body = fenced.group("body")
        try:
            value = _loads(body)
        except json.JSONDecodeError as inner:
            raise _not_json(inner, body) from None
    if output.schema is not None:
        problem = schema_problem_of(value, output.schema)
        if problem:
            raise OutputInvalid(f"the reply does not match the output schema: {problem}")
    return value


def clean_text(text: str) -> str:
    """``text`` with each lone surrogate (half of a character, as a ``\\ud83d``
    escape in a server's JSON gives) as U+FFFD: such text cannot be written as
    UTF-8, not in the run's record, its journal or anything it is sent to."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _clean_value(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_clean_value(v) for v in value]
    if isinstance(value, dict):
        return {clean_text(k): _clean_value(v) for k, v in value.items()}
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _loads(body: str) -> Any:
    """The reply's JSON. Control characters inside its strings (a raw newline or
    tab, which models write and grammar-held servers let through) are read as
    the characters they are (``strict=False``); anything else must be JSON."""
    try:
        value = json.loads(body, strict=False)
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError):  # an integer of over 4,300 digits; deep nesting
        raise OutputInvalid(
            "the reply is JSON that cannot be read: an integer of thousands of digits, "
            "or arrays and objects nested thousands deep"
        ) from None
    # a \\ud83d escape makes half a character: cleaned where one may be (rarely)
    return _clean_value(value) if _SURROGATE_ESCAPE.search(body) else value


def _not_json(e: json.JSONDecodeError, body: str) -> OutputInvalid:
    shown = body.strip()[:60].replace("\n", " ")
    more = "..." if len(body.strip()) > 60 else ""
    return OutputInvalid(
        f"the reply is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): "
        f"{shown!r}{more}"
    )


def validator_for(schema: Mapping[str, Any]) -> Any:
    """A jsonschema validator for ``schema`` that never fetches what a ``$ref``
    names (kept with the schema object, which outlives it)."""
    cached = _validators.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    from jsonschema import validators

    document = plain(schema)
    validator = validators.validator_for(document)(document, registry=_offline_registry())
    size = 3 * len(json.dumps(document, default=str)) + 2048
    _validators.put(id(schema), (schema, validator, size))
    return validator


def schema_problem_of(value: Any, schema: Mapping[str, Any]) -> str | None:
    """Why ``value`` does not match ``schema`` (in at most a few hundred characters),
    or None; raises :class:`SchemaUnusable` when the schema cannot be applied."""
    try:
        from jsonschema.exceptions import best_match

        error = best_match(validator_for(schema).iter_errors(value))
    except MemoryError:
        raise  # the reply's size, not the schema's fault (the sandbox says so)
    except Exception as e:  # jsonschema's and referencing's, translated
        raise _unusable(e) from None
    if error is None:
        return None
    where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return _middle(error.message) + (f" (at output{shortened(where, 100)})" if where else "")


def _middle(message: str, limit: int = 240) -> str:
    """A validator's message in ``limit`` characters: its start and its end, which
    says what is wrong ("... is too short"), with the reply quoted between cut."""
    if len(message) <= limit:
        return message
    return message[: limit * 2 // 3] + " ... " + message[-(limit // 3) :]


def _refuse(uri: str) -> Any:
    """The registry's retrieval: nothing, ever (no urllib, no file)."""
    from referencing.exceptions import NoSuchResource

    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # attrs, unseen by mypy


_registry: Any = None


def _offline_registry() -> Any:
    global _registry
    if _registry is None:
        from referencing import Registry

        _registry = Registry(retrieve=_refuse)  # type: ignore[call-arg]  # attrs, unseen by mypy
    return _registry


def _unusable(error: Exception) -> SchemaUnusable:
    """aoe's words for why the schema could not be applied: a third party's message
    may quote the schema, or a file, whole."""
    from jsonschema.exceptions import UnknownType
    from referencing.exceptions import NoSuchAnchor, PointerToNowhere, Unresolvable

    if isinstance(error, Unresolvable):
        # jsonschema wraps referencing's error: the cause says which it was
        inner = error.__cause__ if isinstance(error.__cause__, Unresolvable) else error
        if isinstance(inner, PointerToNowhere | NoSuchAnchor):
            return SchemaUnusable(
                "a $ref of the output schema points at nothing in it; `aoe validate` shows which"
            )
        ref = getattr(inner, "ref", None)
        named = f" '{shortened(ref, 100)}'" if isinstance(ref, str) else ""
        return SchemaUnusable(
            f"the output schema's $ref{named} cannot be resolved: aoe never fetches schemas; "
            "refer to a part of the schema ('#/$defs/...') or to a file next to the workflow, "
            "and check the workflow with `aoe validate`"
        )
    if isinstance(error, UnknownType):
        kind = error.type if isinstance(error.type, str) else "?"
        return SchemaUnusable(
            f"the output schema asks for type '{shortened(kind, 40)}', which the validator "
            "does not know; use string, number, integer, boolean, object, array or null"
        )
    if isinstance(error, RecursionError):
        return SchemaUnusable(
            "the output schema refers to itself without end; break the loop of $refs"
        )
    return SchemaUnusable(
        f"the output schema cannot be applied to the reply ({type(error).__name__}); "
        "check the workflow with `aoe validate`"
    )
