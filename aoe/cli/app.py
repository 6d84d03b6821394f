"""The ``aoe`` command: the Typer app, its global options, and its command groups.

Each group of commands is a module over :mod:`aoe.cli.common` (run, check,
serve, config, runs); this module puts them together in the order ``aoe
--help`` lists them, and keeps the global options (``--debug``) in Typer's
context for the commands to read.
"""

from __future__ import annotations

import os
from enum import StrEnum
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from aoe import __version__
from aoe.cli import check, config, run, runs, serve
from aoe.cli.common import GlobalOptions


class _Aoe(TyperGroup):
    """``aoe`` itself: ``--debug`` is taken wherever it is written (``aoe run
    wf.yaml --debug`` said "No such option"), as the global option it is; a
    mistyped command is given one suggestion (Typer and Click each gave theirs)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if "_AOE_COMPLETE" in os.environ:  # a shell asks for completions (aoe completion)
            from typer._completion_classes import completion_init

            completion_init()  # Typer's answers, as its scripts read them
        return super().main(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--debug" in args:
            end = args.index("--") if "--" in args else len(args)
            if "--debug" in args[:end]:
                args = ["--debug", *(a for i, a in enumerate(args) if a != "--debug" or i > end)]
        return super().parse_args(ctx, args)


app = typer.Typer(
    name="aoe",
    cls=_Aoe,
    help="aoe - the Agent Orchestration Engine: run declarative YAML workflows of LLM calls.",
    no_args_is_help=True,
    add_completion=False,
    suggest_commands=False,  # (Click suggests, once)
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
app.add_typer(runs.commands)
app.add_typer(config.config_app, name="config")
app.add_typer(runs.runs_app, name="runs")
app.add_typer(runs.cache_app, name="cache")


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


@app.command(
    epilog="Examples:\n\naoe completion bash > ~/.local/share/bash-completion/completions/aoe"
    '\n\naoe completion zsh > "${fpath[1]}/_aoe"\n\n'
    "aoe completion fish > ~/.config/fish/completions/aoe.fish"
)
def completion(shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish.")]) -> None:
    """Print the script that completes aoe's commands and options in SHELL: save
    it where the shell reads completions (see the examples), or `eval` it."""
    # Typer's own scripts (what its --show-completion prints), which speak the
    # protocol Typer answers (`_AOE_COMPLETE=complete_bash`): its completion
    # options are off, as they cost every `aoe --help` ~0.1 s of imports
    from typer._completion_shared import get_completion_script

    typer.echo(get_completion_script(prog_name="aoe", complete_var="_AOE_COMPLETE", shell=shell))
