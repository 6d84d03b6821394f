"""The small words of aoe's output: colour, diagnostics, counts, money, durations.

Shared by every view (progress lines, the live table, plans and run tables),
so that a cost or a duration reads the same wherever it is shown. Rich is
imported only by :func:`console`; colour is used only on a terminal, and never
when ``NO_COLOR`` is set.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TextIO

from aoe.types import Diagnostic

if TYPE_CHECKING:
    from rich.console import Console

_SEVERITY_COLOUR = {"error": "\x1b[1;31m", "warning": "\x1b[1;33m"}
_RESET = "\x1b[0m"


def use_colour(stream: TextIO) -> bool:
    """Colour only for a terminal, and only when NO_COLOR is not set."""
    if "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def format_diagnostic(diagnostic: Diagnostic, colour: bool = False) -> str:
    """``FILE:LINE:COL: error: MESSAGE``, the severity coloured on a terminal."""
    if not colour:
        return diagnostic.format()
    d = diagnostic
    severity = f"{_SEVERITY_COLOUR[str(d.severity)]}{d.severity}{_RESET}"
    return f"\x1b[1m{d.where}:{_RESET} {severity}: {d.message}"


def plural(count: int, word: str) -> str:
    """``1 agent``, ``2 agents``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def console(stream: TextIO | None = None, *, width: int | None = None) -> Console:
    """A Rich console for ``stream``: colour on terminals only, NO_COLOR honoured."""
    from rich.console import Console

    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def duration(seconds: float | None) -> str:
    """Seconds as people read them: ``4.2 s``, ``3 min 07 s``; nothing for None."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def money(usd: float) -> str:
    """Dollars to the cent, or to the digits that matter below a cent (``$0.000042``)."""
    if usd == 0:
        return "$0"
    if usd < 0.01:
        return "$" + f"{usd:.6f}".rstrip("0")
    return f"${usd:,.4f}" if usd < 1 else f"${usd:,.2f}"
