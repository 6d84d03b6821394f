"""What a YAML syntax error says to the person who wrote the file.

libyaml's messages name the construct it was parsing ("while parsing a block
mapping ... expected <block end>"); these add the likely mistake and its fix
(a value with ': ' to quote, indentation that does not line up, a tab), and
point at the character a reader error refused, counted in characters rather
than libyaml's bytes.
"""

from __future__ import annotations

import yaml

from aoe.types import Diagnostic, Severity

_SYNTAX_HINTS = (
    (
        "mapping values are not allowed",
        "a value that contains ': ' must be quoted, or the indentation is off",
    ),
    (
        "found undefined alias",
        "define the anchor (&name) before the alias (*name) that uses it",
    ),
    (
        "expected <block end>, but found",
        "check the indentation: items of one mapping or list must line up",
    ),
    ("did not find expected key", "check the indentation: keys of one mapping must line up"),
    ("did not find expected '-'", "check the indentation: items of one list must line up"),
    ("expected ',' or ']'", "close the [ ... ] list, or separate its items with commas"),
    ("expected ',' or '}'", "close the { ... } mapping, or separate its entries with commas"),
    ("found unexpected end of stream", "a quote or bracket is not closed"),
    ("exceeded maximum nesting depth", "brackets nest too deeply; flatten the value"),
)


def reader_diagnostic(file: str, e: yaml.YAMLError, text: str) -> Diagnostic:
    """A character YAML refuses (a NUL, a control character), at its line and column."""
    position = getattr(e, "position", None)
    line = column = 1
    if isinstance(position, int):  # libyaml counts UTF-8 bytes
        raw = text.encode("utf-8", "surrogatepass")[:position]
        line = raw.count(b"\n") + 1
        column = len(raw[raw.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
    character = getattr(e, "character", None)
    what = f"the character U+{character:04X}" if isinstance(character, int) else "a character"
    reason = getattr(e, "reason", None) or "it is not allowed in YAML"
    return Diagnostic(
        file,
        line,
        column,
        Severity.ERROR,
        "yaml-syntax",
        f"invalid YAML: {what} is not allowed here ({reason}); remove it",
    )


# constructs opened by a delimiter: a missing close is found where YAML gave up,
# often the end of the file; the mistake is where the construct begins
_OPENED = ("quoted scalar", "flow mapping", "flow sequence")


def syntax_diagnostic(file: str, e: yaml.MarkedYAMLError, text: str) -> Diagnostic:
    mark = e.problem_mark or e.context_mark
    opened = (
        e.context_mark is not None
        and e.problem_mark is not None
        and e.context_mark.line < e.problem_mark.line
        and any(kind in (e.context or "") for kind in _OPENED)
    )
    if opened:  # where it begins, and where YAML noticed (below)
        mark = e.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    parts = [p for p in (e.context, e.problem) if p]
    message = "invalid YAML: " + (", ".join(parts) if parts else "syntax error")
    lines = text.splitlines()
    at = lines[line - 1][column - 1 : column] if 0 < line <= len(lines) else ""
    if at == "\t":
        message += "; YAML does not allow tabs for indentation, use spaces"
    else:
        for needle, hint in _SYNTAX_HINTS:
            if needle in message:
                message += f"; {hint}"
                break
    if opened:
        assert e.problem_mark is not None
        message += f" (it starts here; YAML noticed at line {e.problem_mark.line + 1})"
    elif (
        e.context_mark is not None
        and e.problem_mark is not None
        and (e.context_mark.line != e.problem_mark.line)
    ):
        message += f" (the construct starts at line {e.context_mark.line + 1})"
    return Diagnostic(file, line, column, Severity.ERROR, "yaml-syntax", message)
