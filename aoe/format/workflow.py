"""A workflow as the engine runs it: defaults merged, files read, graph checked.

:mod:`aoe.format.spec` describes the file as written; these frozen records are what
:func:`aoe.format.loader.load_workflow` makes of a valid file. Nothing here can be
missing or contradictory: every agent has a model, a prompt text and a place
in a DAG. Values still to come from the engine config (the retry policy, the
default budgets) are ``None`` here and resolved at run time.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from aoe.format.graph import Graph
from aoe.format.spec import InputType, OutputFormat, TriggerRule

# Records are NamedTuples: immutable, typed, and cheap to define and to make,
# which matters when a file has thousands of agents and `aoe validate` must
# start fast.
_NOTHING: Mapping[str, Any] = MappingProxyType({})


class SourceText(NamedTuple):
    """A template or expression and where it was written, for error messages.

    ``line`` and ``column`` are those of the text's first character in ``file``.
    ``exact`` is true when line N of the text is line ``line + N - 1`` of the
    file: a file of its own or a ``|`` block. Folded, quoted and plain scalars
    may join lines, so their text's lines do not map to the file's.
    """

    text: str
    file: str
    line: int
    column: int = 1
    exact: bool = True


class Input(NamedTuple):
    name: str
    type: InputType
    required: bool
    default: Any = None
    description: str | None = None


class LLMConfig(NamedTuple):
    """The model an attempt goes to, with its parameters."""

    provider: str
    model: str
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    params: Mapping[str, Any] = _NOTHING

    @property
    def label(self) -> str:
        """``provider/model``, as shown in graphs and reports."""
        return f"{self.provider}/{self.model}"


class RetryOverrides(NamedTuple):
    """An agent's retry settings; ``None`` fields fall back to the engine's retry_policy."""

    max_retries: int | None = None
    base_delay: float | None = None
    max_delay: float | None = None
    jitter: bool | None = None


class OutputConfig(NamedTuple):
    format: OutputFormat = "text"
    schema: Mapping[str, Any] | None = None
    allow_truncated: bool = True  # a reply cut off at max_tokens may be the output


class Agent(NamedTuple):
    """One LLM call of a workflow, fully resolved."""

    id: str
    prompt: SourceText
    llm: LLMConfig
    timeout: float  # from the last piece of a streamed reply
    system: SourceText | None = None
    description: str | None = None
    depends_on: tuple[str, ...] = ()
    fallbacks: tuple[LLMConfig, ...] = ()
    retry: RetryOverrides = RetryOverrides()
    cost_limit: float | None = None
    output: OutputConfig = OutputConfig()
    cache: bool | None = None  # None: as the workflow, the run and the engine say
    when: SourceText | None = None
    trigger_rule: TriggerRule = "all_completed"
    foreach: SourceText | None = None
    timeout_total: float | None = None  # from the attempt's start
    cache_ttl: float | None = None  # None: the workflow's, else the engine's

    @property
    def models(self) -> tuple[LLMConfig, ...]:
        """The model and then each fallback, in the order they are tried."""
        return (self.llm, *self.fallbacks)


class Workflow(NamedTuple):
    """A valid workflow file, ready to plan or run."""

    name: str
    path: str
    text: str
    agents: Mapping[str, Agent]
    graph: Graph
    inputs: Mapping[str, Input] = _NOTHING
    description: str | None = None
    cost_budget: float | None = None
    max_parallel_agents: int = 4
    allow_partial_completion: bool = False
    outputs: Mapping[str, SourceText] = _NOTHING
    cache: bool | None = None  # None: as the run and the engine say (off)
    cache_ttl: float | None = None
    files: Mapping[str, str] = _NOTHING
    version: Literal[1] = 1

    @property
    def digest(self) -> str:
        """SHA-256 of the file and the prompt and schema files it names."""
        import hashlib  # imported here: loading OpenSSL costs a few ms at start-up

        digest = hashlib.sha256(self.text.encode("utf-8"))
        for name in sorted(self.files):
            digest.update(b"\0" + name.encode("utf-8") + b"\0" + self.files[name].encode("utf-8"))
        return digest.hexdigest()
