"""``aoe validate``, ``aoe graph`` and ``aoe schema``: workflow files checked,
drawn and described, without running anything.
"""

from __future__ import annotations

import json
import sys
import traceback
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aoe.cli.common import (
    ConfigOption,
    ReportFormat,
    global_options,
    handle_errors,
    read_settings,
    write_output,
)

if TYPE_CHECKING:
    from aoe.format.loader import LoadResult

commands = typer.Typer()
"""validate, graph and schema; :mod:`aoe.cli.app` adds them to ``aoe`` itself."""


class GraphFormat(StrEnum):
    """``aoe graph --format``: a tree for a terminal, Mermaid or Graphviz for tools."""

    tree = "tree"
    mermaid = "mermaid"
    dot = "dot"


@commands.command(
    epilog="Examples:\n\naoe validate workflows/*.yaml\n\n"
    "aoe validate wf.yaml --format json | jq '.[] | .message'"
)
def validate(
    ctx: typer.Context,
    files: Annotated[
        list[str], typer.Argument(help="Workflow files to check.", metavar="WORKFLOW...")
    ],
    format: Annotated[
        ReportFormat, typer.Option("--format", "-f", help="text lines or a JSON list.")
    ] = ReportFormat.text,
    config: ConfigOption = None,
) -> None:
    """Check workflow files: format, graph, templates, providers and prices.

    Every problem of every file is reported in one pass, as
    FILE:LINE:COL: error: MESSAGE. Exit 0 when all are valid, 2 otherwise.
    """
    with handle_errors(ctx):
        from aoe.errors import ConfigInvalid
        from aoe.format.diagnostics import has_errors
        from aoe.service.runner import validate as validate_files

        try:
            settings = read_settings(config)
        except ConfigInvalid as error:
            if format is not ReportFormat.json:
                raise
            # a script reading the JSON report gets the config's problems there too
            typer.echo(json.dumps([d.to_json() for d in error.diagnostics], indent=2))
            raise typer.Exit(error.exit_code) from None
        results = validate_files(files, settings)
        if global_options(ctx).debug:
            for result in results:
                if result.error is not None:
                    traceback.print_exception(result.error)
        failed = sum(1 for r in results if has_errors(r.diagnostics))
        if format is ReportFormat.json:
            report = [d.to_json() for r in results for d in r.diagnostics]
            typer.echo(json.dumps(report, indent=2))
        else:
            _print_results(results, failed)
        raise typer.Exit(2 if failed else 0)


def _print_results(results: list[LoadResult], failed: int) -> None:
    """``aoe validate`` for people: each file's diagnostics and a line on whether it
    is valid, then a count when there are several files."""
    from aoe.cli.ui.text import format_diagnostic, plural, use_colour

    colour = use_colour(sys.stdout)
    for result in results:
        for diagnostic in result.diagnostics:
            typer.echo(format_diagnostic(diagnostic, colour))
        errors = sum(1 for d in result.diagnostics if d.is_error)
        warnings = len(result.diagnostics) - errors
        if result.workflow is not None and not errors:
            status = f"valid ({plural(len(result.workflow.agents), 'agent')}"
            status += f", {plural(warnings, 'warning')})" if warnings else ")"
        else:
            status = f"invalid ({plural(errors, 'error')}"
            status += f", {plural(warnings, 'warning')})" if warnings else ")"
        typer.echo(f"{result.path}: {status}")
    if len(results) > 1:
        typer.echo(
            f"{plural(len(results), 'file')} checked: "
            f"{len(results) - failed} valid, {failed} invalid"
        )


@commands.command(
    epilog="Examples:\n\naoe graph wf.yaml\n\naoe graph wf.yaml --format dot | dot -Tsvg > wf.svg"
    "\n\naoe graph wf.yaml -f mermaid -o wf.mmd"
)
def graph(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="The workflow file.", metavar="WORKFLOW")],
    format: Annotated[
        GraphFormat,
        typer.Option("--format", "-f", help="tree (for a terminal), mermaid or dot (Graphviz)."),
    ] = GraphFormat.tree,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Write to FILE instead of stdout.", metavar="FILE"),
    ] = None,
) -> None:
    """Draw the dependency graph of a workflow, its critical path highlighted."""
    with handle_errors(ctx):
        from aoe.cli.ui.graph import critical_path_line
        from aoe.service.runner import load

        workflow = load(file)
        labels = {
            agent_id: f"{agent_id}\n{agent.llm.label}"
            + ("\nforeach" if agent.foreach is not None else "")
            for agent_id, agent in workflow.agents.items()
        }
        critical = workflow.graph.critical_path().nodes
        if format is GraphFormat.mermaid:
            text = workflow.graph.to_mermaid(labels, highlight=critical)
        elif format is GraphFormat.dot:
            text = workflow.graph.to_dot(workflow.name, labels, highlight=critical)
        else:
            text = _render_tree(workflow, to_file=output is not None)
            text += critical_path_line(workflow) + "\n"
        write_output(text, output)


def _render_tree(workflow: Any, *, to_file: bool) -> str:
    """A Rich tree on a terminal wide enough for it; plain text otherwise, so
    that nothing is ever wrapped away or cut off."""
    from aoe.cli.ui.graph import graph_text, graph_tree, tree_depth
    from aoe.cli.ui.text import console, use_colour

    if not to_file and use_colour(sys.stdout):
        out = console()
        if 4 * tree_depth(workflow) + 30 <= out.width:
            out.print(graph_tree(workflow))
            return ""
    return graph_text(workflow)


@commands.command(
    epilog="Examples:\n\naoe schema -o workflow.schema.json\n\n"
    "aoe schema --results -o results.schema.json"
)
def schema(
    ctx: typer.Context,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Write to FILE instead of stdout.", metavar="FILE"),
    ] = None,
    results: Annotated[
        bool,
        typer.Option("--results", help="The results document's schema (aoe run --output) instead."),
    ] = False,
) -> None:
    """Print the workflow format as JSON Schema, for editors and other tools;
    with --results, the schema of the results document `aoe run --output` writes.

    Point an editor at it with a first line such as
    # yaml-language-server: $schema=workflow.schema.json
    """
    with handle_errors(ctx):
        if results:
            from aoe.observe.resultschema import json_schema as results_schema

            write_output(json.dumps(results_schema(), indent=2) + "\n", output)
            return
        from aoe.format.spec import json_schema

        write_output(json.dumps(json_schema(), indent=2) + "\n", output)
