"""Findings of the harness that are known and not fixed yet.

Each names the test of tests/test_fuzz_cases.py that reproduces it (a strict
xfail there). The bounded slice in ``make test`` fails on any finding that is
not listed here; ``make fuzz`` marks the listed ones as known. When one is
fixed, its reproducer's xfail passes, which fails the suite: remove the mark
there and the entry here together, and the slice holds aoe to the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.fuzz.cases import Case
from tests.fuzz.worker import Outcome


@dataclass(frozen=True)
class Known:
    """How to recognise one known finding."""

    test: str
    """The reproducer's id in tests/test_fuzz_cases.py."""
    what: str
    verdict: str
    where: tuple[str, ...] = ()
    """Prefixes of the outcome's place in aoe (any place when empty)."""
    error: str = ""
    """Text of the outcome's error."""
    holds: bytes = b""
    """Text one of the case's files holds."""
    says: str = ""
    """Text of what aoe printed (or of the traceback)."""

    def matches(self, case: Case, outcome: Outcome) -> bool:
        if outcome.verdict != self.verdict or self.error not in outcome.error:
            return False
        if self.where and not outcome.where.startswith(self.where):
            return False
        if self.says and self.says not in outcome.stdout + outcome.stderr + outcome.detail:
            return False
        return not self.holds or any(self.holds in data for data in case.files.values())


KNOWN_OPEN: tuple[Known, ...] = ()


def known(case: Case, outcome: Outcome) -> Known | None:
    """The known finding ``outcome`` is, if any."""
    return next((k for k in KNOWN_OPEN if k.matches(case, outcome)), None)
