"""Whether a run is still being run: by this process, or by another one.

A run's record names the process running it (host, pid, and the process's boot
and start time). Another process's run is alive while that process is; this
process's own runs are known by :data:`HERE`, which is per process by design:
``aoe serve`` runs many runs in one process, so a pid cannot tell them apart,
and ``recover`` in this process must not take a journal from under one of its
own recorders. Nothing outside this process can see it, and nothing in it
needs more than one.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class ThisProcess:
    """The runs this process is running now (the runner adds each as it starts
    and removes it once its record is final), and the journals its recorders
    are writing (each recorder, from its start to its join)."""

    def __init__(self) -> None:
        self.runs: set[str] = set()
        self.journals: set[Path] = set()


HERE = ThisProcess()
"""This process: see the module's docstring for why there is one."""


def run_alive(run_id: str, host: str | None, pid: int | None, process: str | None = None) -> bool:
    """Is the run still being run, here or by another process?"""
    return run_id in HERE.runs or process_alive(host, pid, process)


def process_alive(host: str | None, pid: int | None, process: str | None = None) -> bool:
    """Is the process that runs a run still there? Only knowable on its own host
    (a run of another host counts as alive: it may well be). A pid alone is not
    enough — a restarted container reuses pids — so the process's boot and start
    time must match too."""
    if pid is None:
        return False
    if host != socket.gethostname():
        return True
    if int(pid) == os.getpid():
        return False  # this process runs no run it has not started itself
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return process is None or identity(int(pid)) in (None, process)


def identity(pid: int) -> str | None:
    """The machine's boot id and the process's start time (Linux), or None."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return f"{boot}:{fields[19]}"  # field 22 of stat: start time in clock ticks
    except (OSError, IndexError):
        return None
