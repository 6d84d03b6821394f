"""A run's record as one JSON document: ``aoe runs export`` and ``aoe runs import``.

An export holds every row of every table of one run, as stored, so that it can
be restored in another store (another host's, or one that replaced a lost
file) exactly; the work queue's records in Redis carry one too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aoe.errors import StateUnusable
from aoe.state.schema import SCHEMA_VERSION, run_rows, transaction, translated, writing

if TYPE_CHECKING:
    from aoe.state.store import Store


def export_run(store: Store, run_id: str) -> dict[str, Any]:
    """A self-contained JSON backup of one run: every row of every table."""
    with translated(store.path):
        return _export(store, store.run(run_id).run_id)


def _export(store: Store, run_id: str) -> dict[str, Any]:
    document: dict[str, Any] = {"format": "aoe-run", "schema": SCHEMA_VERSION}
    for table, (names, rows) in run_rows(store.connection, run_id).items():
        document[table] = [dict(zip(names, row, strict=True)) for row in rows]
    return document


def import_run(store: Store, document: Mapping[str, Any], *, replace: bool = False) -> str:
    """Restore an export; refuses to overwrite a run already here unless ``replace``."""
    tables = ("runs", "agents", "attempts", "events")
    if (
        document.get("format") != "aoe-run"
        or not isinstance(document.get("schema"), int)
        or not isinstance(document.get("runs"), list)
        or len(document["runs"]) != 1
        or not all(
            isinstance(document.get(t, []), list)
            and all(isinstance(row, dict) for row in document.get(t, []))
            for t in tables
        )
    ):
        raise StateUnusable("not an aoe run export (made by `aoe runs export RUN_ID`)")
    if document["schema"] > SCHEMA_VERSION:
        raise StateUnusable(
            f"this export was made by a newer aoe (schema {document['schema']}): upgrade aoe"
        )
    run_id = str(document["runs"][0].get("run_id"))
    with translated(store.path):  # (the export's own faults first, in its words)
        try:
            _insert(store, document, run_id, _columns(store), replace)
        except (sqlite3.IntegrityError, sqlite3.InterfaceError, ValueError, TypeError) as e:
            raise StateUnusable(
                f"the export of run {run_id} is incomplete or damaged ({e}); nothing was imported"
            ) from None
    return run_id


def _insert(
    store: Store,
    document: Mapping[str, Any],
    run_id: str,
    columns: dict[str, set[str]],
    replace: bool,
) -> None:
    with writing(store.path), transaction(store.connection) as db:
        exists = db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if exists and not replace:
            raise StateUnusable(
                f"run {run_id} is already in {store.path}: use --replace to overwrite it"
            )
        db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
        for table in ("runs", "agents", "attempts", "events"):
            for row in document.get(table, []):
                if row.get("run_id") != run_id:
                    raise StateUnusable(f"the export mixes runs ({row.get('run_id')})")
                row = dict(row)
                if table == "runs" and row.get("status") == "running":
                    row["pid"] = None  # its process was on another machine: resumable
                keys = [k for k in row if k in columns[table]]
                db.execute(
                    f"INSERT INTO {table} ({','.join(keys)}) VALUES ({','.join('?' * len(keys))})",
                    [row[k] for k in keys],
                )


def _columns(store: Store) -> dict[str, set[str]]:
    return {
        table: {r[1] for r in store.connection.execute(f"PRAGMA table_info({table})")}
        for table in ("runs", "agents", "attempts", "events")
    }
