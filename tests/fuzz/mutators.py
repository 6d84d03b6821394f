"""Ways to change a file: its bytes, its lines, its YAML text and its structure.

Every mutator takes the ``rng`` of the case and the file's text and returns
the new text with a short note of what it did; the same ``rng`` state gives
the same change. A structural mutator parses the YAML and dumps it again;
when the text no longer parses (an earlier mutation broke it) it falls back
to a textual one, so every mutation does something.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from typing import Any

import yaml

from tests.fuzz import payloads
from tests.fuzz.payloads import Maker

Mutation = tuple[str, str]
"""(the new text, a note of what changed)"""
Mutator = Callable[[random.Random, str, str], Mutation]
"""``(rng, text, kind) -> (text, note)``; ``kind`` is the file's role (see ``KINDS``)."""

KINDS = ("workflow", "config", "inputs", "prompt", "schema", "env")

WORKFLOW_KEYS = [
    "version", "name", "description", "inputs", "defaults", "llm", "provider", "model",
    "max_tokens", "temperature", "top_p", "stop", "seed", "params", "retry", "max_retries",
    "base_delay", "max_delay", "jitter", "output", "format", "schema", "schema_file",
    "timeout", "cost_limit", "agents", "prompt", "prompt_file", "system", "system_file",
    "depends_on", "cache", "when", "trigger_rule", "foreach", "fallbacks", "cost_budget",
    "max_parallel_agents", "allow_partial_completion", "outputs", "type", "default",
    "reply", "latency", "x-extension", "<<",
]  # fmt: skip
CONFIG_KEYS = [
    "engine", "max_concurrent_workflows", "state_dir", "rate_limiting", "requests_per_minute",
    "requests_per_hour", "requests_per_day", "tokens_per_minute", "concurrent_requests",
    "per_provider", "per_model", "cost_tracking", "model_costs", "input", "output",
    "default_workflow_budget", "default_agent_budget", "daily_budget", "workflow_daily_budgets",
    "retry_policy", "max_retries", "strategy", "base_delay", "max_delay", "jitter",
    "monitoring", "enable_metrics", "enable_logging", "metrics_interval", "prometheus_port",
    "log_level", "log_format", "providers", "type", "base_url", "api_key_env", "default_price",
    "redis", "url", "host", "port", "db", "key_prefix", "on_unavailable",
]  # fmt: skip
ODD_KEYS: list[Any] = [
    "", " ", "\x00", "a" * 10_000, "__class__", "__proto__", "agents.x", "-", "~", "é",
    "\u202e", 1, 0, -1, 1.5, True, None, payloads.BigInt("7" * 5000),
    "items", "keys", "values", "get", "update", "pop", "__len__",  # a dict's own names
]  # fmt: skip

_KEY_LINE = re.compile(r"^(\s*(?:- )?)([^\s#:][^:#]*?):(\s+|$)(.*)$")
_ITEM_LINE = re.compile(r"^(\s*- )(.*)$")
_INTERESTING_BYTES = [
    b"\x00", b"\xff", b"\xfe", b"\xef\xbb\xbf", b"\xed\xa0\x80", b"\xc0\x80", b"\x80",
    b"\t", b"\r", b"\r\n", b"\x0b", b"\x0c", b"\x1b", b"\xe2\x80\xa8", b"\xc2\x85",
    b"{", b"}", b"[", b"]", b"%", b":", b"-", b"&", b"*", b"!", b"|", b">", b"'", b'"',
    b"#", b"?", b",", b"@", b"`", b"\\", b"{{", b"{%", b"}}", b"%}", b" ", b"\n",
]  # fmt: skip


# -- helpers ------------------------------------------------------------------------------------


def pick(rng: random.Random, makers: list[Maker]) -> Any:
    """A value from one of ``makers``."""
    return rng.choice(makers)(rng)


class _Dumper(yaml.CSafeDumper):
    """The safe dumper, which also writes a :class:`payloads.BigInt` as a plain integer."""


_Dumper.add_representer(
    payloads.BigInt,
    lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:int", value.digits),
)
_BIG = re.compile(r'"@@big(-?[0-9]+)@@"')


def to_json(value: Any) -> str:
    """``value`` as JSON, a :class:`payloads.BigInt` as a plain number (NaN allowed)."""

    def big(item: Any) -> Any:
        if isinstance(item, payloads.BigInt):
            return f"@@big{item.digits}@@"
        raise TypeError(type(item).__name__)

    return _BIG.sub(r"\1", json.dumps(value, allow_nan=True, default=big))


def inline_yaml(value: Any) -> str:
    """``value`` as YAML that fits after ``key:`` on one line."""
    if isinstance(value, str) and value.startswith(("!", "0x")):
        return value
    text = yaml.dump(
        value, Dumper=_Dumper, default_flow_style=True, width=1_000_000, allow_unicode=True
    )
    text = text.removesuffix("\n").removesuffix("\n...").removesuffix("...")
    return text.replace("\n", " ")


def dump(rng: random.Random, document: Any) -> str:
    """``document`` as YAML, in a style drawn from ``rng``."""
    return yaml.dump(
        document,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=rng.random() < 0.7,
        default_flow_style=rng.choice((False, False, None, True)),
        width=rng.choice((80, 1_000_000)),
        indent=rng.choice((2, 2, 4)),
    )


def value_for(rng: random.Random, key: Any, kind: str) -> Any:
    """A hostile value that fits where ``key`` is (a template under ``prompt``, a
    path under ``prompt_file`` ...), or any odd value."""
    key = str(key)
    if rng.random() < 0.15:
        return pick(rng, payloads.ODD_VALUES)
    if key in ("prompt", "system") or kind == "outputs":
        return pick(rng, payloads.TEMPLATES)
    if key in ("when", "foreach"):
        return pick(rng, payloads.EXPRESSIONS)
    if key.endswith("_file"):
        return pick(rng, payloads.PATHS)
    if key == "schema":
        return pick(rng, payloads.SCHEMAS)
    if key == "reply":
        return pick(rng, payloads.REPLIES)
    if kind == "config":
        return pick(rng, payloads.CONFIG_VALUES)
    return pick(rng, payloads.ODD_VALUES)


def raw_for(rng: random.Random, key: str, kind: str) -> str:
    """Like :func:`value_for`, but sometimes as raw YAML (a tag, 0x digits, 1e400)."""
    roll = rng.random()
    if roll < 0.3:
        return str(pick(rng, payloads.RAW_VALUES))
    if roll < 0.5:
        return str(pick(rng, payloads.TAGGED))
    try:
        return inline_yaml(value_for(rng, key, kind))
    except Exception:  # a value the dumper cannot write
        return str(pick(rng, payloads.RAW_VALUES))


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _key_lines(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if _KEY_LINE.match(line)]


# -- bytes ----------------------------------------------------------------------------------------


def mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Flip bits, or put odd bytes in, or cut some out."""
    buffer = bytearray(data)
    notes = []
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        if not buffer:
            buffer.extend(rng.choice(_INTERESTING_BYTES))
            continue
        at = rng.randrange(len(buffer))
        roll = rng.random()
        if roll < 0.35:
            buffer[at] ^= 1 << rng.randrange(8)
            notes.append(f"flip@{at}")
        elif roll < 0.7:
            piece = rng.choice(_INTERESTING_BYTES)
            buffer[at:at] = piece
            notes.append(f"insert {piece!r}@{at}")
        elif roll < 0.85:
            piece = rng.choice(_INTERESTING_BYTES)
            buffer[at : at + len(piece)] = piece
            notes.append(f"overwrite {piece!r}@{at}")
        else:
            size = rng.randrange(1, 32)
            del buffer[at : at + size]
            notes.append(f"cut {size}@{at}")
    if rng.random() < 0.1:
        buffer[0:0] = rng.choice((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff"))
        notes.append("byte order mark")
    return bytes(buffer), "bytes: " + ", ".join(notes)


# -- lines and text -----------------------------------------------------------------------------


def lines_op(rng: random.Random, text: str, kind: str) -> Mutation:
    """Delete, duplicate (a key twice), swap, move or re-indent lines."""
    lines = _lines(text)
    if len(lines) < 2:
        return text + "\n" + text, "lines: doubled"
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    op = rng.choice(("delete", "duplicate", "swap", "move", "indent", "dedent", "tab"))
    if op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(i, lines[i])
    elif op == "swap":
        lines[i], lines[j] = lines[j], lines[i]
    elif op == "move":
        lines.insert(j, lines.pop(i))
    elif op == "indent":
        lines[i] = "  " + lines[i]
    elif op == "dedent":
        lines[i] = lines[i][2:] if lines[i].startswith("  ") else lines[i].lstrip()
    else:
        lines[i] = "\t" + lines[i].lstrip(" ")
    return "\n".join(lines), f"lines: {op} {i + 1}" + (
        f"/{j + 1}" if op in ("swap", "move") else ""
    )


def set_raw(rng: random.Random, text: str, kind: str) -> Mutation:
    """The value of one ``key: value`` line becomes a hostile raw YAML value."""
    lines = _lines(text)
    candidates = _key_lines(lines)
    if not candidates:
        return append_key(rng, text, kind)
    i = rng.choice(candidates)
    match = _KEY_LINE.match(lines[i])
    assert match is not None
    key = match.group(2).strip()
    value = raw_for(rng, key, kind)
    lines[i] = f"{match.group(1)}{key}: {value}"
    # the value's own nested lines (a block below it) would now be misplaced: drop them
    indent = len(lines[i]) - len(lines[i].lstrip())
    end = i + 1
    while end < len(lines) and (
        not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
    ):
        end += 1
    if rng.random() < 0.7:
        del lines[i + 1 : end]
    return "\n".join(lines), f"raw value at line {i + 1} ({key}): {_short(value)}"


def append_key(rng: random.Random, text: str, kind: str) -> Mutation:
    """A top-level key with a hostile value at the end."""
    keys = CONFIG_KEYS if kind == "config" else WORKFLOW_KEYS
    key = rng.choice(keys)
    value = raw_for(rng, key, kind)
    return text.rstrip("\n") + f"\n{key}: {value}\n", f"appended {key}: {_short(value)}"


def block_template(rng: random.Random, text: str, kind: str) -> Mutation:
    """A template payload as a block scalar under a ``prompt``/``system``/outputs key."""
    lines = _lines(text)
    candidates = [
        i
        for i in _key_lines(lines)
        if (m := _KEY_LINE.match(lines[i])) and m.group(2).strip() in ("prompt", "system")
    ] or _key_lines(lines)
    if not candidates:
        return append_key(rng, text, kind)
    i = rng.choice(candidates)
    match = _KEY_LINE.match(lines[i])
    assert match is not None
    indent = " " * (len(match.group(1)) + 2)
    payload = str(pick(rng, payloads.TEMPLATES))
    body = [indent + line for line in payload.split("\n")]
    lines[i : i + 1] = [f"{match.group(1)}{match.group(2)}: {rng.choice(('|', '>-', '|+'))}"]
    lines[i + 1 : i + 1] = body
    return "\n".join(lines), f"template block at line {i + 1}: {_short(payload)}"


def aliases(rng: random.Random, text: str, kind: str) -> Mutation:
    """Anchors and aliases: an alias bomb, a recursive anchor, an unknown alias, merges."""
    lines = _lines(text)
    candidates = _key_lines(lines)
    op = rng.choice(("bomb", "bomb", "recursive", "unknown", "merge", "merge-list"))
    width, depth = rng.choice(((10, 9), (9, 9), (2, 40), (100, 5), (30, 6)))
    if op == "bomb":
        header = ["x-lol0: &l0 [lol]"] + [
            f"x-lol{n}: &l{n} [{', '.join([f'*l{n - 1}'] * width)}]" for n in range(1, depth + 1)
        ]
        value = f"*l{depth}"
    elif op == "recursive":
        header, value = ["x-r: &r [*r]"], "*r"
        if rng.random() < 0.5:
            header, value = ["x-r: &r {a: *r}"], "*r"
    elif op == "unknown":
        header, value = [], "*nowhere"
    else:
        header = ["x-base: &base {prompt: hi, llm: {provider: mock, model: m}}"]
        value = "{<<: *base}" if op == "merge" else "{<<: [*base, *base, 5]}"
    if candidates and rng.random() < 0.8:
        i = rng.choice(candidates)
        match = _KEY_LINE.match(lines[i])
        assert match is not None
        lines[i] = f"{match.group(1)}{match.group(2)}: {value}"
    else:
        lines.append(f"x-use: {value}")
    if kind == "config" and rng.random() < 0.5:  # configs have no x- keys: anchor inside one
        header = [h.replace("x-", "zz-") for h in header]
    return "\n".join(header + lines), f"aliases: {op} {width}x{depth}"


def deep_nesting(rng: random.Random, text: str, kind: str) -> Mutation:
    """A value nested hundreds or thousands of levels, in flow or block style."""
    depth = rng.choice((99, 100, 101, 300, 1000, 5000, 20_000))
    style = rng.choice(("flow-list", "flow-map", "block-map", "block-list", "mixed"))
    if style == "flow-list":
        value = "[" * depth + "1" + "]" * depth
    elif style == "flow-map":
        value = "{a: " * depth + "1" + "}" * depth
    elif style == "mixed":
        value = "[{a: " * (depth // 2) + "1" + "}]" * (depth // 2)
    else:
        depth = min(depth, 600)  # block lines grow with the depth: keep the file small
        step = "- " if style == "block-list" else "a:\n"
        value = "\n"
        for n in range(depth):
            pad = "  " * (n + 1)
            value += pad + (step if style == "block-list" else "a:") + "\n"
        value += "  " * (depth + 1) + "1"
    lines = _lines(text)
    candidates = _key_lines(lines)
    if candidates:
        i = rng.choice(candidates)
        match = _KEY_LINE.match(lines[i])
        assert match is not None
        lines[i] = f"{match.group(1)}{match.group(2)}: {value}"
    else:
        lines.append(f"deep: {value}")
    return "\n".join(lines), f"deep nesting: {style} {depth}"


def documents(rng: random.Random, text: str, kind: str) -> Mutation:
    """Directives, document markers and odd line ends."""
    op = rng.choice(
        ("---", "...", "%YAML", "%TAG", "two-docs", "crlf", "cr", "bom", "ls", "nul", "tabs")
    )
    if op == "---":
        return "---\n" + text, "document start"
    if op == "...":
        return text + "\n...\n" + text, "document end then more"
    if op == "%YAML":
        return rng.choice(("%YAML 1.1\n---\n", "%YAML 9.9\n---\n", "%YAML 1.2\n")) + text, op
    if op == "%TAG":
        return "%TAG !e! tag:example.com,2000:\n---\n" + text.replace(": ", ": !e!x ", 1), op
    if op == "two-docs":
        return text + "\n---\n" + text, "two documents"
    if op == "crlf":
        return text.replace("\n", "\r\n"), "CRLF line ends"
    if op == "cr":
        return text.replace("\n", "\r"), "CR line ends"
    if op == "bom":
        at = rng.randrange(len(text) + 1)
        return text[:at] + "\ufeff" + text[at:], f"BOM at {at}"
    if op == "ls":
        at = rng.randrange(len(text) + 1)
        return text[:at] + rng.choice(("\u2028", "\u2029", "\x85")) + text[at:], f"break at {at}"
    if op == "nul":
        at = rng.randrange(len(text) + 1)
        return text[:at] + "\x00" + text[at:], f"NUL at {at}"
    return text.replace("  ", "\t"), "tabs for indentation"


def splice_text(rng: random.Random, text: str, kind: str) -> Mutation:
    """A template payload (or odd characters) put anywhere in a text file."""
    at = rng.randrange(len(text) + 1)
    if rng.random() < 0.8:
        payload = str(pick(rng, payloads.TEMPLATES))
    else:
        payload = str(pick(rng, payloads.ODD_VALUES[5:12]))
    if rng.random() < 0.3:
        return payload, f"text replaced by {_short(payload)}"
    return text[:at] + payload + text[at:], f"text at {at}: {_short(payload)}"


# -- structure ----------------------------------------------------------------------------------

Tree = Any
Where = tuple[Any, ...]


def _paths(node: Tree, prefix: Where = (), limit: int = 5000) -> list[Where]:
    """Every path to a value in ``node``, parents first (at most ``limit``)."""
    found: list[Where] = []
    seen: set[int] = set()  # an alias makes a value appear twice, or inside itself
    stack: list[tuple[Tree, Where]] = [(node, prefix)]
    while stack and len(found) < limit:
        value, where = stack.pop()
        found.append(where)
        if isinstance(value, dict | list):
            if id(value) in seen:
                continue
            seen.add(id(value))
        if isinstance(value, dict):
            stack.extend((v, (*where, k)) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((v, (*where, i)) for i, v in reversed(list(enumerate(value))))
    return found


def _get(node: Tree, where: Where) -> Tree:
    for step in where:
        node = node[step]
    return node


def _set(node: Tree, where: Where, value: Any) -> Tree:
    if not where:
        return value
    _get(node, where[:-1])[where[-1]] = value
    return node


def _key_of(where: Where) -> str:
    for step in reversed(where):
        if isinstance(step, str):
            return step
    return ""


def structure(rng: random.Random, text: str, kind: str) -> Mutation:
    """Parse, change the structure, dump: set a hostile value, swap two values,
    delete, rename, add a key, turn a list into a map (or back), wrap a value;
    for workflows also agents by the thousand, long chains and cycles."""
    try:
        document = yaml.load(text, Loader=yaml.CSafeLoader)
    except Exception:  # whatever an earlier mutation made of it: change the text instead
        return set_raw(rng, text, kind)
    places = _paths(document)
    where = rng.choice(places)
    key = _key_of(where)
    ops = ["set", "set", "set", "swap", "delete", "rename", "add", "convert", "wrap"]
    if kind == "workflow" and isinstance(document, dict):
        ops += ["agents", "agents"]
    op = rng.choice(ops)
    note = f"{op} at {'/'.join(map(str, where)) or '(root)'}"
    if op == "set":
        value = value_for(rng, key, "outputs" if where[:1] == ("outputs",) else kind)
        document = _set(document, where, value)
        note += f": {_short(value)}"
    elif op == "swap":
        other = rng.choice(places)
        if where and other and where[: len(other)] != other and other[: len(where)] != where:
            a, b = _get(document, where), _get(document, other)
            document = _set(document, where, b)
            document = _set(document, other, a)
            note += f" with {'/'.join(map(str, other))}"
    elif op == "delete" and where:
        parent = _get(document, where[:-1])
        del parent[where[-1]]
    elif op == "rename" and where and isinstance(where[-1], str):
        parent = _get(document, where[:-1])
        new = rng.choice(
            [*(CONFIG_KEYS if kind == "config" else WORKFLOW_KEYS), *ODD_KEYS, where[-1].upper()]
        )
        renamed = {(new if k == where[-1] else k): v for k, v in parent.items()}
        document = _set(document, where[:-1], renamed)
        note += f" to {_short(new)}"
    elif op == "add":
        target = _get(document, where)
        new_key = rng.choice(CONFIG_KEYS if kind == "config" else WORKFLOW_KEYS)
        value = value_for(rng, new_key, kind)
        if isinstance(target, dict):
            target[new_key] = value
        elif isinstance(target, list):
            target.append(value)
        else:
            document = _set(document, where, {new_key: value})
        note += f" {new_key}: {_short(value)}"
    elif op == "convert":
        value = _get(document, where)
        if isinstance(value, list):
            value = {str(i): v for i, v in enumerate(value)} if rng.random() < 0.7 else {}
        elif isinstance(value, dict):
            value = rng.choice(
                ([*value.values()], [*value.keys()], [{k: v} for k, v in value.items()])
            )
        else:
            value = [value]
        document = _set(document, where, value)
    elif op == "wrap":
        value = _get(document, where)
        for _ in range(rng.choice((1, 2, 50, 150))):
            value = [value] if rng.random() < 0.5 else {rng.choice(("a", key or "a")): value}
        document = _set(document, where, value)
    elif op == "agents":
        document, note = _agents(rng, document)
    try:
        return dump(rng, document), "structure: " + note
    except Exception:  # a value the dumper cannot write: change the text instead
        return set_raw(rng, text, kind)


def _agents(rng: random.Random, document: dict[Any, Any]) -> tuple[Any, str]:
    """Agents by the thousand, long dependency chains, cycles, fan-in, self-dependency."""
    n = rng.choice((2, 100, 1000, 3000))
    llm = {"provider": "mock", "model": "m"}
    op = rng.choice(("many", "chain", "cycle", "fan-in", "self", "odd-deps", "foreach"))
    agents: dict[str, Any] = {}
    if op == "many":
        agents = {f"a{i}": {"prompt": "hi", "llm": llm} for i in range(n)}
    elif op in ("chain", "cycle"):
        agents = {
            f"a{i}": {"prompt": f"{{{{ agents.a{i - 1}.output }}}}" if i else "hi", "llm": llm}
            for i in range(n)
        }
        for i in range(1, n):
            agents[f"a{i}"]["depends_on"] = [f"a{i - 1}"]
        if op == "cycle":
            agents["a0"]["depends_on"] = [f"a{n - 1}"]
    elif op == "fan-in":
        agents = {f"a{i}": {"prompt": "hi", "llm": llm} for i in range(n)}
        agents["z"] = {"prompt": "all", "llm": llm, "depends_on": [f"a{i}" for i in range(n)]}
    elif op == "self":
        agents = {"a": {"prompt": "{{ agents.a.output }}", "depends_on": ["a", "a"], "llm": llm}}
    elif op == "odd-deps":
        agents = {
            "a": {"prompt": "hi", "llm": llm, "depends_on": rng.choice(([""], [None], [5], "b"))}
        }
    else:
        agents = {
            "a": {
                "prompt": "{{ item }}",
                "llm": llm,
                "foreach": rng.choice((f"range({n})", "inputs", "agents", "range(10**7)")),
            }
        }
    if rng.random() < 0.5 and isinstance(document.get("agents"), dict):
        document["agents"].update(agents)
    else:
        document["agents"] = agents
    return document, f"agents: {op} {n}"


def json_structure(rng: random.Random, text: str, kind: str) -> Mutation:
    """For a JSON schema file: a hostile schema, or a change somewhere in it, as JSON."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return splice_text(rng, text, kind)
    if rng.random() < 0.1:
        text = payloads.deep_schema_text(rng)
        return text, f"schema nested {text.count('{')} deep"
    if rng.random() < 0.5 or not isinstance(document, dict):
        value = pick(rng, payloads.SCHEMAS)
        try:
            return to_json(value), f"schema: {_short(value)}"
        except (ValueError, RecursionError):
            return text, "schema: unchanged"
    where = rng.choice(_paths(document))
    value = pick(rng, payloads.SCHEMAS) if rng.random() < 0.6 else pick(rng, payloads.ODD_VALUES)
    document = _set(document, where, value)
    try:
        return to_json(document), f"schema at {'/'.join(map(str, where))}"
    except (ValueError, RecursionError):
        return text, "schema: unchanged"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


YAML_MUTATORS: list[tuple[Mutator, int]] = [
    (structure, 30),
    (set_raw, 20),
    (lines_op, 10),
    (block_template, 8),
    (aliases, 7),
    (deep_nesting, 6),
    (documents, 6),
    (append_key, 4),
]
TEXT_MUTATORS: list[tuple[Mutator, int]] = [(splice_text, 1)]
JSON_MUTATORS: list[tuple[Mutator, int]] = [(json_structure, 4), (splice_text, 1)]


def mutate(rng: random.Random, data: bytes, kind: str, count: int) -> tuple[bytes, list[str]]:
    """``count`` mutations of a file of ``kind``; sometimes bytes flipped at the end."""
    text = data.decode("utf-8", "surrogateescape")
    table = {"prompt": TEXT_MUTATORS, "schema": JSON_MUTATORS}.get(kind, YAML_MUTATORS)
    notes: list[str] = []
    for _ in range(count):
        mutator = rng.choices([m for m, _ in table], [w for _, w in table])[0]
        text, note = mutator(rng, text, kind)
        notes.append(note)
    out = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.15:
        out, note = mutate_bytes(rng, out)
        notes.append(note)
    return out, notes
