"""Loops of ``$ref``s on which validation would recurse without end.

A ``$ref`` may lead back to where it started (a tree's node whose children
are nodes): that is fine when the way back goes into a property or an item,
since each step then reads a smaller part of the reply. A way back through
keywords that apply to the same value (``allOf``, ``anyOf``, ``not`` ...)
alone never gets to the end of the reply; it is an error at the ``$ref``
that closes the loop.
"""

from __future__ import annotations

from collections.abc import Iterator

from aoe.format.schemadocs import Document, Where, shown
from aoe.format.schemas import shortened

Node = tuple[str | None, Where]  # a schema position: (document's key, place in it)
# a step of the search for loops: the position, the $ref taken to it (None: a
# keyword such as allOf), what comes after it
_Frame = tuple[Node, int | None, Iterator[tuple[Node, int | None]]]


def loops(documents: dict[str | None, Document]) -> Iterator[tuple[Document, Where, str]]:
    """Each loop as the document, the place of the ``$ref`` that closes it, and the
    message to report there; a depth-first search without recursion."""
    refs: dict[Node, list[tuple[Node, int]]] = {}
    for document in documents.values():
        for index, target in document.targets.items():
            start = (document.key, document.refs[index].at)
            refs.setdefault(start, []).append(((target.document.key, target.at), index))

    def onward(node: Node) -> Iterator[tuple[Node, int | None]]:
        document = documents[node[0]]
        for child in document.same_value.get(node[1], ()):
            yield (node[0], child), None
        yield from refs.get(node, ())

    state: dict[Node, bool] = {}  # False while on the path, True when done
    for start in refs:
        if start in state:
            continue
        state[start] = False
        stack: list[_Frame] = [(start, None, onward(start))]
        while stack:
            node, _, successors = stack[-1]
            step = next(successors, None)
            if step is None:
                state[node] = True
                stack.pop()
                continue
            following, via = step
            seen = state.get(following)
            if seen is None:
                state[following] = False
                stack.append((following, via, onward(following)))
            elif seen is False:
                yield _loop(documents, stack, following, node, via)


def _loop(
    documents: dict[str | None, Document],
    stack: list[_Frame],
    back_to: Node,
    last: Node,
    via: int | None,
) -> tuple[Document, Where, str]:
    first = next(i for i, frame in enumerate(stack) if frame[0] == back_to)
    loop = [frame[0] for frame in stack[first:]] + [back_to]
    # the $ref that closes the loop, else the first one in it
    if via is not None:
        at, index = last, via
    else:
        at, index = next(
            (stack[i - 1][0], entered)
            for i in range(first + 1, len(stack))
            if (entered := stack[i][1]) is not None
        )
    document = documents[at[0]]
    ref = document.refs[index]
    places = [documents[key].place(where) for key, where in loop]
    path = " -> ".join(places if len(places) <= 6 else [*places[:3], "...", *places[-2:]])
    return (
        document,
        (*ref.at, ref.keyword),
        f"the output schema's {ref.keyword} '{shown(ref.value)}' leads back to where "
        f"it started without going into a property or an item ({shortened(path)}), so "
        "checking a reply against it would never end; break the loop",
    )
