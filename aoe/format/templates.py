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

import contextlib
import math
import re
import sys
from functools import cache
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from aoe.errors import RunError, UserError
from aoe.format.bounded import ByteLRU, memoize

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
    """The one Jinja environment: sandboxed, immutable, strict about undefined names,
    and refusing arithmetic and repetition whose result would be too large to make
    (``'x' * 3000000000``, ``2 ** 2 ** 33``) before making it."""
    from jinja2 import StrictUndefined
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import generate_lorem_ipsum

    class Bounded(ImmutableSandboxedEnvironment):
        # intercepted operators are also never folded into constants when compiling
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            problem = binop_problem(operator, left, right)
            if problem is not None:
                raise SecurityError(problem)
            return super().call_binop(context, operator, left, right)

    def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        if not 0 <= n <= MAX_LIPSUM or not 0 < max <= 1000:
            raise SecurityError(f"lipsum() may make {MAX_LIPSUM} paragraphs of 1,000 words at most")
        return str(generate_lorem_ipsum(n, html, min, max))

    env = Bounded(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.globals["lipsum"] = lipsum
    return env


def _number(value: int) -> str:
    return f"{value:,}" if value.bit_length() < 64 else "a large number"


_FORMAT_WIDTHS = re.compile(r"%[-#0 +]*(\d*)(?:\.(\d+))?")


def binop_problem(operator: str, left: Any, right: Any) -> str | None:
    """Why ``left operator right`` must not be computed in a template, or None:
    its result would be larger than a template may make."""
    if operator == "**":
        if (
            type(left) is int
            and type(right) is int
            and abs(left) > 1
            and right > 0
            and right * math.log2(abs(left)) > MAX_INT_BITS
        ):
            return (
                f"{_number(left)} ** {_number(right)} is too large a number to compute "
                f"(templates may compute integers of {MAX_INT_BITS:,} bits)"
            )
    elif operator == "*":
        for times, seq in ((left, right), (right, left)):
            if (
                type(times) is int
                and isinstance(seq, str | list | tuple)
                and times * len(seq) > MAX_RENDERED
            ):
                return (
                    f"repeating {type(seq).__name__} of {len(seq):,} items {times:,} "
                    f"times would be too large (at most {MAX_RENDERED:,})"
                )
        if (
            type(left) is int
            and type(right) is int
            and left.bit_length() + right.bit_length() > MAX_INT_BITS
        ):
            return (
                "this product is too large a number to compute "
                f"(templates may compute integers of {MAX_INT_BITS:,} bits)"
            )
    elif operator == "+":
        if (
            isinstance(left, str | list | tuple)
            and isinstance(right, str | list | tuple)
            and len(left) + len(right) > MAX_RENDERED
        ):
            return f"joining these would make more than {MAX_RENDERED:,} items"
    elif operator == "%" and isinstance(left, str) and "%" in left:
        for width, precision in _FORMAT_WIDTHS.findall(left):
            if (
                max(len(width), len(precision)) > 7
                or max(int(width or 0), int(precision or 0)) > MAX_RENDERED
            ):
                return f"a %-format width or precision over {MAX_RENDERED:,}"
    return None


class TemplateProblem(UserError):
    """A template that does not parse, uses what templates may not use, or would
    cost more than a template may (``costly``: its loops or constants are too big)."""

    def __init__(self, message: str, line: int, *, costly: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.costly = costly


# What one template may cost, checked where it can be seen in the text (here, at
# validation) and again while it renders (in the sandbox process, aoe.sandbox).
MAX_RENDERED = 4 << 20
"""Characters a rendered prompt, system message or output may have."""
MAX_LOOP_STEPS = 1_000_000
"""Iterations nested ``range`` loops of constant size may make together."""
MAX_INT_BITS = 13_000
"""Bits of an integer a template may compute: about 3,900 digits, so that any of
them can still be printed (Python refuses to print integers of over 4,300)."""
MAX_FOREACH_ITEMS = 10_000
"""Items one ``foreach`` agent may run over: each is a call with its own record."""
MAX_CODE = 64 << 10
"""Characters of template code (inside ``{{ }}`` and ``{% %}``) one template may
hold: Jinja's parser makes a few hundred bytes of syntax tree of each."""
MAX_NESTING = 100
"""Levels of a template's syntax tree (Jinja's compiler recurses through them)."""
MAX_LIPSUM = 100
"""Paragraphs ``lipsum()`` may make."""
# Caches are bounded by bytes: a service sees templates of every size (aoe.bounded).
CACHE_BYTES = 8 << 20


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
    simple = _analyse_simple_expression(text)
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
    ranges, values = _constants(root)
    rendered = 0  # characters the template writes at least: its text and constants
    # each node with how many times, at least, it runs per rendering (nested range
    # loops), and how deep it is (Jinja's compiler recurses as deep as the tree)
    stack: list[tuple[nodes.Node, int, int]] = [(root, 1, 0)]
    while stack:
        node, runs, depth = stack.pop()
        if depth > MAX_NESTING:
            raise TemplateProblem(_TOO_DEEP, node.lineno)
        depth += 1
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
        elif isinstance(node, nodes.Output):
            for child in node.nodes:
                if isinstance(child, nodes.TemplateData):
                    rendered += len(child.data) * runs
                else:
                    rendered += (_text_length(values.get(id(child))) or 0) * runs
            if rendered > MAX_RENDERED:
                raise TemplateProblem(
                    f"it would render over {MAX_RENDERED:,} characters "
                    "(its text and constants, with its loops)",
                    node.lineno,
                    costly=True,
                )
        elif isinstance(node, forbidden):
            raise TemplateProblem(
                "templates cannot include, import or extend other files; "
                "use prompt_file or system_file for a template kept in a file",
                node.lineno,
            )
        elif isinstance(node, nodes.For) and id(node.iter) in ranges:
            inner = runs * max(ranges[id(node.iter)], 1)
            if inner > MAX_LOOP_STEPS:
                raise TemplateProblem(
                    f"its loops would run {inner:,} times in all (nested range() loops may "
                    f"run {MAX_LOOP_STEPS:,} times together): loop over the data instead, "
                    "or use smaller ranges",
                    node.lineno,
                    costly=True,
                )
            stack.extend((child, runs, depth) for child in (node.target, node.iter, *node.else_))
            stack.extend((child, inner, depth) for child in node.body)
            if node.test is not None:
                stack.append((node.test, inner, depth))
            continue
        stack.extend((child, runs, depth) for child in node.iter_child_nodes())
    for name, line in loads:
        if name in stored or _defined_by_jinja(name):
            continue
        # a root read other than by a fixed name (agents[name]) is checked when it renders
        references.append(Reference("dynamic" if name in ROOTS else "name", name, None, line))
    references.sort(key=_order)
    return Analysis(tuple(references), whole)


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
        if isinstance(node, nodes.Const):
            if isinstance(node.value, str) and len(node.value) > _SHORT_TEXT:
                values[id(node)] = _Text(len(node.value))
            elif isinstance(node.value, int | float | str):
                values[id(node)] = node.value
        elif isinstance(node, nodes.List | nodes.Tuple):
            items = [values.get(id(item), _UNKNOWN) for item in node.items]
            values[id(node)] = items  # its length is what matters: `[0] * 10**9`
        elif isinstance(node, nodes.Neg | nodes.Pos):
            operand = values.get(id(node.node), _UNKNOWN)
            if isinstance(operand, int | float) and not isinstance(operand, bool):
                values[id(node)] = -operand if isinstance(node, nodes.Neg) else operand
        elif isinstance(node, nodes.BinExpr):
            left = values.get(id(node.left), _UNKNOWN)
            right = values.get(id(node.right), _UNKNOWN)
            if left is not _UNKNOWN and right is not _UNKNOWN:
                value = _operate(node.operator, left, right, node.lineno)
                if value is not _UNKNOWN:
                    values[id(node)] = value
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name):
            args = [values.get(id(a), _UNKNOWN) for a in node.args]
            kwargs = {k.key: values.get(id(k.value), _UNKNOWN) for k in node.kwargs}
            if node.node.name == "range" and args and not kwargs:
                if all(isinstance(a, int) and not isinstance(a, bool) for a in args):
                    # range(1, 2, 0) and the like fail when rendered, clearly
                    with contextlib.suppress(ValueError, TypeError, OverflowError):
                        ranges[id(node)] = len(range(*args))
            elif node.node.name == "lipsum":
                count = kwargs.get("n", args[0] if args else _UNKNOWN)
                if isinstance(count, int) and count > MAX_LIPSUM:
                    raise TemplateProblem(
                        f"lipsum() may make {MAX_LIPSUM} paragraphs at most, not {count:,}",
                        node.lineno,
                        costly=True,
                    )
    return ranges, values


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
        if operator == "+":
            a, b = _text_length(left), _text_length(right)
            if a is None or b is None:
                return _UNKNOWN
            length = a + b
            if length > MAX_RENDERED:
                raise TemplateProblem(
                    f"joining these would make more than {MAX_RENDERED:,} items", line, costly=True
                )
        else:
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
        return _Text(length)  # never the text itself
    problem = binop_problem(operator, left, right)
    if problem is not None:
        raise TemplateProblem(problem, line, costly=True)
    if isinstance(left, list) or isinstance(right, list):
        return _UNKNOWN  # checked; its value does not matter here
    try:
        if operator == "+":
            return left + right
        if operator == "-":
            return left - right
        if operator == "*":
            return left * right
        if operator == "**":
            return left**right
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        pass
    return _UNKNOWN  # nothing else that matters here grows beyond its operands


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
Pieces = tuple[tuple[str, tuple[str, ...] | None], ...]


class TooLarge(RunError, ValueError):
    """A rendered text over :data:`MAX_RENDERED` characters (a ``ValueError`` too:
    it is raised inside Jinja's rendering, whose callers catch that)."""

    def __init__(self) -> None:
        super().__init__(
            f"the rendered text would be over {MAX_RENDERED:,} characters; "
            "pass less text to it, or summarise first"
        )


def too_many_items(count: int) -> str:
    return (
        f"it gave {count:,} items; an agent may run over {MAX_FOREACH_ITEMS:,} at most "
        "(split the list, or batch the items)"
    )


def inline(text: str) -> bool:
    """Whether a template renders without Jinja's compiler: text and ``{{ dotted.name }}``
    only. Its cost is the size of the values it reads, so it may render anywhere;
    any other template renders in the sandbox process (:mod:`aoe.sandbox`)."""
    return _pieces(text) is not None


def inline_expression(text: str) -> bool:
    """Whether a ``when``/``foreach`` expression is a name, or a name compared with
    a literal: cheap to evaluate anywhere, whatever its values."""
    return _analyse_simple_expression(text) is not None


def render(text: str, context: Mapping[str, Any]) -> str:
    """A template rendered in the sandbox with ``context``; raises :class:`TooLarge`
    once the text passes :data:`MAX_RENDERED` characters.

    Placeholder-only templates (text and ``{{ dotted.name }}``) are rendered
    without compiling them: the same attribute lookups (the sandbox's own
    ``getattr``), the same ``str()`` of each value, the same whitespace control
    and newline handling as Jinja's compiled code, which costs a millisecond
    per distinct template. Anything else is compiled once and cached: that is
    for the sandbox process, where time and memory are bounded; the engine
    renders through :class:`aoe.sandbox.Sandbox`, never with this directly.
    """
    pieces = _pieces(text)
    out: list[str] = []
    size = 0
    if pieces is None:
        for chunk in _compiled_template(text).generate(context):
            size += len(chunk)
            if size > MAX_RENDERED:
                raise TooLarge()
            out.append(chunk)
        return "".join(out)
    env = environment()
    for literal, path in pieces:
        out.append(literal)
        size += len(literal)
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
            shown = str(value)
            size += len(shown)
            out.append(shown)
        if size > MAX_RENDERED:
            raise TooLarge()
    return "".join(out)


def evaluate(text: str, context: Mapping[str, Any]) -> Any:
    """A ``when`` or ``foreach`` expression's value in the sandbox (the engine
    evaluates only :func:`inline_expression` ones in its own process)."""
    key = "\0expression\0" + text
    expression = _compiled.get(key)
    if expression is None:
        expression = _compiled.put(
            key, environment().compile_expression(text, undefined_to_none=False)
        )
    return expression(**context)


_MISSING = object()
_DICT_ATTRIBUTES = frozenset(dir(dict))  # a dict's attributes win over its keys in Jinja
# Compiled templates and expressions: Python code, roughly ten times their text.
_compiled: ByteLRU[str, Any] = ByteLRU(CACHE_BYTES, lambda text, _: 10 * sys.getsizeof(text))


def _compiled_template(text: str) -> Any:
    template = _compiled.get(text)
    if template is None:
        template = _compiled.put(text, environment().from_string(text))
    return template


def _weigh_pieces(text: str, pieces: Pieces | None) -> int:
    return 2 * sys.getsizeof(text) + (0 if pieces is None else 100 * len(pieces))


@memoize(CACHE_BYTES, _weigh_pieces)
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
