"""`aoe run` in a real terminal: tmux at 80 and 160 columns, the screen read
back with `capture-pane` (issue 16).

For a completed, a failed, a budget-stopped and an interrupted run, what is
left on the screen once the run is over (the final table, the header, the
outputs, the failures, the summary line and the command that goes on) is
compared with a snapshot kept in `tests/snapshots/terminal/`; run ids and
times are masked, everything else is as a person sees it. The runs are offline
(`--mock`: deterministic replies and prices). `AOE_UPDATE_SNAPSHOTS=1` writes
the snapshots anew.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, child_env

SNAPSHOTS = Path(__file__).parent / "snapshots" / "terminal"

if shutil.which("tmux") is None:
    if os.environ.get("AOE_REQUIRE_TMUX"):
        raise RuntimeError("AOE_REQUIRE_TMUX is set and tmux is not installed")
    pytest.skip("tmux is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow

WORKFLOWS = {
    "completed": """\
version: 1
name: brief
outputs:
  summary: "{{ agents.draft.output }}"
agents:
  research: {prompt: research tides, llm: {provider: mock, model: gpt-4o-mini, max_tokens: 60}}
  draft:
    prompt: "draft from {{ agents.research.output }}"
    depends_on: research
    llm: {provider: mock, model: gpt-4o, max_tokens: 400}
""",
    "failed": """\
version: 1
name: triage
defaults: {retry: {max_retries: 1, base_delay: 0}}
agents:
  classify:
    prompt: classify this
    llm: {provider: mock, model: gpt-4o-mini, max_tokens: 50, params: {reply: "not json"}}
    output: {format: json}
  reply: {prompt: "reply to {{ agents.classify.output }}", depends_on: classify,
          llm: {provider: mock, model: gpt-4o-mini, max_tokens: 50}}
""",
    "budget": """\
version: 1
name: costly
cost_budget: 0.01
agents:
  first: {prompt: first, llm: {provider: mock, model: gpt-4o, max_tokens: 500}}
  second:
    prompt: second
    depends_on: first
    llm: {provider: mock, model: gpt-4o, max_tokens: 4000}
""",
    "interrupted": """\
version: 1
name: slow
agents:
  quick: {prompt: quick, llm: {provider: mock, model: gpt-4o-mini, max_tokens: 20}}
  slow:
    prompt: slow
    depends_on: quick
    llm: {provider: mock, model: gpt-4o-mini, max_tokens: 20, params: {latency: 60}}
  after:
    prompt: after
    depends_on: slow
    llm: {provider: mock, model: gpt-4o-mini, max_tokens: 20}
""",
}
EXIT_CODES = {"completed": 0, "failed": 1, "budget": 3, "interrupted": 130}


def masked(screen: str) -> str:
    """The screen with what changes from run to run masked: run ids, times."""
    screen = re.sub(r"\b\d{8}-\d{6}-[0-9a-f]{6}\b", "RUN-ID", screen)
    screen = re.sub(r"\b\d+ min \d{2} s\b", "T", screen)
    screen = re.sub(r"\b\d+\.\d s\b", "T", screen)
    return "\n".join(line.rstrip() for line in screen.rstrip().splitlines()) + "\n"


def on_terminal(tmp_path: Path, scenario: str, width: int) -> tuple[int, str]:
    """``aoe run`` of the scenario's workflow in a tmux window ``width`` wide;
    its exit code and the screen once it is over."""
    folder = tmp_path / f"{scenario}-{width}"
    folder.mkdir()
    (folder / "wf.yaml").write_text(WORKFLOWS[scenario])
    env = child_env(AOE_MOCK_LATENCY="0.2", TERM="xterm-256color", NO_COLOR="1")
    for size in ("COLUMNS", "LINES"):  # the terminal's own size, not this shell's
        env.pop(size, None)
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    command = (
        f"cd {shlex.quote(str(folder))} && env -i {exports} {shlex.quote(sys.executable)} "
        "-m aoe run wf.yaml --mock --no-cache; echo EXIT=$?; sleep 600"
    )
    session = f"aoe-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", session]
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", session, "-x", str(width), "-y", "60", command],
        check=True,
        cwd=REPO,
    )
    try:
        screen = ""
        deadline = time.monotonic() + 60  # a hang guard
        interrupted = False
        while time.monotonic() < deadline:
            screen = subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
            slow = re.search(r"^slow\s+running", screen, re.MULTILINE)  # (its 60 s call)
            if scenario == "interrupted" and not interrupted and slow:
                time.sleep(0.5)
                subprocess.run([*tmux, "send-keys", "-t", session, "C-c"], check=True)
                interrupted = True
            found = re.search(r"^EXIT=(\d+)$", screen, re.MULTILINE)
            if found:
                return int(found.group(1)), screen[: found.start()]
            time.sleep(0.2)
        raise AssertionError(f"aoe run did not end within 60 s:\n{screen}")
    finally:
        subprocess.run([*tmux, "kill-server"], check=False, capture_output=True)


@pytest.mark.parametrize("width", [80, 160])
@pytest.mark.parametrize("scenario", ["completed", "failed", "budget", "interrupted"])
def test_the_end_of_a_run_on_a_terminal(tmp_path: Path, scenario: str, width: int) -> None:
    code, screen = on_terminal(tmp_path, scenario, width)
    assert code == EXIT_CODES[scenario], screen
    shown = masked(screen)
    assert all(len(line) <= width for line in shown.splitlines())
    assert "RUN-ID" in shown  # which run it was, on the screen
    snapshot = SNAPSHOTS / f"{scenario}-{width}.txt"
    if os.environ.get("AOE_UPDATE_SNAPSHOTS") or not snapshot.exists():
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        snapshot.write_text(shown)
        if not os.environ.get("AOE_UPDATE_SNAPSHOTS"):
            pytest.fail(f"no snapshot yet: wrote {snapshot}; look at it, and run again")
    assert shown == snapshot.read_text(), f"the screen changed (AOE_UPDATE_SNAPSHOTS=1):\n{shown}"
