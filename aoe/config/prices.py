"""Model prices: the built-in table and how a model name finds its price.

Prices are USD per 1,000 tokens, ``input`` and ``output``, as the engine
config's ``cost_tracking.model_costs`` writes them. The built-in table holds
the OpenAI and Anthropic list prices for standard (not batch, not cached)
requests; the config file adds models or overrides these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

PRICES_AS_OF = "2026-11-27"


class Price(NamedTuple):
    """USD per 1,000 tokens."""

    input: float
    output: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / 1000.0


# USD per 1,000 tokens (the vendors list USD per 1M tokens: divide by 1,000).
BUILTIN_PRICES: Mapping[str, Price] = {
    # OpenAI
    "gpt-5": Price(0.00125, 0.010),
    "gpt-5-mini": Price(0.00025, 0.002),
    "gpt-5-nano": Price(0.00005, 0.0004),
    "gpt-5.1": Price(0.00125, 0.010),
    "gpt-4.1": Price(0.002, 0.008),
    "gpt-4.1-mini": Price(0.0004, 0.0016),
    "gpt-4.1-nano": Price(0.0001, 0.0004),
    "gpt-4o": Price(0.0025, 0.010),
    "gpt-4o-2024-05-13": Price(0.005, 0.015),
    "gpt-4o-mini": Price(0.00015, 0.0006),
    "o3": Price(0.002, 0.008),
    "o3-mini": Price(0.0011, 0.0044),
    "o4-mini": Price(0.0011, 0.0044),
    "gpt-4-turbo": Price(0.01, 0.03),
    "gpt-4": Price(0.03, 0.06),
    "gpt-3.5-turbo": Price(0.0005, 0.0015),
    # Anthropic
    "claude-opus-4-5": Price(0.005, 0.025),
    "claude-opus-4-1": Price(0.015, 0.075),
    "claude-opus-4-0": Price(0.015, 0.075),
    "claude-opus-4": Price(0.015, 0.075),
    "claude-sonnet-4-5": Price(0.003, 0.015),
    "claude-sonnet-4-0": Price(0.003, 0.015),
    "claude-sonnet-4": Price(0.003, 0.015),
    "claude-haiku-4-5": Price(0.001, 0.005),
    "claude-3-7-sonnet-latest": Price(0.003, 0.015),
    "claude-3-5-haiku-latest": Price(0.0008, 0.004),
    "claude-3-5-haiku": Price(0.0008, 0.004),
    "claude-3-opus-20240229": Price(0.015, 0.075),
    "claude-3-sonnet-20240229": Price(0.003, 0.015),
    "claude-3-haiku-20240307": Price(0.00025, 0.00125),
}

# A dated snapshot: gpt-4o-2024-08-06, claude-sonnet-4-5-20250929.
_SNAPSHOT = re.compile(r"^(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


def base_model(model: str) -> str | None:
    """The model a dated snapshot name belongs to, or None if it is not one."""
    match = _SNAPSHOT.match(model)
    return match.group("base") if match else None


class PriceTable:
    """Prices by model name; a dated snapshot takes its base model's price."""

    __slots__ = ("_prices",)

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.lookup(model) is not None

    def lookup(self, model: str) -> Price | None:
        price = self._prices.get(model)
        if price is None:
            base = base_model(model)
            if base is not None:
                price = self._prices.get(base)
        return price

    def items(self) -> list[tuple[str, Price]]:
        return sorted(self._prices.items())

    def names(self) -> list[str]:
        return sorted(self._prices)
