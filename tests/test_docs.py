"""The user documentation holds: every workflow in docs/workflow-format.md is
checked by `aoe validate` as the page says (valid, or, for the page's broken
example, with exactly the messages it prints)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO, RunCli

PAGE = REPO / "docs" / "workflow-format.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), re.DOTALL)
WORKFLOWS = [b for b in BLOCKS if re.search(r"^version: 1$", b, re.M) and "agents:" in b]


def test_the_page_has_its_examples() -> None:
    assert len(WORKFLOWS) >= 8


@pytest.mark.parametrize("text", WORKFLOWS, ids=lambda t: re.search(r"^name: (\S+)", t, re.M)[1])  # type: ignore[index]
def test_each_workflow_on_the_page_is_as_the_page_says(
    cli: RunCli, tmp_path: Path, text: str
) -> None:
    name = re.search(r"^name: (\S+)", text, re.M)[1]  # type: ignore[index]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    for needed in re.findall(r"(?:prompt_file|system_file|schema_file): (\S+)", text):
        file = tmp_path / needed  # what the page's files hold does not matter here
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("{type: object}\n" if needed.endswith((".json", ".yaml")) else "hi\n")
    result = cli("validate", path.name)  # (the cli fixture runs in tmp_path)
    if name == "broken":
        page = PAGE.read_text()
        shown = [line for line in page.splitlines() if line.startswith("broken.yaml:")]
        assert result.exit_code == 2
        assert result.stdout.splitlines() == shown
    else:
        assert result.exit_code == 0, result.stdout + result.stderr


def test_the_results_page_names_every_field_of_the_schema() -> None:
    """docs/results.md says what each field of the results document is: a field
    added to the schema and not to the page fails here."""
    import json

    page = (REPO / "docs" / "results.md").read_text()
    schema = json.loads((REPO / "results.schema.json").read_text())
    parts = [schema, *(schema["$defs"][name] for name in ("Agent", "Attempt", "RunListed"))]
    missing = [name for part in parts for name in part["properties"] if f"`{name}`" not in page]
    assert missing == []
    assert "results_version" in page


def test_the_results_page_names_every_event_and_its_fields() -> None:
    """Each event type, and each field it is given out with (the published
    names), is on the page: an event or a field added in the code fails here."""
    import dataclasses

    from aoe.events import Event
    from aoe.observe.results import published

    page = (REPO / "docs" / "results.md").read_text()
    section = page[page.index("## Events") :]
    missing = []
    for kind in Event.__subclasses__():
        names = {"type": None, **{f.name: None for f in dataclasses.fields(kind)}}
        shown = published(names)
        row = next((line for line in section.splitlines() if f"| `{kind.__name__}` |" in line), "")
        if not row:
            missing.append(kind.__name__)
            continue
        missing += [
            f"{kind.__name__}.{name}"
            for name in shown
            if name not in ("event", "at", "run_id", "agent_id") and f"`{name}`" not in row
        ]
    assert missing == []


def test_the_http_api_page_names_every_route_and_every_body_field() -> None:
    """docs/http-api.md says what each route and each field of a submission is:
    a route or a field added to the service and not to the page fails here."""
    from aoe.service.models import ResumeBody, Submission
    from aoe.service.openapi import document

    page = (REPO / "docs" / "http-api.md").read_text()
    described = document("0")
    missing = []
    for path, operations in described["paths"].items():
        shown = path.replace("{run_id}", "ID")
        missing += [
            f"{method.upper()} {shown}"
            for method in operations
            if f"{method.upper()} {shown}`" not in page
        ]
    fields = [*Submission.model_fields, *ResumeBody.model_fields]
    missing += [name for name in fields if f"`{name}`" not in page]
    assert missing == []


def test_the_readme_links_every_page_of_docs() -> None:
    readme = (REPO / "README.md").read_text()
    pages = sorted(path.name for path in (REPO / "docs").glob("*.md"))
    assert [page for page in pages if f"](docs/{page})" not in readme] == []
    assert "../shared" not in readme
