"""The OpenAPI description of `aoe serve`: valid (openapi-spec-validator), every
route the service has and no other, and the answers of a running service
match the schemas it names."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.conftest import child_env
from tests.fakeserver import FakeProvider
from tests.servehelp import Http, Service, services

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

CHAIN = """\
version: 1
name: described
agents:
  a: {prompt: "a", llm: {provider: openai, model: gpt-4o-mini, max_tokens: 20}}
  b: {prompt: "b {{ agents.a.output }}", depends_on: a,
      llm: {provider: openai, model: gpt-4o-mini, max_tokens: 20}}
"""


@pytest.fixture
def start(openai_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Service]]:
    env = child_env(openai_env, AOE_STATE_DIR=str(tmp_path / "state"), AOE_API_TOKEN="t0k3n")
    with services(env, tmp_path) as start:
        yield start


def routes(tmp_path: Path) -> set[tuple[str, str]]:
    """The (method, path) of every route the service's application has."""
    import asyncio

    from aoe.config.settings import load_settings
    from aoe.service.app import make_app
    from aoe.service.local import Service as Runs
    from aoe.service.options import ServeOptions
    from aoe.state.store import Store

    async def build() -> set[tuple[str, str]]:
        settings = load_settings(environ={"AOE_STATE_DIR": str(tmp_path)}, cwd=tmp_path)
        with Store(tmp_path / "state.db") as store:
            service = Runs(settings, store, ServeOptions())
            app = make_app(service)
            found = {
                (route.method, route.resource.canonical)
                for route in app.router.routes()
                if route.method != "HEAD" and route.resource is not None
            }
            await service.engine.aclose()
            return found

    return asyncio.run(build())


def test_the_document_is_valid_and_describes_every_route(tmp_path: Path) -> None:
    from openapi_spec_validator import validate

    from aoe.service.openapi import document

    described = document("1.2.3")
    validate(described)  # raises on anything OpenAPI 3.1 does not allow
    listed = {
        (method.upper(), path)
        for path, operations in described["paths"].items()
        for method in operations
    }
    assert listed == routes(tmp_path)
    # every body the service parses is one of its models
    schemas = described["components"]["schemas"]
    assert set(schemas["Submission"]["properties"]) >= {"workflow", "files", "inputs", "budget"}
    assert schemas["Submission"]["additionalProperties"] is False
    assert set(schemas["ResumeBody"]["properties"]) == {"budget"}


def answer_schema(described: dict[str, Any], path: str, method: str, status: int) -> Any:
    response = described["paths"][path][method]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    return {**schema, "components": described["components"]}


def check(described: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """``body`` against the schema the document gives that answer."""
    schema = answer_schema(described, path, method, status)
    resolver_schema = {"$ref": schema["$ref"], "components": described["components"]}
    jsonschema.Draft202012Validator(resolver_schema).validate(body)


def test_a_running_service_answers_as_it_describes(
    start: Callable[..., Service], fake: FakeProvider
) -> None:
    service = start()
    described = Http(service.url).get("/api/v1/openapi.json").json()  # no token needed
    assert described["openapi"] == "3.1.0"
    runs, one = "/api/v1/runs", "/api/v1/runs/{run_id}"
    submitted = service.http.post(runs, json={"workflow": CHAIN})
    assert submitted.status_code == 202
    check(described, runs, "post", 202, submitted.json())
    run_id = submitted.json()["run_id"]
    service.wait(run_id)
    check(described, one, "get", 200, service.http.get(f"{runs}/{run_id}").json())
    check(described, runs, "get", 200, service.http.get(runs).json())
    bad = service.http.post(runs, json={"workflow": "agents: [", "budget": -1})
    check(described, runs, "post", 400, bad.json())
    wrong = service.http.post(runs, json={"workflow": "version: 1\nname: x\nagents: {}\n"})
    assert wrong.status_code == 400
    check(described, runs, "post", 400, wrong.json())
    check(described, "/health", "get", 200, service.health().json())
    check(
        described, f"{one}/resume", "post", 409, service.http.post(f"{runs}/{run_id}/resume").json()
    )
    check(described, one, "get", 404, service.http.get(f"{runs}/nope").json())
    check(described, runs, "get", 401, Http(service.url).get(runs).json())
    # the routes' paths, as the document has them, are the service's
    assert all(re.fullmatch(r"/[a-z0-9/{}_.]*", path) for path in described["paths"])
    service.stop()
