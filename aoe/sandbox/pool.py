"""The engine's side of the sandbox: template work that could take too long or too
much memory goes to a child process, with a deadline.

A workflow is code from whoever wrote it, and ``aoe serve`` takes workflows
from other people. Jinja's sandbox keeps a template from reaching files or
Python internals, but not from looping for a minute or building a
three-gigabyte string, and a C-level operation holds the GIL, so a thread
would not help: on the engine's event loop, one such template freezes every
run and the health probes. So the engine does only work whose cost is the
size of the values it reads itself:

- placeholder-only templates (text and ``{{ dotted.name }}``,
  :func:`aoe.format.rendering.inline`) and ``when``/``foreach`` expressions that are
  a name, or a name compared with a literal;
- JSON replies of up to :data:`INLINE_REPLY` characters checked against a
  schema of only plain keywords (no ``$ref``, ``pattern`` or
  ``uniqueItems``) with at most :data:`INLINE_SCHEMA` values.

Everything else goes to a :mod:`aoe.sandbox.child` process, which caps its
own memory and is killed when it does not answer in time. Each run reaches
the sandbox through its own :class:`Lane`, one request at a time, so one run
can hold at most one of the processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aoe.errors import OutputInvalid, RunError, SchemaUnusable
from aoe.format.rendering import evaluate, inline, inline_expression, render
from aoe.format.schemas import plainly_valid
from aoe.sandbox.child import HEADER, MAX_MESSAGE, frame
from aoe.types import plain

INLINE_REPLY = 8192
"""Characters of a JSON reply the engine checks in its own process."""
INLINE_SCHEMA = 200
"""Values of a plain schema (keywords, properties, enum entries) checked there."""
DEADLINE = 2.0
"""Seconds a template or an expression may take in the sandbox."""
CHECK_DEADLINE = 10.0
"""Seconds checking one reply against its schema may take there."""
MEMORY = 100 << 20
"""Bytes a sandbox process may grow by beyond what it uses after start-up."""
PROCESSES = 2
"""Sandbox processes at most; started when first needed."""
_BOOT = "import sys; sys.path.insert(0, sys.argv.pop()); from aoe.sandbox.child import main; main()"
_START_TIMEOUT = 60.0  # seconds a new process may take to be ready (slow CI machines)
_SHARED_PART = 2048  # bytes of JSON from which a part of the context is sent once
_UTF8 = ("utf-8", "surrogatepass")  # half characters pass both ways, as JSON does
_LARGEST_PART = 4 << 20  # bytes of JSON of a part a process keeps (its cache: 32 MiB at 4x)
LANE_BUDGET = 60.0
"""Seconds of sandbox time one run may use in all: a run of hostile templates
cannot hold a process for longer (there are two for every run of the engine)."""


class SandboxFailed(RunError):
    """What the sandbox could not do, in aoe's words (never a traceback): the agent
    whose template or check it was fails (a reply it could not check is an
    :class:`OutputInvalid` instead). Another try would fail alike."""

    retryable = False


class _Child:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.known: set[str] = set()  # keys of the shared parts it keeps
        assert process.stdin is not None
        assert process.stdout is not None
        self.stdin = process.stdin
        self.stdout = process.stdout

    async def ask(self, payload: bytes) -> bytes:
        self.stdin.write(frame(payload))
        await self.stdin.drain()
        (size,) = HEADER.unpack(await self.stdout.readexactly(HEADER.size))
        if size > MAX_MESSAGE:
            raise ConnectionError("an answer over the size limit")
        return await self.stdout.readexactly(size)

    def kill(self) -> None:
        """Kill the process now; :meth:`reap` then collects it."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.stdin.close()

    async def reap(self) -> None:
        """Wait for the killed process, so its pipes and transport close."""
        await self.process.wait()


class Sandbox:
    """Child processes for template work, started when first needed; :meth:`lane`
    gives each run its way in."""

    def __init__(
        self,
        *,
        processes: int = PROCESSES,
        deadline: float = DEADLINE,
        check_deadline: float = CHECK_DEADLINE,
        memory: int = MEMORY,
    ) -> None:
        self.processes = processes
        self.deadline = deadline
        self.check_deadline = check_deadline
        self.memory = memory
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()
        self._reaping: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self.started = 0  # processes started so far (tests and the health of a service)
        self.sent = 0  # bytes of requests sent to them

    def lane(self) -> Lane:
        return Lane(self)

    async def call(
        self,
        request: Mapping[str, Any],
        deadline: float,
        what: str = "a template",
        shared: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send ``request`` to a sandbox process and return its answer; a process
        that is late or dies is killed, and the next request starts a new one.

        ``shared`` holds parts of the context by key, as JSON, that stay the same
        for a run (its inputs, its finished agents' outputs): a process is sent
        each once and keeps it (``request["cached"]`` says where each goes), so a
        foreach over a thousand items does not send the inputs a thousand times."""
        try:
            head = json.dumps(request, ensure_ascii=False, default=_jsonable)
        except (TypeError, ValueError) as e:
            raise SandboxFailed(
                f"the values it reads cannot be passed to the sandbox: {e}"
            ) from None
        shared = shared or {}
        async with self._slots_here():
            child = await self._take()
            self._busy.add(child)
            try:
                decoded = await self._exchange(child, head, shared, deadline)
            except BaseException as e:
                # late, dead, or cancelled mid-request (its answer would come to no one)
                self._discard(child)
                failure = _failure(e, deadline, what)
                if failure is not None:
                    raise failure from None
                raise
            if decoded.get("retire"):  # its last answer (it ran out of memory or stack)
                self._discard(child)
            else:
                self._busy.discard(child)
                self._idle.append(child)
        return decoded

    async def _take(self) -> _Child:
        """An idle process that is still alive, else a new one."""
        child = self._idle.pop() if self._idle else None
        while child is not None and child.process.returncode is not None:
            self._discard(child)  # died while idle (the OOM killer, a signal)
            child = self._idle.pop() if self._idle else None
        if child is None:
            child = await self._start()
        return child

    async def _exchange(
        self, child: _Child, head: str, shared: Mapping[str, str], deadline: float
    ) -> dict[str, Any]:
        """One request and its answer, the shared parts the process lacks sent along."""
        for _ in range(2):  # again if the process had let a part go meanwhile
            payload = _with_parts(head, shared, child.known)
            if len(payload) > MAX_MESSAGE:
                return {"error": f"the values it reads are over {MAX_MESSAGE >> 20} MB"}
            self.sent += len(payload)
            answer = await asyncio.wait_for(child.ask(payload), deadline)
            decoded: dict[str, Any] = json.loads(answer.decode(*_UTF8))
            missing = decoded.get("missing")
            if not missing:
                child.known.update(shared)
                return decoded
            child.known.difference_update(missing)
        # sent again, and let go again: more than it can keep at once
        return {"error": "the values it reads are more than the sandbox keeps"}

    def forget(self, prefix: str) -> None:
        """A finished run's parts: no process need be told it lacks them."""
        for child in (*self._idle, *self._busy):
            child.known = {key for key in child.known if not key.startswith(prefix)}

    def _discard(self, child: _Child) -> None:
        """Kill a process that cannot be trusted to answer the next request; it is
        collected in the background (and by :meth:`aclose`)."""
        self._busy.discard(child)
        child.kill()
        reaping = asyncio.ensure_future(child.reap())
        self._reaping.add(reaping)
        reaping.add_done_callback(self._reaping.discard)

    def _slots_here(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # processes talk to one loop: a new loop starts anew
            for child in [*self._idle, *self._busy]:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
            self._idle.clear()
            self._busy.clear()
            self._reaping.clear()
            self._loop = loop
            self._slots = asyncio.Semaphore(self.processes)
        assert self._slots is not None
        return self._slots

    async def _start(self) -> _Child:
        root = str(Path(__file__).resolve().parent.parent.parent)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-c",
                _BOOT,
                str(self.memory),
                str(os.getpid()),
                root,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env={},  # no API keys, nor anything else, where hostile templates run
                start_new_session=True,  # the terminal's Ctrl-C is the engine's to handle
            )
        except OSError as e:
            raise SandboxFailed(f"cannot start the sandbox process: {e.strerror}") from None
        child = _Child(process)
        try:
            await asyncio.wait_for(child.stdout.readexactly(1), _START_TIMEOUT)
        except BaseException as e:
            self._discard(child)
            if isinstance(e, asyncio.CancelledError):
                raise
            raise SandboxFailed("the sandbox process did not start") from None
        self.started += 1
        return child

    async def aclose(self) -> None:
        """Stop the processes (each ends at the end of its input)."""
        children = [*self._idle, *self._busy]
        self._idle.clear()
        self._busy.clear()
        if self._loop is not asyncio.get_running_loop():
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
            return
        for child in children:
            child.stdin.close()
        for child in children:
            try:
                await asyncio.wait_for(child.process.wait(), 2.0)
            except TimeoutError:
                child.kill()
                await child.reap()
        if self._reaping:
            await asyncio.gather(*self._reaping, return_exceptions=True)


class Lane:
    """One run's way into the sandbox: its requests go one at a time, so that one
    run (a hostile one, say) can hold at most one sandbox process."""

    def __init__(self, sandbox: Sandbox, budget: float = LANE_BUDGET) -> None:
        self.sandbox = sandbox
        self.allowed = budget
        self.budget = budget  # seconds of the sandbox's time this run may still use
        self._lock = asyncio.Lock()
        self._name = uuid.uuid4().hex
        self._parts: dict[str, str] = {}  # this run's parts that do not change, as JSON

    def close(self) -> None:
        """The run is over: its parts go."""
        self._parts.clear()
        self.sandbox.forget(self._name)

    async def _call(
        self, request: dict[str, Any], deadline: float, what: str, shared: dict[str, str]
    ) -> dict[str, Any]:
        """One request in this run's turn, within what is left of its budget of time."""
        async with self._lock:
            if self.budget <= 0:
                raise SandboxFailed(
                    f"the run has used its {self.allowed:g} s of template and check time "
                    "in the sandbox; make its templates and schemas do less"
                )
            began = time.monotonic()
            try:
                return await self.sandbox.call(
                    request, min(deadline, self.budget), what, shared=shared
                )
            finally:
                self.budget -= time.monotonic() - began

    async def _ask(self, op: str, text: str, context: Mapping[str, Any]) -> Any:
        request, shared = self._split(context)
        answer = await self._call(
            {"op": op, "text": text, **request}, self.sandbox.deadline, "a template", shared
        )
        if "ok" not in answer:
            raise SandboxFailed(str(answer.get("error", "no answer")))
        return answer["ok"]

    def _split(self, context: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """The context, without its large parts that stay the same for the run (the
        inputs, each dependency's entry): those go by key, as JSON made once."""
        rest = dict(context)
        cached: dict[str, str] = {}
        shared: dict[str, str] = {}

        def part(place: str, value: Any) -> bool:
            key = f"{self._name}/{place}"
            text = self._parts.get(key)
            if text is None:
                try:
                    text = json.dumps(value, ensure_ascii=False, default=_jsonable)
                except (TypeError, ValueError):
                    return False  # sent with the rest, which says what is wrong
                self._parts[key] = text
            if not _SHARED_PART <= len(text) <= _LARGEST_PART:
                return False  # small: sent with the request; huge: no process could keep it
            cached[place], shared[key] = key, text
            return True

        if "inputs" in rest and part("inputs", rest["inputs"]):
            del rest["inputs"]
        agents = rest.get("agents")
        if isinstance(agents, Mapping):
            rest["agents"] = {n: v for n, v in agents.items() if not part(f"agents/{n}", v)}
        return {"context": rest, "cached": cached}, shared

    async def render(self, text: str, context: Mapping[str, Any]) -> str:
        """A template rendered with ``context``."""
        if inline(text):
            return render(text, context)
        return str(await self._ask("render", text, context))

    async def when(self, text: str, context: Mapping[str, Any]) -> bool:
        """Whether a ``when`` expression holds."""
        if inline_expression(text):
            return bool(evaluate(text, context))
        return bool(await self._ask("when", text, context))

    async def foreach(self, text: str, context: Mapping[str, Any]) -> list[Any]:
        """The items of a ``foreach`` expression; raises :class:`SandboxFailed` when
        it is not a list."""
        if inline_expression(text):
            value = evaluate(text, context)
            if not isinstance(value, list | tuple):
                kind = "nothing (undefined)" if value is None else type(value).__name__
                raise SandboxFailed(f"it gave {kind}, not a list")
            return list(value)
        items: list[Any] = await self._ask("foreach", text, context)
        return items

    async def check(self, text: str, schema: Mapping[str, Any] | None, *, here: bool) -> Any:
        """The JSON value of a reply checked against ``schema``; raises
        :class:`OutputInvalid`. ``here``: the schema may be checked in this
        process (:func:`checks_here`) when the reply is short."""
        from aoe.format.workflow import OutputConfig
        from aoe.policy.outputs import parse_output

        if here and len(text) <= INLINE_REPLY:
            return parse_output(text, OutputConfig("json", schema))
        try:
            answer = await self._call(
                {"op": "check", "text": text, "schema": schema},
                self.sandbox.check_deadline,
                "checking a reply",
                {},
            )
        except SandboxFailed as e:
            raise OutputInvalid(f"the reply could not be checked: {e.message}") from None
        if "invalid" in answer:
            raise OutputInvalid(str(answer["invalid"]))
        if "unusable" in answer:
            raise SchemaUnusable(str(answer["unusable"]))
        if "ok" not in answer:
            raise OutputInvalid(f"the reply could not be checked: {answer.get('error')}")
        return answer["ok"]


def _with_parts(head: str, shared: Mapping[str, str], known: set[str]) -> bytes:
    """The request's JSON with the shared parts the process does not keep yet."""
    sending = [(key, part) for key, part in shared.items() if key not in known]
    if not sending:
        return head.encode(*_UTF8)
    define = ", ".join(f"{json.dumps(key)}: {part}" for key, part in sending)
    sizes = ", ".join(f"{json.dumps(key)}: {len(part)}" for key, part in sending)
    return f'{head[:-1]}, "define": {{{define}}}, "sizes": {{{sizes}}}}}'.encode(*_UTF8)


def _jsonable(value: object) -> object:
    """What JSON cannot hold as it is: the workflow's read-only mappings and sets as
    objects and lists, anything else (a date from YAML) as its text."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)


def checks_here(schema: Mapping[str, Any] | None) -> bool:
    """Whether replies may be checked against ``schema`` in the engine's process:
    plain keywords only (no ``$ref``: references can multiply the work; no
    ``pattern``: a regular expression can take exponential time; no
    ``uniqueItems``: quadratic) and at most :data:`INLINE_SCHEMA` values."""
    if schema is None:
        return True
    if not plainly_valid(plain(schema)):
        return False
    count = 0
    stack: list[Any] = [schema]
    while stack:
        value = stack.pop()
        count += 1
        if count > INLINE_SCHEMA:
            return False
        if isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return True


def _failure(error: BaseException, deadline: float, what: str) -> SandboxFailed | None:
    """What to tell the user of a request that failed in the process's hands; ``None``
    for anything else (a cancellation), which goes on as it is."""
    if isinstance(error, TimeoutError):
        return SandboxFailed(
            f"it took longer than {deadline:g} s, the most {what} may take; "
            + (
                "make it do less (smaller loops, less data)"
                if what == "a template"
                else "simplify the output schema (patterns, references)"
            )
        )
    if isinstance(error, asyncio.IncompleteReadError | ConnectionError | OSError):
        return SandboxFailed("the sandbox process ended while working on it (too much memory?)")
    return None
