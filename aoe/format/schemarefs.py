"""The ``$ref``s of an output schema, resolved once, when the workflow is loaded.

Handed a schema without a registry, jsonschema fetches what a ``$ref`` names
(``http://``, ``https://``, ``file://``) with urllib at every validation: a
workflow could make aoe read any file or call any host, and the exception it
raises on a file that is not a schema quotes that file whole. So aoe resolves
each ``$ref`` itself, at load time, and only to places inside the workflow:

- a fragment of the document it is in (``#/$defs/item``, ``#name``), or an
  ``$id`` the output schema declares: it must point at a schema;
- a relative path (``defs/common.json#/$defs/x``): a file of the workflow's
  folder, relative to the document that names it, read by the loader under
  ``prompt_file``'s rules; it must be a JSON Schema, and its own ``$ref``s are
  followed in turn (a loop between files is fine if it goes through a property
  or an item);
- anything else (a URL, an absolute path, a control character): an error at the
  ``$ref``'s line.

The files are then bundled into the schema, each under ``$defs`` with a key of
its own, and every ``$ref`` to them rewritten as a ``#/$defs/...`` pointer (so
are the schema's references to its own anchors and ``$id``s). The result is one
self-contained document: what the engine validates replies against and what a
provider is sent (OpenAI's structured outputs take nothing else). A loop of
``$ref``s that never goes into a property or an item, on which validation would
recurse without end, is an error too.

The engine still validates with a registry that refuses every retrieval
(:func:`aoe.policy.outputs.validator_for`): a schema that did not come through here
cannot fetch anything either.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, urljoin, urlsplit

from aoe.format.diagnostics import describe
from aoe.format.modelerrors import did_you_mean
from aoe.format.schemas import REF_KEYWORDS, same_dialect, schema_fault, shortened
from aoe.format.yamlsource import SourceMap, YamlDocument, YamlError, parse_yaml
from aoe.types import Diagnostic

Where = tuple[str | int, ...]
"""A place in a document, as :class:`aoe.format.yamlsource.SourceMap` takes it."""


# Keywords whose value is a schema, a list of schemas, or a mapping to schemas
# (every draft's: in another draft the walk merely checks a little more).
_ONE = frozenset(
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
_MANY = frozenset({"allOf", "anyOf", "oneOf", "prefixItems", "items", "additionalItems"})
_NAMED = frozenset(
    {"$defs", "definitions", "dependentSchemas", "patternProperties", "properties", "dependencies"}
)
# Those that apply to the same value as the schema holding them: a loop of
# $refs through these alone never gets to the end of the reply.
_SAME_VALUE = frozenset(
    {"allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas", "dependencies"}
)
_DROP = object()  # an edit that removes a key
_Node = tuple[str | None, Where]  # a schema position: (document's key, place in it)
# a step of the search for loops: the position, the $ref taken to it (None: a
# keyword such as allOf), what comes after it
_Frame = tuple[_Node, int | None, Iterator[tuple[_Node, int | None]]]
_CODE = "schema-ref"


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


def bundle(
    schema: dict[str, Any],
    source: SourceMap,
    prefix: Where,
    key: str | None,
    folder: Folder,
) -> tuple[dict[str, Any] | None, list[Diagnostic]]:
    """``schema`` with its ``$ref``s resolved and the files they name bundled in,
    or None; and every problem found, at its line.

    ``source`` and ``prefix`` say where ``schema`` was written (the workflow file
    at ``agents.X.output.schema``, or a schema file at its top); ``key`` is that
    schema file's path relative to the folder, None for a schema written inline.
    """
    bundler = _Bundler(_Document(key, schema, source, prefix, "the output schema"), folder)
    return bundler.run(), bundler.diagnostics


class _Ref(NamedTuple):
    at: Where  # the schema holding the keyword
    keyword: str
    value: str


class _Target(NamedTuple):
    document: _Document
    at: Where
    through_file: bool  # named by a path: the written form means nothing once bundled


class _Document:
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
        self.refs: list[_Ref] = []
        self.resolved = 0
        self.targets: dict[int, _Target] = {}
        self.same_value: dict[Where, list[Where]] = {}
        self.edits: dict[Where, dict[str, Any]] = {}

    def drop(self, at: Where, keyword: str) -> None:
        self.edits.setdefault(at, {})[keyword] = _DROP

    def place(self, at: Where) -> str:
        pointer = "#" + _pointer(at)
        return pointer if self.key is None else f"{self.key}{pointer}"


class _Dialect(NamedTuple):
    id_keyword: str  # "$id", or "id" before draft 6
    legacy_anchors: bool  # an id "#name" is an anchor (before 2019-09)
    defs: str  # where bundled files go


def _dialect(root: dict[str, Any]) -> _Dialect:
    uri = root.get("$schema")
    if isinstance(uri, str):
        if "draft-03" in uri or "draft-04" in uri:
            return _Dialect("id", True, "definitions")
        if "draft-06" in uri or "draft-07" in uri:
            return _Dialect("$id", True, "definitions")
    return _Dialect("$id", False, "$defs")


class _Bundler:
    def __init__(self, root: _Document, folder: Folder) -> None:
        self.root = root
        self.folder = folder
        self.dialect = _dialect(root.data)
        self.documents: dict[str | None, _Document | None] = {root.key: root}
        self.files: list[_Document] = []  # in the order they were found
        self.diagnostics: list[Diagnostic] = []
        ident = root.data.get(self.dialect.id_keyword)
        self.base = ""
        if isinstance(ident, str) and not (self.dialect.legacy_anchors and ident[:1] == "#"):
            self.base = urljoin("", ident).partition("#")[0]
        self.ids: dict[str, Where] = {self.base: ()}

    # -- reporting -----------------------------------------------------------------
    def error(self, document: _Document, at: Where, message: str, code: str = _CODE) -> None:
        self.diagnostics.append(document.source.diagnostic(document.prefix + at, code, message))

    @property
    def failed(self) -> bool:
        return any(d.is_error for d in self.diagnostics)

    # -- the passes ----------------------------------------------------------------
    def run(self) -> dict[str, Any] | None:
        self.walk(self.root, self.root.data, (), self.base, ())
        pending = True
        while pending:
            pending = False
            for document in [self.root, *self.files]:
                while document.resolved < len(document.refs):
                    document.resolved += 1
                    self.resolve(document, document.resolved - 1)
                    pending = True
        self.check_loops()
        if self.failed:
            return None
        return self.assemble()

    def walk(self, document: _Document, node: Any, at: Where, base: str, resource: Where) -> None:
        """Every schema position under ``node``: identifiers, anchors and references."""
        stack = [(node, at, base, resource)]
        while stack:
            node, at, base, resource = stack.pop()
            if at in document.scopes or not isinstance(node, dict | bool):
                continue
            if isinstance(node, bool):
                document.scopes[at] = (base, resource)
                continue
            base, resource = self.identify(document, node, at, base, resource)
            document.scopes[at] = (base, resource)
            self.declare(document, node, at, base)
            for keyword in REF_KEYWORDS:
                value = node.get(keyword)
                if not isinstance(value, str):
                    continue
                if keyword != "$ref" and document is not self.root:
                    self.error(
                        document,
                        (*at, keyword),
                        f"{document.label} uses {keyword}, which only works in the output "
                        "schema itself (a file it names is bundled into it); use $ref",
                    )
                else:
                    document.refs.append(_Ref(at, keyword, value))
            for key, value in node.items():
                for tail, child in _children(key, value):
                    stack.append((child, (*at, *tail), base, resource))
                    if key in _SAME_VALUE:
                        document.same_value.setdefault(at, []).append((*at, *tail))

    def identify(
        self, document: _Document, node: dict[str, Any], at: Where, base: str, resource: Where
    ) -> tuple[str, Where]:
        """The base URI and resource inside ``node``, which may declare an ``$id``."""
        keyword = self.dialect.id_keyword
        ident = node.get(keyword)
        if not isinstance(ident, str):
            return base, resource
        if self.dialect.legacy_anchors and ident.startswith("#"):
            document.anchors.setdefault((base, ident[1:]), at)
            if document is not self.root:
                document.drop(at, keyword)
            return base, resource
        if document is not self.root:
            if at == ():  # the file's own name for itself: it is bundled under another
                document.drop(at, keyword)
            else:
                self.error(
                    document,
                    (*at, keyword),
                    f"{document.label} declares {keyword} '{_shown(ident)}' inside it; a file "
                    "an output schema refers to is bundled into that schema, where it "
                    "would change what other $refs mean: remove it, and refer to that "
                    "part with a '#/...' pointer",
                )
            return base, resource
        if at == ():
            return base, resource
        uri = urljoin(base, ident).partition("#")[0]
        self.ids.setdefault(uri, at)
        return uri, at

    def declare(self, document: _Document, node: dict[str, Any], at: Where, base: str) -> None:
        for keyword in ("$anchor", "$dynamicAnchor", "$recursiveAnchor"):
            name = node.get(keyword)
            if name is None:
                continue
            if document is not self.root and keyword != "$anchor":
                self.error(
                    document,
                    (*at, keyword),
                    f"{document.label} uses {keyword}, which only works in the output "
                    "schema itself (a file it names is bundled into it); use $anchor",
                )
            elif isinstance(name, str):
                document.anchors.setdefault((base, name), at)
                if document is not self.root:
                    document.drop(at, keyword)  # its $refs become pointers

    def resolve(self, document: _Document, index: int) -> None:
        """Where one ``$ref`` points, or an error at its line."""
        ref = document.refs[index]
        where = (*ref.at, ref.keyword)
        named = f"the output schema's {ref.keyword} '{_shown(ref.value)}'"
        base, resource = document.scopes[ref.at]
        bad = _control(ref.value)
        if bad:
            self.error(
                document,
                where,
                f"{named} holds a control character ({bad}); name a file by its plain "
                "relative path",
            )
            return
        address, _, fragment = ref.value.partition("#")
        if not address:
            self.locate(document, index, document, resource, base, fragment, through_file=False)
            return
        if document is self.root:
            absolute = urljoin(base, address)
            if absolute in self.ids:
                self.locate(document, index, document, self.ids[absolute], absolute, fragment)
                return
        parts = urlsplit(address)
        if parts.scheme or parts.netloc or address.startswith("/"):
            declared = (
                " ('#/$defs/...', or an $id declared in it)"
                if parts.scheme and document is self.root
                else " ('#/$defs/...')"
            )
            self.error(
                document,
                where,
                f"{named} names a place outside the workflow (a URL or an absolute path); "
                "aoe never fetches schemas: copy it into a file next to the workflow and "
                f"name that by its relative path, or point inside this schema{declared}",
            )
            return
        path = unquote(parts.path)
        bad = _control(path)
        if parts.query or "\\" in path or bad:
            self.error(
                document,
                where,
                f"{named} is not a plain relative path"
                + (f" (it holds a control character, {bad})" if bad else "")
                + "; write it with '/' between folders, without '?' or '\\'",
            )
            return
        if ref.keyword != "$ref":
            self.error(
                document,
                where,
                f"{named} names a file; a {ref.keyword} can only point inside the output "
                "schema: refer to files with $ref",
            )
            return
        relative = posixpath.normpath(posixpath.join(document.folder, path))
        target = self.document(relative, document, where, named)
        if target is not None:
            base = self.base if target is self.root else ""
            self.locate(document, index, target, (), base, fragment, through_file=True)

    def document(
        self, relative: str, referrer: _Document, where: Where, named: str
    ) -> _Document | None:
        """The file at ``relative``, checked and walked (None if it cannot be used, said
        at the ``$ref``; what is wrong inside it is said there, once per load)."""
        if relative in self.documents:
            return self.documents[relative]
        self.documents[relative] = None  # for good if it cannot be used
        loaded = self.load(relative)
        if not isinstance(loaded, Refusal):
            dialect = self.root.data.get("$schema")
            checked = self.folder.cache.get(("checked", relative, dialect))
            if checked is None:
                checked = self.check(relative, loaded)
                self.folder.cache[("checked", relative, dialect)] = checked
            loaded = checked
        if isinstance(loaded, Refusal):
            self.error(referrer, where, f"{named} cannot be used: {loaded.message}", loaded.code)
            return None
        document = _Document(relative, loaded.data, loaded.source, (), f"'{relative}'")
        if isinstance(loaded.data, dict) and "$schema" in loaded.data:
            document.drop((), "$schema")
        self.documents[relative] = document
        self.files.append(document)
        self.walk(document, loaded.data, (), "", ())
        return document

    def load(self, relative: str) -> YamlDocument | Refusal:
        """The file read and parsed, once per load of the workflow however many
        agents name it (the parsed values are shared: bundling copies nothing of them)."""
        cached: YamlDocument | Refusal | None = self.folder.cache.get(("parsed", relative))
        if cached is not None:
            return cached
        text = self.folder.read(relative)
        if isinstance(text, Refusal):
            loaded: YamlDocument | Refusal = text
        else:
            try:
                loaded = parse_yaml(text, self.folder.display(relative))
            except YamlError as e:
                self.diagnostics.extend(e.diagnostics)
                loaded = Refusal(
                    _CODE,
                    f"'{relative}' is not a JSON (or YAML) document (see the error in it)",
                )
            else:
                self.diagnostics.extend(loaded.diagnostics)
                if not isinstance(loaded.data, dict | bool):
                    loaded = Refusal(
                        _CODE,
                        f"'{relative}' holds {_kind(loaded.data)}, not a JSON Schema "
                        "(a mapping, or true or false)",
                    )
        self.folder.cache[("parsed", relative)] = loaded
        return loaded

    def check(self, relative: str, loaded: YamlDocument) -> YamlDocument | Refusal:
        """The file if it is a valid schema of the output schema's draft; else what is
        wrong said in it (never quoting it), and a refusal to say at the ``$ref``."""
        fault = schema_fault(loaded.data, self.root.data)
        if fault is not None:
            self.diagnostics.append(
                loaded.source.diagnostic(
                    fault.path,
                    "schema-invalid",
                    f"'{relative}', which an output schema refers to, is not a valid JSON "
                    f"Schema: {fault.message}",
                )
            )
            return Refusal(_CODE, f"'{relative}' is not a valid JSON Schema (see the error in it)")
        data = loaded.data
        if isinstance(data, dict) and "$schema" in data and not same_dialect(data, self.root.data):
            self.diagnostics.append(
                loaded.source.diagnostic(
                    ("$schema",),
                    _CODE,
                    f"'{relative}' is written for another draft of JSON Schema than the output "
                    "schema that refers to it; make their $schema the same",
                )
            )
            return Refusal(_CODE, f"'{relative}' is written for another draft of JSON Schema")
        return loaded

    def locate(
        self,
        document: _Document,
        index: int,
        target: _Document,
        resource: Where,
        base: str,
        fragment: str,
        *,
        through_file: bool = False,
    ) -> None:
        """The schema a fragment names in ``target`` (a JSON pointer from ``resource``,
        or an anchor), recorded as the ``$ref``'s target; or an error at the ``$ref``."""
        ref = document.refs[index]
        where = (*ref.at, ref.keyword)
        named = f"the output schema's {ref.keyword} '{_shown(ref.value)}'"
        node = _value_at(target.data, resource)
        at = resource
        if not fragment or fragment.startswith("/"):
            written = ""
            for raw in unquote(fragment[1:]).split("/") if fragment else []:
                segment = raw.replace("~1", "/").replace("~0", "~")
                written += "/" + raw
                if isinstance(node, dict) and segment in node:
                    node, at = node[segment], (*at, segment)
                elif isinstance(node, list) and _index(segment, len(node)) is not None:
                    number = _index(segment, len(node))
                    assert number is not None
                    node, at = node[number], (*at, number)
                else:
                    hint = did_you_mean(segment, node) if isinstance(node, dict) else ""
                    self.error(
                        document,
                        where,
                        f"{named} points at nothing: {target.label} has no "
                        f"'{_shown(written)}'{hint}",
                    )
                    return
        else:
            name = unquote(fragment)
            found = target.anchors.get((base, name))
            if found is None:
                self.error(
                    document,
                    where,
                    f"{named} points at nothing: {target.label} declares no $anchor "
                    f"'{_shown(name)}'{did_you_mean(name, [n for _, n in target.anchors])}",
                )
                return
            node, at = _value_at(target.data, found), found
        if not isinstance(node, dict | bool):
            self.error(
                document,
                where,
                f"{named} points at {_kind(node)}, not at a schema (a mapping, or true or false)",
            )
            return
        document.targets[index] = _Target(target, at, through_file)
        if at not in target.scopes:  # a place no keyword makes a schema: check it as one
            fault = schema_fault(node, self.root.data)
            if fault is not None:
                self.error(
                    target,
                    (*at, *fault.path),
                    f"{named} uses this as a schema, and it is not a valid one: {fault.message}",
                    "schema-invalid",
                )
                return
            self.walk(target, node, at, base, resource)

    def check_loops(self) -> None:
        """An error at a ``$ref`` that leads back to where it started without going into
        a property or an item: validating any value against it would never end."""
        documents = {d.key: d for d in (self.root, *self.files)}
        refs: dict[_Node, list[tuple[_Node, int]]] = {}
        for document in documents.values():
            for index, target in document.targets.items():
                start = (document.key, document.refs[index].at)
                refs.setdefault(start, []).append(((target.document.key, target.at), index))

        def onward(node: _Node) -> Iterator[tuple[_Node, int | None]]:
            document = documents[node[0]]
            for child in document.same_value.get(node[1], ()):
                yield (node[0], child), None
            yield from refs.get(node, ())

        state: dict[_Node, bool] = {}  # False while on the path, True when done
        for start in refs:
            if start in state:
                continue
            state[start] = False
            stack: list[_Frame] = [(start, None, onward(start))]
            while stack:
                node, _, successors = stack[-1]
                step = next(successors, None)
                if step is None:
                    state[node] = True
                    stack.pop()
                    continue
                following, via = step
                seen = state.get(following)
                if seen is None:
                    state[following] = False
                    stack.append((following, via, onward(following)))
                elif seen is False:
                    self.report_loop(documents, stack, following, node, via)

    def report_loop(
        self,
        documents: dict[str | None, _Document],
        stack: list[_Frame],
        back_to: _Node,
        last: _Node,
        via: int | None,
    ) -> None:
        first = next(i for i, frame in enumerate(stack) if frame[0] == back_to)
        loop = [frame[0] for frame in stack[first:]] + [back_to]
        # the $ref that closes the loop, else the first one in it
        if via is not None:
            at, index = last, via
        else:
            at, index = next(
                (stack[i - 1][0], entered)
                for i in range(first + 1, len(stack))
                if (entered := stack[i][1]) is not None
            )
        document = documents[at[0]]
        ref = document.refs[index]
        places = [documents[key].place(where) for key, where in loop]
        shown = " -> ".join(places if len(places) <= 6 else [*places[:3], "...", *places[-2:]])
        self.error(
            document,
            (*ref.at, ref.keyword),
            f"the output schema's {ref.keyword} '{_shown(ref.value)}' leads back to where "
            f"it started without going into a property or an item ({shortened(shown)}), so "
            "checking a reply against it would never end; break the loop",
        )

    def assemble(self) -> dict[str, Any] | None:
        """The output schema with each file under ``$defs`` and every ``$ref`` a pointer."""
        defs = self.dialect.defs
        existing = self.root.data.get(defs)
        taken = set(existing) if isinstance(existing, dict) else set()
        names: dict[str | None, str] = {}
        for document in self.files:
            stem = re.sub(r"[^A-Za-z0-9_-]", "_", document.key or "")
            name, number = stem, 2
            while name in taken:
                name, number = f"{stem}_{number}", number + 1
            taken.add(name)
            names[document.key] = name
        for document in (self.root, *self.files):
            for index, target in document.targets.items():
                ref = document.refs[index]
                if ref.keyword != "$ref":
                    continue  # dynamic: kept as written, resolved by the validator
                where = (
                    target.at
                    if target.document is self.root
                    else (defs, names[target.document.key], *target.at)
                )
                value = "#" + _pointer(where)
                if document is self.root and document.scopes[ref.at][1] != ():
                    # inside a subschema with an $id of its own, '#' means that subschema
                    if target.document is self.root and not target.through_file:
                        continue
                    if not self.base:
                        self.error(
                            document,
                            (*ref.at, ref.keyword),
                            f"the output schema's $ref '{_shown(ref.value)}' names a file from "
                            "inside a subschema that has an $id of its own, which the bundled "
                            "schema cannot point out of; give the output schema an $id too, "
                            "or move this $ref out of that subschema",
                        )
                        continue
                    value = self.base + value
                if value != ref.value:
                    document.edits.setdefault(ref.at, {})[ref.keyword] = value
        if self.failed:
            return None
        if self.files:
            bundled = {names[d.key]: _edited(d.data, d.edits) for d in self.files}
            if isinstance(existing, dict):
                self.root.edits.setdefault((defs,), {}).update(bundled)
            else:
                self.root.edits.setdefault((), {})[defs] = bundled
        result: dict[str, Any] = _edited(self.root.data, self.root.edits)
        return result


def _children(key: str, value: Any) -> Iterator[tuple[Where, Any]]:
    """The schemas a keyword's value holds, each with its place under the keyword."""
    if key in _NAMED and isinstance(value, dict):
        for name, child in value.items():
            if isinstance(child, dict | bool):
                yield (key, name), child
    elif key in _MANY and isinstance(value, list):
        for number, child in enumerate(value):
            yield (key, number), child
    elif key in _ONE and isinstance(value, dict | bool):
        yield (key,), value


def _edited(data: Any, edits: dict[Where, dict[str, Any]]) -> Any:
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
            if value is _DROP:
                new.pop(key, None)
            else:
                new[key] = value
        return new

    return copy(data, ())


def _value_at(data: Any, at: Where) -> Any:
    for part in at:
        data = data[part]
    return data


def _index(segment: str, length: int) -> int | None:
    if segment.isdigit() and (segment == "0" or not segment.startswith("0")):
        number = int(segment)
        return number if number < length else None
    return None


def _pointer(at: Where) -> str:
    """A JSON pointer as a URI fragment (``/$defs/a~1b``)."""
    return "".join(
        "/" + quote(str(part).replace("~", "~0").replace("/", "~1"), safe="$~!&'()*+,;=:@")
        for part in at
    )


def _control(text: str) -> str:
    """The first control character of ``text``, escaped, or ``""``."""
    for char in text:
        if ord(char) < 32 or ord(char) == 127:
            return f"\\x{ord(char):02x}"
    return ""


def _shown(text: str) -> str:
    """A reference as a message may show it: escaped, and not too long."""
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:120])
    return shortened(escaped, 100)


def _kind(value: Any) -> str:
    """A value's kind, without the value: the file may hold anything."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return describe(value).split(" (")[0]
