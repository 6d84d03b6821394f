"""Anthropic, through the official async SDK, the Anthropic way.

The system prompt goes in ``system``; JSON with a schema is asked for with
structured outputs (``output_config.format``); the SDK's retries are off.
Parameters the SDK does not type (``temperature``, ``top_p`` and anything under
``params``) travel in the request body unchanged. Anthropic has no ``seed``.
"""

from __future__ import annotations

from typing import Any

import anthropic

from aoe.errors import ProviderError, ProviderUnavailable, scrub
from aoe.providers.base import error_for_status
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
        kwargs: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [
                {"role": m.role, "content": m.content}
                for m in request.messages
                if m.role != "system"
            ],
        }
        if request.system:
            kwargs["system"] = request.system
        if request.stop:
            kwargs["stop_sequences"] = list(request.stop)
        if request.output_format == "json" and request.json_schema is not None:
            kwargs["output_config"] = {
                "format": {"type": "json_schema", "schema": plain(request.json_schema)}
            }
        body = plain(request.params) if request.params else {}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if body:
            kwargs["extra_body"] = body
        if request.timeout is not None:
            # the engine's own timeout is the one that counts; given, it also keeps the
            # SDK from refusing large max_tokens without streaming
            kwargs["timeout"] = request.timeout + 5.0
        try:
            raw = await self._client.messages.with_raw_response.create(**kwargs)
            message = await raw.parse()
        except anthropic.APIStatusError as e:
            raise error_for_status(
                self.name, e.status_code, scrub(_message(e), self._secrets), e.response.headers
            ) from None
        except anthropic.APITimeoutError:
            raise ProviderUnavailable(
                f"{self.name}: the request timed out", provider=self.name
            ) from None
        except anthropic.APIConnectionError as e:
            where = self._base_url or "the Anthropic API"
            raise ProviderUnavailable(
                scrub(f"{self.name}: cannot reach {where}: {e}", self._secrets),
                provider=self.name,
            ) from None
        except anthropic.AnthropicError as e:
            raise ProviderError(
                f"{self.name}: {scrub(str(e), self._secrets)}", provider=self.name
            ) from None
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
                headers=dict(raw.headers),
            )
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
            raise ProviderUnavailable(
                f"{self.name}: the reply is not a message ({type(e).__name__}: {e})",
                provider=self.name,
                status=raw.status_code,
            ) from None

    async def aclose(self) -> None:
        await self._client.close()


def _message(error: anthropic.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return str(error.message)
