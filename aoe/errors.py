"""The exception tree of aoe.

::

    AoeError                      root; never raised itself
    ├── UserError                 the user can fix it; exit code 2
    │   ├── WorkflowInvalid       a workflow file with one or more diagnostics
    │   ├── ConfigInvalid         the engine config (file, environment, flags)
    │   └── InputsInvalid         run-time inputs that do not fit the workflow
    └── RunError                  a run that failed; exit code 1 (later issues)

Every error carries a message that says what is wrong and how to fix it. The
command line prints ``str(error)`` (or its diagnostics) and exits with
``error.exit_code``; it never shows a traceback unless asked to with ``--debug``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aoe.diagnostics import Diagnostic


class AoeError(Exception):
    """Root of every error aoe raises on purpose."""

    exit_code: int = 1


class UserError(AoeError):
    """Bad usage or bad input: a file, a value or an option the user can fix."""

    exit_code = 2


class DiagnosticsError(UserError):
    """A user error described by located diagnostics (``FILE:LINE:COL: error: ...``)."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        super().__init__("\n".join(d.format() for d in self.diagnostics))


class WorkflowInvalid(DiagnosticsError):
    """A workflow file that cannot be used; ``diagnostics`` says every reason."""


class ConfigInvalid(DiagnosticsError):
    """The engine configuration (config file, environment or flags) is invalid."""


class InputsInvalid(DiagnosticsError):
    """Inputs given at run time that are missing, undeclared or of the wrong type."""


class RunError(AoeError):
    """A run that started and failed."""

    exit_code = 1
