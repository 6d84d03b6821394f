"""Pydantic validation errors turned into located, actionable diagnostics.

Pydantic says "Input should be a valid integer" at ``('agents', 'x', 'llm',
'max_tokens')``. A user needs ``wf.yaml:12:20: error: agents.x.llm.max_tokens
must be an integer, not a string ("800"); remove the quotes``. This module
does that translation for any model read from YAML (workflows and configs),
including "did you mean" for unknown keys, from the models' own fields.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from aoe.format.diagnostics import describe
from aoe.format.yamlsource import Path, SourceMap
from aoe.types import Diagnostic

_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "dict_type": "a mapping (key: value pairs)",
    "model_type": "a mapping (key: value pairs)",
    "model_attributes_type": "a mapping (key: value pairs)",
    "list_type": "a list",
    "finite_number": "a finite number",
}
_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "greater than"),
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
}
# Checks that look at a whole mapping, pointed at the key that must change.
_POINT_AT = {
    "max_delay_below_base": ("max_delay",),
    "schema_needs_json": ("format",),
    "schema_and_file": ("schema_file",),
    "prompt_and_file": ("prompt_file",),
    "system_and_file": ("system_file",),
    "prompt_missing": (),
}


def dotted(path: Sequence[str | int]) -> str:
    """``('agents', 'x', 'fallbacks', 0)`` as ``agents.x.fallbacks[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "the document"


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice most like ``word``, if any is close enough to suggest."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    match = closest(word, choices)
    return f"; did you mean '{match}'?" if match else ""


def unwrap(annotation: Any) -> Any:
    """The type inside ``Annotated[...]`` and ``X | None``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            arms = [a for a in get_args(annotation) if a is not type(None)]
            if len(arms) != 1:
                return annotation
            annotation = arms[0]
        else:
            return annotation


def model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``loc`` under ``root``."""
    current: Any = root
    for part in loc:
        current = unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = _field(current, part)
            if field is None:
                return None
            current = field
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) is list:
            current = get_args(current)[0]
        else:
            return None
    current = unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _field(model: type[BaseModel], key: str | int) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.annotation
    return None


def _nested_keys(model: type[BaseModel]) -> list[str]:
    """Keys one level down, as ``llm.model``: for a key written one level too high."""
    nested: list[str] = []
    for name, info in model.model_fields.items():
        inner = unwrap(info.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            nested.extend(f"{info.alias or name}.{key}" for key in keys_of(inner))
    return nested


def did_you_mean_nested(word: str, nested: list[str]) -> str:
    """Like :func:`did_you_mean`, matching only the last part of ``a.b`` choices."""
    tails = {choice.rsplit(".", 1)[-1]: choice for choice in nested}
    match = closest(word, tails)
    return f"; did you mean '{tails[match]}'?" if match else ""


def keys_of(model: type[BaseModel]) -> list[str]:
    """The keys a model accepts, as written in files (aliases, not attribute names)."""
    return [info.alias or name for name, info in model.model_fields.items()]


def diagnostics_from_error(
    error: ValidationError,
    source: SourceMap,
    root: type[BaseModel],
    *,
    prefix: Path = (),
    root_prefix: Path = (),
) -> list[Diagnostic]:
    """Translate every error of ``error`` into a located diagnostic.

    ``prefix`` is where the validated value sits in the document; ``root`` is
    the model that validated it, and ``root_prefix`` the part of the prefix
    that leads to ``root`` (for finding the keys a mapping accepts).
    """
    items = error.errors(include_url=False)
    # A key that is missing while a misspelling of it is present: the "did you
    # mean" on the misspelt key says it all, so the missing key is not reported.
    unknown: dict[tuple[object, ...], list[str]] = {}
    for item in items:
        if item["type"] == "extra_forbidden":
            unknown.setdefault(tuple(item["loc"][:-1]), []).append(str(item["loc"][-1]))
    kept = [
        item
        for item in items
        if not (
            item["type"] == "missing"
            and closest(str(item["loc"][-1]), unknown.get(tuple(item["loc"][:-1]), ()))
        )
    ]
    return [
        (
            union_diagnostic(group, source, prefix)
            if isinstance(group, list)
            else diagnostic_for(group, source, root, prefix=prefix, skip=len(root_prefix))
        )
        for group in grouped(kept)
    ]


def grouped(items: list[Any]) -> list[Any]:
    """pydantic's errors in order, those of one value that each member of a
    union refused (``bool | Literal["auto"]``) as one list, to be said once."""
    found: list[Any] = []
    unions: dict[tuple[object, ...], list[Any]] = {}
    for item in items:
        if len(item["loc"]) > 1 and _UNION_MEMBER.fullmatch(str(item["loc"][-1])):
            members = unions.setdefault(tuple(item["loc"][:-1]), [])
            if not members:
                found.append(members)
            members.append(item)
        else:
            found.append(item)
    return found


# how pydantic names the members of a union in an error's location
_UNION_MEMBER = re.compile(
    r"(bool|int|float|str|none|literal\[.*\]|list\[.*\]|dict\[.*\]|[A-Z]\w*)"
)


def union_diagnostic(items: list[Any], source: SourceMap, prefix: Path = ()) -> Diagnostic:
    """A value no member of a union took: what each would take, as one list."""
    loc: Path = (*prefix, *items[0]["loc"][:-1])
    value = items[0].get("input")
    kinds: list[str] = []
    for item in items:
        if item["type"] == "literal_error":
            expected = (item.get("ctx") or {}).get("expected", "")
            kinds += [a.strip().strip("'") for a in expected.replace(" or ", ", ").split(",")]
        elif item["type"] == "bool_type":
            kinds += ["true", "false"]
        else:
            kinds.append(_EXPECTED.get(item["type"], item["msg"]))
    kinds = list(dict.fromkeys(k for k in kinds if k))
    said = ", ".join(kinds[:-1]) + f" or {kinds[-1]}" if len(kinds) > 1 else kinds[0]
    message = f"{dotted(loc)} must be {said}, not {describe(value)}"
    if isinstance(value, str):
        message += did_you_mean(value, kinds)
    return source.diagnostic(loc, "value", message)


def diagnostic_for(
    item: Any, source: SourceMap, root: type[BaseModel], *, prefix: Path = (), skip: int = 0
) -> Diagnostic:
    """One pydantic error (an item of ``ValidationError.errors()``) as a diagnostic."""
    loc: Path = (*prefix, *item["loc"])
    kind: str = item["type"]
    if loc and loc[-1] == "[key]":
        path = loc[:-1]
        return source.diagnostic(
            path, "key", f"the key '{path[-1]}' is not valid: {item['msg']}", at_key=True
        )
    if kind == "extra_forbidden":
        return _unknown_key(source, loc, root, skip)
    if kind == "missing":
        parent = loc[:-1]
        return source.diagnostic(
            parent,
            "missing-key",
            f"{dotted(parent)} is missing the required key '{loc[-1]}'; add it",
            at_key=bool(parent),
        )
    if kind in _EXPECTED:
        return _wrong_type(item, source, loc)
    if kind == "literal_error":
        return _not_one_of(item, source, loc)
    if kind in _BOUNDS or kind in _SIZES:
        return source.diagnostic(loc, "range", _out_of_range(item, dotted(loc)))
    if kind in _POINT_AT:
        for key in _POINT_AT[kind]:
            if source.has((*loc, key)):
                loc = (*loc, key)
                break
        return source.diagnostic(
            loc, kind.replace("_", "-"), f"{dotted(loc)}: {item['msg']}", at_key=True
        )
    message = item["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if not (loc and message.startswith(str(loc[-1]))):
        message = f"{dotted(loc)}: {message}"
    return source.diagnostic(loc, kind.replace("_", "-"), message)


def _unknown_key(source: SourceMap, loc: Path, root: type[BaseModel], skip: int) -> Diagnostic:
    """A key the model does not have, with the key meant if it is a misspelling."""
    parent = loc[:-1]
    key = str(loc[-1])
    model = model_at(root, parent[skip:])
    choices = keys_of(model) if model else []
    hint = did_you_mean(key, choices)
    if not hint and model is not None:
        hint = did_you_mean_nested(key, _nested_keys(model))
    if not hint and choices:
        hint = "; valid keys here: " + ", ".join(choices)
    return source.diagnostic(
        loc, "unknown-key", f"unknown key '{key}' in {dotted(parent)}{hint}", at_key=True
    )


def _wrong_type(item: Any, source: SourceMap, loc: Path) -> Diagnostic:
    """A value of the wrong type, with the quotes to add or remove where that is why."""
    kind: str = item["type"]
    value = item.get("input")
    message = f"{dotted(loc)} must be {_EXPECTED[kind]}, not {describe(value)}"
    if kind == "string_type" and isinstance(value, bool | int | float):
        message += "; put the value in quotes to keep it as text"
    elif kind in ("int_type", "float_type", "bool_type") and isinstance(value, str):
        message += "; remove the quotes" if source.value(loc).quoted else ""
    return source.diagnostic(loc, "type", message)


def _not_one_of(item: Any, source: SourceMap, loc: Path) -> Diagnostic:
    """A value outside a ``Literal``'s choices."""
    value = item.get("input")
    ctx = item.get("ctx") or {}
    allowed = [
        a.strip().strip("'") for a in ctx.get("expected", "").replace(" or ", ", ").split(",")
    ]
    message = f"{dotted(loc)} must be one of {', '.join(allowed)}, not {describe(value)}"
    if isinstance(value, str):
        message += did_you_mean(value, allowed)
    return source.diagnostic(loc, "value", message)


def _out_of_range(item: Any, where: str) -> str:
    """A number past a bound, or a text or list too short or too long."""
    kind: str = item["type"]
    ctx = item.get("ctx") or {}
    if kind in _BOUNDS:
        ctx_key, words = _BOUNDS[kind]
        bound = ctx.get(ctx_key)
        shown = f"{bound:g}" if isinstance(bound, float) else str(bound)
        given = item.get("input")
        if isinstance(given, int | float) and not isinstance(given, bool):
            return f"{where} must be {words} {shown}, not {given:g}"  # (a number: as it is)
        return f"{where} must be {words} {shown}, not {describe(given)}"
    if kind == "string_too_short":
        return f"{where} must not be empty"
    if kind == "string_too_long":
        return f"{where} is longer than {ctx.get('max_length')} characters; shorten it"
    return f"{where} must have at least {ctx.get('min_length')} entry"  # too_short


_SIZES = frozenset({"string_too_short", "string_too_long", "too_short"})
