"""Every command of the README, run as written.

The commands are read from the README's ``sh`` blocks, and each is run with
bash in a folder laid out as the repository (its ``.venv``, ``workflows/`` and
``config/``), in order, block by block: a command added to the README is run
here, or this test fails until it says why it is not. What stands for the
reader's own values is replaced by real ones, and nothing else: an API key
(``sk-...``, the fake provider's here, which the SDKs reach through
``OPENAI_BASE_URL``/``ANTHROPIC_BASE_URL``), a run id, ``nightly.yaml`` (a
workflow of one's own), and port 8000 (a free one: tests run side by side).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ANTHROPIC_KEY, OPENAI_KEY, REPO, child_env
from tests.fakeserver import FakeProvider, Reply

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

# not run here, and why
NOT_RUN = {
    "make test": "it is this test suite",
    "make test-fast": "a part of this test suite",
    "pipx install .": "it installs aoe for the user; `make run` runs the same pip install",
}


def commands() -> list[list[str]]:
    """The README's ``sh`` blocks, each a list of commands: a backslash joins
    lines, a comment after two spaces is dropped."""
    blocks: list[list[str]] = []
    inside = False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = not inside and line.strip() in ("```sh", "```bash")
            if inside:
                blocks.append([])
            continue
        if inside:
            blocks[-1].append(line)
    found = []
    for block in blocks:
        joined = "\n".join(block).replace("\\\n", " ")
        found.append(
            [
                re.sub(r"\s{2,}#.*$", "", line).strip()
                for line in joined.splitlines()
                if line.strip() and not line.strip().startswith("#")
            ]
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Shell:
    """Commands run with bash in a folder laid out as the repository."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.background: list[subprocess.Popen[bytes]] = []
        self.ran: list[str] = []

    def __call__(self, command: str, *, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {command}"],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert "Traceback" not in done.stderr, f"{command}\n{done.stderr}"
        if ok:
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done

    def start(self, command: str) -> None:
        self.background.append(
            subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=self.folder,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def stop(self) -> None:
        for process in self.background:
            process.terminate()
            process.wait(timeout=30)


def test_every_readme_command_runs_as_written(fake: FakeProvider, tmp_path: Path) -> None:
    # the providers answer as models would: the brief in JSON, the rest in words
    fake.respond = lambda request: (
        Reply(json={"summary": "Bikes sell.", "risks": ["batteries"]})
        if request.prompt.startswith("Trends:")
        else Reply()
    )
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / ".venv").symlink_to(REPO / ".venv")
    for name in ("workflows", "config"):
        shutil.copytree(REPO / name, folder / name)
    shutil.copy(REPO / "workflows" / "competitor-brief.yaml", folder / "nightly.yaml")
    port = free_port()
    env = child_env(
        AOE_STATE_DIR=str(tmp_path / "state"),
        AOE_MOCK_LATENCY="0",
        OPENAI_BASE_URL=fake.openai_url,
        ANTHROPIC_BASE_URL=fake.anthropic_url,
        PROMETHEUS_PORT=str(port),
        PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
    )
    shell = Shell(folder, env)
    run_id = ""
    handled: list[str] = []
    try:
        for block in commands():
            for written in block:
                handled.append(written)
                if written in NOT_RUN:
                    continue
                command = written.replace("localhost:8000", f"localhost:{port}")
                command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                if command.startswith("make "):
                    done = subprocess.run(
                        command.split(), cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600,
                    )  # fmt: skip
                    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
                    continue
                if command.startswith("export OPENAI_API_KEY="):
                    env["OPENAI_API_KEY"] = OPENAI_KEY
                    continue
                if command.startswith("export ANTHROPIC_API_KEY="):
                    env["ANTHROPIC_API_KEY"] = ANTHROPIC_KEY
                    continue
                if "aoe resume 20261127-101500-3fa2c1" in command:
                    # a run stopped by its budget, to resume as the README says
                    stopped = shell(
                        ".venv/bin/aoe run workflows/competitor-brief.yaml --mock "
                        "--budget 0.0001 -q -o -",
                        ok=False,
                    )
                    assert stopped.returncode == 3, stopped.stderr  # budget_exceeded
                    command = command.replace(
                        "20261127-101500-3fa2c1", json.loads(stopped.stdout)["run_id"]
                    )
                if "RUN_ID" in command:
                    command = command.replace("RUN_ID", run_id)
                if command.endswith("&"):
                    shell.start(command[:-1].strip())
                    deadline = time.monotonic() + 30
                    while shell(f"curl -sf localhost:{port}/health/live", ok=False).returncode:
                        assert time.monotonic() < deadline, "aoe serve did not start"
                        time.sleep(0.2)
                    continue
                if "dot -Tsvg" in command and shutil.which("dot") is None:
                    if os.environ.get("AOE_REQUIRE_GRAPHVIZ"):
                        raise AssertionError("AOE_REQUIRE_GRAPHVIZ is set and dot is missing")
                    continue
                done = shell(command)
                if "/api/v1/runs -H" in command:  # the run the service took
                    run_id = json.loads(done.stdout)["run_id"]
                    assert run_id
                if command.endswith("--output results.json"):
                    results = json.loads((folder / "results.json").read_text())
                    assert results["status"] == "completed"
                    assert results["inputs"]["region"] == "Europe"
                if "resume" in command and "--budget 10" in command:
                    assert "completed" in done.stderr
                if "dot -Tsvg" in command:
                    assert (folder / "graph.svg").read_text().startswith("<?xml")
                if "/events" in command:
                    assert "event: RunFinished" in done.stdout
    finally:
        shell.stop()
    # every command was met: run, or said why not
    assert set(NOT_RUN) <= set(handled)
    assert len(handled) >= 20
    assert fake.received  # the key-and-run block reached the (fake) providers
