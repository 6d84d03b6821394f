"""The command line: Typer commands and the Rich live view. The only modules
that import typer and rich."""
