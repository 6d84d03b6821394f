"""The library entry points: what the command line does, callable from Python.

``validate`` checks workflow files; ``load`` returns a runnable workflow or
raises :class:`aoe.errors.WorkflowInvalid`. The executor's ``run_workflow``
and the planner's ``plan`` join them in later releases.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from aoe.config import Settings, load_settings
from aoe.loader import LoadResult, load_workflow
from aoe.workflow import Workflow

__all__ = ["LoadResult", "Settings", "load", "load_settings", "validate"]


def validate(
    paths: Sequence[str | os.PathLike[str]], settings: Settings | None = None
) -> list[LoadResult]:
    """Check every file, each with all its diagnostics.

    With ``settings`` (the engine configuration), providers and prices are
    checked too; :func:`aoe.config.load_settings` gives the effective one.
    """
    return [load_workflow(path, settings=settings) for path in paths]


def load(path: str | os.PathLike[str], settings: Settings | None = None) -> Workflow:
    """A valid workflow, or :class:`aoe.errors.WorkflowInvalid` listing every error."""
    return load_workflow(path, settings=settings).require()
