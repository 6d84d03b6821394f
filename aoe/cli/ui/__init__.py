"""What aoe shows people, for terminals and pipes: one module per kind of view.

- :mod:`~aoe.cli.ui.text`: colour, diagnostics, counts, money and durations;
- :mod:`~aoe.cli.ui.graph`: the dependency graph as a tree;
- :mod:`~aoe.cli.ui.tables`: the config and a run's plan;
- :mod:`~aoe.cli.ui.progress`: a run's events as plain lines or JSON lines;
- :mod:`~aoe.cli.ui.live`: the live table of a run on a terminal.

Rich is imported only by the functions that draw with it, so commands that
print plain lines (``aoe validate``) start without it.
"""
