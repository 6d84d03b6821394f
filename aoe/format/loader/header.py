"""The models pass: the file's keys and values against :mod:`aoe.format.spec`.

The header (everything but the agents) and each agent are validated apart, so
one broken agent or section does not hide the mistakes of the others: a
section with errors comes back as :data:`~aoe.format.loader.context.UNKNOWN`
and the later checks that need it are skipped. Agent ids and input names are
checked here too, for what templates can address.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from aoe.format.loader.context import UNKNOWN, Context
from aoe.format.modelerrors import diagnostics_from_error
from aoe.format.spec import AGENT_ID_MAX, AGENT_ID_RE, AgentSpec, WorkflowHeader

# Jinja reads `x.name` as the attribute before the key: for these, a dict's method
MAPPING_METHODS = frozenset(name for name in dir(dict) if not name.startswith("_"))


@cache
def _agents_adapter() -> TypeAdapter[dict[str, AgentSpec]]:
    return TypeAdapter(dict[str, AgentSpec])


@cache
def _field_adapter(name: str) -> TypeAdapter[Any]:
    """One header field validated alone, with its constraints and strictness."""
    field = WorkflowHeader.model_fields[name]
    annotated: Any = Annotated[field.annotation, field]
    return TypeAdapter(annotated, config=ConfigDict(strict=True))


def check_header(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    """Validate everything but the agents; sections with errors come back as unknown."""
    try:
        header = WorkflowHeader.model_validate(data)
    except ValidationError as e:
        ctx.diagnostics.extend(diagnostics_from_error(e, ctx.source, WorkflowHeader))
        broken = {str(err["loc"][0]) for err in e.errors() if err["loc"]}
        values: dict[str, Any] = {}
        for field, info in WorkflowHeader.model_fields.items():
            if field in broken or field == "agents":
                values[field] = UNKNOWN
            elif field in data:
                values[field] = _field_adapter(field).validate_python(data[field])
            else:
                values[field] = info.get_default(call_default_factory=True)
        return values
    return {field: getattr(header, field) for field in WorkflowHeader.model_fields}


def check_agents(ctx: Context, raw_agents: dict[str, Any]) -> dict[str, AgentSpec]:
    """Agent ids and each agent's keys and values; the valid agents' models."""
    for agent_id in raw_agents:
        if not AGENT_ID_RE.match(agent_id) or len(agent_id) > AGENT_ID_MAX:
            ctx.error(("agents", agent_id), "agent-id", _bad_id_message(agent_id), at_key=True)
        elif agent_id in MAPPING_METHODS:
            ctx.error(
                ("agents", agent_id),
                "agent-id",
                f"agent id '{agent_id}' is the name of a method of mappings: templates "
                f"reading agents.{agent_id} would get the method; rename the agent",
                at_key=True,
            )
    try:
        return _agents_adapter().validate_python(raw_agents)
    except ValidationError as e:
        ctx.diagnostics.extend(
            diagnostics_from_error(
                e, ctx.source, AgentSpec, prefix=("agents",), root_prefix=("agents", "*")
            )
        )
        broken = {err["loc"][0] for err in e.errors() if err["loc"]}
    return {
        agent_id: AgentSpec.model_validate(raw)
        for agent_id, raw in raw_agents.items()
        if agent_id not in broken
    }


def check_input_names(ctx: Context) -> None:
    """Input names templates can read as ``inputs.<name>``."""
    if ctx.inputs is UNKNOWN:
        return
    for name in ctx.inputs:
        if name in MAPPING_METHODS:
            ctx.error(
                ("inputs", name),
                "input-name",
                f"input '{name}' is the name of a method of mappings: templates reading "
                f"inputs.{name} would get the method; rename the input",
                at_key=True,
            )
        elif not AGENT_ID_RE.match(name):
            ctx.warn(
                ("inputs", name),
                "input-name",
                f"input '{name}' is not a plain name: templates can read it only as "
                f"inputs['{name}']; use letters, digits and underscores",
                at_key=True,
            )


def _bad_id_message(agent_id: str) -> str:
    if len(agent_id) > AGENT_ID_MAX:
        return f"agent id '{agent_id[:20]}...' is longer than {AGENT_ID_MAX} characters; shorten it"
    fixed = "".join(c if c.isalnum() or c == "_" else "_" for c in agent_id)
    if not fixed or fixed[0].isdigit():
        fixed = "_" + fixed
    return (
        f"agent id '{agent_id}' is not valid: use letters, digits and underscores, "
        f"not starting with a digit (templates address agents as agents.<id>); "
        f"try '{fixed}'"
    )
