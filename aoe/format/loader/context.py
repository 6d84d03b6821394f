"""What every pass of the loader reads and adds to: the file, its source map and
lines, the diagnostics, the files it names, and what earlier passes found.

One object rather than arguments passed from pass to pass: a later pass reads
what several earlier ones found (the agents' raw mappings, their models, the
inputs), and each reports at a place in the file through the same
:meth:`Context.error` and :meth:`Context.warn` (it is the
:class:`~aoe.format.loader.Report` the caller's checks are handed).
"""

from __future__ import annotations

import os
from pathlib import Path as FsPath
from typing import Any

from aoe.format.spec import AgentSpec
from aoe.format.workflow import SourceText
from aoe.format.yamlsource import Path, SourceMap
from aoe.types import Diagnostic, Severity

UNKNOWN: Any = object()  # a section whose errors are reported; checks that need it are skipped
# an agent's fields that are templates (prompt, system) or expressions (when, foreach)
TEXT_FIELDS = ("prompt", "system", "when", "foreach")
EXPRESSION_FIELDS = ("when", "foreach")


def folder_of(path: str) -> FsPath:
    """The folder of the workflow file, symlinks resolved where they can be."""
    try:
        return FsPath(path).resolve().parent
    except (OSError, ValueError, RuntimeError):  # a NUL in the name, a symlink loop
        return FsPath(os.path.abspath(path.replace("\x00", ""))).parent


class Context:
    """One file being loaded: set up by :func:`~aoe.format.loader.load_workflow`,
    filled in by the passes in their order."""

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name
        self.folder = folder_of(path)
        self.display_folder = os.path.dirname(name)
        self.diagnostics: list[Diagnostic] = []
        self.source = SourceMap(name)
        self.text = ""
        self._lines: list[str] | None = None
        self.files: dict[str, str] = {}
        self.schema_files: dict[Any, Any] = {}  # the files output schemas refer to, parsed
        # where each agent's merged llm fields were written, for price and provider errors
        self.llm_origins: dict[tuple[str, int], dict[str, Path]] = {}
        # what the checks look at, set as the passes reach them
        self.raw_agents: dict[str, Any] = {}
        self.specs: dict[str, AgentSpec] = {}
        self.inputs: Any = UNKNOWN
        # what the templates read of the inputs, for the unused-input warning
        self.inputs_read: set[str] = set()
        self.inputs_read_dynamically = False

    # -- reporting ---------------------------------------------------------
    def error(self, path: Path, code: str, message: str, *, at_key: bool = False) -> None:
        self.diagnostics.append(self.source.diagnostic(path, code, message, at_key=at_key))

    def warn(self, path: Path, code: str, message: str, *, at_key: bool = False) -> None:
        self.diagnostics.append(
            self.source.diagnostic(path, code, message, at_key=at_key, severity=Severity.WARNING)
        )

    def template_error(
        self,
        source: SourceText,
        path: Path,
        line: int,
        code: str,
        message: str,
        needle: str | None = None,
    ) -> None:
        """Report at a template's line, and at ``needle``'s column when it is on that line."""
        if source.file != self.name:  # a prompt file: point into that file
            lines = source.text.splitlines()
            text = lines[line - 1] if 0 < line <= len(lines) else ""
            found = text.find(needle) if needle else -1
            self.diagnostics.append(
                Diagnostic(
                    source.file, line, found + 1 if found >= 0 else 1, Severity.ERROR, code, message
                )
            )
            return
        if source.exact:
            file_line = source.line + line - 1
            text = self.line(file_line)
            column = source.column if line == 1 else len(text) - len(text.lstrip(" ")) + 1
            found = text.find(needle, column - 1) if needle else -1
        else:  # the scalar's lines were joined: look for the needle in the lines it spans
            file_line, column, found = self._find_joined(source, path, needle)
        if found >= 0:
            column = found + 1
        self.diagnostics.append(
            Diagnostic(self.name, file_line, column, Severity.ERROR, code, message)
        )

    def _find_joined(
        self, source: SourceText, path: Path, needle: str | None
    ) -> tuple[int, int, int]:
        """The line, column and offset of ``needle`` (-1 if not found) in a scalar
        whose lines were joined (folded, quoted or plain over several lines)."""
        if needle is not None:
            for number in self._lines_of(source, path):
                start = source.column - 1 if number == source.line else 0
                found = self.line(number).find(needle, start)
                if found >= 0:
                    return number, source.column, found
        return source.line, source.column, -1

    def _lines_of(self, source: SourceText, path: Path) -> range:
        """The file lines a multi-line folded, quoted or plain scalar spans, as far as
        indentation tells: the lines after its first that are indented deeper than
        its key (at most 500)."""
        indent = self.source.key(path).column - 1
        last = source.line
        while last - source.line < 500:
            following = self.line(last + 1)
            if following.strip() and len(following) - len(following.lstrip(" ")) <= indent:
                break
            if last + 1 > len(self._lines or ()):
                break
            last += 1
        return range(source.line, last + 1)

    # -- the file's text -------------------------------------------------------
    def line(self, number: int) -> str:
        if self._lines is None:
            self._lines = self.text.splitlines()
        return self._lines[number - 1] if 0 < number <= len(self._lines) else ""

    def display_path(self, relative: str) -> str:
        return os.path.join(self.display_folder, relative) if self.display_folder else relative

    def inline_text(self, path: Path, text: str | None) -> SourceText | None:
        """A template or expression written in the workflow file, with where it starts."""
        if text is None:
            return None
        mark = self.source.value(path)
        line = mark.text_line
        column = mark.column
        if mark.style in ("|", ">"):
            source_line = self.line(line)
            column = len(source_line) - len(source_line.lstrip(" ")) + 1
        elif mark.quoted:
            column += 1
        return SourceText(text, self.name, line, column, mark.literal)
