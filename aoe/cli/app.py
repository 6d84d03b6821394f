"""The ``aoe`` command: the Typer app, its global options, and its command groups.

Each group of commands is a module over :mod:`aoe.cli.common` (run, check,
serve, config, runs); this module puts them together in the order ``aoe
--help`` lists them, and keeps the global options (``--debug``) in Typer's
context for the commands to read.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from aoe import __version__
from aoe.cli import check, config, run, runs, serve
from aoe.cli.common import GlobalOptions

app = typer.Typer(
    name="aoe",
    help="aoe - the Agent Orchestration Engine: run declarative YAML workflows of LLM calls.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aoe {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback behind an error.")
    ] = False,
) -> None:
    """aoe - the Agent Orchestration Engine: run declarative YAML workflows of LLM calls."""
    ctx.obj = GlobalOptions(debug=debug or os.environ.get("LOG_LEVEL", "").upper() == "DEBUG")


# The commands in the order `aoe --help` lists them: a Typer added without a
# name gives its commands to `aoe` itself; the groups come after the commands.
app.add_typer(run.commands)
app.add_typer(check.commands)
app.add_typer(serve.commands)
app.add_typer(config.config_app, name="config")
app.add_typer(runs.runs_app, name="runs")
app.add_typer(runs.cache_app, name="cache")
