"""Templates: the sandbox, and what static analysis finds in them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError

from aoe.format.environment import TemplateProblem, environment
from aoe.format.templates import (
    Reference,
    _analyse_simple,
    _collect,
    analyse_expression,
    analyse_template,
)
from tests.conftest import RunCli, WriteFile


def refs(text: str) -> list[tuple[str, str, object, int]]:
    return [(r.kind, r.name, r.attribute, r.line) for r in analyse_template(text).references]


def test_references_of_a_full_template() -> None:
    text = (
        "{% set n = inputs.count %}{% for x in agents.list.output %}\n"
        "{{ x | upper }} {{ loop.index }} {{ n }}{% endfor %}\n"
        "{{ agents['quoted'].status }} {{ workflow.name }} {{ item }} {{ range(3) | list }}\n"
        "{{ agents[inputs.which].output }} {{ mystery }}"
    )
    assert sorted(refs(text)) == sorted(
        [
            ("input", "count", None, 1),
            ("filter", "upper", None, 2),
            ("filter", "list", None, 3),
            ("agent", "list", "output", 1),
            ("agent", "quoted", "status", 3),
            ("workflow", "name", None, 3),
            ("name", "item", None, 3),
            ("dynamic", "agents", None, 4),
            ("input", "which", None, 4),
            ("name", "mystery", None, 4),
        ]
    )


def test_jinja_globals_are_known_without_jinja() -> None:
    from aoe.format.environment import JINJA_GLOBALS

    assert set(environment().globals) == JINJA_GLOBALS


def test_chains_keep_what_is_read_inside() -> None:
    [ref] = analyse_expression("agents.a.output.items[0].name").references
    assert (ref.kind, ref.name, ref.attribute, ref.rest) == (
        "agent",
        "a",
        "output",
        ("items", 0, "name"),
    )
    analysis = analyse_expression("inputs.files")
    assert analysis.whole == analysis.references[0]
    assert analyse_expression("inputs.files | list").whole is None


def test_plain_text_reads_nothing() -> None:
    assert refs("no templates here, not even {braces} }}") == []


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param("{{ x }", "unexpected '}'", id="unclosed-variable"),
        pytest.param("{% for x in y %}", "not closed", id="unclosed-block"),
        pytest.param("{% include 'f' %}", "cannot include", id="include"),
        pytest.param("{% import 'f' as m %}", "cannot include", id="import"),
        pytest.param("{% extends 'base' %}", "cannot include", id="extends"),
        pytest.param("{{ not }}", "unexpected", id="keyword-alone"),
    ],
)
def test_template_problems(text: str, words: str) -> None:
    with pytest.raises(TemplateProblem) as caught:
        analyse_template(text)
    assert words in caught.value.message


def test_problem_lines_count_from_the_template_start() -> None:
    with pytest.raises(TemplateProblem) as caught:
        analyse_template("one\ntwo\n{{ three }\n")
    assert caught.value.line == 3


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param("{{ agents.a.output }}", "without braces", id="braces"),
        pytest.param("agents.a.output ==", "does not parse", id="incomplete"),
        pytest.param("a b", "unexpected 'b' after the expression", id="trailing"),
    ],
)
def test_expression_problems(text: str, words: str) -> None:
    with pytest.raises(TemplateProblem) as caught:
        analyse_expression(text)
    message = caught.value.message
    assert words in message or (words == "does not parse" and message)


def test_expression_references() -> None:
    analysis = analyse_expression("agents.triage.output.kind == 'bug' and inputs.strict")
    assert sorted((r.kind, r.name) for r in analysis.references) == [
        ("agent", "triage"),
        ("input", "strict"),
    ]


def test_sandbox_keeps_python_internals_out() -> None:
    env = environment()
    with pytest.raises(SecurityError):
        env.from_string("{{ ''.__class__.__mro__[1].__subclasses__() }}").render()
    with pytest.raises(SecurityError):
        env.from_string("{{ x.append(1) }}").render(x=[])  # immutable sandbox
    with pytest.raises(UndefinedError):
        env.from_string("{{ missing }}").render()
    with pytest.raises(TypeError):  # no loader: no files
        env.get_template("/etc/passwd")


# -- the placeholder fast path must agree with Jinja ----------------------------------------

_NAMES = st.sampled_from(
    ["agents", "inputs", "workflow", "item", "index", "x", "not", "true", "range", "loop"]
)
_PARTS = st.sampled_from(["a", "output", "status", "name", "b_2"])


@st.composite
def placeholder(draw: st.DrawFn) -> str:
    path = ".".join([draw(_NAMES), *draw(st.lists(_PARTS, max_size=3))])
    left = draw(st.sampled_from(["{{", "{{-", "{{ ", "{{  ", "{{\n"]))
    right = draw(st.sampled_from(["}}", "-}}", " }}", " -}}", "\n}}"]))
    return f"{left}{path}{right}"


_TEXT = st.text(alphabet="ab {}%#-.\n|()'", max_size=12)
_PIECE = st.one_of(
    _TEXT,
    placeholder(),
    st.sampled_from(["{% if x %}", "{% endif %}", "{# c #}", "{{ x | upper }}", "{{ a.0 }}"]),
)


@given(st.lists(_PIECE, max_size=8).map("".join))
@settings(max_examples=1500, deadline=None)
@pytest.mark.slow
def test_fast_path_agrees_with_jinja(text: str) -> None:
    simple = _analyse_simple(text)
    if simple is None:
        return  # not a placeholder-only template: Jinja decides
    try:
        tree = environment().parse(text)
    except TemplateSyntaxError as e:  # pragma: no cover - would be a bug
        raise AssertionError(f"fast path accepted invalid {text!r}: {e}") from None
    full = _collect(tree)
    assert sorted(simple.references, key=_key) == sorted(full.references, key=_key), text


def _key(r: Reference) -> tuple[str, str, str, int, str]:
    return (r.kind, r.name, str(r.attribute), r.line, str(r.rest))


_OPERATORS = st.sampled_from(["==", "!=", "<", ">=", " is ", " in ", "+", ""])
_LITERALS = st.sampled_from(["'bug'", '"x"', "3", "-2.5", "true", "None", "'a\\'b'", "x", ""])


@given(
    st.booleans(),
    st.lists(_PARTS, max_size=3),
    _NAMES,
    _OPERATORS,
    _LITERALS,
    st.sampled_from(["", " ", "  "]),
)
@settings(max_examples=1500, deadline=None)
@pytest.mark.slow
def test_expression_fast_path_agrees_with_jinja(
    negate: bool, parts: list[str], root: str, operator: str, literal: str, pad: str
) -> None:
    from jinja2.parser import Parser

    from aoe.format.templates import analyse_simple_expression

    text = pad + ("not " if negate else "") + ".".join([root, *parts])
    if operator:
        text += f" {operator} {literal}"
    simple = analyse_simple_expression(text)
    if simple is None:
        return
    parser = Parser(environment(), text, state="variable")
    try:
        tree = parser.parse_expression()
        assert parser.stream.eos, text
    except TemplateSyntaxError as e:  # pragma: no cover - would be a bug
        raise AssertionError(f"fast path accepted invalid {text!r}: {e}") from None
    full = _collect(tree)
    assert sorted(simple.references, key=_key) == sorted(full.references, key=_key), text
    assert simple.whole == full.whole, text


def test_fast_path_takes_placeholders_only() -> None:
    assert _analyse_simple("Hi {{ inputs.name }}, see {{- agents.a.output -}}!") is not None
    for text in [
        "{{ x | upper }}",
        "{% if x %}{% endif %}",
        "{# c #}",
        "{{ a.0 }}",
        "{{{ a }}",
        "{{ true }}",
        "{{ a }} {{",
    ]:
        assert _analyse_simple(text) is None, text


# -- rendering: the placeholder fast path renders what Jinja renders -----------------------

_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(alphabet="ab \n<>&'\"", max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["a", "output", "items", "name", "keys"]), inner, max_size=3
        )
    ),
    max_leaves=8,
)
_RENDER_TEXT = st.text(alphabet="ab \n\r\t.{}-", max_size=8)
_RENDER_NAMES = st.sampled_from(["inputs", "agents", "x", "range", "missing"])


@st.composite
def simple_template(draw: st.DrawFn) -> str:
    pieces = []
    for _ in range(draw(st.integers(0, 4))):
        pieces.append(draw(_RENDER_TEXT))
        path = ".".join(
            [
                draw(_RENDER_NAMES),
                *draw(
                    st.lists(
                        st.sampled_from(["a", "output", "items", "name", "keys", "b"]), max_size=2
                    )
                ),
            ]
        )
        left = draw(st.sampled_from(["{{", "{{-", "{{ "]))
        right = draw(st.sampled_from(["}}", "-}}", " }}", " -}}"]))
        pieces.append(f"{left}{path}{right}")
    pieces.append(draw(_RENDER_TEXT))
    return "".join(pieces)


@given(simple_template(), _VALUES, _VALUES, _VALUES)
@settings(max_examples=1500, deadline=None)
@pytest.mark.slow
def test_fast_rendering_agrees_with_jinja(text: str, a: object, b: object, c: object) -> None:
    from jinja2 import TemplateSyntaxError, UndefinedError

    from aoe.format.rendering import _pieces, render

    context = {"inputs": a, "agents": {"a": b, "output": c}, "x": c}
    try:
        expected: object = environment().from_string(text).render(context)
    except TemplateSyntaxError:
        assert _pieces(text) is None, text
        return
    except UndefinedError:
        expected = UndefinedError
    try:
        got: object = render(text, context)
    except UndefinedError:
        got = UndefinedError
    assert got == expected, text


def test_fast_rendering_is_used_for_placeholders() -> None:
    from aoe.format.rendering import _pieces

    assert _pieces("Hi {{ inputs.name }}!\r\n") == (("Hi ", ("inputs", "name")), ("!\n", None))
    assert _pieces("{% if x %}{% endif %}") is None


# -- what a template may cost -------------------------------------------------------------

_DEEP = "(" * 80 + "1" + ")" * 80


@pytest.mark.parametrize(
    ("text", "expression", "problem"),
    [
        pytest.param(
            "{% for i in range(100000) %}{% for j in range(5000) %}{% endfor %}{% endfor %}",
            False,
            "its loops would run 500,000,000 times",
            id="nested-range-loops",
        ),
        pytest.param(
            "{% for i in range(1000) %}{% for j in range(10 ** 4) %}{% endfor %}{% endfor %}",
            False,
            "its loops would run 10,000,000 times",
            id="nested-loops-with-a-constant-power",
        ),
        pytest.param("{{ 2**(2**33) }}", False, "2 ** 8,589,934,592", id="power-tower"),
        pytest.param("{{ 10 ** 100000 }}", False, "10 ** 100,000", id="big-power"),
        pytest.param("{{ lipsum(n=10**7) }}", False, "lipsum() may make 100", id="lipsum"),
        pytest.param(
            "{{ ('x' * 3000000000)|length }}", False, "3,000,000,000 times", id="repetition"
        ),
        pytest.param(
            "{{ 'x' * 4000000 + 'x' * 4000000 }}", False, "joining these", id="concatenation"
        ),
        pytest.param("{{ " + _DEEP + " }}", False, "nested too deeply", id="deep-parentheses"),
        pytest.param(_DEEP + " == 1", True, "nested too deeply", id="deep-expression"),
        pytest.param("{{ " + "1+" * 5000 + "1 }}", False, "nested too deeply", id="long-chain"),
        pytest.param("[0] * 10**9", True, "would be too large", id="expression-repetition"),
        pytest.param(
            "{% if " + " or ".join(["x"] * 20_000) + " %}{% endif %}",
            False,
            "100,012 characters of template code",
            id="much-template-code",
        ),
        pytest.param("{{ " + "7" * 4301 + " }}", False, "over 4,300 digits", id="long-number"),
        pytest.param(
            "{{ 'x' * 4000000 }}" * 2, False, "render over 4,194,304", id="many-constants"
        ),
    ],
)
def test_a_template_too_costly_to_run_is_refused_when_read(
    text: str, expression: bool, problem: str
) -> None:
    with pytest.raises(TemplateProblem) as caught:
        (analyse_expression if expression else analyse_template)(text)
    assert problem in caught.value.message


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{% for i in range(1000) %}{{ i }}{% endfor %}", id="one-loop"),
        pytest.param(
            "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
            id="a-million-steps",
        ),
        pytest.param("{{ 'ab' * 1000 }} {{ 2 ** 64 }} {{ lipsum(3) }}", id="small-constants"),
        pytest.param("{% for x in agents.a.output %}{{ x }}{% endfor %}", id="loop-over-data"),
    ],
)
def test_templates_within_the_limits_are_accepted(text: str) -> None:
    analyse_template(text)


@pytest.mark.slow
def test_caches_are_bounded_by_bytes() -> None:
    """300 distinct prompts of ~0.9 MB each kept aoe serve at 619 MB: each cache
    now keeps at most its budget of bytes, whatever the number of entries."""
    from aoe.format.environment import CACHE_BYTES
    from aoe.format.rendering import _pieces
    from aoe.format.templates import _analyse_template_cached

    caches = [_analyse_template_cached.cache, _pieces.cache, analyse_expression.cache]  # type: ignore[attr-defined]
    for i in range(40):
        big = f"{i} {{{{ inputs.a }}}} {{% if x %}}{{% endif %}}" + "x" * 900_000
        analyse_template(big)
        _pieces(big.replace("{%", "").replace("%}", ""))
        analyse_expression(f"inputs.a == '{i}{'y' * 900_000}'")
    for cache in caches:
        assert 0 < cache.weight <= CACHE_BYTES
        assert len(cache) < 40


def test_a_macro_defined_in_a_template_may_be_called(cli: RunCli, write: WriteFile) -> None:
    """`{% macro bullet(x) %}` was refused: "'bullet' is not defined"."""
    path = write(
        "version: 1\nname: m\nagents:\n  a:\n"
        "    llm: {provider: mock, model: gpt-4o, max_tokens: 50, params: {reply: ok}}\n"
        "    prompt: |\n"
        "      {% macro bullet(x) %}- {{ x }}{% endmacro %}\n"
        '      {{ bullet("one") }}\n'
        '      {{ bullet("two") }}\n'
    )
    assert cli("validate", path).exit_code == 0
    result = cli("run", path, "--mock", "--output", "-", "-q")
    assert result.exit_code == 0, result.stderr
    # an undefined name is still one
    bad = write(
        "version: 1\nname: m\nagents:\n  a:\n"
        "    llm: {provider: mock, model: gpt-4o, max_tokens: 50}\n"
        "    prompt: '{{ bulet(1) }}'\n",
        "bad.yaml",
    )
    result = cli("validate", bad)
    assert result.exit_code == 2
    assert "'bulet' is not defined" in result.stdout
