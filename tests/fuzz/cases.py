"""A fuzz case: files in a folder, what to run there, and how it was made.

:func:`make_case` gives case ``index`` of ``seed``: the same case every time,
whatever ran before it, so a finding names its seed and index and can be made
again. Cases start from the example workflows (with their prompt and schema
files), the config files, inputs files and environment variables; mutations
(:mod:`tests.fuzz.mutators`) make them hostile.
"""

from __future__ import annotations

import base64
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from tests.fuzz import mutators, payloads

REPO = Path(__file__).resolve().parent.parent.parent
SENTINEL = "zz-sentinel.yaml"
"""A valid workflow validated after the case's own, in the same command: it must
be reported whatever happened to the file before it."""

MOCK_WORKFLOW = """\
version: 1
name: fuzz
inputs:
  topic: {type: string, default: bikes}
  n: {type: integer, default: 3}
  things: {type: list, default: [a, b]}
defaults:
  llm: {provider: mock, model: m, max_tokens: 200}
  retry: {max_retries: 1, base_delay: 0.01, max_delay: 0.02}
agents:
  first:
    prompt: "Say hello about {{ inputs.topic }}."
  second:
    depends_on: [first]
    foreach: inputs.things
    when: "agents.first.status == 'completed'"
    system: You are terse.
    prompt: "Improve: {{ agents.first.output }} {{ item }} ({{ index }})"
    output: {format: json, schema: {type: object}}
  third:
    depends_on: second
    llm: {provider: mock, model: m, params: {reply: '{"a": 1}'}}
    prompt: "{% for x in agents.second.output %}{{ x|tojson }}{% endfor %}"
    output: {format: json, schema: {type: object, required: [a]}}
outputs:
  result: "{{ agents.third.output.a }}"
"""

# Inputs the examples require, as a user would give them.
EXAMPLE_INPUTS: dict[str, dict[str, Any]] = {
    "code-review": {
        "title": "Retry with jitter",
        "files": [{"path": "aoe/retry.py", "diff": "+ jitter = True"}],
    },
    "support-triage": {"ticket": "The export button does nothing since Monday."},
    "translation": {"notes": "# 1.2\n- Faster start-up."},
}


@dataclass(frozen=True)
class Case:
    """Files to write, a command to run among them, and how the case came about.

    ``files`` map relative paths to bytes; ``fifos`` are made as named pipes,
    ``sparse`` as files of that many bytes (holes, no disk), ``symlinks`` as
    links to their target. Text may hold the placeholders of
    :mod:`tests.fuzz.payloads`; the worker fills them in.
    """

    family: str
    command: tuple[str, ...]
    files: Mapping[str, bytes]
    target: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    fifos: tuple[str, ...] = ()
    sparse: Mapping[str, int] = field(default_factory=dict)
    symlinks: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    seed: int | None = None
    index: int | None = None

    @property
    def label(self) -> str:
        return f"{self.seed}:{self.index}" if self.index is not None else "(made by hand)"

    def with_file(self, name: str, data: bytes) -> Case:
        return replace(self, files={**self.files, name: data})

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "command": list(self.command),
            "files": {k: base64.b64encode(v).decode() for k, v in self.files.items()},
            "target": self.target,
            "env": dict(self.env),
            "fifos": list(self.fifos),
            "sparse": dict(self.sparse),
            "symlinks": dict(self.symlinks),
            "notes": list(self.notes),
            "seed": self.seed,
            "index": self.index,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Case:
        return cls(
            family=data["family"],
            command=tuple(data["command"]),
            files={k: base64.b64decode(v) for k, v in data["files"].items()},
            target=data.get("target"),
            env=dict(data.get("env", {})),
            fifos=tuple(data.get("fifos", ())),
            sparse=dict(data.get("sparse", {})),
            symlinks=dict(data.get("symlinks", {})),
            notes=tuple(data.get("notes", ())),
            seed=data.get("seed"),
            index=data.get("index"),
        )


# -- the corpus ---------------------------------------------------------------------------------


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _examples() -> dict[str, dict[str, bytes]]:
    """Each example workflow with the files it refers to (all of workflows/prompts
    and workflows/schemas for the one that uses them)."""
    examples: dict[str, dict[str, bytes]] = {}
    folder = REPO / "workflows"
    for path in sorted(folder.glob("*.yaml")):
        files = {"wf.yaml": _read(path)}
        text = files["wf.yaml"].decode()
        if "_file:" in text:
            for extra in sorted([*folder.glob("prompts/*"), *folder.glob("schemas/*")]):
                files[str(extra.relative_to(folder))] = _read(extra)
        examples[path.stem] = files
    examples["mock"] = {"wf.yaml": MOCK_WORKFLOW.encode()}
    return examples


EXAMPLES = _examples()
CONFIGS = {name: _read(REPO / "config" / f"{name}.yaml") for name in ("dev", "production")}


def _sentinel() -> bytes:
    return MOCK_WORKFLOW.replace("name: fuzz", "name: sentinel").encode()


# -- making cases -----------------------------------------------------------------------------

_FAMILIES = (("workflow", 45), ("payload", 25), ("config", 15), ("inputs", 8), ("env", 7))


def make_case(seed: int, index: int) -> Case:
    """Case ``index`` of ``seed``: the same every time."""
    rng = random.Random(f"aoe-fuzz:{seed}:{index}")
    family = rng.choices([f for f, _ in _FAMILIES], [w for _, w in _FAMILIES])[0]
    maker = {
        "workflow": _workflow_case,
        "payload": _payload_case,
        "config": _config_case,
        "inputs": _inputs_case,
        "env": _env_case,
    }[family]
    case = maker(rng)
    case = replace(case, seed=seed, index=index, family=family)
    return _loopback_only(case)


def _workflow_command(rng: random.Random, example: str, files: dict[str, bytes]) -> tuple[str, ...]:
    roll = rng.random()
    if roll < 0.62:
        files[SENTINEL] = _sentinel()
        return ("validate", "wf.yaml", SENTINEL)
    if roll < 0.67:
        return ("validate", "--format", "json", "wf.yaml")
    if roll < 0.72:
        return ("graph", "wf.yaml", *rng.choice(((), ("-f", "mermaid"), ("-f", "dot"))))
    if roll < 0.77:
        return ("plan", "wf.yaml", "--mock", *_inputs_option(example, files))
    command = ["run", "wf.yaml", "--mock", "--output", "results.json", "--no-cache"]
    command += _inputs_option(example, files)
    if rng.random() < 0.5:
        command.append("-q")
    return tuple(command)


def _inputs_option(example: str, files: dict[str, bytes]) -> list[str]:
    if example not in EXAMPLE_INPUTS:
        return []
    files.setdefault("inputs.yaml", yaml.safe_dump(EXAMPLE_INPUTS[example]).encode())
    return ["--inputs-file", "inputs.yaml"]


def _extras(rng: random.Random) -> dict[str, Any]:
    """Files a path payload may name: a FIFO, a 3 GB sparse file, a link out."""
    return {
        "fifos": ("fifo.md", "fifo.yaml"),
        "sparse": {"big.md": rng.choice((3 << 30, 17 << 20, (1 << 20) + 1))},
        "symlinks": {"link.md": payloads.OUTSIDE + "/secret.md"},
    }


def _workflow_case(rng: random.Random) -> Case:
    example = rng.choice(sorted(EXAMPLES))
    files = dict(EXAMPLES[example])
    target = "wf.yaml"
    if len(files) > 1 and rng.random() < 0.25:
        target = rng.choice(sorted(k for k in files if k != "wf.yaml"))
    kind = (
        "schema" if target.endswith(".json") else "prompt" if target.endswith(".md") else "workflow"
    )
    files[target], notes = mutators.mutate(rng, files[target], kind, rng.choice((1, 1, 2, 3)))
    command = _workflow_command(rng, example, files)
    return Case("workflow", command, files, target, notes=(example, *notes), **_extras(rng))


_SPOTS = (
    ("agents", "first", "prompt"),
    ("agents", "second", "prompt"),
    ("agents", "second", "system"),
    ("agents", "second", "when"),
    ("agents", "second", "foreach"),
    ("agents", "second", "prompt_file"),
    ("agents", "second", "system_file"),
    ("agents", "second", "output", "schema"),
    ("agents", "third", "llm", "params", "reply"),
    ("outputs", "result"),
    ("inputs", "topic", "default"),
    ("inputs", "n", "default"),
    ("defaults", "timeout"),
    ("defaults", "retry", "base_delay"),
    ("cost_budget",),
    ("max_parallel_agents",),
)


def _payload_case(rng: random.Random) -> Case:
    """One hostile value at one spot of the small mock workflow, dumped cleanly:
    a case that reaches the checks behind the parser."""
    document = yaml.load(MOCK_WORKFLOW, Loader=yaml.CSafeLoader)
    spot = rng.choice(_SPOTS)
    key = spot[-1]
    if key == "schema_file" or (key == "schema" and rng.random() < 0.3):
        spot, key = ("agents", "second", "output", "schema_file"), "schema_file"
    value = mutators.value_for(rng, key, "outputs" if spot[0] == "outputs" else "workflow")
    node = document
    for step in spot[:-1]:
        node = node.setdefault(step, {})
    if key == "prompt_file":
        node.pop("prompt", None)
    if key == "system_file":
        node.pop("system", None)
    if key == "schema_file":
        node.pop("schema", None)
    node[key] = value
    files: dict[str, bytes] = {}
    if key == "schema_file" and rng.random() < 0.5:  # the hostile schema in its own file
        node[key] = "schema.json"
        try:
            schema = mutators.to_json(mutators.pick(rng, payloads.SCHEMAS))
        except (ValueError, RecursionError):
            schema = "{}"
        files["schema.json"] = schema.encode("utf-8", "surrogatepass")
    try:
        text = mutators.dump(rng, document)
    except (yaml.YAMLError, RecursionError, ValueError, TypeError):
        text = MOCK_WORKFLOW
    files["wf.yaml"] = text.encode("utf-8", "surrogatepass")
    files["prompts/p.md"] = b"Hello {{ inputs.topic }}"
    command = _workflow_command(rng, "mock", files)
    note = f"{'/'.join(spot)} = {mutators._short(value)}"
    return Case("payload", command, files, "wf.yaml", notes=(note,), **_extras(rng))


def _config_case(rng: random.Random) -> Case:
    name = rng.choice(sorted(CONFIGS))
    data, notes = mutators.mutate(rng, CONFIGS[name], "config", rng.choice((1, 1, 2, 3)))
    files = {"config.yaml": data, "wf.yaml": MOCK_WORKFLOW.encode()}
    roll = rng.random()
    if roll < 0.35:
        command: tuple[str, ...] = ("config", "show", "--config", "config.yaml")
        if rng.random() < 0.3:
            command += ("--format", "json")
    elif roll < 0.7:
        command = ("validate", "--config", "config.yaml", "wf.yaml")
    elif roll < 0.8:
        command = ("plan", "wf.yaml", "--config", "config.yaml", "--mock")
    else:
        command = ("run", "wf.yaml", "--mock", "--config", "config.yaml", "-q", "--no-cache")
    return Case("config", command, files, "config.yaml", notes=(name, *notes), **_extras(rng))


def _inputs_case(rng: random.Random) -> Case:
    example = rng.choice(sorted(EXAMPLE_INPUTS))
    files = dict(EXAMPLES[example])
    given = dict(EXAMPLE_INPUTS[example])
    if rng.random() < 0.5:
        name = rng.choice(sorted(given))
        given[name] = mutators.pick(rng, payloads.INPUT_VALUES)
    try:
        text = mutators.dump(rng, given)
    except (yaml.YAMLError, RecursionError, ValueError, TypeError):
        text = yaml.safe_dump(EXAMPLE_INPUTS[example])
    name = rng.choice(("inputs.yaml", "inputs.json"))
    data, notes = mutators.mutate(
        rng, text.encode("utf-8", "surrogatepass"), "inputs", rng.choice((0, 1, 2))
    )
    files[name] = data
    verb = rng.choice(("run", "run", "plan"))
    command: tuple[str, ...] = (verb, "wf.yaml", "--mock", "--inputs-file", name)
    if verb == "run":
        command += ("-q", "--no-cache", "--output", "results.json")
    if rng.random() < 0.3:
        command += ("-i", f"{rng.choice(sorted(given))}={_assignment(rng)}")
    return Case("inputs", command, files, name, notes=(example, *notes), **_extras(rng))


def _assignment(rng: random.Random) -> str:
    value = mutators.pick(rng, payloads.ENV_VALUES)
    return str(value).replace("\x00", "")


def _env_case(rng: random.Random) -> Case:
    env: dict[str, str] = {}
    for _ in range(rng.choice((1, 1, 2, 3))):
        name = rng.choice(payloads.ENV_NAMES)
        special = payloads.ENV_SPECIAL.get(name)
        value = rng.choice(special) if special and rng.random() < 0.6 else None
        if value is None:
            value = str(mutators.pick(rng, payloads.ENV_VALUES))
        env[name] = value.replace("\x00", "")
    files = {"wf.yaml": MOCK_WORKFLOW.encode(), "config.yaml": CONFIGS["dev"]}
    target = None
    if rng.random() < 0.4:  # the same values from a .env file instead
        dotenv = "".join(f"{k}={v}\n" for k, v in env.items()).encode("utf-8", "surrogateescape")
        if rng.random() < 0.3:
            dotenv = mutators.mutate_bytes(rng, dotenv)[0]
        files[".env"] = dotenv
        env, target = {}, ".env"
    roll = rng.random()
    if roll < 0.5:
        command: tuple[str, ...] = ("run", "wf.yaml", "--mock", "-q", "--no-cache")
    elif roll < 0.75:
        command = ("config", "show")
    else:
        command = ("validate", "wf.yaml")
    notes = tuple(f"{k}={mutators._short(v)}" for k, v in env.items()) or ("from .env",)
    return Case("env", command, files, target, env=env, notes=notes, **_extras(rng))


# -- never the network beyond loopback ---------------------------------------------------------

_ALLOWED_HOSTS = (b"", b"@LISTENER@", b"127.0.0.1", b"localhost", b"[::1]")
_AUTHORITY_END = re.compile(rb"[/\s\"'}\],#?\\]")


def _loopback_only(case: Case) -> Case:
    """Every URL a case holds names the harness's listener (or no host): a
    mutation that turned ``127.0.0.1`` into another name gets the listener
    instead. The worker also refuses any other connection or name lookup in
    its own process."""

    def fix(data: bytes) -> bytes:
        if b"://" not in data:
            return data
        pieces, at = [], 0
        while (found := data.find(b"://", at)) >= 0:
            start = found + 3
            end_match = _AUTHORITY_END.search(data, start)
            end = end_match.start() if end_match else len(data)
            authority = data[start:end]
            host = authority.rsplit(b"@", 1)[-1]
            if not host.startswith(b"["):
                host = host.split(b":", 1)[0]
            allowed = host in _ALLOWED_HOSTS or authority.endswith(b"@LISTENER@")
            pieces += [data[at:start], authority if allowed else b"@LISTENER@"]
            at = end
        pieces.append(data[at:])
        return b"".join(pieces)

    files = {name: fix(data) for name, data in case.files.items()}
    env = {
        name: fix(value.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")
        for name, value in case.env.items()
    }
    return replace(case, files=files, env=env)
