"""Located messages about a file: ``FILE:LINE:COL: error: MESSAGE``.

A diagnostic is what every check of a workflow or config file produces. Lines
and columns are 1-based, as editors show them; 0 means "the whole file".
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Diagnostic(NamedTuple):
    """One finding about a file, with the fix in its message."""

    file: str
    line: int
    column: int
    severity: Severity
    code: str
    message: str

    def format(self) -> str:
        """The compiler-style one-liner: ``FILE:LINE:COL: error: MESSAGE``.

        Without a column (0) the place is ``FILE:LINE``; without a line, ``FILE``.
        """
        return f"{self.where}: {self.severity}: {self.message}"

    @property
    def where(self) -> str:
        if self.line <= 0:
            return self.file
        if self.column <= 0:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "severity": str(self.severity),
            "code": self.code,
            "message": self.message,
        }

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR


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
