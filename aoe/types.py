"""The values every layer shares: a call to a model and its answer, and a located
finding about a file.

These are plain, immutable records with no behaviour beyond arithmetic and
formatting, so that the format, the policies, the providers, the engine and its
subscribers can all speak them without importing one another.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal, NamedTuple

Role = Literal["system", "user", "assistant"]
_EMPTY: Mapping[str, Any] = {}


class Message(NamedTuple):
    role: Role
    content: str


class Request(NamedTuple):
    """One call to a model: the rendered messages and every parameter."""

    provider: str
    model: str
    messages: tuple[Message, ...]
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    params: Mapping[str, Any] = _EMPTY
    output_format: Literal["text", "json"] = "text"
    json_schema: Mapping[str, Any] | None = None
    timeout: float | None = None  # seconds the engine allows the attempt

    @property
    def system(self) -> str | None:
        """The system messages joined, for APIs that take the system prompt apart."""
        parts = [m.content for m in self.messages if m.role == "system"]
        return "\n\n".join(parts) if parts else None


class Usage(NamedTuple):
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: object) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


TRUNCATED = frozenset({"length", "max_tokens"})
"""Finish reasons that say the reply was cut off at ``max_tokens`` (OpenAI's
and Anthropic's words)."""


class Response(NamedTuple):
    """A model's answer: its text, the tokens it was billed, which model answered.

    ``estimated``: the server reported no usage for it (a stream without its
    usage chunk, or one aoe stopped reading at ``max_tokens``), so ``usage`` is
    aoe's count: output tokens as the stream's pieces, input tokens from the
    prompt's length. ``pieces``: how many pieces of a streamed reply aoe read
    (None: it came whole)."""

    text: str
    usage: Usage
    model: str
    finish_reason: str | None = None
    headers: Mapping[str, str] = _EMPTY
    estimated: bool = False
    pieces: int | None = None

    @property
    def truncated(self) -> bool:
        """The reply was cut off at ``max_tokens`` (by the server, or by aoe)."""
        return self.finish_reason in TRUNCATED


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Diagnostic(NamedTuple):
    """One finding about a file, with the fix in its message."""

    file: str
    line: int
    column: int
    severity: Severity
    code: str
    message: str

    def format(self) -> str:
        """The compiler-style one-liner: ``FILE:LINE:COL: error: MESSAGE``.

        Without a column (0) the place is ``FILE:LINE``; without a line, ``FILE``.
        """
        return f"{self.where}: {self.severity}: {self.message}"

    @property
    def where(self) -> str:
        if self.line <= 0:
            return self.file
        if self.column <= 0:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "severity": str(self.severity),
            "code": self.code,
            "message": self.message,
        }

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR


def plain(value: Any) -> Any:
    """Read-only mappings and tuples (as the workflow keeps them) as JSON's dicts and lists."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
