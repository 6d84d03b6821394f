"""How heavy the HTML run report is: a 1,000-agent run's, against a 4-agent one's.

Issue 16's goal: the report of a 1,000-agent run opens (DOMContentLoaded) in
under 2 s in a browser and weighs under 2 MB. Measured here: a mock run of
1,000 agents in 10 layers of 100 (each depending on one of the layer before)
and, as the baseline of the same hour, a mock run of the shipped
research-brief workflow; each report is written by ``aoe report``, then
opened in Debian's chromium (headless, through Playwright) several times:
the median time from navigation to the end of DOMContentLoaded, and to
``load``. Also the time ``aoe report`` takes to write each.

Run with ``make bench`` or ``python bench/report.py`` (needs chromium).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPENINGS = 7


def wide(folder: Path, layers: int = 10, width: int = 100) -> Path:
    lines = ["version: 1", "name: wide", "max_parallel_agents: 50", "agents:"]
    for layer in range(layers):
        for i in range(width):
            needs = f", depends_on: [l{layer - 1}_{i}]" if layer else ""
            lines.append(
                f"  l{layer}_{i}: {{prompt: 'step {layer} of item {i}', "
                f"llm: {{provider: mock, model: gpt-4o-mini, params: {{latency: 0}}}}{needs}}}"
            )
    path = folder / "wide.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def aoe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aoe", *args], env=env, capture_output=True, text=True, check=True
    )


def report_of(folder: Path, env: dict[str, str], workflow: Path, name: str) -> tuple[Path, float]:
    aoe(env, "run", str(workflow), "--mock", "-q", "--no-cache")
    run_id = aoe(env, "runs", "list", "-n", "1", "-f", "json").stdout.split('"run_id": "')[1]
    run_id = run_id.split('"')[0]
    path = folder / f"{name}.html"
    began = time.perf_counter()
    aoe(env, "report", run_id, "-o", str(path))
    return path, time.perf_counter() - began


def openings(browser: object, path: Path) -> tuple[float, float]:
    """Median milliseconds to DOMContentLoaded's end and to load's, over OPENINGS."""
    loaded, whole = [], []
    for _ in range(OPENINGS):
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(path.as_uri(), wait_until="load")
        timing = page.evaluate(
            "(() => { const n = performance.getEntriesByType('navigation')[0];"
            " return [n.domContentLoadedEventEnd, n.loadEventEnd]; })()"
        )
        loaded.append(timing[0])
        whole.append(timing[1])
        page.close()
    return statistics.median(loaded), statistics.median(whole)


def main() -> int:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("report: chromium is not installed (apt-get install chromium): skipped")
        return 0
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        env = {**os.environ, "AOE_STATE_DIR": str(folder / "state"), "PYTHONPATH": str(REPO)}
        small, small_took = report_of(
            folder, env, REPO / "workflows" / "research-brief.yaml", "small"
        )
        large, large_took = report_of(folder, env, wide(folder), "large")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                base = openings(browser, small)
                figures = openings(browser, large)
            finally:
                browser.close()
        size = large.stat().st_size
        print("report of a run (Debian chromium, headless; medians of 7 openings)")
        print(
            f"  4 agents (baseline): {small.stat().st_size / 1024:8.1f} KiB, "
            f"DOMContentLoaded {base[0]:7.1f} ms, load {base[1]:7.1f} ms, "
            f"aoe report {small_took * 1000:.0f} ms"
        )
        print(
            f"  1,000 agents:        {size / 1024:8.1f} KiB, "
            f"DOMContentLoaded {figures[0]:7.1f} ms, load {figures[1]:7.1f} ms, "
            f"aoe report {large_took * 1000:.0f} ms"
        )
        print(f"  ratio to the baseline: DOMContentLoaded {figures[0] / base[0]:.1f}x")
        met = figures[0] < 2000 and size < 2_000_000
        print(f"  goal (< 2 s to DOMContentLoaded, < 2 MB): {'met' if met else 'MISSED'}")
        return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
