"""What the constants of a template cost, worked out before it runs.

``{{ 'x' * 4000000 }}``, ``{{ 2 ** 2 ** 33 }}``, ``{% for i in range(10**9) %}``:
a template can ask for more time or memory than any reply is worth without
reading a single value. :func:`constants` works out its constant parts as
Jinja's own optimiser would, bottom-up, and refuses (:class:`TemplateProblem`,
``costly``) any whose value would pass a limit of
:mod:`aoe.format.environment`, before anything is made; long texts are known
by their length only. The analysis (:mod:`aoe.format.templates`) then counts
what the template writes and loops over with these figures.
"""

from __future__ import annotations

import contextlib
from operator import add, mul, sub
from operator import pow as power
from typing import TYPE_CHECKING, Any, NamedTuple

from aoe.format.environment import MAX_LIPSUM, MAX_RENDERED, TemplateProblem, binop_problem

if TYPE_CHECKING:
    from collections.abc import Callable

    from jinja2 import nodes

_UNKNOWN = object()


def constants(root: nodes.Node) -> tuple[dict[int, int], dict[int, Any]]:
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
    """A literal as :func:`constants` keeps it: long texts by their length."""
    if isinstance(value, str) and len(value) > _SHORT_TEXT:
        return Text(len(value))
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


class Text(NamedTuple):
    """A constant text known by its length only: working out `'x' * 4000000` five
    thousand times must not make the texts."""

    length: int


_SHORT_TEXT = 256  # characters of a constant text kept as it is (for its % widths)


def text_length(value: Any) -> int | None:
    if isinstance(value, Text):
        return value.length
    return len(value) if isinstance(value, str) else None


def _operate(operator: str, left: Any, right: Any, line: int) -> Any:
    """``left operator right`` for constants, refused when it would be too large."""
    if operator in ("+", "*") and (text_length(left) is not None or text_length(right) is not None):
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
        a, b = text_length(left), text_length(right)
        if a is None or b is None:
            return _UNKNOWN
        length = a + b
        if length > MAX_RENDERED:
            raise TemplateProblem(
                f"joining these would make more than {MAX_RENDERED:,} items", line, costly=True
            )
        return Text(length)
    text, times = (left, right) if text_length(left) is not None else (right, left)
    if type(times) is not int:
        return _UNKNOWN
    size = text_length(text) or 0
    length = size * max(times, 0)
    if length > MAX_RENDERED:
        raise TemplateProblem(
            f"repeating a text of {size:,} characters {times:,} times would be too "
            f"large (at most {MAX_RENDERED:,})",
            line,
            costly=True,
        )
    return Text(length)
