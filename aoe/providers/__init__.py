"""Providers by name, made when a run first needs them.

``openai``, ``anthropic`` and ``mock`` are built in (the first two may be
declared under ``providers:`` as well, to point them elsewhere, name their
models, price them); any other name is a server declared there, speaking the
OpenAI API, Anthropic's (``type: anthropic``) or Azure OpenAI's (``type: azure``).
Vendor SDKs are imported only here, and only for the providers a run uses.
"""

from __future__ import annotations

from collections.abc import Iterable

from aoe.config.environment import MOCK_LATENCY_VARIABLE
from aoe.config.models import ProviderSection
from aoe.config.settings import Settings
from aoe.providers.base import Provider
from aoe.providers.mock import MockProvider

__all__ = ["MOCK_LATENCY_VARIABLE", "Provider", "ProviderPool", "missing_keys"]


def missing_keys(providers: Iterable[str], settings: Settings) -> list[tuple[str, str]]:
    """``(provider, variable)`` for each provider whose API key is not set."""
    missing = []
    for name in dict.fromkeys(providers):
        variable = settings.api_key_variable(name)
        if variable is not None and not settings.environment.get(variable):
            missing.append((name, variable))
    return missing


class ProviderPool:
    """The providers of one engine: made on first use, closed together."""

    def __init__(self, settings: Settings, *, mock: MockProvider | None = None) -> None:
        self._settings = settings
        self._providers: dict[str, Provider] = {}
        if mock is not None:
            self._providers["mock"] = mock

    def get(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            provider = self._providers[name] = self._make(name)
        return provider

    def _make(self, name: str) -> Provider:
        """The provider called ``name``: the mock; ``openai`` and ``anthropic``,
        as declared under ``providers:`` if they are; any other declared one."""
        if name == "mock":  # AOE_MOCK_LATENCY was checked with the settings
            return MockProvider(latency=self._settings.mock_latency)
        settings = self._settings
        # undeclared: a section's defaults (stream, no aliases, schema as the API takes it)
        declared = settings.config.providers.get(name) or ProviderSection()
        variable = settings.api_key_variable(name)
        key = settings.environment.get(variable) if variable else None
        base_url = settings.base_url(name)
        kind = declared.type if name in settings.config.providers else name
        if kind == "anthropic":
            from aoe.providers.anthropic import AnthropicProvider

            return AnthropicProvider(
                name,
                api_key=key,
                base_url=base_url,
                stream=None if declared.stream == "auto" else declared.stream,
                models=declared.models,
                structured_output=declared.structured_output,
            )
        from aoe.providers.openai import Azure, OpenAIProvider

        azure = None
        if kind == "azure":
            azure = Azure(declared.api_version or Azure.api_version, declared.deployment)
        return OpenAIProvider(
            name,
            api_key=key,
            base_url=base_url,
            token_parameter=declared.token_parameter,
            stream=None if declared.stream == "auto" else declared.stream,
            structured_output=declared.structured_output,
            models=declared.models,
            azure=azure,
        )

    async def aclose(self) -> None:
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await provider.aclose()
