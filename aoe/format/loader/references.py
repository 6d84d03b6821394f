"""What a template reads, against what there is: each reference of a template
or expression against the graph (an agent it depends on), the declared inputs,
``workflow`` and Jinja's filters and tests.

A template gets each mistake once, at its first line, and at most
:data:`MAX_TEMPLATE_PROBLEMS` of them: a generated file may repeat one
mistake thousands of times.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aoe.format.environment import environment
from aoe.format.loader.context import UNKNOWN, Context
from aoe.format.modelerrors import closest, did_you_mean
from aoe.format.templates import (
    AGENT_ATTRIBUTES,
    FOREACH_NAMES,
    ROOTS,
    WORKFLOW_ATTRIBUTES,
    Analysis,
    Reference,
)
from aoe.format.workflow import SourceText
from aoe.format.yamlsource import Path

MAX_TEMPLATE_PROBLEMS = 20  # reported of one template; the rest are counted
ROOT_OF = {"agent": "agents", "input": "inputs", "workflow": "workflow"}

Problem = tuple[str, str] | None  # a code and a message, or nothing wrong


def check_references(
    ctx: Context,
    analysis: Analysis,
    source: SourceText,
    path: Path,
    owner: str,
    *,
    allowed_agents: Sequence[str] | None,
    item_allowed: bool,
    foreach: bool,
) -> None:
    """Every reference of one template against the graph, the inputs and Jinja:
    each mistake once (at its first line), and at most
    :data:`MAX_TEMPLATE_PROBLEMS` of them (a file may hold thousands)."""
    reported = 0
    seen: set[tuple[str, str, object, tuple[object, ...]]] = set()
    for ref in analysis.references:
        key = (ref.kind, ref.name, ref.attribute, ref.rest)
        if key in seen:
            continue  # the same reference again: the same mistake, if it is one
        seen.add(key)
        problem = _problem(ctx, ref, allowed_agents, item_allowed, foreach)
        if problem is None:
            continue
        reported += 1
        if reported <= MAX_TEMPLATE_PROBLEMS:
            needle = f"{ROOT_OF[ref.kind]}.{ref.name}" if ref.kind in ROOT_OF else ref.name
            code, message = problem
            ctx.template_error(source, path, ref.line, code, f"{owner}: {message}", needle)
    if reported > MAX_TEMPLATE_PROBLEMS:
        ctx.template_error(
            source,
            path,
            1,
            "more-problems",
            f"{owner}: and {reported - MAX_TEMPLATE_PROBLEMS:,} more problems like these",
        )


def _problem(
    ctx: Context,
    ref: Reference,
    allowed_agents: Sequence[str] | None,
    item_allowed: bool,
    foreach: bool,
) -> Problem:
    """What is wrong with one reference, by what it reads."""
    if ref.kind == "agent":
        return _agent_problem(ctx, ref, allowed_agents)
    if ref.kind == "input":
        ctx.inputs_read.add(ref.name)
        return _input_problem(ctx.inputs, ref)
    if ref.kind == "workflow":
        if ref.name in WORKFLOW_ATTRIBUTES:
            return None
        return (
            "workflow-attribute",
            f"workflow.{ref.name} does not exist; templates can read workflow.name",
        )
    if ref.kind in ("filter", "test"):
        known = environment().filters if ref.kind == "filter" else environment().tests
        if ref.name in known:
            return None
        return (
            f"unknown-{ref.kind}",
            f"Jinja has no {ref.kind} '{ref.name}'{did_you_mean(ref.name, known)}",
        )
    if ref.kind == "dynamic":
        if ref.name == "inputs":
            ctx.inputs_read_dynamically = True
        return None  # agents[name] and the like: only dependencies are there at run time
    if ref.name in FOREACH_NAMES:
        if item_allowed:
            return None
        where_ok = (
            "its prompt and system templates"
            if foreach
            else "the templates of an agent with foreach"
        )
        return "foreach-name", f"'{ref.name}' is only defined in {where_ok}"
    return "undefined-name", _undefined_name(ref.name, ctx.inputs, ctx.raw_agents)


def _agent_problem(ctx: Context, ref: Reference, allowed_agents: Sequence[str] | None) -> Problem:
    """``agents.X...``: an agent of the file, depended on, read for what it has."""
    raw_agents = ctx.raw_agents
    if ref.name not in raw_agents:
        return (
            "unknown-agent",
            f"agents.{ref.name} is not an agent of this file"
            f"{did_you_mean(ref.name, list(raw_agents))}",
        )
    if allowed_agents is not None and ref.name not in allowed_agents:
        return (
            "undeclared-dependency",
            f"reads agents.{ref.name} but does not depend on it; add '{ref.name}' to depends_on",
        )
    if ref.attribute not in AGENT_ATTRIBUTES:
        shown = f"agents.{ref.name}" + (f".{ref.attribute}" if ref.attribute else "")
        hint = (
            did_you_mean(str(ref.attribute), AGENT_ATTRIBUTES) if ref.attribute is not None else ""
        )
        return (
            "agent-attribute",
            f"{shown}: an agent has 'output' and 'status'"
            + (hint or f"; write agents.{ref.name}.output"),
        )
    if ref.attribute == "output" and ref.rest:
        problem = output_shape_problem(ctx, ref)
        if problem:
            return "output-shape", problem
    return None


def _input_problem(inputs: Any, ref: Reference) -> Problem:
    """``inputs.X``: a declared input (when the inputs could be read)."""
    if inputs is UNKNOWN or ref.name in inputs:
        return None
    match = closest(ref.name, list(inputs))
    return (
        "undeclared-input",
        f"inputs.{ref.name} is not a declared input; "
        + (f"did you mean inputs.{match}?" if match else f"declare '{ref.name}' under inputs:"),
    )


def output_shape_problem(ctx: Context, ref: Reference) -> str | None:
    """Reading inside ``agents.X.output`` when X's output cannot have that inside."""
    target = ctx.specs.get(ref.name)
    first = ref.rest[0]
    if target is None or not isinstance(first, str):
        return None
    reading = f"agents.{ref.name}.output.{first}"
    if target.foreach is not None:
        if hasattr(list, first):
            return None
        return (
            f"agents.{ref.name}.output is a list (one output per item of its foreach); "
            f"write agents.{ref.name}.output[0].{first}, or loop over it"
        )
    if (target.output is None or target.output.format == "text") and not hasattr(str, first):
        return (
            f"{reading}: the output of '{ref.name}' is text; give '{ref.name}' "
            "output.format: json to read fields from it"
        )
    return None


def check_unused_inputs(ctx: Context) -> None:
    """A declared input no template reads is a warning (after the templates are read)."""
    if ctx.inputs_read_dynamically or ctx.inputs is UNKNOWN:
        return  # inputs[...] or a loop over inputs: any input may be read
    for name in ctx.inputs:
        if name not in ctx.inputs_read:
            ctx.warn(
                ("inputs", name),
                "unused-input",
                f"input '{name}' is declared but no template reads it; "
                f"use it as {{{{ inputs.{name} }}}} or remove it",
                at_key=True,
            )


def _undefined_name(name: str, inputs: Any, raw_agents: Mapping[str, Any]) -> str:
    if inputs is not UNKNOWN and name in inputs:
        return f"'{name}' is not defined; did you mean inputs.{name}?"
    if name in raw_agents:
        return f"'{name}' is not defined; did you mean agents.{name}.output?"
    choices = [*ROOTS, *FOREACH_NAMES]
    match = closest(name, choices)
    if match:
        return f"'{name}' is not defined; did you mean {match}?"
    return (
        f"'{name}' is not defined; templates can read inputs.<name>, "
        "agents.<id>.output, agents.<id>.status and workflow.name"
    )
