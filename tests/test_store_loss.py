"""The run store lost while a run goes on: deleted, truncated, overwritten,
replaced, or left without its ``-wal`` and ``-shm`` files.

Judged from outside: `aoe run` in a process of its own (and `aoe serve`), the
store damaged from here in the middle of the run, then the exit code, what
stderr says, and what the store at the path holds afterwards. Never a silent
success with the record gone: the run's record is written anew from its
journal, and the run says so; where it cannot be, the run stops with exit 1,
keeps its journal and its record, and says how to get them back.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from aoe.state.files import Loss, StoreFile
from aoe.state.store import Store
from tests.conftest import child_env, wait_for
from tests.test_serve import Service

AGENTS = 10


def chain(name: str = "chain", latency: float = 0.25) -> str:
    """Ten agents one after the other, each call taking ``latency`` seconds."""
    lines = [
        "version: 1",
        f"name: {name}",
        "defaults:",
        f"  llm: {{provider: mock, model: gpt-4o, params: {{latency: {latency}}}}}",
        "agents:",
    ]
    lines.append("  a0: {prompt: 'step 0'}")
    for i in range(1, AGENTS):
        reads = f"{{{{ agents.a{i - 1}.output }}}}"
        lines.append(f"  a{i}: {{prompt: 'step {i} after {reads}', depends_on: [a{i - 1}]}}")
    return "\n".join(lines) + "\n"


def aoe(state: Path, cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aoe", *args],
        cwd=cwd,
        env=child_env(AOE_STATE_DIR=str(state)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(state: Path, process: subprocess.Popen[str]) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    return process.returncode, stderr


def journaled(state: Path, count: int = 1) -> bool:
    """The run's journal holds ``count`` finished agents: it is well under way."""
    folder = state / "journal"
    lines = b"".join(f.read_bytes() for f in folder.glob("*.journal")) if folder.exists() else b""
    return lines.count(b'["AgentFinished"') >= count


def first_run(tmp_path: Path, state: Path) -> str:
    """A run recorded before: the other runs' records."""
    path = tmp_path / "before.yaml"
    path.write_text(chain("before", latency=0.0))
    code, stderr = finished(state, aoe(state, tmp_path, "run", str(path), "-q"))
    assert code == 0, stderr
    with closing(Store(state / "state.db")) as store:
        [run] = store.runs()
    return str(run.run_id)


def other_store(folder: Path) -> tuple[Path, str]:
    """An aoe store of its own, with one run in it, in one file."""
    folder.mkdir()
    with closing(Store(folder / "state.db")) as store:
        store.create_run(
            "other-run", workflow_name="other", workflow_path="/other.yaml",
            workflow_sha256="0" * 64, workflow_text="", workflow_files={}, inputs={},
            settings={}, budget=None, agents={"x": "d"},
        )  # fmt: skip
        store.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return folder / "state.db", "other-run"


def not_aoe(folder: Path) -> Path:
    folder.mkdir()
    path = folder / "data.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.commit()
    return path


# -- what is done to the store, and what is left of the run before ----------------------


def delete(db: Path, tmp_path: Path) -> None:
    db.unlink()


def delete_all(db: Path, tmp_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink()


def truncate(db: Path, tmp_path: Path) -> None:
    os.truncate(db, 0)


def cut_short(db: Path, tmp_path: Path) -> None:
    assert db.stat().st_size > 8192  # the run before was copied into it
    os.truncate(db, 8192)


def cut_short_as_it_ends(db: Path, tmp_path: Path) -> None:
    """Cut while the last agent is called: only the look before the last
    checkpoint can see it (and must wait to be sure it is not a checkpoint)."""
    wait_for(lambda: journaled(db.parent, AGENTS - 1))
    cut_short(db, tmp_path)


def overwrite(db: Path, tmp_path: Path) -> None:
    with open(db, "r+b") as f:
        f.write(b"\0" * 100)


def delete_log(db: Path, tmp_path: Path) -> None:
    Path(f"{db}-wal").unlink()
    Path(f"{db}-shm").unlink()


def replace_by_a_store(db: Path, tmp_path: Path) -> None:
    other, _ = other_store(tmp_path / "other")
    os.replace(other, db)


Damage = Callable[[Path, Path], None]


@pytest.mark.parametrize(
    ("damage", "said", "before_kept", "aside"),
    [
        pytest.param(delete, "was deleted", False, False, id="deleted"),
        pytest.param(delete_all, "was deleted", False, False, id="deleted-with-wal-and-shm"),
        pytest.param(truncate, "was truncated or overwritten", False, True, id="truncated"),
        pytest.param(cut_short, "was truncated or overwritten", False, True, id="cut-short"),
        pytest.param(
            cut_short_as_it_ends,
            "was truncated or overwritten",
            False,
            True,
            id="cut-short-as-the-run-ends",
        ),
        pytest.param(overwrite, "was truncated or overwritten", False, True, id="overwritten"),
        pytest.param(
            delete_log, "was left without its -wal or -shm file", True, True, id="wal-deleted"
        ),
        pytest.param(
            replace_by_a_store, "was replaced by another file", False, False, id="replaced"
        ),
    ],
)
@pytest.mark.slow
@pytest.mark.subprocess
def test_a_store_lost_mid_run_gets_the_runs_record_back_and_says_so(
    tmp_path: Path, damage: Damage, said: str, before_kept: bool, aside: bool
) -> None:
    state = tmp_path / "state"
    db = state / "state.db"
    before = first_run(tmp_path, state)
    path = tmp_path / "chain.yaml"
    path.write_text(chain())
    results = tmp_path / "results.json"
    process = aoe(state, tmp_path, "run", str(path), "-q", "-o", str(results))
    wait_for(lambda: journaled(state))
    damage(db, tmp_path)
    code, stderr = finished(state, process)

    # the run went on and completed, and told what happened to its store
    assert code == 0, stderr
    assert f"the run store {db} {said} while run" in stderr
    assert "record" in stderr
    document = json.loads(results.read_text())
    run_id = document["run_id"]
    # its record is whole in the store now at the path: as the run produced it
    with closing(Store(db)) as store:
        run = store.run(run_id)
        assert run.status == "completed"
        agents = {a.agent_id: a for a in store.agents(run_id)}
        assert {a: agent.state for a, agent in agents.items()} == dict.fromkeys(
            document["agents"], "completed"
        )
        assert {a: agent.output for a, agent in agents.items()} == {
            a: agent["output"] for a, agent in document["agents"].items()
        }
        attempts = store.attempts(run_id)
        assert sorted(a.agent_id for a in attempts) == sorted(agents)  # each once
        assert run.cost == pytest.approx(document["cost_usd"])
        kinds = [e["type"] for e in store.events(run_id)]
        assert kinds.count("RunStarted") == kinds.count("RunFinished") == 1
        assert kinds.count("AgentFinished") == AGENTS
        others = {r.run_id for r in store.runs()} - {run_id}
    if before_kept:  # a whole copy of the store took its place
        assert others == {before}
    elif damage is replace_by_a_store:  # the runs of the file that took its place
        assert others == {"other-run"}
    else:
        assert others == set()
        assert "the other runs' records" in stderr
    # nothing left to recover; the damaged file is kept, not deleted
    assert not list((state / "journal").glob("*"))
    kept = [p for p in state.glob("state.db.*") if not p.name.endswith(("-wal", "-shm"))]
    assert bool(kept) == aside
    if aside:
        assert f"is kept as {kept[0]}" in stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_store_replaced_by_a_file_that_is_no_store_stops_the_run_and_keeps_its_record(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    db = state / "state.db"
    first_run(tmp_path, state)
    path = tmp_path / "chain.yaml"
    path.write_text(chain())
    process = aoe(state, tmp_path, "run", str(path), "-q")
    wait_for(lambda: journaled(state, 2))
    os.replace(not_aoe(tmp_path / "elsewhere"), db)
    code, stderr = finished(state, process)

    assert code == 1, stderr
    assert f"the run store {db} was replaced by another file while run" in stderr
    assert "could not be written anew" in stderr
    assert "not an aoe store" in stderr
    [journal] = (state / "journal").glob("*.journal")
    [record] = (state / "journal").glob("*.run.json")
    assert str(journal) in stderr
    assert f"aoe runs import {record}" in stderr
    assert record.stat().st_mode & 0o777 == 0o600  # like the journal: the owner's only
    run_id = record.name.split("@")[0]
    assert f"aoe resume {run_id}" in stderr
    # the run stopped: fewer agents than the workflow's were called
    with closing(sqlite3.connect(db)) as foreign:  # the file that took its place is untouched
        assert foreign.execute("SELECT name FROM sqlite_master").fetchall() == [("notes",)]

    # a later command keeps the journal while the store has no record of the run
    db.unlink()
    listed = aoe(state, tmp_path, "runs", "list")
    assert finished(state, listed)[0] == 0
    assert journal.exists()
    # as the message says: the record imported, then the run resumed
    imported = aoe(state, tmp_path, "runs", "import", str(record))
    assert finished(state, imported)[0] == 0
    resumed = aoe(state, tmp_path, "resume", run_id, "-q")
    code, stderr = finished(state, resumed)
    assert code == 0, stderr
    with closing(Store(db)) as store:
        assert store.run(run_id).status == "completed"
        attempts = store.attempts(run_id)
        answered = [a.agent_id for a in attempts if a.status == "ok"]
        assert sorted(answered) == sorted(f"a{i}" for i in range(AGENTS))  # each once
        sessions = {a.session for a in attempts if a.status == "ok"}
        assert sessions == {1, 2}  # what the first session paid for was kept
    assert not journal.exists()
    assert not record.exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_resumed_run_gets_back_what_its_earlier_session_recorded(tmp_path: Path) -> None:
    """The record written anew holds every session: what the first one paid for
    is not called again, and counts in the run's totals."""
    state = tmp_path / "state"
    db = state / "state.db"
    path = tmp_path / "chain.yaml"
    path.write_text(chain())
    process = aoe(state, tmp_path, "run", str(path), "-q")
    wait_for(lambda: journaled(state, 3))
    process.send_signal(signal.SIGINT)
    code, stderr = finished(state, process)
    assert code == 130, stderr
    with closing(Store(db)) as store:
        [run] = store.runs()
        first = {a.agent_id for a in store.agents(run.run_id) if a.state == "completed"}
    assert 3 <= len(first) < AGENTS
    resumed = aoe(state, tmp_path, "resume", run.run_id, "-q")
    wait_for(lambda: journaled(state, len(first) + 1))  # restored, then one called anew
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink()
    code, stderr = finished(state, resumed)

    assert code == 0, stderr
    assert "was deleted while run" in stderr
    with closing(Store(db)) as store:
        record = store.run(run.run_id)
        assert (record.status, record.sessions) == ("completed", 2)
        agents = {a.agent_id: a for a in store.agents(run.run_id)}
        assert {a.state for a in agents.values()} == {"completed"}
        assert {a for a, agent in agents.items() if agent.session == 1} == first
        attempts = store.attempts(run.run_id)
        answered = sorted(a.agent_id for a in attempts if a.status == "ok")
        assert answered == sorted(agents)  # each once, over both sessions
        assert record.cost == pytest.approx(sum(a.cost for a in attempts))
        assert {e["session"] for e in store.events(run.run_id, types=["RunStarted"])} == {
            1,
            2,
        }


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_store_deleted_between_runs_is_made_anew(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first_run(tmp_path, state)
    for file in state.glob("state.db*"):
        file.unlink()
    path = tmp_path / "chain.yaml"
    path.write_text(chain(latency=0.0))
    code, stderr = finished(state, aoe(state, tmp_path, "run", str(path), "-q"))
    assert code == 0, stderr
    assert stderr == ""
    with closing(Store(state / "state.db")) as store:
        assert [r.workflow_name for r in store.runs()] == ["chain"]


# -- aoe serve: one store open for as long as it runs ---------------------------------


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Service]:
    env = child_env(AOE_STATE_DIR=str(tmp_path / "state"))
    service = Service(env, tmp_path)
    yield service
    if service.process.poll() is None:
        service.process.kill()
        service.process.wait(timeout=30)
    service.close()


def served(service: Service, run_id: str) -> dict[str, Any] | None:
    """The run as ``aoe serve`` answers for it; None while it has no record of it."""
    response = service.http.get(f"/api/v1/runs/{run_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    return run


def completed(service: Service, run_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def done() -> bool:
        run = served(service, run_id)
        found[:] = [] if run is None else [run]
        return run is not None and run["status"] not in ("running", "queued")

    wait_for(done, timeout=60)
    return found[0]


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        pytest.param(delete_all, "was deleted", id="deleted"),
        pytest.param(truncate, "was truncated or overwritten", id="truncated"),
    ],
)
@pytest.mark.slow
@pytest.mark.subprocess
def test_aoe_serve_keeps_recording_its_runs_when_its_store_is_lost(
    serve: Service, tmp_path: Path, damage: Damage, said: str
) -> None:
    db = tmp_path / "state" / "state.db"
    before = serve.submit(chain("before", latency=0.0), mock=True)
    assert completed(serve, before)["status"] == "completed"
    wait_for(lambda: not journaled(tmp_path / "state"))  # its journal gone: all in the store
    run_id = serve.submit(chain(), mock=True)
    wait_for(lambda: journaled(tmp_path / "state"))
    damage(db, tmp_path)
    run = completed(serve, run_id)

    assert run["status"] == "completed"
    assert [a["state"] for a in run["agents"].values()] == ["completed"] * AGENTS
    assert all(a["output"] for a in run["agents"].values())
    listed = serve.http.get("/api/v1/runs").json()["runs"]
    assert [r["run_id"] for r in listed] == [run_id]  # the run before went with the file
    assert served(serve, before) is None
    # said in the service's log; and the runs after it are recorded as ever
    wait_for(lambda: any(f"the run store {db} {said}" in line for line in serve.lines))
    after = serve.submit(chain("after", latency=0.0), mock=True)
    assert completed(serve, after)["status"] == "completed"
    with closing(Store(db)) as store:
        assert {r.run_id for r in store.runs()} == {run_id, after}
    assert serve.stop() == 0
    assert not any("Traceback" in line for line in serve.lines)


# -- the look at the file, alone ------------------------------------------------------


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[tuple[Store, StoreFile]]:
    store = Store(tmp_path / "state.db")
    store.create_run(
        "r", workflow_name="w", workflow_path="/w.yaml", workflow_sha256="0" * 64,
        workflow_text="x" * 20000, workflow_files={}, inputs={}, settings={}, budget=None,
        agents={},
    )  # fmt: skip
    store.connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
    yield store, StoreFile.of(store.path)
    store.close()


@pytest.mark.parametrize(
    ("damage", "loss"),
    [
        pytest.param(lambda db: None, None, id="untouched"),
        pytest.param(lambda db: db.unlink(), Loss.DELETED, id="deleted"),
        pytest.param(
            lambda db: os.replace(not_aoe(db.parent / "x"), db), Loss.REPLACED, id="replaced"
        ),
        pytest.param(lambda db: os.truncate(db, 0), Loss.DAMAGED, id="truncated"),
        pytest.param(lambda db: os.truncate(db, 50), Loss.DAMAGED, id="header-cut"),
        pytest.param(lambda db: Path(f"{db}-wal").unlink(), Loss.LOG, id="wal-deleted"),
        pytest.param(lambda db: Path(f"{db}-shm").unlink(), Loss.LOG, id="shm-deleted"),
        pytest.param(lambda db: db.write_bytes(b"x" * 8192), Loss.DAMAGED, id="overwritten"),
    ],
)
def test_the_file_says_what_happened_to_it(
    opened: tuple[Store, StoreFile], damage: Callable[[Path], None], loss: Loss | None
) -> None:
    store, file = opened
    damage(store.path)
    assert file.lost() is loss


def test_a_file_short_of_its_pages_is_cut_only_once_it_stays_so(
    opened: tuple[Store, StoreFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint writes the first page (with the new page count) before the
    pages after it: a short file that is still growing is not taken for a cut one."""
    store, file = opened
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    size = store.path.stat().st_size
    assert size > 8192
    os.truncate(store.path, 4096)
    assert file.lost() is None  # short: perhaps a checkpoint under way
    clock[0] += StoreFile.SHORT / 2
    with open(store.path, "ab") as f:  # it grows: still under way
        f.write(b"\0" * 4096)
    assert file.lost() is None
    clock[0] += StoreFile.SHORT - 0.01
    assert file.lost() is None
    clock[0] += 0.02  # unchanged for SHORT seconds: cut
    assert file.lost() is Loss.DAMAGED
    os.truncate(store.path, size)  # whole again (the checkpoint ended)
    os.utime(store.path)
    assert file.lost() is None
