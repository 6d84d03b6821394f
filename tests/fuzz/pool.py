"""The harness's side of the workers: each :class:`Slot` owns one worker process
and one listening socket on 127.0.0.1, and runs cases on them one at a time.

While a case runs the slot watches the clock and the memory of the worker
and of every process under it: a case that takes longer than ``hang_seconds``
is a hang, a process whose resident memory passes ``memory_mb`` a memory
finding. Either way the worker's stacks are dumped (``SIGUSR1``), its process
group is killed, and the next case starts a new worker. A worker that dies
on its own is a crash. Any connection to the slot's listener while a case
runs is a finding: cases name only that port, so nothing else answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from tests.fuzz.cases import REPO, Case
from tests.fuzz.worker import HEADER, Outcome, innermost_aoe_frame, remove_tree

HANG_SECONDS = 5.0
MEMORY_MB = 500.0
RETIRE_MB = 300.0
"""A worker that keeps this much after a case is replaced, so that what one case
leaves behind is not blamed on the next."""
START_SECONDS = 120.0
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE / 1e6
    except (OSError, IndexError, ValueError):
        return 0.0


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (its sandbox processes among them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Slot:
    """One worker process and its listener."""

    def __init__(
        self,
        number: int,
        root: Path,
        *,
        hang_seconds: float = HANG_SECONDS,
        memory_mb: float = MEMORY_MB,
    ) -> None:
        self.number = number
        self.root = root / f"worker-{number}"
        self.hang_seconds = hang_seconds
        self.memory_mb = memory_mb
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.process: subprocess.Popen[bytes] | None = None
        self._requests: IO[bytes] | None = None
        self._answers: IO[bytes] | None = None
        self.started = 0

    # -- the worker's life ------------------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        to_worker = os.pipe()
        from_worker = os.pipe()
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fuzz.worker",
                str(self.root),
                str(to_worker[0]),
                str(from_worker[1]),
            ],
            pass_fds=(to_worker[0], from_worker[1]),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(to_worker[0])
        os.close(from_worker[1])
        self._requests = os.fdopen(to_worker[1], "wb")
        self._answers = os.fdopen(from_worker[0], "rb")
        self.started += 1
        ready = self._read(START_SECONDS)
        if ready is None:
            self.stop()
            raise RuntimeError(f"fuzz worker {self.number} did not start")

    def stop(self) -> None:
        """Kill the worker and every process under it."""
        if self.process is None:
            return
        under = descendants(self.process.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in under:  # the sandbox's processes have sessions of their own
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        for stream in (self._requests, self._answers):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.process = self._requests = self._answers = None

    def close(self) -> None:
        self.stop()
        self.listener.close()
        # what the last case left (a state folder thousands deep, say): pytest's own
        # cleanup of its temporary folders recurses and could not remove it
        remove_tree(self.root)

    # -- one case ----------------------------------------------------------------------------

    def run(self, case: Case) -> Outcome:
        """Run ``case`` on this slot's worker (started if needed); its outcome."""
        if self.process is None:
            self.start()
        assert self.process is not None
        assert self._requests is not None
        request = json.dumps({"case": case.to_json(), "listener": self.address}).encode()
        connections: list[str] = []
        try:
            self._requests.write(HEADER.pack(len(request)) + request)
            self._requests.flush()
        except OSError:
            outcome = self._died()
            self.stop()
            return outcome
        started = time.monotonic()
        peak = 0.0
        checks = 0
        watched: list[int] = [self.process.pid]
        assert self._answers is not None
        answer_fd = self._answers.fileno()
        listener_fd = self.listener.fileno()
        while True:
            readable, _, _ = select.select([answer_fd, listener_fd], [], [], 0.02)
            if listener_fd in readable:
                connections += self._accept()
            if answer_fd in readable:
                body = self._read(1.0)
                if body is None:
                    outcome = self._died()
                    self.stop()
                else:
                    outcome = Outcome.from_json(json.loads(body))
                    if outcome.verdict == "crash":  # the worker said why it stops
                        self.stop()
                break
            checks += 1
            if checks % 10 == 1:
                watched = [self.process.pid, *descendants(self.process.pid)]
            for pid in watched:
                peak = max(peak, rss_mb(pid))
            elapsed = time.monotonic() - started
            if peak > self.memory_mb:
                outcome = self._kill("memory", f"a process grew past {self.memory_mb:.0f} MB")
                break
            if elapsed > self.hang_seconds:
                outcome = self._kill("hang", f"no answer within {self.hang_seconds:g} s")
                break
        connections += self._accept()
        if self.process is not None:  # a case quicker than one look: its worker after it
            peak = max(peak, rss_mb(self.process.pid))
        outcome.rss_mb = max(outcome.rss_mb, peak)
        if peak > self.memory_mb and outcome.verdict != "memory":
            outcome.verdict = "memory"
            outcome.error = f"a process grew past {self.memory_mb:.0f} MB"
        if connections:
            outcome.verdict = "network"
            outcome.error = "the harness's listener was connected to"
            outcome.where = ""
            outcome.events = connections + outcome.events
        if self.process is not None and rss_mb(self.process.pid) > RETIRE_MB:
            self.stop()
        return outcome

    def _accept(self) -> list[str]:
        """Take every pending connection, note what it sent first, answer 404."""
        seen: list[str] = []
        while True:
            try:
                connection, peer = self.listener.accept()
            except BlockingIOError:
                return seen
            with connection:
                connection.settimeout(0.2)
                try:
                    first = connection.recv(200)
                    connection.sendall(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    first = b""
            line = first.split(b"\r\n", 1)[0].decode("latin-1")
            seen.append(f"listener: connection from {peer[0]}: {line!r}")

    def _kill(self, verdict: str, error: str) -> Outcome:
        """Dump the worker's stacks, kill it; the outcome says where it was."""
        assert self.process is not None
        stack_file = self.root / "stack.txt"
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGUSR1)
        # a process inside one long system call (reading 3 GB, say) dumps when it returns
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if stack_file.exists() and stack_file.stat().st_size > 0:
                time.sleep(0.05)  # let it finish writing every thread
                break
            time.sleep(0.01)
        call = _system_call(self.process.pid)
        self.stop()
        stack = stack_file.read_text("utf-8", "replace") if stack_file.exists() else ""
        if not stack and call:  # no dump: the process never left a system call
            error += f" (inside a {call} system call)"
        main = _main_thread(stack)
        if verdict == "hang":  # held by aoe's code, or waiting (on a child, a timer)
            top = main.split("\n", 2)[1] if main.count("\n") >= 1 else ""
            error += " (waiting)" if "selectors.py" in top else " (busy)"
        return Outcome(
            verdict=verdict,
            error=error,
            where=innermost_aoe_frame(main, most_recent_first=True),
            detail=stack[:8000],
            seconds=self.hang_seconds if verdict == "hang" else 0.0,
        )

    def _died(self) -> Outcome:
        assert self.process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        code = self.process.returncode
        crash_file = self.root / "crash.txt"
        crash = crash_file.read_text("utf-8", "replace") if crash_file.exists() else ""
        how = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
        return Outcome(
            verdict="crash",
            error=f"the worker died ({how})",
            where=innermost_aoe_frame(_main_thread(crash), most_recent_first=True),
            detail=crash[-8000:],
        )

    def _read(self, timeout: float) -> bytes | None:
        """One framed answer from the worker, or None when it is gone or silent."""
        assert self._answers is not None
        fd = self._answers.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        need = HEADER.size
        size = None
        while len(data) < need:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, need - len(data))
            if not chunk:
                return None
            data += chunk
            if size is None and len(data) == HEADER.size:
                (size,) = HEADER.unpack(data)
                need += size
                deadline = time.monotonic() + max(timeout, 10.0)
        return data[HEADER.size :]


_CALLS = {"0": "read", "1": "write", "7": "poll", "9": "mmap", "61": "wait4", "202": "futex",
          "232": "epoll_wait", "257": "openat", "270": "pselect6"}  # fmt: skip


def _system_call(pid: int) -> str:
    """The system call a process is inside (Linux x86-64 numbers), or ""."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            number = f.read().split()[0]
    except (OSError, IndexError):
        return ""
    if number == "running":
        return ""
    return _CALLS.get(number, f"number {number}")


def _main_thread(dump: str) -> str:
    """The part of a faulthandler dump about the thread that was running aoe's
    command (the one with the worker's frames below it)."""
    blocks = dump.split("\n\n")
    for block in blocks:
        if "fuzz/worker.py" in block:
            return block
    return blocks[-1] if blocks else ""


def scratch_root() -> Path:
    """A folder for the workers' files, removed by the caller."""
    return Path(tempfile.mkdtemp(prefix="aoe-fuzz-"))
