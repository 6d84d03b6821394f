"""``aoe runs ...`` and ``aoe cache ...``: the run store from the command line.

Commands over :mod:`aoe.state.store`; like every command of :mod:`aoe.cli`, they
parse, call, print, and turn errors into exit codes. Tables for people,
``--format json`` for scripts.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aoe.cli.common import (
    ConfigOption,
    ReportFormat,
    RunIdArgument,
    existing_store,
    handle_errors,
    no_store,
    open_store,
    read_settings,
    write_output,
)

if TYPE_CHECKING:
    from aoe.state.store import Store


commands = typer.Typer()
"""report; :mod:`aoe.cli.app` adds it to ``aoe`` itself."""
runs_app = typer.Typer(
    help="The run records: list, show, export, import, prune, events.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
cache_app = typer.Typer(
    help="The response cache.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

FormatOption = Annotated[ReportFormat, typer.Option("--format", "-f", help="A table, or JSON.")]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_WORDS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week"}
YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="Delete without asking (scripts, cron).")
]
MAX_EXPORT_BYTES = 256 * 1024 * 1024
"""The largest run export `aoe runs import` reads (256 MiB): an export holds every
output and event of a run, and parsing takes several times its size in memory."""


def _age(text: str) -> tuple[float, str]:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s``: the seconds, and the age in
    words ("30 days"). A number needs its unit: ``--older-than 30`` meant 30
    seconds once, and deleted every run."""
    from aoe.errors import OptionInvalid

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise OptionInvalid(f"age {text!r}: write an age such as 30d, 12h, 90m or 2w")
    number, unit = match.groups()
    if not unit:
        raise OptionInvalid(
            f"age {text!r} has no unit: write {number}d (days), {number}h (hours), "
            f"{number}m (minutes), {number}s (seconds) or {number}w (weeks)"
        )
    words = f"{number} {_WORDS[unit]}" + ("" if float(number) == 1 else "s")
    return float(number) * _UNITS[unit], words


def _confirmed(question: str, yes: bool, refusal: str) -> bool:
    """Whether to go on: ``--yes``, else the answer of a person at a terminal;
    without one (a script, cron) it is an error to leave out ``--yes``."""
    if yes:
        return True
    if not sys.stdin.isatty():
        from aoe.errors import OptionInvalid

        raise OptionInvalid(refusal)
    return typer.confirm(question, default=False, err=True)


def _when(at: float | None) -> str:
    return "" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _money(usd: float | None) -> str:
    from aoe.cli.ui.text import money

    return "" if usd is None else money(usd)


def _table(headers: list[str], rows: list[list[str]]) -> None:
    """Aligned columns on stdout; plain text, so it pipes and greps well."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        sys.stdout.write("  ".join(cells).rstrip() + "\n")


def _json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


@runs_app.command(
    "list", epilog="Examples:\n\naoe runs list\n\naoe runs list --status failed -f json"
)
def runs_list(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only runs with this status: running, interrupted, completed, partial, "
            "failed, budget_exceeded, cancelled.",
        ),
    ] = None,
    workflow: Annotated[
        str | None, typer.Option("--workflow", "-w", help="Only runs of this workflow name.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many.")] = 20,
    format: FormatOption = ReportFormat.text,
    config: ConfigOption = None,
) -> None:
    """Recent runs, newest first."""
    with handle_errors(ctx):
        from aoe.state.rows import RecordStatus

        if status is not None:  # (a typo printed "no runs match", exit 0)
            _one_of("--status", status, [s.value for s in RecordStatus])
        settings = read_settings(config)
        store = existing_store(settings)
        if store is None:
            if format is ReportFormat.json:
                _json([])
            else:
                typer.echo(f"no runs recorded yet: {no_store(settings)}", err=True)
            return
        # "interrupted" is "running" with its process gone: filter after reading
        stored_status = "running" if status == "interrupted" else status
        runs = store.runs(status=stored_status, workflow=workflow, limit=None if status else limit)
        if status is not None:
            runs = [r for r in runs if r.status == status][:limit]
        if format is ReportFormat.json:
            from aoe.observe.results import listed

            _json([listed(r.to_dict()) for r in runs])
            return
        if not runs:
            typer.echo(
                "no runs recorded yet" if status is None and workflow is None else "no runs match",
                err=True,
            )
            return
        _table(
            ["run", "workflow", "status", "started", "cost", "budget", "tokens", "sessions"],
            [
                [
                    r.run_id,
                    r.workflow_name,
                    r.status,
                    _when(r.created_at),
                    _money(r.cost),
                    _money(r.budget),
                    f"{r.input_tokens + r.output_tokens:,}",
                    str(r.sessions),
                ]
                for r in runs
            ],
        )


@runs_app.command(
    "output",
    epilog="Examples:\n\naoe runs output 20261127-101500-3fa2c1\n\n"
    "aoe runs output 20261127-101500-3fa2c1 review > review.json",
)
def runs_output(
    ctx: typer.Context,
    run_id: RunIdArgument,
    name: Annotated[
        str | None,
        typer.Argument(help="One of the run's outputs, or an agent.", metavar="[NAME]"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Print a stored output as it is, for pipes: text as the model wrote it,
    JSON as JSON. Without NAME, the run's outputs (a JSON object), or its one
    agent's output."""
    from aoe.errors import OptionInvalid

    with handle_errors(ctx):
        store = _stored(config, run_id)
        run = store.run(run_id)
        agents = {a.agent_id: a for a in store.agents(run.run_id)}
        outputs = run.outputs or {}
        if name is None and outputs:
            _raw(outputs)
            return
        if name is None and len(agents) == 1:
            name = next(iter(agents))
        if name is None:
            raise OptionInvalid(
                f"run {run.run_id}'s workflow names no outputs: name an agent, one of "
                f"{', '.join(agents)}"
            )
        if name in outputs:
            _raw(outputs[name])
            return
        agent = agents.get(name)
        if agent is None:
            known = [*outputs, *agents]
            raise OptionInvalid(
                f"run {run.run_id} has no output or agent {name!r}; it has "
                f"{', '.join(known) or 'none'}"
            )
        if agent.state != "completed":  # (exit 1, as grep finding nothing)
            reason = f": {agent.error}" if agent.error else ""
            typer.echo(
                f"aoe: agent {name} of run {run.run_id} has no output: it is {agent.state}{reason}",
                err=True,
            )
            raise typer.Exit(1)
        _raw(agent.output)


def _stored(config: str | None, run_id: str) -> Store:
    """The run store, for a command that reads a run: none there is no such run
    (and none is made)."""
    from aoe.errors import RunNotFound

    settings = read_settings(config)
    store = existing_store(settings)
    if store is None:
        raise RunNotFound(f"no run {run_id}: {no_store(settings)}")
    return store


def _raw(value: Any) -> None:
    """A text as it is (ended by a newline), anything else as JSON."""
    if isinstance(value, str):
        sys.stdout.write(value if value.endswith("\n") else value + "\n")
    else:
        sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


@runs_app.command("show", epilog="Example:\n\naoe runs show 20261127-101500-3fa2c1")
def runs_show(
    ctx: typer.Context,
    run_id: RunIdArgument,
    format: FormatOption = ReportFormat.text,
    events: Annotated[
        int,
        typer.Option("--events", min=0, help="Show this many of its last events (the table only)."),
    ] = 10,
    config: ConfigOption = None,
) -> None:
    """A run: its status and totals, the agents table, and its last events; with
    `-f json`, its results document (what `aoe run --output` writes)."""
    from aoe.state.rows import RecordStatus

    with handle_errors(ctx):
        store = _stored(config, run_id)
        run = store.run(run_id)
        if format is ReportFormat.json:  # the results document (docs/results.md)
            from aoe.observe.results import recorded

            _json(recorded(store, run.run_id))
            return
        agents = store.agents(run.run_id)
        last = store.events(run.run_id, last=events) if events else []
        budget = f" of {_money(run.budget)}" if run.budget is not None else ""
        lines = [
            f"run       {run.run_id}",
            f"workflow  {run.workflow_name} ({run.workflow_path})",
            f"status    {run.status}",
            f"started   {_when(run.created_at)}, {run.sessions} session(s)",
            f"spent     {_money(run.cost)}{budget}, "
            f"{run.input_tokens:,} tokens in, {run.output_tokens:,} out",
        ]
        sys.stdout.write("\n".join(lines) + "\n\n")
        _table(
            ["agent", "state", "answered by", "attempts", "tokens", "cost", "error"],
            [
                [
                    a.agent_id,
                    a.state,
                    f"{a.provider}/{a.model}" if a.model else "",
                    str(a.attempts),
                    f"{a.input_tokens + a.output_tokens:,}",
                    _money(a.cost),
                    (a.error or "")[:80],
                ]
                for a in agents
            ],
        )
        if last:
            sys.stdout.write("\nlast events:\n")
            for event in last:
                agent = f" {event['agent_id']}" if event["agent_id"] else ""
                sys.stdout.write(f"  {_when(event['at'])} {event['type']}{agent}\n")
        if run.status not in (RecordStatus.COMPLETED, RecordStatus.RUNNING):
            sys.stdout.write(f"\nresume it with: aoe resume {run.run_id}\n")


@runs_app.command(
    "events",
    epilog="Examples:\n\naoe runs events RUN_ID --type agent_failed --last 50\n\n"
    "aoe runs events RUN_ID -t AttemptFinished | jq .cost_usd",
)
def runs_events(
    ctx: typer.Context,
    run_id: RunIdArgument,
    type: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            "-t",
            help="Only events of this type (repeatable): agent_finished or AgentFinished, "
            "attempt_finished, ...; also agent_failed, attempt_failed and run_failed.",
        ),
    ] = None,
    last: Annotated[int | None, typer.Option("--last", min=1, help="Only the last N.")] = None,
    config: ConfigOption = None,
) -> None:
    """A run's recorded events, one JSON object per line."""
    with handle_errors(ctx):
        store = _stored(config, run_id)
        run = store.run(run_id)
        from aoe.events import Event

        wanted = [_event_type(t) for t in type or []]
        known = list(dict.fromkeys(cls.__name__ for cls in Event.__subclasses__()))
        for given, (kind, _) in zip(type or [], wanted, strict=True):
            if kind not in known:  # (a typo printed nothing, exit 0)
                snake = [re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() for name in known]
                _one_of("--type", given, [*snake, *_FAILED])
        types = sorted({kind for kind, _ in wanted})
        found = store.events(run.run_id, types=types)
        if wanted:
            found = [e for e in found if any(_matches(e, kind, failed) for kind, failed in wanted)]
        from aoe.observe.results import published

        for event in found[-last:] if last is not None else found:
            sys.stdout.write(json.dumps(published(event), ensure_ascii=False, default=str) + "\n")


# the failures of each kind of event, asked for as agent_failed and the like
_FAILED = {
    "agent_failed": "AgentFinished",
    "attempt_failed": "AttemptFinished",
    "run_failed": "RunFinished",
}
_FAILED_AGENT = {"failed", "rate_limited", "budget_exceeded"}


def _one_of(option: str, given: str, choices: list[str], close_to: list[str] | None = None) -> None:
    """Refuse ``given`` unless it is one of ``choices``: exit 2, naming the
    closest and every one."""
    import difflib

    from aoe.errors import OptionInvalid

    if given in choices:
        return
    near = difflib.get_close_matches(given.lower(), choices, n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    raise OptionInvalid(f"{option} {given!r} is none of {', '.join(choices)}{hint}")


def _event_type(name: str) -> tuple[str, bool]:
    """``agent_finished`` or ``AgentFinished``: the class name either way; and
    whether only its failures are wanted (``agent_failed``)."""
    if name.lower() in _FAILED:
        return _FAILED[name.lower()], True
    if "_" in name or name.islower():
        return "".join(part.capitalize() for part in name.split("_")), False
    return name, False


def _matches(event: dict[str, Any], kind: str, failed: bool) -> bool:
    if event["type"] != kind:
        return False
    if not failed:
        return True
    if kind == "AgentFinished":
        return event.get("state") in _FAILED_AGENT
    if kind == "AttemptFinished":
        return bool(event.get("error"))
    return event.get("status") not in ("completed", "cancelled")


@runs_app.command(
    "results",
    epilog="Examples:\n\naoe runs results RUN_ID -o results.json --junit junit.xml\n\n"
    "aoe runs results RUN_ID | jq .outputs",
)
def runs_results(
    ctx: typer.Context,
    run_id: RunIdArgument,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Write the results JSON here (default: stdout).", metavar="FILE"
        ),
    ] = None,
    junit: Annotated[
        str | None,
        typer.Option("--junit", help="Also write JUnit XML here.", metavar="FILE"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """The run's results document (what `aoe run --output` writes) and JUnit XML,
    rebuilt from its record: for a run whose files were not written, or one
    still running."""
    with handle_errors(ctx):
        from aoe.observe.results import junit as junit_of
        from aoe.observe.results import recorded

        store = _stored(config, run_id)
        document = recorded(store, store.run(run_id).run_id)
        if junit is not None:
            write_output(junit_of(document), junit)
        if output is not None or junit is None:
            write_output(json.dumps(document, indent=2, ensure_ascii=False) + "\n", output)


@commands.command(
    epilog="Examples:\n\naoe report RUN_ID -o report.html\n\naoe run wf.yaml --report report.html"
)
def report(
    ctx: typer.Context,
    run_id: RunIdArgument,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Write it here ('-': stdout; default: aoe-report-RUN_ID.html here).",
            metavar="FILE",
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Write a run's HTML report: one self-contained file to open in a browser or
    attach to a pipeline. Its graph coloured by each agent's state with the
    critical path marked, a timeline of every attempt, costs per agent and per
    model against the budget, every prompt, output and error, its inputs and
    settings. A run in progress is reported as it stands."""
    with handle_errors(ctx):
        from aoe.observe.report import report_html

        store = _stored(config, run_id)
        found = store.run(run_id).run_id
        path = output if output is not None else f"aoe-report-{found}.html"
        write_output(report_html(store, found), path)
        if path != "-":
            typer.echo(f"aoe: the report of run {found} is in {path}", err=True)


@runs_app.command("export", epilog="Example:\n\naoe runs export RUN_ID -o run.json")
def runs_export(
    ctx: typer.Context,
    run_id: RunIdArgument,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Write here (default: stdout).", metavar="FILE"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """A self-contained JSON backup of a run: its workflow, inputs, agents, attempts
    and events. `aoe runs import` restores it, here or on another machine."""
    with handle_errors(ctx):
        from aoe.state.transfer import export_run

        store = _stored(config, run_id)
        write_output(
            json.dumps(export_run(store, run_id), ensure_ascii=False, default=str) + "\n", output
        )


@runs_app.command("import", epilog="Example:\n\naoe runs import run.json && aoe resume RUN_ID")
def runs_import(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="A file made by `aoe runs export`.", metavar="FILE")],
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite a run with the same id.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Restore a run from its export, so it can be shown or resumed here."""
    with handle_errors(ctx):
        from aoe.errors import UserError
        from aoe.format.files import FileRefused, read_limited
        from aoe.state.transfer import import_run

        try:
            document = json.loads(read_limited(file, MAX_EXPORT_BYTES).decode("utf-8"))
        except FileRefused as e:
            raise UserError(f"cannot read {file!r}: {e.message}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(
                f"{file} is not JSON ({e}): give a file made by `aoe runs export`"
            ) from None
        except RecursionError:  # json nests by recursion: a hostile file goes past the stack
            raise UserError(
                f"{file} nests too deeply to be a run export: give a file made by `aoe runs export`"
            ) from None
        except ValueError as e:  # an integer of more than 4,300 digits
            raise UserError(f"{file} cannot be read as a run export ({e})") from None
        if not isinstance(document, dict):
            raise UserError(f"{file} is not a run export (made by `aoe runs export`)")
        store = open_store(read_settings(config))
        run_id = import_run(store, document, replace=replace)
        typer.echo(f"imported run {run_id}", err=True)


@runs_app.command(
    "prune",
    epilog="Examples:\n\naoe runs prune --older-than 30d\n\n"
    "aoe runs prune --older-than 12h --dry-run\n\naoe runs prune --older-than 90d --yes",
)
def runs_prune(
    ctx: typer.Context,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age: 30d, 12h, 90m, 2w.", metavar="AGE")
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would go.")] = False,
    yes: YesOption = False,
    config: ConfigOption = None,
) -> None:
    """Delete runs last active longer ago than AGE (never one still running);
    asks first, unless --yes."""
    with handle_errors(ctx):
        seconds, age = _age(older_than)
        settings = read_settings(config)
        store = existing_store(settings)
        if store is None:
            typer.echo(f"no runs to remove: {no_store(settings)}", err=True)
            return
        doomed = store.prune(seconds, dry_run=True)
        if not dry_run and doomed:
            count = f"{len(doomed)} run{'' if len(doomed) == 1 else 's'}"
            if not _confirmed(
                f"Delete {count} last active over {age} ago, with their records?",
                yes,
                f"{count} last active over {age} ago would be deleted: add --yes to "
                "delete them without asking (scripts, cron), or --dry-run to list them",
            ):
                typer.echo("aoe: nothing deleted", err=True)
                raise typer.Exit(1)
            doomed = store.prune(seconds)
        for run_id in doomed:
            sys.stdout.write(run_id + "\n")
        verb = "would remove" if dry_run else "removed"
        typer.echo(f"{verb} {len(doomed)} run(s) last active over {age} ago", err=True)


@cache_app.command("stats", epilog="Example:\n\naoe cache stats -f json")
def cache_stats(
    ctx: typer.Context, format: FormatOption = ReportFormat.text, config: ConfigOption = None
) -> None:
    """Entries, size and hits of the response cache, by model."""
    with handle_errors(ctx):
        settings = read_settings(config)
        store = existing_store(settings)
        if store is None:
            from aoe.state.rows import CacheStats
            from aoe.state.schema import store_path

            stats = CacheStats(str(store_path(settings)), 0, 0, 0, None, None, [])
        else:
            stats = store.cache_stats()
        if format is ReportFormat.json:
            _json(stats.to_dict())
            return
        sys.stdout.write(
            f"cache     {stats.path}\n"
            f"entries   {stats.entries:,} ({stats.bytes:,} bytes)\n"
            f"hits      {stats.hits:,}\n"
        )
        if stats.models:
            sys.stdout.write("\n")
            _table(
                ["provider", "model", "entries", "hits"],
                [[m.provider, m.model, str(m.entries), str(m.hits)] for m in stats.models],
            )


@cache_app.command(
    "clear", epilog="Examples:\n\naoe cache clear\n\naoe cache clear --older-than 7d --yes"
)
def cache_clear(
    ctx: typer.Context,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than", help="Only entries unused for this long: 7d, 12h.", metavar="AGE"
        ),
    ] = None,
    yes: YesOption = False,
    config: ConfigOption = None,
) -> None:
    """Empty the response cache (or drop its stale entries); asks first, unless
    --yes. Run records stay."""
    with handle_errors(ctx):
        seconds, age = _age(older_than) if older_than is not None else (None, "")
        settings = read_settings(config)
        store = existing_store(settings)
        if store is None:
            typer.echo(f"removed 0 cache entries: {no_store(settings)}", err=True)
            return
        which = f"the cached answers unused for {age}" if age else "every cached answer"
        if not _confirmed(
            f"Delete {which}?",
            yes,
            f"{which} would be deleted: add --yes to delete without asking (scripts, cron)",
        ):
            typer.echo("aoe: nothing deleted", err=True)
            raise typer.Exit(1)
        removed = store.cache_clear(seconds)
        typer.echo(f"removed {removed} cache entr{'y' if removed == 1 else 'ies'}", err=True)
