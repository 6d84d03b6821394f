"""What a template reads, before anything runs; and whether it could cost too much.

:func:`analyse_template` and :func:`analyse_expression` list what each
template or expression reads (``agents.X.output``, ``inputs.Y``,
``workflow.name``, bare names), so the loader can check every reference
against ``depends_on`` and the declared inputs; on the way they refuse what
would cost more than a template may (:mod:`aoe.format.environment`: loops,
constants, nesting, code size). Rendering is :mod:`aoe.format.rendering`.
"""

from __future__ import annotations

import contextlib
import re
import sys
from operator import add, mul, sub
from operator import pow as power
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from aoe.format.bounded import memoize
from aoe.format.environment import (
    CACHE_BYTES,
    MAX_CODE,
    MAX_LIPSUM,
    MAX_LOOP_STEPS,
    MAX_NESTING,
    MAX_RENDERED,
    binop_problem,
    defined_by_jinja,
    environment,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from jinja2 import TemplateSyntaxError, nodes

# Jinja is imported when a template first needs it: placeholder-only templates
# are analysed without it, and ``aoe validate`` often starts faster for that.

ROOTS = ("agents", "inputs", "workflow")
"""Names every template may read."""
FOREACH_NAMES = ("item", "index")
"""Names a ``foreach`` agent's templates may read as well."""
AGENT_ATTRIBUTES = ("output", "status")
WORKFLOW_ATTRIBUTES = ("name",)


class TemplateProblem(Exception):
    """A template that does not parse, uses what templates may not use, or would
    cost more than a template may (``costly``: its loops or constants are too big)."""

    def __init__(self, message: str, line: int, *, costly: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.costly = costly


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
    _check_code_size(_code_size(text))
    return _analyse_template_cached(text)


def _code_size(text: str) -> int:
    """Characters of a template inside ``{{ }}`` and ``{% %}``: what Jinja's parser
    turns into syntax nodes (the text between costs it nothing). One pass."""
    size = position = 0
    while True:
        found = _OPENER.search(text, position)
        if found is None:
            return size
        start = found.start()
        end = text.find("}}" if text[start + 1] == "{" else "%}", start + 2)
        end = len(text) if end < 0 else end
        size += end - start
        position = end + 2


_OPENER = re.compile(r"\{[{%]")


def _check_code_size(size: int) -> None:
    if size > MAX_CODE:
        raise TemplateProblem(
            f"it holds {size:,} characters of template code ({{{{ }}}} and {{% %}}, or the "
            f"whole of an expression); at most {MAX_CODE:,}: pass large data as an input",
            1,
            costly=True,
        )


# ``{{ a.b.c }}`` with optional whitespace control: the placeholders most prompts consist of.
PLACEHOLDER = re.compile(
    r"\{\{-?[ \t\r\n]*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)[ \t\r\n]*-?\}\}"
)
# Names that Jinja reads as operators or constants, not variables.
NOT_NAMES = frozenset(
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
        match = PLACEHOLDER.match(text, start)
        if match is None:
            return None
        parts = match.group(1).split(".")
        if parts[0] in NOT_NAMES:
            return None
        line += text.count("\n", counted, match.start(1))  # Jinja counts the name's line
        counted = match.start(1)
        if parts[0] in ROOTS:
            references.append(
                _reference(parts, line)
                if len(parts) > 1
                else Reference("dynamic", parts[0], None, line)
            )
        elif not defined_by_jinja(parts[0]):
            references.append(Reference("name", parts[0], None, line))
        position = match.end()
    return Analysis(tuple(sorted(references, key=_order)))


def _weigh_analysis(text: str, analysis: Analysis) -> int:
    return sys.getsizeof(text) + 160 * len(analysis.references) + 120


@memoize(CACHE_BYTES, _weigh_analysis)
def _analyse_template_cached(text: str) -> Analysis:
    from jinja2 import TemplateSyntaxError

    try:
        tree = environment().parse(text)
    except TemplateSyntaxError as e:
        raise TemplateProblem(_syntax_message(e), e.lineno) from None
    except RecursionError:
        raise TemplateProblem(_TOO_DEEP, 1) from None
    except ValueError:  # Jinja's int() of a literal of thousands of digits
        raise TemplateProblem(_LONG_NUMBER, 1) from None
    return _collect(tree)


_LONG_NUMBER = "a number in it has over 4,300 digits, more than Python reads; shorten it"
_TOO_DEEP = (
    "it is nested too deeply (brackets, operators, filters or blocks inside one "
    "another): split it into simpler parts"
)


@memoize(CACHE_BYTES, _weigh_analysis)
def analyse_expression(text: str) -> Analysis:
    """What a ``when`` or ``foreach`` expression reads; raises :class:`TemplateProblem`."""
    stripped = text.strip()
    if stripped.startswith(("{{", "{%")):
        inner = stripped.strip("{}% ").strip()
        raise TemplateProblem(
            "this is an expression, written without braces: "
            + (f"use {inner!r} rather than {stripped!r}" if len(stripped) < 200 else "remove them"),
            1,
        )
    simple = analyse_simple_expression(text)
    if simple is not None:
        return simple
    _check_code_size(len(text))
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
    except RecursionError:
        raise TemplateProblem(_TOO_DEEP, 1) from None
    except ValueError:  # Jinja's int() of a literal of thousands of digits
        raise TemplateProblem(_LONG_NUMBER, 1) from None
    return _collect(expression)


_NAME_PATH = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
# A dotted name, or one compared with a literal: most `when` and `foreach` lines.
_SIMPLE_EXPRESSION = re.compile(
    rf"[ \t]*(?P<not>not[ \t]+)?(?P<path>{_NAME_PATH})"
    r"(?:[ \t]*(?:==|!=|<=|>=|<|>)[ \t]*"
    r"(?:'[^'\\\n]*'|\"[^\"\\\n]*\"|-?[0-9]{1,100}(?:\.[0-9]+)?|true|false|none|True|False|None))?"
    r"[ \t]*"
)


def analyse_simple_expression(text: str) -> Analysis | None:
    """The analysis of ``path``, ``not path`` or ``path == 'literal'`` (and the other
    comparisons) without Jinja's parser, which is slow: the same references Jinja
    would give. Anything else returns None and goes to the parser."""
    match = _SIMPLE_EXPRESSION.fullmatch(text)
    if match is None:
        return None
    parts = match.group("path").split(".")
    if parts[0] in NOT_NAMES:
        return None
    if parts[0] in ROOTS:
        if len(parts) == 1:
            return Analysis((Reference("dynamic", parts[0], None, 1),))
        reference = _reference(parts, 1)
        bare = match.group("not") is None and match.end("path") == len(text.rstrip())
        return Analysis((reference,), reference if bare else None)
    if defined_by_jinja(parts[0]):
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
    """What a parsed template or expression reads, refusing what would cost too much."""
    return _Collector(root).run()


class _Collector:
    """One walk over a syntax tree, top-down without recursion (a chain of ten
    thousand ``+`` is one deep tree): the references it makes, and how much it
    would write and loop, at least, from its constants (:func:`_constants`)."""

    def __init__(self, root: nodes.Node) -> None:
        from jinja2 import nodes

        self.nodes = nodes
        self.forbidden = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)
        self.root = root
        self.references: list[Reference] = []
        self.loads: list[tuple[str, int]] = []
        self.stored: set[str] = set()
        self.whole: Reference | None = None
        self.ranges, self.values = _constants(root)
        self.rendered = 0  # characters the template writes at least: its text and constants
        # each node with how many times, at least, it runs per rendering (nested range
        # loops), and how deep it is (Jinja's compiler recurses as deep as the tree)
        self.stack: list[tuple[nodes.Node, int, int]] = [(root, 1, 0)]

    def run(self) -> Analysis:
        nodes, stack = self.nodes, self.stack
        while stack:
            node, runs, depth = stack.pop()
            if depth > MAX_NESTING:
                raise TemplateProblem(_TOO_DEEP, node.lineno)
            depth += 1
            if isinstance(node, nodes.Getattr | nodes.Getitem):
                if self.chain(node):
                    continue  # a reference: what is inside it is part of it
            elif isinstance(node, nodes.Name):
                if node.ctx == "load":
                    self.loads.append((node.name, node.lineno))
                else:
                    self.stored.add(node.name)
            elif isinstance(node, nodes.Filter | nodes.Test) and node.name:
                kind: Literal["filter", "test"] = (
                    "filter" if isinstance(node, nodes.Filter) else "test"
                )
                self.references.append(Reference(kind, node.name, None, node.lineno))
            elif isinstance(node, nodes.Output):
                self.output(node, runs)
            elif isinstance(node, self.forbidden):
                raise TemplateProblem(
                    "templates cannot include, import or extend other files; "
                    "use prompt_file or system_file for a template kept in a file",
                    node.lineno,
                )
            elif isinstance(node, nodes.For) and id(node.iter) in self.ranges:
                self.range_loop(node, runs, depth)
                continue
            stack.extend((child, runs, depth) for child in node.iter_child_nodes())
        return self.analysis()

    def chain(self, node: nodes.Getattr | nodes.Getitem) -> bool:
        """Whether ``node`` reads a root by fixed names (``agents.x.output``): a reference."""
        chain = _static_chain(node)
        if chain is None or chain[0] not in ROOTS:
            return False
        self.references.append(_reference(chain, node.lineno))
        if node is self.root:
            self.whole = self.references[-1]
        return True

    def output(self, node: nodes.Output, runs: int) -> None:
        """What ``{{ }}`` and the text between write, at least, times its loops."""
        for child in node.nodes:
            if isinstance(child, self.nodes.TemplateData):
                self.rendered += len(child.data) * runs
            else:
                self.rendered += (_text_length(self.values.get(id(child))) or 0) * runs
        if self.rendered > MAX_RENDERED:
            raise TemplateProblem(
                f"it would render over {MAX_RENDERED:,} characters "
                "(its text and constants, with its loops)",
                node.lineno,
                costly=True,
            )

    def range_loop(self, node: nodes.For, runs: int, depth: int) -> None:
        """A loop over a constant ``range()``: its body runs that many times more."""
        inner = runs * max(self.ranges[id(node.iter)], 1)
        if inner > MAX_LOOP_STEPS:
            raise TemplateProblem(
                f"its loops would run {inner:,} times in all (nested range() loops may "
                f"run {MAX_LOOP_STEPS:,} times together): loop over the data instead, "
                "or use smaller ranges",
                node.lineno,
                costly=True,
            )
        stack = self.stack
        stack.extend((child, runs, depth) for child in (node.target, node.iter, *node.else_))
        stack.extend((child, inner, depth) for child in node.body)
        if node.test is not None:
            stack.append((node.test, inner, depth))

    def analysis(self) -> Analysis:
        references = self.references
        for name, line in self.loads:
            if name in self.stored or defined_by_jinja(name):
                continue
            # a root read other than by a fixed name (agents[name]) is checked when it renders
            references.append(Reference("dynamic" if name in ROOTS else "name", name, None, line))
        references.sort(key=_order)
        return Analysis(tuple(references), self.whole)


_UNKNOWN = object()


def _constants(root: nodes.Node) -> tuple[dict[int, int], dict[int, Any]]:
    """Work out the constant parts of a template (``'x' * 3``, ``2 ** 10``,
    ``range(100)``) as Jinja's own optimiser would, refusing any whose value
    would be too large to make; return the sizes of its constant ``range()``
    calls, and the constant values, by node id. Bottom-up without recursion: a
    chain of ten thousand ``+`` is one deep tree."""
    from jinja2 import nodes

    values: dict[int, Any] = {}
    ranges: dict[int, int] = {}
    stack: list[tuple[nodes.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if not done:
            stack.append((node, True))
            stack.extend((child, False) for child in node.iter_child_nodes())
            continue
        value: Any = _UNKNOWN
        if isinstance(node, nodes.Const):
            value = _constant(node.value)
        elif isinstance(node, nodes.List | nodes.Tuple):
            # its length is what matters: `[0] * 10**9`
            value = [values.get(id(item), _UNKNOWN) for item in node.items]
        elif isinstance(node, nodes.Neg | nodes.Pos):
            value = _sign(values.get(id(node.node), _UNKNOWN), isinstance(node, nodes.Neg))
        elif isinstance(node, nodes.BinExpr):
            left = values.get(id(node.left), _UNKNOWN)
            right = values.get(id(node.right), _UNKNOWN)
            if left is not _UNKNOWN and right is not _UNKNOWN:
                value = _operate(node.operator, left, right, node.lineno)
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name):
            _call(node, values, ranges)
        if value is not _UNKNOWN:
            values[id(node)] = value
    return ranges, values


def _constant(value: Any) -> Any:
    """A literal as :func:`_constants` keeps it: long texts by their length."""
    if isinstance(value, str) and len(value) > _SHORT_TEXT:
        return _Text(len(value))
    if isinstance(value, int | float | str):
        return value
    return _UNKNOWN


def _sign(operand: Any, negative: bool) -> Any:
    if isinstance(operand, int | float) and not isinstance(operand, bool):
        return -operand if negative else operand
    return _UNKNOWN


def _call(node: nodes.Call, values: dict[int, Any], ranges: dict[int, int]) -> None:
    """``range()`` of constants, by its length; ``lipsum()`` refused past its limit."""
    name = getattr(node.node, "name", None)
    args = [values.get(id(a), _UNKNOWN) for a in node.args]
    kwargs = {k.key: values.get(id(k.value), _UNKNOWN) for k in node.kwargs}
    if name == "range" and args and not kwargs:
        if all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            # range(1, 2, 0) and the like fail when rendered, clearly
            with contextlib.suppress(ValueError, TypeError, OverflowError):
                ranges[id(node)] = len(range(*args))
    elif name == "lipsum":
        count = kwargs.get("n", args[0] if args else _UNKNOWN)
        if isinstance(count, int) and count > MAX_LIPSUM:
            raise TemplateProblem(
                f"lipsum() may make {MAX_LIPSUM} paragraphs at most, not {count:,}",
                node.lineno,
                costly=True,
            )


class _Text(NamedTuple):
    """A constant text known by its length only: working out `'x' * 4000000` five
    thousand times must not make the texts."""

    length: int


_SHORT_TEXT = 256  # characters of a constant text kept as it is (for its % widths)


def _text_length(value: Any) -> int | None:
    if isinstance(value, _Text):
        return value.length
    return len(value) if isinstance(value, str) else None


def _operate(operator: str, left: Any, right: Any, line: int) -> Any:
    """``left operator right`` for constants, refused when it would be too large."""
    if operator in ("+", "*") and (
        _text_length(left) is not None or _text_length(right) is not None
    ):
        return _text_operation(operator, left, right, line)
    problem = binop_problem(operator, left, right)
    if problem is not None:
        raise TemplateProblem(problem, line, costly=True)
    if isinstance(left, list) or isinstance(right, list):
        return _UNKNOWN  # checked; its value does not matter here
    operation = _ARITHMETIC.get(operator)
    if operation is None:
        return _UNKNOWN  # nothing else that matters here grows beyond its operands
    try:
        return operation(left, right)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        return _UNKNOWN


_ARITHMETIC: dict[str, Callable[[Any, Any], Any]] = {
    "+": add,
    "-": sub,
    "*": mul,
    "**": power,
}


def _text_operation(operation: str, left: Any, right: Any, line: int) -> Any:
    """A text joined or repeated, as its length: never the text itself."""
    if operation == "+":
        a, b = _text_length(left), _text_length(right)
        if a is None or b is None:
            return _UNKNOWN
        length = a + b
        if length > MAX_RENDERED:
            raise TemplateProblem(
                f"joining these would make more than {MAX_RENDERED:,} items", line, costly=True
            )
        return _Text(length)
    text, times = (left, right) if _text_length(left) is not None else (right, left)
    if type(times) is not int:
        return _UNKNOWN
    size = _text_length(text) or 0
    length = size * max(times, 0)
    if length > MAX_RENDERED:
        raise TemplateProblem(
            f"repeating a text of {size:,} characters {times:,} times would be too "
            f"large (at most {MAX_RENDERED:,})",
            line,
            costly=True,
        )
    return _Text(length)


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
