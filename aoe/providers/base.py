"""What every provider speaks: a :class:`Request` in, a :class:`Response` out.

A provider turns one request into one call to a model and nothing more: no
retries (the engine's policy decides), no prompt rendering, no output
checking. Its SDK's errors are translated into :mod:`aoe.errors` where they
cross this boundary, so the engine never sees a vendor exception.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard

from aoe.errors import (
    ProviderError,
    ProviderFault,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
    scrub,
)
from aoe.policy.costs import prompt_tokens_estimate
from aoe.types import Request, Response, Usage

log = logging.getLogger("aoe.providers")

Progress = Callable[[str], None]
"""Told each piece of a streamed reply as it arrives (the engine's attempt
timeout counts from the last one)."""


class Provider(Protocol):
    """A model API. ``complete`` makes exactly one call; a streaming provider
    tells ``progress`` each piece of the reply as it comes. ``live``: someone
    is watching the replies arrive (``aoe run -v``), so stream them if the
    provider can."""

    name: str

    async def complete(
        self, request: Request, progress: Progress | None = None, *, live: bool = False
    ) -> Response: ...

    async def aclose(self) -> None: ...


PLAIN_TOKENS_PER_SECOND = 20
"""The slowest pace a reply is trusted to keep when asked for whole: one that
could take longer than its timeout at this pace (``max_tokens`` over 20 tokens
a second of it) is streamed, so that the timeout counts from its last piece."""


def streams(stream: bool | None, keeps_limits: bool, request: Request, live: bool) -> bool:
    """Whether a call is streamed. ``stream`` as the provider says (None:
    ``auto``): a server not known to keep ``max_tokens`` always (aoe then stops
    reading at the limit); the vendors' own APIs, which keep it, only when the
    reply is watched (``live``) or could outlast the attempt's timeout. Reading
    a stream costs ~30-70 us of CPU a piece (the HTTP client's reads, the
    SDK's events); a whole reply, one read."""
    if stream is not None:
        return stream
    if live or not keeps_limits:
        return True
    timeout = request.timeout
    return timeout is not None and request.max_tokens > timeout * PLAIN_TOKENS_PER_SECOND


class Reading:
    """A streamed reply as it arrives, held to ``max_tokens``: each piece of text
    the server sends counts as a token (servers stream a token a piece; one that
    sends more per piece is held by the usage it reports, see
    :func:`over_max_tokens`). A piece beyond ``max_tokens`` says the server does
    not keep the limit: :meth:`add` refuses it, and the caller stops reading."""

    __slots__ = ("cut", "max_tokens", "parts", "pieces", "progress")

    def __init__(self, max_tokens: int, progress: Progress | None) -> None:
        self.max_tokens = max_tokens
        self.progress = progress
        self.parts: list[str] = []
        self.pieces = 0
        self.cut = False  # aoe stopped reading: the server went past max_tokens

    def add(self, piece: str) -> bool:
        """Keep ``piece``; False (and nothing kept) once ``max_tokens`` pieces came."""
        if self.pieces >= self.max_tokens:
            self.cut = True
            return False
        self.pieces += 1
        self.parts.append(piece)
        if self.progress is not None:
            self.progress(piece)
        return True

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def usage(self, request: Request) -> Usage:
        """aoe's count, where the server gave none: the pieces read, and the
        prompt at four characters a token (as the rate limits count it)."""
        return Usage(prompt_tokens_estimate(request.messages), self.pieces)


# what a server that does not take a JSON Schema answers it: llama.cpp's 500,
# others' 400 or 422 (never a 429 or an outage's 502-504: those are not about
# it), with a message that names what it refused (a plain "internal error" 500
# is an outage, retried as one)
_REFUSED = frozenset({400, 422, 500})
_REFUSAL_WORDS = ("json_schema", "response_format", "output_config", "schema", "structured")


def refuses_schema(error: ProviderError) -> bool:
    """Whether ``error`` is a server refusing the JSON Schema it was sent."""
    message = error.message.lower()
    return error.status in _REFUSED and any(word in message for word in _REFUSAL_WORDS)


def ask_for(messages: list[dict[str, Any]], schema: Any) -> None:
    """The schema written into the last user message, for a server that is not
    told it otherwise."""
    ask = (
        "\n\nAnswer with only a JSON value (no prose, no code fence) that matches "
        f"this JSON Schema:\n{json.dumps(schema, ensure_ascii=False)}"
    )
    for message in reversed(messages):
        if message["role"] == "user":
            message["content"] = f"{message['content']}{ask}"
            return
    messages.append({"role": "user", "content": ask.lstrip()})


def fitted(schema: Any, max_tokens: int) -> Any:
    """A copy of ``schema`` whose strings and lists all have an end, so that a
    reply held to it can close within ``max_tokens``: for a server that turns the
    schema into a grammar (llama.cpp's JSON mode), where a string with no
    ``maxLength`` lets a model write until it is cut off, always invalid JSON.
    Lists without ``maxItems`` get 4 items at most (their ``minItems`` if more);
    strings without ``maxLength`` (nor ``enum``, ``const``) an equal share of two
    characters a token (a margin for the JSON around them), at least 16 and at
    most 500 (their ``minLength`` if more). Only what is sent changes: the reply is checked
    against the schema as written."""
    strings = _strings(schema)
    share = min(_LONGEST, max(16, (max_tokens * 2) // max(strings, 1)))
    return _fit(schema, share)


def any_json(max_tokens: int) -> dict[str, Any]:
    """A JSON Schema for a JSON object of any content that has an end: for a JSON
    agent without a schema, sent to a server that turns it into a grammar (in
    plain JSON mode a model may write one string, or one list, until it is cut
    off: always invalid JSON). Three levels of objects and lists, four items a
    list, strings that fit ``max_tokens`` (as :func:`fitted` gives them). Only what
    is sent: the reply is checked as the agent asks, any JSON."""
    share = min(_LONGEST, max(16, (max_tokens * 2) // 16))
    scalars: list[Any] = [
        {"type": "string", "maxLength": share},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
    ]
    value: dict[str, Any] = {"anyOf": scalars}
    for _ in range(2):
        value = {
            "anyOf": [
                *scalars,
                {"type": "array", "items": value, "maxItems": _LIST_ITEMS},
                {"type": "object", "additionalProperties": value},
            ]
        }
    return {"type": "object", "additionalProperties": value}


_LONGEST = 500
"""The longest string bound given: llama.cpp's grammar parser gives up on a
string bound of about a thousand characters, and llama-cpp-python's server then
crashes (measured: 1,000 served, 1,200 a segmentation fault)."""


_LIST_ITEMS = 4


def _strings(schema: Any, weight: int = 1) -> int:
    """The strings a reply may hold at most, lists counted at their bound."""
    if isinstance(schema, list):
        return sum(_strings(part, weight) for part in schema)
    if not isinstance(schema, dict):
        return 0
    open_ended = not any(key in schema for key in ("maxLength", "enum", "const"))
    count = weight if schema.get("type") == "string" and open_ended else 0
    for key, value in schema.items():
        if key == "items":
            items = schema.get("maxItems") or max(schema.get("minItems") or 0, _LIST_ITEMS)
            count += _strings(value, weight * int(items))
        elif key in ("properties", "$defs", "definitions", "patternProperties"):
            if isinstance(value, dict):
                count += sum(_strings(part, weight) for part in value.values())
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            count += _strings(value, weight)
    return count


def _fit(schema: Any, share: int) -> Any:
    if isinstance(schema, list):
        return [_fit(part, share) for part in schema]
    if not isinstance(schema, dict):
        return schema
    fit = {key: _fit(value, share) for key, value in schema.items()}
    if fit.get("type") == "string" and not any(k in fit for k in ("maxLength", "enum", "const")):
        fit["maxLength"] = max(share, int(fit.get("minLength") or 0))
    if fit.get("type") == "array" and "maxItems" not in fit:
        fit["maxItems"] = max(_LIST_ITEMS, int(fit.get("minItems") or 0))
    return fit


def count(value: object) -> TypeGuard[int]:
    """Whether a server's ``value`` is a count of tokens (an int, not a bool, >= 0)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def first_line(message: str, limit: int = 160) -> str:
    """A server's message as one line of a log (some send a traceback)."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def over_max_tokens(provider: str, response: Response, max_tokens: int) -> ProviderFault | None:
    """The fault of a reply whose reported usage passes ``max_tokens``: the
    server ignored the limit sent (billed as reported), or None.

    A streamed reply that aoe read to its end within ``max_tokens`` pieces, its
    text no longer than such a reply's (:data:`CHARACTERS_A_TOKEN`), kept the
    limit: what passes it is the server's count, not the reply (measured: the
    LiteLLM proxy, given no usage by the server behind it, counts the text with
    a tokenizer of its own, 1,373 tokens for a reply of 800). That reply stands,
    billed as reported, and the provider is said to miscount, once."""
    used = response.usage.output_tokens
    if response.estimated or used <= max_tokens:
        return None
    pieces = response.pieces
    if (
        pieces is not None
        and pieces <= max_tokens
        and len(response.text) <= CHARACTERS_A_TOKEN * max_tokens
    ):
        if provider not in _MISCOUNTING:
            _MISCOUNTING.add(provider)
            log.warning(
                "%s reported %s output tokens for a reply it streamed in %s pieces, within "
                "max_tokens %s: billed as reported, the reply kept; its count is not the "
                "model's (a proxy counting with a tokenizer of its own?)",
                provider,
                f"{used:,}",
                f"{pieces:,}",
                f"{max_tokens:,}",
            )
        return None
    return ProviderFault(
        f"{provider} reported {used:,} output tokens for a reply limited to "
        f"max_tokens {max_tokens:,}: the server ignores the limit it was sent. Set the "
        "provider's token_parameter (max_tokens or max_completion_tokens) to the one "
        "it reads, or keep stream on (the default) so aoe stops reading at the limit",
        provider=provider,
    )


CHARACTERS_A_TOKEN = 8
"""The most characters a token of a reply is taken to hold, on average (English
takes about four; code and long words more): a streamed reply longer than this
many a token of ``max_tokens`` came in pieces of several tokens from a server
that did not keep the limit."""
_MISCOUNTING: set[str] = set()  # the providers said to miscount, in this process


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


class _Headers(Protocol):
    @property
    def headers(self) -> Mapping[str, str]: ...


class StatusError(Protocol):
    """What an SDK's ``APIStatusError`` carries: the OpenAI and Anthropic SDKs are
    generated from one template (Stainless) and their errors have the same shape."""

    @property
    def status_code(self) -> int: ...

    @property
    def body(self) -> object: ...

    @property
    def message(self) -> str: ...

    @property
    def response(self) -> _Headers: ...


@dataclass(frozen=True)
class SdkErrors:
    """A vendor SDK's exception classes, by what they mean to aoe. They are handed
    in, not imported here, so that the SDKs stay out of this module (and load only
    with the provider that needs them)."""

    status: type[StatusError]
    """The server answered with an error status."""
    timeout: type[Exception]
    """The request timed out (a kind of ``connection`` error in both SDKs: checked first)."""
    connection: type[Exception]
    """The server could not be reached."""


def sdk_error(
    error: Exception,
    errors: SdkErrors,
    *,
    provider: str,
    where: str,
    secrets: tuple[str, ...],
) -> ProviderError:
    """The aoe error for an SDK's error, its message without the API key. ``where``
    names the server in "cannot reach ..."; any other SDK error is a reply the SDK
    could not read."""
    if isinstance(error, errors.status):
        message = scrub(_status_message(error), secrets)
        return error_for_status(provider, error.status_code, message, error.response.headers)
    if isinstance(error, errors.timeout):
        return ProviderUnavailable(f"{provider}: the request timed out", provider=provider)
    if isinstance(error, errors.connection):
        return ProviderUnavailable(
            scrub(f"{provider}: cannot reach {where}: {error}", secrets),
            provider=provider,
            sent=not _never_connected(error),
        )
    return ProviderError(f"{provider}: {scrub(str(error), secrets)}", provider=provider)


def stream_error(
    error: Exception,
    errors: SdkErrors,
    *,
    provider: str,
    where: str,
    pieces: int,
    secrets: tuple[str, ...],
) -> ProviderError:
    """The aoe error for an SDK's error raised while a reply streamed in, after the
    server had answered 200: a timeout or a dropped connection as any other; an
    error the server sent in the stream (Anthropic's ``event: error``, say
    ``overloaded_error``; a ``{"error": …}`` chunk) is its failure while answering,
    retryable, and, as what it had generated is not known, charged its
    reservation (no status)."""
    if isinstance(error, (errors.timeout, errors.connection)):
        return sdk_error(error, errors, provider=provider, where=where, secrets=secrets)
    said = _status_message(error) if isinstance(error, errors.status) else str(error)
    body = getattr(error, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    kind = inner.get("type") if isinstance(inner, dict) else None
    if isinstance(inner, dict) and isinstance(inner.get("message"), str):
        said = inner["message"]
    named = f" ({kind})" if isinstance(kind, str) and kind else ""
    return ProviderUnavailable(
        scrub(
            f"{provider}: the server failed while answering, after {pieces:,} pieces of the "
            f"reply: it sent an error{named}: {first_line(said)}",
            secrets,
        ),
        provider=provider,
    )


def _never_connected(error: BaseException) -> bool:
    """Whether the SDK's connection error is its HTTP library's failure to connect
    (refused, no route, a connect timeout): raised before a byte of the request
    was sent, so nothing can have been billed. Both SDKs wrap that library's
    ``ConnectError``/``ConnectTimeout`` (httpx's, or its fork's), told here by
    name so that no HTTP library is imported for it."""
    cause: BaseException | None = error.__cause__ or error.__context__
    while cause is not None:
        if type(cause).__name__ in ("ConnectError", "ConnectTimeout"):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _status_message(error: StatusError) -> str:
    """The server's own message, from ``{"error": {"message": ...}}`` when it sent one."""
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return str(error.message)
