"""The YAML reader: positions, duplicate keys, tags, aliases and merges, size limits."""

from __future__ import annotations

import re
import tracemalloc

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from aoe.format.yamlsource import INT_MAX, INT_MIN, Mark, YamlError, parse_yaml


def parse(text: str) -> object:
    return parse_yaml(text, "f.yaml").data


def errors(text: str) -> list[str]:
    try:
        document = parse_yaml(text, "f.yaml")
    except YamlError as e:
        return [d.format() for d in e.diagnostics]
    return [d.format() for d in document.diagnostics]


def test_values_and_positions() -> None:
    document = parse_yaml(
        "a: 1\nb:\n  - x\n  - {c: true, d: ~}\ne: |\n  text\n  more\nf: 'quoted'\n", "f.yaml"
    )
    assert document.data == {
        "a": 1,
        "b": ["x", {"c": True, "d": None}],
        "e": "text\nmore\n",
        "f": "quoted",
    }
    source = document.source
    assert source.value(("a",)) == Mark(1, 4)
    assert source.value(("f",)) == Mark(8, 4, "'")
    assert source.key(("b",)) == Mark(2, 1)
    assert source.value(("b", 1, "c")) == Mark(4, 9)
    assert source.key(("b", 1, "d")) == Mark(4, 15)
    assert source.value(("e",)) == Mark(5, 4, "|")
    assert source.value(("e",)).text_line == 6
    assert source.value(("b", 1, "missing")) == Mark(4, 5)  # the closest written ancestor


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("v: yes", True, id="yaml-1.1-bool"),
        pytest.param("v: 0x1f", 31, id="hex"),
        pytest.param("v: 1_000", 1000, id="underscores"),
        pytest.param("v: 1.5e+3", 1500.0, id="float"),
        pytest.param("v: 1.5e3", 1500.0, id="exponent-without-sign"),
        pytest.param("v: 1e-3", 0.001, id="exponent-without-dot"),
        pytest.param("v: '1e3'", "1e3", id="quoted-exponent-is-text"),
        pytest.param("v: 1e", "1e", id="not-a-number"),
        pytest.param("v: .inf", float("inf"), id="inf"),
        pytest.param("v: 2024-01-31", "2024-01-31", id="timestamp-stays-text"),
        pytest.param("v: !!str 12", "12", id="explicit-str"),
        pytest.param("v: !!int '12'", 12, id="explicit-int"),
        pytest.param("v: !!float 5", 5.0, id="explicit-float"),
        pytest.param("v: ''", "", id="empty-string"),
        pytest.param("v:", None, id="empty-value"),
        pytest.param("1: one", "one", id="keys-stay-text"),
    ],
)
def test_scalars_resolve_like_safe_load(text: str, expected: object) -> None:
    data = parse(text)
    assert isinstance(data, dict)
    assert next(iter(data.values())) == expected


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=INT_MIN, max_value=INT_MAX)
        | st.text(max_size=20)
        | st.floats(allow_nan=False),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
@settings(max_examples=200, deadline=None)
@pytest.mark.slow
def test_agrees_with_safe_load(value: object) -> None:
    """On anything yaml.safe_dump writes (string keys), we read what safe_load reads,
    1e3-style numbers apart (a float for us, as in JSON and YAML 1.2), and
    integers past 64 bits apart (refused: see test_hostile_inputs)."""
    text = yaml.safe_dump({"root": value})
    assert parse(text) == _with_exponents(yaml.safe_load(text))


_EXPONENT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+")


def _with_exponents(value: object) -> object:
    """safe_load's result with unquoted 1e3-style strings read as numbers (keys stay text)."""
    if isinstance(value, str) and _EXPONENT.fullmatch(value):
        return float(value)
    if isinstance(value, list):
        return [_with_exponents(v) for v in value]
    if isinstance(value, dict):
        return {k: _with_exponents(v) for k, v in value.items()}
    return value


def test_duplicate_keys_are_all_reported_with_both_lines() -> None:
    assert errors("a: 1\nb: 2\na: 3\nc:\n  x: 1\n  x: 2\n") == [
        "f.yaml:3:1: error: duplicate key 'a': it is also at line 1, column 1; "
        "YAML would silently keep only one of them - remove or rename one",
        "f.yaml:6:3: error: duplicate key 'x': it is also at line 5, column 3; "
        "YAML would silently keep only one of them - remove or rename one",
    ]


def test_tags_beyond_plain_yaml_are_refused() -> None:
    found = errors("a: !!python/object/apply:os.system [ls]\nb: !!binary aGk=\nc: !x 1\n")
    assert len(found) == 3
    assert all("is not supported: aoe reads plain YAML only" in f for f in found)


def test_anchors_aliases_and_merge_keys() -> None:
    document = parse_yaml(
        "base: &base {model: m, temperature: 0.1}\n"
        "other: &other {seed: 1, model: o}\n"
        "agent:\n  <<: [*base, *other]\n  temperature: 0.5\n"
        "copy: *base\n",
        "f.yaml",
    )
    assert document.data["agent"] == {"model": "m", "temperature": 0.5, "seed": 1}
    assert document.data["copy"] == {"model": "m", "temperature": 0.1}
    # a merged or aliased value is found where it was written
    assert document.source.value(("agent", "model")) == Mark(1, 21)
    assert document.source.value(("agent", "seed")) == Mark(2, 22)
    assert document.source.value(("copy", "temperature")) == Mark(1, 37)
    assert document.source.value(("agent", "temperature")) == Mark(5, 16)


def test_merge_of_a_scalar_is_an_error() -> None:
    assert errors("a: &a 1\nb:\n  <<: *a\n") == [
        "f.yaml:3:3: error: a merge key '<<' takes a mapping or a list of mappings "
        "(usually an alias like <<: *defaults)"
    ]


def test_merge_chains_do_not_count_as_nesting() -> None:
    lines = ["m0: &m0 {a: 1}"]
    lines += [f"m{i}: &m{i}\n  <<: *m{i - 1}\n  k{i}: {i}" for i in range(1, 150)]
    data = parse("\n".join(lines) + "\n")
    assert isinstance(data, dict)
    assert data["m149"]["a"] == 1
    assert data["m149"]["k149"] == 149


def test_control_characters_are_placed() -> None:
    assert errors("a: ok\nb: caf\u00e9\x00\n") == [
        "f.yaml:2:8: error: invalid YAML: the character U+0000 is not allowed here "
        "(control characters are not allowed); remove it"
    ]


def test_quoting_hint_only_for_double_braces() -> None:
    assert "must be quoted" in errors("a: {{ inputs.x }}\n")[0]
    assert "must be quoted" not in errors("a: {[1, 2]: x}\n")[0]


def test_undefined_and_recursive_aliases() -> None:
    assert "has no anchor &nope" in errors("a: *nope\n")[0]
    assert "has no anchor &a" in errors("a: &a [*a]\n")[0]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param("", "the file holds no workflow", id="empty"),
        pytest.param("# only a comment\n", "the file holds no workflow", id="comment-only"),
        pytest.param("~\n", "the file holds no workflow", id="null"),
        pytest.param("a: 1\n---\nb: 2\n", "more than one YAML document", id="two-documents"),
        pytest.param("a: [1, 2\n", "invalid YAML", id="unclosed"),
        pytest.param("a:\n\t- x\n", "tabs", id="tab"),
    ],
)
def test_unusable_documents(text: str, words: str) -> None:
    with pytest.raises(YamlError) as caught:
        parse_yaml(text, "f.yaml")
    assert words in caught.value.diagnostics[0].message


def billion_laughs(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        refs = ", ".join([f"*l{i - 1}"] * 9)
        lines.append(f"l{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_fast_in_bounded_memory() -> None:
    text = billion_laughs(10)  # 9**10 = 3.5 billion strings if expanded
    tracemalloc.start()
    with pytest.raises(YamlError) as caught:
        parse_yaml(text, "bomb.yaml")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "expands to more than 1,000,000 values" in caught.value.diagnostics[0].message
    assert peak < 5 * 1024 * 1024


@pytest.mark.slow
def test_huge_document_is_refused_before_it_is_built() -> None:
    text = "a: [" + ",".join(["1"] * 300_000) + "]\n"
    tracemalloc.start()
    with pytest.raises(YamlError) as caught:
        parse_yaml(text, "huge.yaml", max_nodes=100_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "expands to more than 100,000 values" in caught.value.diagnostics[0].message
    assert peak < 20 * 1024 * 1024  # the text itself is 600 KB; nothing like 300,000 nodes


def test_deep_nesting_is_refused() -> None:
    text = "a: " + "[" * 150 + "]" * 150 + "\n"
    with pytest.raises(YamlError, match="nested more than 100 levels"):
        parse_yaml(text, "deep.yaml")
    # aliases cannot be used to get around it
    half = "[" * 60 + "x" + "]" * 60
    text = f"a: &a {half}\nb: " + "[" * 60 + "*a" + "]" * 60 + "\n"
    with pytest.raises(YamlError, match="nests more than 100 levels"):
        parse_yaml(text, "deep.yaml")


def test_oversized_file_is_refused(tmp_path: pytest.TempPathFactory) -> None:
    from aoe.format import yamlsource

    path = tmp_path / "big.yaml"  # type: ignore[operator]
    path.write_bytes(b"a: b\n" * (yamlsource.MAX_FILE_BYTES // 5 + 10))
    with pytest.raises(YamlError, match="larger than 16 MiB"):
        yamlsource.read_text(str(path))


def test_file_that_is_not_utf8(tmp_path: pytest.TempPathFactory) -> None:
    from aoe.format.yamlsource import read_text

    path = tmp_path / "latin1.yaml"  # type: ignore[operator]
    path.write_bytes("a: ok\nb: caf\xe9\n".encode("latin-1"))
    with pytest.raises(YamlError) as caught:
        read_text(str(path))
    assert (
        caught.value.diagnostics[0]
        .format()
        .endswith(":2:1: error: the file is not valid UTF-8 text; save it as UTF-8")
    )


def test_an_alias_of_a_long_text_counts_at_its_length() -> None:
    """A 100 KB text aliased 3,000 times is 300 MB to whatever reads the document
    (a template, the run store): refused like an alias bomb, and quickly."""
    text = 'x: &s "' + "y" * 100_000 + '"\nall: [' + ", ".join(["*s"] * 3000) + "]\n"
    tracemalloc.start()
    with pytest.raises(YamlError) as caught:
        parse_yaml(text, "long.yaml")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "expands to more than 1,000,000 values" in caught.value.diagnostics[0].message
    assert peak < 20 * 1024 * 1024
