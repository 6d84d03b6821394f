"""The worker process: runs cases through the ``aoe`` command line in-process
and says what a user would have seen.

Started by :mod:`tests.fuzz.pool` as ``python -m tests.fuzz.worker ROOT IN OUT``
(two pipe descriptors); it reads a case, writes its files under ``ROOT/case``,
runs the command with typer's ``CliRunner`` (so exit codes and messages are
the real ones) and answers with an :class:`Outcome`. What it watches besides
the exit code and the text:

- everything written to the process's own stdout and stderr descriptors
  (a sandbox child, a C library, a thread) is captured too;
- an audit hook records any socket connection or name lookup (and refuses
  those not to 127.0.0.1, so no case reaches the network) and any file opened
  under ``ROOT/outside``, the folder of canary files no case may read;
- ``SIGUSR1`` dumps every thread's stack to ``ROOT/stack.txt``, for the
  parent to see where a hang or a memory blow-up was when it kills the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import logging
import math
import os
import re
import signal
import struct
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.fuzz.cases import SENTINEL, Case


def remove_tree(root: Path) -> None:
    """``shutil.rmtree(root, ignore_errors=True)`` without recursion: a case may leave
    folders thousands deep (an AOE_STATE_DIR of x/x/x/...), which rmtree cannot
    descend in Python 3.11."""
    stack, folders = [str(root)], []
    while stack:
        top = stack.pop()
        folders.append(top)
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


HEADER = struct.Struct(">I")
CANARY = "aoe-fuzz-canary-5b1e7d"
"""Text of the files under ``outside/``: seen in any output, a file was read."""
KEEP = 4000
"""Characters of stdout and stderr an outcome keeps."""
REPO = Path(__file__).resolve().parent.parent.parent
_AOE = str(REPO / "aoe") + os.sep
_BUG = re.compile(
    # what aoe says of its own bugs: the command line's last resort, or a file's
    # checks stopped by an exception and reported as that file's error
    r"internal error: ([A-Za-z_][\w.]*)|could not check this file \(([A-Za-z_][\w.]*)"
    r"|this is a bug in aoe()",
    re.IGNORECASE,
)
_CHAINED = re.compile(
    r"\nThe above exception was the direct cause|\nDuring handling of the above exception"
)
_LOOPBACK = {"127.0.0.1", "localhost", "::1", None, b"127.0.0.1", b"localhost"}

TRUSTED = ("config", "env")
"""Case families whose files aoe trusts: the engine config and the environment."""
FINDINGS = ("network", "file-read", "leak", "internal", "crash", "hang", "memory")
"""Verdicts that are findings, most severe first; "ok", "user-error" and
"run-failed" are what a user may rightly see."""


@dataclass
class Outcome:
    """What happened to one case."""

    verdict: str
    error: str = ""
    where: str = ""
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    detail: str = ""
    seconds: float = 0.0
    rss_mb: float = 0.0
    events: list[str] = field(default_factory=list)

    @property
    def is_finding(self) -> bool:
        return self.verdict in FINDINGS

    @property
    def signature(self) -> str:
        """What makes two findings the same: the verdict, the error and where it is."""
        return f"{self.verdict}|{self.error}|{self.where}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(**data)


def innermost_aoe_frame(text: str, most_recent_first: bool = False) -> str:
    """``aoe/loader.py:function`` of the deepest aoe frame of a traceback (or of a
    faulthandler dump, whose frames come most recent first); "" without one."""
    if not most_recent_first:  # a chained traceback prints the root cause first
        blocks = _CHAINED.split(text)
        text = next((block for block in blocks if _AOE in block), blocks[0])
    frames: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("File ") or _AOE not in line:
            continue
        path = line.split('"')[1] if '"' in line else line.split()[1]
        function = line.rsplit(" in ", 1)[-1] if " in " in line else "?"
        frames.append(f"aoe/{path[len(_AOE) :]}:{function}")
    if not frames:
        return ""
    return frames[0] if most_recent_first else frames[-1]


def exception_type(text: str) -> str:
    """The exception named at the end of a traceback (of its root cause when
    chained), else ""."""
    for line in reversed(_CHAINED.split(text, 1)[0].strip().splitlines()):
        head = line.split(":", 1)[0].strip()
        if head and head.replace(".", "").replace("_", "").isalnum() and " " not in head:
            return head.rsplit(".", 1)[-1]
    return ""


# -- what the worker watches ------------------------------------------------------------------


class _Watch:
    """Audit events of the case running now (the hook cannot be removed, so it
    records only while ``active``)."""

    def __init__(self, outside: Path) -> None:
        self.outside = str(outside.resolve()) + os.sep
        self.active = False
        self.events: list[str] = []

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event == "socket.connect":
            address = args[1]
            host = address[0] if isinstance(address, tuple) else None
            if isinstance(address, str | bytes):  # a Unix socket
                return
            self.events.append(f"network: connect to {address!r}")
            if host not in _LOOPBACK:
                raise OSError("the fuzz harness refuses connections beyond 127.0.0.1")
        elif event == "socket.getaddrinfo":
            self.events.append(f"network: name lookup of {args[0]!r}")
            if args[0] not in _LOOPBACK:
                raise OSError("the fuzz harness refuses name lookups")
        elif event == "open" and isinstance(args[0], str | bytes):
            try:
                path = os.path.realpath(os.fsdecode(args[0]))
            except (ValueError, OSError):
                return
            if (path + os.sep).startswith(self.outside):
                self.events.append(f"file-read: opened {path}")


class _VirtualTime:
    """The engine's own waits (retry backoff, rate limits) pass at once on a
    virtual clock, so that a run waiting as its config asks is not taken for a
    hang; a wait that would never end (``inf``, ``nan``) is recorded instead."""

    def __init__(self, watch: _Watch) -> None:
        self.offset = 0.0
        self.watch = watch

    def install(self) -> None:
        from aoe.policy import limits

        virtual = self

        def now(clock: object) -> float:
            return time.monotonic() + virtual.offset

        async def sleep(clock: object, seconds: float) -> None:
            if not math.isfinite(seconds):
                frames = "".join(traceback.format_stack(limit=12))
                virtual.watch.events.append(
                    f"wait: the engine was asked to wait {seconds!r} s at "
                    f"{innermost_aoe_frame(frames)}"
                )
            elif seconds > 0:
                virtual.offset += seconds
            await asyncio.sleep(0)

        limits.SystemClock.now = now  # type: ignore[method-assign,assignment]
        limits.SystemClock.sleep = sleep  # type: ignore[method-assign,assignment]


class Worker:
    """Runs cases in ``root/case``; canary files in ``root/outside``."""

    def __init__(self, root: Path) -> None:
        from typer.testing import CliRunner

        self.root = root
        self.folder = root / "case"
        self.outside = root / "outside"
        self.outside.mkdir(parents=True, exist_ok=True)
        (self.outside / "secret.md").write_text(f"{CANARY}\n", encoding="utf-8")
        (self.outside / "credentials.json").write_text(
            json.dumps({"type": "service_account", "private_key": CANARY}), encoding="utf-8"
        )
        (root / "home").mkdir(exist_ok=True)
        self.capture = open(root / "fd.log", "w+b")  # noqa: SIM115 - the process's lifetime
        self.watch = _Watch(self.outside)
        sys.addaudithook(self.watch.hook)
        _VirtualTime(self.watch).install()
        self.runner = CliRunner()
        self._trashed = 0  # folders of earlier cases moved aside, to be removed
        self.base_env = _clean_environment(root)

    # -- one case -------------------------------------------------------------------------

    def run(self, case: Case, listener: str) -> Outcome:
        env = self._materialise(case, listener)
        os.chdir(self.folder)
        self.capture.seek(0)
        self.capture.truncate()
        self.watch.events = []
        self.watch.active = True
        started = time.perf_counter()
        try:
            exit_code, stdout, stderr, uncaught = self._invoke(case.command, env)
        finally:
            self.watch.active = False
            _reset_logging()
        seconds = time.perf_counter() - started
        self.capture.flush()
        self.capture.seek(0)
        raw = self.capture.read().decode("utf-8", "replace")
        outcome = self._classify(case, exit_code, stdout, stderr + raw, uncaught)
        outcome.seconds = seconds
        outcome.events = self.watch.events[:20]
        if outcome.verdict == "internal" and not uncaught:
            self._locate(case, env, outcome)
        os.chdir(self.root)
        return outcome

    def _invoke(
        self, command: tuple[str, ...], env: dict[str, str]
    ) -> tuple[int | None, str, str, str]:
        from aoe.cli.app import app

        try:
            result = self.runner.invoke(app, list(command), env=env, catch_exceptions=False)
        except BaseException as error:  # what escaped the command line: always a bug
            if isinstance(error, KeyboardInterrupt | SystemExit):
                raise
            return None, "", "", "".join(traceback.format_exception(error))
        return result.exit_code, result.stdout, result.stderr, ""

    def _locate(self, case: Case, env: dict[str, str], outcome: Outcome) -> None:
        """Run an internal error again with ``--debug``: its traceback says where."""
        os.chdir(self.folder)
        try:
            _, stdout, stderr, uncaught = self._invoke(("--debug", *case.command), env)
        finally:
            _reset_logging()
        text = uncaught or stderr + stdout
        if "Traceback" in text:
            outcome.detail = _tail(text, 8000)
            outcome.where = innermost_aoe_frame(text)
            outcome.error = outcome.error or exception_type(text)

    def _materialise(self, case: Case, listener: str) -> dict[str, str]:
        """The case's files under ``root/case`` (placeholders filled in); its environment."""
        self._clear(self.folder)
        self._clear(self.root / "state")  # each case on a new store
        self.folder.mkdir(parents=True)
        fill = {b"@LISTENER@": listener.encode(), b"@OUTSIDE@": str(self.outside).encode()}

        def filled(data: bytes) -> bytes:
            for placeholder, value in fill.items():
                data = data.replace(placeholder, value)
            return data

        for name, data in case.files.items():
            path = self.folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(filled(data))
        for name in case.fifos:
            os.mkfifo(self.folder / name)
        for name, size in case.sparse.items():
            with open(self.folder / name, "wb") as f:
                f.truncate(size)
        for name, target in case.symlinks.items():
            os.symlink(filled(target.encode()).decode(), self.folder / name)
        env = dict(self.base_env)
        for name, value in case.env.items():
            env[name] = filled(value.encode("utf-8", "surrogateescape")).decode(
                "utf-8", "surrogateescape"
            )
        if case.command[0] == "run" and self._state_dir_elsewhere(case):
            env["AOE_STATE_DIR"] = str(self.root / "state")
        return env

    def _clear(self, folder: Path) -> None:
        """Move what the last case left in ``folder`` aside (a rename: at once) and
        remove it on a thread. Removed here, it was charged to the next case: a
        state folder 2,000 deep took over its 5 s to remove on a busy disk."""
        if not folder.exists():
            return
        self._trashed += 1
        aside = self.root / "trash" / str(self._trashed)
        aside.parent.mkdir(exist_ok=True)
        try:
            folder.rename(aside)
        except OSError:
            remove_tree(folder)
            return
        threading.Thread(target=remove_tree, args=(aside,), daemon=True).start()

    def _state_dir_elsewhere(self, case: Case) -> bool:
        """Whether a run would write its store outside this worker's folder (an
        absolute ``state_dir`` in the case's config): it then writes here instead."""
        import yaml

        data = case.files.get("config.yaml")
        if data is None:
            return False
        try:
            state = yaml.safe_load(data)["engine"]["state_dir"]
        except Exception:
            return "/" in data.decode("utf-8", "replace")  # unreadable: play safe
        if not isinstance(state, str):  # refused by aoe as it is
            return False
        return state.startswith(("/", "~")) and not state.startswith(str(self.root))

    # -- what the user saw ---------------------------------------------------------------

    def _classify(
        self, case: Case, exit_code: int | None, stdout: str, stderr: str, uncaught: str
    ) -> Outcome:
        results = self.folder / "results.json"
        written = ""
        if results.is_file() and not results.is_symlink():
            written = results.read_text("utf-8", "replace")[:5_000_000]
        outcome = Outcome(
            verdict="ok", exit_code=exit_code, stdout=_tail(stdout), stderr=_tail(stderr)
        )
        verb = case.command[0]
        shown = stdout + stderr
        events = self.watch.events
        # the engine config and the environment are trusted (a config file may be
        # anywhere, and its own errors may quote it); workflows and inputs are not
        untrusted = case.family not in TRUSTED
        if any(e.startswith("network") for e in events):
            outcome.verdict, outcome.error = "network", "a connection or a name lookup"
        elif untrusted and any(e.startswith("file-read") for e in events):
            outcome.verdict, outcome.error = "file-read", "a file outside the folder was opened"
        elif untrusted and (CANARY in shown or CANARY in written or CANARY in uncaught):
            outcome.verdict, outcome.error = "leak", "a canary file's text was shown"
        elif waits := [e for e in events if e.startswith("wait:")]:
            outcome.verdict, outcome.error = "hang", "the engine would wait forever"
            outcome.where = waits[0].rsplit(" at ", 1)[-1]
        elif uncaught:
            outcome.verdict, outcome.error = "internal", exception_type(uncaught)
            outcome.where = innermost_aoe_frame(uncaught)
            outcome.detail = _tail(uncaught, 8000)
        elif "Traceback (most recent call last)" in shown and not _debug(case):
            outcome.verdict, outcome.error = "internal", "a traceback was printed"
            outcome.where = innermost_aoe_frame(shown)
            outcome.detail = _tail(shown, 8000)
        elif (bug := _BUG.search(shown)) is not None:
            outcome.verdict, outcome.error = (
                "internal",
                bug.group(1) or bug.group(2) or "a bug was reported",
            )
        elif exit_code == 0:
            outcome.verdict = "ok"
        elif exit_code == 2:
            outcome.verdict = "user-error"
            if not shown.strip():
                outcome.verdict, outcome.error = "internal", "exit 2 without a message"
        elif exit_code in (1, 3) and verb == "run":
            outcome.verdict = "run-failed"
            if not stderr.strip():
                outcome.verdict, outcome.error = "internal", f"exit {exit_code} without a message"
        else:
            outcome.verdict, outcome.error = "internal", f"exit {exit_code} from {verb}"
        if (
            outcome.verdict in ("ok", "user-error")
            and SENTINEL in case.command
            and f"{SENTINEL}: valid" not in stdout
        ):
            outcome.verdict = "internal"
            outcome.error = "the other file of the command was not reported"
        return outcome


def _debug(case: Case) -> bool:
    """Whether the case asked for tracebacks (``LOG_LEVEL=DEBUG``, as ``--debug`` does)."""
    return case.env.get("LOG_LEVEL", "").strip().upper() == "DEBUG"


def _clean_environment(root: Path) -> dict[str, str]:
    """The environment every case starts from: nothing aoe reads, a home of its own."""
    from aoe.config.environment import (
        BUILTIN_KEY_VARIABLES,
        BUILTIN_URL_VARIABLES,
        ENVIRONMENT_VARIABLES,
    )

    ours = {
        *ENVIRONMENT_VARIABLES,
        *BUILTIN_KEY_VARIABLES.values(),
        *BUILTIN_URL_VARIABLES.values(),
        "AOE_CONFIG",
        "NO_COLOR",
    }
    for name in list(os.environ):
        if name in ours or name.startswith("AOE_"):
            del os.environ[name]
    os.environ["HOME"] = str(root / "home")
    os.environ["TERM"] = "dumb"
    # the store of runs that name no state_dir of their own
    return {"AOE_STATE_DIR": str(root / "state"), "AOE_MOCK_LATENCY": "0"}


def _reset_logging() -> None:
    """A run points aoe's logger at the CliRunner's stream, closed when it ends: the
    next case starts from a logger with no handler, as a new process does."""
    logger = logging.getLogger("aoe")
    logger.handlers.clear()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


def _tail(text: str, keep: int = KEEP) -> str:
    return text if len(text) <= keep else text[: keep // 2] + "\n[...]\n" + text[-keep // 2 :]


# -- the process -------------------------------------------------------------------------------


def read_frame(stream: IO[bytes]) -> bytes | None:
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    body = stream.read(size)
    return body if len(body) == size else None


def write_frame(stream: IO[bytes], body: bytes) -> None:
    stream.write(HEADER.pack(len(body)) + body)
    stream.flush()


def main() -> None:
    root, fd_in, fd_out = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    requests = os.fdopen(fd_in, "rb")
    answers = os.fdopen(fd_out, "wb")
    root.mkdir(parents=True, exist_ok=True)
    worker = Worker(root)
    # the descriptors 0, 1 and 2 are the case's: no input, output captured
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(worker.capture.fileno(), 1)
    os.dup2(worker.capture.fileno(), 2)
    stack = open(root / "stack.txt", "w")  # noqa: SIM115 - the process's lifetime
    faulthandler.register(signal.SIGUSR1, file=stack, all_threads=True)
    faulthandler.enable(file=open(root / "crash.txt", "w"))  # noqa: SIM115
    _warm_up(worker)
    write_frame(answers, b'{"ready": true}')
    while (body := read_frame(requests)) is not None:
        request = json.loads(body)
        case = Case.from_json(request["case"])
        stack.seek(0)
        stack.truncate()
        try:
            outcome = worker.run(case, request["listener"])
        except BaseException as error:  # the worker would die: say why instead
            text = "".join(traceback.format_exception(error))
            outcome = Outcome(
                verdict="crash",
                error=f"the worker stopped on {type(error).__name__}",
                where=innermost_aoe_frame(text),
                detail=_tail(text, 8000),
            )
            write_frame(answers, json.dumps(outcome.to_json()).encode())
            raise
        write_frame(answers, json.dumps(outcome.to_json()).encode())


def _warm_up(worker: Worker) -> None:
    """Import what a validate and a run import, so the first case is timed fairly."""
    from tests.fuzz.cases import MOCK_WORKFLOW

    files = {"wf.yaml": MOCK_WORKFLOW.encode()}
    for command in (("validate", "wf.yaml"), ("run", "wf.yaml", "--mock", "-q", "--no-cache")):
        worker.run(Case("warm-up", command, files), "127.0.0.1:9")


if __name__ == "__main__":
    main()
