"""What a template reads, before anything runs; and whether it could cost too much.

:func:`analyse_template` and :func:`analyse_expression` list what each
template or expression reads (``agents.X.output``, ``inputs.Y``,
``workflow.name``, bare names), so the loader can check every reference
against ``depends_on`` and the declared inputs; on the way they refuse what
would cost more than a template may (:mod:`aoe.format.environment`: loops,
constants (:mod:`aoe.format.templatecosts`), nesting, code size). Rendering is
:mod:`aoe.format.rendering`.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Literal, NamedTuple

from aoe.format.bounded import memoize
from aoe.format.environment import (
    CACHE_BYTES,
    MAX_CODE,
    MAX_LOOP_STEPS,
    MAX_NESTING,
    MAX_RENDERED,
    TemplateProblem,
    defined_by_jinja,
    environment,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from jinja2 import TemplateSyntaxError, nodes

# Jinja is imported when a template first needs it: placeholder-only templates
# are analysed without it, and ``aoe validate`` often starts faster for that.

ROOTS = ("agents", "inputs", "workflow")
"""Names every template may read."""
FOREACH_NAMES = ("item", "index")
"""Names a ``foreach`` agent's templates may read as well."""
AGENT_ATTRIBUTES = ("output", "status")
WORKFLOW_ATTRIBUTES = ("name",)


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
    would write and loop, at least, from its constants (:func:`constants`)."""

    def __init__(self, root: nodes.Node) -> None:
        from jinja2 import nodes

        self.nodes = nodes
        self.forbidden = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)
        self.root = root
        self.references: list[Reference] = []
        self.loads: list[tuple[str, int]] = []
        self.stored: set[str] = set()
        self.whole: Reference | None = None
        # like Jinja, only for templates beyond placeholders: the most are not
        from aoe.format.templatecosts import constants, text_length

        self.text_length = text_length
        self.ranges, self.values = constants(root)
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
            elif isinstance(node, nodes.Macro):  # its name, and what Jinja gives its body
                self.stored.update((node.name, "caller", "varargs", "kwargs"))
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
                self.rendered += (self.text_length(self.values.get(id(child))) or 0) * runs
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
