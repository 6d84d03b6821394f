"""A least-recently-used cache bounded by bytes, not by entries.

A long-lived ``aoe serve`` sees templates from many people: a cache bounded by
its number of entries keeps 4,096 one-megabyte prompts as readily as 4,096
short ones. :class:`ByteLRU` weighs each entry (its key's size plus an
estimate of its value's) and drops the least recently used ones once the total
passes its budget. An entry heavier than the whole budget is not kept at all.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_ABSENT = object()
ABSENT = _ABSENT
"""What :meth:`ByteLRU.lookup` returns for a key it does not hold."""


class ByteLRU(Generic[K, V]):
    """``get``/``put`` with a budget in bytes; safe to share between threads."""

    __slots__ = ("_entries", "_lock", "_weigh", "budget", "weight")

    def __init__(self, budget: int, weigh: Callable[[K, V], int] | None = None) -> None:
        self.budget = budget
        self.weight = 0
        self._weigh = weigh or _size_of_key
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        """The value kept under ``key``, or None."""
        found = self.lookup(key)
        return None if found is _ABSENT else found  # type: ignore[return-value]

    def lookup(self, key: K) -> V | object:
        """The value kept under ``key`` (None included), or :data:`ABSENT`."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return _ABSENT
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: K, value: V) -> V:
        """Keep ``value`` under ``key`` (if it fits at all) and return it."""
        weight = self._weigh(key, value)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.weight -= old[1]
            if weight > self.budget:
                return value
            self._entries[key] = (value, weight)
            self.weight += weight
            while self.weight > self.budget:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.weight -= dropped
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.weight = 0


def _size_of_key(key: object, value: object) -> int:
    return sys.getsizeof(key) + 64


def memoize(
    budget: int, weigh: Callable[[str, V], int]
) -> Callable[[Callable[[str], V]], Callable[[str], V]]:
    """A decorator: ``functools.lru_cache`` for one-string functions, bounded by bytes.

    Exceptions are not cached (a template that does not parse is parsed again
    if asked again, which only happens while a user fixes it)."""

    def decorate(function: Callable[[str], V]) -> Callable[[str], V]:
        cache: ByteLRU[str, V] = ByteLRU(budget, weigh)

        def cached(text: str) -> V:
            value = cache.lookup(text)
            if value is _ABSENT:
                return cache.put(text, function(text))
            return value  # type: ignore[return-value]

        cached.cache = cache  # type: ignore[attr-defined]  # for tests and clear()
        cached.__doc__ = function.__doc__
        cached.__name__ = function.__name__
        return cached

    return decorate
