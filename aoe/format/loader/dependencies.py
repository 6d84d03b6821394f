"""The graph pass: unknown, duplicate and self dependencies, and cycles.

It runs on every agent, valid or not (an agent whose other keys are wrong
still names its dependencies), so a cycle is reported alongside the other
mistakes rather than after they are fixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aoe.format import graph as graphs
from aoe.format.loader.context import Context
from aoe.format.modelerrors import did_you_mean
from aoe.format.spec import AgentSpec
from aoe.format.yamlsource import Path


def raw_depends_on(raw: Any, spec: AgentSpec | None) -> list[str]:
    """An agent's dependencies, from its model or, if it did not validate, from
    whatever of its ``depends_on`` is names."""
    if spec is not None:
        return list(spec.depends_on)
    deps = raw.get("depends_on") if isinstance(raw, dict) else None
    if isinstance(deps, str):
        return [deps]
    if isinstance(deps, list):
        return [d for d in deps if isinstance(d, str)]
    return []


def check_dependencies(
    ctx: Context, raw_agents: dict[str, Any], specs: Mapping[str, AgentSpec]
) -> graphs.Graph | None:
    """Unknown, duplicate and self dependencies, and cycles; the graph if there are none."""
    known = list(raw_agents)
    clean: dict[str, list[str]] = {}
    ok = True
    for agent_id in raw_agents:
        kept, fine = _known_dependencies(ctx, agent_id, specs.get(agent_id), raw_agents, known)
        ok = ok and fine
        clean[agent_id] = kept
    for cycle in graphs.find_cycles(clean):
        first, second = cycle[0], cycle[1]
        raw_deps = (
            raw_agents[first].get("depends_on") if isinstance(raw_agents[first], dict) else None
        )
        where: Path = ("agents", first, "depends_on")
        if isinstance(raw_deps, list) and second in raw_deps:
            where = (*where, raw_deps.index(second))
        ctx.error(
            where,
            "cycle",
            f"dependency cycle: {graphs.format_cycle(cycle)} (each depends on the "
            "next); remove one of these dependencies",
        )
        ok = False
    return graphs.Graph(clean) if ok else None


def _known_dependencies(
    ctx: Context,
    agent_id: str,
    spec: AgentSpec | None,
    raw_agents: Mapping[str, Any],
    known: Sequence[str],
) -> tuple[list[str], bool]:
    """One agent's dependencies that are other agents of the file, each once, and
    whether it lists none it cannot have (those are reported, and left out)."""
    raw = raw_agents[agent_id]
    seen: set[str] = set()
    kept: list[str] = []
    ok = True
    listed = isinstance(raw, dict) and isinstance(raw.get("depends_on"), list)
    for i, dep in enumerate(raw_depends_on(raw, spec)):
        where: Path = ("agents", agent_id, "depends_on")
        if listed:
            where = (*where, i)
        if dep in seen:
            ctx.error(
                where,
                "duplicate-dependency",
                f"agent '{agent_id}' lists '{dep}' in depends_on twice; remove one",
            )
            ok = False
        elif dep == agent_id:
            ctx.error(
                where,
                "self-dependency",
                f"agent '{agent_id}' depends on itself; remove '{dep}' from its depends_on",
            )
            ok = False
        elif dep not in raw_agents:
            ctx.error(
                where,
                "unknown-dependency",
                f"agent '{agent_id}' depends on '{dep}', which is not an agent "
                f"of this file{did_you_mean(dep, known) or _listing(known)}",
            )
            ok = False
        else:
            kept.append(dep)
        seen.add(dep)
    return kept, ok


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit]) + (
        f" and {len(names) - limit} more" if len(names) > limit else ""
    )
    return f"; the agents are {shown}"
