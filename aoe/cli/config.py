"""``aoe config ...``: the engine configuration as it comes out of flags,
environment, config file and defaults.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from aoe.cli.common import ConfigOption, ReportFormat, handle_errors, read_settings

config_app = typer.Typer(
    help="The engine configuration.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@config_app.command(
    "show",
    epilog="Examples:\n\naoe config show\n\naoe config show -c config/production.yaml -f json",
)
def config_show(
    ctx: typer.Context,
    config: ConfigOption = None,
    format: Annotated[
        ReportFormat, typer.Option("--format", "-f", help="A table, or JSON.")
    ] = ReportFormat.text,
) -> None:
    """Show the effective engine config and where each value came from.

    Precedence: command-line flags, then environment variables (and .env),
    then the config file, then built-in defaults. API keys are never shown.
    """
    with handle_errors(ctx):
        from aoe.cli.ui.tables import config_lines, config_rows, config_table
        from aoe.cli.ui.text import console, use_colour

        settings = read_settings(config)
        if format is ReportFormat.json:
            report = {
                s.key: {"value": s.shown if s.secret else s.value, "source": s.source}
                for s in settings.settings()
            }
            typer.echo(json.dumps(report, indent=2))
            return
        header = f"config file: {settings.config_file or '(none: built-in defaults)'}"
        rows = config_rows(settings)
        if not use_colour(sys.stdout):
            sys.stdout.write(header + "\n" + config_lines(rows))
            return
        out = console()
        out.print(header, markup=False)
        out.print(config_table(rows))
