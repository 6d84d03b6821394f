"""An output schema's ``$ref``s: resolved by aoe when the workflow is loaded, only
inside the schema or to files of the workflow's folder, and never fetched
(issue 13, finding 1).

From outside wherever it can be: ``aoe validate`` and ``aoe run`` (exit code,
``FILE:LINE``, message), what a listener on 127.0.0.1 received (nothing), what
the fake provider was sent, what a running ``aoe serve`` answers.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any
from xml.etree import ElementTree

import pytest

from aoe.errors import OutputInvalid, SchemaUnusable
from aoe.format.workflow import OutputConfig
from aoe.policy.outputs import parse_output
from aoe.service.runner import load
from aoe.state.definitions import definitions
from aoe.types import plain
from tests.conftest import REPO, RunCli, WriteFile, child_env
from tests.fakeserver import FakeProvider, Reply
from tests.test_rules import assert_reported
from tests.test_serve import Service

# A secret as a cloud service-account file holds one, made up at each session.
SECRET = "-----BEGIN PRIVATE KEY-----" + secrets.token_hex(16)
CREDENTIALS = json.dumps(
    {"type": "service_account", "project_id": "p", "private_key": SECRET}, indent=2
)

# The workflow of the issue; the $ref is on line REF_LINE.
FLOW = """\
version: 1
name: refs
agents:
  a:
    llm: {{provider: mock, model: m}}
    prompt: hi
    output:
      format: json
      schema:
        type: object
        required: [x]
        properties:
          x: {{$ref: {ref}}}
"""
REF_LINE = 13


def flow(ref: str) -> str:
    return FLOW.format(ref=json.dumps(ref))


def aoe(*args: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``aoe`` in a process of its own: a hang fails the test instead of freezing it."""
    return subprocess.run(
        [sys.executable, "-m", "aoe", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=child_env(AOE_STATE_DIR=str(cwd / ".state")),
        timeout=timeout,
        check=False,
    )


# -- listeners on 127.0.0.1 that a fetch would reach -----------------------------------------


class Listener:
    """A port a ``$ref`` can name. ``answer``: an HTTP server that counts every
    connection and serves a valid schema (a fetch would even succeed); otherwise a
    socket that never accepts (a fetch would wait for ever)."""

    def __init__(self, answer: bool) -> None:
        self.connections = 0
        self.closed: bool | None = None
        self.server: ThreadingHTTPServer | None = None
        self.socket: socket.socket | None = None
        if answer:
            listener = self

            class Schema(BaseHTTPRequestHandler):
                def do_GET(self) -> None:
                    body = b'{"type": "string"}'
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

                def log_message(self, *args: Any) -> None:
                    pass

            class Counting(ThreadingHTTPServer):
                def verify_request(self, request: Any, client_address: Any) -> bool:
                    listener.connections += 1
                    return True

            self.server = Counting(("127.0.0.1", 0), Schema)
            self.port = self.server.server_address[1]
            threading.Thread(target=self.server.serve_forever, daemon=True).start()
        else:
            self.socket = socket.create_server(("127.0.0.1", 0), backlog=16)
            self.port = self.socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/schema.json"

    def received_nothing(self) -> bool:
        """No connection at all, accepted or waiting in the backlog. Closes the port."""
        if self.closed is None:
            self.closed = self._close()
        return self.closed

    def _close(self) -> bool:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            return self.connections == 0
        assert self.socket is not None
        self.socket.setblocking(False)
        try:
            connection, _ = self.socket.accept()
        except BlockingIOError:
            return True
        finally:
            self.socket.close()
        connection.close()
        return False


@pytest.fixture(params=[pytest.param(True, id="answering"), pytest.param(False, id="silent")])
def listener(request: pytest.FixtureRequest) -> Iterator[Listener]:
    found = Listener(answer=request.param)
    yield found
    found.received_nothing()  # closes it


# -- a credentials file ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        pytest.param(lambda p: p.as_uri(), id="file-url"),
        pytest.param(lambda p: str(p), id="absolute-path"),
        pytest.param(lambda p: "../secrets/credentials.json", id="climbing-out"),
    ],
)
@pytest.mark.slow
@pytest.mark.subprocess
def test_a_credentials_file_is_refused_at_its_line_and_never_read(
    write: WriteFile, tmp_path: Path, ref: Callable[[Path], str]
) -> None:
    credentials = write(CREDENTIALS, "secrets/credentials.json")
    path = write(flow(ref(credentials)), "flow/wf.yaml")
    for command in (("validate", path), ("run", "--mock", path, "--output", "-")):
        result = aoe(*command, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        # the message quotes the ref, shortened when long (as tmp_path is under xdist)
        quoted = ref(credentials)[:60]
        assert_reported(result.stdout + result.stderr, path, REF_LINE, "$ref", quoted)
        assert SECRET not in result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr


def test_a_credentials_shaped_file_in_the_folder_is_refused_without_quoting_it(
    cli: RunCli, write: WriteFile
) -> None:
    write(CREDENTIALS, "flow/creds.json")
    path = write(
        flow("creds.json")
        + "  b:\n    llm: {provider: mock, model: m}\n    prompt: hi\n"
        + "    output: {format: json, schema: {$ref: creds.json}}\n",
        "flow/wf.yaml",
    )
    result = cli("validate", path)
    assert result.exit_code == 2
    assert SECRET not in result.stdout + result.stderr
    # where it is wrong, once however many agents name it; and at each $ref
    assert_reported(result.stdout, path.parent / "creds.json", 2, "'type' must be one of")
    assert result.stdout.count("creds.json:2:") == 1
    assert_reported(result.stdout, path, REF_LINE, "'creds.json' is not a valid JSON Schema")
    assert_reported(result.stdout, path, 17, "'creds.json' is not a valid JSON Schema")


# -- URLs: nothing reaches the listener, nothing hangs ----------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_url_is_refused_and_the_listener_gets_no_connection(
    write: WriteFile, tmp_path: Path, listener: Listener
) -> None:
    path = write(flow(listener.url), "flow/wf.yaml")
    for command in (("validate", path), ("run", "--mock", path, "--output", "-")):
        result = aoe(*command, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert_reported(
            result.stdout + result.stderr, path, REF_LINE, listener.url, "never fetches"
        )
    assert listener.received_nothing()


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_served_workflow_cannot_fetch_or_quote_through_its_schema(
    tmp_path: Path, fake: FakeProvider, openai_env: dict[str, str]
) -> None:
    silent = Listener(answer=False)
    service = Service(child_env(openai_env, AOE_STATE_DIR=str(tmp_path / "state")), tmp_path)
    try:
        response = service.http.post("/api/v1/runs", json={"workflow": flow(silent.url)})
        assert response.status_code == 400
        assert [
            d["line"] for d in response.json()["diagnostics"] if silent.url in d["message"]
        ] == [REF_LINE]
        assert service.http.get("/health/live").status_code == 200
        # a type the validator does not know (draft 3 allows any name): the run's error
        # is aoe's, in the record and in the events, and quotes nothing of the schema
        text = DRAFT3.format(secret=SECRET)
        run_id = service.submit(text, mock=True)
        run = service.wait(run_id, "failed", "completed_with_errors")
        record = json.dumps(run)
        events = "\n".join(line for _, line in service.http.lines(f"/api/v1/runs/{run_id}/events"))
        for seen in (record, events):
            assert "does not know" in seen
            assert SECRET not in seen
            assert "While checking instance" not in seen
        assert service.stop() == 0
    finally:
        if service.process.poll() is None:
            service.process.kill()  # first: its reader thread holds the stream open
            service.process.wait(timeout=30)
        service.close()
    assert silent.received_nothing()
    assert fake.received == []


# -- every other way a $ref can be wrong: an error at its line --------------------------------


def _outside(folder: Path) -> None:
    (folder.parent / "outside.json").write_text('{"type": "string"}')


def _symlink(folder: Path) -> None:
    _outside(folder)
    (folder / "link.json").symlink_to(folder.parent / "outside.json")


def _fifo(folder: Path) -> None:
    os.mkfifo(folder / "pipe.json")


def _files(**files: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)

    return make


DEFS = '{"$defs": {"name": {"type": "string", "minLength": 2}}}'
LOOPING = '{\n  "allOf": [\n    {"$ref": "a.json"}\n  ]\n}'
NESTED_ID = '{\n  "$defs": {\n    "a": {"$id": "urn:a", "type": "string"}\n  }\n}'

BAD = [
    pytest.param(
        "../outside.json", _outside, [], ["outside the workflow file's folder"], id="climbing-out"
    ),
    pytest.param(
        "/etc/hostname",
        None,
        [],
        ["outside the workflow (a URL or an absolute path"],
        id="absolute",
    ),
    pytest.param("//example.com/s.json", None, [], ["never fetches schemas"], id="host"),
    pytest.param("https://example.com/s.json", None, [], ["never fetches schemas"], id="https"),
    pytest.param("urn:example:s", None, [], ["never fetches schemas", "an $id declared"], id="urn"),
    pytest.param("a\x00b.json", None, [], ["control character (\\x00)"], id="nul"),
    pytest.param("a%00b.json", None, [], ["control character, \\x00"], id="nul-escaped"),
    pytest.param("defs.json?v=2", _files(**{"defs.json": DEFS}), [], ["without '?'"], id="query"),
    pytest.param(
        "link.json", _symlink, [], ["outside the workflow file's folder"], id="symlink-out"
    ),
    pytest.param("pipe.json", _fifo, [], ["is a named pipe (FIFO), not a regular file"], id="fifo"),
    pytest.param(
        "sub",
        _files(**{"sub/x.json": "{}"}),
        [],
        ["'sub' is a directory, not a regular file"],
        id="folder",
    ),
    pytest.param("missing.json", None, [], ["not found"], id="missing"),
    pytest.param(
        "huge.json",
        _files(**{"huge.json": '{"description": "' + "x" * (1024 * 1024) + '"}'}),
        [],
        ["larger than 1 MiB"],
        id="huge",
    ),
    pytest.param(
        "bad.json",
        _files(**{"bad.json": '{"type": "string",\n  oops\n'}),
        [("bad.json", 1, ["invalid YAML", "it starts here"])],
        ["not a JSON (or YAML) document"],
        id="not-json",
    ),
    pytest.param("list.json", _files(**{"list.json": "[1, 2]"}), [], ["holds a list"], id="a-list"),
    pytest.param(
        "defs.json#/$defs/nmae",
        _files(**{"defs.json": DEFS}),
        [],
        ["points at nothing", "'defs.json' has no '/$defs/nmae'", "did you mean 'name'"],
        id="dangling-in-a-file",
    ),
    pytest.param("#/$defs/x", None, [], ["points at nothing"], id="dangling"),
    pytest.param("#nowhere", None, [], ["declares no $anchor 'nowhere'"], id="no-anchor"),
    pytest.param("#/type", None, [], ["points at a string, not at a schema"], id="not-a-schema"),
    pytest.param(
        "a.json",
        _files(**{"a.json": '{"$ref": "b.json"}', "b.json": LOOPING}),
        [("b.json", 3, ["$ref 'a.json' leads back to where it started", "a.json# -> b.json#"])],
        None,
        id="loop-between-files",
    ),
    pytest.param(
        "#/properties/x",
        None,
        [],
        ["leads back to where it started without going into a property or an item"],
        id="loop-to-itself",
    ),
    pytest.param(
        "nested.json",
        _files(**{"nested.json": NESTED_ID}),
        [("nested.json", 3, ["declares $id 'urn:a' inside it"])],
        None,
        id="nested-id-in-a-file",
    ),
    pytest.param(
        "dyn.json",
        _files(**{"dyn.json": '{\n  "$dynamicRef": "#x"\n}'}),
        [("dyn.json", 2, ["uses $dynamicRef, which only works in the output schema itself"])],
        None,
        id="dynamic-ref-in-a-file",
    ),
    pytest.param(
        "draft7.json",
        _files(**{"draft7.json": '{\n  "$schema": "http://json-schema.org/draft-07/schema#"\n}'}),
        [("draft7.json", 2, ["another draft of JSON Schema"])],
        ["another draft"],
        id="another-draft",
    ),
]


@pytest.mark.parametrize(("ref", "make", "inside", "words"), BAD)
@pytest.mark.subprocess
def test_a_bad_ref_is_an_error_at_its_line(
    write: WriteFile,
    tmp_path: Path,
    ref: str,
    make: Callable[[Path], None] | None,
    inside: list[tuple[str, int, list[str]]],
    words: list[str] | None,
) -> None:
    path = write(flow(ref), "flow/wf.yaml")
    if make is not None:
        make(path.parent)
    result = aoe("validate", path, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    if words is not None:
        assert_reported(result.stdout, path, REF_LINE, "$ref", *words)
    for name, line, found in inside:
        assert_reported(result.stdout, path.parent / name, line, *found)
    assert "Traceback" not in result.stdout + result.stderr
    assert "internal error" not in result.stdout + result.stderr


def test_a_bad_ref_in_a_schema_file_is_an_error_at_its_line_there(
    cli: RunCli, write: WriteFile
) -> None:
    schema = write(
        '{\n  "type": "object",\n  "items": {"$ref": "http://127.0.0.1:9/s"}\n}', "flow/s.json"
    )
    path = write(
        "version: 1\nname: x\nagents:\n  a:\n    llm: {provider: mock, model: m}\n"
        "    prompt: hi\n    output: {format: json, schema_file: s.json}\n",
        "flow/wf.yaml",
    )
    result = cli("validate", path)
    assert result.exit_code == 2
    assert_reported(result.stdout, schema, 3, "$ref 'http://127.0.0.1:9/s'", "never fetches")


# -- valid uses, end to end -------------------------------------------------------------------

SCHEMA_FILE_FLOW = """\
version: 1
name: refs
agents:
  a:
    llm: {{provider: {provider}, model: {model}}}
    prompt: hi
    retry: {{max_retries: 0}}
    output: {{format: json, schema_file: schemas/out.json}}
"""
OUT = {
    "type": "object",
    "required": ["name", "tags", "size"],
    "properties": {
        "name": {"$ref": "defs.json#/$defs/name"},
        "tags": {"$ref": "defs.json#/$defs/tags"},
        "size": {"$ref": "#/$defs/size"},
    },
    "$defs": {"size": {"type": "integer", "minimum": 1, "maximum": 9}},
}
FILES = {
    "schemas/out.json": json.dumps(OUT),
    "schemas/defs.json": json.dumps(
        {
            "$id": "https://example.com/defs.json",
            "$defs": {
                "name": {"type": "string", "minLength": 2},
                "tags": {"type": "array", "items": {"$ref": "common/tag.yaml"}},
            },
        }
    ),
    "schemas/common/tag.yaml": "type: string\nenum: [red, green]\n",
}

VALID = [
    pytest.param(
        "{type: object, required: [x], properties: {x: {$ref: '#/$defs/x'}},"
        " $defs: {x: {type: integer, minimum: 5, maximum: 6}}}",
        {},
        lambda out: out["x"] in (5, 6),
        id="internal-defs",
    ),
    pytest.param(
        "{type: object, required: [x], properties: {x: {$ref: 'defs.json#/$defs/name'}}}",
        {"defs.json": json.dumps({"$defs": {"name": {"type": "string", "minLength": 30}}})},
        lambda out: len(out["x"]) >= 30,
        id="a-file",
    ),
    pytest.param(
        "{type: object, required: [x], properties: {x: {$ref: 'sub/a.json'}}}",
        {
            "sub/a.json": '{"type": "array", "minItems": 3, "items": {"$ref": "b.json"}}',
            "sub/b.json": '{"enum": ["only"]}',
        },
        lambda out: out["x"] == ["only"] * 3,
        id="a-file-naming-a-file",
    ),
    pytest.param(
        "{type: object, required: [x], properties: {x: {$ref: 'urn:aoe:x'}},"
        " $defs: {x: {$id: 'urn:aoe:x', type: boolean}}}",
        {},
        lambda out: isinstance(out["x"], bool),
        id="an-id-of-the-schema",
    ),
    pytest.param(
        "{type: object, required: [x], properties: {x: {$ref: '#thing'}},"
        " $defs: {x: {$anchor: thing, const: 7}}}",
        {},
        lambda out: out["x"] == 7,
        id="an-anchor",
    ),
    pytest.param(
        "{$ref: 'tree.json'}",
        {
            "tree.json": '{"type": "object", "properties": '
            '{"leaves": {"type": "array", "items": {"$ref": "leaf.json"}}}}',
            "leaf.json": '{"type": "object", "properties": {"tree": {"$ref": "tree.json"}}}',
        },
        lambda out: isinstance(out, dict),
        id="files-naming-each-other-through-properties",
    ),
]


@pytest.mark.parametrize(("schema", "files", "check"), VALID)
def test_valid_refs_run_with_mock(
    cli: RunCli,
    write: WriteFile,
    schema: str,
    files: dict[str, str],
    check: Callable[[Any], bool],
) -> None:
    for name, text in files.items():
        write(text, f"flow/{name}")
    path = write(
        "version: 1\nname: refs\nagents:\n  a:\n    llm: {provider: mock, model: m}\n"
        f"    prompt: hi\n    output:\n      format: json\n      schema: {schema}\n",
        "flow/wf.yaml",
    )
    result = cli("validate", path)
    assert result.exit_code == 0, result.stdout
    result = cli("run", "--mock", path, "--output", "-", "--quiet")
    assert result.exit_code == 0, result.stdout + result.stderr
    output = json.loads(result.stdout)["agents"]["a"]["output"]
    assert check(output), output
    # every $ref of the schema the agent was given points inside it
    bundled = plain(load(path).agents["a"].output.schema)
    assert all(ref.startswith("#") for ref in _refs(bundled)), bundled


def test_a_schema_file_with_refs_runs_with_mock_and_its_files_count(
    cli: RunCli, write: WriteFile
) -> None:
    for name, text in FILES.items():
        write(text, f"flow/{name}")
    path = write(SCHEMA_FILE_FLOW.format(provider="mock", model="m"), "flow/wf.yaml")
    result = cli("run", "--mock", path, "--output", "-", "--quiet")
    assert result.exit_code == 0, result.stdout + result.stderr
    output = json.loads(result.stdout)["agents"]["a"]["output"]
    assert len(output["name"]) >= 2
    assert 1 <= output["size"] <= 9
    assert set(output["tags"]) <= {"red", "green"}
    # a changed file is a changed definition, for `aoe resume` and for the file's digest
    before = load(path)
    write(FILES["schemas/common/tag.yaml"].replace("red", "blue"), "flow/schemas/common/tag.yaml")
    after = load(path)
    assert definitions(before)["a"] != definitions(after)["a"]
    assert before.digest != after.digest
    assert "schemas/common/tag.yaml" in after.files


@pytest.mark.slow
def test_the_provider_is_sent_one_self_contained_schema(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    for name, text in FILES.items():
        write(text, f"flow/{name}")
    path = write(SCHEMA_FILE_FLOW.format(provider="openai", model="gpt-4o-mini"), "flow/wf.yaml")
    fake.script(Reply(json={"name": "ok", "tags": ["red"], "size": 3}))
    result = cli("run", path, "--output", "-", "--quiet", env=provider_env)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["agents"]["a"]["output"]["tags"] == ["red"]
    [request] = fake.received
    sent = request.body["response_format"]["json_schema"]["schema"]
    assert sent == plain(load(path).agents["a"].output.schema)
    assert all(ref.startswith("#/$defs/") for ref in _refs(sent)), sent
    assert "https://example.com/defs.json" not in json.dumps(sent)  # the file's own $id
    assert ["red", "green"] in _values(sent, "enum")  # from a file named by a file
    # the bundled schema is what replies are checked against: a file's rule applies
    fake.script(Reply(json={"name": "ok", "tags": ["blue"], "size": 3}))
    result = cli("run", path, "--output", "-", "--quiet", "--no-cache", env=provider_env)
    assert result.exit_code == 1
    error = json.loads(result.stdout)["agents"]["a"]["error"]
    assert "does not match the output schema" in error
    assert "'blue' is not one of" in error


# -- the validator: nothing fetched, nothing quoted -------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        pytest.param(lambda creds, url: creds.as_uri(), id="file-url"),
        pytest.param(lambda creds, url: url, id="http"),
        pytest.param(lambda creds, url: "credentials.json", id="relative"),
        pytest.param(lambda creds, url: "#/$defs/nothing", id="dangling"),
    ],
)
def test_a_schema_the_loader_never_saw_cannot_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ref: Callable[[Path, str], str]
) -> None:
    creds = tmp_path / "credentials.json"
    creds.write_text(CREDENTIALS)
    monkeypatch.chdir(tmp_path)
    opened: list[Any] = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: opened.append(a))
    silent = Listener(answer=False)
    schema = {"type": "object", "properties": {"x": {"$ref": ref(creds, silent.url)}}}
    output = OutputConfig("json", MappingProxyType(schema))
    with pytest.raises(SchemaUnusable) as raised:
        parse_output('{"x": 1}', output)
    message = str(raised.value)
    assert "$ref" in message
    assert SECRET not in message
    assert "service_account" not in message
    assert not raised.value.retryable
    assert opened == []
    assert silent.received_nothing()


DRAFT3 = """\
version: 1
name: draft3
agents:
  a:
    llm: {{provider: mock, model: m}}
    prompt: hi
    output:
      format: json
      schema:
        $schema: "http://json-schema.org/draft-03/schema#"
        type: service_account
        private_key: "{secret}"
"""


def test_an_unknown_type_never_quotes_the_schema_in_the_results(
    cli: RunCli, write: WriteFile, tmp_path: Path
) -> None:
    path = write(DRAFT3.format(secret=SECRET))
    junit = tmp_path / "junit.xml"
    result = cli("run", "--mock", path, "--output", "-", "--junit", junit)
    assert result.exit_code == 1
    agent = json.loads(result.stdout)["agents"]["a"]
    assert "type 'service_account', which the validator does not know" in agent["error"]
    assert agent["attempts"][0]["error_kind"] == "SchemaUnusable"
    report = ElementTree.tostring(ElementTree.parse(junit).getroot(), encoding="unicode")
    for seen in (result.stdout, result.stderr, report):
        assert SECRET not in seen
        assert "While checking instance" not in seen


@pytest.mark.parametrize(
    ("reply", "schema"),
    [
        pytest.param('"' + "x" * 100_000 + '"', {"type": "integer"}, id="a-huge-reply"),
        pytest.param('"z"', {"enum": ["v" * 1000 + str(i) for i in range(100)]}, id="a-huge-enum"),
        pytest.param(
            json.dumps({"k" * 5000: 1}),
            {"additionalProperties": {"type": "string"}},
            id="a-huge-key",
        ),
    ],
)
def test_a_reply_problem_is_said_in_a_few_hundred_characters(
    reply: str, schema: dict[str, Any]
) -> None:
    with pytest.raises(OutputInvalid) as raised:
        parse_output(reply, OutputConfig("json", MappingProxyType(schema)))
    assert "does not match the output schema" in str(raised.value)
    assert len(str(raised.value)) < 600


@pytest.mark.subprocess
def test_validate_without_refs_imports_no_jsonschema(write: WriteFile) -> None:
    path = write(
        "version: 1\nname: plain\nagents:\n  a:\n    llm: {provider: mock, model: m}\n"
        "    prompt: hi\n    output: {format: json, schema: {type: object, required: [a]}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "aoe", "validate", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert "jsonschema" not in imported
    assert "referencing" not in imported


def _refs(schema: Any) -> Iterator[str]:
    yield from (v for v in _values(schema, "$ref") if isinstance(v, str))


def _values(node: Any, key: str) -> Iterator[Any]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _values(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _values(v, key)
