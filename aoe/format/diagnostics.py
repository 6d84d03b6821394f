"""Located messages about a file: ``FILE:LINE:COL: error: MESSAGE``.

A diagnostic is what every check of a workflow or config file produces. Lines
and columns are 1-based, as editors show them; 0 means "the whole file".
"""

from __future__ import annotations

from typing import Any

from aoe.types import Diagnostic


def sort_key(d: Diagnostic) -> tuple[str, int, int, str]:
    return (d.file, d.line, d.column, d.message)


def has_errors(diagnostics: list[Diagnostic] | tuple[Diagnostic, ...]) -> bool:
    return any(d.is_error for d in diagnostics)


def describe(value: Any) -> str:
    """A short description of a value as YAML wrote it: ``a string ("800")``."""
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        if value.bit_length() > 64:  # str() refuses past 4,300 digits, and no one reads them
            return f"an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits"
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value:g})"
    if isinstance(value, str):
        shown = value if len(value) <= 30 else value[:27] + "..."
        return f'a string ("{shown}")'
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
