"""Workflow file -> :class:`aoe.format.workflow.Workflow`, or every reason it cannot be one.

The loader runs every check of the format in one go and keeps going after
an error wherever a later check still means something, so a file with five
mistakes gets five diagnostics, each with its line. Its passes, one module each,
all reading and adding to one :class:`~aoe.format.loader.context.Context`:

1. YAML: syntax, duplicate keys, tags, size (:mod:`aoe.format.yamlsource`);
2. the models of :mod:`aoe.format.spec`: unknown keys, types, ranges
   (:mod:`~aoe.format.loader.header`);
3. the graph: unknown, duplicate and self dependencies, cycles
   (:mod:`~aoe.format.loader.dependencies`);
4. resolution: defaults merged, a model for every agent, files read safely,
   output schemas that are valid JSON Schema (:mod:`~aoe.format.loader.resolution`,
   :mod:`~aoe.format.loader.included`);
5. templates and expressions: syntax, and every reference against
   ``depends_on`` and the declared inputs (:mod:`~aoe.format.loader.templates`,
   :mod:`~aoe.format.loader.references`);
6. the caller's further checks (:class:`Check`): the engine config's
   providers and prices, from :mod:`aoe.config.checks`.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from aoe.errors import WorkflowInvalid
from aoe.format import graph as graphs
from aoe.format.diagnostics import has_errors, sort_key
from aoe.format.loader.context import UNKNOWN, Context
from aoe.format.loader.dependencies import check_dependencies, raw_depends_on
from aoe.format.loader.header import check_agents, check_header, check_input_names
from aoe.format.loader.references import check_unused_inputs
from aoe.format.loader.resolution import agent_texts, resolve_agent
from aoe.format.loader.templates import check_agent_templates, check_outputs
from aoe.format.workflow import Agent, Input, SourceText, Workflow
from aoe.format.yamlsource import Path, YamlError, parse_yaml, read_text
from aoe.types import Diagnostic, Severity


class LoadResult(NamedTuple):
    """What loading one file found: the workflow if it is valid (no errors, maybe
    warnings), and every diagnostic. ``error`` is the exception that stopped the
    checks (a bug in aoe, or a file nested past Python's stack), already
    reported as a diagnostic; ``--debug`` shows its traceback."""

    path: str
    workflow: Workflow | None
    diagnostics: tuple[Diagnostic, ...]
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.workflow is not None

    def require(self) -> Workflow:
        """The workflow, or :class:`WorkflowInvalid` with the errors."""
        if self.workflow is None:
            raise WorkflowInvalid([d for d in self.diagnostics if d.is_error]) from self.error
        return self.workflow


class Report(Protocol):
    """Where a check tells what it found, at a place in the file (a path of keys)."""

    def error(self, path: Path, code: str, message: str, *, at_key: bool = False) -> None: ...

    def warn(self, path: Path, code: str, message: str, *, at_key: bool = False) -> None: ...


class Check(Protocol):
    """A further check of a file that loaded, by a layer that knows more than the
    file: its ``agents``, the workflow's ``cost_budget`` and where each agent's
    ``llm`` fields were written (``origins[(agent, model index)][field]``)."""

    def __call__(
        self,
        agents: Mapping[str, Agent],
        cost_budget: float | None,
        origins: Mapping[tuple[str, int], Mapping[str, Path]],
        report: Report,
    ) -> None: ...


def load_workflow(
    path: str | os.PathLike[str],
    *,
    checks: Sequence[Check] = (),
    display: str | None = None,
) -> LoadResult:
    """Load and check a workflow file.

    ``checks`` are further checks by layers that know more than the file
    (:func:`aoe.config.checks.against_settings`: providers and prices).
    ``display`` is the name used in diagnostics (default: ``path`` as given).
    """
    name = display or os.fspath(path)
    ctx = Context(os.fspath(path), name)
    # Loading makes a great many objects and no garbage cycles: the cyclic
    # collector would only rescan them, again and again (5% of a large file).
    collecting = gc.isenabled()
    gc.disable()
    error: Exception | None = None
    try:
        workflow = _load(ctx, checks)
    except Exception as e:  # whatever stops one file is that file's error, not the caller's
        error, workflow = e, None
        ctx.diagnostics.append(_stopped_by(name, e))
    finally:
        if collecting:
            gc.enable()
    diagnostics = tuple(sorted(_root_causes(ctx.diagnostics), key=sort_key))
    return LoadResult(name, workflow if not has_errors(diagnostics) else None, diagnostics, error)


def _load(ctx: Context, checks: Sequence[Check]) -> Workflow | None:
    """The passes in their order; the workflow if none found an error."""
    data = _read(ctx)
    if data is None:
        return None
    header = check_header(ctx, data)
    raw_agents = data.get("agents")
    if not isinstance(raw_agents, dict):
        return None  # reported by the header check
    specs = check_agents(ctx, raw_agents)
    dependencies = check_dependencies(ctx, raw_agents, specs)

    ctx.raw_agents = raw_agents
    ctx.specs = specs
    ctx.inputs = header["inputs"]
    if ctx.inputs is UNKNOWN and isinstance(data.get("inputs"), dict):
        ctx.inputs = data["inputs"]  # the names are declared even where a type is wrong
    check_input_names(ctx)
    agents = _agents(ctx, raw_agents, header["defaults"])
    outputs = check_outputs(ctx, header["outputs"])
    if not has_errors(ctx.diagnostics):
        check_unused_inputs(ctx)
    budget = header["cost_budget"]
    for check in checks:
        check(agents, None if budget is UNKNOWN else budget, ctx.llm_origins, ctx)

    if has_errors(ctx.diagnostics) or dependencies is None:
        return None
    return _workflow(ctx, header, agents, dependencies, outputs)


def _read(ctx: Context) -> dict[str, Any] | None:
    """The YAML pass: the file's top-level mapping without its ``x-`` keys."""
    try:
        ctx.text = read_text(ctx.path, ctx.name)
        document = parse_yaml(ctx.text, ctx.name)
    except YamlError as e:
        ctx.diagnostics.extend(e.diagnostics)
        return None
    ctx.source = document.source
    ctx.diagnostics.extend(document.diagnostics)
    data = document.data
    if not isinstance(data, dict):
        ctx.error((), "type", "a workflow file is a mapping with version, name and agents")
        return None
    return {k: v for k, v in data.items() if not k.startswith("x-")}


def _agents(ctx: Context, raw_agents: dict[str, Any], defaults: Any) -> dict[str, Agent]:
    """Every agent's templates checked; the valid agents resolved."""
    agents: dict[str, Agent] = {}
    for agent_id, raw in raw_agents.items():
        spec = ctx.specs.get(agent_id)
        texts = agent_texts(ctx, agent_id, spec, raw)
        check_agent_templates(ctx, agent_id, texts, raw_depends_on(raw, spec))
        if spec is not None:
            agent = resolve_agent(ctx, agent_id, spec, defaults, texts)
            if agent is not None:
                agents[agent_id] = agent
    return agents


def _workflow(
    ctx: Context,
    header: dict[str, Any],
    agents: dict[str, Agent],
    dependencies: graphs.Graph,
    outputs: dict[str, SourceText],
) -> Workflow:
    return Workflow(
        name=header["name"],
        path=ctx.path,
        text=ctx.text,
        files=MappingProxyType(ctx.files),
        agents=MappingProxyType(agents),
        graph=dependencies,
        inputs=MappingProxyType(
            {
                n: Input(n, spec.type, spec.required, spec.default, spec.description)
                for n, spec in header["inputs"].items()
            }
        ),
        description=header["description"],
        cost_budget=header["cost_budget"],
        max_parallel_agents=header["max_parallel_agents"],
        allow_partial_completion=header["allow_partial_completion"],
        outputs=MappingProxyType(outputs),
        cache=header["cache"],
        cache_ttl=header["cache_ttl"],
    )


def _stopped_by(name: str, error: Exception) -> Diagnostic:
    """The diagnostic for an exception that stopped the checks of a file."""
    if isinstance(error, RecursionError):
        message = (
            "the file nests too deeply for aoe to check it (brackets, blocks or merge "
            "keys inside one another, hundreds deep); flatten it"
        )
        return Diagnostic(name, 0, 0, Severity.ERROR, "too-deep", message)
    what = str(error)
    what = what if len(what) <= 200 else what[:197] + "..."
    message = (
        f"aoe could not check this file ({type(error).__name__}: {what}); this is a bug "
        "in aoe: rerun with --debug for the traceback and report it"
    )
    return Diagnostic(name, 0, 0, Severity.ERROR, "internal", message)


def _root_causes(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Without the errors a YAML problem caused at its own place: a refused tag
    leaves a value of the wrong type behind, and that is not a second mistake."""
    yaml_places = {(d.file, d.line, d.column) for d in diagnostics if d.code.startswith("yaml-")}
    return [
        d
        for d in diagnostics
        if d.code.startswith("yaml-") or (d.file, d.line, d.column) not in yaml_places
    ]
