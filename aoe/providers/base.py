"""What every provider speaks: a :class:`Request` in, a :class:`Response` out.

A provider turns one request into one call to a model and nothing more: no
retries (the engine's policy decides), no prompt rendering, no output
checking. Its SDK's errors are translated into :mod:`aoe.errors` where they
cross this boundary, so the engine never sees a vendor exception.
"""

from __future__ import annotations

import datetime
import email.utils
import re
import time
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, Protocol

from aoe.errors import ProviderError, ProviderUnavailable, RateLimited, RequestRejected

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


class Response(NamedTuple):
    """A model's answer: its text, the tokens it was billed, which model answered."""

    text: str
    usage: Usage
    model: str
    finish_reason: str | None = None
    headers: Mapping[str, str] = _EMPTY


class Provider(Protocol):
    """A model API. ``complete`` makes exactly one call."""

    name: str

    async def complete(self, request: Request) -> Response: ...

    async def aclose(self) -> None: ...


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the provider asks to wait: ``retry-after-ms``, else ``retry-after``
    (seconds or an HTTP date)."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    milliseconds = lowered.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(float(milliseconds) / 1000.0, 0.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:  # an HTTP date
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # neither: ignore it rather than guess
    if parsed.tzinfo is None:  # "-0000": UTC by RFC 5322
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return max(parsed.timestamp() - time.time(), 0.0)


_KEYS = re.compile(r"(sk-[A-Za-z0-9_\-*]{3})[A-Za-z0-9_\-*]{5,}")
_URL_PASSWORD = re.compile(r"(//[^@/:\s]*):[^@/\s]*@")


def scrub(message: str, secrets: tuple[str, ...] = ()) -> str:
    """A provider's message without API keys: the key itself, anything shaped
    like one (the vendors echo part of a wrong key back), and the password of a
    URL (``https://user:password@proxy``)."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    message = _URL_PASSWORD.sub(r"\1:***@", message)  # a proxy's credentials
    return _KEYS.sub(r"\1***", message)


def error_for_status(
    provider: str,
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> ProviderError:
    """The aoe error for an HTTP status, as engine.md sorts them."""
    wait = retry_after(headers)
    text = f"{provider} answered HTTP {status}: {message}"
    if status == 429:
        return RateLimited(text, provider=provider, status=status, retry_after=wait)
    if status in (408, 409) or status >= 500:
        return ProviderUnavailable(text, provider=provider, status=status, retry_after=wait)
    return RequestRejected(text, provider=provider, status=status)


def plain(value: Any) -> Any:
    """Read-only mappings and tuples (as the workflow keeps them) as JSON's dicts and lists."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
