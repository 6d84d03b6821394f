"""OpenAI and OpenAI-compatible servers, through the official async SDK.

One client per provider; the SDK's own retries are off (``max_retries=0``)
so that a failure is retried by aoe's policy only. ``OPENAI_BASE_URL`` (or a
declared provider's ``base_url``) points it at a proxy or a compatible server.
Every SDK error is turned into an :mod:`aoe.errors` error here.

Replies are streamed as the provider's ``stream`` says (auto: from any server
but OpenAI's own API and Azure's, which keep ``max_tokens``; see
:func:`~aoe.providers.base.streams`): the usage comes from the stream's last
chunk (``stream_options.include_usage``), and a server that goes on past
``max_tokens`` is cut off there (see :class:`~aoe.providers.base.Reading`),
whatever limit it reads. ``type: azure`` goes through the SDK's Azure client.

JSON with an object schema is asked for as the provider supports it
(``structured_output``): ``json_schema`` (OpenAI's structured outputs),
``json_object`` (JSON mode, the schema sent along as llama.cpp's server reads
it, and written into the prompt), or ``none`` (the schema in the prompt only);
the engine checks every reply against the schema either way. Undeclared, it is
``json_schema`` until a server refuses it: then the same request goes once more
in JSON mode, and if that is answered the provider says so, once, and stays in
JSON mode for as long as the engine runs. A refusal is an HTTP 400, 422 or 500
whose message names what was refused (``json_schema``, ``response_format``,
``schema``): any other error is the attempt's, retried as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import openai
from openai.types.chat import ChatCompletion

from aoe.config.layers import mask_url
from aoe.config.models import AZURE_API_VERSION
from aoe.errors import ProviderError, ProviderUnavailable, RequestRejected
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

TokenParameter = Literal["max_tokens", "max_completion_tokens"]
StructuredOutput = Literal["json_schema", "json_object", "none"]

log = logging.getLogger("aoe.providers")


def token_parameter_for(base_url: str | None, *, azure: bool = False) -> TokenParameter:
    """The parameter a server reads for the reply's length: OpenAI's own API and
    Azure OpenAI take ``max_completion_tokens`` (their reasoning models require
    it); the OpenAI-compatible servers (vLLM, llama.cpp, Ollama, proxies) read
    ``max_tokens``."""
    keeps = azure or _host(base_url) == "api.openai.com"
    return "max_completion_tokens" if keeps else "max_tokens"


def _host(base_url: str | None) -> str:
    return (urlsplit(base_url).hostname or "") if base_url else "api.openai.com"


@dataclass(frozen=True)
class Azure:
    """Where an Azure OpenAI provider's calls go: the resource's endpoint is the
    provider's ``base_url``; each call goes to the deployment its model is mapped
    to (``models``), else to ``deployment``, else to one named as the model."""

    api_version: str = AZURE_API_VERSION
    deployment: str | None = None


class OpenAIProvider:
    """Chat completions, streamed as ``stream`` says (None: auto). ``token_parameter``
    names the reply's limit as the server reads it (by default as
    :func:`token_parameter_for` its ``base_url``). With ``azure``, through the
    SDK's Azure client (its URLs, ``api-version`` and ``api-key`` header)."""

    def __init__(
        self,
        name: str,
        *,
        api_key: str | None,
        base_url: str | None,
        token_parameter: TokenParameter | None = None,
        stream: bool | None = None,
        structured_output: StructuredOutput | None = None,
        models: Mapping[str, str] | None = None,
        azure: Azure | None = None,
    ) -> None:
        self.name = name
        self._secrets = (api_key,) if api_key else ()
        self._base_url = base_url
        self._azure = azure
        self.token_parameter = token_parameter or token_parameter_for(
            base_url, azure=azure is not None
        )
        self.stream = stream  # None: auto (see streams)
        self.keeps_limits = azure is not None or _host(base_url) == "api.openai.com"
        self.structured_output: StructuredOutput = structured_output or "json_schema"
        self._declared = structured_output is not None
        self.models = dict(models or {})  # the workflow's model name -> the server's
        self._client: openai.AsyncOpenAI
        if azure is None:
            self._client = openai.AsyncOpenAI(
                api_key=api_key or "no-key", base_url=base_url, max_retries=0
            )
        else:  # (every argument given: the SDK would read the process's environment)
            self._client = openai.AsyncAzureOpenAI(
                azure_endpoint=base_url or "",
                api_version=azure.api_version,
                api_key=api_key or "no-key",
                max_retries=0,
            )

    def model_for(self, model: str) -> str:
        """The server's name for the workflow's ``model`` (Azure: its deployment)."""
        mapped = self.models.get(model)
        if mapped is None and self._azure is not None:
            return self._azure.deployment or model
        return mapped or model

    async def complete(
        self, request: Request, progress: Progress | None = None, *, live: bool = False
    ) -> Response:
        form = self.structured_output
        structured = request.output_format == "json" and _object_schema(request.json_schema)
        stream = streams(self.stream, self.keeps_limits, request, live)
        if request.output_format == "json" and form == "json_object":
            # JSON mode holds any JSON reply, with a schema or without one
            return await self._complete(request, form, stream, progress)
        try:
            return await self._complete(request, form if structured else None, stream, progress)
        except ProviderError as e:
            if not structured or form != "json_schema" or self._declared:
                raise
            if not refuses_schema(e):
                raise
            refusal = e
        response = await self._complete(request, "json_object", stream, progress)
        if self.structured_output == "json_schema":  # (said once, whoever gets here first)
            self.structured_output = "json_object"
            log.warning(
                "%s does not take response_format json_schema (%s); asking it for JSON "
                "mode with the schema in the prompt instead, and checking each reply "
                "against the schema (set structured_output for the provider to say so)",
                self.name,
                first_line(refusal.message),
            )
        return response

    async def _complete(
        self,
        request: Request,
        form: StructuredOutput | None,
        stream: bool,
        progress: Progress | None,
    ) -> Response:
        arguments = self._arguments(request, form)
        if stream:
            return await self._streamed(request, arguments, progress)
        completion, headers, status = await self._call(arguments)
        return self._response(request, completion, headers, status)

    def _arguments(self, request: Request, form: StructuredOutput | None) -> dict[str, Any]:
        """The SDK's arguments for ``request``, its JSON asked for as ``form`` says
        (None: as the request is); ``params`` go in the body as they are."""
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        schema = plain(request.json_schema) if form is not None else None
        if form in ("json_object", "none") and schema is not None:
            ask_for(messages, schema)
        arguments: dict[str, Any] = {
            "model": self.model_for(request.model),
            "messages": messages,
            self.token_parameter: request.max_tokens,
        }
        if request.temperature is not None:
            arguments["temperature"] = request.temperature
        if request.top_p is not None:
            arguments["top_p"] = request.top_p
        if request.stop:
            arguments["stop"] = list(request.stop)
        if request.seed is not None:
            arguments["seed"] = request.seed
        if form == "json_schema":
            # structured outputs take an object at the root; any other JSON is asked for in
            # the prompt and checked when it comes back
            arguments["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema},
            }
        elif form == "json_object" and schema is None:  # JSON, of any shape, with an end
            arguments["response_format"] = {
                "type": "json_object",
                "schema": any_json(request.max_tokens),
            }
        elif form == "json_object":  # llama.cpp's server holds the reply to "schema"
            arguments["response_format"] = {
                "type": "json_object",
                "schema": fitted(schema, request.max_tokens),  # (a grammar: it must end)
            }
        if request.params:
            arguments["extra_body"] = plain(request.params)
        if request.timeout is not None:  # the engine's own timeout is the one that counts
            arguments["timeout"] = request.timeout + 5.0
        return arguments

    async def _call(self, arguments: dict[str, Any]) -> tuple[ChatCompletion, dict[str, str], int]:
        """The one call, its SDK errors turned into aoe's (an ``OpenAIError`` that is
        none of the others: a reply the SDK could not read)."""
        try:
            raw = await self._client.chat.completions.with_raw_response.create(**arguments)
            completion = raw.parse()
        except openai.OpenAIError as e:
            raise self._error(e) from None
        return completion, dict(raw.headers), raw.status_code

    async def _streamed(
        self, request: Request, arguments: dict[str, Any], progress: Progress | None
    ) -> Response:
        """The reply read as it streams, until the server ends it or sends a piece
        past ``max_tokens``; usage as the server reports it, else counted."""
        arguments["stream"] = True
        arguments["stream_options"] = {"include_usage": True}
        reading = Reading(request.max_tokens, progress)
        usage: Usage | None = None
        model = request.model
        finish: str | None = None
        try:
            raw = await self._client.chat.completions.with_raw_response.create(**arguments)
        except openai.OpenAIError as e:
            raise self._error(e) from None
        headers = dict(raw.headers)
        stream = raw.parse(to=_Chunks)  # the SDK's reading of the stream, as dicts
        try:
            async for chunk in stream:
                if not isinstance(chunk, dict):
                    raise TypeError(f"a chunk is {type(chunk).__name__}, not an object")
                usage = _usage(chunk) or usage
                model = _text(chunk.get("model")) or model
                finish = _read(chunk, reading) or finish
                if reading.cut:
                    break
        except openai.OpenAIError as e:
            where = self._base_url or "the OpenAI API"
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
                f"{self.name}: the stream is not of chat completion chunks "
                f"({type(e).__name__}: {e})",
                provider=self.name,  # (no status: after a 200, what it made may be billed)
            ) from None
        finally:
            await stream.close()
        if reading.cut:  # what it said of usage (if anything) came before the end
            return Response(
                reading.text, reading.usage(request), model, "length", headers, True, reading.pieces
            )
        if finish is None:  # the stream stopped short: the server failed mid-way
            raise ProviderUnavailable(
                f"{self.name}: the reply's stream ended before the reply did (no finish "
                f"reason, {reading.pieces:,} pieces read); the server failed while answering",
                provider=self.name,  # (no status: what it had billed is not known)
            )
        return Response(
            reading.text,
            usage or reading.usage(request),
            model,
            finish,
            headers,
            usage is None,
            reading.pieces,
        )

    def _error(self, error: openai.OpenAIError) -> ProviderError:
        """The SDK's error as aoe's; a 404 from a base URL that does not end in
        /v1 says where it asked, and what the URL usually lacks (Azure: which
        deployment); a refused ``stream_options``, how to do without it."""
        where = self._base_url or "the OpenAI API"
        found = sdk_error(error, _ERRORS, provider=self.name, where=where, secrets=self._secrets)
        url = (self._base_url or "").rstrip("/")
        if found.status == 400 and "stream_options" in found.message:
            return RequestRejected(
                f"{found.message} (the server does not take stream_options, which streamed "
                "usage needs: set stream: false for the provider"
                + (", or an api_version of 2024-10-21 or later" if self._azure else "")
                + ")",
                provider=self.name,
                status=400,
            )
        if found.status == 404 and self._azure is not None:
            return RequestRejected(
                f"{found.message} (Azure OpenAI answers 404 for a deployment it does not "
                f"have: is there one of that name at {mask_url(url)}? map the workflow's "
                "models to your deployments with models: or deployment:)",
                provider=self.name,
                status=404,
            )
        if found.status == 404 and url and not url.endswith("/v1"):
            return RequestRejected(
                f"{found.message} (from {mask_url(url)}/chat/completions: OpenAI-compatible "
                f"servers usually serve under /v1; is the base_url {mask_url(url)}/v1?)",
                provider=self.name,
                status=404,
            )
        return found

    def _response(
        self, request: Request, completion: ChatCompletion, headers: dict[str, str], status: int
    ) -> Response:
        """The first choice's text and the usage, if the server counted it."""
        try:
            choice = completion.choices[0]
            usage = completion.usage
            return Response(
                text=choice.message.content or "",
                usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
                model=completion.model or request.model,
                finish_reason=choice.finish_reason,
                headers=headers,
            )
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
            raise ProviderUnavailable(
                f"{self.name}: the reply is not a chat completion ({type(e).__name__}: {e})",
                provider=self.name,
                status=status,
            ) from None

    async def aclose(self) -> None:
        await self._client.close()


_ERRORS = SdkErrors(
    status=openai.APIStatusError,
    timeout=openai.APITimeoutError,
    connection=openai.APIConnectionError,
)


_Chunks = openai.AsyncStream[object]
"""A stream read by the SDK (its server-sent events, its errors), each chunk
left as the JSON object it came as: the SDK's typed chunks cost ~70 us each to
build, as much as the rest of a call, and a reply is a chunk a token."""


def _usage(chunk: dict[str, Any]) -> Usage | None:
    usage = chunk.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not count(prompt) or not count(completion):
        return None
    return Usage(prompt, completion)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _read(chunk: dict[str, Any], reading: Reading) -> str | None:
    """The first choice's piece of text added to ``reading``; its finish reason."""
    choices = chunk.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        piece = _text(delta.get("content")) if isinstance(delta, dict) else None
        if piece and not reading.add(piece):
            return None
        return _text(choice.get("finish_reason"))
    return None


def _object_schema(schema: Any) -> bool:
    return schema is not None and (schema.get("type") == "object" or "properties" in schema)
