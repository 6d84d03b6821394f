"""The command line: Typer commands and the Rich views, the only modules that
import typer and rich.

One module per command group over :mod:`aoe.cli.common` (error handling,
settings, the run store, output files, shared options): :mod:`~aoe.cli.run`
(run, resume, plan), :mod:`~aoe.cli.check` (validate, graph, schema),
:mod:`~aoe.cli.serve` (serve, status, submit, worker), :mod:`~aoe.cli.config`
and :mod:`~aoe.cli.runs` (runs, cache); :mod:`aoe.cli.app` puts them together
and :mod:`aoe.cli.main` is the console script. What they show is drawn by
:mod:`aoe.cli.ui`.
"""
