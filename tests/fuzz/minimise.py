"""Shrink a failing case to a small reproducer that still fails the same way.

First what the case does not need goes (the other files, the FIFOs and links,
environment variables, the second file of a ``validate``), then delta
debugging (Zeller's ddmin, complements only) removes lines of the mutated
file, then characters. Every candidate runs in a worker like any case; the
search stops at its time budget with the smallest case found so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import TypeVar

from tests.fuzz.cases import SENTINEL, Case
from tests.fuzz.worker import Outcome

T = TypeVar("T")
Runner = Callable[[Case], Outcome]


def same_failure(a: Outcome, b: Outcome) -> bool:
    """Whether ``b`` fails the way ``a`` did: the same verdict and error, and the
    same place in aoe (for a hang or a blow-up the place it was caught at may move)."""
    if a.verdict != b.verdict or a.error != b.error:
        return False
    return a.where == b.where or a.verdict in ("hang", "memory", "crash")


class Budget:
    """Seconds and runs a minimisation may spend."""

    def __init__(self, seconds: float, runs: int = 2000) -> None:
        self.deadline = time.monotonic() + seconds
        self.runs = runs

    def spend(self) -> bool:
        """Whether one more run fits (and count it)."""
        if self.runs <= 0 or time.monotonic() > self.deadline:
            return False
        self.runs -= 1
        return True


def ddmin(items: Sequence[T], fails: Callable[[list[T]], bool], budget: Budget) -> list[T]:
    """The smallest sublist of ``items`` found for which ``fails`` holds (``items``
    itself is assumed to fail); stops early when ``budget`` runs out."""
    current = list(items)
    parts = 2
    while len(current) >= 2:
        size = -(-len(current) // parts)
        chunks = [current[i : i + size] for i in range(0, len(current), size)]
        for i in range(len(chunks)):
            candidate = [x for j, chunk in enumerate(chunks) if j != i for x in chunk]
            if not budget.spend():
                return current
            if fails(candidate):
                current = candidate
                parts = max(parts - 1, 2)
                break
        else:
            if parts >= len(current):
                return current
            parts = min(len(current), parts * 2)
    return current


def minimise(case: Case, outcome: Outcome, run: Runner, seconds: float = 60.0) -> Case:
    """A smaller case that fails like ``outcome`` (``case`` itself if none is found)."""
    budget = Budget(seconds)

    def fails(candidate: Case) -> bool:
        return same_failure(outcome, run(candidate))

    best = case
    for edit in _edits(case):
        smaller = edit(best)
        if smaller is None or smaller == best:
            continue
        if not budget.spend():
            return best
        if fails(smaller):
            best = smaller
    target = best.target
    if target is not None and target in best.files:
        current = best

        def with_lines(lines: list[bytes]) -> bool:
            return fails(current.with_file(target, b"".join(lines)))

        lines = ddmin(current.files[target].splitlines(keepends=True), with_lines, budget)
        current = current.with_file(target, b"".join(lines))

        def with_bytes(pieces: list[bytes]) -> bool:
            return fails(current.with_file(target, b"".join(pieces)))

        data = current.files[target]
        pieces: list[bytes] = [data[i : i + 1] for i in range(len(data))]
        kept: list[bytes] = ddmin(pieces, with_bytes, budget)
        current = current.with_file(target, b"".join(kept))
        best = current
    elif best.env:
        keys = ddmin(
            sorted(best.env), lambda names: fails(replace(best, env=_only(best, names))), budget
        )
        best = replace(best, env=_only(best, keys))
    return best


def _only(case: Case, names: Sequence[str]) -> dict[str, str]:
    return {name: case.env[name] for name in names}


Edit = Callable[[Case], "Case | None"]


def _edits(case: Case) -> list[Edit]:
    """Things a case may not need, each taken away from the best case so far."""
    edits: list[Edit] = [_without_sentinel, _without_extras, _validate_instead]
    for name in sorted(case.files):
        if name != case.target and name not in case.command:
            edits.append(partial(_without_file, name))
    for option in ("-q", "--no-cache"):
        if option in case.command:
            edits.append(partial(_without_option, option))
    return edits


def _drop(files: Mapping[str, bytes], name: str) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k != name}


def _without_file(name: str, case: Case) -> Case | None:
    return replace(case, files=_drop(case.files, name)) if name in case.files else None


def _without_option(option: str, case: Case) -> Case | None:
    return replace(case, command=tuple(part for part in case.command if part != option))


def _without_sentinel(case: Case) -> Case | None:
    if SENTINEL not in case.command:
        return None
    command = tuple(part for part in case.command if part != SENTINEL)
    return replace(case, command=command, files=_drop(case.files, SENTINEL))


def _validate_instead(case: Case) -> Case | None:
    """``aoe validate`` of the workflow a run or a plan would have read."""
    if case.command[0] not in ("run", "plan", "graph") or "wf.yaml" not in case.command:
        return None
    config = ("--config", "config.yaml") if "config.yaml" in case.command else ()
    return replace(case, command=("validate", *config, "wf.yaml"))


def _without_extras(case: Case) -> Case | None:
    return replace(case, fifos=(), sparse={}, symlinks={})
