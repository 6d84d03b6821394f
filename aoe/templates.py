"""Jinja2 templates: the sandboxed environment and static analysis of references.

Prompts, system messages, ``outputs`` and the ``when`` / ``foreach``
expressions are Jinja2, rendered in an immutable sandbox where an undefined
name is an error and no file, environment variable or Python internal is
reachable. Before anything runs, :func:`analyse_template` and
:func:`analyse_expression` list what each one reads (``agents.X.output``,
``inputs.Y``, ``workflow.name``, bare names), so the loader can check every
reference against ``depends_on`` and the declared inputs.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from jinja2 import TemplateSyntaxError, nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

# Jinja is imported when a template first needs it: placeholder-only templates
# are analysed without it, and ``aoe validate`` often starts faster for that.

ROOTS = ("agents", "inputs", "workflow")
"""Names every template may read."""
FOREACH_NAMES = ("item", "index")
"""Names a ``foreach`` agent's templates may read as well."""
AGENT_ATTRIBUTES = ("output", "status")
WORKFLOW_ATTRIBUTES = ("name",)
# Names Jinja itself defines inside loops, macros and blocks, and its global
# functions (tested to equal the environment's, which needs Jinja imported).
_JINJA_IMPLICIT = frozenset({"loop", "caller", "varargs", "kwargs", "super", "self"})
JINJA_GLOBALS = frozenset({"range", "dict", "lipsum", "cycler", "joiner", "namespace"})


def _defined_by_jinja(name: str) -> bool:
    return name in _JINJA_IMPLICIT or name in JINJA_GLOBALS


@cache
def environment() -> ImmutableSandboxedEnvironment:
    """The one Jinja environment: sandboxed, immutable, strict about undefined names."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        loader=None,
    )


class TemplateProblem(Exception):
    """A template that does not parse or uses what templates may not use."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class Reference(NamedTuple):
    """One thing a template reads, at a line of the template (1-based).

    ``kind`` is ``agent`` (``agents.<name>.<attribute>``, and ``rest`` what is
    read inside that), ``input`` (``inputs.<name>``, and ``rest``),
    ``workflow`` (``workflow.<name>``), ``dynamic`` (``agents``, ``inputs`` or
    ``workflow`` read other than by a fixed name, as in ``inputs[key]``;
    ``name`` is the root), ``name`` (any other free name, such as ``item``),
    ``filter`` or ``test`` (a Jinja filter or test by name).
    """

    kind: Literal["agent", "input", "workflow", "dynamic", "name", "filter", "test"]
    name: str
    attribute: str | int | None
    line: int
    rest: tuple[str | int, ...] = ()


class Analysis(NamedTuple):
    """What a template or expression reads; ``whole`` is set when an expression
    is nothing but one reference (``foreach: inputs.files``)."""

    references: tuple[Reference, ...]
    whole: Reference | None = None


_EMPTY = Analysis(())


def analyse_template(text: str) -> Analysis:
    """What a template reads. Raises :class:`TemplateProblem` if it is not valid."""
    if "{" not in text:  # Jinja syntax always starts with "{"; plain text reads nothing
        return _EMPTY
    simple = _analyse_simple(text)
    if simple is not None:
        return simple
    return _analyse_template_cached(text)


# ``{{ a.b.c }}`` with optional whitespace control: the placeholders most prompts consist of.
_PLACEHOLDER = re.compile(
    r"\{\{-?[ \t\r\n]*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)[ \t\r\n]*-?\}\}"
)
# Names that Jinja reads as operators or constants, not variables.
_NOT_NAMES = frozenset(
    {"and", "or", "not", "in", "is", "if", "else", "true", "false", "none", "True", "False", "None"}
)


def _analyse_simple(text: str) -> Analysis | None:
    """The analysis of a template made of plain text and ``{{ dotted.name }}`` only.

    Such a template is valid Jinja, and what it reads is exactly its dotted
    names, so parsing it with Jinja would tell nothing more; most prompts are
    like this, and this is much faster. Anything else (blocks, comments,
    filters, any other expression) returns None and goes to the real parser.
    """
    if "{%" in text or "{#" in text:
        return None
    references: list[Reference] = []
    position = 0
    line, counted = 1, 0  # lines are counted as the scan goes, not from the start each time
    while True:
        start = text.find("{{", position)
        if start < 0:
            break
        match = _PLACEHOLDER.match(text, start)
        if match is None:
            return None
        parts = match.group(1).split(".")
        if parts[0] in _NOT_NAMES:
            return None
        line += text.count("\n", counted, match.start(1))  # Jinja counts the name's line
        counted = match.start(1)
        if parts[0] in ROOTS:
            references.append(
                _reference(parts, line)
                if len(parts) > 1
                else Reference("dynamic", parts[0], None, line)
            )
        elif not _defined_by_jinja(parts[0]):
            references.append(Reference("name", parts[0], None, line))
        position = match.end()
    return Analysis(tuple(sorted(references, key=_order)))


@lru_cache(maxsize=4096)
def _analyse_template_cached(text: str) -> Analysis:
    from jinja2 import TemplateSyntaxError

    try:
        tree = environment().parse(text)
    except TemplateSyntaxError as e:
        raise TemplateProblem(_syntax_message(e), e.lineno) from None
    return _collect(tree)


@lru_cache(maxsize=4096)
def analyse_expression(text: str) -> Analysis:
    """What a ``when`` or ``foreach`` expression reads; raises :class:`TemplateProblem`."""
    stripped = text.strip()
    if stripped.startswith(("{{", "{%")):
        raise TemplateProblem(
            "this is an expression, written without braces: "
            f"use {stripped.strip('{}% ').strip()!r} rather than {stripped!r}",
            1,
        )
    simple = _analyse_simple_expression(text)
    if simple is not None:
        return simple
    from jinja2 import TemplateSyntaxError
    from jinja2.parser import Parser

    try:
        parser = Parser(environment(), text, state="variable")
        expression = parser.parse_expression()
        if not parser.stream.eos:
            token = parser.stream.current
            raise TemplateSyntaxError(
                f"unexpected {token.value!r} after the expression", token.lineno
            )
    except TemplateSyntaxError as e:
        raise TemplateProblem(_syntax_message(e), e.lineno) from None
    return _collect(expression)


_NAME_PATH = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
# A dotted name, or one compared with a literal: most `when` and `foreach` lines.
_SIMPLE_EXPRESSION = re.compile(
    rf"[ \t]*(?P<not>not[ \t]+)?(?P<path>{_NAME_PATH})"
    r"(?:[ \t]*(?:==|!=|<=|>=|<|>)[ \t]*"
    r"(?:'[^'\\\n]*'|\"[^\"\\\n]*\"|-?[0-9]+(?:\.[0-9]+)?|true|false|none|True|False|None))?"
    r"[ \t]*"
)


def _analyse_simple_expression(text: str) -> Analysis | None:
    """The analysis of ``path``, ``not path`` or ``path == 'literal'`` (and the other
    comparisons) without Jinja's parser, which is slow: the same references Jinja
    would give. Anything else returns None and goes to the parser."""
    match = _SIMPLE_EXPRESSION.fullmatch(text)
    if match is None:
        return None
    parts = match.group("path").split(".")
    if parts[0] in _NOT_NAMES:
        return None
    if parts[0] in ROOTS:
        if len(parts) == 1:
            return Analysis((Reference("dynamic", parts[0], None, 1),))
        reference = _reference(parts, 1)
        bare = match.group("not") is None and match.end("path") == len(text.rstrip())
        return Analysis((reference,), reference if bare else None)
    if _defined_by_jinja(parts[0]):
        return Analysis(())
    return Analysis((Reference("name", parts[0], None, 1),))


def _syntax_message(e: TemplateSyntaxError) -> str:
    message = e.message or "syntax error"
    if "expected token 'end of print statement'" in message:
        message += " (is a '}}' missing, or an operator?)"
    elif "Unexpected end of template" in message:
        message += " (a block such as {% if %} or {% for %} is not closed)"
    return message


def _collect(root: nodes.Node) -> Analysis:
    from jinja2 import nodes

    forbidden = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)
    references: list[Reference] = []
    loads: list[tuple[str, int]] = []
    stored: set[str] = set()
    whole: Reference | None = None
    stack: list[nodes.Node] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.Getattr | nodes.Getitem):
            chain = _static_chain(node)
            if chain is not None and chain[0] in ROOTS:
                references.append(_reference(chain, node.lineno))
                if node is root:
                    whole = references[-1]
                continue
        elif isinstance(node, nodes.Name):
            if node.ctx == "load":
                loads.append((node.name, node.lineno))
            else:
                stored.add(node.name)
        elif isinstance(node, nodes.Filter | nodes.Test) and node.name:
            kind: Literal["filter", "test"] = "filter" if isinstance(node, nodes.Filter) else "test"
            references.append(Reference(kind, node.name, None, node.lineno))
        elif isinstance(node, forbidden):
            raise TemplateProblem(
                "templates cannot include, import or extend other files; "
                "use prompt_file or system_file for a template kept in a file",
                node.lineno,
            )
        stack.extend(node.iter_child_nodes())
    for name, line in loads:
        if name in stored or _defined_by_jinja(name):
            continue
        # a root read other than by a fixed name (agents[name]) is checked when it renders
        references.append(Reference("dynamic" if name in ROOTS else "name", name, None, line))
    references.sort(key=_order)
    return Analysis(tuple(references), whole)


def _order(reference: Reference) -> tuple[int, str, str, str, str]:
    r = reference
    return (r.line, r.kind, r.name, str(r.attribute), str(r.rest))


def _static_chain(node: nodes.Node) -> list[str | int] | None:
    """``agents.x["output"].y`` as ``['agents', 'x', 'output', 'y']``; None if dynamic."""
    from jinja2 import nodes

    parts: list[str | int] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str | int)
        ):
            parts.append(node.arg.value)
            node = node.node
        else:
            break
    if isinstance(node, nodes.Name) and node.ctx == "load":
        parts.append(node.name)
        parts.reverse()
        return parts
    return None


def _reference(chain: Sequence[str | int], line: int) -> Reference:
    root, name = chain[0], str(chain[1])
    if root == "inputs":  # inputs.<name>, then what is read inside its value
        return Reference("input", name, None, line, tuple(chain[2:]))
    attribute = chain[2] if len(chain) > 2 else None
    kind: Literal["agent", "workflow"] = "agent" if root == "agents" else "workflow"
    return Reference(kind, name, attribute, line, tuple(chain[3:]))


# -- rendering ---------------------------------------------------------------------------

_NEWLINES = re.compile(r"\r\n|\r")
_compiled: dict[str, Any] = {}
Pieces = tuple[tuple[str, tuple[str, ...] | None], ...]


def render(text: str, context: Mapping[str, Any]) -> str:
    """A template rendered in the sandbox with ``context``.

    Placeholder-only templates (text and ``{{ dotted.name }}``) are rendered
    without compiling them: the same attribute lookups (the sandbox's own
    ``getattr``), the same ``str()`` of each value, the same whitespace control
    and newline handling as Jinja's compiled code, which costs a millisecond
    per distinct template. Anything else is compiled once and cached.
    """
    pieces = _pieces(text)
    if pieces is None:
        rendered: str = _compiled_template(text).render(context)
        return rendered
    env = environment()
    out: list[str] = []
    for literal, path in pieces:
        out.append(literal)
        if path is not None:
            value = context.get(path[0], _MISSING)
            if value is _MISSING:
                value = env.globals.get(path[0], _MISSING)
            if value is _MISSING:
                value = env.undefined(name=path[0])
            for attribute in path[1:]:
                if type(value) is dict and attribute not in _DICT_ATTRIBUTES and attribute in value:
                    value = value[attribute]  # what the sandbox's getattr gives, sooner
                else:
                    value = env.getattr(value, attribute)
            out.append(str(value))
    return "".join(out)


def evaluate(text: str, context: Mapping[str, Any]) -> Any:
    """A ``when`` or ``foreach`` expression's value in the sandbox."""
    key = "\0expression\0" + text
    expression = _compiled.get(key)
    if expression is None:
        expression = _remember(key, environment().compile_expression(text, undefined_to_none=False))
    return expression(**context)


_MISSING = object()
_DICT_ATTRIBUTES = frozenset(dir(dict))  # a dict's attributes win over its keys in Jinja


def _compiled_template(text: str) -> Any:
    template = _compiled.get(text)
    if template is None:
        template = _remember(text, environment().from_string(text))
    return template


def _remember(key: str, value: Any) -> Any:
    if len(_compiled) > 4096:  # a long-lived engine sees many workflows
        _compiled.clear()
    _compiled[key] = value
    return value


@lru_cache(maxsize=4096)
def _pieces(text: str) -> Pieces | None:
    """Literal text and the dotted names between it, as Jinja would output them;
    None if the template is anything more than that."""
    if "{" not in text:
        return ((_NEWLINES.sub("\n", text), None),)
    if "{%" in text or "{#" in text:
        return None
    pieces: list[tuple[str, tuple[str, ...] | None]] = []
    position = 0
    strip_next = False
    while True:
        start = text.find("{{", position)
        literal = text[position : start if start >= 0 else len(text)]
        if strip_next:
            literal = literal.lstrip()
        if start < 0:
            pieces.append((_NEWLINES.sub("\n", literal), None))
            return tuple(pieces)
        match = _PLACEHOLDER.match(text, start)
        if match is None:
            return None
        parts = tuple(match.group(1).split("."))
        if parts[0] in _NOT_NAMES:
            return None
        token = match.group(0)
        if token.startswith("{{-"):
            literal = literal.rstrip()
        strip_next = token.endswith("-}}")
        pieces.append((_NEWLINES.sub("\n", literal), parts))
        position = match.end()
