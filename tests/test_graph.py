"""The dependency graph: cycles, order, critical path, and the drawings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aoe.format.graph import Graph, GraphError, find_cycles, format_cycle
from tests.conftest import WORKFLOWS, RunCli, WriteFile

DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["d"], "lone": []}


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    """Random DAGs: each node depends only on nodes declared before it."""
    size = draw(st.integers(min_value=1, max_value=30))
    nodes = [f"n{i}" for i in range(size)]
    return {
        node: draw(st.lists(st.sampled_from(nodes[:i]), unique=True, max_size=4)) if i else []
        for i, node in enumerate(nodes)
    }


def test_order_levels_and_ends() -> None:
    graph = Graph(DIAMOND)
    assert graph.topological_order() == ("a", "b", "c", "d", "e", "lone")
    assert graph.levels() == {"a": 0, "b": 1, "c": 1, "d": 2, "e": 3, "lone": 0}
    assert graph.roots == ("a", "lone")
    assert graph.sinks == ("e", "lone")
    assert graph.dependents("a") == ("b", "c")
    assert graph.edges == [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e")]


def test_critical_and_remaining_paths() -> None:
    graph = Graph(DIAMOND)
    assert graph.critical_path().nodes == ("a", "b", "d", "e")
    assert graph.critical_path().length == 4
    weights = {"a": 1.0, "b": 1.0, "c": 5.0, "d": 1.0, "e": 1.0, "lone": 2.0}
    weighted = graph.critical_path(weights.__getitem__)
    assert (weighted.nodes, weighted.length) == (("a", "c", "d", "e"), 8.0)
    remaining = graph.remaining_path(weights.__getitem__)
    assert remaining == {"a": 8.0, "b": 3.0, "c": 7.0, "d": 2.0, "e": 1.0, "lone": 2.0}


@given(dags())
@settings(max_examples=200, deadline=None)
@pytest.mark.slow
def test_order_respects_every_dependency(deps: dict[str, list[str]]) -> None:
    graph = Graph(deps)
    position = {node: i for i, node in enumerate(graph.topological_order())}
    assert sorted(position) == sorted(deps)
    for node, needs in deps.items():
        assert all(position[d] < position[node] for d in needs)
    assert find_cycles(deps) == []
    path = graph.critical_path().nodes
    assert all(path[i] in deps[path[i + 1]] for i in range(len(path) - 1))
    assert len(path) == max(graph.levels().values()) + 1


@given(dags(), st.data())
@settings(max_examples=200, deadline=None)
@pytest.mark.slow
def test_a_back_edge_gives_a_real_cycle(deps: dict[str, list[str]], data: st.DataObject) -> None:
    nodes = list(deps)
    later = data.draw(st.sampled_from(nodes))
    earlier = data.draw(st.sampled_from(nodes[: nodes.index(later) + 1]))
    deps[earlier] = [*deps[earlier], later]  # earlier now depends on something after it
    reachable = _reaches(deps, later, earlier)
    cycles = find_cycles(deps)
    if not reachable:
        assert cycles == []
        return
    assert cycles
    for cycle in cycles:
        assert cycle[0] == cycle[-1]
        assert all(cycle[i + 1] in deps[cycle[i]] for i in range(len(cycle) - 1))
    with pytest.raises(GraphError, match="dependency cycle"):
        Graph(deps)


def _reaches(deps: dict[str, list[str]], start: str, goal: str) -> bool:
    """Whether ``start`` depends, directly or not, on ``goal`` (or is it)."""
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(deps[node])
    return False


def test_cycles_and_unknown_dependencies() -> None:
    deps = {"a": ["c"], "b": ["a"], "c": ["b"], "d": ["d"], "e": ["x"]}
    assert [format_cycle(c) for c in find_cycles(deps)] == ["a -> c -> b -> a", "d -> d"]
    with pytest.raises(GraphError, match="unknown node x"):
        Graph(deps)


def test_long_chains_do_not_recurse() -> None:
    chain = {f"n{i}": [f"n{i - 1}"] if i else [] for i in range(20_000)}
    assert len(Graph(chain).critical_path().nodes) == 20_000
    chain["n0"] = ["n19999"]
    assert len(find_cycles(chain)[0]) == 20_001


def test_mermaid_has_one_edge_per_dependency() -> None:
    graph = Graph({**DIAMOND, "end": ["e"]})  # "end" is a Mermaid keyword
    text = graph.to_mermaid({"a": 'say "hi" <b>'}, highlight=["a", "b"])
    edges = re.findall(r"^\s+n_(\w+) --> n_(\w+)$", text, re.MULTILINE)
    assert edges == graph.edges
    assert 'n_a["say #quot;hi#quot; #lt;b#gt;"]' in text
    assert "class n_a,n_b critical" in text


def test_cli_mermaid_matches_the_file(cli: RunCli) -> None:
    result = cli("graph", WORKFLOWS / "support-triage.yaml", "--format", "mermaid")
    assert result.exit_code == 0
    edges = re.findall(r"n_(\w+) --> n_(\w+)", result.stdout)
    assert sorted(edges) == sorted(
        [
            ("triage", "bug_report"),
            ("triage", "billing_check"),
            ("triage", "answer_lookup"),
            ("triage", "reply"),
            ("bug_report", "reply"),
            ("billing_check", "reply"),
            ("answer_lookup", "reply"),
        ]
    )


def graphviz() -> str:
    found = shutil.which("dot")
    if found is None:
        if os.environ.get("AOE_REQUIRE_GRAPHVIZ"):
            pytest.fail("Graphviz's dot is required here (AOE_REQUIRE_GRAPHVIZ is set)")
        pytest.skip("Graphviz's dot is not installed")
    return found


@pytest.mark.parametrize("name", sorted(p.name for p in WORKFLOWS.glob("*.yaml")))
@pytest.mark.subprocess
def test_dot_output_is_accepted_by_graphviz(cli: RunCli, tmp_path: object, name: str) -> None:
    dot = graphviz()
    result = cli("graph", WORKFLOWS / name, "--format", "dot")
    assert result.exit_code == 0
    rendered = subprocess.run(
        [dot, "-Tsvg"], input=result.stdout, capture_output=True, text=True, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stderr == ""
    assert "<svg" in rendered.stdout


def test_dot_highlights_only_the_path_edges() -> None:
    graph = Graph({"a": [], "b": ["a"], "c": ["b", "a"]})
    text = graph.to_dot("g", highlight=graph.critical_path().nodes)
    assert '"a" -> "b" [penwidth=2];' in text
    assert '"b" -> "c" [penwidth=2];' in text
    assert '"a" -> "c";' in text  # both ends are on the path, the edge is not


@pytest.mark.subprocess
def test_dot_escapes_names_and_labels() -> None:
    dot = graphviz()
    text = Graph({"a": [], "b": ["a"]}).to_dot('we"ird \\ name', {"a": 'quote " and \\ and\nline'})
    rendered = subprocess.run(
        [dot, "-Tplain"], input=text, capture_output=True, text=True, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    assert "edge a b" in rendered.stdout


def test_tree_output_on_a_pipe(cli: RunCli) -> None:
    result = cli("graph", WORKFLOWS / "research-brief.yaml")
    assert result.exit_code == 0
    assert "\x1b[" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == "research-brief (4 agents)"
    assert any("-> see brief" in line for line in lines)
    assert lines[-1] == "critical path: scope -> angle -> brief (3 agents)"


def test_graph_to_a_file(cli: RunCli, tmp_path: object, write: WriteFile) -> None:
    from pathlib import Path

    out = Path(str(tmp_path)) / "g.mmd"
    result = cli("graph", WORKFLOWS / "code-review.yaml", "-f", "mermaid", "-o", out)
    assert result.exit_code == 0
    assert result.stdout == ""
    assert out.read_text().startswith("flowchart TD\n")


def test_graph_of_an_invalid_file_exits_2(cli: RunCli, write: WriteFile) -> None:
    path = write("version: 1\nname: x\nagents:\n  a: {prompt: hi, depends_on: a}\n")
    result = cli("graph", path)
    assert result.exit_code == 2
    assert "depends on itself" in result.stderr
    assert result.stdout == ""


def test_deep_graphs_are_drawn_whole_on_a_pipe(cli: RunCli, write: WriteFile) -> None:
    agents = "".join(
        f"  a{i}:\n    prompt: step {i}\n" + (f"    depends_on: a{i - 1}\n" if i else "")
        for i in range(1500)
    )
    path = write(
        "version: 1\nname: chain\ndefaults:\n  llm: {model: gpt-4o-mini}\nagents:\n" + agents
    )
    result = cli("graph", path)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1500 + 2
    assert lines[-2].endswith("└── a1499 openai/gpt-4o-mini")
    assert lines[-2].startswith("    " * 1499)


def test_rich_tree_and_plain_text_agree() -> None:
    from io import StringIO

    from aoe.cli.ui.graph import graph_text, graph_tree
    from aoe.cli.ui.text import console
    from aoe.service.runner import load

    workflow = load(WORKFLOWS / "support-triage.yaml")
    buffer = StringIO()
    console(buffer, width=400).print(graph_tree(workflow))
    assert buffer.getvalue() == graph_text(workflow)
