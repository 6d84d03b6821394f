"""``python -m tests.fuzz``: fuzz aoe for a while and report what broke.

Examples::

    python -m tests.fuzz --seconds 600 --out fuzz-findings
    python -m tests.fuzz --seed 7 --cases 2000 --workers 2
    python -m tests.fuzz --replay fuzz-findings/01-internal-.../reproducer.json

Exit 0 when no case ended in an internal error, a hang or a process over the
memory limit; 1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from tests.fuzz.campaign import Campaign, replay
from tests.fuzz.cases import Case, make_case
from tests.fuzz.pool import HANG_SECONDS, MEMORY_MB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=300.0, help="how long to fuzz (300)")
    parser.add_argument("--cases", type=int, help="stop after this many cases")
    parser.add_argument(
        "--seed", type=int, default=13, help="the seed; case i of a seed is always the same (13)"
    )
    parser.add_argument("--start", type=int, default=0, help="the first case's index (0)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument(
        "--out", type=Path, default=Path("fuzz-findings"), help="where findings go (fuzz-findings)"
    )
    parser.add_argument(
        "--minimise-seconds", type=float, default=60.0, help="per finding (60; 0: none)"
    )
    parser.add_argument(
        "--minimise-known",
        action="store_true",
        help="minimise the findings of tests/fuzz/known.py too (they have reproducers)",
    )
    parser.add_argument(
        "--hang-seconds",
        type=float,
        default=HANG_SECONDS,
        help=f"a case slower than this is a hang ({HANG_SECONDS:g})",
    )
    parser.add_argument(
        "--memory-mb",
        type=float,
        default=MEMORY_MB,
        help=f"a process larger than this is a finding ({MEMORY_MB:g})",
    )
    parser.add_argument(
        "--replay", type=Path, metavar="CASE_JSON", help="run one saved case and print its outcome"
    )
    parser.add_argument(
        "--case", metavar="SEED:INDEX", help="run one generated case and print its outcome"
    )
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # findings quote text that is not UTF-8
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")

    if args.replay or args.case:
        if args.replay:
            case = Case.from_json(json.loads(args.replay.read_text(encoding="utf-8")))
        else:
            seed, index = (int(part) for part in args.case.split(":"))
            case = make_case(seed, index)
        outcome = replay(case, hang_seconds=args.hang_seconds)
        print(json.dumps(outcome.to_json(), indent=2))
        return 1 if outcome.is_finding else 0

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with Campaign(
        args.seed,
        workers=args.workers,
        hang_seconds=args.hang_seconds,
        memory_mb=args.memory_mb,
        log=log,
    ) as campaign:
        report = campaign.fuzz(seconds=args.seconds, cases=args.cases, start=args.start)
        if args.minimise_seconds > 0 and report.findings:
            most = f"at most {args.minimise_seconds:g} s each, twice that for a hang"
            which = "every finding" if args.minimise_known else "the new findings"
            log(f"fuzz: minimising {which} ({most})")
            campaign.minimise(args.minimise_seconds, known_too=args.minimise_known)
        campaign.write(args.out)
    print(report.summary())
    print(f"\nfindings written to {args.out}/")
    return 1 if report.internal_errors or report.hangs or report.memory else 0


if __name__ == "__main__":
    sys.exit(main())
