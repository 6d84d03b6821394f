"""The ``aoe`` console script (``aoe = "aoe.cli.main:main"``), also ``python -m aoe``."""

from __future__ import annotations

from aoe.cli.app import app


def main() -> None:
    """The ``aoe`` console script."""
    app()
