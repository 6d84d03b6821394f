"""The documents a schema's ``$ref``s are resolved in, and the pointers between them.

Shared by the resolution of ``$ref``s (:mod:`aoe.format.schemarefs`), the
search for loops of them (:mod:`aoe.format.schemaloops`) and the bundling of
the files they name into one schema: each :class:`Document` keeps what was
found in it (its identifiers and anchors, its ``$ref``s and where each one
points, the edits bundling makes) so that each of those steps reads it alone.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple
from urllib.parse import quote

from aoe.format.diagnostics import describe
from aoe.format.schemas import shortened
from aoe.format.yamlsource import SourceMap

Where = tuple[str | int, ...]
"""A place in a document, as :class:`aoe.format.yamlsource.SourceMap` takes it."""
DROP = object()  # an edit that removes a key
CODE = "schema-ref"

# Keywords whose value is a schema, a list of schemas, or a mapping to schemas
# (every draft's: in another draft the walk merely checks a little more).
ONE = frozenset(
    {
        "additionalItems",
        "additionalProperties",
        "contains",
        "contentSchema",
        "else",
        "if",
        "items",
        "not",
        "propertyNames",
        "then",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
MANY = frozenset({"allOf", "anyOf", "oneOf", "prefixItems", "items", "additionalItems"})
NAMED = frozenset(
    {"$defs", "definitions", "dependentSchemas", "patternProperties", "properties", "dependencies"}
)
# Those that apply to the same value as the schema holding them: a loop of
# $refs through these alone never gets to the end of the reply.
SAME_VALUE = frozenset(
    {"allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas", "dependencies"}
)


class Refusal(NamedTuple):
    """Why the loader would not read a file, as it would have reported it."""

    code: str
    message: str


class Folder(NamedTuple):
    """The workflow's folder, as the loader reads it.

    ``read`` takes a path relative to the folder and applies ``prompt_file``'s
    rules (inside the folder, a regular file, at most 1 MiB, UTF-8);
    ``display`` names such a file in diagnostics. ``cache`` is the bundler's,
    kept for one load of the workflow: a file many agents name is read, parsed
    and checked once.
    """

    read: Callable[[str], str | Refusal]
    display: Callable[[str], str]
    cache: dict[Any, Any]


class Ref(NamedTuple):
    at: Where  # the schema holding the keyword
    keyword: str
    value: str


class Target(NamedTuple):
    document: Document
    at: Where
    through_file: bool  # named by a path: the written form means nothing once bundled


class Document:
    """One schema document: the output schema, or a file it refers to."""

    def __init__(
        self, key: str | None, data: Any, source: SourceMap, prefix: Where, label: str
    ) -> None:
        self.key = key
        self.data = data
        self.source = source
        self.prefix = prefix
        self.label = label
        self.folder = posixpath.dirname(key) if key else ""
        # every schema position walked, with the base URI and resource it is in
        self.scopes: dict[Where, tuple[str, Where]] = {}
        self.anchors: dict[tuple[str, str], Where] = {}
        self.refs: list[Ref] = []
        self.resolved = 0
        self.targets: dict[int, Target] = {}
        self.same_value: dict[Where, list[Where]] = {}
        self.edits: dict[Where, dict[str, Any]] = {}

    def drop(self, at: Where, keyword: str) -> None:
        self.edits.setdefault(at, {})[keyword] = DROP

    def place(self, at: Where) -> str:
        fragment = "#" + pointer(at)
        return fragment if self.key is None else f"{self.key}{fragment}"


class Dialect(NamedTuple):
    id_keyword: str  # "$id", or "id" before draft 6
    legacy_anchors: bool  # an id "#name" is an anchor (before 2019-09)
    defs: str  # where bundled files go


def dialect(root: dict[str, Any]) -> Dialect:
    uri = root.get("$schema")
    if isinstance(uri, str):
        if "draft-03" in uri or "draft-04" in uri:
            return Dialect("id", True, "definitions")
        if "draft-06" in uri or "draft-07" in uri:
            return Dialect("$id", True, "definitions")
    return Dialect("$id", False, "$defs")


def edited(data: Any, edits: dict[Where, dict[str, Any]]) -> Any:
    """``data`` with ``edits`` made: the mappings on the way to an edit are copied,
    everything else is shared (a file named by every agent is held once)."""
    if not edits:
        return data
    touched = {at[:cut] for at in edits for cut in range(len(at) + 1)}

    def copy(node: Any, at: Where) -> Any:
        if at not in touched:
            return node
        if isinstance(node, list):
            return [copy(child, (*at, number)) for number, child in enumerate(node)]
        if not isinstance(node, dict):
            return node
        new = {key: copy(child, (*at, key)) for key, child in node.items()}
        for key, value in edits.get(at, {}).items():
            if value is DROP:
                new.pop(key, None)
            else:
                new[key] = value
        return new

    return copy(data, ())


def value_at(data: Any, at: Where) -> Any:
    for part in at:
        data = data[part]
    return data


def pointer_index(segment: str, length: int) -> int | None:
    if segment.isdigit() and (segment == "0" or not segment.startswith("0")):
        number = int(segment)
        return number if number < length else None
    return None


def pointer(at: Where) -> str:
    """A JSON pointer as a URI fragment (``/$defs/a~1b``)."""
    return "".join(
        "/" + quote(str(part).replace("~", "~0").replace("/", "~1"), safe="$~!&'()*+,;=:@")
        for part in at
    )


def control(text: str) -> str:
    """The first control character of ``text``, escaped, or ``""``."""
    for char in text:
        if ord(char) < 32 or ord(char) == 127:
            return f"\\x{ord(char):02x}"
    return ""


def shown(text: str) -> str:
    """A reference as a message may show it: escaped, and not too long."""
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:120])
    return shortened(escaped, 100)


def kind(value: Any) -> str:
    """A value's kind, without the value: the file may hold anything."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return describe(value).split(" (")[0]


def children(key: str, value: Any) -> Iterator[tuple[Where, Any]]:
    """The schemas a keyword's value holds, each with its place under the keyword."""
    if key in NAMED and isinstance(value, dict):
        for name, child in value.items():
            if isinstance(child, dict | bool):
                yield (key, name), child
    elif key in MANY and isinstance(value, list):
        for number, child in enumerate(value):
            yield (key, number), child
    elif key in ONE and isinstance(value, dict | bool):
        yield (key,), value
