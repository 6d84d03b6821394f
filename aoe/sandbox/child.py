"""The sandbox process: renders templates and checks replies for :mod:`aoe.sandbox.pool`.

Started with ``python -I -c`` by the engine's pool, it reads requests from its
standard input and answers on its standard output, each a JSON document
behind a four-byte length. Before its first request it caps its own address
space (``RLIMIT_AS``) at what it uses after start-up plus the budget it was
given, so a template that builds a huge value fails here with a
``MemoryError`` instead of growing the engine. Time is bounded by the engine,
which kills this process when an answer is late; it also dies with its parent
(``PR_SET_PDEATHSIG``) and ignores the terminal's Ctrl-C, which is the
engine's to handle.

Requests: ``{"op": "render" | "when" | "foreach", "text": ..., "context": {...}}``
and ``{"op": "check", "text": reply, "schema": {...} | null}``. Answers:
``{"ok": value}``, ``{"invalid": message}`` (a reply that does not fit its
schema), ``{"unusable": message}`` (a schema that cannot be applied) or
``{"error": message}``; messages are short, and never a traceback. An answer with
``"retire": true`` is this process's last (it ran out of memory or stack).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
from typing import IO, Any

from aoe.format.bounded import ByteLRU

HEADER = struct.Struct(">I")
MAX_MESSAGE = 200_000_000  # bytes of one request or answer: far above any legitimate one
MAX_ANSWER = 4 << 20  # bytes of a value sent back (the engine decodes it on its event loop)
_SHORT = 400  # characters of an error message passed on


def read_message(stream: IO[bytes]) -> bytes | None:
    """One framed message, or None at the end of the stream."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_MESSAGE:
        return None
    body = stream.read(size)
    return body if len(body) == size else None


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def main() -> None:
    memory, parent = int(sys.argv[1]), int(sys.argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    from aoe.format.environment import environment

    environment()  # Jinja imported and the environment built before the cap is set
    _cap_memory(memory)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(b"R")  # ready
    stdout.flush()
    while True:
        body = read_message(stdin)
        if body is None:
            return
        retire = False  # after running out of memory or stack, a fresh process is safer
        try:
            request = json.loads(body.decode("utf-8", "surrogatepass"))
            answer = _answer(request)
            data = json.dumps(answer, ensure_ascii=False).encode("utf-8", "surrogatepass")
            if len(data) > MAX_ANSWER and request.get("op") != "render":
                data = _error(
                    f"its value is {len(data):,} bytes of JSON; at most {MAX_ANSWER:,} "
                    "(a foreach list, or a reply's JSON)"
                )
        except MemoryError:
            data = _error(f"it needed more than the {memory >> 20} MiB of memory it may use", True)
            retire = True
        except RecursionError:
            data = _error("it is nested too deeply (macros or loops calling themselves?)", True)
            retire = True
        except (TypeError, ValueError) as e:  # an answer that is not JSON (a foreach item)
            data = _error(f"its value cannot be passed on as JSON: {_short(e)}")
        stdout.write(frame(data))
        stdout.flush()
        if retire:
            return  # the engine reads the answer, then sees this process end


# Parts of runs' contexts that stay the same (inputs, finished agents' entries),
# kept by key; weighed at four times their JSON.
_PARTS: ByteLRU[str, Any] = ByteLRU(32 << 20, lambda key, entry: entry[1])


def _context(request: dict[str, Any]) -> dict[str, Any] | list[str]:
    """The request's context with its shared parts put back; or the keys of those
    this process no longer keeps (the engine then sends them again)."""
    sizes = request.get("sizes", {})
    for key, value in request.get("define", {}).items():
        _PARTS.put(key, (value, 4 * int(sizes.get(key, 0)) + 64))
    context: dict[str, Any] = request.get("context", {})
    missing = []
    for place, key in request.get("cached", {}).items():
        entry = _PARTS.get(key)
        if entry is None:
            missing.append(key)
        elif place == "inputs":
            context["inputs"] = entry[0]
        else:  # agents/NAME
            context.setdefault("agents", {})[place.partition("/")[2]] = entry[0]
    return missing or context


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    from aoe.errors import OutputInvalid, SchemaUnusable
    from aoe.format.rendering import MAX_FOREACH_ITEMS, evaluate, render, too_many_items

    op = request["op"]
    if op != "check":
        context = _context(request)
        if isinstance(context, list):
            return {"missing": context}
        request["context"] = context
    try:
        if op == "render":
            return {"ok": render(request["text"], request["context"])}
        if op == "when":
            return {"ok": bool(evaluate(request["text"], request["context"]))}
        if op == "foreach":
            value = evaluate(request["text"], request["context"])
            if not isinstance(value, list | tuple):
                kind = "nothing (undefined)" if value is None else type(value).__name__
                return {"error": f"it gave {kind}, not a list"}
            if len(value) > MAX_FOREACH_ITEMS:
                return {"error": too_many_items(len(value))}
            return {"ok": list(value)}
        if op == "check":
            return {"ok": _check(request["text"], request["schema"])}
    except OutputInvalid as e:
        return {"invalid": e.message}
    except SchemaUnusable as e:
        return {"unusable": e.message}
    except (MemoryError, RecursionError):
        raise
    except Exception as e:
        return {"error": _short(e)}
    return {"error": f"unknown request {op!r}"}


def _check(text: str, schema: dict[str, Any] | None) -> Any:
    from aoe.format.workflow import OutputConfig
    from aoe.policy.outputs import parse_output

    return parse_output(text, OutputConfig("json", schema))


def _short(error: BaseException) -> str:
    message = str(error) or type(error).__name__
    return message if len(message) <= _SHORT else message[: _SHORT - 3] + "..."


def _error(message: str, retire: bool = False) -> bytes:
    """An error answer; ``retire``: this process ends after sending it."""
    return json.dumps({"error": message, "retire": retire}).encode("utf-8")


def _cap_memory(budget: int) -> None:
    """Address space: what this process has now, plus ``budget`` bytes."""
    import resource

    try:
        with open("/proc/self/status", encoding="ascii") as status:
            size = next(
                int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:")
            )
    except (OSError, StopIteration, ValueError):
        return  # not Linux: the engine's deadline still bounds it
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + budget
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _die_with_parent(parent: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent is already gone
        sys.exit(0)


if __name__ == "__main__":  # pragma: no cover - started by the pool with -c
    main()
