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
from collections.abc import Callable, Mapping
from typing import Any

from aoe.providers.base import Request, Response, Usage
from aoe.schemas import pointer_target

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

    async def complete(self, request: Request) -> Response:
        delay = request.params.get("latency") if request.provider == "mock" else None
        if delay is None:
            delay = self._latency(request) if callable(self._latency) else self._latency
        if delay:
            await asyncio.sleep(float(delay))
        digest = _digest(request)
        fixed = request.params.get("reply") if request.provider == "mock" else None
        if fixed is not None:
            text = str(fixed)
        elif request.output_format == "json":
            value = example(request.json_schema or {"type": "object"}, digest)
            text = json.dumps(value, ensure_ascii=False)
        else:
            text = _prose(digest, request.max_tokens)
        prompt = sum(len(m.content) for m in request.messages)
        usage = Usage(
            input_tokens=(prompt + 3) // 4 + 4 * len(request.messages),
            output_tokens=min(estimate_tokens(text), request.max_tokens),
        )
        return Response(text, usage, request.model, "stop")

    async def aclose(self) -> None:
        return None


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


def example(
    schema: Mapping[str, Any],
    digest: bytes,
    depth: int = 0,
    root: Mapping[str, Any] | None = None,
) -> Any:
    """A value valid for ``schema`` (the common keywords), chosen by ``digest``.

    ``root`` is the whole schema, which its ``#/...`` ``$ref``s point into (the
    loader makes every ``$ref`` one of those).
    """
    root = schema if root is None else root
    for _ in range(32):  # a $ref to a $ref ...: followed a bounded number of times
        ref = schema.get("$ref")
        if not isinstance(ref, str):
            break
        target = pointer_target(root, ref)
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **rest} if isinstance(target, Mapping) else rest
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        options = schema["enum"]
        return options[digest[depth % len(digest)] % len(options)]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return example(schema[key][0], digest, depth + 1, root)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(part)
        return example(merged, digest, depth + 1, root)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    tag = digest[depth % len(digest)]
    if kind == "object":
        properties: Mapping[str, Any] = schema.get("properties", {})
        names = list(dict.fromkeys([*schema.get("required", []), *properties]))
        return {
            name: example(properties.get(name, {"type": "string"}), digest, depth + 1 + i, root)
            for i, name in enumerate(names)
            if depth < 8
        }
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        count = min(count, int(schema.get("maxItems", count)))
        items = schema.get("items", {"type": "string"})
        items = items if isinstance(items, Mapping) else {"type": "string"}
        return (
            [example(items, digest, depth + 1 + i, root) for i in range(count)] if depth < 8 else []
        )
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 100))
        value = low + (tag % max(int(high - low), 1)) if high > low else low
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            value = schema["exclusiveMinimum"] + 1
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return tag % 2 == 0
    if kind == "null":
        return None
    if schema.get("format") == "uri":
        return f"https://example.com/mock/{digest[:4].hex()}"
    if schema.get("format") == "date":
        return "2026-01-01"
    if schema.get("format") == "date-time":
        return "2026-01-01T00:00:00Z"
    text = f"mock {_WORDS[tag % len(_WORDS)]} {digest[:3].hex()}"
    low = int(schema.get("minLength", 0))
    if len(text) < low:
        text = text + "x" * (low - len(text))
    if "maxLength" in schema:
        text = text[: int(schema["maxLength"])]
    return text
