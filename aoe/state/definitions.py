"""What decides an agent's output, as a hash: the basis of ``aoe resume --force``.

An agent's definition hash covers its prompt and system text (the text itself,
not where it was written: adding a line above it changes nothing), its model
and fallbacks with their parameters, its output format and schema, ``when``,
``foreach``, ``trigger_rule`` and ``depends_on``. Settings that do not change
what it answers — ``timeout``, ``retry``, ``cost_limit``, ``cache``,
``description`` — are left out, so raising a limit after a budget stop does not
make finished work run again.

The inputs an agent reads count too, but are not hashed at run time (finding
them takes a template analysis per agent, ~0.1 ms): a run records its inputs,
and :func:`reading` finds, when a resume changes some, the agents that read
them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from typing import Any

from aoe.format.templates import analyse_expression, analyse_template
from aoe.format.workflow import Agent, SourceText, Workflow
from aoe.types import plain


def definitions(workflow: Workflow) -> dict[str, str]:
    """Each agent's definition hash, by id."""
    return {agent_id: definition(agent) for agent_id, agent in workflow.agents.items()}


def definition(agent: Agent) -> str:
    """Every part tagged and length-prefixed: no two definitions share a hash by
    how their parts happen to join."""
    digest = hashlib.sha256()

    def part(tag: bytes, value: str | bytes | None) -> None:
        if value is None:
            digest.update(tag + b"N")
            return
        data = value.encode() if isinstance(value, str) else value
        digest.update(b"%s%d:%s" % (tag, len(data), data))

    part(b"p", agent.prompt.text)
    part(b"s", _text(agent.system))
    part(b"w", _text(agent.when))
    part(b"f", _text(agent.foreach))
    part(b"t", agent.trigger_rule)
    part(b"o", agent.output.format)
    part(b"d", repr(agent.depends_on))
    for llm in agent.models:
        fields = (llm.provider, llm.model, llm.max_tokens, llm.temperature, llm.top_p)
        part(b"m", repr((*fields, llm.stop, llm.seed)))
        part(b"a", _json(llm.params) if llm.params else None)
    part(b"j", _json(agent.output.schema) if agent.output.schema is not None else None)
    if not agent.output.allow_truncated:  # (only then: the hashes of before stand)
        part(b"x", "complete replies only")
    return digest.hexdigest()


def _json(value: Any) -> bytes:
    return json.dumps(plain(value), sort_keys=True, ensure_ascii=False, default=str).encode()


def _text(source: SourceText | None) -> str | None:
    return None if source is None else source.text


def reading(workflow: Workflow, inputs: Collection[str], name_changed: bool = False) -> set[str]:
    """The agents whose templates read any of ``inputs`` (every agent that reads
    inputs by a computed name), or the workflow's name when ``name_changed``."""
    found = set()
    for agent_id, agent in workflow.agents.items():
        names, reads_name = _reads(agent, inputs)
        if names & set(inputs) or (name_changed and reads_name):
            found.add(agent_id)
    return found


def changed_inputs(before: Mapping[str, Any], after: Mapping[str, Any]) -> set[str]:
    return {name for name in {*before, *after} if before.get(name) != after.get(name)}


def _reads(agent: Agent, inputs: Collection[str]) -> tuple[set[str], bool]:
    analyses = [analyse_template(agent.prompt.text)]
    if agent.system is not None:
        analyses.append(analyse_template(agent.system.text))
    for expression in (agent.when, agent.foreach):
        if expression is not None:
            analyses.append(analyse_expression(expression.text))
    names: set[str] = set()
    reads_name = False
    for analysis in analyses:
        for reference in analysis.references:
            if reference.kind == "input":
                names.add(reference.name)
            elif reference.kind == "dynamic" and reference.name == "inputs":
                names.update(inputs)
            elif reference.kind == "workflow" or (
                reference.kind == "dynamic" and reference.name == "workflow"
            ):
                reads_name = True
    return names, reads_name
