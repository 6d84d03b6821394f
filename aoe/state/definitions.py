"""What decides an agent's output, as a hash: the basis of ``aoe resume --force``.

An agent's definition hash covers its prompt and system text (the text itself,
not where it was written: adding a line above it changes nothing), its model
and fallbacks with their parameters, its output format and schema, ``when``,
``foreach``, ``trigger_rule`` and ``depends_on``, and the values of the inputs
its templates read. Settings that do not change what it answers — ``timeout``,
``retry``, ``cost_limit``, ``cache``, ``description`` — are left out, so raising
a limit after a budget stop does not make finished work run again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from aoe.providers.base import plain
from aoe.templates import analyse_expression, analyse_template
from aoe.workflow import Agent, SourceText, Workflow


def definitions(workflow: Workflow, inputs: Mapping[str, Any]) -> dict[str, str]:
    """Each agent's definition hash, by id."""
    return {
        agent_id: definition(agent, workflow, inputs) for agent_id, agent in workflow.agents.items()
    }


def definition(agent: Agent, workflow: Workflow, inputs: Mapping[str, Any]) -> str:
    read_inputs, reads_workflow = _reads(agent, inputs)
    identity = {
        "prompt": agent.prompt.text,
        "system": _text(agent.system),
        "models": [plain(llm._asdict()) for llm in agent.models],
        "output": {"format": agent.output.format, "schema": plain(agent.output.schema)},
        "when": _text(agent.when),
        "foreach": _text(agent.foreach),
        "trigger_rule": agent.trigger_rule,
        "depends_on": list(agent.depends_on),
        "inputs": {name: inputs.get(name) for name in sorted(read_inputs)},
        "workflow": workflow.name if reads_workflow else None,
    }
    text = json.dumps(identity, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _text(source: SourceText | None) -> str | None:
    return None if source is None else source.text


def _reads(agent: Agent, inputs: Mapping[str, Any]) -> tuple[set[str], bool]:
    """The inputs an agent's templates read (all of them when read by a computed
    name), and whether they read the workflow's name."""
    analyses = [analyse_template(agent.prompt.text)]
    if agent.system is not None:
        analyses.append(analyse_template(agent.system.text))
    for expression in (agent.when, agent.foreach):
        if expression is not None:
            analyses.append(analyse_expression(expression.text))
    names: set[str] = set()
    reads_workflow = False
    for analysis in analyses:
        for reference in analysis.references:
            if reference.kind == "input":
                names.add(reference.name)
            elif reference.kind == "dynamic" and reference.name == "inputs":
                names.update(inputs)
            elif reference.kind in ("workflow",) or (
                reference.kind == "dynamic" and reference.name == "workflow"
            ):
                reads_workflow = True
    return names, reads_workflow
