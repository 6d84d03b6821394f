"""A real Redis server for the tests, on 127.0.0.1 and a free port, with no
persistence; it can be stopped and started again on the same port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    def __init__(self, folder: Path, *, persistent: bool = False) -> None:
        """``persistent``: an append-only file, so a restart keeps the data (as
        the deployments here run it)."""
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("AOE_REQUIRE_REDIS"):
                raise AssertionError("redis-server is required here (AOE_REQUIRE_REDIS)")
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.folder = folder
        self.persistent = persistent
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.persistent else "no", "--dir", str(self.folder),
                "--protected-mode", "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("redis-server did not start")
            time.sleep(0.02)

    def flush(self) -> None:
        """Empty every database (FLUSHALL), as a fresh server would be."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"FLUSHALL\r\n")
            answer = s.recv(64)
        if not answer.startswith(b"+OK"):
            raise AssertionError(f"FLUSHALL: {answer!r}")

    def pending(self, stream: str = "aoe:{queue}:runs", group: str = "workers") -> int:
        """Messages of the work queue delivered and not yet acknowledged."""
        import redis

        client = redis.Redis(port=self.port)
        try:
            count: int = client.xpending(stream, group)["pending"]
            return count
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None
