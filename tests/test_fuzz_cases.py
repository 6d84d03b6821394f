"""What the fuzz harness found, as named cases: each minimal reproducer (tidied
by hand where the minimiser left noise) with what aoe must do with it.

Each case runs like a fuzz case, through the ``aoe`` command line in a worker
process of the harness (tests/fuzz): a case that takes more than 5 s, or a
process that grows past 500 MB, is killed there instead of taking the test
session down. The right outcome is a clear refusal (exit 2, a message, no
traceback) or a clean result, within those bounds.

The first cases are issue 13's own findings, which the harness found too; the
rest are what it found beyond them. All are fixed. A new finding that cannot
be fixed at once gets its case here marked ``_open(why)`` (a strict xfail) and
an entry in tests/fuzz/known.py; when it is fixed, the xfail passes and so
fails the run: remove both, so that the slice in tests/test_fuzz.py holds aoe
to the fix.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fuzz.cases import Case
from tests.fuzz.pool import Slot
from tests.fuzz.worker import Outcome

pytestmark = [pytest.mark.subprocess]

_DIGITS = b"123456789" * 500
_HEADER = b"version: 1\nname: fuzz\n"
_MOCK = b"    llm: {provider: mock, model: m}\n"
_AGENT = b"agents:\n  a:\n" + _MOCK + b"    prompt: hi\n"


@dataclass(frozen=True)
class Reproducer:
    """A case, and what a user must see."""

    command: tuple[str, ...]
    files: Mapping[str, bytes]
    verdicts: tuple[str, ...] = ("user-error",)
    """"user-error" (exit 2 with a message), "ok" (exit 0) or "run-failed" (exit 1/3)."""
    says: str = ""
    """Text the output must hold (a file name and line, say)."""
    env: Mapping[str, str] = field(default_factory=dict)
    fifos: tuple[str, ...] = ()
    sparse: Mapping[str, int] = field(default_factory=dict)

    def case(self) -> Case:
        return Case(
            "workflow",
            self.command,
            self.files,
            env=self.env,
            fifos=self.fifos,
            sparse=self.sparse,
        )


def _open(why: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"issue 13, found by the fuzz harness: {why}")


def _folded_placeholders(lines: int) -> bytes:
    """A prompt of undefined placeholders folded over ``lines`` lines, as a YAML
    dumper writes a long string."""
    body = b"\n      ".join([b"{{ x }}" * 11] * lines)
    return _HEADER + b"agents:\n  a:\n" + _MOCK + b"    prompt: '" + body + b"'\n"


REPRODUCERS = [
    # -- issue 13, finding 1: schemas that reach the disk and the network ----------------
    pytest.param(
        Reproducer(
            ("run", "wf.yaml", "--mock"),
            {
                "wf.yaml": _HEADER
                + b"agents:\n  a:\n"
                + _MOCK
                + b"    prompt: hi\n    output:\n      format: json\n"
                + b"      schema: {$ref: 'file://@OUTSIDE@/credentials.json'}\n"
            },
            says="wf.yaml:9",
        ),
        id="schema-ref-to-a-file",
    ),
    pytest.param(
        Reproducer(
            ("run", "wf.yaml", "--mock"),
            {
                "wf.yaml": _HEADER
                + b"agents:\n  a:\n"
                + _MOCK
                + b"    prompt: hi\n    output:\n      format: json\n"
                + b"      schema: {$ref: 'http://@LISTENER@/schema.json'}\n"
            },
            says="wf.yaml:9",
        ),
        id="schema-ref-to-a-url",
    ),
    # -- issue 13, finding 5: internal errors -------------------------------------------
    pytest.param(
        Reproducer(
            ("validate", "wf.yaml"),
            {"wf.yaml": _HEADER + b"x-n: " + _DIGITS[:4301] + b"\n" + _AGENT},
            says="wf.yaml:3",
        ),
        id="decimal-of-4301-digits",
    ),
    pytest.param(
        Reproducer(
            ("validate", "--config", "config.yaml", "wf.yaml"),
            {
                "config.yaml": b"engine:\n  max_concurrent_workflows: " + _DIGITS[:4301],
                "wf.yaml": _HEADER + _AGENT,
            },
            says="config.yaml:2",
        ),
        id="decimal-of-4301-digits-in-config",
    ),
    pytest.param(
        Reproducer(
            ("validate", "wf.yaml"),
            {"wf.yaml": _HEADER + b"description: 0x" + b"f" * 3600 + b"\n" + _AGENT},
            says="wf.yaml:3",
        ),
        id="hex-of-3600-digits",
    ),
    pytest.param(
        Reproducer(
            ("validate", "wf.yaml"),
            {
                "wf.yaml": _HEADER
                + b"agents:\n  a:\n"
                + _MOCK
                + b"    prompt: hi\n    output:\n      format: json\n      schema:\n"
                + b"        properties: {c: 0x"
                + b"f" * 3600
                + b"}\n"
            },
            says="wf.yaml:10",
        ),
        id="hex-of-3600-digits-in-a-schema",
    ),
    pytest.param(
        Reproducer(
            ("validate", "wf.yaml"),
            {"wf.yaml": _HEADER + b'agents:\n  a:\n    prompt: hi\n    system_file: "\\0"\n'},
            says="wf.yaml:6",
        ),
        id="nul-as-system-file",
    ),
    pytest.param(
        Reproducer(
            ("run", "wf.yaml", "--mock", "--inputs-file", "inputs.yaml"),
            {
                "wf.yaml": _HEADER
                + b"inputs:\n  files: {type: list}\nagents:\n  a:\n"
                + _MOCK
                + b"    prompt: '{{ inputs.files|length }}'\n",
                "inputs.yaml": b"files:\n- path: 0x" + b"f" * 3600 + b"\n",
            },
            says="inputs.yaml",
        ),
        id="hex-of-3600-digits-in-inputs",
    ),
    # -- issue 13, finding 7: files that hang or are read whole ------------------------------
    pytest.param(
        Reproducer(
            ("validate", "wf.yaml"),
            {"wf.yaml": _HEADER + b"agents:\n  a:\n    prompt_file: fifo.md\n"},
            fifos=("fifo.md",),
            says="wf.yaml:5",
        ),
        id="fifo-as-prompt-file",
    ),
    pytest.param(
        Reproducer(("config", "show"), {}, env={"AOE_CONFIG": "fifo.yaml"}, fifos=("fifo.yaml",)),
        id="fifo-as-aoe-config",
    ),
    pytest.param(
        Reproducer(
            ("validate", "wf.yaml"),
            {"wf.yaml": _HEADER + b"agents:\n  a:\n    prompt_file: big.md\n"},
            sparse={"big.md": 3 << 30},
            says="wf.yaml:5",
        ),
        id="prompt-file-of-3-gb",
    ),
    # -- found by the harness, beyond the list ---------------------------------------
    pytest.param(
        Reproducer(("validate", "wf.yaml"), {"wf.yaml": b"version: !!float\n"}, says="wf.yaml:1"),
        id="empty-float-tag",
    ),
    pytest.param(
        Reproducer(
            ("validate", "--config", "config.yaml", "wf.yaml"),
            {"config.yaml": b"!!int\n", "wf.yaml": _HEADER + _AGENT},
            says="config.yaml:1",
        ),
        id="empty-int-tag-as-config",
    ),
    pytest.param(
        Reproducer(
            ("validate", "wf.yaml"),
            {"wf.yaml": _HEADER + b"x-commas: '" + b"," * 500_001 + b"'\n\x00\n" + _AGENT},
            says="wf.yaml:4",
        ),
        id="nul-in-a-file-of-a-million-commas",
    ),
    pytest.param(
        Reproducer(
            ("validate", "wf.yaml"),
            {
                "wf.yaml": _HEADER
                + b"agents:\n  a:\n"
                + _MOCK
                + b"    prompt: hi\n    output:\n      format: json\n"
                + b"      schema: {$schema: [x]}\n"
            },
            says="wf.yaml:9",
        ),
        id="schema-dialect-not-a-string",
    ),
    pytest.param(
        Reproducer(
            ("validate", "wf.yaml"),
            {"wf.yaml": _folded_placeholders(3000)},
            says="'x' is not defined",
        ),
        id="33000-undefined-placeholders",
    ),
    pytest.param(
        Reproducer(
            ("validate", "wf.yaml"),
            {
                "wf.yaml": _HEADER
                + b"agents:\n  a:\n"
                + _MOCK
                + b"    prompt: '{{ "
                + _DIGITS[:4301]
                + b" }}'\n"
            },
            says="wf.yaml:6",
        ),
        id="integer-of-4301-digits-in-a-template",
    ),
    pytest.param(
        Reproducer(
            ("validate", "wf.yaml"),
            {
                "wf.yaml": _HEADER
                + b"agents:\n  a:\n"
                + _MOCK
                + b"    prompt: hi\n    when: '"
                + _DIGITS[:4301]
                + b" > 1'\n"
            },
            says="wf.yaml:7",
        ),
        id="integer-of-4301-digits-in-when",
    ),
    pytest.param(
        Reproducer(
            ("config", "show"), {}, env={"OPENAI_BASE_URL": "\udcff"}, says="OPENAI_BASE_URL"
        ),
        id="base-url-that-is-not-utf-8",
    ),
    pytest.param(
        Reproducer(
            ("validate", "wf.yaml"),
            {
                "wf.yaml": _HEADER
                + b"agents:\n  a:\n"
                + _MOCK
                + b"    prompt: hi\n    when: '["
                + b",".join([b"1"] * 1_000_000)
                + b"]'\n"
            },
            verdicts=("ok", "user-error"),
        ),
        id="list-of-a-million-items-in-when",
    ),
    pytest.param(
        Reproducer(
            ("run", "wf.yaml", "--mock"),
            {
                "wf.yaml": _HEADER
                + b"inputs:\n  items: {type: list, default: [a, b]}\nagents:\n  a:\n"
                + _MOCK
                + b"    foreach: inputs.items\n    prompt: '{{ item }}'\n"
            },
            verdicts=("ok", "user-error"),
        ),
        id="input-named-like-a-dict-method",
    ),
    pytest.param(
        Reproducer(
            ("run", "wf.yaml", "--mock"),
            {"wf.yaml": _HEADER + _AGENT},
            env={"AOE_STATE_DIR": "x/" * 2000},
            says="AOE_STATE_DIR",
        ),
        id="state-dir-2000-folders-deep",
    ),
    pytest.param(
        Reproducer(
            ("run", "wf.yaml", "--mock", "-i", "topic=\udcff"),
            {
                "wf.yaml": _HEADER
                + b"inputs:\n  topic: {type: string}\nagents:\n  a:\n"
                + _MOCK
                + b"    prompt: '{{ inputs.topic }}'\n"
            },
            says="topic",
        ),
        id="input-that-is-not-utf-8",
    ),
]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slot]:
    """One fuzz worker for the module (started by its first case)."""
    slot = Slot(0, Path(tmp_path_factory.mktemp("fuzz-cases")))
    yield slot
    slot.close()


@pytest.mark.parametrize("reproducer", REPRODUCERS)
def test_a_reproducer_of_the_fuzz_harness_is_refused_clearly(
    worker: Slot, reproducer: Reproducer
) -> None:
    outcome = worker.run(reproducer.case())
    shown = outcome.stdout + outcome.stderr
    assert outcome.verdict in reproducer.verdicts, _explain(outcome)
    assert "Traceback" not in shown
    assert "internal error" not in shown
    if outcome.verdict == "user-error":
        assert outcome.exit_code == 2
        assert "error" in shown, shown
    if outcome.verdict == "ok":
        assert outcome.exit_code == 0
    assert reproducer.says in shown, shown


def _explain(outcome: Outcome) -> str:
    where = f" at {outcome.where}" if outcome.where else ""
    return (
        f"{outcome.verdict}: {outcome.error}{where} (exit {outcome.exit_code}, "
        f"{outcome.seconds:.1f} s, {outcome.rss_mb:.0f} MB)\n{outcome.stdout}{outcome.stderr}"
    )
