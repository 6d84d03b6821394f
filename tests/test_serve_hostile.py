"""`aoe serve` against hostile clients: payloads, malformed requests and slow
connections, over real HTTP and raw sockets, against a process of its own.

Every answer must be strict JSON (no bare NaN or Infinity), every refusal a
400 (or 404, 408) with a message that says why, never a 500; the log stays
one line per record in the format asked for, without tracebacks, and small
however much a client sends; and slow clients cannot keep the service from
answering its probes.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import logging
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aoe.observe.logs import Every, OneLine, setup
from tests.conftest import child_env
from tests.fakeserver import FakeProvider, Reply
from tests.servehelp import Service, services

MOCKED = """\
version: 1
name: hostile
inputs:
  topic: {type: string, default: tides}
defaults:
  llm: {provider: openai, model: gpt-4o-mini, max_tokens: 50}
agents:
  a: {prompt: "a about {{ inputs.topic }}"}
  b: {prompt: "b after {{ agents.a.output }}", depends_on: a}
outputs:
  final: "{{ agents.b.output }}"
"""
W = json.dumps(MOCKED)  # the workflow as a JSON string, for bodies written by hand


def strict(text: str) -> Any:
    """JSON as a strict parser reads it: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} in an answer: not strict JSON:\n{text[:500]}")

    return json.loads(text, parse_constant=refuse)


def no_traceback(service: Service) -> None:
    log = "".join(service.lines)
    assert "Traceback" not in log, log
    assert "Error handling request" not in log, log


def all_json(service: Service) -> list[dict[str, Any]]:
    """The service's log lines, each of which must be one JSON object."""
    records = []
    for line in service.lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a log line that is not JSON: {line!r}") from None
    return records


def raw(url: str, data: bytes, *, timeout: float = 10) -> tuple[int, str]:
    """Send bytes as they are; the answer's status and body (read to the end)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode("utf-8", "replace")


@pytest.fixture
def env(openai_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return child_env(openai_env, AOE_STATE_DIR=str(tmp_path / "state"))


@pytest.fixture
def start(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Service]]:
    with services(env, tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service for the payloads below, logging JSON; runs only mocked."""
    folder = tmp_path_factory.mktemp("served")
    with services(child_env(AOE_STATE_DIR=str(folder / "state")), folder) as start:
        yield start("--log-format", "json")


# -- bodies and queries ---------------------------------------------------------------------

BODY_CASES: list[tuple[str, str, str]] = [
    ("budget-nan", f'{{"workflow": {W}, "budget": NaN}}', "NaN"),
    ("budget-infinity", f'{{"workflow": {W}, "budget": Infinity}}', "Infinity"),
    ("budget-minus-inf", f'{{"workflow": {W}, "budget": -Infinity}}', "-Infinity"),
    ("budget-1e400", f'{{"workflow": {W}, "budget": 1e400}}', "1e400"),
    ("int-5000-digits", f'{{"workflow": {W}, "budget": {"9" * 5000}}}', "5,000 digits"),
    (
        "int-5000-digits-in-inputs",
        f'{{"workflow": {W}, "inputs": {{"topic": {"1" * 5000}}}}}',
        "5,000 digits",
    ),
    ("int-beyond-64-bits", f'{{"workflow": {W}, "budget": {2**64}}}', "64 bits"),
    ("budget-negative", f'{{"workflow": {W}, "budget": -1}}', '"budget"'),
    ("budget-text", f'{{"workflow": {W}, "budget": "5"}}', '"budget"'),
    ("huge-max-parallel", f'{{"workflow": {W}, "max_parallel": 1000000}}', '"max_parallel"'),
    ("max-parallel-true", f'{{"workflow": {W}, "max_parallel": true}}', '"max_parallel"'),
    ("mock-text", f'{{"workflow": {W}, "mock": "yes"}}', '"mock"'),
    ("inputs-not-object", f'{{"workflow": {W}, "inputs": [1]}}', '"inputs"'),
    ("name-with-folder", f'{{"workflow": {W}, "name": "a/b.yaml"}}', '"name"'),
    ("unknown-field", f'{{"workflow": {W}, "colour": 1}}', "unknown field 'colour'"),
    ("no-workflow", '{"inputs": {}}', '"workflow" is required'),
    ("blank-workflow", '{"workflow": "  "}', '"workflow"'),
    ("not-an-object", "[1, 2]", "JSON object"),
    ("not-json", "{not json", "not JSON"),
    ("lone-surrogate", f'{{"workflow": {W}, "name": "\\ud800.yaml"}}', "surrogate"),
    ("nested-deeply", "[" * 100_000, "nested too deeply"),
]
BODIES = [pytest.param(body, said, id=name) for name, body, said in BODY_CASES]


@pytest.mark.parametrize(("body", "said"), BODIES)
@pytest.mark.slow
@pytest.mark.subprocess
def test_a_hostile_body_is_a_400_that_says_why(served: Service, body: str, said: str) -> None:
    response = served.http.post(
        "/api/v1/runs", content=body.encode(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = strict(response.text)["error"]
    assert said in error
    assert len(error) < 500  # the message, not the payload
    no_traceback(served)
    all_json(served)


@pytest.mark.subprocess
def test_a_body_that_is_not_utf8_is_a_400(served: Service) -> None:
    response = served.http.post("/api/v1/runs", content=b'{"workflow": "\xff\xfe"}')
    assert response.status_code == 400
    assert "UTF-8" in strict(response.text)["error"]


@pytest.mark.parametrize(
    "limit",
    [
        pytest.param("99999999999999999999", id="beyond-64-bits"),
        pytest.param("9" * 5000, id="5000-digits"),
        pytest.param("1001", id="over-1000"),
        pytest.param("0", id="zero"),
        pytest.param("-5", id="negative"),
        pytest.param("ten", id="a-word"),
    ],
)
@pytest.mark.subprocess
def test_a_list_limit_out_of_range_is_a_400(served: Service, limit: str) -> None:
    response = served.http.get("/api/v1/runs", params={"limit": limit})
    assert response.status_code == 400, response.text
    assert "limit must be a whole number from 1 to 1,000" in strict(response.text)["error"]
    assert served.http.get("/api/v1/runs", params={"limit": "1000"}).status_code == 200
    no_traceback(served)


@pytest.mark.subprocess
def test_a_sound_submission_still_runs(served: Service) -> None:
    run_id = served.submit(MOCKED, mock=True, budget=0.5, max_parallel=2, cache=False)
    run = served.wait(run_id)
    assert run["cost_budget_usd"] == 0.5
    assert run["outputs"]["final"]


# -- answers and records ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
def test_records_holding_nan_or_infinity_are_answered_in_strict_json(
    start: Callable[..., Service], tmp_path: Path
) -> None:
    """Records written before bodies were checked may hold NaN or Infinity (as
    budgets did): GET, the list and the events answer them as null."""
    service = start()
    run_id = service.submit(MOCKED, mock=True)
    service.wait(run_id)
    assert service.stop() == 0
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        db.execute(
            "UPDATE runs SET budget = ?, settings = ?, inputs = ? WHERE run_id = ?",
            (float("inf"), '{"budget": NaN}', '{"topic": -Infinity}', run_id),
        )
        (data,) = db.execute(
            "SELECT data FROM events WHERE run_id = ? ORDER BY seq LIMIT 1", (run_id,)
        ).fetchone()
        db.execute(
            "UPDATE events SET data = ? WHERE run_id = ? AND seq = ("
            "SELECT MIN(seq) FROM events WHERE run_id = ?)",
            (json.dumps({**json.loads(data), "cost": float("nan")}), run_id, run_id),
        )
    service = start()
    run = strict(service.http.get(f"/api/v1/runs/{run_id}").text)
    assert run["cost_budget_usd"] is None
    assert run["inputs"] == {"topic": None}
    listed = strict(service.http.get("/api/v1/runs").text)["runs"]
    assert [r["run_id"] for r in listed] == [run_id]
    events = [
        strict(line.removeprefix("data: "))
        for _, line in service.http.lines(f"/api/v1/runs/{run_id}/events")
        if line.startswith("data: ")
    ]
    assert events[0]["cost_usd"] is None
    assert events[-1] == {"run_id": run_id}
    service.stop()


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_404_does_not_name_the_servers_folders(
    start: Callable[..., Service], tmp_path: Path
) -> None:
    service = start()
    for method, path in [
        ("GET", "/api/v1/runs/nope"),
        ("GET", "/api/v1/runs/nope/events"),
        ("POST", "/api/v1/runs/nope/cancel"),
    ]:
        response = service.http.request(method, path)
        assert response.status_code == 404, (path, response.text)
        error = strict(response.text)["error"]
        assert "nope" in error
        assert str(tmp_path) not in error
        assert "state.db" not in error
    service.stop()


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_submitted_run_records_no_server_folder_and_resumes_from_its_record(
    start: Callable[..., Service], fake: FakeProvider, env: dict[str, str], tmp_path: Path
) -> None:
    """A submitted workflow has no path on the server: its record says
    ``<submitted>/NAME``, and a resume uses the record's copy, whatever lies
    at that path where it is resumed."""
    fake.respond = lambda r: Reply(delay=30) if r.prompt.startswith("b ") else Reply()
    service = start()
    run_id = service.submit(MOCKED, name="brief.yaml")
    deadline = time.monotonic() + 20
    while len(fake.received) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    run = service.run(run_id)
    assert run["workflow"]["file"] == "<submitted>/brief.yaml"
    assert str(tmp_path) not in json.dumps(run)
    assert service.http.post(f"/api/v1/runs/{run_id}/cancel").status_code == 202
    service.wait(run_id, "cancelled")
    assert service.stop() == 0

    def aoe(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aoe", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    shown = aoe("runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert "<submitted>/brief.yaml" in shown.stdout
    assert str(tmp_path) not in shown.stdout
    # a file at that path here is not the submitted workflow: not used
    planted = tmp_path / "<submitted>" / "brief.yaml"
    planted.parent.mkdir()
    planted.write_text(MOCKED.replace("b after", "planted b after"), encoding="utf-8")
    fake.reset()
    resumed = aoe("resume", run_id, "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert [r.prompt.split(" ")[0] for r in fake.received] == ["b"]


# -- malformed requests and the log -------------------------------------------------------------

MALFORMED: list[tuple[str, bytes]] = [
    ("not-a-method", b"GARBAGE\r\n\r\n"),
    ("bad-version", b"GET / HTTP/9.9\r\n\r\n"),
    ("bad-header", b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"),
    ("line-too-long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"),
    ("many-headers", b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 200 + b"\r\n"),
    ("bad-length", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
    (
        "bad-chunk",
        b"POST /api/v1/runs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ),
    ("tls", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(40))),
    ("control-bytes", b"GET /\x00\x01 HTTP/1.1\r\nHost: x\r\n\r\n"),
]


@pytest.mark.slow
@pytest.mark.subprocess
def test_malformed_requests_get_json_400s_and_the_log_stays_json_and_short(
    start: Callable[..., Service],
) -> None:
    service = start("--log-format", "json")
    for name, payload in MALFORMED:
        status, body = raw(service.url, payload)
        assert status == 400, (name, body)
        assert strict(body)["error"], name
    for _ in range(200):  # a flood of them
        assert raw(service.url, b"GARBAGE\r\n\r\n")[0] == 400
    for _, text, _ in BODY_CASES[:5]:
        assert raw(service.url, _post(text.encode()))[0] == 400
    assert service.health().json()["status"] == "healthy"
    assert service.stop() == 0
    no_traceback(service)
    records = all_json(service)
    bad = [r for r in records if r["message"].startswith("bad request from")]
    assert len(bad) == 1  # one line per minute, however many there are
    assert len(records) < 10, records


def _post(body: bytes) -> bytes:
    return (
        b"POST /api/v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def test_library_log_records_are_one_line_and_a_flood_is_cut_short() -> None:
    """What aiohttp and asyncio log goes through aoe's format: one line each,
    the exception as its type and message, at most a few lines a minute."""
    now = [0.0]
    stream = io.StringIO()
    saved = {name: logging.getLogger(name).handlers[:] for name in ("aoe", "aiohttp", "asyncio")}
    try:
        setup("json", "INFO", stream)
        handler = logging.getLogger("aiohttp").handlers[0]
        handler.filters[:] = [OneLine(interval=60, burst=5, clock=lambda: now[0])]
        server = logging.getLogger("aiohttp.server")
        for _ in range(100):
            try:
                raise ValueError("400, message:\n  Invalid method encountered:\n\n    b'X'\n    ^")
            except ValueError:
                server.exception("Error handling request from %s", "127.0.0.1")
        now[0] = 61.0
        server.error("Error handling request from %s", "127.0.0.1")
        logging.getLogger("asyncio").error("socket.accept() out of system resource\nsocket: x")
    finally:
        for name, handlers in saved.items():
            logging.getLogger(name).handlers[:] = handlers
    lines = stream.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 7
    assert records[0]["message"] == (
        "Error handling request from 127.0.0.1: ValueError: 400, message: Invalid method "
        "encountered: b'X' ^"
    )
    assert "exception" not in records[0]
    assert records[5]["message"].endswith("(95 more like it in the last 60 s not logged)")
    assert records[6]["module"] == "asyncio"
    assert records[6]["message"] == "socket.accept() out of system resource socket: x"


def test_a_recurring_event_is_counted_between_lines() -> None:
    now = [0.0]
    every = Every(60, clock=lambda: now[0])
    assert every.count() == 1  # the first: at once
    assert [every.count() for _ in range(9)] == [0] * 9
    now[0] = 60.0
    assert every.count() == 10  # then, with how many since


# -- slow clients -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
def test_slow_clients_cannot_take_the_service_down(start: Callable[..., Service]) -> None:
    """More slow connections than the process may open files: each sends a
    request's head a byte at a time. The probes are answered throughout, the
    slow connections are closed (room made for new ones, then the header
    deadline), the log stays short, and the service then serves as before."""
    header_timeout = 2.0
    service = start("--header-timeout", str(header_timeout), open_files=256)
    assert "192 connections" in service.lines[-1]  # 256 less a quarter
    host, port = service.url.removeprefix("http://").rsplit(":", 1)
    slow: dict[socket.socket, float] = {}
    for _ in range(300):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.setblocking(False)
        slow[sock] = time.monotonic()
    lived: list[float] = []
    probes = 0
    began = time.monotonic()
    # (a bound on a hang only: they are all closed by the deadline long before)
    while slow and time.monotonic() - began < header_timeout + 30:
        for sock, opened in list(slow.items()):
            if _closed(sock):
                lived.append(time.monotonic() - opened)
                del slow[sock]
                sock.close()
        with urllib.request.urlopen(service.url + "/health/live", timeout=10) as answer:
            assert answer.status == 200
        probes += 1
        time.sleep(0.2)
    for sock in slow:
        sock.close()
    assert not slow, f"{len(slow)} slow connections outlived the header deadline"
    assert probes >= 10
    # lower bounds only (a busy machine makes everything later, never earlier):
    # over 100 were closed at the deadline, not before it ...
    assert sum(1 for seconds in lived if seconds >= header_timeout - 0.1) >= 100
    # ... and over 100 before it could have come: to make room for new ones
    assert sum(1 for seconds in lived if seconds < header_timeout - 0.5) >= 100
    # the service works as before, and its log says what happened in a few lines
    run_id = service.submit(MOCKED, mock=True)
    assert service.wait(run_id)["outputs"]["final"]
    assert service.stop() == 0
    no_traceback(service)
    log = "".join(service.lines)
    assert len(service.lines) < 10, log
    assert "192 connections open (--max-connections)" in log
    assert "no whole request head within 2 s (--header-timeout)" in log


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed it (a byte sent first: a slow client's next)."""
    try:
        sock.send(b"a")
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset, or the pipe broken
        return True


class Kept(logging.Handler):
    """The records logged, kept."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.slow
@pytest.mark.subprocess
async def test_accept_failing_for_want_of_files_is_one_log_line_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """accept() out of descriptors (used up elsewhere): tried again each second
    (here: at once), one line in the log however often it fails, and the
    service accepts again once it can."""
    from aiohttp import web

    from aoe.service import connections as serve_connections

    monkeypatch.setattr(serve_connections, "ACCEPT_RETRY", 0.001)
    handler = Kept()
    logger = logging.getLogger("aoe.serve")
    logger.addHandler(handler)
    runner = web.AppRunner(web.Application())
    await runner.setup()
    assert runner.server is not None
    site = serve_connections.Site(
        runner, "127.0.0.1", 0, serve_connections.Gate(runner.server, serve_connections.Limits(8))
    )
    loop = asyncio.get_running_loop()
    failed = asyncio.Event()
    tries = 0

    async def out_of_files(sock: socket.socket) -> tuple[socket.socket, Any]:
        nonlocal tries
        tries += 1
        if tries == 200:
            failed.set()
            monkeypatch.undo()  # files again
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(loop, "sock_accept", out_of_files)
    try:
        await site.start()
        await asyncio.wait_for(failed.wait(), 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        writer.write(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 404")
        writer.close()
    finally:
        logger.removeHandler(handler)
        await runner.cleanup()
    lines = [r.getMessage() for r in handler.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("cannot accept connections: Too many open files, with 0 open (once)")


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_body_that_comes_too_slowly_is_a_408(start: Callable[..., Service]) -> None:
    service = start("--body-timeout", "1")
    host, port = service.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        asked = time.monotonic()
        sock.settimeout(0.2)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            assert time.monotonic() - asked < 30, answer  # (a hang)
            try:
                sock.sendall(b" ")  # a byte at a time: never the whole body
                answer += sock.recv(65536)
            except TimeoutError:
                pass
        took = time.monotonic() - asked
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"408"
    assert "--body-timeout" in strict(body.decode())["error"]
    assert took > 0.9  # not before its deadline (a busy machine is only later)
    assert service.health().status_code == 200
    assert service.stop() == 0
    no_traceback(service)


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_client_that_reads_nothing_of_its_answers_is_cut_off(
    start: Callable[..., Service],
) -> None:
    """Requests sent without end, answers never read: once the service has
    waited --body-timeout for the client to take its answer, it disconnects."""
    service = start("--body-timeout", "1")
    host, port = service.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    began = time.monotonic()
    cut: OSError | None = None
    with sock:
        while cut is None and time.monotonic() - began < 30:  # (a hang)
            try:
                sock.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
            except BlockingIOError:  # its buffers are full: it waits
                time.sleep(0.05)
            except (ConnectionResetError, BrokenPipeError) as e:
                cut = e
    assert cut is not None, "the connection is still open"
    assert service.health().status_code == 200
    assert service.stop() == 0
    no_traceback(service)
    assert "took nothing of its response for 1 s (--body-timeout)" in "".join(service.lines)


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        pytest.param(
            "--max-connections", "1000", "--max-connections 1000 needs more open files", id="cap"
        ),
        pytest.param("--header-timeout", "nan", "--header-timeout must be a number", id="nan"),
        pytest.param("--body-timeout", "inf", "--body-timeout must be a number", id="endless"),
    ],
)
@pytest.mark.slow
@pytest.mark.subprocess
def test_limits_that_cannot_hold_are_refused(
    env: dict[str, str], tmp_path: Path, option: str, value: str, said: str
) -> None:
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    refused = subprocess.run(
        [sys.executable, "-m", "aoe", "serve", "--port", "0", option, value],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit,
    )
    assert refused.returncode == 2, refused.stderr
    assert said in refused.stderr
    assert "Traceback" not in refused.stderr
