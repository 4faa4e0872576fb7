"""The fleet's shared mapping registry: one row per mapping in the lease table, and one claim
per (function, stream).

The rows live in the partition ``#registry`` of the `DynamoDBLeaseStore`'s table (hash key
``mappingUuid`` = ``#registry``, range key ``leaseKey`` = the mapping's UUID), so a fleet needs
no second table and no new permission. Each row holds the mapping's stored document (the same
dict the local `MappingStore` keeps, as JSON in ``document``), a ``version`` counter and
``writtenAt`` (the writer's wall clock, for removing old tombstones). Every write is
conditional on the version the writer last saw (a create on the row not existing), so of two
workers changing one mapping at once exactly one wins; the other gets `RegistryConflict`. A
delete is a write too: the row stays, as a tombstone (``deleted``), so a worker that was away
can tell "deleted" from "never shared", until `remove` takes it out.

Two more kinds of item share the partition, both without a ``document`` (so `read_all`, and
workers of earlier versions, skip them):

- a *claim* (range key ``#claim <key>``, ``claimedBy`` = a UUID): the one mapping that may hold
  that key (the runtime's canonical function ARN and the stream ARN). `claim` writes it on the
  claim not existing or already naming that UUID, `claim(previous=...)` takes it over from the
  UUID it named, `release` removes it only while it still names the releasing UUID. DynamoDB
  Local emulators such as dynalite have no TransactWriteItems, so a claim and its row are two
  conditional writes; runtime/_fleet_sync orders them.
- a *fence* (range key = a UUID, ``supersededBy``): written where a mapping row was expected but
  missing, so a create still under way for that UUID fails (its write requires the row not to
  exist) and names the mapping that superseded it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..leases import LeaseStoreError
from ._dynamodb import DynamoDBLeaseStore
from ._dynamodb_table import _ConditionFailed
from ._mappings import StoredMapping

__all__ = [
    "Claim",
    "Fence",
    "MappingRegistry",
    "RegistryConflict",
    "RegistryContents",
    "RegistryRow",
]

REGISTRY_PARTITION = "#registry"
CLAIM_PREFIX = "#claim "
_MAX_PAGES = 1_000


class RegistryConflict(LeaseStoreError):
    """Another worker wrote the row since this one last read it."""


@dataclass(frozen=True, slots=True)
class RegistryRow:
    mapping: StoredMapping
    version: int
    written_at: float | None = None  # None: written by a worker that did not stamp it


@dataclass(frozen=True, slots=True)
class Fence:
    """No mapping row for ``uuid``: the mapping ``superseded_by`` took its claim."""

    uuid: str
    superseded_by: str
    written_at: float


@dataclass(frozen=True, slots=True)
class Claim:
    key: str
    holder: str  # the UUID of the mapping that holds the key


@dataclass(slots=True)
class RegistryContents:
    """One read of the whole partition."""

    rows: dict[str, RegistryRow] = field(default_factory=dict)
    fences: dict[str, Fence] = field(default_factory=dict)
    claims: dict[str, Claim] = field(default_factory=dict)


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
    written = float(item["writtenAt"]["N"]) if "writtenAt" in item else None
    return RegistryRow(mapping, int(item["version"]["N"]), written)


def _entry(item: dict[str, Any]) -> RegistryRow | Fence | Claim | None:
    key = item["leaseKey"]["S"]
    if key.startswith(CLAIM_PREFIX):
        holder = item.get("claimedBy", {}).get("S")
        return None if holder is None else Claim(key[len(CLAIM_PREFIX) :], holder)
    if "document" in item and "version" in item:
        return _row(item)
    if "supersededBy" in item:
        written = float(item["writtenAt"]["N"]) if "writtenAt" in item else 0.0
        return Fence(key, item["supersededBy"]["S"], written)
    return None


def _stamp(at: float) -> dict[str, str]:
    return {"N": f"{at:.3f}"}


class MappingRegistry:
    """Reads and conditionally writes registry items through a started `DynamoDBLeaseStore`
    (its client, its per-call timeout and its error mapping). The claim, fence and remove
    methods answer False when their condition failed; other errors are `LeaseStoreError`."""

    def __init__(self, store: DynamoDBLeaseStore) -> None:
        self.store = store

    def _key(self, range_key: str) -> dict[str, Any]:
        return {"mappingUuid": {"S": REGISTRY_PARTITION}, "leaseKey": {"S": range_key}}

    async def read_contents(self) -> RegistryContents:
        """Every row (tombstones included), fence and claim: a consistent read, paged."""
        params: dict[str, Any] = {
            "TableName": self.store.table,
            "KeyConditionExpression": "mappingUuid = :p",
            "ExpressionAttributeValues": {":p": {"S": REGISTRY_PARTITION}},
            "ConsistentRead": True,
        }
        contents = RegistryContents()
        for _ in range(_MAX_PAGES):
            page = await self.store._call("query", **params)
            for item in page.get("Items", []):
                entry = _entry(item)
                if isinstance(entry, RegistryRow):
                    contents.rows[entry.mapping.uuid] = entry
                elif isinstance(entry, Fence):
                    contents.fences[entry.uuid] = entry
                elif isinstance(entry, Claim):
                    contents.claims[entry.key] = entry
            if "LastEvaluatedKey" not in page:
                return contents
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        raise LeaseStoreError(f"the registry of {self.store.table!r} has too many pages")

    async def read_all(self) -> dict[str, RegistryRow]:
        """Every mapping row, tombstones included."""
        return (await self.read_contents()).rows

    async def read(self, uuid: str) -> RegistryRow | Fence | None:
        """The row (or fence) of one UUID, read consistently; None when there is neither."""
        answer = await self.store._call(
            "get_item", TableName=self.store.table, Key=self._key(uuid), ConsistentRead=True
        )
        entry = _entry(answer["Item"]) if "Item" in answer else None
        return entry if isinstance(entry, RegistryRow | Fence) else None

    async def write(
        self, mapping: StoredMapping, seen: int | None, *, written_at: float | None = None
    ) -> int:
        """Write ``mapping`` if the row's version is still ``seen`` (None: if there is no
        row, nor a fence); the new version, or `RegistryConflict`."""
        version = 1 if seen is None else seen + 1
        condition = "attribute_not_exists(leaseKey)" if seen is None else "version = :seen"
        values = {} if seen is None else {":seen": {"N": str(seen)}}
        item = {
            **self._key(mapping.uuid),
            "document": {"S": _document(mapping)},
            "version": {"N": str(version)},
        }
        if written_at is not None:
            item["writtenAt"] = _stamp(written_at)
        params: dict[str, Any] = {
            "TableName": self.store.table,
            "Item": item,
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

    async def _conditional(self, operation: str, **params: Any) -> bool:
        try:
            await self.store._call(operation, TableName=self.store.table, **params)
        except _ConditionFailed:
            return False
        return True

    async def claim(self, key: str, uuid: str, *, previous: str | None = None) -> bool:
        """Make ``uuid`` the holder of ``key``: if no claim exists or it already names
        ``uuid``; with ``previous``, only if the claim still names ``previous``."""
        if previous is None:
            condition = "attribute_not_exists(leaseKey) OR claimedBy = :uuid"
            values = {":uuid": {"S": uuid}}
        else:
            condition, values = "claimedBy = :previous", {":previous": {"S": previous}}
        item = {**self._key(CLAIM_PREFIX + key), "claimedBy": {"S": uuid}}
        return await self._conditional(
            "put_item", Item=item, ConditionExpression=condition, ExpressionAttributeValues=values
        )

    async def read_claim(self, key: str) -> str | None:
        """The UUID holding ``key`` (a consistent read), None when nobody does."""
        answer = await self.store._call(
            "get_item",
            TableName=self.store.table,
            Key=self._key(CLAIM_PREFIX + key),
            ConsistentRead=True,
        )
        holder = answer.get("Item", {}).get("claimedBy", {}).get("S")
        return None if holder is None else str(holder)

    async def release(self, key: str, uuid: str) -> bool:
        """Remove the claim of ``key`` if it still names ``uuid``."""
        return await self._conditional(
            "delete_item",
            Key=self._key(CLAIM_PREFIX + key),
            ConditionExpression="claimedBy = :uuid",
            ExpressionAttributeValues={":uuid": {"S": uuid}},
        )

    async def fence(self, uuid: str, superseded_by: str, written_at: float) -> bool:
        """Block the row of ``uuid`` while it does not exist (see the module docstring)."""
        item = {
            **self._key(uuid),
            "supersededBy": {"S": superseded_by},
            "writtenAt": _stamp(written_at),
        }
        return await self._conditional(
            "put_item", Item=item, ConditionExpression="attribute_not_exists(leaseKey)"
        )

    async def stamp(self, row: RegistryRow, written_at: float) -> bool:
        """Give a row written without ``writtenAt`` one, keeping its version (so nobody
        applies it again)."""
        return await self._conditional(
            "update_item",
            Key=self._key(row.mapping.uuid),
            UpdateExpression="SET writtenAt = :at",
            ConditionExpression="version = :seen AND attribute_not_exists(writtenAt)",
            ExpressionAttributeValues={":at": _stamp(written_at), ":seen": {"N": str(row.version)}},
        )

    async def remove(self, entry: RegistryRow | Fence) -> bool:
        """Delete a tombstone (if its version is unchanged) or a fence (if unchanged)."""
        if isinstance(entry, RegistryRow):
            return await self._conditional(
                "delete_item",
                Key=self._key(entry.mapping.uuid),
                ConditionExpression="version = :seen",
                ExpressionAttributeValues={":seen": {"N": str(entry.version)}},
            )
        return await self._conditional(
            "delete_item",
            Key=self._key(entry.uuid),
            ConditionExpression="attribute_not_exists(document) AND supersededBy = :by",
            ExpressionAttributeValues={":by": {"S": entry.superseded_by}},
        )
