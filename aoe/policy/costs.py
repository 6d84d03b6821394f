"""Costs and hard budgets.

Before each attempt the engine *reserves* the attempt's worst case: the prompt
bounded from above (UTF-8 bytes of every message plus an overhead per message:
a byte-pair token is at least one byte) at the input price, plus
``max_tokens`` at the output price. The attempt is made only if the
reservation fits both the agent's remaining ``cost_limit`` and the run's
remaining ``cost_budget``; afterwards the actual cost (from the usage the
provider reported) replaces it. So, whatever the concurrency, spent plus
reserved never passes a limit, and what was spent never does either.

An attempt whose outcome is unknown (a timeout, a dropped connection, a
cancellation while the request was out) may have been billed: it is charged
its reservation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from aoe.config.prices import Price
from aoe.errors import RunError
from aoe.types import Message

MESSAGE_OVERHEAD_TOKENS = 16  # role and separators, per message: generous
REQUEST_OVERHEAD_TOKENS = 16


def prompt_tokens_bound(messages: Sequence[Message]) -> int:
    """At most this many prompt tokens: a byte-pair token is at least one byte."""
    total = REQUEST_OVERHEAD_TOKENS
    for message in messages:
        text = message.content
        total += (len(text) if text.isascii() else len(text.encode("utf-8"))) + (
            MESSAGE_OVERHEAD_TOKENS
        )
    return total


def prompt_tokens_estimate(messages: Sequence[Message]) -> int:
    """About this many prompt tokens (four characters a token), as providers count
    at admission for their rate limits."""
    return sum(len(m.content) // 4 + 4 for m in messages) + 3


class Ledger:
    """Spend against one limit (``None``: no limit). Spent plus reserved never passes it."""

    __slots__ = ("limit", "name", "reserved", "spent")

    def __init__(self, limit: float | None, name: str) -> None:
        self.limit = limit
        self.name = name
        self.spent = 0.0
        self.reserved = 0.0

    def room(self) -> float | None:
        if self.limit is None:
            return None
        return self.limit - self.spent - self.reserved

    def fits(self, amount: float) -> bool:
        room = self.room()
        return room is None or amount <= room + 1e-12

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved = max(self.reserved - reserved, 0.0)
        self.spent += actual


class BudgetExceeded(RunError):
    """The next attempt could not fit in what is left of a limit: no call was made."""

    retryable = False

    def __init__(self, message: str, *, run_budget: bool) -> None:
        super().__init__(message)
        self.run_budget = run_budget


class Reservation(NamedTuple):
    amount: float
    ledgers: tuple[Ledger, ...]


def worst_case(messages: Sequence[Message], max_tokens: int, price: Price | None) -> float:
    """The most an attempt can cost: the prompt's upper bound and every output token."""
    if price is None:
        return 0.0
    return price.cost(prompt_tokens_bound(messages), max_tokens)


def reserve(amount: float, *ledgers: Ledger) -> Reservation:
    """Take ``amount`` from every ledger, or none of them: raises :class:`BudgetExceeded`
    naming the limit that has no room, with the numbers."""
    for ledger in ledgers:
        if not ledger.fits(amount):
            assert ledger.limit is not None
            raise BudgetExceeded(
                f"the next attempt could cost up to ${amount:.6f}, but only "
                f"${max(ledger.room() or 0.0, 0.0):.6f} is left of {ledger.name} "
                f"${ledger.limit:.4f} (${ledger.spent:.6f} spent, ${ledger.reserved:.6f} "
                "reserved by calls in flight); no call was made",
                run_budget=ledger.name.startswith("the run's"),
            )
    for ledger in ledgers:
        ledger.reserved += amount
    return Reservation(amount, ledgers)


def settle(reservation: Reservation, actual: float) -> None:
    for ledger in reservation.ledgers:
        ledger.settle(reservation.amount, actual)


class DailySpend(Protocol):
    """Daily budgets every process shares (:class:`aoe.redis.spend.SharedSpend`).

    ``reserve`` takes an attempt's worst case from today's budgets, or raises
    :class:`BudgetExceeded`; it answers the keys to settle later (None: nothing
    was reserved). ``settle`` replaces the reservation with what was spent.
    """

    async def reserve(self, workflow: str, amount: float) -> list[str] | None: ...

    def settle(self, keys: list[str] | None, reserved: float, actual: float) -> None: ...

    async def aclose(self, wait: float = 10.0) -> None: ...
