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

The documents and pointers these steps share are :mod:`aoe.format.schemadocs`;
the search for loops is :mod:`aoe.format.schemaloops`.

The engine still validates with a registry that refuses every retrieval
(:func:`aoe.policy.outputs.validator_for`): a schema that did not come through here
cannot fetch anything either.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from aoe.format.modelerrors import did_you_mean
from aoe.format.schemadocs import (
    CODE,
    SAME_VALUE,
    Document,
    Folder,
    Ref,
    Refusal,
    Target,
    Where,
    children,
    control,
    dialect,
    edited,
    kind,
    pointer,
    pointer_index,
    shown,
    value_at,
)
from aoe.format.schemaloops import loops
from aoe.format.schemas import REF_KEYWORDS, same_dialect, schema_fault
from aoe.format.yamlsource import SourceMap, YamlDocument, YamlError, parse_yaml
from aoe.types import Diagnostic


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
    bundler = _Bundler(Document(key, schema, source, prefix, "the output schema"), folder)
    return bundler.run(), bundler.diagnostics


class _Bundler:
    def __init__(self, root: Document, folder: Folder) -> None:
        self.root = root
        self.folder = folder
        self.dialect = dialect(root.data)
        self.documents: dict[str | None, Document | None] = {root.key: root}
        self.files: list[Document] = []  # in the order they were found
        self.diagnostics: list[Diagnostic] = []
        ident = root.data.get(self.dialect.id_keyword)
        self.base = ""
        if isinstance(ident, str) and not (self.dialect.legacy_anchors and ident[:1] == "#"):
            self.base = urljoin("", ident).partition("#")[0]
        self.ids: dict[str, Where] = {self.base: ()}

    # -- reporting -----------------------------------------------------------------
    def error(self, document: Document, at: Where, message: str, code: str = CODE) -> None:
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

    def walk(self, document: Document, node: Any, at: Where, base: str, resource: Where) -> None:
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
                    document.refs.append(Ref(at, keyword, value))
            for key, value in node.items():
                for tail, child in children(key, value):
                    stack.append((child, (*at, *tail), base, resource))
                    if key in SAME_VALUE:
                        document.same_value.setdefault(at, []).append((*at, *tail))

    def identify(
        self, document: Document, node: dict[str, Any], at: Where, base: str, resource: Where
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
                    f"{document.label} declares {keyword} '{shown(ident)}' inside it; a file "
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

    def declare(self, document: Document, node: dict[str, Any], at: Where, base: str) -> None:
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

    def resolve(self, document: Document, index: int) -> None:
        """Where one ``$ref`` points, or an error at its line."""
        ref = document.refs[index]
        where = (*ref.at, ref.keyword)
        named = f"the output schema's {ref.keyword} '{shown(ref.value)}'"
        base, resource = document.scopes[ref.at]
        bad = control(ref.value)
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
        path = self.file_path(document, ref, address)
        if path is None:
            return
        relative = posixpath.normpath(posixpath.join(document.folder, path))
        target = self.document(relative, document, where, named)
        if target is not None:
            base = self.base if target is self.root else ""
            self.locate(document, index, target, (), base, fragment, through_file=True)

    def file_path(self, document: Document, ref: Ref, address: str) -> str | None:
        """The file a ``$ref`` names by a plain relative path; None (and an error at
        the ``$ref``) for a URL, an absolute path or anything else."""
        where = (*ref.at, ref.keyword)
        named = f"the output schema's {ref.keyword} '{shown(ref.value)}'"
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
            return None
        path = unquote(parts.path)
        bad = control(path)
        if parts.query or "\\" in path or bad:
            self.error(
                document,
                where,
                f"{named} is not a plain relative path"
                + (f" (it holds a control character, {bad})" if bad else "")
                + "; write it with '/' between folders, without '?' or '\\'",
            )
            return None
        if ref.keyword != "$ref":
            self.error(
                document,
                where,
                f"{named} names a file; a {ref.keyword} can only point inside the output "
                "schema: refer to files with $ref",
            )
            return None
        return path

    def document(
        self, relative: str, referrer: Document, where: Where, named: str
    ) -> Document | None:
        """The file at ``relative``, checked and walked (None if it cannot be used, said
        at the ``$ref``; what is wrong inside it is said there, once per load)."""
        if relative in self.documents:
            return self.documents[relative]
        self.documents[relative] = None  # for good if it cannot be used
        loaded = self.load(relative)
        if not isinstance(loaded, Refusal):
            draft = self.root.data.get("$schema")
            checked = self.folder.cache.get(("checked", relative, draft))
            if checked is None:
                checked = self.check(relative, loaded)
                self.folder.cache[("checked", relative, draft)] = checked
            loaded = checked
        if isinstance(loaded, Refusal):
            self.error(referrer, where, f"{named} cannot be used: {loaded.message}", loaded.code)
            return None
        document = Document(relative, loaded.data, loaded.source, (), f"'{relative}'")
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
                    CODE,
                    f"'{relative}' is not a JSON (or YAML) document (see the error in it)",
                )
            else:
                self.diagnostics.extend(loaded.diagnostics)
                if not isinstance(loaded.data, dict | bool):
                    loaded = Refusal(
                        CODE,
                        f"'{relative}' holds {kind(loaded.data)}, not a JSON Schema "
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
            return Refusal(CODE, f"'{relative}' is not a valid JSON Schema (see the error in it)")
        data = loaded.data
        if isinstance(data, dict) and "$schema" in data and not same_dialect(data, self.root.data):
            self.diagnostics.append(
                loaded.source.diagnostic(
                    ("$schema",),
                    CODE,
                    f"'{relative}' is written for another draft of JSON Schema than the output "
                    "schema that refers to it; make their $schema the same",
                )
            )
            return Refusal(CODE, f"'{relative}' is written for another draft of JSON Schema")
        return loaded

    def locate(
        self,
        document: Document,
        index: int,
        target: Document,
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
        named = f"the output schema's {ref.keyword} '{shown(ref.value)}'"
        if not fragment or fragment.startswith("/"):
            found = self.follow(target, resource, fragment)
        else:
            found = self.anchor(target, base, unquote(fragment))
        if isinstance(found, str):
            self.error(document, where, f"{named} points at nothing: {found}")
            return
        node, at = found
        if not isinstance(node, dict | bool):
            self.error(
                document,
                where,
                f"{named} points at {kind(node)}, not at a schema (a mapping, or true or false)",
            )
            return
        document.targets[index] = Target(target, at, through_file)
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

    def follow(self, target: Document, resource: Where, fragment: str) -> tuple[Any, Where] | str:
        """The value a JSON pointer names from ``resource``, and its place; or what
        is missing."""
        node = value_at(target.data, resource)
        at = resource
        written = ""
        for raw in unquote(fragment[1:]).split("/") if fragment else []:
            segment = raw.replace("~1", "/").replace("~0", "~")
            written += "/" + raw
            number = pointer_index(segment, len(node)) if isinstance(node, list) else None
            if isinstance(node, dict) and segment in node:
                node, at = node[segment], (*at, segment)
            elif number is not None:
                node, at = node[number], (*at, number)
            else:
                hint = did_you_mean(segment, node) if isinstance(node, dict) else ""
                return f"{target.label} has no '{shown(written)}'{hint}"
        return node, at

    def anchor(self, target: Document, base: str, name: str) -> tuple[Any, Where] | str:
        """The schema an anchor names, and its place; or that there is none."""
        found = target.anchors.get((base, name))
        if found is None:
            return (
                f"{target.label} declares no $anchor "
                f"'{shown(name)}'{did_you_mean(name, [n for _, n in target.anchors])}"
            )
        return value_at(target.data, found), found

    def check_loops(self) -> None:
        """An error at a ``$ref`` that leads back to where it started without going into
        a property or an item: validating any value against it would never end."""
        documents = {d.key: d for d in (self.root, *self.files)}
        for document, where, message in loops(documents):
            self.error(document, where, message)

    def assemble(self) -> dict[str, Any] | None:
        """The output schema with each file under ``$defs`` and every ``$ref`` a pointer."""
        defs = self.dialect.defs
        existing = self.root.data.get(defs)
        names = self.names(set(existing) if isinstance(existing, dict) else set())
        for document in (self.root, *self.files):
            for index, target in document.targets.items():
                ref = document.refs[index]
                if ref.keyword != "$ref":
                    continue  # dynamic: kept as written, resolved by the validator
                value = self.pointer_to(document, ref, target, names)
                if value is not None and value != ref.value:
                    document.edits.setdefault(ref.at, {})[ref.keyword] = value
        if self.failed:
            return None
        if self.files:
            bundled = {names[d.key]: edited(d.data, d.edits) for d in self.files}
            if isinstance(existing, dict):
                self.root.edits.setdefault((defs,), {}).update(bundled)
            else:
                self.root.edits.setdefault((), {})[defs] = bundled
        result: dict[str, Any] = edited(self.root.data, self.root.edits)
        return result

    def names(self, taken: set[str]) -> dict[str | None, str]:
        """The key under ``$defs`` of each file: its path, made a plain name, and unique."""
        names: dict[str | None, str] = {}
        for document in self.files:
            stem = re.sub(r"[^A-Za-z0-9_-]", "_", document.key or "")
            name, number = stem, 2
            while name in taken:
                name, number = f"{stem}_{number}", number + 1
            taken.add(name)
            names[document.key] = name
        return names

    def pointer_to(
        self, document: Document, ref: Ref, target: Target, names: dict[str | None, str]
    ) -> str | None:
        """What a ``$ref`` becomes in the bundled schema; None to keep it as written
        (or, reported, where no pointer can reach its target)."""
        defs = self.dialect.defs
        where = (
            target.at
            if target.document is self.root
            else (defs, names[target.document.key], *target.at)
        )
        value = "#" + pointer(where)
        if document is not self.root or document.scopes[ref.at][1] == ():
            return value
        # inside a subschema with an $id of its own, '#' means that subschema
        if target.document is self.root and not target.through_file:
            return None
        if not self.base:
            self.error(
                document,
                (*ref.at, ref.keyword),
                f"the output schema's $ref '{shown(ref.value)}' names a file from "
                "inside a subschema that has an $id of its own, which the bundled "
                "schema cannot point out of; give the output schema an $id too, "
                "or move this $ref out of that subschema",
            )
            return None
        return self.base + value
