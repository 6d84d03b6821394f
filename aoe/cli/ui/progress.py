"""A run's progress as text for pipes and CI logs: one line, or one JSON object, per event.

Both leave out the events below the run's ``LOG_LEVEL``, and both describe an
event in the same words (:func:`describe_event`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TextIO

from aoe.cli.ui.text import duration, money, plural

if TYPE_CHECKING:
    from aoe.events import AttemptFinished, Event, RunStarted


class PlainProgress:
    """One line per event, for pipes and CI logs: no colour, no escape codes;
    lines below ``level`` (``LOG_LEVEL``) are left out."""

    def __init__(self, stream: TextIO, level: str = "INFO") -> None:
        from aoe.observe.logs import LEVELS

        self.stream = stream
        self.least = LEVELS.get(level.upper(), 20)

        self.replies: dict[tuple[str, int | None], str] = {}  # -v: a reply's unended line

    def __call__(self, event: Event) -> None:
        from aoe.events import AttemptFinished

        if isinstance(event, AttemptFinished) and self.replies:
            self._reply_line((event.agent_id, event.item), "", end=True)
        if self.least > 20:
            from aoe.observe.logs import LEVELS

            if LEVELS[event_level(event)] < self.least:
                return
        line = describe_event(event)
        if line is not None:
            clock = time.strftime("%H:%M:%S", time.localtime(event.at))
            self.stream.write(f"{clock} {line}\n")
            self.stream.flush()

    def text(self, agent_id: str, item: int | None, piece: str) -> None:
        """``-v``: a reply as it arrives, a line of the log per line of the reply
        (``agent> ...``), the last when its attempt ends."""
        self._reply_line((agent_id, item), piece, end=False)

    def _reply_line(self, key: tuple[str, int | None], piece: str, *, end: bool) -> None:
        text = self.replies.pop(key, "") + piece
        *lines, rest = text.split("\n")
        if end and rest:
            lines, rest = [*lines, rest], ""
        if rest:
            self.replies[key] = rest
        agent_id, item = key
        where = f"{agent_id} item {item}" if item is not None else agent_id
        for line in lines:
            self.stream.write(f"{where}> {line}\n")
        if lines:
            self.stream.flush()


def describe_event(event: Event) -> str | None:
    """A run event as one line of text (None for events not worth a line)."""
    from aoe import events as ev

    if isinstance(event, ev.RunStarted):
        return _run_started(event)
    number = getattr(event, "item", None)
    item = f" item {number}" if number is not None else ""
    if isinstance(event, ev.AgentStarted):
        items = f" ({plural(event.items, 'item')})" if event.items is not None else ""
        return f"{event.agent_id}: started{items}"
    if isinstance(event, ev.AgentWaiting):
        limit = f": {event.limit}" if event.limit else ""
        wait = f", about {duration(event.seconds)}" if event.seconds else ""
        return f"{event.agent_id}{item}: waiting for {event.provider}'s rate limits{limit}{wait}"
    if isinstance(event, ev.AttemptFinished):
        return _attempt_finished(event, item)
    if isinstance(event, ev.AgentRetrying):
        return f"{event.agent_id}{item}: retrying in {duration(event.delay)}"
    if isinstance(event, ev.AgentFallback):
        return (
            f"{event.agent_id}{item}: falling back to {event.provider}/{event.model} "
            f"({event.error})"
        )
    if isinstance(event, ev.AgentFinished):
        if event.resumed:
            return f"{event.agent_id}: completed in an earlier session (its recorded output)"
        why = f": {event.error}" if event.error else ""
        took = f" in {duration(event.duration)}" if event.duration else ""
        cut = ", its reply cut off at max_tokens" if event.truncated else ""
        return f"{event.agent_id}: {event.state}{took}{cut}{why}"
    if isinstance(event, ev.RunFinished):
        budget = f" of {money(event.budget)}" if event.budget is not None else ""
        return (
            f"run {event.run_id}: {event.status} in {duration(event.duration)}, "
            f"{event.usage.total} tokens, {money(event.cost)}{budget}"
        )
    return None


def _run_started(event: RunStarted) -> str:
    """A run's first line: what it is, how parallel, its budget; a resumed run's
    also what it spent before."""
    budget = f", budget {money(event.budget)}" if event.budget is not None else ""
    if event.session > 1:
        return (
            f"run {event.run_id}: {event.workflow} resumed (session {event.session}), "
            f"{money(event.spent)} spent before, up to {event.max_parallel} at once{budget}"
        )
    return (
        f"run {event.run_id}: {event.workflow} started, {plural(event.agents, 'agent')}, "
        f"up to {event.max_parallel} at once{budget}"
    )


def _attempt_finished(event: AttemptFinished, item: str) -> str:
    """An attempt's line: from the cache, cancelled, failed or answered."""
    from aoe import events as ev

    if event.cached:
        return (
            f"{event.agent_id}{item}: answered from the cache "
            f"({event.provider}/{event.model}, no cost)"
        )
    if event.error_kind == ev.NOT_ANSWERED:
        return f"{event.agent_id}{item}: attempt {event.attempt} cancelled"
    what = f"{event.provider}/{event.model}, {event.usage.total} tokens, {money(event.cost)}"
    if event.error is not None:
        return (
            f"{event.agent_id}{item}: attempt {event.attempt} failed after "
            f"{duration(event.duration)} ({what}): {event.error}"
        )
    return (
        f"{event.agent_id}{item}: attempt {event.attempt} answered in "
        f"{duration(event.duration)} ({what})"
    )


class JsonLines:
    """One JSON object per event (``--log-format json``), for log collectors: the
    fields of :mod:`aoe.observe.logs` (``function`` is the event, ``agent_finished``...)
    and the event's own as :func:`aoe.observe.results.published` names them;
    lines below ``level`` are left out."""

    def __init__(self, stream: TextIO, level: str = "INFO") -> None:
        from aoe.observe.logs import LEVELS

        self.stream = stream
        self.least = LEVELS.get(level.upper(), 20)

    def __call__(self, event: Event) -> None:
        import json

        from aoe.events import event_dict
        from aoe.observe.logs import LEVELS, timestamp
        from aoe.observe.results import published

        level = event_level(event)
        if LEVELS[level] < self.least:
            return
        record: dict[str, object] = {
            "timestamp": timestamp(event.at),
            "level": level,
            "message": describe_event(event) or type(event).__name__,
            "module": "aoe.engine",
            "function": _snake(type(event).__name__),
            "event": type(event).__name__,
        }
        for name, value in published(event_dict(event)).items():
            if name not in ("event", "at"):  # (said above: the type, the timestamp)
                record[name] = value
        self.stream.write(json.dumps(record, default=str) + "\n")
        self.stream.flush()


def event_level(event: Event) -> str:
    """INFO, WARNING for a failed attempt, ERROR for a failed agent or run;
    DEBUG for a rendered prompt."""
    from aoe import events as ev

    if isinstance(event, ev.PromptRendered):  # a prompt whole: only when asked for
        return "DEBUG"
    if isinstance(event, ev.AttemptFinished) and event.error:
        return "WARNING"
    if (isinstance(event, ev.AgentFinished) and event.state.failure) or (
        isinstance(event, ev.RunFinished) and event.status.exit_code != 0
    ):
        return "ERROR"
    return "INFO"


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
