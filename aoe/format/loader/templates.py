"""The templates pass: each template and expression parsed (syntax, and what it
would cost to render), then its references checked
(:mod:`aoe.format.loader.references`); ``foreach`` must name a list, a prompt
must not be empty, and the workflow's ``outputs`` are templates too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aoe.format.environment import TemplateProblem
from aoe.format.loader.context import EXPRESSION_FIELDS, TEXT_FIELDS, UNKNOWN, Context
from aoe.format.loader.references import ROOT_OF, check_references
from aoe.format.spec import AgentSpec, InputSpec
from aoe.format.templates import (
    Analysis,
    Reference,
    analyse_expression,
    analyse_template,
)
from aoe.format.workflow import SourceText
from aoe.format.yamlsource import Path


def analyse(
    ctx: Context,
    source: SourceText,
    path: Path,
    field: str,
    owner: str,
    *,
    expression: bool = False,
) -> Analysis | None:
    """What a template or expression reads; None (reported) if it cannot be read."""
    try:
        return analyse_expression(source.text) if expression else analyse_template(source.text)
    except RecursionError:
        ctx.template_error(
            source,
            path,
            1,
            "too-deep",
            f"{owner}: the {field} {'expression' if expression else 'template'} nests "
            "too deeply for aoe to read it (brackets or blocks inside one another, "
            "dozens deep); split it up",
        )
        return None
    except TemplateProblem as e:
        kind = "expression" if expression else "template"
        ctx.template_error(
            source,
            path,
            e.line,
            "template-limit" if e.costly else "template-syntax",
            f"{owner}: the {field} {kind} "
            + ("would take too much time or memory" if e.costly else "does not parse")
            + f": {e.message}",
        )
        return None


def check_agent_templates(
    ctx: Context, agent_id: str, texts: Mapping[str, SourceText | None], depends_on: Sequence[str]
) -> None:
    """An agent's templates and expressions, each read and its references checked."""
    at: Path = ("agents", agent_id)
    owner = f"agent '{agent_id}'"
    foreach = texts.get("foreach") is not None
    for field in TEXT_FIELDS:
        source = texts.get(field)
        if source is None:
            continue
        path = (*at, field)
        analysis = analyse(ctx, source, path, field, owner, expression=field in EXPRESSION_FIELDS)
        if analysis is None:
            continue
        check_references(
            ctx,
            analysis,
            source,
            path,
            f"{owner}, {field}",
            allowed_agents=depends_on,
            item_allowed=foreach and field not in EXPRESSION_FIELDS,
            foreach=foreach,
        )
        if field == "foreach" and analysis.whole is not None:
            check_foreach_list(ctx, analysis.whole, source, path, f"{owner}, foreach")
    spec = ctx.specs.get(agent_id)
    if spec is not None:
        _check_agent_fields(ctx, agent_id, spec, texts.get("prompt"), depends_on)


def _check_agent_fields(
    ctx: Context,
    agent_id: str,
    spec: AgentSpec,
    prompt: SourceText | None,
    depends_on: Sequence[str],
) -> None:
    """An empty prompt, and a trigger rule with nothing to trigger on."""
    at: Path = ("agents", agent_id)
    owner = f"agent '{agent_id}'"
    if prompt is not None and not prompt.text.strip():
        where = (*at, "prompt" if spec.prompt is not None else "prompt_file")
        ctx.error(where, "empty-prompt", f"{owner}: the prompt is empty; write one")
    if not depends_on and "trigger_rule" in spec.model_fields_set:
        ctx.warn(
            (*at, "trigger_rule"),
            "trigger-rule-alone",
            f"{owner}: trigger_rule has no effect on an agent without depends_on; remove it",
            at_key=True,
        )


def check_foreach_list(
    ctx: Context, ref: Reference, source: SourceText, path: Path, owner: str
) -> None:
    """``foreach`` on a plain reference: it must be to a list."""
    problem = None
    if ref.kind == "input" and not ref.rest and ctx.inputs is not UNKNOWN:
        problem = _input_list_problem(ctx.inputs.get(ref.name), ref.name)
    elif ref.kind == "agent" and ref.attribute == "output" and not ref.rest:
        problem = _output_list_problem(ctx.specs.get(ref.name), ref.name)
    if problem is not None:
        ctx.template_error(
            source,
            path,
            ref.line,
            "foreach-list",
            f"{owner}: {problem}",
            f"{ROOT_OF[ref.kind]}.{ref.name}",
        )


def _input_list_problem(spec: Any, name: str) -> str | None:
    """Why ``inputs.<name>`` cannot be looped over, if its declared type says so."""
    kind = spec.type if isinstance(spec, InputSpec) else None
    if kind is None or kind == "list":
        return None
    return (
        f"foreach needs a list, and inputs.{name} is of type '{kind}'; declare it with type: list"
    )


def _output_list_problem(target: AgentSpec | None, name: str) -> str | None:
    """Why ``agents.<name>.output`` cannot be looped over, if its output says so."""
    if target is None or target.foreach is not None:
        return None  # unknown, or one output per item: a list
    output = target.output
    if output is None or output.format == "text":
        return (
            f"foreach needs a list, and agents.{name}.output is text; give "
            f"'{name}' output.format: json with a list (type: array) schema"
        )
    if output.json_schema is not None and output.json_schema.get("type") not in (None, "array"):
        return (
            f"foreach needs a list, and the output schema of '{name}' has "
            f"type: {output.json_schema.get('type')}; make it type: array, or "
            "loop over a list inside it"
        )
    return None


def check_outputs(ctx: Context, outputs: Any) -> dict[str, SourceText]:
    """The workflow's ``outputs``: templates over the agents' results (any agent)."""
    if outputs in (None, UNKNOWN):
        return {}
    result: dict[str, SourceText] = {}
    for output_name, text in outputs.items():
        path: Path = ("outputs", output_name)
        source = ctx.inline_text(path, text)
        assert source is not None
        result[output_name] = source
        owner = f"output '{output_name}'"
        analysis = analyse(ctx, source, path, "output", owner)
        if analysis is not None:
            check_references(
                ctx,
                analysis,
                source,
                path,
                owner,
                allowed_agents=None,
                item_allowed=False,
                foreach=False,
            )
    return result
