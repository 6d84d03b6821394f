"""A fuzzing campaign: cases run on every worker until the time (or the number
of cases) asked for, the findings grouped by how they fail, each minimised,
and the lot written as files and summed up in a few lines."""

from __future__ import annotations

import json
import queue
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fuzz.cases import Case, make_case
from tests.fuzz.known import known
from tests.fuzz.minimise import minimise
from tests.fuzz.pool import HANG_SECONDS, MEMORY_MB, Slot, scratch_root
from tests.fuzz.worker import FINDINGS, Outcome, remove_tree


@dataclass
class Finding:
    """Every case that failed one way: the first of them, how many, its reproducer."""

    case: Case
    outcome: Outcome
    count: int = 1
    reproducer: Case | None = None
    reproducer_outcome: Outcome | None = None
    folder: Path | None = None


@dataclass
class Report:
    """What a campaign did."""

    seed: int
    cases: int = 0
    seconds: float = 0.0
    verdicts: Counter[str] = field(default_factory=Counter)
    findings: dict[str, Finding] = field(default_factory=dict)
    max_rss_mb: float = 0.0
    slowest: float = 0.0

    @property
    def internal_errors(self) -> int:
        return sum(self.verdicts[v] for v in ("internal", "crash", "network", "file-read", "leak"))

    @property
    def hangs(self) -> int:
        return self.verdicts["hang"]

    @property
    def memory(self) -> int:
        return self.verdicts["memory"]

    @property
    def new(self) -> list[Finding]:
        """Findings not among :data:`tests.fuzz.known.KNOWN_OPEN`."""
        return [f for _, f in sorted(self.findings.items()) if known(f.case, f.outcome) is None]

    def summary(self) -> str:
        """The lines ``make fuzz`` prints."""
        rate = self.cases / self.seconds if self.seconds else 0.0
        lines = [
            f"fuzz: seed {self.seed}: {self.cases} cases in {self.seconds:.0f} s ({rate:.1f}/s); "
            + ", ".join(f"{v} {n}" for v, n in sorted(self.verdicts.items())),
            f"  internal errors:          {self.internal_errors}"
            + _breakdown(self.verdicts, ("internal", "crash", "network", "file-read", "leak")),
            f"  hangs over {HANG_SECONDS:g} s:           {self.hangs}",
            f"  processes over {MEMORY_MB:g} MB:    {self.memory}",
            f"  largest process seen:     {self.max_rss_mb:.0f} MB; "
            f"slowest case {self.slowest:.2f} s",
            f"  distinct findings:        {len(self.findings)} "
            f"({len(self.new)} new, {len(self.findings) - len(self.new)} known open)",
        ]
        for number, (_, finding) in enumerate(sorted(self.findings.items()), 1):
            lines.append("")
            lines.append(f"[{number}] {_title(finding.outcome)} (seen {finding.count}x)")
            seen = known(finding.case, finding.outcome)
            lines.append(
                f"    known open: {seen.what} (tests/test_fuzz_cases.py: {seen.test})"
                if seen
                else "    NEW: not among tests/fuzz/known.py"
            )
            lines.append(
                f"    first case: {finding.case.label}: {'; '.join(finding.case.notes)[:200]}"
            )
            if finding.folder is not None:
                lines.append(f"    files: {finding.folder}")
            if seen and finding.reproducer is None:
                continue  # its reproducer is the named case
            reproducer = finding.reproducer or finding.case
            lines.append(f"    reproducer: aoe {' '.join(reproducer.command)}")
            for name, data in sorted(reproducer.files.items()):
                shown = data.decode("utf-8", "backslashreplace")
                if len(shown) > 300:
                    shown = shown[:300] + f"... ({len(data)} bytes)"
                lines.append(f"      {name}: {shown!r}")
            for name, value in sorted(reproducer.env.items()):
                lines.append(f"      env {name}={_cut(value, 100)}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "cases": self.cases,
            "seconds": round(self.seconds, 1),
            "verdicts": dict(self.verdicts),
            "internal_errors": self.internal_errors,
            "hangs": self.hangs,
            "memory": self.memory,
            "max_rss_mb": round(self.max_rss_mb),
            "findings": [
                {
                    "signature": signature,
                    "known": (k.test if (k := known(f.case, f.outcome)) else None),
                    "count": f.count,
                    "first_case": f.case.label,
                    "folder": str(f.folder) if f.folder else None,
                }
                for signature, f in sorted(self.findings.items())
            ],
        }


def _breakdown(verdicts: Counter[str], names: tuple[str, ...]) -> str:
    parts = [f"{verdicts[n]} {n}" for n in names if verdicts[n]]
    return f" ({', '.join(parts)})" if parts else ""


def _title(outcome: Outcome) -> str:
    where = f" at {outcome.where}" if outcome.where else ""
    return f"{outcome.verdict}: {outcome.error or '?'}{where}"


class Campaign:
    """Workers, and what they found."""

    def __init__(
        self,
        seed: int,
        *,
        workers: int = 2,
        hang_seconds: float = HANG_SECONDS,
        memory_mb: float = MEMORY_MB,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.seed = seed
        self.root = scratch_root()
        self.slots = [
            Slot(n, self.root, hang_seconds=hang_seconds, memory_mb=memory_mb)
            for n in range(workers)
        ]
        self.report = Report(seed)
        self.log = log or (lambda line: None)
        self._lock = threading.Lock()

    def close(self) -> None:
        for slot in self.slots:
            slot.close()
        remove_tree(self.root)

    def __enter__(self) -> Campaign:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- fuzzing ---------------------------------------------------------------------------

    def fuzz(
        self, *, seconds: float | None = None, cases: int | None = None, start: int = 0
    ) -> Report:
        """Run cases ``start``, ``start + 1``, ... until ``seconds`` have passed or
        ``cases`` have run, whichever comes first."""
        began = time.monotonic()
        deadline = began + seconds if seconds is not None else None
        end = start + cases if cases is not None else None
        counter = iter(range(start, end if end is not None else 2**62))
        next_log = [began + 30.0]

        def take() -> int | None:
            with self._lock:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                return next(counter, None)

        def work(slot: Slot) -> None:
            while (index := take()) is not None:
                case = make_case(self.seed, index)
                outcome = slot.run(case)
                self._record(case, outcome)
                now = time.monotonic()
                with self._lock:
                    if now >= next_log[0]:
                        next_log[0] = now + 30.0
                        r = self.report
                        self.log(
                            f"fuzz: {r.cases} cases, {r.internal_errors} internal errors, "
                            f"{r.hangs} hangs, {r.memory} over {MEMORY_MB:g} MB, "
                            f"{len(r.findings)} distinct"
                        )

        self._parallel(work)
        self.report.seconds += time.monotonic() - began
        return self.report

    def _record(self, case: Case, outcome: Outcome) -> None:
        with self._lock:
            report = self.report
            report.cases += 1
            report.verdicts[outcome.verdict] += 1
            report.max_rss_mb = max(report.max_rss_mb, outcome.rss_mb)
            report.slowest = max(report.slowest, outcome.seconds)
            if not outcome.is_finding:
                return
            known = report.findings.get(outcome.signature)
            if known is None:
                report.findings[outcome.signature] = Finding(case, outcome)
                self.log(f"fuzz: new finding: {_title(outcome)} (case {case.label})")
                return
            known.count += 1
            if (case.index or 0) < (known.case.index or 0):  # the same one whatever the order
                known.case, known.outcome = case, outcome

    def _parallel(self, work: Callable[[Slot], None]) -> None:
        threads = [threading.Thread(target=work, args=(slot,), daemon=True) for slot in self.slots]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    # -- after -------------------------------------------------------------------------------

    def minimise(self, seconds_each: float = 60.0, *, known_too: bool = False) -> int:
        """Shrink the first case of every new finding (of the known ones too with
        ``known_too``: they have reproducers already), the workers sharing them;
        how many there were."""
        todo: queue.Queue[Finding] = queue.Queue()
        for _, finding in sorted(self.report.findings.items()):
            if finding.reproducer is None and (
                known_too or not known(finding.case, finding.outcome)
            ):
                todo.put(finding)
        count = todo.qsize()

        def work(slot: Slot) -> None:
            while True:
                try:
                    finding = todo.get_nowait()
                except queue.Empty:
                    return
                # a hang costs its full wait at every try: give it more time
                slow = finding.outcome.verdict in ("hang", "memory")
                seconds = seconds_each * (2 if slow else 1)
                smaller = minimise(finding.case, finding.outcome, slot.run, seconds)
                finding.reproducer = smaller
                finding.reproducer_outcome = slot.run(smaller)
                self.log(f"fuzz: minimised {_title(finding.outcome)}: {_size(smaller)}")

        self._parallel(work)
        return count

    def write(self, out: Path) -> None:
        """Each finding in a folder of its own under ``out``, and the summary."""
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("[0-9][0-9]-*"):  # an earlier campaign's
            shutil.rmtree(old, ignore_errors=True)
        for number, (_, finding) in enumerate(sorted(self.report.findings.items()), 1):
            slug = re.sub(r"[^a-z0-9]+", "-", _title(finding.outcome).lower()).strip("-")[:60]
            folder = out / f"{number:02d}-{slug}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            finding.folder = folder
            _dump_case(folder / "case.json", finding.case)
            _write_outcome(folder / "outcome.txt", finding.case, finding.outcome, finding.count)
            if finding.reproducer is not None:
                _dump_case(folder / "reproducer.json", finding.reproducer)
                files = folder / "reproducer"
                for name, data in finding.reproducer.files.items():
                    path = files / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
                if finding.reproducer_outcome is not None:
                    _write_outcome(
                        folder / "reproducer-outcome.txt",
                        finding.reproducer,
                        finding.reproducer_outcome,
                        1,
                    )
        (out / "summary.txt").write_text(
            self.report.summary() + "\n", encoding="utf-8", errors="backslashreplace"
        )
        (out / "summary.json").write_text(
            json.dumps(self.report.to_json(), indent=2) + "\n", encoding="utf-8"
        )


def _size(case: Case) -> str:
    return ", ".join(f"{name} {len(data)} bytes" for name, data in sorted(case.files.items()))


def _cut(value: str, keep: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= keep else f"{text[:keep]}... ({len(value)} characters)"


def _dump_case(path: Path, case: Case) -> None:
    path.write_text(json.dumps(case.to_json(), indent=2) + "\n", encoding="utf-8")


def _write_outcome(path: Path, case: Case, outcome: Outcome, count: int) -> None:
    lines = [
        f"{_title(outcome)}",
        f"seen: {count}x; case {case.label} ({case.family}): {'; '.join(case.notes)}",
        f"command: aoe {' '.join(case.command)}",
        "env: " + (", ".join(f"{k}={_cut(v)}" for k, v in case.env.items()) or "(clean)"),
        f"extras: fifos {list(case.fifos)}, sparse {dict(case.sparse)}, "
        f"links {dict(case.symlinks)}",
        f"exit code: {outcome.exit_code}; {outcome.seconds:.2f} s; {outcome.rss_mb:.0f} MB",
        "events: " + ("; ".join(outcome.events) or "(none)"),
        "--- stdout",
        outcome.stdout,
        "--- stderr",
        outcome.stderr,
        "--- detail (traceback or stacks)",
        outcome.detail,
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="backslashreplace")


def replay(case: Case, *, hang_seconds: float = HANG_SECONDS) -> Outcome:
    """Run one case on a fresh worker (a finding's case.json, say)."""
    with Campaign(0, workers=1, hang_seconds=hang_seconds) as campaign:
        return campaign.slots[0].run(case)


__all__ = ["FINDINGS", "Campaign", "Finding", "Report", "replay"]
