"""Workflow file -> :class:`aoe.format.workflow.Workflow`, or every reason it cannot be one.

The loader runs every check of the format in one pass and keeps going after
an error wherever a later check still means something, so a file with five
mistakes gets five diagnostics, each with its line:

1. YAML: syntax, duplicate keys, tags, size (:mod:`aoe.format.yamlsource`);
2. the models of :mod:`aoe.format.spec`: unknown keys, types, ranges;
3. the graph: unknown, duplicate and self dependencies, cycles;
4. resolution: defaults merged, a model for every agent, files read safely,
   output schemas that are valid JSON Schema;
5. templates and expressions: syntax, and every reference against
   ``depends_on`` and the declared inputs;
6. the caller's further checks (:class:`Check`): the engine config's
   providers and prices, from :mod:`aoe.config.checks`.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping, Sequence
from contextlib import suppress
from functools import cache
from pathlib import Path as FsPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, Protocol

from pydantic import ConfigDict, TypeAdapter, ValidationError

from aoe.errors import WorkflowInvalid
from aoe.format import graph as graphs
from aoe.format.diagnostics import has_errors, sort_key
from aoe.format.files import FileRefused, read_limited, size_text
from aoe.format.modelerrors import closest, diagnostics_from_error, did_you_mean
from aoe.format.schemas import (
    CHARS_PER_TOKEN,
    has_refs,
    least_reply_chars,
    schema_problem,
    shortened,
)
from aoe.format.spec import (
    AGENT_ID_MAX,
    AGENT_ID_RE,
    DEFAULT_MAX_TOKENS,
    DEFAULT_TIMEOUT,
    AgentSpec,
    InputSpec,
    WorkflowHeader,
)
from aoe.format.templates import (
    AGENT_ATTRIBUTES,
    FOREACH_NAMES,
    ROOTS,
    WORKFLOW_ATTRIBUTES,
    Analysis,
    Reference,
    TemplateProblem,
    analyse_expression,
    analyse_template,
    environment,
)
from aoe.format.workflow import (
    Agent,
    Input,
    LLMConfig,
    OutputConfig,
    RetryOverrides,
    SourceText,
    Workflow,
)
from aoe.format.yamlsource import Path, SourceMap, YamlError, parse_yaml, read_text
from aoe.types import Diagnostic, Severity

if TYPE_CHECKING:
    from aoe.format.schemarefs import Refusal

MAX_INCLUDED_FILE_BYTES = 1024 * 1024
MAX_TEMPLATE_PROBLEMS = 20  # reported of one template; the rest are counted
# Jinja reads `x.name` as the attribute before the key: for these, a dict's method
MAPPING_METHODS = frozenset(name for name in dir(dict) if not name.startswith("_"))


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
    loader = _Loader(os.fspath(path), name, checks)
    # Loading makes a great many objects and no garbage cycles: the cyclic
    # collector would only rescan them, again and again (5% of a large file).
    collecting = gc.isenabled()
    gc.disable()
    error: Exception | None = None
    try:
        workflow = loader.load()
    except Exception as e:  # whatever stops one file is that file's error, not the caller's
        error, workflow = e, None
        loader.diagnostics.append(_stopped_by(name, e))
    finally:
        if collecting:
            gc.enable()
    diagnostics = tuple(sorted(_root_causes(loader.diagnostics), key=sort_key))
    return LoadResult(name, workflow if not has_errors(diagnostics) else None, diagnostics, error)


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


def _folder_of(path: str) -> FsPath:
    """The folder of the workflow file, symlinks resolved where they can be."""
    try:
        return FsPath(path).resolve().parent
    except (OSError, ValueError, RuntimeError):  # a NUL in the name, a symlink loop
        return FsPath(os.path.abspath(path.replace("\x00", ""))).parent


@cache
def _agents_adapter() -> TypeAdapter[dict[str, AgentSpec]]:
    return TypeAdapter(dict[str, AgentSpec])


@cache
def _field_adapter(name: str) -> TypeAdapter[Any]:
    """One header field validated alone, with its constraints and strictness."""
    field = WorkflowHeader.model_fields[name]
    annotated: Any = Annotated[field.annotation, field]
    return TypeAdapter(annotated, config=ConfigDict(strict=True))


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


_UNKNOWN: Any = object()  # a section whose errors are reported; checks that need it are skipped


class _Loader:
    def __init__(self, path: str, name: str, checks: Sequence[Check]) -> None:
        self.path = path
        self.name = name
        self.folder = _folder_of(path)
        self.display_folder = os.path.dirname(name)
        self.checks = checks
        self.diagnostics: list[Diagnostic] = []
        self.source = SourceMap(name)
        self.text = ""
        self._lines: list[str] | None = None
        self.files: dict[str, str] = {}
        self.schema_files: dict[Any, Any] = {}  # the files output schemas refer to, parsed
        # where each agent's merged llm fields were written, for price and provider errors
        self.llm_origins: dict[tuple[str, int], dict[str, Path]] = {}
        # what the checks look at, set as the passes reach them
        self.raw_agents: dict[str, Any] = {}
        self.specs: dict[str, AgentSpec] = {}
        self.inputs: Any = _UNKNOWN
        # what the templates read of the inputs, for the unused-input warning
        self.inputs_read: set[str] = set()
        self.inputs_read_dynamically = False

    # -- reporting ---------------------------------------------------------
    def error(self, path: Path, code: str, message: str, *, at_key: bool = False) -> None:
        self.diagnostics.append(self.source.diagnostic(path, code, message, at_key=at_key))

    def warn(self, path: Path, code: str, message: str, *, at_key: bool = False) -> None:
        self.diagnostics.append(
            self.source.diagnostic(path, code, message, at_key=at_key, severity=Severity.WARNING)
        )

    # -- the passes --------------------------------------------------------
    def load(self) -> Workflow | None:
        try:
            self.text = read_text(self.path, self.name)
            document = parse_yaml(self.text, self.name)
        except YamlError as e:
            self.diagnostics.extend(e.diagnostics)
            return None
        self.source = document.source
        self.diagnostics.extend(document.diagnostics)
        data = document.data
        if not isinstance(data, dict):
            self.error((), "type", "a workflow file is a mapping with version, name and agents")
            return None
        data = {k: v for k, v in data.items() if not k.startswith("x-")}

        header = self.check_header(data)
        raw_agents = data.get("agents")
        if not isinstance(raw_agents, dict):
            return None  # reported by the header check
        specs = self.check_agents(raw_agents)
        dependencies = self.check_dependencies(raw_agents, specs)

        self.raw_agents = raw_agents
        self.specs = specs
        self.inputs = header["inputs"]
        if self.inputs is _UNKNOWN and isinstance(data.get("inputs"), dict):
            self.inputs = data["inputs"]  # the names are declared even where a type is wrong
        self.check_input_names()
        agents: dict[str, Agent] = {}
        for agent_id, raw in raw_agents.items():
            spec = specs.get(agent_id)
            texts = self.agent_texts(agent_id, spec, raw)
            self.check_agent_templates(agent_id, texts, _raw_depends_on(raw, spec))
            if spec is not None:
                agent = self.resolve_agent(agent_id, spec, header["defaults"], texts)
                if agent is not None:
                    agents[agent_id] = agent
        outputs = self.check_outputs(header["outputs"])
        if not has_errors(self.diagnostics):
            self.check_unused_inputs()
        budget = header["cost_budget"]
        for check in self.checks:
            check(agents, None if budget is _UNKNOWN else budget, self.llm_origins, self)

        if has_errors(self.diagnostics) or dependencies is None:
            return None
        return Workflow(
            name=header["name"],
            path=self.path,
            text=self.text,
            files=MappingProxyType(self.files),
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
        )

    def check_header(self, data: dict[str, Any]) -> dict[str, Any]:
        """Validate everything but the agents; sections with errors come back as unknown."""
        try:
            header = WorkflowHeader.model_validate(data)
        except ValidationError as e:
            self.diagnostics.extend(diagnostics_from_error(e, self.source, WorkflowHeader))
            broken = {str(err["loc"][0]) for err in e.errors() if err["loc"]}
            values: dict[str, Any] = {}
            for field, info in WorkflowHeader.model_fields.items():
                if field in broken or field == "agents":
                    values[field] = _UNKNOWN
                elif field in data:
                    values[field] = _field_adapter(field).validate_python(data[field])
                else:
                    values[field] = info.get_default(call_default_factory=True)
            return values
        return {field: getattr(header, field) for field in WorkflowHeader.model_fields}

    def check_agents(self, raw_agents: dict[str, Any]) -> dict[str, AgentSpec]:
        """Agent ids and each agent's keys and values; the valid agents' models."""
        for agent_id in raw_agents:
            if not AGENT_ID_RE.match(agent_id) or len(agent_id) > AGENT_ID_MAX:
                self.error(("agents", agent_id), "agent-id", _bad_id_message(agent_id), at_key=True)
            elif agent_id in MAPPING_METHODS:
                self.error(
                    ("agents", agent_id),
                    "agent-id",
                    f"agent id '{agent_id}' is the name of a method of mappings: templates "
                    f"reading agents.{agent_id} would get the method; rename the agent",
                    at_key=True,
                )
        try:
            return _agents_adapter().validate_python(raw_agents)
        except ValidationError as e:
            self.diagnostics.extend(
                diagnostics_from_error(
                    e, self.source, AgentSpec, prefix=("agents",), root_prefix=("agents", "*")
                )
            )
            broken = {err["loc"][0] for err in e.errors() if err["loc"]}
        return {
            agent_id: AgentSpec.model_validate(raw)
            for agent_id, raw in raw_agents.items()
            if agent_id not in broken
        }

    def check_dependencies(
        self, raw_agents: dict[str, Any], specs: Mapping[str, AgentSpec]
    ) -> graphs.Graph | None:
        """Unknown, duplicate and self dependencies, and cycles; the graph if there are none."""
        known = list(raw_agents)
        clean: dict[str, list[str]] = {}
        ok = True
        for agent_id, raw in raw_agents.items():
            deps = _raw_depends_on(raw, specs.get(agent_id))
            seen: set[str] = set()
            kept: list[str] = []
            for i, dep in enumerate(deps):
                where: Path = ("agents", agent_id, "depends_on")
                if isinstance(raw, dict) and isinstance(raw.get("depends_on"), list):
                    where = (*where, i)
                if dep in seen:
                    self.error(
                        where,
                        "duplicate-dependency",
                        f"agent '{agent_id}' lists '{dep}' in depends_on twice; remove one",
                    )
                    ok = False
                elif dep == agent_id:
                    self.error(
                        where,
                        "self-dependency",
                        f"agent '{agent_id}' depends on itself; remove '{dep}' from its depends_on",
                    )
                    ok = False
                elif dep not in raw_agents:
                    self.error(
                        where,
                        "unknown-dependency",
                        f"agent '{agent_id}' depends on '{dep}', which is not an agent "
                        f"of this file{did_you_mean(dep, known) or _listing(known)}",
                    )
                    ok = False
                else:
                    kept.append(dep)
                seen.add(dep)
            clean[agent_id] = kept
        for cycle in graphs.find_cycles(clean):
            first, second = cycle[0], cycle[1]
            raw_deps = (
                raw_agents[first].get("depends_on") if isinstance(raw_agents[first], dict) else None
            )
            where = ("agents", first, "depends_on")
            if isinstance(raw_deps, list) and second in raw_deps:
                where = (*where, raw_deps.index(second))
            self.error(
                where,
                "cycle",
                f"dependency cycle: {graphs.format_cycle(cycle)} (each depends on the "
                "next); remove one of these dependencies",
            )
            ok = False
        return graphs.Graph(clean) if ok else None

    # -- resolution -----------------------------------------------------------
    def agent_texts(
        self, agent_id: str, spec: AgentSpec | None, raw: Any
    ) -> dict[str, SourceText | None]:
        """An agent's templates and expressions, read from files where it names them.

        For an agent whose keys did not validate, whatever of them is plain
        text is still returned, so its templates are checked too.
        """
        at: Path = ("agents", agent_id)
        if spec is None:
            fields = raw if isinstance(raw, dict) else {}
            return {
                field: self.inline_text((*at, field), value) if isinstance(value, str) else None
                for field in _TEXT_FIELDS
                for value in (fields.get(field),)
            }
        return {
            "prompt": self.source_text(at, "prompt", spec.prompt, spec.prompt_file),
            "system": self.source_text(at, "system", spec.system, spec.system_file),
            "when": self.inline_text((*at, "when"), spec.when),
            "foreach": self.inline_text((*at, "foreach"), spec.foreach),
        }

    def resolve_agent(
        self, agent_id: str, spec: AgentSpec, defaults: Any, texts: Mapping[str, SourceText | None]
    ) -> Agent | None:
        at: Path = ("agents", agent_id)
        base = defaults if defaults not in (None, _UNKNOWN) else None
        llm_fields, origins = _layered(
            [(base.llm if base else None, ("defaults", "llm")), (spec.llm, (*at, "llm"))]
        )
        if "model" not in llm_fields:
            if defaults is not _UNKNOWN:
                self.error(
                    at,
                    "missing-model",
                    f"agent '{agent_id}' has no model: set llm.model on the agent, "
                    "or defaults.llm.model for every agent",
                    at_key=True,
                )
            return None
        primary = _llm_config(llm_fields, origins)
        self.llm_origins[(agent_id, 0)] = origins
        fallbacks: list[LLMConfig] = []
        for i, entry in enumerate(spec.fallbacks):
            fields, fallback_origins = _layered(
                [(entry, (*at, "fallbacks", i))], llm_fields, origins
            )
            config = _llm_config(fields, fallback_origins)
            if config in (primary, *fallbacks):
                self.warn(
                    (*at, "fallbacks", i),
                    "fallback-repeated",
                    f"fallback {i + 1} of agent '{agent_id}' repeats {config.label}, "
                    "which is already tried; remove it or change its model",
                )
            fallbacks.append(config)
            self.llm_origins[(agent_id, i + 1)] = fallback_origins
        for i, config in enumerate((primary, *fallbacks)):
            vendor = _vendor_of(config.model)
            if config.provider in _VENDORS and vendor not in (None, config.provider):
                which = f"agent '{agent_id}'" + (f", fallback {i}" if i else "")
                self.warn(
                    self.llm_origins[(agent_id, i)].get("provider", at),
                    "provider-model",
                    f"{which}: model '{config.model}' is a {_VENDORS[vendor]} model, but it "
                    f"goes to provider '{config.provider}'; set provider: {vendor}",
                )

        retry, _ = _layered(
            [(base.retry if base else None, ("defaults", "retry")), (spec.retry, (*at, "retry"))]
        )
        output = self.resolve_output(agent_id, spec)
        prompt = texts["prompt"]
        if prompt is None or output is None:
            return None
        if output.schema is not None and output.format == "json":
            self.check_reply_fits(agent_id, spec, output.schema, (primary, *fallbacks))
        return Agent(
            id=agent_id,
            prompt=prompt,
            system=texts["system"],
            llm=primary,
            fallbacks=tuple(fallbacks),
            timeout=_first(spec.timeout, base.timeout if base else None, DEFAULT_TIMEOUT),
            retry=RetryOverrides(**retry),
            cost_limit=_first(spec.cost_limit, base.cost_limit if base else None, None),
            description=spec.description,
            depends_on=tuple(spec.depends_on),
            output=output,
            cache=spec.cache,
            when=texts["when"],
            trigger_rule=spec.trigger_rule,
            foreach=texts["foreach"],
        )

    def resolve_output(self, agent_id: str, spec: AgentSpec) -> OutputConfig | None:
        output = spec.output
        if output is None:
            return OutputConfig()
        at: Path = ("agents", agent_id, "output")
        schema = output.json_schema
        # where the schema was written: this file under agents.X.output.schema, or
        # a schema file of its own (its path in the folder as its key)
        source, prefix, key = self.source, (*at, "schema"), None
        if output.schema_file is not None:
            where = (*at, "schema_file")
            text = self.read_included(where, output.schema_file)
            if text is None:
                return None
            display = self.display_path(output.schema_file)
            try:
                parsed = parse_yaml(text, display)
            except YamlError as e:
                self.diagnostics.extend(e.diagnostics)
                return None
            self.diagnostics.extend(parsed.diagnostics)
            schema = parsed.data
            if not isinstance(schema, dict):
                self.error(
                    where,
                    "schema",
                    f"{output.schema_file} must hold a JSON Schema object (a mapping)",
                )
                return None
            source, prefix = parsed.source, ()
            key = os.path.normpath(output.schema_file).replace(os.sep, "/")
        if schema is not None and not self.check_schema(
            (*at, "schema") if output.schema_file is None else (*at, "schema_file"), schema
        ):
            return None
        if schema is not None and has_refs(schema):
            from aoe.format.schemarefs import Folder, bundle  # only for schemas with references

            # resolved here, once, and bundled: nothing is fetched at run time
            folder = Folder(self.read_referenced, self.display_path, self.schema_files)
            bundled, found = bundle(schema, source, prefix, key, folder)
            self.diagnostics.extend(found)
            if bundled is None:
                return None
            schema = bundled
        return OutputConfig(output.format, MappingProxyType(schema) if schema else None)

    def check_reply_fits(
        self, agent_id: str, spec: AgentSpec, schema: Any, models: tuple[LLMConfig, ...]
    ) -> None:
        """An output schema no reply within ``max_tokens`` can meet is an error here,
        not minutes of retries (and a mock building gigabytes) later."""
        tokens = max(llm.max_tokens for llm in models)
        room = tokens * CHARS_PER_TOKEN
        least = least_reply_chars(schema, 10**15)
        if least > room:
            assert spec.output is not None
            field = "schema" if spec.output.schema_file is None else "schema_file"
            self.error(
                ("agents", agent_id, "output", field),
                "schema-too-large",
                f"agent '{agent_id}': its output schema asks for replies of at least "
                f"{least:,} characters, more than max_tokens {tokens:,} allows "
                f"(at most {room:,}); lower minLength/minItems, or raise llm.max_tokens",
            )

    def read_referenced(self, relative: str) -> str | Refusal:
        """A file an output schema's ``$ref`` names, read as ``prompt_file`` is; a
        refusal is reported by the bundler at the ``$ref``, not here."""
        from aoe.format.schemarefs import Refusal

        before = len(self.diagnostics)
        text = self.read_included((), relative)
        refused = self.diagnostics[before:]
        del self.diagnostics[before:]
        if text is None:
            first = refused[0] if refused else None
            if first is None:
                return Refusal("io", "it cannot be read")
            return Refusal(first.code, shortened(first.message, 300))
        return text

    def check_schema(self, where: Path, schema: dict[str, Any]) -> bool:
        problem = schema_problem(schema)
        if problem is not None:
            self.error(where, "schema", f"the output schema is not a valid JSON Schema: {problem}")
        return problem is None

    def source_text(
        self, at: Path, field: str, inline: str | None, file: str | None
    ) -> SourceText | None:
        if file is not None:
            text = self.read_included((*at, f"{field}_file"), file)
            if text is None:
                return None
            return SourceText(text, self.display_path(file), 1, 1)
        return self.inline_text((*at, field), inline) if inline is not None else None

    def inline_text(self, path: Path, text: str | None) -> SourceText | None:
        if text is None:
            return None
        mark = self.source.value(path)
        line = mark.text_line
        column = mark.column
        if mark.style in ("|", ">"):
            source_line = self.line(line)
            column = len(source_line) - len(source_line.lstrip(" ")) + 1
        elif mark.quoted:
            column += 1
        return SourceText(text, self.name, line, column, mark.literal)

    def line(self, number: int) -> str:
        if self._lines is None:
            self._lines = self.text.splitlines()
        return self._lines[number - 1] if 0 < number <= len(self._lines) else ""

    def display_path(self, relative: str) -> str:
        return os.path.join(self.display_folder, relative) if self.display_folder else relative

    def read_included(self, where: Path, relative: str) -> str | None:
        """A file named in the workflow, read only from inside the workflow's folder.

        Only a regular file is read (a FIFO, a device or a folder is an error at
        ``where``), and never more than :data:`MAX_INCLUDED_FILE_BYTES` of it.
        The text is kept in ``files`` (the run record's copy); None when it
        cannot be used, with the reason reported at ``where``.
        """
        if "\x00" in relative:
            self.error(
                where,
                "path",
                f"{relative!r} contains a NUL character; name the file "
                "relative to the workflow file's folder",
            )
            return None
        if os.path.isabs(relative) or relative.startswith("~"):
            self.error(
                where,
                "path",
                f"'{relative}' is an absolute path; name the file "
                "relative to the workflow file's folder",
            )
            return None
        try:
            target = (self.folder / relative).resolve()
        except (OSError, RuntimeError) as e:  # a symlink loop, a name too long
            self.error(where, "io", f"cannot read '{relative}': {getattr(e, 'strerror', e) or e}")
            return None
        if not target.is_relative_to(self.folder):
            self.error(
                where,
                "path",
                f"'{relative}' is outside the workflow file's folder; "
                "keep prompt and schema files next to the workflow (or below it)",
            )
            return None
        try:
            raw = read_limited(target, MAX_INCLUDED_FILE_BYTES)
        except FileRefused as e:
            if e.kind == "not-found":
                hint = ""
                with suppress(OSError):  # a folder that cannot be listed gives no hint
                    hint = did_you_mean(target.name, os.listdir(target.parent))
                self.error(
                    where,
                    "file-not-found",
                    f"file '{relative}' not found (looked in "
                    f"{self.display_path(os.path.dirname(relative)) or '.'}){hint}",
                )
            elif e.kind == "too-large":
                self.error(
                    where,
                    "too-large",
                    f"'{relative}' is larger than {size_text(MAX_INCLUDED_FILE_BYTES)}",
                )
            elif e.kind == "not-a-file":
                self.error(where, "not-a-file", f"'{relative}' {e.message}; name a file")
            else:
                self.error(where, "io", f"'{relative}': {e.message}")
            return None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            self.error(where, "encoding", f"'{relative}' is not UTF-8 text; save it as UTF-8")
            return None
        self.files[relative] = text
        return text

    # -- templates -------------------------------------------------------------
    def analyse(
        self, source: SourceText, path: Path, field: str, owner: str, *, expression: bool = False
    ) -> Analysis | None:
        try:
            return analyse_expression(source.text) if expression else analyse_template(source.text)
        except RecursionError:
            self.template_error(
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
            self.template_error(
                source,
                path,
                e.line,
                "template-limit" if e.costly else "template-syntax",
                f"{owner}: the {field} {kind} "
                + ("would take too much time or memory" if e.costly else "does not parse")
                + f": {e.message}",
            )
            return None

    def template_error(
        self,
        source: SourceText,
        path: Path,
        line: int,
        code: str,
        message: str,
        needle: str | None = None,
    ) -> None:
        """Report at a template's line, and at ``needle``'s column when it is on that line."""
        if source.file != self.name:  # a prompt file: point into that file
            lines = source.text.splitlines()
            text = lines[line - 1] if 0 < line <= len(lines) else ""
            found = text.find(needle) if needle else -1
            self.diagnostics.append(
                Diagnostic(
                    source.file, line, found + 1 if found >= 0 else 1, Severity.ERROR, code, message
                )
            )
            return
        if source.exact:
            file_line = source.line + line - 1
            text = self.line(file_line)
            column = source.column if line == 1 else len(text) - len(text.lstrip(" ")) + 1
            found = text.find(needle, column - 1) if needle else -1
        else:  # the scalar's lines were joined: look for the needle in the lines it spans
            file_line, column, found = source.line, source.column, -1
            if needle is not None:
                for number in self._lines_of(source, path):
                    start = source.column - 1 if number == source.line else 0
                    found = self.line(number).find(needle, start)
                    if found >= 0:
                        file_line = number
                        break
        if found >= 0:
            column = found + 1
        self.diagnostics.append(
            Diagnostic(self.name, file_line, column, Severity.ERROR, code, message)
        )

    def _lines_of(self, source: SourceText, path: Path) -> range:
        """The file lines a multi-line folded, quoted or plain scalar spans, as far as
        indentation tells: the lines after its first that are indented deeper than
        its key (at most 500)."""
        indent = self.source.key(path).column - 1
        last = source.line
        while last - source.line < 500:
            following = self.line(last + 1)
            if following.strip() and len(following) - len(following.lstrip(" ")) <= indent:
                break
            if last + 1 > len(self._lines or ()):
                break
            last += 1
        return range(source.line, last + 1)

    def check_agent_templates(
        self, agent_id: str, texts: Mapping[str, SourceText | None], depends_on: Sequence[str]
    ) -> None:
        at: Path = ("agents", agent_id)
        owner = f"agent '{agent_id}'"
        foreach = texts.get("foreach") is not None
        for field in _TEXT_FIELDS:
            source = texts.get(field)
            if source is None:
                continue
            path = (*at, field)
            analysis = self.analyse(
                source, path, field, owner, expression=field in _EXPRESSION_FIELDS
            )
            if analysis is None:
                continue
            self.check_references(
                analysis,
                source,
                path,
                f"{owner}, {field}",
                allowed_agents=depends_on,
                item_allowed=foreach and field not in _EXPRESSION_FIELDS,
                foreach=foreach,
            )
            if field == "foreach" and analysis.whole is not None:
                self.check_foreach_list(analysis.whole, source, path, f"{owner}, foreach")
        spec = self.specs.get(agent_id)
        if spec is not None and texts.get("prompt") is not None:
            prompt = texts["prompt"]
            assert prompt is not None
            if not prompt.text.strip():
                where = (*at, "prompt" if spec.prompt is not None else "prompt_file")
                self.error(where, "empty-prompt", f"{owner}: the prompt is empty; write one")
        if spec is not None and not depends_on and "trigger_rule" in spec.model_fields_set:
            self.warn(
                (*at, "trigger_rule"),
                "trigger-rule-alone",
                f"{owner}: trigger_rule has no effect on an agent without depends_on; remove it",
                at_key=True,
            )

    def check_foreach_list(
        self, ref: Reference, source: SourceText, path: Path, owner: str
    ) -> None:
        """``foreach`` on a plain reference: it must be to a list."""
        problem = None
        if ref.kind == "input" and not ref.rest and self.inputs is not _UNKNOWN:
            spec = self.inputs.get(ref.name)
            kind = spec.type if isinstance(spec, InputSpec) else None
            if kind is not None and kind != "list":
                problem = (
                    f"foreach needs a list, and inputs.{ref.name} is of type '{kind}'; "
                    "declare it with type: list"
                )
        elif ref.kind == "agent" and ref.attribute == "output" and not ref.rest:
            target = self.specs.get(ref.name)
            if target is not None and target.foreach is None:
                output = target.output
                if output is None or output.format == "text":
                    problem = (
                        f"foreach needs a list, and agents.{ref.name}.output is text; give "
                        f"'{ref.name}' output.format: json with a list (type: array) schema"
                    )
                elif output.json_schema is not None and output.json_schema.get("type") not in (
                    None,
                    "array",
                ):
                    problem = (
                        f"foreach needs a list, and the output schema of '{ref.name}' has "
                        f"type: {output.json_schema.get('type')}; make it type: array, or "
                        "loop over a list inside it"
                    )
        if problem is not None:
            self.template_error(
                source,
                path,
                ref.line,
                "foreach-list",
                f"{owner}: {problem}",
                f"{_ROOT_OF[ref.kind]}.{ref.name}",
            )

    def check_outputs(self, outputs: Any) -> dict[str, SourceText]:
        if outputs in (None, _UNKNOWN):
            return {}
        result: dict[str, SourceText] = {}
        for output_name, text in outputs.items():
            path: Path = ("outputs", output_name)
            source = self.inline_text(path, text)
            assert source is not None
            result[output_name] = source
            owner = f"output '{output_name}'"
            analysis = self.analyse(source, path, "output", owner)
            if analysis is not None:
                self.check_references(
                    analysis,
                    source,
                    path,
                    owner,
                    allowed_agents=None,
                    item_allowed=False,
                    foreach=False,
                )
        return result

    def check_references(
        self,
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
        inputs, raw_agents = self.inputs, self.raw_agents
        reported = 0

        def report(line: int, code: str, message: str) -> None:
            nonlocal reported
            reported += 1
            if reported <= MAX_TEMPLATE_PROBLEMS:
                self.template_error(source, path, line, code, f"{owner}: {message}", needle)

        seen: set[tuple[str, str, object, tuple[object, ...]]] = set()
        for ref in analysis.references:
            key = (ref.kind, ref.name, ref.attribute, ref.rest)
            if key in seen:
                continue  # the same reference again: the same mistake, if it is one
            seen.add(key)
            needle = f"{_ROOT_OF[ref.kind]}.{ref.name}" if ref.kind in _ROOT_OF else ref.name
            if ref.kind == "agent":
                if ref.name not in raw_agents:
                    report(
                        ref.line,
                        "unknown-agent",
                        f"agents.{ref.name} is not an agent of this file"
                        f"{did_you_mean(ref.name, list(raw_agents))}",
                    )
                elif allowed_agents is not None and ref.name not in allowed_agents:
                    report(
                        ref.line,
                        "undeclared-dependency",
                        f"reads agents.{ref.name} but does not depend on it; "
                        f"add '{ref.name}' to depends_on",
                    )
                elif ref.attribute not in AGENT_ATTRIBUTES:
                    shown = f"agents.{ref.name}" + (f".{ref.attribute}" if ref.attribute else "")
                    hint = (
                        did_you_mean(str(ref.attribute), AGENT_ATTRIBUTES)
                        if ref.attribute is not None
                        else ""
                    )
                    report(
                        ref.line,
                        "agent-attribute",
                        f"{shown}: an agent has 'output' and 'status'"
                        + (hint or f"; write agents.{ref.name}.output"),
                    )
                elif ref.attribute == "output" and ref.rest:
                    problem = self.output_shape_problem(ref)
                    if problem:
                        report(ref.line, "output-shape", problem)
            elif ref.kind == "input":
                self.inputs_read.add(ref.name)
                if inputs is not _UNKNOWN and ref.name not in inputs:
                    match = closest(ref.name, list(inputs))
                    report(
                        ref.line,
                        "undeclared-input",
                        f"inputs.{ref.name} is not a declared input; "
                        + (
                            f"did you mean inputs.{match}?"
                            if match
                            else f"declare '{ref.name}' under inputs:"
                        ),
                    )
            elif ref.kind == "workflow":
                if ref.name not in WORKFLOW_ATTRIBUTES:
                    report(
                        ref.line,
                        "workflow-attribute",
                        f"workflow.{ref.name} does not exist; templates can read workflow.name",
                    )
            elif ref.kind in ("filter", "test"):
                known = environment().filters if ref.kind == "filter" else environment().tests
                if ref.name not in known:
                    report(
                        ref.line,
                        f"unknown-{ref.kind}",
                        f"Jinja has no {ref.kind} '{ref.name}'{did_you_mean(ref.name, known)}",
                    )
            elif ref.kind == "dynamic":
                if ref.name == "inputs":
                    self.inputs_read_dynamically = True
                continue  # agents[name] and the like: only dependencies are there at run time
            elif ref.name in FOREACH_NAMES:
                if not item_allowed:
                    where_ok = (
                        "its prompt and system templates"
                        if foreach
                        else "the templates of an agent with foreach"
                    )
                    report(ref.line, "foreach-name", f"'{ref.name}' is only defined in {where_ok}")
            else:
                report(ref.line, "undefined-name", _undefined_name(ref.name, inputs, raw_agents))
        if reported > MAX_TEMPLATE_PROBLEMS:
            self.template_error(
                source,
                path,
                1,
                "more-problems",
                f"{owner}: and {reported - MAX_TEMPLATE_PROBLEMS:,} more problems like these",
            )

    def output_shape_problem(self, ref: Reference) -> str | None:
        """Reading inside ``agents.X.output`` when X's output cannot have that inside."""
        target = self.specs.get(ref.name)
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

    def check_input_names(self) -> None:
        if self.inputs is _UNKNOWN:
            return
        for name in self.inputs:
            if name in MAPPING_METHODS:
                self.error(
                    ("inputs", name),
                    "input-name",
                    f"input '{name}' is the name of a method of mappings: templates reading "
                    f"inputs.{name} would get the method; rename the input",
                    at_key=True,
                )
            elif not AGENT_ID_RE.match(name):
                self.warn(
                    ("inputs", name),
                    "input-name",
                    f"input '{name}' is not a plain name: templates can read it only as "
                    f"inputs['{name}']; use letters, digits and underscores",
                    at_key=True,
                )

    def check_unused_inputs(self) -> None:
        if self.inputs_read_dynamically or self.inputs is _UNKNOWN:
            return  # inputs[...] or a loop over inputs: any input may be read
        for name in self.inputs:
            if name not in self.inputs_read:
                self.warn(
                    ("inputs", name),
                    "unused-input",
                    f"input '{name}' is declared but no template reads it; "
                    f"use it as {{{{ inputs.{name} }}}} or remove it",
                    at_key=True,
                )


# -- helpers -------------------------------------------------------------------


def _root_causes(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Without the errors a YAML problem caused at its own place: a refused tag
    leaves a value of the wrong type behind, and that is not a second mistake."""
    yaml_places = {(d.file, d.line, d.column) for d in diagnostics if d.code.startswith("yaml-")}
    return [
        d
        for d in diagnostics
        if d.code.startswith("yaml-") or (d.file, d.line, d.column) not in yaml_places
    ]


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


def _raw_depends_on(raw: Any, spec: AgentSpec | None) -> list[str]:
    if spec is not None:
        return list(spec.depends_on)
    deps = raw.get("depends_on") if isinstance(raw, dict) else None
    if isinstance(deps, str):
        return [deps]
    if isinstance(deps, list):
        return [d for d in deps if isinstance(d, str)]
    return []


_TEXT_FIELDS = ("prompt", "system", "when", "foreach")
_ROOT_OF = {"agent": "agents", "input": "inputs", "workflow": "workflow"}
_EXPRESSION_FIELDS = ("when", "foreach")


def _layered(
    layers: Sequence[tuple[Any, Path]],
    below: Mapping[str, Any] | None = None,
    below_origins: Mapping[str, Path] | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """The keys each layer sets, later layers over earlier ones (``params`` merged
    key by key), over ``below``; with where each value was written."""
    merged = dict(below or {})
    origins = dict(below_origins or {})
    for spec, path in layers:
        if spec is None:
            continue
        for key in spec.model_fields_set:
            value = getattr(spec, key)
            if value is None:
                continue
            if key == "params":
                value = {**merged.get("params", {}), **value}
            merged[key] = value
            origins[key] = (*path, key)
    return merged, origins


_VENDORS = {"openai": "OpenAI", "anthropic": "Anthropic"}


def _vendor_of(model: str) -> str | None:
    """The built-in provider a model name belongs to, if it is plainly one's."""
    if model.startswith("claude"):
        return "anthropic"
    if model.startswith(("gpt-", "chatgpt-", "o1", "o3", "o4", "text-embedding-")):
        return "openai"
    return None


def _llm_config(fields: Mapping[str, Any], origins: Mapping[str, Path]) -> LLMConfig:
    """The merged llm keys as a config; a provider never written follows the model
    (claude-* to anthropic, anything else to openai)."""
    model = fields["model"]
    provider = fields["provider"] if "provider" in origins else (_vendor_of(model) or "openai")
    return LLMConfig(
        provider=provider,
        model=model,
        max_tokens=fields.get("max_tokens", DEFAULT_MAX_TOKENS),
        temperature=fields.get("temperature"),
        top_p=fields.get("top_p"),
        stop=tuple(fields.get("stop", ())),
        seed=fields.get("seed"),
        params=MappingProxyType(dict(fields.get("params", {}))),
    )


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit]) + (
        f" and {len(names) - limit} more" if len(names) > limit else ""
    )
    return f"; the agents are {shown}"


def _first(*values: Any) -> Any:
    for value in values[:-1]:
        if value is not None:
            return value
    return values[-1]


def _undefined_name(name: str, inputs: Any, raw_agents: Mapping[str, Any]) -> str:
    if inputs is not _UNKNOWN and name in inputs:
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
