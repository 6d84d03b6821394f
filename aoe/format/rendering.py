"""Templates rendered, and ``when`` / ``foreach`` expressions evaluated.

Placeholder-only templates (text and ``{{ dotted.name }}``) and simple
expressions are cheap whatever their values, so the engine renders them in its
own process (:func:`inline`, :func:`inline_expression`); anything else is
compiled and rendered in the sandbox process (:mod:`aoe.sandbox`), where time
and memory are bounded.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any

from aoe.errors import RunError
from aoe.format.bounded import ByteLRU, memoize
from aoe.format.environment import CACHE_BYTES, MAX_RENDERED, environment
from aoe.format.templates import NOT_NAMES, PLACEHOLDER, analyse_simple_expression

if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_FOREACH_ITEMS = 10_000
"""Items one ``foreach`` agent may run over: each is a call with its own record."""

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
    return analyse_simple_expression(text) is not None


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
        match = PLACEHOLDER.match(text, start)
        if match is None:
            return None
        parts = tuple(match.group(1).split("."))
        if parts[0] in NOT_NAMES:
            return None
        token = match.group(0)
        if token.startswith("{{-"):
            literal = literal.rstrip()
        strip_next = token.endswith("-}}")
        pieces.append((_NEWLINES.sub("\n", literal), parts))
        position = match.end()
