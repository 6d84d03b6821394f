"""The ``mock`` provider: answers without any network, the same way every time.

The reply is derived from a hash of the request, so the same prompt gets the
same answer and a changed prompt a different one. When the agent asks for
JSON, the reply is a value valid for its schema. Token counts come from the
text (about four characters a token), so costs can be rehearsed with
``aoe run --mock``, priced like the models the agents name.

An agent that names ``provider: mock`` may set, under ``llm.params``,
``latency`` (seconds to wait before answering) and ``reply`` (the text to
answer with). ``AOE_MOCK_LATENCY`` sets the latency of every mock call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from aoe.errors import RequestRejected
from aoe.format.schemas import pointer_target
from aoe.types import Request, Response, Usage

_WORDS = (
    "analysis",
    "market",
    "signal",
    "growth",
    "risk",
    "cost",
    "model",
    "agent",
    "plan",
    "result",
    "insight",
    "trend",
    "data",
    "evidence",
    "summary",
    "option",
    "review",
    "design",
    "impact",
    "demand",
    "supply",
    "source",
    "metric",
    "team",
)


def estimate_tokens(text: str) -> int:
    """Tokens of a text by the usual rule of thumb: about four characters each."""
    return (len(text) + 3) // 4


class MockProvider:
    """Deterministic replies, token counts from the text, optional simulated latency."""

    name = "mock"

    def __init__(self, latency: float | Callable[[Request], float] = 0.0) -> None:
        self._latency = latency

    async def complete(
        self, request: Request, progress: Callable[[str], None] | None = None, *, live: bool = False
    ) -> Response:
        """The reply, whole (``progress`` is told it once, as it comes)."""
        delay = request.params.get("latency") if request.provider == "mock" else None
        if delay is None:
            delay = self._latency(request) if callable(self._latency) else self._latency
        if delay:
            await asyncio.sleep(_seconds(delay))
        digest = _digest(request)
        fixed = request.params.get("reply") if request.provider == "mock" else None
        if fixed is not None:
            text = str(fixed)
        elif request.output_format == "json":
            value = example(
                request.json_schema or {"type": "object"}, digest, request.max_tokens * 4
            )
            text = json.dumps(value, ensure_ascii=False)
        else:
            text = _prose(digest, request.max_tokens)
        prompt = sum(len(m.content) for m in request.messages)
        usage = Usage(
            input_tokens=(prompt + 3) // 4 + 4 * len(request.messages),
            output_tokens=min(estimate_tokens(text), request.max_tokens),
        )
        if progress is not None:
            progress(text)
        return Response(text, usage, request.model, "stop")

    async def aclose(self) -> None:
        return None


def _seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise RequestRejected(
            f"mock: the latency {str(value)[:40]!r} is not a number of seconds, 0 or more "
            "(llm.params.latency or AOE_MOCK_LATENCY)",
            provider="mock",
        )
    return seconds


def _digest(request: Request) -> bytes:
    h = hashlib.sha256(request.model.encode())
    for message in request.messages:
        h.update(b"\0" + message.role.encode() + b"\0" + message.content.encode())
    return h.digest()


_PROSE = " ".join(_WORDS * 3)


def _prose(digest: bytes, max_tokens: int) -> str:
    """Some words, where and how many chosen by the digest: cheap, and different
    for different requests."""
    start = digest[1] % (len(_PROSE) // 3)
    start = _PROSE.find(" ", start) + 1
    end = _PROSE.find(" ", start + 60 + digest[0] % 120)
    text = f"Mock answer {digest[:4].hex()}: {_PROSE[start:end]}."
    return text[: max(max_tokens * 4, 1)]


MAX_REPLY = 64 << 10
"""Characters a mock reply may have, whatever ``max_tokens`` says (~16,000 tokens:
making it takes a few ms, on the event loop)."""


def example(schema: Mapping[str, Any], digest: bytes, budget: int = 4096) -> Any:
    """A value valid for ``schema`` (the common keywords), chosen by ``digest``, whose
    JSON text stays within about ``budget`` characters: a model's reply is bounded
    by ``max_tokens``, and so is the mock's. A schema that asks for more (a
    ``minLength`` of two billion) gets less, and fails its check as it would
    with a model."""
    return _example(schema, digest, 0, 0, _Budget(min(budget, MAX_REPLY)), schema)


class _Budget:
    """What a mock reply may still hold, in characters of JSON; and the sizes of the
    schema's constants, worked out once each."""

    __slots__ = ("chars", "sizes")

    def __init__(self, chars: int) -> None:
        self.chars = chars
        self.sizes: dict[int, int] = {}

    def spend(self, value: Any) -> Any:
        """``value`` (a ``const`` or an ``enum`` choice), its size spent."""
        size = self.sizes.get(id(value))
        if size is None:
            size = self.sizes[id(value)] = len(json.dumps(value, default=str))
        self.chars -= size
        return value


def _example(
    schema: Any, digest: bytes, depth: int, salt: int, left: _Budget, root: Mapping[str, Any]
) -> Any:
    """``root`` is the whole schema, which its ``#/...`` ``$ref``s point into (the
    loader makes every ``$ref`` one of those). Work on the schema itself (copies of
    merged parts, constants) is spent from ``left`` as well: a schema can be large.

    Keywords that pick a value outright (``const``, ``enum``) or stand for another
    schema (``anyOf``, ``oneOf``, ``allOf``) are read here; the rest goes by
    ``type`` to one of :data:`_BY_KIND`."""
    schema = _follow_refs(schema, left, root)
    if not isinstance(schema, Mapping):
        return None  # true, false or a broken schema: anything, or nothing, fits
    if "const" in schema:
        return left.spend(schema["const"])
    if schema.get("enum") and isinstance(schema["enum"], list):
        options = schema["enum"]
        return left.spend(options[digest[salt % len(digest)] % len(options)])
    for key in ("anyOf", "oneOf"):
        if schema.get(key) and isinstance(schema[key], list):
            return _example(schema[key][0], digest, depth + 1, salt, left, root)
    if schema.get("allOf") and isinstance(schema["allOf"], list):
        merged = _merge_all_of(schema["allOf"], left)
        return _example(merged, digest, depth + 1, salt, left, root)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    left.chars -= 8  # brackets, quotes, commas and small numbers, roughly
    # a `type` that is no type name (a number, a mapping) gets a string, as it always has
    make = _BY_KIND.get(kind, _string) if isinstance(kind, str) else _string
    return make(schema, digest, depth, salt, left, root)


def _follow_refs(schema: Any, left: _Budget, root: Mapping[str, Any]) -> Any:
    """The schema a ``$ref`` points to, its siblings merged over it."""
    for _ in range(32):  # a $ref to a $ref ...: followed a bounded number of times
        if not isinstance(schema, Mapping):
            break
        ref = schema.get("$ref")
        if not isinstance(ref, str):
            break
        target = pointer_target(root, ref)
        if len(schema) == 1:  # the usual bundled `{"$ref": "#/$defs/x"}`: no copy
            schema = target
            continue
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        left.chars -= len(schema) + (len(target) if isinstance(target, Mapping) else 0)
        schema = {**target, **rest} if isinstance(target, Mapping) else rest
    return schema


def _merge_all_of(parts: list[Any], left: _Budget) -> dict[str, Any]:
    """The parts of an ``allOf`` merged into one schema, later keys winning."""
    merged: dict[str, Any] = {}
    for part in parts:
        if isinstance(part, Mapping):
            left.chars -= len(part)
            merged.update(part)
    return merged


def _object(
    schema: Mapping[str, Any],
    digest: bytes,
    depth: int,
    salt: int,
    left: _Budget,
    root: Mapping[str, Any],
) -> dict[str, Any]:
    """The required properties, then the others, each its own salt, until the depth
    or the budget runs out."""
    properties = schema.get("properties", {})
    properties = properties if isinstance(properties, Mapping) else {}
    required = schema.get("required", [])
    required = required if isinstance(required, list) else []
    value: dict[str, Any] = {}
    for i, name in enumerate(dict.fromkeys([*required, *properties])):
        if depth >= 8 or left.chars <= 0:
            break
        left.chars -= len(str(name))
        value[str(name)] = _example(
            properties.get(name, {"type": "string"}), digest, depth + 1, salt + 1 + i, left, root
        )
    return value


def _array(
    schema: Mapping[str, Any],
    digest: bytes,
    depth: int,
    salt: int,
    left: _Budget,
    root: Mapping[str, Any],
) -> list[Any]:
    """``minItems`` items (at least one, at most ``maxItems``), until the depth or the
    budget runs out."""
    count = max(_count(schema.get("minItems"), 1), 1)
    count = min(count, _count(schema.get("maxItems"), count))
    items = schema.get("items", {"type": "string"})
    items = items if isinstance(items, Mapping) else {"type": "string"}
    values: list[Any] = []
    for i in range(count):
        if depth >= 8 or left.chars <= 0:
            break
        values.append(_example(items, digest, depth + 1, salt + 1 + i, left, root))
    return values


def _integer(
    schema: Mapping[str, Any],
    digest: bytes,
    depth: int,
    salt: int,
    left: _Budget,
    root: Mapping[str, Any],
) -> int | float:
    return _number(schema, digest[salt % len(digest)], integer=True)


def _float(
    schema: Mapping[str, Any],
    digest: bytes,
    depth: int,
    salt: int,
    left: _Budget,
    root: Mapping[str, Any],
) -> int | float:
    return _number(schema, digest[salt % len(digest)], integer=False)


def _boolean(
    schema: Mapping[str, Any],
    digest: bytes,
    depth: int,
    salt: int,
    left: _Budget,
    root: Mapping[str, Any],
) -> bool:
    return digest[salt % len(digest)] % 2 == 0


def _null(
    schema: Mapping[str, Any],
    digest: bytes,
    depth: int,
    salt: int,
    left: _Budget,
    root: Mapping[str, Any],
) -> None:
    return None


def _string(
    schema: Mapping[str, Any],
    digest: bytes,
    depth: int,
    salt: int,
    left: _Budget,
    root: Mapping[str, Any],
) -> str:
    """A text for the common ``format``s, else some words; padded to ``minLength``
    (as far as the budget goes) and cut to ``maxLength``."""
    tag = digest[salt % len(digest)]
    if schema.get("format") == "uri":
        text = f"https://example.com/mock/{digest[:4].hex()}"
    elif schema.get("format") == "date":
        text = "2026-01-01"
    elif schema.get("format") == "date-time":
        text = "2026-01-01T00:00:00Z"
    else:
        text = f"mock {_WORDS[tag % len(_WORDS)]} {digest[:3].hex()}"
    low = min(_count(schema.get("minLength"), 0), max(left.chars, 0))
    if len(text) < low:
        text = text + "x" * (low - len(text))
    if "maxLength" in schema:
        text = text[: _count(schema["maxLength"], len(text))]
    left.chars -= len(text)
    return text


_Maker = Callable[[Mapping[str, Any], bytes, int, int, _Budget, Mapping[str, Any]], Any]

_BY_KIND: dict[str, _Maker] = {
    "object": _object,
    "array": _array,
    "integer": _integer,
    "number": _float,
    "boolean": _boolean,
    "null": _null,
}
"""A value of each JSON type, by the schema's ``type``; any other gets :func:`_string`.
Each takes the same arguments as :func:`_example`, the schema resolved."""


def _count(value: Any, default: int) -> int:
    """A schema's count keyword (``minItems`` ...), or ``default`` if it is not one."""
    return (
        value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default
    )


def _number(schema: Mapping[str, Any], tag: int, integer: bool) -> int | float:
    """A number within the schema's bounds, when they are plain numbers."""
    bounds = [schema.get(k) for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")]
    if not all(b is None or _plain_number(b) for b in bounds):
        return 0
    minimum, above, maximum, below = bounds
    low = _first(minimum, above, 0)
    high = _first(maximum, below, low + 100)
    try:
        value = low + (tag % max(int(high - low), 1)) if high > low else low
        if above is not None and value <= above:
            value = above + 1
        return int(value) if integer else float(value)
    except (OverflowError, ValueError):  # bounds too large to step between
        return low if not integer or isinstance(low, int) else 0


def _plain_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _first(*values: Any) -> Any:
    """The first of ``values`` that is given (the last is the default)."""
    return next(v for v in values if v is not None)
