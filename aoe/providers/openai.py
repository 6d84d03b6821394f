"""OpenAI and OpenAI-compatible servers, through the official async SDK.

One client per provider; the SDK's own retries are off (``max_retries=0``)
so that a failure is retried by aoe's policy only. ``OPENAI_BASE_URL`` (or a
declared provider's ``base_url``) points it at a proxy or a compatible server.
Every SDK error is turned into an :mod:`aoe.errors` error here.
"""

from __future__ import annotations

from typing import Any

import openai
from openai.types.chat import ChatCompletion

from aoe.errors import ProviderUnavailable
from aoe.providers.base import SdkErrors, sdk_error
from aoe.types import Request, Response, Usage, plain


class OpenAIProvider:
    """Chat completions. ``compatible`` servers get ``max_tokens``; OpenAI itself
    ``max_completion_tokens``, which its reasoning models require."""

    def __init__(
        self, name: str, *, api_key: str | None, base_url: str | None, compatible: bool = False
    ) -> None:
        self.name = name
        self._secrets = (api_key,) if api_key else ()
        self._base_url = base_url
        self._compatible = compatible
        self._client = openai.AsyncOpenAI(
            api_key=api_key or "no-key", base_url=base_url, max_retries=0
        )

    async def complete(self, request: Request) -> Response:
        completion, headers, status = await self._call(self._arguments(request))
        return self._response(request, completion, headers, status)

    def _arguments(self, request: Request) -> dict[str, Any]:
        """The SDK's arguments for ``request``; ``params`` go in the body as they are."""
        arguments: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            ("max_tokens" if self._compatible else "max_completion_tokens"): request.max_tokens,
        }
        if request.temperature is not None:
            arguments["temperature"] = request.temperature
        if request.top_p is not None:
            arguments["top_p"] = request.top_p
        if request.stop:
            arguments["stop"] = list(request.stop)
        if request.seed is not None:
            arguments["seed"] = request.seed
        if request.output_format == "json" and _object_schema(request.json_schema):
            # structured outputs take an object at the root; any other JSON is asked for in
            # the prompt and checked when it comes back
            arguments["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": plain(request.json_schema)},
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
            where = self._base_url or "the OpenAI API"
            raise sdk_error(
                e, _ERRORS, provider=self.name, where=where, secrets=self._secrets
            ) from None
        return completion, dict(raw.headers), raw.status_code

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


def _object_schema(schema: Any) -> bool:
    return schema is not None and (schema.get("type") == "object" or "properties" in schema)
