"""Anthropic, through the official async SDK, the Anthropic way.

The system prompt goes in ``system``; JSON with a schema is asked for with
structured outputs (``output_config.format``); the SDK's retries are off.
Parameters the SDK does not type (``temperature``, ``top_p`` and anything under
``params``) travel in the request body unchanged. Anthropic has no ``seed``.

Replies are streamed as ``stream`` says (auto: from any server but
api.anthropic.com, see :func:`~aoe.providers.base.streams`): the usage comes
from the ``message_start`` and ``message_delta`` events, and a server that goes
on past ``max_tokens`` (a proxy in front of one that ignores it) is cut off there.

A JSON Schema goes as structured outputs unless the provider says
``structured_output: none`` or ``json_object``, when it is written into the
prompt (``json_object``, for a proxy in front of an OpenAI-compatible server,
also sends OpenAI's JSON mode along: see :func:`_arguments`); undeclared, a
server that refuses it (a proxy in front of one that cannot) is asked once more
with it in the prompt, and, answered, the provider says so once and keeps to that.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import anthropic
from anthropic.types import Message

from aoe.errors import ProviderError, ProviderUnavailable
from aoe.providers.base import (
    Progress,
    Reading,
    SdkErrors,
    any_json,
    ask_for,
    count,
    first_line,
    fitted,
    refuses_schema,
    sdk_error,
    stream_error,
    streams,
)
from aoe.types import Request, Response, Usage, plain

log = logging.getLogger("aoe.providers")


class AnthropicProvider:
    def __init__(
        self,
        name: str,
        *,
        api_key: str | None,
        base_url: str | None,
        stream: bool | None = None,
        models: Mapping[str, str] | None = None,
        structured_output: Literal["json_schema", "json_object", "none"] | None = None,
    ) -> None:
        self.name = name
        self._secrets = (api_key,) if api_key else ()
        self._base_url = base_url
        self.stream = stream  # None: auto (see streams)
        self.keeps_limits = base_url is None or urlsplit(base_url).hostname == "api.anthropic.com"
        self.models = dict(models or {})  # the workflow's model name -> the server's
        # the schema as structured outputs, or in the prompt (no JSON mode here)
        self.schema_in_prompt = structured_output in ("json_object", "none")
        # OpenAI's JSON mode sent along, for a proxy that passes it on (see _arguments)
        self.json_mode = structured_output == "json_object"
        self._declared = structured_output is not None
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key or "no-key", base_url=base_url, max_retries=0
        )

    async def complete(
        self, request: Request, progress: Progress | None = None, *, live: bool = False
    ) -> Response:
        structured = request.output_format == "json" and request.json_schema is not None
        in_prompt = self.schema_in_prompt
        stream = streams(self.stream, self.keeps_limits, request, live)
        try:
            return await self._complete(request, structured and in_prompt, stream, progress)
        except ProviderError as e:
            if not structured or in_prompt or self._declared or not refuses_schema(e):
                raise
            refusal = e
        response = await self._complete(request, True, stream, progress)
        if not self.schema_in_prompt:  # (said once, whoever gets here first)
            self.schema_in_prompt = True
            log.warning(
                "%s does not take a JSON Schema as structured outputs (%s); writing it "
                "into the prompt instead, and checking each reply against it (set "
                "structured_output for the provider to say so)",
                self.name,
                first_line(refusal.message),
            )
        return response

    async def _complete(
        self, request: Request, in_prompt: bool, stream: bool, progress: Progress | None
    ) -> Response:
        arguments = _arguments(request, in_prompt, self.json_mode)
        arguments["model"] = self.models.get(request.model, request.model)
        if stream:
            return await self._streamed(request, arguments, progress)
        message, headers, status = await self._call(arguments)
        return self._response(request, message, headers, status)

    async def _streamed(
        self, request: Request, arguments: dict[str, Any], progress: Progress | None
    ) -> Response:
        """The reply read as it streams, until ``message_stop`` or a piece past
        ``max_tokens``; usage from its events, else counted."""
        arguments["stream"] = True
        reading = Reading(request.max_tokens, progress)
        told = _Told(request.model)
        where = self._base_url or "the Anthropic API"
        try:
            raw = await self._client.messages.with_raw_response.create(**arguments)
            headers = dict(raw.headers)
            stream = await raw.parse(to=_Events)  # the SDK's reading, events as dicts
        except anthropic.AnthropicError as e:
            raise sdk_error(
                e, _ERRORS, provider=self.name, where=where, secrets=self._secrets
            ) from None
        try:
            async for event in stream:
                if not isinstance(event, dict):
                    raise TypeError(f"an event is {type(event).__name__}, not an object")
                told.read(event, reading)
                if reading.cut:
                    break
        except anthropic.AnthropicError as e:
            raise stream_error(
                e,
                _ERRORS,
                provider=self.name,
                where=where,
                pieces=reading.pieces,
                secrets=self._secrets,
            ) from None
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
            raise ProviderUnavailable(
                f"{self.name}: the stream is not of message events ({type(e).__name__}: {e})",
                provider=self.name,  # (no status: after a 200, what it made may be billed)
            ) from None
        finally:
            await stream.close()
        if reading.cut:
            return Response(
                reading.text,
                reading.usage(request),
                told.model,
                "max_tokens",
                headers,
                True,
                reading.pieces,
            )
        if told.stop_reason is None:  # the stream stopped short: the server failed mid-way
            raise ProviderUnavailable(
                f"{self.name}: the reply's stream ended before the reply did (no stop "
                f"reason, {reading.pieces:,} pieces read); the server failed while answering",
                provider=self.name,  # (no status: what it had billed is not known)
            )
        usage = told.usage()
        return Response(
            reading.text,
            usage or reading.usage(request),
            told.model,
            told.stop_reason,
            headers,
            usage is None,
            reading.pieces,
        )

    async def _call(self, arguments: dict[str, Any]) -> tuple[Message, dict[str, str], int]:
        """The one call, its SDK errors turned into aoe's."""
        try:
            raw = await self._client.messages.with_raw_response.create(**arguments)
            message = await raw.parse()
        except anthropic.AnthropicError as e:
            where = self._base_url or "the Anthropic API"
            raise sdk_error(
                e, _ERRORS, provider=self.name, where=where, secrets=self._secrets
            ) from None
        return message, dict(raw.headers), raw.status_code

    def _response(
        self, request: Request, message: Message, headers: dict[str, str], status: int
    ) -> Response:
        """The reply's text blocks and its usage, every input token billed counted
        (cache writes and reads too)."""
        try:
            text = "".join(
                getattr(block, "text", "") for block in message.content if block.type == "text"
            )
            usage = message.usage
            billed_input = (
                usage.input_tokens
                + (usage.cache_creation_input_tokens or 0)
                + (usage.cache_read_input_tokens or 0)
            )
            return Response(
                text=text,
                usage=Usage(billed_input, usage.output_tokens),
                model=message.model or request.model,
                finish_reason=message.stop_reason,
                headers=headers,
            )
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
            raise ProviderUnavailable(
                f"{self.name}: the reply is not a message ({type(e).__name__}: {e})",
                provider=self.name,
                status=status,
            ) from None

    async def aclose(self) -> None:
        await self._client.close()


class _Told:
    """What a message stream's events said besides its text: the model, the
    stop reason, and the usage (input at ``message_start``, output at the last
    ``message_delta``)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.stop_reason: str | None = None
        self.input: int | None = None
        self.output: int | None = None

    def read(self, event: dict[str, Any], reading: Reading) -> None:
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                if isinstance(text, str) and text:
                    reading.add(text)
        elif kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                model = message.get("model")
                self.model = model if isinstance(model, str) and model else self.model
                self._input(message.get("usage"))
        elif kind == "message_delta":
            delta = event.get("delta")
            stop = delta.get("stop_reason") if isinstance(delta, dict) else None
            self.stop_reason = stop if isinstance(stop, str) else self.stop_reason
            counted = event.get("usage")
            if isinstance(counted, dict) and count(counted.get("output_tokens")):
                self.output = counted["output_tokens"]
            self._input(counted)  # (a proxy's count comes here, its start's being 0)

    def _input(self, usage: object) -> None:
        """Every input token billed (cache writes and reads too); a count of 0 is
        none (a proxy's ``message_start`` says 0: a prompt is never empty)."""
        if not isinstance(usage, dict):
            return
        counts = [usage.get(n) for n in ("input_tokens", *_CACHED)]
        if counts[0] and all(c is None or count(c) for c in counts):
            self.input = sum(c for c in counts if c is not None)

    def usage(self) -> Usage | None:
        if self.input is None or self.output is None:
            return None
        return Usage(self.input, self.output)


_Events = anthropic.AsyncStream[object]
"""A stream read by the SDK (its server-sent events, pings and errors), each
event left as the JSON object it came as: the SDK's typed events cost as much
to build as the rest of a call, and a reply is an event a token."""
_CACHED = ("cache_creation_input_tokens", "cache_read_input_tokens")


_ERRORS = SdkErrors(
    status=anthropic.APIStatusError,
    timeout=anthropic.APITimeoutError,
    connection=anthropic.APIConnectionError,
)


def _arguments(
    request: Request, schema_in_prompt: bool = False, json_mode: bool = False
) -> dict[str, Any]:
    """The SDK's arguments for ``request`` (its schema written into the prompt when
    ``schema_in_prompt``); what the SDK does not type goes in the body.

    ``json_mode`` (``structured_output: json_object``, which Anthropic's own API
    does not have): a JSON reply is asked for as OpenAI's JSON mode too, its
    ``response_format`` in the body, the schema as llama.cpp's server reads it
    (with an end, :func:`fitted`; any JSON object without one). That is for a
    proxy speaking Anthropic's API in front of an OpenAI-compatible server: the
    LiteLLM proxy passes the fields it does not translate on as they are."""
    messages = [
        {"role": m.role, "content": m.content} for m in request.messages if m.role != "system"
    ]
    if schema_in_prompt:
        ask_for(messages, plain(request.json_schema))
    arguments: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": messages,
    }
    if request.system:
        arguments["system"] = request.system
    if request.stop:
        arguments["stop_sequences"] = list(request.stop)
    if request.output_format == "json" and request.json_schema is not None and not schema_in_prompt:
        arguments["output_config"] = {
            "format": {"type": "json_schema", "schema": plain(request.json_schema)}
        }
    body = plain(request.params) if request.params else {}
    if json_mode and request.output_format == "json" and "response_format" not in body:
        schema = plain(request.json_schema) if request.json_schema is not None else None
        sent = (
            any_json(request.max_tokens) if schema is None else fitted(schema, request.max_tokens)
        )
        body["response_format"] = {"type": "json_object", "schema": sent}
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if body:
        arguments["extra_body"] = body
    if request.timeout is not None:
        # the engine's own timeout is the one that counts; given, it also keeps the
        # SDK from refusing large max_tokens without streaming
        arguments["timeout"] = request.timeout + 5.0
    return arguments
