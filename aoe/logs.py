"""Log lines: text, or one JSON object per line (``--log-format json``).

Everything aoe logs — a run's events (:class:`aoe.ui.JsonLines`) and what a
service says (``aoe serve``) — carries ``timestamp`` (UTC, ISO 8601),
``level``, ``message``, ``module`` and ``function``, and ``run_id``,
``agent_id`` and ``attempt`` where they apply, so a log collector can index
them. ``LOG_LEVEL`` (``monitoring.log_level``) drops the lines below it.
Messages are scrubbed of anything shaped like an API key.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

from aoe.providers.base import scrub

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}
CONTEXT = ("run_id", "agent_id", "attempt")


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


def setup(log_format: str, level: str, stream: TextIO | None = None) -> None:
    """Send aoe's log records to ``stream`` (stderr) in ``log_format``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logger = logging.getLogger("aoe")
    logger.handlers[:] = [handler]
    logger.setLevel(LEVELS.get(level.upper(), logging.INFO))
    logger.propagate = False
