"""Hostile values, by where they go.

Each family is a list of makers ``rng -> value``: Python values (set into a
parsed document and dumped as YAML) or raw YAML text (spliced into the file
as written, for what a dump cannot say: tags, anchors, 0x numbers, 1e400).
Sizes are drawn from ``rng``, so a case is the same for the same seed.

Two placeholders are filled in by the worker that runs the case:
``@LISTENER@`` (``127.0.0.1:PORT`` of a socket the harness owns: any
connection to it is a finding) and ``@OUTSIDE@`` (a folder beside the
workflow's, holding a canary ``credentials.json`` and ``secret.md`` that no
case may read). No payload names any other host.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

Maker = Callable[[random.Random], Any]


class BigInt:
    """An integer of thousands of digits, kept as its digits: Python refuses to
    turn more than 4,300 digits into an int or back (and the harness must not
    lift that limit in a process that also runs aoe's tests)."""

    def __init__(self, digits: str) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"BigInt({len(self.digits.lstrip('-'))} digits)"


LISTENER = "@LISTENER@"
OUTSIDE = "@OUTSIDE@"


def _digits(rng: random.Random, alphabet: str = "123456789") -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.choice((4301, 5000, 12000, 40000))))


def _size(rng: random.Random) -> int:
    return rng.choice((10**6, 10**7, 10**9, 2 * 10**9, 3 * 10**9, 2**31, 2**63, 10**18))


def _nest(depth: int, leaf: Any, as_list: bool) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


# -- values anywhere -----------------------------------------------------------------------

ODD_VALUES: list[Maker] = [
    lambda rng: BigInt(_digits(rng)),
    lambda rng: BigInt("-" + _digits(rng)),
    lambda rng: rng.choice((float("inf"), float("-inf"), float("nan"), -0.0, 1e308, 5e-324)),
    lambda rng: rng.choice((0, -1, -0, 2**63, 2**64 + 1, -(2**63) - 1, True, False, None)),
    lambda rng: "x" * rng.choice((10_000, 200_000, 1_000_000)),
    lambda rng: "a\x00b",
    lambda rng: "".join(chr(rng.randrange(0, 32)) for _ in range(rng.randrange(1, 40))),
    lambda rng: "\ud800\udfff" + rng.choice(("", "x", "\udc80")),
    lambda rng: "\ufeff" + rng.choice(("", "hi", "\ufeff")),
    lambda rng: rng.choice(("\u2028", "\u2029", "\x85", "\u202e", "\u200b", "\x7f", "\x1b[2J")),
    lambda rng: rng.choice(("", " ", "\t", "\n", "~", "null", "NaN", "inf", "-0", "0x10")),
    lambda rng: rng.choice(("{{", "}}", "{%", "%}", "{#", "@", "`", "|", ">", "*", "&", "!")),
    lambda rng: _nest(rng.choice((60, 99, 101, 150)), 1, rng.random() < 0.5),
    lambda rng: [rng.randrange(10) for _ in range(rng.choice((1000, 20_000)))],
    lambda rng: {f"k{i}": i for i in range(rng.choice((1000, 10_000)))},
    lambda rng: [],
    lambda rng: {},
    lambda rng: [None],
    lambda rng: {"": None},
]

RAW_VALUES: list[Maker] = [
    lambda rng: "0x" + _digits(rng, "0123456789abcdef"),
    lambda rng: "0o" + _digits(rng, "01234567"),
    lambda rng: "0b" + _digits(rng, "01"),
    lambda rng: "-0x" + _digits(rng, "0123456789ABCDEF"),
    lambda rng: _digits(rng),
    lambda rng: "1_" + "_".join(_digits(rng)[:3000]),  # YAML 1.1 underscores
    lambda rng: rng.choice(("1e400", "-1e400", "1.0e+400", ".inf", "-.Inf", ".NaN", ".nan")),
    lambda rng: rng.choice(("-0", "-0.0", "+0", "0.", "1e-400", "190:20:30", "0b", "0x", "08")),
    lambda rng: "1" + "0" * rng.choice((400, 5000)) + ".5",
    lambda rng: rng.choice(("yes", "No", "on", "OFF", "y", "~", "Null", "=", "<<")),
    lambda rng: rng.choice(("2001-12-14t21:59:43.10-05:00", "2002-12-14", "12:30:45")),
    lambda rng: '"' + "\\x00" + '"',
    lambda rng: '"' + rng.choice(("\\ud800", "\\udfff", "\\U0010ffff", "\\uFFFE", "\\e\\a")) + '"',
    lambda rng: '"' + "\\t" * rng.choice((10, 100_000)) + '"',
]

TAGGED: list[Maker] = [
    lambda rng: "!!python/object/apply:os.system ['true']",
    lambda rng: "!!python/object/apply:subprocess.check_output [['id']]",
    lambda rng: "!!python/name:os.system",
    lambda rng: "!!python/object:collections.OrderedDict {}",
    lambda rng: "!!python/tuple [1, 2]",
    lambda rng: "!!python/bytes aGk=",
    lambda rng: "!!binary aGVsbG8=",
    lambda rng: "!!binary " + "QUFB" * rng.choice((10, 100_000)),
    lambda rng: "!!set {a, b}",
    lambda rng: "!!omap [a: 1, b: 2]",
    lambda rng: "!!pairs [a: 1, a: 2]",
    lambda rng: "!!timestamp 2001-12-14",
    lambda rng: "!!int " + rng.choice(("0x" + "f" * 5000, "1e400", "x", "")),
    lambda rng: "!!float " + rng.choice(("nan", "1e400", "-inf", "x", "")),
    lambda rng: "!!str " + rng.choice(("1", "", "{{ 1 }}")),
    lambda rng: "!!bool maybe",
    lambda rng: "!!null x",
    lambda rng: "!!map [1, 2]",
    lambda rng: "!!seq {a: 1}",
    lambda rng: "!!merge <<",
    lambda rng: "!!value =",
    lambda rng: "!custom value",
    lambda rng: "!<tag:example.com,2000:app/foo> x",
    lambda rng: "!<!> x",
    lambda rng: "!e!tag x",
    lambda rng: "! plain",
]


# -- templates (prompt, system, outputs, prompt files) ------------------------------------


def _parens(rng: random.Random) -> str:
    depth = rng.choice((69, 70, 71, 100, 300, 1000, 5000))
    return "(" * depth + "1" + ")" * depth


TEMPLATES: list[Maker] = [
    lambda rng: (
        f"{{% for i in range({rng.choice((10**5, 10**6, 10**9))}) %}}"
        f"{{% for j in range({rng.choice((5000, 10**5))}) %}}{{% endfor %}}{{% endfor %}}"
    ),
    lambda rng: "{% for i in range(10**9) %}{{ i }}{% endfor %}",
    lambda rng: rng.choice(("{{ 2**(2**33) }}", "{{ 9**9**9 }}", "{{ 10**100000 }}")),
    lambda rng: "{{ (10**" + str(rng.choice((4300, 5000, 10**6))) + ") }}",
    lambda rng: "{{ lipsum(n=" + rng.choice(("10**7", "10**9", "-1", "2**64")) + ") }}",
    lambda rng: f"{{{{ ('x' * {_size(rng)})|length }}}}",
    lambda rng: f"{{{{ [1] * {_size(rng)} }}}}",
    lambda rng: "{{ 'x' * 10**6 * 10**6 }}",
    lambda rng: "{{ 'ab' * 2**62 }}",
    lambda rng: "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    lambda rng: "{% macro f(n) %}{{ f(n) ~ f(n) }}{% endmacro %}{{ f(0) }}",
    lambda rng: (
        "{% set ns = namespace(s='x') %}{% for i in range("
        + str(rng.choice((31, 40, 64)))
        + ") %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"
    ),
    lambda rng: "{% set x = 'a' %}{% for i in range(40) %}{% set x = x ~ x %}{% endfor %}{{ x }}",
    lambda rng: "{{ " + _parens(rng) + " }}",
    lambda rng: "{% if " + _parens(rng) + " %}x{% endif %}",
    lambda rng: "{{ " + "[" * rng.choice((70, 500)) + "1" + "]" * rng.choice((70, 500)) + " }}",
    lambda rng: "{{ " + "-" * rng.choice((100, 5000)) + "1 }}",
    lambda rng: "{{ 1" + " + 1" * rng.choice((1000, 20_000)) + " }}",
    lambda rng: "{{ x" + ".a" * rng.choice((1000, 20_000)) + " }}",
    lambda rng: "{{ 'x'|" + "|".join(["upper"] * rng.choice((1000, 10_000))) + " }}",
    lambda rng: f"{{{{ 'x'|center({_size(rng)}) }}}}",
    lambda rng: f"{{{{ 'x'|indent({_size(rng)}, true) }}}}",
    lambda rng: f"{{{{ 'x y'|wordwrap({rng.choice((0, 1, -1))}) }}}}",
    lambda rng: f"{{{{ range({_size(rng)})|list|length }}}}",
    lambda rng: f"{{{{ range({_size(rng)})|sum }}}}",
    lambda rng: f"{{{{ range({_size(rng)})|map('string')|join }}}}",
    lambda rng: f"{{{{ 'x'|replace('x', 'x' * {_size(rng)}) }}}}",
    lambda rng: f"{{{{ [1, 2]|batch({_size(rng)})|list }}}}",
    lambda rng: f"{{{{ [1, 2]|slice({_size(rng)})|list }}}}",
    lambda rng: f"{{{{ 'x'|truncate({_size(rng)}) }}}}",
    lambda rng: f"{{{{ {_size(rng)}|filesizeformat }}}}",
    lambda rng: "{{ '%0" + str(rng.choice((10**6, 999999999))) + "d'|format(1) }}",
    lambda rng: "{{ '%." + str(rng.choice((10**6, 999999999))) + "f'|format(1.0) }}",
    lambda rng: "{{ '%*d'|format(" + str(_size(rng)) + ", 1) }}",
    lambda rng: "{{ '{:>" + str(rng.choice((10**6, 999999999))) + "}'.format(1) }}",
    lambda rng: "{{ '{0:{1}}'.format(1, " + str(_size(rng)) + ") }}",
    lambda rng: "{{ '{0.__class__}'.format(1) }}",
    lambda rng: "{{ 'x'.ljust(" + str(_size(rng)) + ") }}",
    lambda rng: "{{ 'x'.zfill(" + str(_size(rng)) + ") }}",
    lambda rng: "{{ 'x'.expandtabs(" + str(_size(rng)) + ") }}",
    lambda rng: "{{ ('\\t' * 1000).expandtabs(10**6) }}",
    lambda rng: "{{ 'a'|join(range(10**7)) }}",
    lambda rng: "{{ (range(10**4)|list) * 10**5 }}",
    lambda rng: "{{ dict(a=1).items()|list * 10**9 }}",
    lambda rng: "{{ 1/0 }}",
    lambda rng: "{{ 10**400|float }}",
    lambda rng: "{{ 'nan'|float }} {{ 'inf'|float * 0 }}",
    lambda rng: "{{ 2**64|int|string * 2 }}",
    lambda rng: "{{ [" + ",".join(["1"] * rng.choice((10_000, 200_000, 1_000_000))) + "] }}",
    lambda rng: "{{ " + _digits(rng) + " }}",
    lambda rng: "{{ 0x" + _digits(rng, "0123456789abcdef") + " + 1 }}",
    lambda rng: "{{ 1_" + "_".join(_digits(rng)[:2500]) + " }}",
    lambda rng: "{{ '1' * 5000|int }}",
    lambda rng: "{{ ('9' * 5000)|int }}",
    lambda rng: "{% include '" + rng.choice(("/etc/passwd", OUTSIDE + "/secret.md", "x")) + "' %}",
    lambda rng: "{% import '../" + OUTSIDE + "' as x %}",
    lambda rng: "{% extends '../outside/secret.md' %}",
    lambda rng: "{% from 'x' import y %}",
    lambda rng: "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    lambda rng: "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    lambda rng: "{{ lipsum.__globals__['os'] }}",
    lambda rng: "{{ self._TemplateReference__context }}",
    lambda rng: "{{ range.__self__ }} {{ namespace.__init__ }}",
    lambda rng: "{{ joiner.__init__.__globals__ }}",
    lambda rng: "{{ [].append(1) }}{{ {}.update(a=1) }}{{ inputs.clear() }}",
    lambda rng: "{{ inputs.__class__.__base__.__subclasses__() }}",
    lambda rng: "{{ agents.__dict__ }}{{ config }}{{ request }}{{ environ }}",
    lambda rng: "{{ inputs|tojson }}{{ agents|tojson }}{{ inputs|pprint }}",
    lambda rng: "{{ x }}" * rng.choice((10_000, 100_000)),
    lambda rng: "{% raw %}" + "{{ x }}" * 10 + "{% endraw %}",
    lambda rng: rng.choice(("{{", "{% for x in y %}", "{% endfor %}", "{{ }}", "{# x", "}}")),
    lambda rng: "{% filter upper %}" * 200 + "x" + "{% endfilter %}" * 200,
    lambda rng: "{% if true %}" * rng.choice((100, 1000)) + "x" + "{% endif %}" * 1000,
    lambda rng: "{% for i in range(2) %}" * 40 + "x" + "{% endfor %}" * 40,
    lambda rng: "{% with a = 1 %}{% call f() %}x{% endcall %}{% endwith %}",
    lambda rng: "{% set f = lipsum %}{{ f(n=10**6) }}",
    lambda rng: "{% set r = range %}{{ r(10**9)|list }}",
    lambda rng: "{{ (inputs.topic ~ '') * 10**9 }}",
    lambda rng: "{{ agents.research.output * 10**8 }}",
    lambda rng: "{% do x %}{% break %}{% continue %}",
    lambda rng: "{{ x|nonexistentfilter }}{{ x is nonexistenttest }}",
    lambda rng: "{{ 'x'|map('upper')|list * 10**9 }}",
    lambda rng: "{% for a, b in inputs.items() %}{{ a }}{% endfor %}{{ inputs.items()|list }}",
]


# -- when / foreach ---------------------------------------------------------------------------

EXPRESSIONS: list[Maker] = [
    lambda rng: _parens(rng),
    lambda rng: _parens(rng) + " == 1",
    lambda rng: "not " * rng.choice((100, 1000, 10_000)) + "true",
    lambda rng: "[" * rng.choice((70, 300, 1000)) + "1" + "]" * rng.choice((70, 300, 1000)),
    lambda rng: f"[1] * {_size(rng)}",
    lambda rng: f"range({_size(rng)})",
    lambda rng: f"range({_size(rng)})|list",
    lambda rng: "2**2**33",
    lambda rng: "10**100000 > 1",
    lambda rng: _digits(rng) + " > 1",
    lambda rng: "[" + _digits(rng) + "]",
    lambda rng: "lipsum(n=10**7)",
    lambda rng: f"'x' * {_size(rng)}",
    lambda rng: "inputs.__class__.__mro__",
    lambda rng: "cycler.__init__.__globals__",
    lambda rng: "agents",
    lambda rng: "inputs",
    lambda rng: "undefined_name",
    lambda rng: "undefined_name.attr.other",
    lambda rng: "1/0",
    lambda rng: "{{ inputs.x }}",
    lambda rng: "{% for %}",
    lambda rng: rng.choice(("x if", "[", "(", "'", "a b", ",", ":", "", " ", "lambda: 1")),
    lambda rng: rng.choice(("namespace()", "cycler(1, 2)", "dict(a=1)", "joiner()", "None")),
    lambda rng: rng.choice(("range(3)", "{'a': 1}", "'string'", "42", "true", "[[1], [2]]")),
    lambda rng: "inputs.angles * 100000",
    lambda rng: "range(10**6)|map('string')|list",
    lambda rng: "agents.triage.output.kind == 'bug'" + " and true" * rng.choice((100, 5000)),
    lambda rng: "1" + " + 1" * rng.choice((1000, 20_000)),
    lambda rng: "'%0999999999d'|format(1)",
    lambda rng: "[" + ",".join(["1"] * rng.choice((10_000, 200_000, 1_000_000))) + "]",
]


# -- prompt_file / system_file / schema_file ---------------------------------------------------

PATHS: list[Maker] = [
    lambda rng: "/etc/passwd",
    lambda rng: OUTSIDE + "/secret.md",
    lambda rng: OUTSIDE + "/credentials.json",
    lambda rng: "../outside/secret.md",
    lambda rng: "prompts/../../outside/credentials.json",
    lambda rng: "prompts/\x00angle.md",
    lambda rng: "\x00",
    lambda rng: "prompts/angle.md\x00.txt",
    lambda rng: "a" * rng.choice((255, 256, 4096, 5000, 100_000)),
    lambda rng: "a/" * rng.choice((1000, 3000)) + "x.md",
    lambda rng: "fifo.md",
    lambda rng: "big.md",
    lambda rng: "link.md",
    lambda rng: rng.choice(("/dev/zero", "/dev/urandom", "/dev/stdin", "/proc/self/environ")),
    lambda rng: rng.choice((".", "", " ", "prompts", "prompts/", "/", "~", "~/.ssh/id_rsa")),
    lambda rng: rng.choice(("file:///etc/passwd", "http://" + LISTENER + "/x", "C:\\x", "\\\\x")),
    lambda rng: rng.choice(("prompts/angle.md\n", "prompts/*", "prompts/[a-z]*.md", "%2e%2e/x")),
    lambda rng: "./" * rng.choice((1000, 5000)) + "prompts/angle.md",
]


# -- output schemas -----------------------------------------------------------------------------


def _ref_chain(rng: random.Random) -> dict[str, Any]:
    n = rng.choice((50, 101, 1000, 3000))
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(n)}
    defs[f"d{n}"] = {"type": "object"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def _nested_schema(rng: random.Random) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(rng.choice((60, 99, 101, 150))):  # deeper: see deep_schema_text
        schema = {"type": "array", "items": schema}
    return schema


def deep_schema_text(rng: random.Random) -> str:
    """A schema nested thousands of levels, as JSON text (too deep to build as values)."""
    depth = rng.choice((500, 1000, 5000, 50_000))
    step = rng.choice(('{"type": "array", "items": ', '{"not": ', '{"properties": {"a": '))
    closing = "}}" if "properties" in step else "}"
    return step * depth + '{"type": "string"}' + closing * depth


SCHEMAS: list[Maker] = [
    lambda rng: {"$ref": "http://" + LISTENER + "/schema.json"},
    lambda rng: {"$ref": "https://" + LISTENER + "/schema.json#/a"},
    lambda rng: {"$ref": "file://" + OUTSIDE + "/credentials.json"},
    lambda rng: {"$ref": OUTSIDE + "/credentials.json"},
    lambda rng: {"$ref": "../outside/credentials.json"},
    lambda rng: {"$ref": "schemas/brief.json"},
    lambda rng: {"$ref": "brief.json#/properties/sources"},
    lambda rng: {"$ref": "//" + LISTENER + "/x"},
    lambda rng: {"$id": "http://" + LISTENER + "/base/", "$ref": "other.json"},
    lambda rng: {"$schema": "http://" + LISTENER + "/meta", "type": "object"},
    lambda rng: {"$dynamicRef": "http://" + LISTENER + "/x#meta"},
    lambda rng: {"$ref": "#"},
    lambda rng: {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
    lambda rng: {"$ref": "#/$defs/missing"},
    lambda rng: {"$ref": "#/" + "/".join(["a"] * 1000)},
    lambda rng: {"$ref": 5},
    _ref_chain,
    _nested_schema,
    lambda rng: {"type": "string", "minLength": rng.choice((2_000_000_000, 10**12, 2**63))},
    lambda rng: {"type": "array", "minItems": rng.choice((20_000_000, 10**9, 2**63))},
    lambda rng: {"type": "object", "minProperties": rng.choice((10**7, 10**9))},
    lambda rng: {
        "type": "array",
        "minItems": 100_000,
        "uniqueItems": True,
        "items": {"type": "string", "minLength": 1000},
    },
    lambda rng: {"type": "string", "pattern": rng.choice(("^(a+)+$", "(a|a)*b", "(x+x+)+y"))},
    lambda rng: {"type": "string", "pattern": rng.choice(("[", "(?P<", "\\", "a{99999999}"))},
    lambda rng: {"type": "string", "format": rng.choice(("regex", "uri", "email", "idn-email"))},
    lambda rng: {"type": rng.choice(("nonsense", "service_account", 5, None, [], ["string"] * 9))},
    lambda rng: {"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----"},
    lambda rng: {"type": "integer", "multipleOf": rng.choice((1e-308, 5e-324, 0, -1, 1e308))},
    lambda rng: {
        "type": "number",
        "minimum": rng.choice((1e308, -1e308)),
        "maximum": BigInt("1" + "0" * 5000),
    },
    lambda rng: {"const": BigInt("9" * 5000)},
    lambda rng: {"enum": list(range(rng.choice((10_000, 50_000))))},
    lambda rng: {"allOf": [{"type": "object"}] * rng.choice((1000, 10_000))},
    lambda rng: {"anyOf": [{"minLength": i} for i in range(1000)]},
    lambda rng: {"properties": {f"p{i}": {"type": "string"} for i in range(5000)}},
    lambda rng: {"required": [f"r{i}" for i in range(10_000)], "type": "object"},
    lambda rng: {"type": "string", "maxLength": -1},
    lambda rng: {"contentMediaType": "application/json", "contentSchema": {"type": "object"}},
    lambda rng: {"$schema": "https://json-schema.org/draft-04/schema#", "type": "object"},
    lambda rng: {"$schema": "nonsense", "type": "object"},
    lambda rng: {"$vocabulary": {"http://" + LISTENER + "/v": True}},
    lambda rng: {"dependentSchemas": {"a": {"$ref": "#"}}, "type": "object"},
    lambda rng: {"if": {"$ref": "#"}, "then": {"$ref": "#"}},
    lambda rng: {"not": {"not": {"not": {}}}},
    lambda rng: True,
    lambda rng: False,
    lambda rng: [],
    lambda rng: "string",
]


# -- mock replies (llm.params.reply of an agent on the mock provider) ------------------------

REPLIES: list[Maker] = [
    lambda rng: "[" * rng.choice((1000, 100_000)) + "]" * rng.choice((0, 1000, 100_000)),
    lambda rng: '{"a":' * rng.choice((1000, 50_000)) + "1" + "}" * 50_000,
    lambda rng: _digits(rng),
    lambda rng: '{"summary": ' + _digits(rng) + ', "risks": []}',
    lambda rng: rng.choice(("NaN", "Infinity", "-Infinity", "1e400", '{"a": NaN}', "-0")),
    lambda rng: '{"a": 1, "a": 2}',
    lambda rng: '"\\ud800"',
    lambda rng: "\x00",
    lambda rng: "not json",
    lambda rng: "",
    lambda rng: '{"summary": "' + "x" * rng.choice((10**5, 10**6)) + '", "risks": []}',
    lambda rng: "[" + ",".join(["1"] * rng.choice((10**4, 10**5))) + "]",
    lambda rng: "```json\n{}\n```",
]


# -- inputs files ---------------------------------------------------------------------------------

INPUT_VALUES: list[Maker] = [*ODD_VALUES]


# -- environment variables --------------------------------------------------------------------

ENV_VALUES: list[Maker] = [
    lambda rng: rng.choice(("", " ", "\t", "0", "-1", "+1", "1.5", "1e3", "abc", "None")),
    lambda rng: rng.choice(("inf", "-inf", "nan", "NaN", "Infinity", "1e400", "-0", "0x10")),
    lambda rng: _digits(rng),
    lambda rng: "x" * rng.choice((10_000, 1_000_000)),
    lambda rng: rng.choice(("\x1b[31m", "\u202e", "\udcff", "é", "\n", "a\nb", "=")),
]
ENV_NAMES = [
    "RATE_LIMIT_RPM",
    "RATE_LIMIT_RPH",
    "RATE_LIMIT_RPD",
    "RATE_LIMIT_TPM",
    "RATE_LIMIT_CONCURRENT",
    "DEFAULT_WORKFLOW_BUDGET",
    "DEFAULT_AGENT_BUDGET",
    "MAX_RETRIES",
    "RETRY_BASE_DELAY",
    "RETRY_MAX_DELAY",
    "MAX_CONCURRENT_WORKFLOWS",
    "LOG_LEVEL",
    "ENABLE_METRICS",
    "PROMETHEUS_PORT",
    "REDIS_PORT",
    "REDIS_DB",
    "AOE_STATE_DIR",
    "AOE_MOCK_LATENCY",
    "AOE_CONFIG",
    "OPENAI_BASE_URL",
    "ANTHROPIC_BASE_URL",
    "OPENAI_API_KEY",
    "NO_COLOR",
    "TERM",
    "COLUMNS",
]
ENV_SPECIAL: dict[str, list[str]] = {
    # values of their own kind; never a host but 127.0.0.1
    "AOE_CONFIG": ["fifo.yaml", "config.yaml", OUTSIDE + "/secret.md", "/dev/zero", ".", ""],
    "AOE_STATE_DIR": ["", ".", "state", "fifo.yaml", "/dev/null", "a" * 5000, "x/" * 2000],
    "OPENAI_BASE_URL": ["ftp://x", "not a url", "http://" + LISTENER + "/v1", "", "http://"],
    "ANTHROPIC_BASE_URL": ["http://" + LISTENER, "file:///etc/passwd", "//x", ""],
    "REDIS_PORT": ["0", "65536", "-1", "6379x", ""],
    "LOG_LEVEL": ["debug", "TRACE", "", "50", "critical"],
    "AOE_MOCK_LATENCY": ["nan", "inf", "-1", "1e400", "", " ", "0x1", "1e-400"],
    "COLUMNS": ["0", "-5", "1", "100000", "x"],
    "TERM": ["dumb", "xterm-256color", ""],
}

# -- config values ----------------------------------------------------------------------------

CONFIG_VALUES: list[Maker] = [
    lambda rng: rng.choice((float("inf"), float("nan"), -0.0, 1e308, -1, 0, 2**63, 10**30)),
    lambda rng: BigInt(_digits(rng)),
    lambda rng: rng.choice(("inf", "nan", "1e400", "", "fifo.yaml", "\x00", "a\x00b")),
    lambda rng: rng.choice(("http://" + LISTENER + "/v1", "ftp://x", "not a url", "http://")),
    lambda rng: rng.choice(("AOE_API_TOKEN", "PATH", "HOME", "", "1X", "OPENAI_API_KEY")),
    lambda rng: rng.choice(("redis://" + LISTENER + "/0", "127.0.0.1", "redis://:pw@" + LISTENER)),
    lambda rng: rng.choice((OUTSIDE, "/dev/null", "/", "x/" * 3000, "a" * 5000, "~")),
    lambda rng: {f"model-{i}": {"input": 0.001, "output": 0.002} for i in range(5000)},
    lambda rng: {f"p{i}": {"requests_per_minute": 1} for i in range(5000)},
]
