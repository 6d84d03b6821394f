"""A bounded slice of the fuzz harness (tests/fuzz), as ``make fuzz`` runs it
at length: the first cases of a fixed seed, in worker processes, with the
harness's limits (5 s a case, 500 MB a process).

No case may end in an internal error, a hang or a process over the limit,
except the findings listed in tests/fuzz/known.py, which other branches of
issue 13 are fixing (each has its reproducer, a strict xfail, in
tests/test_fuzz_cases.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fuzz.campaign import Campaign
from tests.fuzz.cases import MOCK_WORKFLOW, Case, _loopback_only, make_case
from tests.fuzz.known import KNOWN_OPEN, known
from tests.fuzz.minimise import Budget, ddmin
from tests.fuzz.pool import Slot
from tests.test_fuzz_cases import REPRODUCERS

SEED = 13
CASES = int(os.environ.get("AOE_FUZZ_CASES", "300"))
"""About 8 s on two cores; the same cases every time. AOE_FUZZ_CASES=800 (say)
runs a longer slice; ``make fuzz`` runs the harness for minutes."""
SECONDS = 55.0
"""The slice stops here on a slow machine, whatever it has run."""


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_slice_of_the_fuzz_harness_finds_nothing_new() -> None:
    with Campaign(SEED, workers=2) as campaign:
        report = campaign.fuzz(cases=CASES, seconds=SECONDS)
    print(report.summary())  # shown with -s, and under a failure
    assert report.cases >= min(CASES, 50), report.summary()
    new = [f for f in report.findings.values() if known(f.case, f.outcome) is None]
    assert not new, "\n".join(
        f"{f.outcome.verdict}: {f.outcome.error} at {f.outcome.where or '?'} "
        f"(case {f.case.label}: python -m tests.fuzz --case {f.case.label})"
        for f in new
    )
    # what the cases saw: the checks really ran (refusals and clean runs both)
    assert report.verdicts["user-error"] > CASES // 4, report.summary()
    assert report.verdicts["ok"] + report.verdicts["run-failed"] > 0, report.summary()


# -- the harness itself: what it calls a finding ------------------------------------------------

_SLOW = b"""\
version: 1
name: slow
agents:
  a:
    llm: {provider: mock, model: m, params: {latency: 30}}
    prompt: hi
"""


@pytest.fixture(scope="module")
def slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slot]:
    """A worker with a 2 s limit, so that a hang costs this module little."""
    slot = Slot(0, Path(tmp_path_factory.mktemp("fuzz-self")), hang_seconds=2.0)
    yield slot
    slot.close()


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_case_over_the_limit_is_a_hang_and_the_next_case_gets_a_new_worker(slot: Slot) -> None:
    outcome = slot.run(Case("workflow", ("run", "wf.yaml", "--mock", "-q"), {"wf.yaml": _SLOW}))
    assert outcome.verdict == "hang"
    assert outcome.error == "no answer within 2 s (waiting)"
    assert "run_until_done" in outcome.detail  # the stacks of the worker when it was killed
    started = slot.started
    after = slot.run(Case("workflow", ("validate", "wf.yaml"), {"wf.yaml": MOCK_WORKFLOW.encode()}))
    assert after.verdict == "ok"
    assert slot.started == started + 1


@pytest.mark.subprocess
def test_a_connection_to_the_listener_is_a_finding(slot: Slot) -> None:
    command = ("run", "wf.yaml", "--mock", "-q", "--pushgateway", f"http://{slot.address}")
    outcome = slot.run(Case("workflow", command, {"wf.yaml": MOCK_WORKFLOW.encode()}))
    assert outcome.verdict == "network"
    assert any("PUT /metrics" in event for event in outcome.events), outcome.events


@pytest.mark.subprocess
def test_a_file_opened_outside_the_case_folder_is_a_finding(slot: Slot) -> None:
    command = ("run", "wf.yaml", "--mock", "--inputs-file", "../outside/credentials.json")
    outcome = slot.run(Case("workflow", command, {"wf.yaml": MOCK_WORKFLOW.encode()}))
    assert outcome.verdict == "file-read"
    # the engine config and the environment are trusted: the same from a config case is not
    trusted = slot.run(Case("config", command, {"wf.yaml": MOCK_WORKFLOW.encode()}))
    assert trusted.verdict == "user-error"


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_process_over_the_memory_limit_is_a_finding(tmp_path: Path) -> None:
    tiny = Slot(0, tmp_path, memory_mb=1.0)
    try:
        outcome = tiny.run(Case("workflow", ("validate", "wf.yaml"), {"wf.yaml": b"version: 1"}))
    finally:
        tiny.close()
    assert outcome.verdict == "memory"


def test_a_case_is_the_same_for_the_same_seed_and_index() -> None:
    assert make_case(7, 123) == make_case(7, 123)
    assert make_case(7, 123) != make_case(8, 123)


def test_a_mutation_that_names_another_host_gets_the_listener_instead() -> None:
    case = Case("workflow", ("validate", "wf.yaml"), {"wf.yaml": b"$ref: http://example.com:80/x"})
    made = _loopback_only(case)
    assert made.files["wf.yaml"] == b"$ref: http://@LISTENER@/x"
    kept = {"wf.yaml": b"a: http://127.0.0.1:9/x\nb: file:///etc/passwd"}
    assert _loopback_only(replace(case, files=kept)).files == kept


def test_ddmin_keeps_only_what_the_failure_needs() -> None:
    kept = ddmin(list(range(40)), lambda items: 3 in items and 37 in items, Budget(10.0))
    assert kept == [3, 37]


def test_every_known_finding_has_a_named_reproducer() -> None:
    named = {param.id for param in REPRODUCERS}
    assert {k.test for k in KNOWN_OPEN} <= named
