"""What the command modules share: the error handling, settings, the run store,
output files, and the options several commands take.

Every command runs inside :func:`handle_errors`, which turns aoe's errors into
messages and exit codes: a user error prints what is wrong, where and how to
fix it, and exits 2; nothing prints a traceback unless ``--debug`` (or
``LOG_LEVEL=DEBUG``) asks. The global options travel in Typer's context
(``ctx.obj``, a :class:`GlobalOptions`), not in a module global, so two
invocations in one process (the tests run the CLI in-process) never share them.
Everything heavier than typer is imported inside the function that needs it,
so ``aoe --help`` and ``aoe validate`` start fast.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from aoe.config.settings import Settings
    from aoe.errors import AoeError
    from aoe.format.workflow import Workflow
    from aoe.state.store import Store


@dataclass(frozen=True)
class GlobalOptions:
    """The options given before the command (``aoe --debug run ...``), which the
    app's callback keeps in ``ctx.obj`` for every command under it."""

    debug: bool = False
    """Show the traceback behind an error."""


def global_options(ctx: typer.Context) -> GlobalOptions:
    """The global options of this invocation (the defaults when a command runs
    without the app's callback)."""
    return ctx.find_object(GlobalOptions) or GlobalOptions()


class ReportFormat(StrEnum):
    """``--format``: text for people, JSON for scripts."""

    text = "text"
    json = "json"


class LogFormat(StrEnum):
    """``--log-format``: progress as text lines or JSON lines."""

    text = "text"
    json = "json"


RunIdArgument = Annotated[str, typer.Argument(help="The run (a unique prefix is enough).")]
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


@contextmanager
def handle_errors(ctx: typer.Context) -> Iterator[None]:
    """Turn aoe's errors into messages and exit codes; a bug into a short report.

    Each command's body runs inside it: ``with handle_errors(ctx): ...``; the
    tracebacks are shown when the global options (``ctx``) ask for them."""
    from aoe.errors import AoeError, Signal
    from aoe.format.graph import GraphError

    debug = global_options(ctx).debug
    try:
        yield
    except (Signal, GraphError) as error:  # in the tree, but never meant for a user
        _internal(error, debug)
    except AoeError as error:
        _fail(error, debug)
    except KeyboardInterrupt:
        typer.echo("aoe: interrupted", err=True)
        raise typer.Exit(130) from None
    except BrokenPipeError:
        _pipe_closed()
    except (typer.Exit, typer.Abort):
        raise
    except Exception as error:
        _internal(error, debug)


PIPE_CLOSED = 141
"""The exit code when the reader of aoe's output went away (``aoe runs list |
head -1``): 128 + SIGPIPE, as a shell reports a tool that a closed pipe ended."""


def _pipe_closed() -> NoReturn:
    """The reader of the output closed it: nothing more to say, to anyone. What
    is left in the buffers goes nowhere, so that leaving does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # (a test's stream has no descriptor)
            os.dup2(devnull, stream.fileno())
    raise typer.Exit(PIPE_CLOSED) from None


def _internal(error: Exception, debug: bool) -> NoReturn:
    """An error no user should meet: a bug, said as one."""
    if debug:
        traceback.print_exc()
    typer.echo(
        f"aoe: internal error: {type(error).__name__}: {error}\n"
        "This is a bug in aoe; rerun with --debug for the traceback and report it.",
        err=True,
    )
    raise typer.Exit(1) from None


def _fail(error: AoeError, debug: bool) -> NoReturn:
    """A user's mistake or a failed run: what is wrong (each diagnostic on its
    own line), and the error's exit code."""
    from aoe.cli.ui.text import format_diagnostic, use_colour
    from aoe.errors import DiagnosticsError

    if debug:
        traceback.print_exception(error)
    colour = use_colour(sys.stderr)
    if isinstance(error, DiagnosticsError):
        for diagnostic in error.diagnostics:
            typer.echo(format_diagnostic(diagnostic, colour), err=True)
    else:
        typer.echo(f"aoe: error: {error}", err=True)
    raise typer.Exit(error.exit_code) from None


def read_settings(config: str | None) -> Settings:
    """The engine settings from ``--config`` (else $AOE_CONFIG), the environment
    and the defaults; imported here, so that ``aoe --help`` never loads them."""
    from aoe.config.settings import load_settings

    return load_settings(config)


# Options that several commands share (`aoe run`, `resume`, `plan`, `submit`, `serve`, `worker`).
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
CacheOption = Annotated[
    bool | None,
    typer.Option(
        "--cache/--no-cache",
        help="Answer from the response cache where an identical call was answered "
        "before (--cache), or call the model every time (--no-cache, over everything); "
        "default: as the workflow and the engine config say (off).",
        show_default=False,
    ),
]
LogFormatOption = Annotated[
    LogFormat | None,
    typer.Option("--log-format", help="Progress as text lines or JSON lines (stderr)."),
]


def given_inputs(workflow: Workflow, assignments: list[str] | None, inputs_file: str | None) -> Any:
    """The inputs given: from --inputs-file, then each -i NAME=VALUE over them."""
    from aoe.format.inputs import from_assignments, from_file

    given = from_file(inputs_file) if inputs_file else {}
    given.update(from_assignments(assignments or [], workflow.inputs))
    return given


def open_store(settings: Settings) -> Store:
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


def existing_store(settings: Settings) -> Store | None:
    """The run store, if there is one: the commands that only read it make
    none (a cron job's `aoe runs list` in some folder left a `.aoe/` there)."""
    from aoe.state.schema import store_path

    return open_store(settings) if store_path(settings).exists() else None


def no_store(settings: Settings) -> str:
    """Where the store would be, and what decides it: for a command that found none."""
    from aoe.state.schema import store_path

    return (
        f"there is no run store at {store_path(settings).absolute()} (the first `aoe run` in this "
        "folder makes one; AOE_STATE_DIR or engine.state_dir names another)"
    )


def write_output(text: str, output: str | None) -> None:
    """``text`` to stdout (no ``--output``, or ``-``) or to the file named; a file
    that cannot be written is the user's to fix (exit 2)."""
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
