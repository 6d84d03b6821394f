"""The run store's file: its schema and migrations, connections, transactions.

The store is SQLite in WAL mode under ``.aoe/`` (``AOE_STATE_DIR`` moves it).
Several ``aoe`` processes may share it: WAL lets readers and one writer work
at once, every write is a short ``BEGIN IMMEDIATE`` transaction
(:func:`transaction`), and a busy store is waited for rather than failed.

The schema has a version (``PRAGMA user_version``) and migrations; a store from
a newer aoe is refused rather than guessed at. Any failure to open the store is
a :class:`StateUnusable` naming the file and what to do; nothing here ever
deletes or rewrites a store it cannot read. sqlite3's errors become aoe's here:
:func:`writing` for a write that fails (a full disk), :func:`translated` for
any other use of a store that turned out unusable.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from aoe.errors import StateUnusable, StateWriteFailed
from aoe.format.files import make_folders

if TYPE_CHECKING:
    from aoe.config.settings import Settings

log = logging.getLogger("aoe.store")

SCHEMA_VERSION = 3
FILE_NAME = "state.db"
BUSY_TIMEOUT = 30.0  # seconds another process may hold the write lock

# Each entry moves the schema from version i to i + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        workflow_name TEXT NOT NULL,
        workflow_path TEXT NOT NULL,
        workflow_sha256 TEXT NOT NULL,
        workflow_text TEXT NOT NULL,
        workflow_files TEXT NOT NULL,          -- JSON: prompt and schema files, by path
        inputs TEXT NOT NULL,                  -- JSON
        settings TEXT NOT NULL,                -- JSON: budget, max_parallel, mock, no_cache
        status TEXT NOT NULL,                  -- running, or the run's final status
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL,
        duration REAL,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cost REAL NOT NULL DEFAULT 0,
        budget REAL,
        outputs TEXT,                          -- JSON
        output_errors TEXT,                    -- JSON
        sessions INTEGER NOT NULL DEFAULT 1,   -- 1, and one more for each resume
        host TEXT,
        pid INTEGER,
        process TEXT                           -- the process's boot and start time
    );
    CREATE INDEX runs_by_time ON runs (created_at);
    CREATE INDEX runs_by_workflow ON runs (workflow_path, created_at);

    CREATE TABLE agents (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        agent_id TEXT NOT NULL,
        definition TEXT NOT NULL,              -- hash of what decides its output
        state TEXT NOT NULL,
        output TEXT,                           -- JSON
        error TEXT,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cost REAL NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        duration REAL,
        started_at REAL,
        finished_at REAL,
        provider TEXT,                         -- who answered
        model TEXT,
        session INTEGER NOT NULL DEFAULT 1,    -- the session that ended it
        since INTEGER NOT NULL DEFAULT 1,      -- its definition and inputs hold from this session
        PRIMARY KEY (run_id, agent_id)
    ) WITHOUT ROWID;

    CREATE TABLE attempts (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        agent_id TEXT NOT NULL,
        session INTEGER NOT NULL,
        item INTEGER NOT NULL,                 -- -1 for an agent without foreach
        attempt INTEGER NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        fingerprint TEXT,
        status TEXT NOT NULL,                  -- started, ok, error, cancelled, cached
        error TEXT,
        error_kind TEXT,
        reserved REAL NOT NULL DEFAULT 0,
        cost REAL NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        waited REAL NOT NULL DEFAULT 0,
        output TEXT,                           -- JSON: a foreach item's output
        duration REAL,
        started_at REAL NOT NULL,
        finished_at REAL,
        PRIMARY KEY (run_id, agent_id, session, item, attempt)
    ) WITHOUT ROWID;

    CREATE TABLE events (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        session INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        at REAL NOT NULL,
        type TEXT NOT NULL,
        agent_id TEXT,
        data TEXT NOT NULL,                    -- JSON
        PRIMARY KEY (run_id, session, seq)
    ) WITHOUT ROWID;

    CREATE TABLE cache (
        key TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        response TEXT NOT NULL,                -- JSON: text, usage, model, finish_reason
        size INTEGER NOT NULL,
        created_at REAL NOT NULL,
        hits INTEGER NOT NULL DEFAULT 0,
        last_hit REAL
    ) WITHOUT ROWID;
    """,
    # 2: how far the run's journal (aoe.recorder) is written into the tables
    """
    ALTER TABLE runs ADD COLUMN journal_session INTEGER;
    ALTER TABLE runs ADD COLUMN journal_offset INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: what the results document and the report say that the rows did not keep:
    # each agent's model as written, place and dependencies; how each reply ended
    """
    ALTER TABLE agents ADD COLUMN llm_provider TEXT;   -- as the workflow names them
    ALTER TABLE agents ADD COLUMN llm_model TEXT;
    ALTER TABLE agents ADD COLUMN position INTEGER;    -- its place in the workflow
    ALTER TABLE agents ADD COLUMN needs TEXT;          -- JSON: the agents it depends on
    ALTER TABLE attempts ADD COLUMN finish_reason TEXT;
    ALTER TABLE attempts ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN usage_estimated INTEGER NOT NULL DEFAULT 0;
    """,
)

_FIX = "move it aside (or set AOE_STATE_DIR to another folder) and run again"


def store_path(settings: Settings) -> Path:
    """The store's file: ``engine.state_dir`` (``AOE_STATE_DIR``) / state.db."""
    return Path(settings.config.engine.state_dir) / FILE_NAME


JOURNALS = "journal"  # the folder of the runs' journals, beside the store's file


def journal_path(path: Path, run_id: str, session: int) -> Path:
    """The journal of one session of a run, for the store at ``path``."""
    return path.parent / JOURNALS / f"{quote(run_id, safe='')}@{session}.journal"


def journal_of(file: Path) -> tuple[str, int] | None:
    """The run id and session of a journal file; None if it is not one."""
    name, _, session = file.name.removesuffix(".journal").rpartition("@")
    if not name or not session.isdigit() or not file.name.endswith(".journal"):
        return None
    return unquote(name), int(session)


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection with aoe's pragmas; autocommit, so transactions are explicit."""
    connection = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    connection.execute("PRAGMA foreign_keys = ON")
    connection.execute(f"PRAGMA synchronous = {synchronous}")
    return connection


def _use_wal(connection: sqlite3.Connection) -> None:
    """Put the store in WAL mode. Switching a new file is the one step SQLite
    does not wait on a busy store for: when several processes create it at once
    (workers started together on a fresh folder) the losers are told "locked"
    at once, so they wait here, as for any other write, and look again."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    pause = 0.005
    while True:
        try:
            mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as e:
            if not ("locked" in str(e) or "busy" in str(e)) or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
            continue
        if mode != "wal":
            raise sqlite3.OperationalError(f"journal mode is {mode}, not wal")
        return


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """A write to the store that fails (a full disk, an I/O error) is the user's
    to fix, not a crash: say what happened and that nothing else was lost."""
    try:
        yield
    except sqlite3.OperationalError as e:  # full, read-only, I/O error, locked too long
        raise StateWriteFailed(
            f"the run store {path} could not be written ({said(e)}); nothing was changed. "
            "Free disk space (or set AOE_STATE_DIR to another folder) and run again"
        ) from None


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE``: take the write lock first, so two processes never
    deadlock upgrading read locks; committed, or rolled back on any error."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        if connection.in_transaction:  # some errors (a full disk) end it themselves
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def dumps(value: Any) -> str:
    """Compact JSON; anything else as its str(). One encoder for every call:
    ``json.dumps`` with options builds a new one each time (~3 µs)."""
    return _ENCODER.encode(value)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def open_store(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection to the store at ``path``, created (or brought to this aoe's
    schema) if need be; :class:`StateUnusable` if it cannot be used."""
    try:
        make_folders(path.parent)
    except OSError as e:
        raise StateUnusable(
            f"cannot create the run store's folder {path.parent}: {e.strerror or e}; "
            "set AOE_STATE_DIR to a folder you can write"
        ) from None
    try:
        connection = connect(path, synchronous)
        try:
            _use_wal(connection)
            _migrate(path, connection)
        except BaseException:
            connection.close()
            raise
    except sqlite3.DatabaseError as e:
        raise StateUnusable(_unusable(path, e)) from None
    return connection


def said(error: sqlite3.Error) -> str:
    """SQLite's message with its extended code's name where it says more (which of
    the six kinds of "attempt to write a readonly database" it was)."""
    text = str(error)
    name = getattr(error, "sqlite_errorname", None)
    if isinstance(name, str) and name.count("_") > 1:  # SQLITE_READONLY_DBMOVED, not SQLITE_FULL
        return f"{text}; {name}"
    return text


def _unusable(path: Path, error: sqlite3.Error) -> str:
    text = said(error)
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return f"the run store {path} is damaged or not an aoe store ({text}): {_FIX}"
    if "unable to open" in text or "readonly" in text or "disk I/O" in text:
        return (
            f"cannot open the run store {path} ({text}): check that the folder "
            "and the file are readable and writable, or set AOE_STATE_DIR elsewhere"
        )
    return f"cannot use the run store {path} ({text}): {_FIX}"


def _migrate(path: Path, connection: sqlite3.Connection) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        connection.execute("SELECT 1 FROM runs LIMIT 1")  # reads a page: finds damage
        return
    if version > SCHEMA_VERSION:
        raise StateUnusable(
            f"the run store {path} was written by a newer aoe (schema {version}; "
            f"this aoe knows up to {SCHEMA_VERSION}): upgrade aoe, or set AOE_STATE_DIR "
            "to another folder"
        )
    with transaction(connection):
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version == 0 and connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StateUnusable(f"{path} is an SQLite file but not an aoe store: {_FIX}")
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextmanager
def translated(path: Path) -> Iterator[None]:
    """sqlite3's errors raised inside, as aoe's; aoe's own pass. A store that
    broke after it was opened (damaged, not a database) is :class:`StateUnusable`,
    to be moved aside; a store busy past the wait, or an I/O error of the moment,
    is :class:`StateWriteFailed` (exit 1): moving it aside would hide every run
    record for what may pass."""
    try:
        yield
    except sqlite3.OperationalError as e:  # locked or busy too long, I/O, full
        raise StateWriteFailed(
            f"the run store {path} could not be used just now ({said(e)}); nothing else was "
            "lost: run again, and if it persists check what else holds the store "
            "(lsof) and the disk"
        ) from None
    except sqlite3.Error as e:
        raise StateUnusable(
            f"the run store could not be read or written ({said(e)}): {_FIX}"
        ) from None


_TABLES = ("runs", "agents", "attempts", "events")


Rows = dict[str, tuple[list[str], list[tuple[Any, ...]]]]  # by table: the columns, the rows


def run_rows(connection: sqlite3.Connection, run_id: str) -> Rows:
    """Every row of one run, by table, as stored."""
    rows: Rows = {}
    for table in _TABLES:
        cursor = connection.execute(f"SELECT * FROM {table} WHERE run_id = ?", (run_id,))
        rows[table] = ([c[0] for c in cursor.description], cursor.fetchall())
    return rows


def put_rows(connection: sqlite3.Connection, run_id: str, rows: Rows) -> None:
    """Replace the run's record by ``rows`` (from :func:`run_rows`), exactly as
    they were, its process included; within the caller's transaction."""
    connection.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
    for table in _TABLES:
        names, values = rows[table]
        connection.executemany(
            f"INSERT INTO {table} ({','.join(names)}) VALUES ({','.join('?' * len(names))})",
            values,
        )
