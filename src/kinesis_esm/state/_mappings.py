"""Mapping definitions in the SQLite file the checkpoints live in, so that mappings created
through the control plane survive a restart.

One row per mapping: its effective configuration (Lambda's parameters in snake_case, as JSON),
where it came from (``api``, or ``config`` for a mapping declared in the config file, with the
declaration it was last reconciled against), the extra API fields kinesis-esm only stores
(KMSKeyArn, MetricsConfig, Tags), LastModified, and a tombstone flag for a config-file mapping
deleted through the API.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import (
    DestinationConfig,
    EventSourceMappingConfig,
    Filter,
    FilterCriteria,
    OnFailure,
)

__all__ = ["MappingStore", "StoredMapping", "config_from_dict", "config_to_dict"]

Origin = Literal["api", "config"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS event_source_mappings (
    uuid TEXT PRIMARY KEY,
    origin TEXT NOT NULL,
    config TEXT NOT NULL,
    declared TEXT,
    extras TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    last_modified REAL NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
"""


def config_to_dict(config: EventSourceMappingConfig) -> dict[str, Any]:
    """A JSON-ready dict of every field (nested settings as dicts, tuples as lists)."""
    data = dataclasses.asdict(config)
    data["function_response_types"] = list(config.function_response_types)
    return data


def config_from_dict(data: dict[str, Any]) -> EventSourceMappingConfig:
    """The inverse of :func:`config_to_dict`; validates again (may raise ConfigError)."""
    kwargs = dict(data)
    destination = kwargs.pop("destination_config", None) or {}
    on_failure = destination.get("on_failure") or {}
    kwargs["destination_config"] = DestinationConfig(OnFailure(on_failure.get("destination")))
    criteria = kwargs.pop("filter_criteria", None)
    if criteria is not None:
        filters = tuple(Filter(f["pattern"]) for f in criteria.get("filters", ()))
        kwargs["filter_criteria"] = FilterCriteria(filters)
    kwargs["function_response_types"] = tuple(kwargs.get("function_response_types", ()))
    known = {f.name for f in dataclasses.fields(EventSourceMappingConfig)}
    return EventSourceMappingConfig(**{k: v for k, v in kwargs.items() if k in known})


@dataclass(slots=True)
class StoredMapping:
    uuid: str
    origin: Origin
    config: dict[str, Any]  # config_to_dict of the effective configuration
    declared: dict[str, Any] | None = None  # origin "config": the file's declaration
    extras: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    last_modified: float = 0.0
    deleted: bool = False  # origin "config": deleted through the API


class MappingStore:
    """Mapping rows on an open SQLite connection (``SQLiteCheckpointStore.connection``)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._db.executescript(_SCHEMA)

    @classmethod
    def memory(cls) -> MappingStore:
        """A store in a private in-memory database (tests, embedding without persistence)."""
        return cls(sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False))

    def load(self) -> list[StoredMapping]:
        """Every row, oldest first."""
        rows = self._db.execute(
            "SELECT uuid, origin, config, declared, extras, created_at, last_modified, deleted "
            "FROM event_source_mappings ORDER BY created_at, uuid"
        ).fetchall()
        return [
            StoredMapping(
                uuid=uuid,
                origin=origin,
                config=json.loads(config),
                declared=None if declared is None else json.loads(declared),
                extras=json.loads(extras),
                created_at=float(created_at),
                last_modified=float(last_modified),
                deleted=bool(deleted),
            )
            for uuid, origin, config, declared, extras, created_at, last_modified, deleted in rows
        ]

    def put(self, row: StoredMapping) -> None:
        self._db.execute(
            "INSERT INTO event_source_mappings (uuid, origin, config, declared, extras, "
            "created_at, last_modified, deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (uuid) DO UPDATE SET origin = excluded.origin, config = excluded.config,"
            " declared = excluded.declared, extras = excluded.extras, "
            "last_modified = excluded.last_modified, deleted = excluded.deleted",
            (
                row.uuid,
                row.origin,
                json.dumps(row.config, sort_keys=True),
                None if row.declared is None else json.dumps(row.declared, sort_keys=True),
                json.dumps(row.extras, sort_keys=True),
                row.created_at,
                row.last_modified,
                int(row.deleted),
            ),
        )

    def delete(self, uuid: str) -> None:
        self._db.execute("DELETE FROM event_source_mappings WHERE uuid = ?", (uuid,))
