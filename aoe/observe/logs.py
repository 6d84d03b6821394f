"""Log lines: text, or one JSON object per line (``--log-format json``).

Everything aoe logs — a run's events (:class:`aoe.cli.ui.progress.JsonLines`) and what a
service says (``aoe serve``) — carries ``timestamp`` (UTC, ISO 8601),
``level``, ``message``, ``module`` and ``function``, and ``run_id``,
``agent_id`` and ``attempt`` where they apply, so a log collector can index
them. ``LOG_LEVEL`` (``monitoring.log_level``) drops the lines below it.
Messages are scrubbed of anything shaped like an API key.

What the libraries under aoe log (aiohttp's server, asyncio) goes the same
way, one line each: an exception as ``Type: message``, never a traceback, and
at most a few lines a minute of one kind — a client that sends garbage can
neither break the JSON of ``--log-format json`` nor flood the log.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from aoe.errors import scrub

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}
CONTEXT = ("run_id", "agent_id", "attempt")
LIBRARIES = ("aiohttp", "asyncio")  # their loggers, routed through aoe's format


def timestamp(at: float) -> str:
    """``2026-11-27T23:08:51.123Z``"""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "timestamp": timestamp(record.created),
            "level": record.levelname,
            "message": scrub(record.getMessage()),
            "module": record.name,
            "function": record.funcName,
        }
        for key in CONTEXT:
            value = getattr(record, key, None)
            if value is not None:
                data[key] = value
        if record.exc_info:
            data["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    """``23:08:51 aoe serve: message`` (with the run where there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        where = f" [{record.run_id}]" if getattr(record, "run_id", None) else ""  # type: ignore[attr-defined]
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        line = f"{clock} {level}{scrub(record.getMessage())}{where}"
        if record.exc_info:
            line += "\n" + scrub(self.formatException(record.exc_info))
        return line


class Every:
    """An event that may recur any number of times, logged at most once per
    ``interval`` seconds: the first time at once, then with how many times it
    happened since the last line."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.last: float | None = None
        self.seen = 0

    def count(self) -> int:
        """Note the event; how many times to report if a line is due now, else 0."""
        self.seen += 1
        now = self.clock()
        if self.last is not None and now - self.last < self.interval:
            return 0
        self.last = now
        seen, self.seen = self.seen, 0
        return seen


@dataclass
class _Window:
    start: float
    lines: int = 0
    left_out: int = 0


class OneLine(logging.Filter):
    """A library's record as one line, and at most ``burst`` lines of one kind
    (its logger and its message's first words) per ``interval`` seconds; the
    next line after a pause says how many were left out."""

    KINDS = 256  # kinds of message remembered; the oldest is forgotten first

    def __init__(
        self,
        interval: float = 60.0,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.burst = burst
        self.clock = clock
        self.kinds: dict[tuple[str, str], _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, str(record.msg).split("\n", 1)[0][:80])
        now = self.clock()
        window = self.kinds.get(kind)
        left_out = 0
        if window is None or now - window.start >= self.interval:
            left_out = 0 if window is None else window.left_out
            window = _Window(now)
            self.kinds.pop(kind, None)
            self.kinds[kind] = window
            while len(self.kinds) > self.KINDS:
                del self.kinds[next(iter(self.kinds))]
        if window.lines >= self.burst:
            window.left_out += 1
            return False
        window.lines += 1
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            message += f": {type(error).__name__}: {error}"
        message = re.sub(r"\s+", " ", message).strip()
        if len(message) > 1000:
            message = message[:999] + "…"
        if left_out:
            message += f" ({left_out} more like it in the last {self.interval:g} s not logged)"
        record.msg, record.args = message, None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def setup(log_format: str, level: str, stream: TextIO | None = None) -> None:
    """Send aoe's log records, and those of :data:`LIBRARIES`, to ``stream``
    (stderr) in ``log_format``."""
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    threshold = LEVELS.get(level.upper(), logging.INFO)
    logger = logging.getLogger("aoe")
    logger.handlers[:] = [handler]
    logger.setLevel(threshold)
    logger.propagate = False
    libraries = logging.StreamHandler(stream or sys.stderr)
    libraries.setFormatter(formatter)
    libraries.addFilter(OneLine())
    for name in LIBRARIES:
        library = logging.getLogger(name)
        library.handlers[:] = [libraries]
        library.setLevel(threshold)
        library.propagate = False
