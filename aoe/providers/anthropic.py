"""Anthropic, through the official async SDK, the Anthropic way.

The system prompt goes in ``system``; JSON with a schema is asked for with
structured outputs (``output_config.format``); the SDK's retries are off.
Parameters the SDK does not type (``temperature``, ``top_p`` and anything under
``params``) travel in the request body unchanged. Anthropic has no ``seed``.
"""

from __future__ import annotations

from typing import Any

import anthropic
from anthropic.types import Message

from aoe.errors import ProviderUnavailable
from aoe.providers.base import SdkErrors, sdk_error
from aoe.types import Request, Response, Usage, plain


class AnthropicProvider:
    def __init__(self, name: str, *, api_key: str | None, base_url: str | None) -> None:
        self.name = name
        self._secrets = (api_key,) if api_key else ()
        self._base_url = base_url
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key or "no-key", base_url=base_url, max_retries=0
        )

    async def complete(self, request: Request) -> Response:
        message, headers, status = await self._call(_arguments(request))
        return self._response(request, message, headers, status)

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


_ERRORS = SdkErrors(
    status=anthropic.APIStatusError,
    timeout=anthropic.APITimeoutError,
    connection=anthropic.APIConnectionError,
)


def _arguments(request: Request) -> dict[str, Any]:
    """The SDK's arguments for ``request``; what it does not type goes in the body."""
    arguments: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": [
            {"role": m.role, "content": m.content} for m in request.messages if m.role != "system"
        ],
    }
    if request.system:
        arguments["system"] = request.system
    if request.stop:
        arguments["stop_sequences"] = list(request.stop)
    if request.output_format == "json" and request.json_schema is not None:
        arguments["output_config"] = {
            "format": {"type": "json_schema", "schema": plain(request.json_schema)}
        }
    body = plain(request.params) if request.params else {}
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
