"""The fleet's shared mapping registry: one row per mapping in the lease table.

The rows live in the partition ``#registry`` of the `DynamoDBLeaseStore`'s table (hash key
``mappingUuid`` = ``#registry``, range key ``leaseKey`` = the mapping's UUID), so a fleet needs
no second table and no new permission. Each row holds the mapping's stored document (the same
dict the local `MappingStore` keeps, as JSON in ``document``) and a ``version`` counter. Every
write is conditional on the version the writer last saw (a create on the row not existing), so
of two workers changing one mapping at once exactly one wins; the other gets
`RegistryConflict`. A delete is a write too: the row stays, as a tombstone (``deleted``), so
a worker that was away can tell "deleted" from "never shared".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..leases import LeaseStoreError
from ._dynamodb import DynamoDBLeaseStore
from ._dynamodb_table import _ConditionFailed
from ._mappings import StoredMapping

__all__ = ["MappingRegistry", "RegistryConflict", "RegistryRow"]

REGISTRY_PARTITION = "#registry"
_MAX_PAGES = 1_000


class RegistryConflict(LeaseStoreError):
    """Another worker wrote the row since this one last read it."""


@dataclass(frozen=True, slots=True)
class RegistryRow:
    mapping: StoredMapping
    version: int


def _document(row: StoredMapping) -> str:
    return json.dumps(
        {
            "origin": row.origin,
            "config": row.config,
            "declared": row.declared,
            "extras": row.extras,
            "created_at": row.created_at,
            "last_modified": row.last_modified,
            "deleted": row.deleted,
        },
        sort_keys=True,
    )


def _row(item: dict[str, Any]) -> RegistryRow:
    data = json.loads(item["document"]["S"])
    mapping = StoredMapping(
        uuid=item["leaseKey"]["S"],
        origin="config" if data.get("origin") == "config" else "api",
        config=dict(data["config"]),
        declared=data.get("declared"),
        extras=dict(data.get("extras") or {}),
        created_at=float(data.get("created_at", 0.0)),
        last_modified=float(data.get("last_modified", 0.0)),
        deleted=bool(data.get("deleted", False)),
    )
    return RegistryRow(mapping, int(item["version"]["N"]))


class MappingRegistry:
    """Reads and conditionally writes registry rows through a started `DynamoDBLeaseStore`
    (its client, its per-call timeout and its error mapping)."""

    def __init__(self, store: DynamoDBLeaseStore) -> None:
        self.store = store

    async def read_all(self) -> dict[str, RegistryRow]:
        """Every row, tombstones included (a consistent read, paged)."""
        params: dict[str, Any] = {
            "TableName": self.store.table,
            "KeyConditionExpression": "mappingUuid = :p",
            "ExpressionAttributeValues": {":p": {"S": REGISTRY_PARTITION}},
            "ConsistentRead": True,
        }
        rows: dict[str, RegistryRow] = {}
        for _ in range(_MAX_PAGES):
            page = await self.store._call("query", **params)
            for item in page.get("Items", []):
                if "document" in item and "version" in item:
                    row = _row(item)
                    rows[row.mapping.uuid] = row
            if "LastEvaluatedKey" not in page:
                return rows
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        raise LeaseStoreError(f"the registry of {self.store.table!r} has too many pages")

    async def write(self, mapping: StoredMapping, seen: int | None) -> int:
        """Write ``mapping`` if the row's version is still ``seen`` (None: if there is no
        row); the new version, or `RegistryConflict`."""
        version = 1 if seen is None else seen + 1
        condition = "attribute_not_exists(leaseKey)" if seen is None else "version = :seen"
        values = {} if seen is None else {":seen": {"N": str(seen)}}
        params: dict[str, Any] = {
            "TableName": self.store.table,
            "Item": {
                "mappingUuid": {"S": REGISTRY_PARTITION},
                "leaseKey": {"S": mapping.uuid},
                "document": {"S": _document(mapping)},
                "version": {"N": str(version)},
            },
            "ConditionExpression": condition,
        }
        if values:
            params["ExpressionAttributeValues"] = values
        try:
            await self.store._call("put_item", **params)
        except _ConditionFailed:
            raise RegistryConflict(
                f"mapping {mapping.uuid} was changed by another worker",
                code="ConditionalCheckFailedException",
            ) from None
        return version
