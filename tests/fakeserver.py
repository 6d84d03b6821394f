"""A fake LLM provider: a real HTTP server on 127.0.0.1 for the official SDKs.

It speaks the OpenAI chat-completions API (plain and streamed) and the
Anthropic messages API, answers with configurable text or JSON and usage, and
can, request by request, answer 429 with ``retry-after``, 500, 503, 529, answer
slowly, or drop the connection. It records every request with its arrival time
and counts how many were in flight at once, so tests assert on what a provider
would really have received.

Usage::

    with FakeProvider() as fake:
        fake.script(Fail(429, retry_after=1), Reply(text="hi"))   # the next requests, in order
        fake.respond = lambda request: Reply(json={"ok": True})    # then this, for the rest
        ... point OPENAI_BASE_URL at fake.openai_url, ANTHROPIC_BASE_URL at fake.anthropic_url
        fake.received  # every request
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """A successful answer. Without ``text`` or ``json``, an echo of the prompt."""

    text: str | None = None
    json: Any = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    delay: float = 0.0
    finish_reason: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    unfinished: bool = False  # a stream that stops after its text: no end (the server failed)
    stream_error: str | None = None
    """Streamed: after the text, an error event with this message instead of the
    end (OpenAI: a ``data: {"error": …}`` chunk; Anthropic: ``event: error``,
    ``overloaded_error``, as its API sends when overloaded mid-reply)."""
    stream_garbage: str | None = None
    """Streamed: this ``data:`` line sent as it is before the text's pieces."""
    cache_read_tokens: int = 0
    """Anthropic: input tokens read from its prompt cache (billed, counted apart)."""


@dataclass(frozen=True)
class Fail:
    """An HTTP error in the vendor's own error format."""

    status: int
    message: str = "fake failure"
    retry_after: float | None = None
    retry_after_ms: int | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class Drop:
    """Close the connection without an answer (after ``delay`` seconds)."""

    delay: float = 0.0


Behaviour = Reply | Fail | Drop


@dataclass(frozen=True)
class Received:
    """One request as the server got it."""

    api: str  # "openai" or "anthropic"
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    arrived: float  # time.monotonic()
    finished: float | None = None  # when the answer started to go out
    wall: float = 0.0  # time.time() at arrival: comparable with Redis's clock

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def prompt(self) -> str:
        """The last user message's text."""
        for message in reversed(self.body.get("messages", [])):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):
                    return "".join(part.get("text", "") for part in content)
                return str(content)
        return ""

    @property
    def system(self) -> str | None:
        if self.api == "anthropic":
            system = self.body.get("system")
            return system if isinstance(system, str) else None
        for message in self.body.get("messages", []):
            if message.get("role") == "system":
                return str(message.get("content"))
        return None


@dataclass(frozen=True)
class Quirks:
    """How a real server departs from the vendors' own, as measured on
    llama-cpp-python's server and the LiteLLM proxy (issue 15). The default is
    this fake's first behaviour: every reply whole, whatever limit was sent."""

    honours: frozenset[str] = frozenset()
    """The token-limit parameters it keeps (``max_tokens``,
    ``max_completion_tokens``): a reply longer than the limit is cut there,
    finish reason ``length``. Empty: it ignores them all."""
    piece: int = 16
    """Characters per streamed piece (4: a token a piece, as llama.cpp streams)."""
    stream_usage: bool = True
    """A streamed reply ends with its usage (OpenAI: the usage chunk; Anthropic:
    the usage in ``message_start`` and ``message_delta``)."""
    json_schema: bool = True
    """``response_format: {type: json_schema}`` is served; else HTTP 500."""
    gap: float = 0.0
    """Seconds between streamed pieces (a slow but live server)."""
    v1_only: bool = False
    """Only paths under ``/v1/`` are served (else 404 ``{"detail": "Not Found"}``)."""
    deployments: frozenset[str] | None = None
    """Azure OpenAI's: chat completions only at
    ``/openai/deployments/NAME/chat/completions?api-version=…`` for these names
    (else 404 ``DeploymentNotFound``, or without an api-version 404 ``Resource
    not found``); None: no Azure routes."""


LLAMA = Quirks(
    honours=frozenset({"max_tokens"}), piece=4, stream_usage=False, json_schema=False, v1_only=True
)
"""llama-cpp-python's server: reads ``max_tokens`` only, streams a token a piece
without usage, and answers ``json_schema`` with HTTP 500."""
UNLIMITED = Quirks(piece=4, stream_usage=False)
"""A server that keeps no limit at all and reports no streamed usage."""


class FakeProvider:
    """The server. Thread-safe; start it once per test module, :meth:`reset` per test."""

    def __init__(self) -> None:
        self.quirks = Quirks()
        self._lock = threading.Lock()
        self._script: deque[Behaviour] = deque()
        self.respond: Callable[[Received], Behaviour] | None = None
        self.received: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._generation = 0  # one more at each reset
        self._ids = itertools.count(1)
        handler = _handler(self)
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_url(self) -> str:
        return self.url

    def script(self, *behaviours: Behaviour) -> None:
        """Behaviours for the next requests, one each, in order of arrival."""
        with self._lock:
            self._script.extend(behaviours)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.respond = None
            self.quirks = Quirks()
            self.received = []
            self.in_flight = 0
            self.max_in_flight = 0
            self._generation += 1

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- used by the handler threads ---------------------------------------------------
    def _arrive(self, received: Received) -> tuple[tuple[int, int], Behaviour]:
        with self._lock:
            self.received.append(received)
            ticket = (self._generation, len(self.received) - 1)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self._script:
                return ticket, self._script.popleft()
            respond = self.respond
        return ticket, respond(received) if respond is not None else Reply()

    def _answer(self, ticket: tuple[int, int]) -> None:
        """The answer starts to go out: stamped, and no longer in flight, before the
        client can see it and send its next request. A request from before the last
        :meth:`reset` (an earlier test's, answered late) counts for nothing now."""
        generation, index = ticket
        with self._lock:
            if generation != self._generation:
                return
            self.in_flight -= 1
            done = self.received[index]
            self.received[index] = replace(done, finished=time.monotonic())

    def next_id(self) -> int:
        return next(self._ids)


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (a cancelled call, a timeout) is expected here."""

    # the default backlog of 5 drops connections when twenty calls open at once,
    # and the kernel retries them a second later: the server would shape the test
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def _tokens(text: str) -> int:
    return max((len(text) + 3) // 4, 1)


def _limit(body: dict[str, Any], honoured: frozenset[str]) -> int | None:
    """The token limit the server keeps, of those the request sent."""
    limits = [body[name] for name in honoured if isinstance(body.get(name), int)]
    return min(limits) if limits else None


def _wants_json_schema(body: dict[str, Any]) -> bool:
    form = body.get("response_format")
    return isinstance(form, dict) and form.get("type") == "json_schema"


_AZURE_NO_DEPLOYMENT = {
    "error": {
        "code": "DeploymentNotFound",
        "message": "The API deployment for this resource does not exist. If you created "
        "the deployment within the last 5 minutes, please wait a moment and try again.",
    }
}


def _azure_refusal(quirks: Quirks, route: str, query: str) -> dict[str, Any] | None:
    """Azure OpenAI's 404 for a request it would refuse (None: it is served)."""
    if quirks.deployments is None:
        return None
    found = re.fullmatch(r"/openai/deployments/([^/]+)/chat/completions", route)
    if found is None or "api-version=" not in query:
        return {"error": {"code": "404", "message": "Resource not found"}}
    return None if found.group(1) in quirks.deployments else _AZURE_NO_DEPLOYMENT


def _handler(fake: FakeProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            raw = self.rfile.read(length) if length else b"{}"
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                body = {}
            route, _, query = self.path.partition("?")
            if route.rstrip("/").endswith("/chat/completions"):
                api = "openai"
            elif route.rstrip("/").endswith("/messages"):
                api = "anthropic"
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            if fake.quirks.v1_only and not route.startswith("/v1/"):
                self._send(404, {"detail": "Not Found"})  # llama-cpp-python's, as it is
                return
            refusal = _azure_refusal(fake.quirks, route, query)
            headers = {name.lower(): value for name, value in self.headers.items()}
            received = Received(api, self.path, headers, body, time.monotonic(), wall=time.time())
            ticket, behaviour = fake._arrive(received)
            if behaviour.delay:
                time.sleep(behaviour.delay)
            fake._answer(ticket)
            if refusal is not None:  # (counted as received: it was)
                self._send(404, refusal)
            elif isinstance(behaviour, Drop):
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            elif isinstance(behaviour, Fail):
                self._fail(api, behaviour)
            elif not fake.quirks.json_schema and _wants_json_schema(body):
                self._fail(api, Fail(500, "response_format json_schema is not supported"))
            elif body.get("stream"):
                self._stream(api, received, behaviour)
            else:
                self._reply(api, received, behaviour)

        # -- answers -----------------------------------------------------------------------
        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _fail(self, api: str, failure: Fail) -> None:
            headers = {}
            if failure.retry_after is not None:
                headers["retry-after"] = f"{failure.retry_after:g}"
            if failure.retry_after_ms is not None:
                headers["retry-after-ms"] = str(failure.retry_after_ms)
            if api == "openai":
                payload: dict[str, Any] = {
                    "error": {
                        "message": failure.message,
                        "type": "fake_error",
                        "code": str(failure.status),
                    }
                }
            else:
                kind = {
                    429: "rate_limit_error",
                    529: "overloaded_error",
                    401: "authentication_error",
                    404: "not_found_error",
                    400: "invalid_request_error",
                }.get(failure.status, "api_error")
                payload = {"type": "error", "error": {"type": kind, "message": failure.message}}
            self._send(failure.status, payload, headers)

        def _content(self, received: Received, reply: Reply) -> tuple[str, int, int, bool]:
            if reply.text is not None:
                text = reply.text
            elif reply.json is not None:
                text = json.dumps(reply.json)
            else:
                text = f"fake answer to: {received.prompt[:200]}"
            prompt = "".join(json.dumps(m) for m in received.body.get("messages", []))
            prompt += str(received.body.get("system", ""))
            inputs = reply.input_tokens if reply.input_tokens is not None else _tokens(prompt)
            outputs = reply.output_tokens if reply.output_tokens is not None else _tokens(text)
            limit = _limit(received.body, fake.quirks.honours)
            if limit is not None and outputs > limit:  # cut where the server stops
                return text[: 4 * limit], inputs, limit, True
            return text, inputs, outputs, False

        def _reply(self, api: str, received: Received, reply: Reply) -> None:
            text, inputs, outputs, cut = self._content(received, reply)
            if api == "openai":
                payload: dict[str, Any] = {
                    "id": f"chatcmpl-fake{fake.next_id()}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": received.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "length" if cut else reply.finish_reason or "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": inputs,
                        "completion_tokens": outputs,
                        "total_tokens": inputs + outputs,
                    },
                }
            else:
                payload = {
                    "id": f"msg_fake{fake.next_id()}",
                    "type": "message",
                    "role": "assistant",
                    "model": received.model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "max_tokens" if cut else reply.finish_reason or "end_turn",
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": inputs,
                        "output_tokens": outputs,
                        "cache_read_input_tokens": reply.cache_read_tokens,
                    },
                }
            self._send(200, payload, reply.headers)

        def _stream(self, api: str, received: Received, reply: Reply) -> None:
            text, inputs, outputs, cut = self._content(received, reply)
            quirks = fake.quirks
            self.close_connection = True
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("connection", "close")
            self.end_headers()
            size = quirks.piece
            pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
            if reply.stream_garbage is not None:  # (Anthropic's SDK skips unnamed events)
                name = "" if api == "openai" else "event: content_block_delta\n"
                self.wfile.write(f"{name}data: {reply.stream_garbage}\n\n".encode())
            if api == "openai":
                ident = f"chatcmpl-fake{fake.next_id()}"
                for piece in pieces:
                    time.sleep(quirks.gap)
                    self._event(
                        None,
                        {
                            "id": ident,
                            "object": "chat.completion.chunk",
                            "created": int(time.time()),
                            "model": received.model,
                            "choices": [
                                {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                            ],
                        },
                    )
                if reply.unfinished:
                    self.wfile.flush()
                    return
                if reply.stream_error is not None:
                    self._event(None, {"error": {"message": reply.stream_error}})
                    return
                last: dict[str, Any] = {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": received.model,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {},
                            "finish_reason": "length" if cut else reply.finish_reason or "stop",
                        }
                    ],
                }
                if quirks.stream_usage:
                    last["usage"] = {
                        "prompt_tokens": inputs,
                        "completion_tokens": outputs,
                        "total_tokens": inputs + outputs,
                    }
                self._event(None, last)
                self.wfile.write(b"data: [DONE]\n\n")
            else:
                ident = f"msg_fake{fake.next_id()}"
                self._event(
                    "message_start",
                    {
                        "type": "message_start",
                        "message": {
                            "id": ident,
                            "type": "message",
                            "role": "assistant",
                            "model": received.model,
                            "content": [],
                            "stop_reason": None,
                            "stop_sequence": None,
                            "usage": {
                                "input_tokens": inputs,
                                "output_tokens": 1,
                                "cache_read_input_tokens": reply.cache_read_tokens,
                            }
                            if quirks.stream_usage
                            else None,
                        },
                    },
                )
                self._event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
                for piece in pieces:
                    time.sleep(quirks.gap)
                    self._event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                    )
                if reply.unfinished:
                    self.wfile.flush()
                    return
                if reply.stream_error is not None:
                    error = {"type": "overloaded_error", "message": reply.stream_error}
                    self._event("error", {"type": "error", "error": error})
                    return
                self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
                delta: dict[str, Any] = {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": "max_tokens" if cut else reply.finish_reason or "end_turn",
                        "stop_sequence": None,
                    },
                }
                if quirks.stream_usage:
                    delta["usage"] = {"output_tokens": outputs}
                self._event("message_delta", delta)
                self._event("message_stop", {"type": "message_stop"})
            self.wfile.flush()

        def _event(self, name: str | None, data: Any) -> None:
            if name is not None:
                self.wfile.write(f"event: {name}\n".encode())
            self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

    return Handler
