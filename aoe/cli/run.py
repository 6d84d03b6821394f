"""``aoe run``, ``aoe resume`` and ``aoe plan``: a workflow run from the command line.

The commands parse options, hand the run to :mod:`aoe.service.runner` with the
progress view that suits the terminal (:mod:`aoe.cli.ui`), then write the
results and reports and exit with the run's code.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, NoReturn

import typer

from aoe.cli.common import (
    CacheOption,
    ConfigOption,
    InputOption,
    InputsFileOption,
    LogFormat,
    LogFormatOption,
    MaxParallelOption,
    ReportFormat,
    RunIdArgument,
    finite,
    given_inputs,
    handle_errors,
    open_store,
    write_output,
)

if TYPE_CHECKING:
    from aoe.config.settings import Settings
    from aoe.events import RunStatus
    from aoe.format.workflow import Workflow
    from aoe.service.resume import ResumePlan
    from aoe.service.runner import RunOptions
    from aoe.state.store import Store

commands = typer.Typer()
"""run, resume and plan; :mod:`aoe.cli.app` adds them to ``aoe`` itself."""

# Options of `aoe run` and `aoe resume`: where the results, reports and metrics go.
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
ReportOption = Annotated[
    str | None,
    typer.Option(
        "--report",
        help="Write the run's HTML report here: one self-contained file (open it in a "
        "browser, attach it to a pipeline).",
        metavar="FILE",
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress; only errors.")]
VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Show the replies as they arrive: each running agent's last words in the live "
        "view, or every line of every reply in the progress lines.",
    ),
]
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
    verbose: bool = False
    html: str | None = None  # --report


@commands.command(
    epilog="Examples:\n\naoe run workflows/competitor-brief.yaml --mock\n\n"
    "aoe run wf.yaml -i topic=solar --output results.json\n\n"
    "aoe run wf.yaml --output - --quiet | jq .outputs"
)
def run(
    ctx: typer.Context,
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
    mock_limits: Annotated[
        bool,
        typer.Option(
            "--mock-limits",
            help="With --mock: hold the calls to the rate limits of the providers the "
            "workflow names (in windows of their own, not the real ones), so the "
            "rehearsal takes as long as those limits make the real run take.",
        ),
    ] = False,
    output: OutputOption = None,
    junit: JunitOption = None,
    report: ReportOption = None,
    log_format: LogFormatOption = None,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    cache: CacheOption = None,
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
    with handle_errors(ctx):
        from aoe.config.settings import load_settings
        from aoe.service.runner import RunOptions, bind, load

        _check_outputs(output, junit, report)
        if mock_limits and not mock:
            from aoe.errors import OptionInvalid

            raise OptionInvalid(
                "--mock-limits rehearses a run offline: give --mock too (a real run is "
                "held to the limits anyway)"
            )
        settings = load_settings(config, flags=_log_flags(log_format))
        workflow = load(file, settings)
        given = given_inputs(workflow, input, inputs_file)
        store = open_store(settings)
        if resume_latest:
            import os.path

            latest = store.latest_unfinished(os.path.abspath(file))
            if latest is not None and bool(latest.settings.get("mock")) != mock:
                # not the same kind of run: a new one, said (a rehearsal is not resumed
                # for real, nor a paid run offline)
                was = "with --mock" if latest.settings.get("mock") else "without --mock"
                typer.echo(
                    f"aoe: the latest run of {file}, {latest.run_id}, did not complete, but "
                    f"it ran {was} and this one does not: starting a new run "
                    f"(`aoe resume {latest.run_id}` finishes that one as it was)",
                    err=True,
                )
            elif latest is not None:
                _resume(
                    store,
                    settings,
                    latest.run_id,
                    given=given,
                    options={
                        "budget": budget,
                        "max_parallel": max_parallel,
                        "mock": mock,
                        "mock_limits": mock_limits or None,  # (else as it began)
                    },
                    cache=cache,
                    force=False,
                    report=Reports(
                        output, junit, quiet, metrics_port, pushgateway, verbose, report
                    ),
                )
        values = bind(workflow, given)
        options = RunOptions(
            mock=mock,
            mock_limits=mock_limits,
            max_parallel=max_parallel,
            budget=budget,
            cache=cache,
        )
        reports = Reports(output, junit, quiet, metrics_port, pushgateway, verbose, report)
        status = _execute(workflow, values, settings, options, store, None, reports)
        raise typer.Exit(status.exit_code)


def _check_outputs(output: str | None, junit: str | None, report: str | None = None) -> None:
    """Report files that cannot be written, before the first call rather than
    after a paid run: a NUL in the name, a folder that is not there or cannot
    be written, a name that is a folder."""
    from aoe.errors import OptionInvalid

    for option, path in (("--output", output), ("--junit", junit), ("--report", report)):
        if path is None or path == "-":
            continue
        if "\x00" in path:
            raise OptionInvalid(f"{option} {path!r}: the file name contains a NUL character")
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise OptionInvalid(f"{option} {path}: that is a folder; name a file in it")
        if not os.path.isdir(folder):
            raise OptionInvalid(
                f"{option} {path}: the folder {folder} is not there; create it first "
                f"(mkdir -p {folder})"
            )
        if not os.access(folder, os.W_OK | os.X_OK) or (
            os.path.exists(path) and not os.access(path, os.W_OK)
        ):
            raise OptionInvalid(f"{option} {path}: aoe may not write there")


def _log_flags(log_format: LogFormat | None) -> dict[str, tuple[str, str]]:
    """--log-format as a flag of the settings, which then name it as the value's source."""
    return {"monitoring.log_format": (log_format.value, "--log-format")} if log_format else {}


def _execute(
    workflow: Workflow,
    values: dict[str, Any],
    settings: Settings,
    options: RunOptions,
    store: Store,
    resume: ResumePlan | None,
    report: Reports,
) -> RunStatus:
    """Run (or resume) with the progress view, then write the reports; the status."""
    from aoe.cli.ui.live import LiveView
    from aoe.observe.logs import setup
    from aoe.observe.results import Results
    from aoe.service.runner import run_until_done

    # what the engine's parts say outside the events (a shared Redis that stops
    # answering, say) goes to stderr in the run's log format
    setup(settings.config.monitoring.log_format, settings.config.monitoring.log_level)
    results = Results(workflow, values)
    budget_shown = options.budget
    if budget_shown is None:
        budget_shown = workflow.cost_budget
    if budget_shown is None:
        budget_shown = settings.config.cost_tracking.default_workflow_budget
    view = _progress(workflow, settings, report.quiet, budget_shown, report.verbose)
    with _metrics(report, workflow.name) as metrics:
        subscribers = [s for s in (results, metrics, view) if s is not None]
        arguments = {"subscribers": subscribers, "store": store, "resume": resume}
        if report.verbose and hasattr(view, "text"):  # the replies as they arrive
            arguments["text"] = view.text
        if isinstance(view, LiveView):
            with view:
                status = run_until_done(workflow, values, settings, options, **arguments)
            view.summary()
        else:
            status = run_until_done(workflow, values, settings, options, **arguments)
    if report.output is not None:
        write_output(results.to_json(), report.output)
    if report.junit is not None:
        write_output(results.to_junit(), report.junit)
    if report.html is not None and results.document["run_id"] is not None:
        from aoe.observe.report import report_html

        write_output(report_html(store, results.document["run_id"]), report.html)
    _end(workflow, results.document, settings, view, report.quiet)
    return status


def _end(
    workflow: Workflow, document: dict[str, Any], settings: Settings, view: Any, quiet: bool
) -> None:
    """The end of the run on stderr: on a terminal its outputs; wherever a person
    may read it (not JSON lines), its failures, the summary line and the command
    that goes on; with --quiet the same unless it completed."""
    from aoe.cli.ui.live import LiveView
    from aoe.cli.ui.progress import JsonLines
    from aoe.cli.ui.summary import end_of_run
    from aoe.cli.ui.text import use_colour

    run_id = document["run_id"]
    resume = resume_command(run_id, settings)
    if isinstance(view, JsonLines) or (quiet and document["status"] == "completed"):
        if document["status"] == "cancelled":  # (said in every mode: it can be finished)
            typer.echo(f"aoe: run {run_id} interrupted; finish it with `{resume}`", err=True)
        return
    depended_on = {d for agent in workflow.agents.values() for d in agent.depends_on}
    last = [agent_id for agent_id in workflow.agents if agent_id not in depended_on]
    terminal = isinstance(view, LiveView)
    text = end_of_run(
        document,
        last,
        resume=resume,
        outputs=terminal and not quiet,
        colour=terminal and use_colour(sys.stderr),
        width=None if terminal else 0,  # (a log's lines are not wrapped)
    )
    typer.echo(text, err=True)


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


def resume_command(run_id: str, settings: Settings) -> str:
    """The command that continues ``run_id``, as it can be typed: with the
    ``--config`` the run was given (which may also say where its store is)."""
    import shlex

    if settings.config_named_by == "flag --config" and settings.config_file:
        return f"aoe resume {run_id} --config {shlex.quote(settings.config_file)}"
    return f"aoe resume {run_id}"


def _as_started(
    store: Store, run_id: str, settings: Settings, flags: dict[str, tuple[str, str]]
) -> Settings:
    """The settings of the engine config the run was started with, when neither
    --config nor AOE_CONFIG names one now (its providers, prices and limits);
    ``settings`` when the run used none, or the same, or its file is gone."""
    import os.path

    from aoe.config.environment import CONFIG_FILE_VARIABLE
    from aoe.config.settings import load_settings

    if settings.environment.get(CONFIG_FILE_VARIABLE):
        return settings
    recorded = store.run(run_id).settings.get("config_file")
    now = os.path.abspath(settings.config_file) if settings.config_file else None
    if not isinstance(recorded, str) or recorded == now:
        return settings
    if not os.path.isfile(recorded):
        typer.echo(
            f"aoe: the run was started with the engine config {recorded}, which is gone; "
            "resuming without it (--config names another)",
            err=True,
        )
        return settings
    typer.echo(
        f"aoe: using the engine config the run was started with: {recorded} "
        "(--config names another)",
        err=True,
    )
    return load_settings(recorded, flags=flags)


def _resume(
    store: Store,
    settings: Settings,
    run_id: str,
    *,
    given: dict[str, Any],
    options: dict[str, Any],
    cache: bool | None,
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
    from aoe.service.runner import RunOptions

    chosen = RunOptions.from_record(plan.options)
    if not report.quiet:
        typer.echo(
            f"aoe: resuming run {plan.run_id}: {len(plan.kept)} of "
            f"{len(plan.workflow.agents)} agents completed before and are kept"
            + (f"; rerunning changed {', '.join(plan.changed)}" if plan.changed and force else ""),
            err=True,
        )
    if cache is not None:  # --cache or --no-cache: this session's choice
        chosen = chosen.but(cache=cache)
    status = _execute(plan.workflow, plan.inputs, settings, chosen, store, plan, report)
    raise typer.Exit(status.exit_code)


@commands.command(
    epilog="Examples:\n\naoe resume 20261127-101500-3fa2c1\n\naoe resume 20261127-1015 --budget 5"
    "\n\naoe resume RUN_ID --force"
)
def resume(
    ctx: typer.Context,
    run_id: RunIdArgument,
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
    cache: CacheOption = None,
    output: OutputOption = None,
    junit: JunitOption = None,
    report: ReportOption = None,
    log_format: LogFormatOption = None,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
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
    with handle_errors(ctx):
        from aoe.config.settings import load_settings

        _check_outputs(output, junit, report)
        settings = load_settings(config, flags=_log_flags(log_format))
        store = open_store(settings)
        if config is None:
            settings = _as_started(store, run_id, settings, _log_flags(log_format))
        _resume(
            store,
            settings,
            run_id,
            given={},
            assignments=input or [],
            options={"budget": budget, "max_parallel": max_parallel},
            cache=cache,
            force=force,
            report=Reports(output, junit, quiet, metrics_port, pushgateway, verbose, report),
        )


def _progress(
    workflow: Any, settings: Settings, quiet: bool, budget: float | None, verbose: bool = False
) -> Any:
    """Who tells the user how the run goes: nobody (--quiet), JSON lines, a live
    view on a terminal, or a plain line per event on a pipe; always on stderr.
    ``LOG_LEVEL`` above INFO leaves the lines of what went well out. ``verbose``
    (-v): the live view and the plain lines show the replies as they arrive."""
    from aoe.cli.ui.live import LiveView
    from aoe.cli.ui.progress import JsonLines, PlainProgress
    from aoe.cli.ui.text import console

    monitoring = settings.config.monitoring
    if quiet:
        return None
    if monitoring.log_format == "json":
        return JsonLines(sys.stderr, monitoring.log_level)
    if sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
        return LiveView(workflow, console(sys.stderr), budget, verbose=verbose)
    return PlainProgress(sys.stderr, monitoring.log_level)


@commands.command(
    epilog="Examples:\n\naoe plan workflows/competitor-brief.yaml\n\n"
    "aoe plan wf.yaml -i topic=solar --format json | jq .worst_case"
)
def plan(
    ctx: typer.Context,
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
    with handle_errors(ctx):
        from aoe.cli.ui.tables import plan_text
        from aoe.config.settings import load_settings
        from aoe.policy.plan import plan as make_plan
        from aoe.service.runner import load

        settings = load_settings(config)
        workflow = load(file, settings)
        given = given_inputs(workflow, input, inputs_file)
        values = {name: item.value for name, item in given.items() if name in workflow.inputs}
        result = make_plan(workflow, settings, values, budget=budget, mock=mock)
        if format is ReportFormat.json:
            typer.echo(json.dumps(result.to_json(), indent=2))
        else:
            sys.stdout.write(plan_text(result))
