"""The OpenAPI description of ``aoe serve``'s HTTP API (``GET /api/v1/openapi.json``).

Generated from the pydantic models the service parses bodies and queries with
(:mod:`aoe.service.models`), the results document's (:mod:`aoe.observe.resultschema`)
and the answers' below, so the description cannot drift from what is checked
and answered: a field added to a model is in the document. OpenAPI 3.1, whose
schemas are JSON Schema 2020-12, pydantic's own.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aoe.observe.resultschema import Event, RunList, RunResults
from aoe.service.models import MOST_RUNS_LISTED, ResumeBody, RunsQuery, Submission
from aoe.service.options import API


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Accepted(_Answer):
    """A run taken: submitted, resumed or (queued) cancelled."""

    run_id: str
    status: str = Field(description="queued, resuming, cancelling or cancelled.")
    url: str | None = Field(default=None, description="Where the run is: GET it.")


class Diagnostic(_Answer):
    """One mistake in a submitted workflow, as `aoe validate --format json` says it."""

    file: str
    line: int
    column: int
    severity: Literal["error", "warning"]
    code: str
    message: str = Field(description="What is wrong, and the fix.")


class Error(_Answer):
    """Every refusal: what is wrong and what to do."""

    error: str
    diagnostics: list[Diagnostic] | None = Field(
        default=None, description="A submitted workflow's mistakes, each at its line."
    )


class Health(BaseModel):
    """``GET /health``: 200, or 503 when unhealthy."""

    model_config = ConfigDict(extra="allow")

    status: Literal["healthy", "degraded", "unhealthy"]
    reason: str
    active_runs: int
    max_concurrent_workflows: int
    queued_runs: int
    queue_limit: int
    rate_limit_wait_seconds: float
    provider_error_rate: float
    calls: int
    window_seconds: float


class Alive(_Answer):
    status: Literal["alive"]


_MODELS: tuple[type[BaseModel], ...] = (
    Submission,
    ResumeBody,
    Accepted,
    Error,
    Diagnostic,
    Health,
    Alive,
    RunList,
    RunResults,
    Event,
)


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(Error)}


_RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "description": "The run's id (a unique prefix of it is enough).",
    "schema": {"type": "string"},
}
_UNAUTHORIZED = _error("A bearer token is required (AOE_API_TOKEN), and was not given.")
_NOT_FOUND = _error("No such run.")
_UNAVAILABLE = _error("Shutting down, or Redis (where runs are queued) failed: try again.")


def _query() -> list[dict[str, Any]]:
    """``GET /api/v1/runs``'s parameters, from :class:`RunsQuery`."""
    schema = RunsQuery.model_json_schema()
    parameters = []
    for name, field in schema["properties"].items():
        description = field.pop("description", "")
        field.pop("title", None)
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": description,
                "schema": field,
            }
        )
    return parameters


def document(version: str) -> dict[str, Any]:
    """The OpenAPI document of the service, aoe ``version``."""
    schemas: dict[str, Any] = {}
    for model in _MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    secured: list[dict[str, list[str]]] = [{"bearer": []}, {}]  # a token if the service has one
    runs = f"{API}/runs"
    one = f"{runs}/{{run_id}}"
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "summary": "How the service is: healthy, degraded or unhealthy, and why",
                "tags": ["probes"],
                "responses": {
                    "200": {"description": "Healthy or degraded.", "content": _json(Health)},
                    "503": {"description": "Unhealthy.", "content": _json(Health)},
                },
            }
        },
        "/health/live": {
            "get": {
                "summary": "Whether the process serves at all (a liveness probe)",
                "tags": ["probes"],
                "responses": {"200": {"description": "It serves.", "content": _json(Alive)}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "tags": ["probes"],
                "responses": {
                    "200": {
                        "description": "The Prometheus text exposition.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "404": _error("Metrics are off (ENABLE_METRICS=false)."),
                },
            }
        },
        runs: {
            "post": {
                "summary": "Submit a run of a workflow",
                "tags": ["runs"],
                "security": secured,
                "requestBody": {"required": True, "content": _json(Submission)},
                "responses": {
                    "202": {
                        "description": "Taken: queued for a run slot (or a worker).",
                        "headers": {
                            "Location": {
                                "description": "The run's URL.",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": _json(Accepted),
                    },
                    "400": _error("The body, the workflow or its inputs are wrong: each said."),
                    "401": _UNAUTHORIZED,
                    "408": _error("The body did not arrive within --body-timeout."),
                    "413": _error("The body is over --max-body."),
                    "429": _error("The queue is full: retry later."),
                    "503": _UNAVAILABLE,
                },
            },
            "get": {
                "summary": "The runs, newest first",
                "tags": ["runs"],
                "security": secured,
                "parameters": _query(),
                "responses": {
                    "200": {
                        "description": f"At most {MOST_RUNS_LISTED:,} runs.",
                        "content": _json(RunList),
                    },
                    "400": _error("A parameter is wrong."),
                    "401": _UNAUTHORIZED,
                    "503": _UNAVAILABLE,
                },
            },
        },
        one: {
            "get": {
                "summary": "A run's results document",
                "tags": ["runs"],
                "security": secured,
                "parameters": [_RUN_ID],
                "responses": {
                    "200": {
                        "description": "As it stands, or as it ended.",
                        "content": _json(RunResults),
                    },
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                    "503": _UNAVAILABLE,
                },
            }
        },
        f"{one}/events": {
            "get": {
                "summary": "A run's events: those so far, then live until it ends",
                "description": "Server-Sent Events: each frame's `event` is the event's type "
                "and its `data` an Event (JSON); a closing `end` frame (`data`: the run id), "
                "or an `error` frame when the stream cannot go on (reconnect).",
                "tags": ["runs"],
                "security": secured,
                "parameters": [_RUN_ID],
                "responses": {
                    "200": {
                        "description": "The event stream.",
                        "content": {
                            "text/event-stream": {
                                "schema": {"type": "string"},
                                "x-frame-data": {"$ref": "#/components/schemas/Event"},
                            }
                        },
                    },
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                },
            }
        },
        f"{one}/cancel": {
            "post": {
                "summary": "Cancel a run, queued or running",
                "tags": ["runs"],
                "security": secured,
                "parameters": [_RUN_ID],
                "responses": {
                    "200": {
                        "description": "Cancelled before it began.",
                        "content": _json(Accepted),
                    },
                    "202": {"description": "Being cancelled.", "content": _json(Accepted)},
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                    "409": _error("It is not running."),
                },
            }
        },
        f"{one}/resume": {
            "post": {
                "summary": "Resume a run that did not complete: its completed agents are kept",
                "tags": ["runs"],
                "security": secured,
                "parameters": [_RUN_ID],
                "requestBody": {"required": False, "content": _json(ResumeBody)},
                "responses": {
                    "202": {
                        "description": "Resuming (or queued again).",
                        "content": _json(Accepted),
                    },
                    "400": _error("The body is wrong."),
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                    "409": _error("It completed, or runs already, or its workflow changed."),
                    "503": _UNAVAILABLE,
                },
            }
        },
        f"{one}/report": {
            "get": {
                "summary": "A run's HTML report, following the run live in a browser",
                "tags": ["runs"],
                "security": secured,
                "parameters": [_RUN_ID],
                "responses": {
                    "200": {
                        "description": "The report, as `aoe report` writes it.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                },
            }
        },
        f"{API}/openapi.json": {
            "get": {
                "summary": "This document",
                "tags": ["service"],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/": {
            "get": {
                "summary": "The web view: the runs",
                "tags": ["web view"],
                "responses": {
                    "200": {
                        "description": "A page (it asks the API, with the token).",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/runs/{run_id}": {
            "get": {
                "summary": "The web view: one run's report, live",
                "tags": ["web view"],
                "parameters": [_RUN_ID],
                "responses": {
                    "200": {
                        "description": "A page (it asks the API, with the token).",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aoe serve",
            "version": version,
            "description": "Run declarative workflows of LLM calls: submit, follow, cancel "
            "and resume runs, read their results. `/api/` routes need `Authorization: "
            "Bearer TOKEN` when the service has a token (AOE_API_TOKEN).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
