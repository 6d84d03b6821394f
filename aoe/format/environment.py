"""The one Jinja environment, and what a template may cost.

Prompts, system messages, ``outputs`` and the ``when`` / ``foreach``
expressions are Jinja2, rendered in an immutable sandbox where an undefined
name is an error and no file, environment variable or Python internal is
reachable, and where arithmetic and repetition whose result would be too large
are refused before they are made. The limits here are checked twice: where
they can be seen in the text, at validation (:mod:`aoe.format.templates`), and
again while a template renders (:mod:`aoe.format.rendering`, in the sandbox
process of :mod:`aoe.sandbox`). :class:`TemplateProblem` is what the checks
before rendering raise, for a template that does not parse or would cost too
much.
"""

from __future__ import annotations

import math
import re
from functools import cache
from typing import TYPE_CHECKING, Any

from aoe.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Callable

    from jinja2.sandbox import ImmutableSandboxedEnvironment

# Jinja is imported when a template first needs it: placeholder-only templates
# are analysed and rendered without it, and ``aoe validate`` starts faster for that.

MAX_RENDERED = 4 << 20
"""Characters a rendered prompt, system message or output may have."""
MAX_LOOP_STEPS = 1_000_000
"""Iterations nested ``range`` loops of constant size may make together."""
MAX_INT_BITS = 13_000
"""Bits of an integer a template may compute: about 3,900 digits, so that any of
them can still be printed (Python refuses to print integers of over 4,300)."""
MAX_CODE = 64 << 10
"""Characters of template code (inside ``{{ }}`` and ``{% %}``) one template may
hold: Jinja's parser makes a few hundred bytes of syntax tree of each."""
MAX_NESTING = 100
"""Levels of a template's syntax tree (Jinja's compiler recurses through them)."""
MAX_LIPSUM = 100
"""Paragraphs ``lipsum()`` may make."""
# Caches are bounded by bytes: a service sees templates of every size (aoe.bounded).
CACHE_BYTES = 8 << 20

# Names Jinja itself defines inside loops, macros and blocks, and its global
# functions (tested to equal the environment's, which needs Jinja imported).
_JINJA_IMPLICIT = frozenset({"loop", "caller", "varargs", "kwargs", "super", "self"})
JINJA_GLOBALS = frozenset({"range", "dict", "lipsum", "cycler", "joiner", "namespace"})


def defined_by_jinja(name: str) -> bool:
    """Whether Jinja defines ``name`` itself (``loop``, ``range``, ...)."""
    return name in _JINJA_IMPLICIT or name in JINJA_GLOBALS


class TemplateProblem(UserError):
    """A template that does not parse, uses what templates may not use, or would
    cost more than a template may (``costly``: its loops or constants are too big)."""

    def __init__(self, message: str, line: int, *, costly: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.costly = costly


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
    check = _BINOP_CHECKS.get(operator)
    return None if check is None else check(left, right)


def _power_problem(left: Any, right: Any) -> str | None:
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
    return None


def _product_problem(left: Any, right: Any) -> str | None:
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
    return None


def _join_problem(left: Any, right: Any) -> str | None:
    if (
        isinstance(left, str | list | tuple)
        and isinstance(right, str | list | tuple)
        and len(left) + len(right) > MAX_RENDERED
    ):
        return f"joining these would make more than {MAX_RENDERED:,} items"
    return None


def _format_problem(left: Any, right: Any) -> str | None:
    if not isinstance(left, str) or "%" not in left:
        return None
    for width, precision in _FORMAT_WIDTHS.findall(left):
        if (
            max(len(width), len(precision)) > 7
            or max(int(width or 0), int(precision or 0)) > MAX_RENDERED
        ):
            return f"a %-format width or precision over {MAX_RENDERED:,}"
    return None


_BINOP_CHECKS: dict[str, Callable[[Any, Any], str | None]] = {
    "**": _power_problem,
    "*": _product_problem,
    "+": _join_problem,
    "%": _format_problem,
}
