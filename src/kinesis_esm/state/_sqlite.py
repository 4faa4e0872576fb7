"""Checkpoints in a SQLite file: the embedded default.

WAL mode with synchronous=NORMAL: a committed write survives a kill -9 of the process (it is in
the OS's page cache), and a commit costs tens of microseconds, so writes run inline on the event
loop instead of paying a thread hop per batch.

A shard's tumbling-window state is a nullable column of its checkpoint row, so the two are one
write. Files from before windows existed get the column when opened (``ALTER TABLE``).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

__all__ = ["SQLiteCheckpointStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    mapping_uuid TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    updated_at REAL NOT NULL,
    window_state BLOB,
    PRIMARY KEY (mapping_uuid, shard_id)
);
CREATE TABLE IF NOT EXISTS mapping_state (
    mapping_uuid TEXT PRIMARY KEY,
    started_at REAL NOT NULL
);
"""


class SQLiteCheckpointStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(checkpoints)")}
        if "window_state" not in columns:  # a file written before tumbling windows
            self._db.execute("ALTER TABLE checkpoints ADD COLUMN window_state BLOB")

    @property
    def connection(self) -> sqlite3.Connection:
        """The open connection, for other stores that share the file (mappings, leases)."""
        return self._db

    async def get_checkpoints(self, mapping_uuid: str) -> dict[str, str]:
        rows = self._db.execute(
            "SELECT shard_id, checkpoint FROM checkpoints WHERE mapping_uuid = ?", (mapping_uuid,)
        ).fetchall()
        return {shard: checkpoint for shard, checkpoint in rows}

    async def set_checkpoint(self, mapping_uuid: str, shard_id: str, checkpoint: str) -> None:
        self._db.execute(
            "INSERT INTO checkpoints (mapping_uuid, shard_id, checkpoint, updated_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (mapping_uuid, shard_id) DO UPDATE SET "
            "checkpoint = excluded.checkpoint, updated_at = excluded.updated_at, "
            "window_state = NULL",
            (mapping_uuid, shard_id, checkpoint, time.time()),
        )

    async def set_window_checkpoint(
        self, mapping_uuid: str, shard_id: str, checkpoint: str, window_state: bytes
    ) -> None:
        self._db.execute(
            "INSERT INTO checkpoints (mapping_uuid, shard_id, checkpoint, updated_at, "
            "window_state) VALUES (?, ?, ?, ?, ?) ON CONFLICT (mapping_uuid, shard_id) DO UPDATE "
            "SET checkpoint = excluded.checkpoint, updated_at = excluded.updated_at, "
            "window_state = excluded.window_state",
            (mapping_uuid, shard_id, checkpoint, time.time(), bytes(window_state)),
        )

    async def get_window_state(self, mapping_uuid: str, shard_id: str) -> bytes | None:
        row = self._db.execute(
            "SELECT window_state FROM checkpoints WHERE mapping_uuid = ? AND shard_id = ?",
            (mapping_uuid, shard_id),
        ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    async def get_started_at(self, mapping_uuid: str) -> float | None:
        row = self._db.execute(
            "SELECT started_at FROM mapping_state WHERE mapping_uuid = ?", (mapping_uuid,)
        ).fetchone()
        return None if row is None else float(row[0])

    async def set_started_at(self, mapping_uuid: str, started_at: float) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO mapping_state (mapping_uuid, started_at) VALUES (?, ?)",
            (mapping_uuid, started_at),
        )

    async def delete_mapping(self, mapping_uuid: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM checkpoints WHERE mapping_uuid = ?", (mapping_uuid,))
            self._db.execute("DELETE FROM mapping_state WHERE mapping_uuid = ?", (mapping_uuid,))

    async def aclose(self) -> None:
        self._db.close()
