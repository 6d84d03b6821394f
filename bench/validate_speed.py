"""How fast ``aoe validate`` is, against baselines measured in the same run.

Times the real command (a fresh process each time, as a user runs it) on the
format's example workflow and on a generated 5,000-agent workflow, and prints
the best and median of several runs next to:

- the bare interpreter (``python -c pass``): what any Python CLI pays;
- ``yaml.safe_load`` of the same file with libyaml: reading the YAML and
  nothing else, the least any validator must do.

It also lists what ``aoe validate`` imports (``python -X importtime``) and
checks that no vendor SDK, Redis or Prometheus client is among them. Wall time
on a shared machine varies by a third from minute to minute; with
``--instructions`` the script also counts instructions under callgrind
(valgrind), which do not vary, against the same baselines plus the imports
aoe cannot do without (pydantic, PyYAML, typer).

Goals (issue 2): small file under 0.3 s wall, 5,000 agents under 2 s.
Run with ``make bench`` (or ``python bench/validate_speed.py [--runs N]``).
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen import layered_workflow

REPO = Path(__file__).resolve().parent.parent
SMALL = REPO / "workflows" / "competitor-brief.yaml"
FORBIDDEN = ("openai", "anthropic", "redis", "prometheus_client")
GOALS = {"small": 0.3, "large": 2.0}


def timed(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one run of ``command``."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            raise SystemExit(f"failed: {' '.join(command)}\n{errors.read().decode()}")
    return elapsed, usage.ru_maxrss


def measure(command: list[str], runs: int) -> tuple[float, float, int]:
    """Best and median wall time, and the largest peak RSS, over ``runs`` runs."""
    timed(command)  # warm the file cache
    results = [timed(command) for _ in range(runs)]
    times = [t for t, _ in results]
    return min(times), statistics.median(times), max(r for _, r in results)


def imports(command: list[str]) -> tuple[list[tuple[str, float]], set[str]]:
    """Top-level packages imported by ``command``, with their import time (ms)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *command], capture_output=True, text=True, check=True
    )
    own: Counter[str] = Counter()  # microseconds
    names: set[str] = set()
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if match:
            name = match.group(2)
            names.add(name)
            own[name.split(".")[0]] += int(match.group(1))
    return [(name, us / 1000) for name, us in own.most_common()], names


def instructions(command: list[str]) -> int:
    """Instructions executed by ``command``, counted by callgrind."""
    with tempfile.TemporaryDirectory() as folder:
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/out", *command],
            capture_output=True,
            text=True,
            check=True,
        )
    match = re.search(r"Collected : (\d+)", result.stderr)
    if match is None:
        raise SystemExit(f"no instruction count from valgrind:\n{result.stderr}")
    return int(match.group(1))


def count_instructions(python: str, aoe: list[str], large: Path) -> None:
    floor = "from pydantic import BaseModel; import yaml, typer"
    rows = [
        ("python -c pass", [python, "-c", "pass"]),
        ("import pydantic, yaml, typer", [python, "-c", floor]),
        ("aoe validate, small file", [*aoe, "validate", str(SMALL)]),
        ("aoe validate, large file", [*aoe, "validate", str(large)]),
    ]
    print("\ninstructions (callgrind; the same from run to run):")
    counts = {}
    for label, command in rows:
        counts[label] = instructions(command)
        print(f"  {label:40s} {counts[label] / 1e6:8,.0f} M")
    small = counts["aoe validate, small file"]
    floor_count = counts["import pydantic, yaml, typer"]
    print(
        f"  small file: {small / floor_count:.2f}x the imports aoe cannot do without; "
        f"{(small - floor_count) / 1e6:,.0f} M instructions are aoe's own"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs per command")
    parser.add_argument("--agents", type=int, default=5000, help="agents in the large file")
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions with callgrind"
    )
    args = parser.parse_args()

    # An installed package has compiled bytecode; make sure ours has it too,
    # even where PYTHONDONTWRITEBYTECODE is set.
    compileall.compile_dir(str(REPO / "aoe"), quiet=1)
    python = sys.executable
    aoe = [python, "-m", "aoe"]

    with tempfile.TemporaryDirectory() as folder:
        large = Path(folder) / f"generated-{args.agents}.yaml"
        large.write_text(layered_workflow(args.agents), encoding="utf-8")
        size_kib = large.stat().st_size / 1024
        load = "import sys, yaml; yaml.load(open(sys.argv[1]), Loader=yaml.CSafeLoader)"

        rows = [
            ("python -c pass (interpreter start)", [python, "-c", "pass"], None),
            ("yaml.safe_load, small file", [python, "-c", load, str(SMALL)], None),
            ("aoe validate, small file", [*aoe, "validate", str(SMALL)], "small"),
            (f"yaml.safe_load, {args.agents} agents", [python, "-c", load, str(large)], None),
            (f"aoe validate, {args.agents} agents", [*aoe, "validate", str(large)], "large"),
        ]
        print(f"aoe validate benchmark: best and median of {args.runs} runs, wall time")
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
            f"large file: {args.agents} agents, {size_kib:,.0f} KiB\n"
        )
        figures: dict[str, float] = {}
        for label, command, goal in rows:
            best, median, rss = measure(command, args.runs)
            figures[label] = best
            verdict = ""
            if goal is not None:
                limit = GOALS[goal]
                verdict = f"goal < {limit:.1f} s: {'met' if median < limit else 'MISSED'}"
            print(
                f"  {label:40s} best {best:6.3f} s  median {median:6.3f} s  "
                f"peak RSS {rss / 1024:5.0f} MiB  {verdict}"
            )

        start = figures["python -c pass (interpreter start)"]
        small = figures["aoe validate, small file"]
        big = figures[f"aoe validate, {args.agents} agents"]
        big_yaml = figures[f"yaml.safe_load, {args.agents} agents"]
        print("\nratios (best against best):")
        print(
            f"  small file: {small / start:5.1f}x the bare interpreter "
            f"({(small - start) * 1000:.0f} ms of aoe)"
        )
        print(
            f"  {args.agents} agents: {big / big_yaml:5.2f}x yaml.safe_load of the same file "
            f"({(big - big_yaml) / args.agents * 1e6:.0f} us per agent beyond reading YAML)"
        )

        packages, names = imports([*aoe[1:], "validate", str(SMALL)])
        print("\nimported by `aoe validate` (small file), by own import time:")
        print("  " + ", ".join(f"{name} {ms:.0f} ms" for name, ms in packages[:14]))
        heavy = sorted({n.split(".")[0] for n in names} & set(FORBIDDEN))
        print(f"  vendor SDKs, redis, prometheus_client imported: {heavy or 'none'}")
        if heavy:
            raise SystemExit(1)
        if args.instructions:
            count_instructions(python, aoe, large)


if __name__ == "__main__":
    main()
