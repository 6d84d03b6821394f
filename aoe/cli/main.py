"""The ``aoe`` command line: Typer commands over :mod:`aoe.service.runner`.

The only module (with :mod:`aoe.cli.ui`) that knows typer and rich. Commands
parse options, call the library, print, and turn errors into exit codes:
a user error prints what is wrong, where and how to fix it, and exits 2;
nothing prints a traceback unless ``--debug`` (or ``LOG_LEVEL=DEBUG``) asks.
Everything heavier than typer is imported inside the command that needs it,
so ``aoe --help`` and ``aoe validate`` start fast.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, NoReturn

import typer

from aoe import __version__

if TYPE_CHECKING:
    from aoe.config.settings import Settings
    from aoe.errors import AoeError
    from aoe.events import RunStatus
    from aoe.format.workflow import Workflow
    from aoe.service.resume import ResumePlan
    from aoe.state.store import Store

app = typer.Typer(
    name="aoe",
    help="aoe - the Agent Orchestration Engine: run declarative YAML workflows of LLM calls.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(
    help="The engine configuration.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(config_app, name="config")

_state = {"debug": False}


class ReportFormat(StrEnum):
    text = "text"
    json = "json"


class GraphFormat(StrEnum):
    tree = "tree"
    mermaid = "mermaid"
    dot = "dot"


ConfigOption = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="Engine config file (default: $AOE_CONFIG, else built-in defaults).",
        metavar="FILE",
        show_default=False,
    ),
]


def finite(value: float | None) -> float | None:
    """A number option's check: ``inf``, ``nan`` and ``1e400`` parse as floats, and a
    budget of infinity is no budget at all."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number; give one such as 2.5")
    return value


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aoe {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback behind an error.")
    ] = False,
) -> None:
    """aoe - the Agent Orchestration Engine: run declarative YAML workflows of LLM calls."""
    _state["debug"] = debug or os.environ.get("LOG_LEVEL", "").upper() == "DEBUG"


@contextmanager
def _errors() -> Iterator[None]:
    """Turn aoe's errors into messages and exit codes; a bug into a short report."""
    from aoe.errors import AoeError

    try:
        yield
    except AoeError as error:
        _fail(error)
    except KeyboardInterrupt:
        typer.echo("aoe: interrupted", err=True)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as error:
        if _state["debug"]:
            traceback.print_exc()
        typer.echo(
            f"aoe: internal error: {type(error).__name__}: {error}\n"
            "This is a bug in aoe; rerun with --debug for the traceback and report it.",
            err=True,
        )
        raise typer.Exit(1) from None


def _fail(error: AoeError) -> NoReturn:
    from aoe.cli.ui import format_diagnostic, use_colour
    from aoe.errors import DiagnosticsError

    if _state["debug"]:
        traceback.print_exception(error)
    colour = use_colour(sys.stderr)
    if isinstance(error, DiagnosticsError):
        for diagnostic in error.diagnostics:
            typer.echo(format_diagnostic(diagnostic, colour), err=True)
    else:
        typer.echo(f"aoe: error: {error}", err=True)
    raise typer.Exit(error.exit_code) from None


def _settings(config: str | None) -> Settings:
    from aoe.config.settings import load_settings

    return load_settings(config)


class LogFormat(StrEnum):
    text = "text"
    json = "json"


# Options `aoe run`, `aoe resume`, `aoe plan` and `aoe submit` share.
InputOption = Annotated[
    list[str] | None,
    typer.Option("--input", "-i", help="An input, NAME=VALUE (repeatable).", metavar="NAME=VALUE"),
]
InputsFileOption = Annotated[
    str | None,
    typer.Option("--inputs-file", help="Inputs from a YAML or JSON file.", metavar="FILE"),
]
MaxParallelOption = Annotated[
    int | None,
    typer.Option("--max-parallel", min=1, help="Agents of this run in flight at once."),
]
NoCacheOption = Annotated[
    bool, typer.Option("--no-cache", help="Call the model even where the cache has an answer.")
]
OutputOption = Annotated[
    str | None,
    typer.Option(
        "--output", "-o", help="Write the results JSON here ('-': stdout).", metavar="FILE"
    ),
]
JunitOption = Annotated[
    str | None,
    typer.Option(
        "--junit", help="Write a JUnit XML report (one test case per agent).", metavar="FILE"
    ),
]
LogFormatOption = Annotated[
    LogFormat | None,
    typer.Option("--log-format", help="Progress as text lines or JSON lines (stderr)."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress; only errors.")]
MetricsPortOption = Annotated[
    str | None,
    typer.Option(
        "--metrics-port",
        help="Serve Prometheus metrics at /metrics on PORT (or HOST:PORT; the host is "
        "127.0.0.1 unless given) while the run lasts.",
        metavar="PORT",
    ),
]
PushgatewayOption = Annotated[
    str | None,
    typer.Option(
        "--pushgateway",
        help="Push the run's metrics to this Prometheus Pushgateway when it ends.",
        metavar="URL",
    ),
]


class Reports(NamedTuple):
    """Where a run's results, reports and metrics go."""

    output: str | None
    junit: str | None
    quiet: bool
    metrics_port: str | None = None
    pushgateway: str | None = None


@app.command(
    epilog="Examples: aoe run workflows/competitor-brief.yaml --mock  |  "
    "aoe run wf.yaml -i topic=solar --output results.json  |  "
    "aoe run wf.yaml --output - --quiet | jq .outputs"
)
def run(
    file: Annotated[str, typer.Argument(help="The workflow file.", metavar="WORKFLOW")],
    input: InputOption = None,
    inputs_file: InputsFileOption = None,
    config: ConfigOption = None,
    max_parallel: MaxParallelOption = None,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget",
            min=0,
            callback=finite,
            help="USD the run may spend (over the file's cost_budget).",
            metavar="USD",
        ),
    ] = None,
    mock: Annotated[
        bool,
        typer.Option(
            "--mock",
            help="Answer every call offline with the mock provider, priced like "
            "the model each agent names.",
        ),
    ] = False,
    output: OutputOption = None,
    junit: JunitOption = None,
    log_format: LogFormatOption = None,
    quiet: QuietOption = False,
    no_cache: NoCacheOption = False,
    metrics_port: MetricsPortOption = None,
    pushgateway: PushgatewayOption = None,
    resume_latest: Annotated[
        bool,
        typer.Option(
            "--resume-latest",
            help="Resume this file's latest run if it did not complete; else start one (cron).",
        ),
    ] = False,
) -> None:
    """Run a workflow: live progress on a terminal, a line per event elsewhere.

    Exit 0 when the run completed (or ended partial with partial completion
    allowed), 1 when it failed, 2 for bad input, 3 when its budget stopped it,
    130 when interrupted.
    """
    with _errors():
        from aoe.config.settings import load_settings
        from aoe.format.inputs import bind_inputs
        from aoe.service.runner import load

        _check_outputs(output, junit)
        settings = load_settings(config, flags=_log_flags(log_format))
        workflow = load(file, settings)
        given = _given(workflow, input, inputs_file)
        store = _store(settings)
        if resume_latest:
            import os.path

            latest = store.latest_unfinished(os.path.abspath(file))
            if latest is not None and bool(latest.settings.get("mock")) == mock:
                _resume(
                    store,
                    settings,
                    latest.run_id,
                    given=given,
                    options={"budget": budget, "max_parallel": max_parallel, "mock": mock},
                    no_cache=no_cache,
                    force=False,
                    report=Reports(output, junit, quiet, metrics_port, pushgateway),
                )
        values = bind_inputs(workflow.inputs, given)
        options = {"mock": mock, "max_parallel": max_parallel, "budget": budget}
        reports = Reports(output, junit, quiet, metrics_port, pushgateway)
        status = _execute(workflow, values, settings, options, store, not no_cache, None, reports)
        raise typer.Exit(status.exit_code)


def _check_outputs(output: str | None, junit: str | None) -> None:
    """Report files that cannot be named at all, before the run rather than after it."""
    from aoe.errors import OptionInvalid

    for option, path in (("--output", output), ("--junit", junit)):
        if path is not None and "\x00" in path:
            raise OptionInvalid(f"{option} {path!r}: the file name contains a NUL character")


def _given(workflow: Workflow, assignments: list[str] | None, inputs_file: str | None) -> Any:
    """The inputs given: from --inputs-file, then each -i NAME=VALUE over them."""
    from aoe.format.inputs import from_assignments, from_file

    given = from_file(inputs_file) if inputs_file else {}
    given.update(from_assignments(assignments or [], workflow.inputs))
    return given


def _log_flags(log_format: LogFormat | None) -> dict[str, tuple[str, str]]:
    return {"monitoring.log_format": (log_format.value, "--log-format")} if log_format else {}


def _store(settings: Settings) -> Store:
    """The run store; a store that cannot be used is exit 2 before anything runs.
    The journals of runs whose process died are written into it first, where
    the store can be written (a reader of a read-only store sees it as it is)."""
    from aoe.errors import StateWriteFailed
    from aoe.state.journal import recover
    from aoe.state.store import Store

    store = Store.for_settings(settings)
    with suppress(StateWriteFailed):
        recover(store)
    return store


def _execute(
    workflow: Workflow,
    values: dict[str, Any],
    settings: Settings,
    options: dict[str, Any],
    store: Store,
    cache: bool,
    resume: ResumePlan | None,
    report: Reports,
) -> RunStatus:
    """Run (or resume) with the progress view, then write the reports; the status."""
    from aoe.cli.ui import LiveView
    from aoe.observe.logs import setup
    from aoe.observe.results import Results
    from aoe.service.runner import run_until_done

    # what the engine's parts say outside the events (a shared Redis that stops
    # answering, say) goes to stderr in the run's log format
    setup(settings.config.monitoring.log_format, settings.config.monitoring.log_level)
    results = Results(workflow, values)
    budget_shown = options.get("budget")
    if budget_shown is None:
        budget_shown = workflow.cost_budget
    if budget_shown is None:
        budget_shown = settings.config.cost_tracking.default_workflow_budget
    view = _progress(workflow, settings, report.quiet, budget_shown)
    with _metrics(report, workflow.name) as metrics:
        subscribers = [s for s in (results, metrics, view) if s is not None]
        arguments = {"subscribers": subscribers, "store": store, "cache": cache}
        arguments |= {"resume": resume, **options}
        if isinstance(view, LiveView):
            with view:
                status = run_until_done(workflow, values, settings, **arguments)
            view.summary()
        else:
            status = run_until_done(workflow, values, settings, **arguments)
    if report.output is not None:
        _write(results.to_json(), report.output)
    if report.junit is not None:
        _write(results.to_junit(), report.junit)
    if status.exit_code == 130:
        typer.echo(
            f"aoe: run {results.document['run_id']} interrupted; finish it with "
            f"`aoe resume {results.document['run_id']}`",
            err=True,
        )
    elif report.quiet and status.exit_code != 0:
        typer.echo(f"aoe: run {results.document['run_id']} ended {status}", err=True)
    return status


@contextmanager
def _metrics(report: Reports, workflow: str) -> Iterator[Any]:
    """The run's metrics, when --metrics-port or --pushgateway asks for them:
    served while the run lasts, pushed when it ends (a failed push is a warning:
    the run's outcome stands)."""
    if report.metrics_port is None and report.pushgateway is None:
        yield None
        return
    from aoe.errors import OptionInvalid, scrub
    from aoe.observe.metrics import Metrics, parse_address

    metrics = Metrics()
    server = None
    if report.metrics_port is not None:
        try:
            host, port = parse_address(report.metrics_port)
            server = metrics.serve(host, port)
        except ValueError as e:
            raise OptionInvalid(f"--metrics-port: {e}") from None
        except OSError as e:
            raise OptionInvalid(
                f"cannot serve metrics on {report.metrics_port}: {e.strerror or e}; "
                "choose another --metrics-port"
            ) from None
    try:
        yield metrics
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if report.pushgateway is not None:
            try:
                metrics.push(report.pushgateway, workflow)
            except Exception as e:  # the gateway's problem, not the run's
                typer.echo(
                    f"aoe: warning: could not push the metrics to "
                    f"{scrub(report.pushgateway)}: {scrub(str(e))}",
                    err=True,
                )


def _resume(
    store: Store,
    settings: Settings,
    run_id: str,
    *,
    given: dict[str, Any],
    options: dict[str, Any],
    no_cache: bool,
    force: bool,
    report: Reports,
    assignments: list[str] | None = None,
) -> NoReturn:
    from aoe.service.resume import plan_resume

    plan = plan_resume(
        store,
        run_id,
        settings,
        force=force,
        inputs=given,
        assignments=assignments or [],
        options=options,
    )
    if plan.done:
        typer.echo(f"aoe: run {plan.run_id} already completed; nothing to resume", err=True)
        raise typer.Exit(0)
    chosen = plan.options
    cache = bool(chosen.get("cache", True)) and not no_cache
    if not report.quiet:
        typer.echo(
            f"aoe: resuming run {plan.run_id}: {len(plan.kept)} of "
            f"{len(plan.workflow.agents)} agents completed before and are kept"
            + (f"; rerunning changed {', '.join(plan.changed)}" if plan.changed and force else ""),
            err=True,
        )
    status = _execute(
        plan.workflow,
        plan.inputs,
        settings,
        {
            "mock": bool(chosen.get("mock")),
            "max_parallel": chosen.get("max_parallel"),
            "budget": chosen.get("budget"),
        },
        store,
        cache,
        plan,
        report,
    )
    raise typer.Exit(status.exit_code)


@app.command(
    epilog="Examples: aoe resume 20261127-101500-3fa2c1  |  aoe resume 20261127-1015 --budget 5"
    "  |  aoe resume RUN_ID --force"
)
def resume(
    run_id: Annotated[str, typer.Argument(help="The run (a unique prefix is enough).")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Resume although the workflow file changed: rerun only the agents whose "
            "definition changed and those after them.",
        ),
    ] = False,
    input: Annotated[
        list[str] | None,
        typer.Option(
            "--input", "-i", help="Override a stored input, NAME=VALUE.", metavar="NAME=VALUE"
        ),
    ] = None,
    config: ConfigOption = None,
    max_parallel: MaxParallelOption = None,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget",
            min=0,
            callback=finite,
            help="USD the whole run may spend, earlier sessions included.",
            metavar="USD",
        ),
    ] = None,
    no_cache: NoCacheOption = False,
    output: OutputOption = None,
    junit: JunitOption = None,
    log_format: LogFormatOption = None,
    quiet: QuietOption = False,
    metrics_port: MetricsPortOption = None,
    pushgateway: PushgatewayOption = None,
) -> None:
    """Finish a run that was interrupted, failed or stopped by its budget.

    Only agents that did not complete run; completed ones are never called (or
    paid for) again, and their recorded outputs feed their dependents. The
    run's inputs and settings are the original ones unless given here; what it
    spent before counts against its budget. A run that completed is left as
    it is (exit 0). A changed workflow file is refused unless --force.
    """
    with _errors():
        from aoe.config.settings import load_settings

        _check_outputs(output, junit)
        settings = load_settings(config, flags=_log_flags(log_format))
        store = _store(settings)
        _resume(
            store,
            settings,
            run_id,
            given={},
            assignments=input or [],
            options={"budget": budget, "max_parallel": max_parallel},
            no_cache=no_cache,
            force=force,
            report=Reports(output, junit, quiet, metrics_port, pushgateway),
        )


def _progress(workflow: Any, settings: Settings, quiet: bool, budget: float | None) -> Any:
    """Who tells the user how the run goes: nobody (--quiet), JSON lines, a live
    view on a terminal, or a plain line per event on a pipe; always on stderr.
    ``LOG_LEVEL`` above INFO leaves the lines of what went well out."""
    from aoe.cli.ui import JsonLines, LiveView, PlainProgress, console

    monitoring = settings.config.monitoring
    if quiet:
        return None
    if monitoring.log_format == "json":
        return JsonLines(sys.stderr, monitoring.log_level)
    if sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
        return LiveView(workflow, console(sys.stderr), budget)
    return PlainProgress(sys.stderr, monitoring.log_level)


@app.command(
    epilog="Examples: aoe plan workflows/competitor-brief.yaml  |  "
    "aoe plan wf.yaml -i topic=solar --format json | jq .worst_case"
)
def plan(
    file: Annotated[str, typer.Argument(help="The workflow file.", metavar="WORKFLOW")],
    input: InputOption = None,
    inputs_file: InputsFileOption = None,
    config: ConfigOption = None,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget", min=0, callback=finite, help="USD the run may spend.", metavar="USD"
        ),
    ] = None,
    mock: Annotated[bool, typer.Option("--mock", help="Plan a --mock run.")] = False,
    format: Annotated[
        ReportFormat, typer.Option("--format", "-f", help="text, or JSON.")
    ] = ReportFormat.text,
) -> None:
    """What a run would do, without calling anything: order, critical path,
    worst-case cost against the budget, and the rate limits' least wall time.

    A worst case over the budget is a warning (exit 0): real costs are usually lower.
    """
    with _errors():
        from aoe.cli.ui import plan_text
        from aoe.config.settings import load_settings
        from aoe.policy.plan import plan as make_plan
        from aoe.service.runner import load

        settings = load_settings(config)
        workflow = load(file, settings)
        given = _given(workflow, input, inputs_file)
        values = {name: item.value for name, item in given.items() if name in workflow.inputs}
        result = make_plan(workflow, settings, values, budget=budget, mock=mock)
        if format is ReportFormat.json:
            typer.echo(json.dumps(result.to_json(), indent=2))
        else:
            sys.stdout.write(plan_text(result))


@app.command(
    epilog="Examples: aoe validate workflows/*.yaml  |  "
    "aoe validate wf.yaml --format json | jq '.[] | .message'"
)
def validate(
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
    with _errors():
        from aoe.cli.ui import format_diagnostic, plural, use_colour
        from aoe.errors import ConfigInvalid
        from aoe.format.diagnostics import has_errors
        from aoe.service.runner import validate as validate_files

        try:
            settings = _settings(config)
        except ConfigInvalid as error:
            if format is not ReportFormat.json:
                raise
            # a script reading the JSON report gets the config's problems there too
            typer.echo(json.dumps([d.to_json() for d in error.diagnostics], indent=2))
            raise typer.Exit(error.exit_code) from None
        results = validate_files(files, settings)
        if _state["debug"]:
            for result in results:
                if result.error is not None:
                    traceback.print_exception(result.error)
        failed = sum(1 for r in results if has_errors(r.diagnostics))
        if format is ReportFormat.json:
            report = [d.to_json() for r in results for d in r.diagnostics]
            typer.echo(json.dumps(report, indent=2))
        else:
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
        raise typer.Exit(2 if failed else 0)


@app.command(
    epilog="Examples: aoe graph wf.yaml  |  aoe graph wf.yaml --format dot | dot -Tsvg > wf.svg  "
    "|  aoe graph wf.yaml -f mermaid -o wf.mmd"
)
def graph(
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
    with _errors():
        from aoe.cli.ui import critical_path_line
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
        _write(text, output)


def _render_tree(workflow: Any, *, to_file: bool) -> str:
    """A Rich tree on a terminal wide enough for it; plain text otherwise, so
    that nothing is ever wrapped away or cut off."""
    from aoe.cli.ui import console, graph_text, graph_tree, tree_depth, use_colour

    if not to_file and use_colour(sys.stdout):
        out = console()
        if 4 * tree_depth(workflow) + 30 <= out.width:
            out.print(graph_tree(workflow))
            return ""
    return graph_text(workflow)


def _write(text: str, output: str | None) -> None:
    from aoe.errors import UserError

    if output is None or output == "-":
        sys.stdout.write(text)
        return
    if "\x00" in output:
        raise UserError(f"cannot write {output!r}: the file name contains a NUL character")
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise UserError(f"cannot write {output}: {e.strerror or e}") from None


@app.command(epilog="Example: aoe schema -o workflow.schema.json")
def schema(
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Write to FILE instead of stdout.", metavar="FILE"),
    ] = None,
) -> None:
    """Print the workflow format as JSON Schema, for editors and other tools.

    Point an editor at it with a first line such as
    # yaml-language-server: $schema=workflow.schema.json
    """
    with _errors():
        from aoe.format.spec import json_schema

        _write(json.dumps(json_schema(), indent=2) + "\n", output)


@config_app.command(
    "show", epilog="Examples: aoe config show  |  aoe config show -c config/production.yaml -f json"
)
def config_show(
    config: ConfigOption = None,
    format: Annotated[
        ReportFormat, typer.Option("--format", "-f", help="A table, or JSON.")
    ] = ReportFormat.text,
) -> None:
    """Show the effective engine config and where each value came from.

    Precedence: command-line flags, then environment variables (and .env),
    then the config file, then built-in defaults. API keys are never shown.
    """
    with _errors():
        from aoe.cli.ui import config_lines, config_rows, config_table, console, use_colour

        settings = _settings(config)
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


def _register() -> None:
    import aoe.cli.serve  # noqa: F401  (its commands: serve, status)
    from aoe.cli.runs import cache_app, runs_app

    app.add_typer(runs_app, name="runs")
    app.add_typer(cache_app, name="cache")


_register()


def main() -> None:
    """The ``aoe`` console script."""
    app()
