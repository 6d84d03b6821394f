"""OpenAI and OpenAI-compatible servers, through the official async SDK.

One client per provider; the SDK's own retries are off (``max_retries=0``)
so that a failure is retried by aoe's policy only. ``OPENAI_BASE_URL`` (or a
declared provider's ``base_url``) points it at a proxy or a compatible server.
Every SDK error is turned into an :mod:`aoe.errors` error here.
"""

from __future__ import annotations

from typing import Any

import openai

from aoe.errors import ProviderError, ProviderUnavailable, scrub
from aoe.providers.base import error_for_status
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
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            ("max_tokens" if self._compatible else "max_completion_tokens"): request.max_tokens,
        }
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.top_p is not None:
            kwargs["top_p"] = request.top_p
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if request.output_format == "json" and _object_schema(request.json_schema):
            # structured outputs take an object at the root; any other JSON is asked for in
            # the prompt and checked when it comes back
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": plain(request.json_schema)},
            }
        if request.params:
            kwargs["extra_body"] = plain(request.params)
        if request.timeout is not None:  # the engine's own timeout is the one that counts
            kwargs["timeout"] = request.timeout + 5.0
        try:
            raw = await self._client.chat.completions.with_raw_response.create(**kwargs)
            completion = raw.parse()
        except openai.APIStatusError as e:
            raise error_for_status(
                self.name, e.status_code, scrub(_message(e), self._secrets), e.response.headers
            ) from None
        except openai.APITimeoutError:
            raise ProviderUnavailable(
                f"{self.name}: the request timed out", provider=self.name
            ) from None
        except openai.APIConnectionError as e:
            where = self._base_url or "the OpenAI API"
            raise ProviderUnavailable(
                scrub(f"{self.name}: cannot reach {where}: {e}", self._secrets),
                provider=self.name,
            ) from None
        except openai.OpenAIError as e:  # a reply the SDK could not read
            raise ProviderError(
                f"{self.name}: {scrub(str(e), self._secrets)}", provider=self.name
            ) from None
        try:
            choice = completion.choices[0]
            usage = completion.usage
            return Response(
                text=choice.message.content or "",
                usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
                model=completion.model or request.model,
                finish_reason=choice.finish_reason,
                headers=dict(raw.headers),
            )
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
            raise ProviderUnavailable(
                f"{self.name}: the reply is not a chat completion ({type(e).__name__}: {e})",
                provider=self.name,
                status=raw.status_code,
            ) from None

    async def aclose(self) -> None:
        await self._client.close()


def _object_schema(schema: Any) -> bool:
    return schema is not None and (schema.get("type") == "object" or "properties" in schema)


def _message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return str(error.message)
