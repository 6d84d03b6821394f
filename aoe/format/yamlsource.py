"""Plain YAML to Python values, with the line and column of every key and value.

Workflow and config files are read here. What this adds to ``yaml.safe_load``:

- a :class:`SourceMap` from each value's path (``("agents", "brief", "llm")``)
  to where it was written, so every later check can point at a line;
- a key repeated in one mapping is an error naming both lines;
- only plain YAML: the core tags (``!!str``, ``!!int`` ...) and nothing else;
  anchors, aliases and merge keys (``<<: *common``) work as YAML defines them;
- a document that expands past a size limit (alias bombs, huge files) is
  refused before it is built, in memory bounded by the limit: an alias reuses
  the value it names rather than copying it, and only its size is counted.

The builder works on libyaml's event stream rather than on composed nodes:
that is about three times faster on large files, and lets the size limits act
while parsing. Scalars resolve as PyYAML's safe loader resolves them (YAML 1.1),
except that timestamps stay strings (workflow values are JSON-like). What a
syntax error says to the user is :mod:`aoe.format.yamlsyntax`, imported only
for a file that has one.

Why one module of over 500 lines: the source map, the builder that fills it
while it parses, and the scalar rules the builder applies (YAML 1.1, integers
within :data:`INT_MIN`..:data:`INT_MAX`) are one job, text to values with
their places; and what other modules import from here (:class:`SourceMap`,
:class:`YamlError`, :func:`parse_yaml`, the integer range) is exactly what the
builder uses, so a builder module of its own would import this one while
:func:`parse_yaml` imports it: a cycle.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import yaml
from yaml import events as ev
from yaml.constructor import SafeConstructor
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

from aoe.errors import DiagnosticsError, UserError
from aoe.format.files import FileRefused, read_limited
from aoe.types import Diagnostic, Severity

try:  # libyaml's parser; PyYAML wheels ship it, source builds may not
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - exercised only without libyaml
    from yaml.loader import SafeLoader as _Parser  # type: ignore[assignment]

Path = tuple[str | int, ...]

MAX_FILE_BYTES = 16 * 1024 * 1024
"""Files larger than this are refused before they are parsed."""
MAX_NODES = 1_000_000
"""Values in the expanded document (every alias counted at its full size, and
every :data:`CHARS_PER_NODE` characters of a text as one more value)."""
CHARS_PER_NODE = 16
"""So that an alias of a long text counts at its length: a 100 KB text aliased
3,000 times is 300 MB to whatever reads the document, not 3,000 values."""
MAX_DEPTH = 100
"""Nesting depth of the expanded document."""

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_SCALAR_TAGS = {_STR, _INT, _FLOAT, _BOOL, _NULL, _TAG + "timestamp", "!"}
_MAP_TAGS = {_TAG + "map", "!"}
_SEQ_TAGS = {_TAG + "seq", "!"}
_RESOLVERS: dict[str | None, list[tuple[str, re.Pattern[str]]]] = Resolver.yaml_implicit_resolvers
_CONSTRUCTOR = SafeConstructor()


Position = tuple[int, int, str]
"""(line, column, style) as stored; :class:`Mark` is the same with names."""


class Mark(NamedTuple):
    """Where a key or value starts: 1-based line and column, and a scalar's style.

    ``style`` is ``""`` for plain scalars (and collections), ``'`` or ``"``
    for quoted ones, ``|`` (literal) or ``>`` (folded) for block scalars.
    """

    line: int
    column: int
    style: str = ""

    @property
    def text_line(self) -> int:
        """The line of the scalar's first character of text (block text starts
        on the line after its indicator)."""
        return self.line + 1 if self.style in ("|", ">") else self.line

    @property
    def quoted(self) -> bool:
        return self.style in ("'", '"')

    @property
    def literal(self) -> bool:
        """A ``|`` scalar: line N of its text is line N of its block in the file.

        Folded, quoted and multi-line plain scalars join their lines, so their
        text's lines do not map to the file's.
        """
        return self.style == "|"


class SourceMap:
    """Where each value (and each mapping key) of a document was written."""

    __slots__ = ("aliases", "file", "keys", "values")

    def __init__(self, file: str) -> None:
        self.file = file
        # Plain (line, column, block) tuples: a large file has one per value, and
        # a tuple costs a fraction of a Mark to make; lookups return Marks.
        self.values: dict[Path, Position] = {}
        self.keys: dict[Path, Position] = {}
        # A path reached through an alias or a merge key is written at another path.
        self.aliases: dict[Path, Path] = {}

    def _canonical(self, path: Path) -> Path:
        # A loop, not recursion: a chain of merge keys (each mapping merging the
        # one before) is as long as the file makes it, far past Python's stack.
        # Each step goes to an anchor written earlier, so the chain ends.
        for _ in range(len(self.aliases)):
            for cut in range(len(path), 0, -1):
                target = self.aliases.get(path[:cut])
                if target is not None:
                    path = target + path[cut:]
                    break
            else:
                return path
        return path

    def value(self, path: Path) -> Mark:
        """Where the value at ``path`` starts, or its closest written ancestor."""
        path = self._canonical(path)
        for cut in range(len(path), -1, -1):
            position = self.values.get(path[:cut])
            if position is not None:
                return Mark._make(position)
        return Mark(1, 1)

    def key(self, path: Path) -> Mark:
        """Where the key of ``path`` is written (the value's place if it has no key)."""
        canonical = self._canonical(path)
        position = self.keys.get(canonical)
        return Mark._make(position) if position is not None else self.value(canonical)

    def has(self, path: Path) -> bool:
        return self._canonical(path) in self.values

    def diagnostic(
        self,
        path: Path,
        code: str,
        message: str,
        *,
        at_key: bool = False,
        severity: Severity = Severity.ERROR,
    ) -> Diagnostic:
        mark = self.key(path) if at_key else self.value(path)
        return Diagnostic(self.file, mark.line, mark.column, severity, code, message)


class YamlDocument(NamedTuple):
    """The values of a document, where they were written, and the problems that did
    not stop the parse (duplicate keys, unsupported tags): all of them errors."""

    data: Any
    source: SourceMap
    diagnostics: tuple[Diagnostic, ...] = ()


class YamlError(DiagnosticsError):
    """The text is not a usable YAML document; ``diagnostics`` says why. The
    loaders turn it into their own error (a workflow's, the config's, inputs')."""


def read_text(path: str, display: str | None = None) -> str:
    """Read a UTF-8 file for parsing, refusing oversized and undecodable ones, and
    anything but a regular file (see :func:`aoe.format.files.read_limited`).

    Raises :class:`YamlError` with a diagnostic at line 0 when the file cannot be used.
    """
    name = display or path
    try:
        raw = read_limited(path, MAX_FILE_BYTES)
    except FileRefused as e:
        if e.kind == "too-large":
            raise _whole_file(
                name,
                "too-large",
                f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; "
                "split it, or move long prompts into prompt_file",
            ) from None
        raise _whole_file(name, "io", e.message) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise YamlError(
            [
                Diagnostic(
                    name,
                    line,
                    1,
                    Severity.ERROR,
                    "encoding",
                    "the file is not valid UTF-8 text; save it as UTF-8",
                )
            ]
        ) from None


def _whole_file(name: str, code: str, message: str) -> YamlError:
    return YamlError([Diagnostic(name, 0, 0, Severity.ERROR, code, message)])


def parse_yaml(
    text: str,
    file: str,
    *,
    max_nodes: int = MAX_NODES,
    max_depth: int = MAX_DEPTH,
) -> YamlDocument:
    """Parse one YAML document into plain Python values and its source map.

    Raises :class:`YamlError` when the text cannot be read as a document
    (syntax, size, depth). Duplicate keys and unsupported tags do not stop the
    parse: they come back in ``diagnostics``, all of them, so that later checks
    can still report their own findings.
    """
    if _node_upper_bound(text) > max_nodes:
        _count_nodes_or_refuse(text, file, max_nodes)
    builder = _Builder(file, text, max_nodes, max_depth)
    parser = _Parser(text)
    try:
        builder.run(parser)
    except yaml.MarkedYAMLError as e:
        from aoe.format.yamlsyntax import syntax_diagnostic  # only a file with a mistake

        raise YamlError([*builder.diagnostics, syntax_diagnostic(file, e, text)]) from None
    except yaml.YAMLError as e:  # reader errors: control characters and the like
        from aoe.format.yamlsyntax import reader_diagnostic

        raise YamlError([*builder.diagnostics, reader_diagnostic(file, e, text)]) from None
    finally:
        dispose = getattr(parser, "dispose", None)
        if dispose is not None:
            dispose()
    if builder.fatal:
        raise YamlError(builder.diagnostics)
    return YamlDocument(builder.result, builder.source, tuple(builder.diagnostics))


_INDICATORS = (",", "\n", ":", "-", "[", "{", "?", "*", "!", "&")


def _scalar_size(value: str) -> int:
    return 1 + len(value) // CHARS_PER_NODE


def _node_upper_bound(text: str) -> int:
    """An upper bound on the nodes of ``text``, computed at C speed.

    Every node after the first is introduced by one of a few indicator
    characters (a comma, a line break, a colon, a dash ...), and one indicator
    introduces at most two nodes. Most files are far below the limit by this
    bound, and then the exact (slower) count is not needed.
    """
    return 2 * sum(text.count(c) for c in _INDICATORS) + 2


def _count_nodes_or_refuse(text: str, file: str, max_nodes: int) -> None:
    """Count nodes from the event stream in constant memory; refuse past the limit."""
    parser = _Parser(text)
    count = 0
    try:
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, ev.NodeEvent):
                count += 1
                if count > max_nodes:
                    raise YamlError([_too_big(file, event.start_mark, max_nodes)])
    except yaml.MarkedYAMLError as e:
        from aoe.format.yamlsyntax import syntax_diagnostic

        raise YamlError([syntax_diagnostic(file, e, text)]) from None
    except yaml.YAMLError as e:  # reader errors: control characters and the like
        from aoe.format.yamlsyntax import reader_diagnostic

        raise YamlError([reader_diagnostic(file, e, text)]) from None
    finally:
        dispose = getattr(parser, "dispose", None)
        if dispose is not None:
            dispose()


def _too_big(file: str, mark: Any, max_nodes: int) -> Diagnostic:
    return Diagnostic(
        file,
        mark.line + 1,
        mark.column + 1,
        Severity.ERROR,
        "too-large",
        f"the document expands to more than {max_nodes:,} values "
        f"(aliases count at their full size, and every {CHARS_PER_NODE} characters of "
        "a text as a value); refusing to read it",
    )


class _Anchor(NamedTuple):
    value: Any
    path: Path
    size: int
    height: int


class _Frame:
    """A mapping or sequence being built."""

    __slots__ = (
        "anchor",
        "container",
        "height",
        "is_map",
        "key",
        "key_mark",
        "key_marks",
        "merges",
        "merging",
        "path",
        "size",
        "start",
    )

    def __init__(self, container: Any, path: Path, anchor: str | None, start: Any) -> None:
        self.container = container
        self.is_map = isinstance(container, dict)
        self.path = path
        self.anchor = anchor
        self.start = start
        self.size = 1
        self.height = 1
        self.key: str | None = None  # mapping: the key waiting for its value
        self.key_mark: Position | None = None
        self.key_marks: dict[str, Position] = {}
        self.merging = False
        self.merges: list[tuple[Any, Path, Position]] = []


class _Builder:
    def __init__(self, file: str, text: str, max_nodes: int, max_depth: int) -> None:
        self.file = file
        self.text = text
        self._lines: list[str] | None = None
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.source = SourceMap(file)
        self.diagnostics: list[Diagnostic] = []
        self.anchors: dict[str, _Anchor] = {}
        self.stack: list[_Frame] = []
        self.total = 0
        self.result: Any = None
        self.documents = 0
        self.fatal = False

    @property
    def lines(self) -> list[str]:
        if self._lines is None:
            self._lines = self.text.splitlines()
        return self._lines

    # -- errors --------------------------------------------------------------
    def error(self, mark: Any, code: str, message: str) -> None:
        self.diagnostics.append(
            Diagnostic(self.file, mark.line + 1, mark.column + 1, Severity.ERROR, code, message)
        )

    def refuse(self, mark: Any, diagnostic: Diagnostic | None = None) -> None:
        raise YamlError(
            [*self.diagnostics, diagnostic or _too_big(self.file, mark, self.max_nodes)]
        )

    # -- the event loop --------------------------------------------------------
    def run(self, parser: Any) -> None:
        """Build the document from the parser's events. The branches stay inline,
        a scalar's most of all: this loop runs once per event of the file."""
        stack = self.stack
        while parser.check_event():
            event = parser.get_event()
            kind = type(event)
            if kind is ev.ScalarEvent:
                if stack and stack[-1].is_map and stack[-1].key is None:
                    self.add_key(stack[-1], event)
                else:
                    size = _scalar_size(event.value)
                    self.add_value(self.scalar(event, size), event.start_mark, size=size, height=1)
            elif kind is ev.MappingStartEvent or kind is ev.SequenceStartEvent:
                self.open(event, kind is ev.MappingStartEvent)
            elif kind is ev.MappingEndEvent or kind is ev.SequenceEndEvent:
                self.close(event)
            elif kind is ev.AliasEvent:
                self.alias(event)
            elif kind is ev.DocumentStartEvent and not self.document(event):
                return
        self.finish()

    def finish(self) -> None:
        """The stream ended: a file with no document, or only null, holds no workflow."""
        if self.documents == 0 or (self.result is None and not self.diagnostics):
            self.fatal = True
            self.diagnostics.append(
                Diagnostic(
                    self.file,
                    1,
                    1,
                    Severity.ERROR,
                    "empty",
                    "the file holds no workflow (it is empty or null); "
                    "a workflow starts with 'version: 1'",
                )
            )

    def document(self, event: Any) -> bool:
        """A document starts: false (a fatal error) for a second one."""
        self.documents += 1
        if self.documents > 1:
            self.fatal = True
            self.error(
                event.start_mark,
                "yaml-documents",
                "the file holds more than one YAML document (a second '---'); "
                "keep one workflow per file",
            )
            return False
        return True

    def path_for_value(self) -> Path:
        if not self.stack:
            return ()
        frame = self.stack[-1]
        if frame.is_map:
            assert frame.key is not None
            return (*frame.path, frame.key)
        return (*frame.path, len(frame.container))

    def add_key(self, frame: _Frame, event: Any) -> None:
        mark = event.start_mark
        key_mark = (mark.line + 1, mark.column + 1, event.style or "")
        frame.key_mark = key_mark
        if event.tag is None and event.implicit[0] and event.value == "<<":
            frame.key = "<<"  # a merge key: its value is merged when the mapping ends
            frame.merging = True
            return
        self.check_tag(event, _SCALAR_TAGS)
        key: str = event.value
        first = frame.key_marks.get(key)
        if first is not None:
            self.error(
                mark,
                "duplicate-key",
                f"duplicate key '{key}': it is also at line {first[0]}, "
                f"column {first[1]}; YAML would silently keep only one of them - "
                "remove or rename one",
            )
        else:
            frame.key_marks[key] = key_mark
        frame.key = key
        frame.merging = False

    def add_value(self, value: Any, mark: Any, *, size: int, height: int) -> None:
        """Attach a finished value to the open collection (or make it the document)."""
        stack = self.stack
        self.total += size
        if self.total > self.max_nodes:
            self.refuse(mark)
        if not stack:
            self.result = value
            return
        frame = stack[-1]
        frame.size += size
        # A merged mapping's entries become this mapping's own: they nest no deeper.
        nested = height if frame.is_map and frame.merging else height + 1
        if nested > frame.height:
            frame.height = nested
        if frame.is_map:
            key = frame.key
            assert key is not None
            assert frame.key_mark is not None
            if frame.merging:
                frame.merges.append((value, (*frame.path, key), frame.key_mark))
            else:
                frame.container[key] = value
                self.source.keys[(*frame.path, key)] = frame.key_mark
            frame.key = None
        else:
            frame.container.append(value)

    def record(self, event: Any, path: Path) -> None:
        mark = event.start_mark
        style = getattr(event, "style", None)
        self.source.values[path] = (mark.line + 1, mark.column + 1, style or "")

    def scalar(self, event: Any, size: int) -> Any:
        path = self.path_for_value()
        self.record(event, path)
        value = event.value
        tag = event.tag
        if tag is None or tag == "!":
            if not event.implicit[0] or tag == "!":
                result: Any = value
            else:
                try:
                    result = resolve_scalar(value)
                except NumberTooLarge as e:
                    self.error(event.start_mark, "yaml-number", e.message)
                    result = value
        elif self.check_tag(event, _SCALAR_TAGS):
            result = _construct(tag, value, event, self)
        else:
            result = value
        if event.anchor is not None:
            self.anchors[event.anchor] = _Anchor(result, path, size, 1)
        return result

    def check_tag(self, event: Any, allowed: set[str]) -> bool:
        """Report a tag outside ``allowed``; true when the tag is fine."""
        tag = event.tag
        if tag is None or tag in allowed:
            return True
        shown = "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag
        self.error(
            event.start_mark,
            "yaml-tag",
            f"the tag '{shown}' is not supported: aoe reads plain YAML only "
            "(strings, numbers, booleans, null, lists and mappings); remove the tag",
        )
        return False

    def open(self, event: Any, is_map: bool) -> None:
        stack = self.stack
        if stack and stack[-1].is_map and stack[-1].key is None:
            # a mapping or list used as a key: almost always an unquoted "{{ ... }}"
            mark = event.start_mark
            line = self.lines[mark.line] if mark.line < len(self.lines) else ""
            hint = (
                "; a value that starts with '{{' must be quoted, "
                'for example prompt: "{{ inputs.topic }}"'
                if line[max(mark.column - 1, 0) : mark.column + 1] == "{{"
                else ""
            )
            self.error(
                event.start_mark,
                "yaml-key",
                "a mapping key must be a plain value, not a mapping or list" + hint,
            )
            raise YamlError(self.diagnostics)
        if len(stack) >= self.max_depth:
            self.refuse(
                event.start_mark,
                Diagnostic(
                    self.file,
                    event.start_mark.line + 1,
                    event.start_mark.column + 1,
                    Severity.ERROR,
                    "too-deep",
                    f"values are nested more than {self.max_depth} levels deep; flatten them",
                ),
            )
        self.check_tag(event, _MAP_TAGS if is_map else _SEQ_TAGS)
        path = self.path_for_value()
        self.record(event, path)
        container: Any = {} if is_map else []
        stack.append(_Frame(container, path, event.anchor, event.start_mark))

    def close(self, event: Any) -> None:
        frame = self.stack.pop()
        if frame.merges:
            self.merge(frame)
        if frame.anchor is not None:
            self.anchors[frame.anchor] = _Anchor(
                frame.container, frame.path, frame.size, frame.height
            )
        # size was counted child by child already; count only the frame itself here
        self.total -= frame.size - 1
        self.add_value(frame.container, frame.start, size=frame.size, height=frame.height)

    def merge(self, frame: _Frame) -> None:
        """Apply ``<<`` merge keys: explicit keys win, then earlier merged maps."""
        sources: list[tuple[dict[str, Any], Path]] = []
        for value, path, mark in frame.merges:
            target = self.source.aliases.get(path, path)
            if isinstance(value, dict):
                sources.append((value, target))
            elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
                sources.extend(
                    (v, self.source.aliases.get((*path, i), (*target, i)))
                    for i, v in enumerate(value)
                )
            else:
                self.diagnostics.append(
                    Diagnostic(
                        self.file,
                        mark[0],
                        mark[1],
                        Severity.ERROR,
                        "yaml-merge",
                        "a merge key '<<' takes a mapping or a list of mappings "
                        "(usually an alias like <<: *defaults)",
                    )
                )
        container: dict[str, Any] = frame.container
        for mapping, source_path in sources:
            for key, value in mapping.items():
                if key not in container:
                    container[key] = value
                    self.source.aliases[(*frame.path, key)] = (*source_path, key)

    def alias(self, event: Any) -> None:
        anchor = self.anchors.get(event.anchor)
        if anchor is None:
            self.error(
                event.start_mark,
                "yaml-alias",
                f"the alias *{event.anchor} has no anchor &{event.anchor} before it "
                "(an anchor cannot refer to itself); define the anchor first",
            )
            raise YamlError(self.diagnostics)
        if len(self.stack) + anchor.height > self.max_depth:
            self.refuse(
                event.start_mark,
                Diagnostic(
                    self.file,
                    event.start_mark.line + 1,
                    event.start_mark.column + 1,
                    Severity.ERROR,
                    "too-deep",
                    f"with its aliases expanded, the document nests more than "
                    f"{self.max_depth} levels deep; flatten it",
                ),
            )
        if self.stack and self.stack[-1].is_map and self.stack[-1].key is None:
            self.error(event.start_mark, "yaml-key", "an alias cannot be used as a mapping key")
            raise YamlError(self.diagnostics)
        path = self.path_for_value()
        mark = event.start_mark
        self.source.values[path] = (mark.line + 1, mark.column + 1, "")
        if anchor.path != path:
            self.source.aliases[path] = anchor.path
        self.add_value(anchor.value, event.start_mark, size=anchor.size, height=anchor.height)


# YAML 1.1 wants a dot in a float ("1.0e+3"); JSON and YAML 1.2 write 1e3 and 1e-3.
_EXPONENT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+")


def resolve_scalar(value: str) -> Any:
    """Resolve an untagged plain scalar the way PyYAML's safe loader does,
    except that ``1e3`` is a number, as JSON and YAML 1.2 have it.

    Raises :class:`NumberTooLarge` for an integer out of aoe's range."""
    if value == "":
        return None
    resolvers = _RESOLVERS.get(value[0])
    if resolvers:
        for tag, regexp in resolvers:
            if regexp.match(value):
                return _construct_known(tag, value)
        if _EXPONENT.fullmatch(value):
            return float(value)
    return value


def _construct_known(tag: str, value: str) -> Any:
    if tag == _NULL:
        return None
    if tag == _BOOL:
        return _CONSTRUCTOR.bool_values[value.lower()]
    if tag == _INT:
        return _integer(value)
    if tag == _FLOAT:
        return _CONSTRUCTOR.construct_yaml_float(ScalarNode(tag, value))
    return value  # str, timestamp, merge and value: the text itself


INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
"""The whole numbers aoe reads: what SQLite, JSON parsers and floats all take
(a budget's arithmetic turns a count into a float, and 10**400 is not one)."""
_INT_TEXT_MAX = 80
"""Characters of an integer's text past which it cannot be in range (64 binary
digits are the most it takes), leading zeros, signs, prefixes and underscores
aside. Checked before the text is converted, which for Python's decimal and
YAML's base-60 integers (``1:2:3``) takes time that grows with the square of
the length, and which Python refuses past 4,300 decimal digits."""


def _significant_length(text: str) -> int:
    """The length of an integer's digits that count (base-60 ones all count: their
    first part starts with 1-9, and each further part multiplies by 60)."""
    digits = text.replace("_", "").lstrip("+-")
    if digits[:2] in ("0x", "0b"):
        digits = digits[2:]
    return len(digits) if ":" in digits else len(digits.lstrip("0"))


class NumberTooLarge(UserError, ValueError):
    """An integer outside :data:`INT_MIN` .. :data:`INT_MAX` (a ``ValueError`` too:
    PyYAML's constructors raise it, and their callers catch that)."""

    def __init__(self, text: str) -> None:
        shown = text if len(text) <= 24 else text[:21] + "..."
        self.message = (
            f"the integer {shown} is too large: aoe reads whole numbers from "
            f"{INT_MIN:,} to {INT_MAX:,}; write a smaller one"
        )
        super().__init__(self.message)


def _integer(text: str) -> int:
    """A YAML 1.1 integer (``12``, ``0x1f``, ``017``, ``1_000``, ``1:30``), in range."""
    if len(text) > _INT_TEXT_MAX and _significant_length(text) > _INT_TEXT_MAX:
        raise NumberTooLarge(text)
    number: int = _CONSTRUCTOR.construct_yaml_int(ScalarNode(_INT, text))
    if not INT_MIN <= number <= INT_MAX:
        raise NumberTooLarge(text)
    return number


def _construct(tag: str, value: str, event: Any, builder: _Builder) -> Any:
    """An explicitly tagged core scalar (``!!int "5"``)."""
    if tag in (_STR, _TAG + "timestamp", "!"):
        return value
    try:
        if tag == _NULL:
            if value in ("", "~", "null", "Null", "NULL"):
                return None
            raise ValueError(value)
        if tag == _BOOL:
            return _CONSTRUCTOR.bool_values[value.lower()]
        if tag == _INT:
            return _integer(value)
        return _CONSTRUCTOR.construct_yaml_float(ScalarNode(tag, value))
    except NumberTooLarge as e:
        builder.error(event.start_mark, "yaml-number", e.message)
        return value
    except (ValueError, KeyError, IndexError):  # IndexError: PyYAML's, of an empty value
        builder.error(
            event.start_mark,
            "yaml-tag",
            f"'{value}' is not a valid !!{tag[len(_TAG) :]}; remove the tag or fix the value",
        )
        return value
