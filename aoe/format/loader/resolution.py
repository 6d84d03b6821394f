"""The resolution pass: each valid agent as the engine will run it.

Defaults are merged under the agent's own keys (remembering where each llm
field was written, for the caller's price and provider checks), every agent
gets a model and a provider, its templates are read from files where it names
them, and its output schema is read, checked as JSON Schema and bundled with
the files its ``$ref`` names, so nothing is fetched at run time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from aoe.format.loader.context import TEXT_FIELDS, UNKNOWN, Context
from aoe.format.loader.included import read_included, read_referenced, source_text
from aoe.format.schemas import CHARS_PER_TOKEN, has_refs, least_reply_chars, schema_problem
from aoe.format.spec import DEFAULT_MAX_TOKENS, DEFAULT_TIMEOUT, AgentSpec
from aoe.format.workflow import Agent, LLMConfig, OutputConfig, RetryOverrides, SourceText
from aoe.format.yamlsource import Path, SourceMap, YamlError, parse_yaml

_VENDORS = {"openai": "OpenAI", "anthropic": "Anthropic"}


def agent_texts(
    ctx: Context, agent_id: str, spec: AgentSpec | None, raw: Any
) -> dict[str, SourceText | None]:
    """An agent's templates and expressions, read from files where it names them.

    For an agent whose keys did not validate, whatever of them is plain
    text is still returned, so its templates are checked too.
    """
    at: Path = ("agents", agent_id)
    if spec is None:
        fields = raw if isinstance(raw, dict) else {}
        return {
            field: ctx.inline_text((*at, field), value) if isinstance(value, str) else None
            for field in TEXT_FIELDS
            for value in (fields.get(field),)
        }
    return {
        "prompt": source_text(ctx, at, "prompt", spec.prompt, spec.prompt_file),
        "system": source_text(ctx, at, "system", spec.system, spec.system_file),
        "when": ctx.inline_text((*at, "when"), spec.when),
        "foreach": ctx.inline_text((*at, "foreach"), spec.foreach),
    }


def resolve_agent(
    ctx: Context,
    agent_id: str,
    spec: AgentSpec,
    defaults: Any,
    texts: Mapping[str, SourceText | None],
) -> Agent | None:
    """The agent with its defaults merged in; None where something is missing or
    wrong (reported)."""
    at: Path = ("agents", agent_id)
    base = defaults if defaults not in (None, UNKNOWN) else None
    models = _models(ctx, agent_id, spec, base.llm if base else None, defaults is not UNKNOWN)
    if models is None:
        return None
    retry, _ = _layered(
        [(base.retry if base else None, ("defaults", "retry")), (spec.retry, (*at, "retry"))]
    )
    output = resolve_output(ctx, agent_id, spec)
    prompt = texts["prompt"]
    if prompt is None or output is None:
        return None
    if output.schema is not None and output.format == "json":
        check_reply_fits(ctx, agent_id, spec, output.schema, models)
    return Agent(
        id=agent_id,
        prompt=prompt,
        system=texts["system"],
        llm=models[0],
        fallbacks=models[1:],
        timeout=_first(spec.timeout, base.timeout if base else None, DEFAULT_TIMEOUT),
        timeout_total=_first(spec.timeout_total, base.timeout_total if base else None, None),
        retry=RetryOverrides(**retry),
        cost_limit=_first(spec.cost_limit, base.cost_limit if base else None, None),
        description=spec.description,
        depends_on=tuple(spec.depends_on),
        output=output,
        cache=spec.cache,
        cache_ttl=spec.cache_ttl,
        when=texts["when"],
        trigger_rule=spec.trigger_rule,
        foreach=texts["foreach"],
    )


def _models(
    ctx: Context, agent_id: str, spec: AgentSpec, default_llm: Any, defaults_known: bool
) -> tuple[LLMConfig, ...] | None:
    """The agent's model and its fallbacks, each over the one before; None (reported
    unless the defaults had errors of their own) when no model is set."""
    at: Path = ("agents", agent_id)
    llm_fields, origins = _layered([(default_llm, ("defaults", "llm")), (spec.llm, (*at, "llm"))])
    if "model" not in llm_fields:
        if defaults_known:
            ctx.error(
                at,
                "missing-model",
                f"agent '{agent_id}' has no model: set llm.model on the agent, "
                "or defaults.llm.model for every agent",
                at_key=True,
            )
        return None
    models = [_llm_config(llm_fields, origins)]
    ctx.llm_origins[(agent_id, 0)] = origins
    for i, entry in enumerate(spec.fallbacks):
        fields, fallback_origins = _layered([(entry, (*at, "fallbacks", i))], llm_fields, origins)
        config = _llm_config(fields, fallback_origins)
        if config in models:
            ctx.warn(
                (*at, "fallbacks", i),
                "fallback-repeated",
                f"fallback {i + 1} of agent '{agent_id}' repeats {config.label}, "
                "which is already tried; remove it or change its model",
            )
        models.append(config)
        ctx.llm_origins[(agent_id, i + 1)] = fallback_origins
    for i, config in enumerate(models):
        vendor = _vendor_of(config.model)
        if config.provider in _VENDORS and vendor not in (None, config.provider):
            which = f"agent '{agent_id}'" + (f", fallback {i}" if i else "")
            ctx.warn(
                ctx.llm_origins[(agent_id, i)].get("provider", at),
                "provider-model",
                f"{which}: model '{config.model}' is an {_VENDORS[vendor]} model, but it "
                f"goes to provider '{config.provider}'; set provider: {vendor}",
            )
    return tuple(models)


def resolve_output(ctx: Context, agent_id: str, spec: AgentSpec) -> OutputConfig | None:
    """The agent's output format and schema, the schema read, checked and bundled."""
    output = spec.output
    if output is None:
        return OutputConfig()
    at: Path = ("agents", agent_id, "output")
    schema = output.json_schema
    # where the schema was written: this file under agents.X.output.schema, or
    # a schema file of its own (its path in the folder as its key)
    source, prefix, key = ctx.source, (*at, "schema"), None
    if output.schema_file is not None:
        read = _schema_file(ctx, (*at, "schema_file"), output.schema_file)
        if read is None:
            return None
        schema, source = read
        prefix = ()
        key = os.path.normpath(output.schema_file).replace(os.sep, "/")
    if schema is not None and not check_schema(
        ctx, (*at, "schema") if output.schema_file is None else (*at, "schema_file"), schema
    ):
        return None
    if schema is not None and has_refs(schema):
        from aoe.format.schemadocs import Folder
        from aoe.format.schemarefs import bundle  # only for schemas with references

        # resolved here, once, and bundled: nothing is fetched at run time
        folder = Folder(
            lambda relative: read_referenced(ctx, relative), ctx.display_path, ctx.schema_files
        )
        bundled, found = bundle(schema, source, prefix, key, folder)
        ctx.diagnostics.extend(found)
        if bundled is None:
            return None
        schema = bundled
    return OutputConfig(
        output.format, MappingProxyType(schema) if schema else None, output.allow_truncated
    )


def _schema_file(ctx: Context, where: Path, relative: str) -> tuple[Any, SourceMap] | None:
    """An output schema read from its own file, with that file's source map."""
    text = read_included(ctx, where, relative)
    if text is None:
        return None
    try:
        parsed = parse_yaml(text, ctx.display_path(relative))
    except YamlError as e:
        ctx.diagnostics.extend(e.diagnostics)
        return None
    ctx.diagnostics.extend(parsed.diagnostics)
    if not isinstance(parsed.data, dict):
        ctx.error(where, "schema", f"{relative} must hold a JSON Schema object (a mapping)")
        return None
    return parsed.data, parsed.source


def check_reply_fits(
    ctx: Context, agent_id: str, spec: AgentSpec, schema: Any, models: tuple[LLMConfig, ...]
) -> None:
    """An output schema no reply within ``max_tokens`` can meet is an error here,
    not minutes of retries (and a mock building gigabytes) later."""
    tokens = max(llm.max_tokens for llm in models)
    room = tokens * CHARS_PER_TOKEN
    least = least_reply_chars(schema, 10**15)
    if least > room:
        assert spec.output is not None
        field = "schema" if spec.output.schema_file is None else "schema_file"
        ctx.error(
            ("agents", agent_id, "output", field),
            "schema-too-large",
            f"agent '{agent_id}': its output schema asks for replies of at least "
            f"{least:,} characters, more than max_tokens {tokens:,} allows "
            f"(at most {room:,}); lower minLength/minItems, or raise llm.max_tokens",
        )


def check_schema(ctx: Context, where: Path, schema: dict[str, Any]) -> bool:
    problem = schema_problem(schema)
    if problem is not None:
        ctx.error(where, "schema", f"the output schema is not a valid JSON Schema: {problem}")
    return problem is None


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


def _first(*values: Any) -> Any:
    for value in values[:-1]:
        if value is not None:
            return value
    return values[-1]
