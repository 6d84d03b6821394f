"""The end of a run, where the person who ran it is looking.

pytest's failure section and uv's one-line summary are the models: what the
run gave (its outputs, on a terminal, long ones folded), what went wrong (each
failed agent and its last error), one line that says which run it was, how it
ended, in how long, for how much, and the command that goes on from there.
Built from the run's results document (:class:`aoe.observe.results.Results`),
so it says what ``--output`` says.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Iterable, Mapping
from typing import Any

from aoe.cli.ui.text import duration, money, plural

FOLDED_LINES = 12
"""The lines of an output shown on a terminal; the rest is a command away."""
_MADE = ("──", "\x1b[")  # a rule, coloured or not
SHOWN_AGENTS = 2
"""A workflow that names no outputs: the outputs of its last agents shown, at
most (a fan-out of forty would fill the screen); the others are named."""


def end_of_run(
    document: Mapping[str, Any],
    last_agents: Iterable[str],
    *,
    resume: str,
    outputs: bool,
    colour: bool = False,
    width: int | None = None,
) -> str:
    """The text printed when a run ends: with ``outputs`` (a terminal, not
    ``-q``) the workflow's outputs, or ``last_agents``' when it names none;
    then the failures; then the summary line and what to run next. ``resume``:
    the command that continues the run (``aoe resume ID``). Lines are wrapped
    to ``width`` (None: the terminal's; 0: not wrapped, for a log)."""
    if width is None:
        width = shutil.get_terminal_size((100, 24)).columns
    if width == 0:  # a log: its lines whole; rules of a usual width
        width, wrapping = 80, False
    else:
        wrapping = True
    run_id = document["run_id"]
    parts: list[str] = []
    if outputs and document["status"] != "cancelled":
        shown = _outputs(document, list(last_agents))
        if shown:
            named = bool(document.get("outputs"))  # (else the last agents': two at most)
            kept, others = (shown, []) if named else (shown[-SHOWN_AGENTS:], shown[:-SHOWN_AGENTS])
            parts.append(_rule("outputs", width, colour, "1"))
            parts.extend(_folded(name, value, run_id, width) for name, value in kept)
            if others:
                parts.append(
                    f"(and {plural(len(others), 'other last agent')}: "
                    f"{', '.join(name for name, _ in others)}; "
                    f"`aoe runs output {run_id} AGENT` prints one)"
                )
    failures = _failures(document)
    if failures:
        parts.append(_rule("failures", width, colour, "1;31"))
        parts.extend(failures)
    line = len(parts)  # the summary line's part: its status is coloured, nothing else
    parts.append(_summary(document))
    after = _next(document, resume)
    if after:
        parts.append(after)
    if wrapping:  # (the rules and the outputs are made to the width already)
        parts = [
            part if "\n" in part or part.startswith(_MADE) else "\n".join(_wrap(part, width, "  "))
            for part in parts
        ]
    if colour:  # (after wrapping: the codes take no room)
        status = f"aoe: run {run_id} {document['status'].replace('_', ' ')} "
        parts[line] = parts[line].replace(status, f"aoe: run {run_id}{_coloured(document)}", 1)
    return "\n".join(parts)


def _outputs(document: Mapping[str, Any], last_agents: list[str]) -> list[tuple[str, Any]]:
    """What the run gave: its named outputs, else its last agents' outputs."""
    named = document.get("outputs") or {}
    if named:
        return list(named.items())
    agents = document["agents"]
    return [
        (agent_id, agents[agent_id]["output"])
        for agent_id in last_agents
        if agent_id in agents and agents[agent_id]["state"] == "completed"
    ]


def _folded(name: str, value: Any, run_id: str, width: int) -> str:
    """An output under its name, wrapped to the terminal, its first
    :data:`FOLDED_LINES` lines (and how to see the rest)."""
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    lines = [
        wrapped
        for line in (text.strip("\n").splitlines() or [""])
        for wrapped in (_wrap(line, width - 2) or [""])
    ]
    body = "\n".join(f"  {line}" for line in lines[:FOLDED_LINES])
    rest = len(lines) - FOLDED_LINES
    more = f"\n  … {plural(rest, 'more line')}: aoe runs output {run_id} {name}" if rest > 0 else ""
    return f"{name}:\n{body}{more}"


def _wrap(line: str, width: int, indent: str = "") -> list[str]:
    """``line`` in lines of ``width`` at most, its indentation kept (JSON's)."""
    lead = line[: len(line) - len(line.lstrip())]
    return (
        textwrap.wrap(
            line,
            max(width, 20),
            initial_indent="",
            subsequent_indent=lead + indent,
            break_on_hyphens=False,
            drop_whitespace=True,
        )
        if line.strip()
        else [line]
    )


def _failures(document: Mapping[str, Any]) -> list[str]:
    """Each agent that did not complete for a reason of its own: its state, its
    attempts, its last error (a skipped or cancelled agent is said in the
    summary line, not here)."""
    found = []
    for agent_id, agent in document["agents"].items():
        if agent["state"] not in ("failed", "rate_limited", "budget_exceeded"):
            continue
        attempts = agent.get("attempts") or []
        tried = f", {plural(len(attempts), 'attempt')}" if attempts else ""
        error = " ".join(str(agent.get("error") or "no error was recorded").split())
        found.append(f"✗ {agent_id} ({agent['state'].replace('_', ' ')}{tried}): {error}")
    errors = document.get("output_errors") or {}
    found.extend(f"✗ output {name}: {error}" for name, error in errors.items())
    return found


def _summary(document: Mapping[str, Any]) -> str:
    """``aoe: run ID failed in 12.3 s · 4/6 agents completed, 1 failed · …``"""
    agents = document["agents"]
    states = [a["state"] for a in agents.values()]
    done = sum(s == "completed" for s in states)
    counts = [f"{done}/{len(states)} agents completed"]
    for state in ("failed", "rate_limited", "budget_exceeded", "skipped", "cancelled"):
        n = sum(s == state for s in states)
        if n:
            counts.append(f"{n} {state.replace('_', ' ')}")
    usage = document.get("usage") or {}
    tokens = int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
    budget = document.get("cost_budget_usd")
    spent = money(document.get("cost_usd") or 0.0) + (f" of {money(budget)}" if budget else "")
    status = str(document["status"]).replace("_", " ")
    took = duration(document.get("duration_seconds"))
    return (
        f"aoe: run {document['run_id']} {status}"
        + (f" in {took}" if took else "")
        + f" · {', '.join(counts)} · {tokens:,} tokens · {spent}"
    )


def _coloured(document: Mapping[str, Any]) -> str:
    status = str(document["status"])
    code = "1;32" if status == "completed" else "1;33" if status == "partial" else "1;31"
    return f" \x1b[{code}m{status.replace('_', ' ')}\x1b[0m "


def _next(document: Mapping[str, Any], resume: str) -> str | None:
    """The command that goes on from here, if the run can go on."""
    status = document["status"]
    if status == "budget_exceeded":
        spent = money(document.get("cost_usd") or 0.0)
        return (
            f"  its budget stopped it after {spent}: finish it with a larger one, "
            f"`{resume} --budget USD` (the whole run's, the {spent} spent included)"
        )
    if status in ("failed", "partial"):
        return f"  fix what failed, then finish it: `{resume}` (completed agents are kept)"
    if status == "cancelled":
        return f"aoe: run {document['run_id']} interrupted; finish it with `{resume}`"
    return None


def _rule(title: str, width: int, colour: bool, code: str) -> str:
    line = f"── {title} " + "─" * max(width - len(title) - 4, 4)
    return f"\x1b[{code}m{line}\x1b[0m" if colour else line
