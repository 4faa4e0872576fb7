"""Leases in DynamoDB through aiobotocore: a `LeaseStore` (see kinesis_esm.leases).

One table, created on first start if missing (``_dynamodb_table``). Hash key `mappingUuid`, range
key `leaseKey`: a shard id for a lease row, ``worker#<id>`` for a worker row, so one Query
reads a mapping's whole fleet. Lease rows carry KCL's attributes (leaseOwner, leaseCounter,
checkpoint, checkpointSubSequenceNumber, parentShardIds, ownerSwitchesSinceCheckpoint) plus
handoffTarget, recordsPerSecond, bytesPerSecond and windowState (binary: a tumbling window's
state, part of the checkpoint, so written or removed with it in the same update); worker rows
carry heartbeatCounter. One more partition, ``#mappings``, has a row per mapping (``leaseKey``
= its UUID) with startedAt.

Every lease write is conditional, and a failed condition comes back as `Conflict` with the row
as it is now. Every call has a timeout. Checkpoints are not written here on their own schedule:
the coordinator sends them with renewals (at most one write per lease per renewal interval).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import anyio
from aiobotocore.session import get_session
from botocore.config import Config

from ..leases._model import Checkpoint, Conflict, FleetSnapshot, Lease, LeaseLoad, WorkerRecord
from ..leases._store import LeaseStoreError, LeaseStoreThrottledError
from ._dynamodb_items import _lease_from_item, _number, _Update, _value
from ._dynamodb_table import _ConditionFailed, _map_error, ensure_lease_table

__all__ = ["DynamoDBLeaseStore"]

_WORKER_PREFIX = "worker#"
_MAPPINGS = "#mappings"  # the hash key of the mapping rows: a mapping's fleet-wide start time
_MAX_PAGES = 10_000
_BATCH = 25  # BatchWriteItem's limit


class DynamoDBLeaseStore:
    """A LeaseStore on one DynamoDB table. `endpoint_url=None` honours AWS_ENDPOINT_URL_DYNAMODB."""

    def __init__(
        self,
        table: str = "kinesis-esm",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        call_timeout: float = 5.0,
        create_table: bool = True,
        table_ready_timeout: float = 120.0,
    ) -> None:
        if not 3 <= len(table) <= 255:
            raise ValueError(f"table must be 3 to 255 characters long, got {table!r}")
        if not 0.1 <= call_timeout <= 300:
            raise ValueError(f"call_timeout must be between 0.1 and 300 s, got {call_timeout!r}")
        self.table = table
        self.endpoint_url = endpoint_url
        self.region = region
        self.call_timeout = call_timeout
        self.create_table = create_table
        self.table_ready_timeout = table_ready_timeout
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    async def __aenter__(self) -> DynamoDBLeaseStore:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the client and make sure the table exists (creating it if allowed)."""
        if self._client is None:
            config = Config(
                connect_timeout=min(2.0, self.call_timeout),
                read_timeout=self.call_timeout,
                retries={"total_max_attempts": 1},  # the coordinator's rounds are the retries
            )
            stack = contextlib.AsyncExitStack()
            self._client = await stack.enter_async_context(
                get_session().create_client(
                    "dynamodb",
                    endpoint_url=self.endpoint_url,
                    region_name=self.region,
                    config=config,
                )
            )
            self._stack = stack
        try:
            await self.ensure_table()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def ensure_table(self) -> None:
        await ensure_lease_table(
            self._call,
            self.table,
            create=self.create_table,
            ready_timeout=self.table_ready_timeout,
        )

    # The LeaseStore protocol.

    async def read_fleet(self, mapping_uuid: str) -> FleetSnapshot:
        leases: list[Lease] = []
        workers: list[WorkerRecord] = []
        params: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "mappingUuid = :m",
            "ExpressionAttributeValues": {":m": _value(mapping_uuid)},
        }
        for _ in range(_MAX_PAGES):
            page = await self._call("query", **params)
            for item in page.get("Items", ()):
                if item["leaseKey"]["S"].startswith(_WORKER_PREFIX):
                    beat = int(_number(item, "heartbeatCounter"))
                    workers.append(WorkerRecord(item["workerId"]["S"], beat))
                else:
                    leases.append(_lease_from_item(item))
            if "LastEvaluatedKey" not in page:
                break
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return FleetSnapshot(tuple(leases), tuple(workers))

    async def get_lease(self, mapping_uuid: str, shard_id: str) -> Lease | None:
        key = self._key(mapping_uuid, shard_id)
        answer = await self._call("get_item", TableName=self.table, Key=key, ConsistentRead=True)
        return _lease_from_item(answer["Item"]) if "Item" in answer else None

    async def create_lease(
        self,
        mapping_uuid: str,
        shard_id: str,
        parent_shard_ids: Sequence[str] = (),
        checkpoint: Checkpoint | None = None,
    ) -> bool:
        if shard_id.startswith(_WORKER_PREFIX):
            raise ValueError(f"a shard id may not start with {_WORKER_PREFIX!r}: {shard_id!r}")
        attributes: dict[str, str | float | bytes] = {
            "entityType": "lease",
            "leaseCounter": 0,
            "ownerSwitchesSinceCheckpoint": 0,
        }
        if checkpoint is not None:
            attributes["checkpoint"] = checkpoint.sequence
            attributes["checkpointSubSequenceNumber"] = checkpoint.sub_sequence
            if checkpoint.window_state is not None:
                attributes["windowState"] = checkpoint.window_state
        item = {name: _value(value) for name, value in attributes.items()}
        if parent_shard_ids:
            item["parentShardIds"] = {"SS": sorted(set(parent_shard_ids))}
        done, _ = await self._attempt(
            "put_item",
            TableName=self.table,
            Item={**self._key(mapping_uuid, shard_id), **item},
            ConditionExpression="attribute_not_exists(leaseKey)",
        )
        return done

    async def renew(
        self, lease: Lease, *, checkpoint: Checkpoint | None = None, load: LeaseLoad | None = None
    ) -> Lease | Conflict:
        update = _Update().set("leaseCounter", "leaseCounter + :one").held_by(lease)
        update.checkpoint(checkpoint, 0)
        if load is not None:
            update.set("recordsPerSecond", ":rps", rps=load.records_per_second)
            update.set("bytesPerSecond", ":bps", bps=load.bytes_per_second)
        return await self._fenced(lease, update)

    async def take(self, lease: Lease, worker_id: str) -> Lease | Conflict:
        update = _Update().set("leaseOwner", ":me", me=worker_id).remove("handoffTarget")
        update.set("leaseCounter", "leaseCounter + :one").where(
            "leaseCounter = :seen", seen=lease.counter
        )
        if lease.owner != worker_id:
            update.owner_switched()
        return await self._fenced(lease, update)

    async def request_handoff(self, lease: Lease, worker_id: str) -> bool:
        if lease.owner is None:
            return False
        update = _Update().set("handoffTarget", ":me", me=worker_id)
        update.where("leaseOwner = :owner", owner=lease.owner)
        done, _ = await self._attempt(
            "update_item",
            TableName=self.table,
            Key=self._key(lease.mapping_uuid, lease.shard_id),
            **update.params(),
        )
        return done

    async def release(
        self, lease: Lease, *, to: str | None = None, checkpoint: Checkpoint | None = None
    ) -> Lease | Conflict:
        update = _Update().set("leaseCounter", "leaseCounter + :one").remove("handoffTarget")
        if to is None:
            update.remove("leaseOwner")
        else:
            update.set("leaseOwner", ":to", to=to)
        if not update.checkpoint(checkpoint, int(to is not None)) and to is not None:
            update.owner_switched()
        return await self._fenced(lease, update.held_by(lease))

    async def heartbeat(self, mapping_uuid: str, worker_id: str) -> None:
        update = (
            _Update().set("entityType", ":kind", kind="worker").set("workerId", ":id", id=worker_id)
        )
        update.set("heartbeatCounter", "if_not_exists(heartbeatCounter, :zero) + :one")
        key = self._key(mapping_uuid, _WORKER_PREFIX + worker_id)
        await self._call("update_item", TableName=self.table, Key=key, **update.params())

    async def deregister_worker(
        self, mapping_uuid: str, worker_id: str, *, heartbeat: int | None = None
    ) -> bool:
        params: dict[str, Any] = {"ReturnValues": "ALL_OLD"}
        if heartbeat is not None:
            params["ConditionExpression"] = "heartbeatCounter = :beat"
            params["ExpressionAttributeValues"] = {":beat": _value(heartbeat)}
        key = self._key(mapping_uuid, _WORKER_PREFIX + worker_id)
        done, answer = await self._attempt("delete_item", TableName=self.table, Key=key, **params)
        return done and "Attributes" in answer

    async def delete_mapping(self, mapping_uuid: str) -> int:
        snapshot = await self.read_fleet(mapping_uuid)
        keys = [lease.shard_id for lease in snapshot.leases]
        keys += [_WORKER_PREFIX + worker.worker_id for worker in snapshot.workers]
        for start in range(0, len(keys), _BATCH):
            requests = [
                {"DeleteRequest": {"Key": self._key(mapping_uuid, key)}}
                for key in keys[start : start + _BATCH]
            ]
            for _ in range(10):  # unprocessed items come back under throttling
                answer = await self._call("batch_write_item", RequestItems={self.table: requests})
                requests = answer.get("UnprocessedItems", {}).get(self.table, [])
                if not requests:
                    break
                await anyio.sleep(0.2)
            else:
                raise LeaseStoreThrottledError(f"deleting the leases of {mapping_uuid} stalled")
        return len(keys)

    # The mapping rows (not part of the LeaseStore protocol: the fleet's runtime uses them).

    async def claim_started_at(self, mapping_uuid: str, now: float) -> tuple[float, bool]:
        """When the mapping first started anywhere in the fleet, stored by the first caller:
        (that time, True when this call stored it). For LATEST: a worker that takes a lease
        without a checkpoint reads from this time on, not from when it happened to start."""
        update = _Update().set("entityType", ":kind", kind="mapping")
        update.set("startedAt", "if_not_exists(startedAt, :now)", now=now)
        answer = await self._call(
            "update_item",
            TableName=self.table,
            Key=self._key(_MAPPINGS, mapping_uuid),
            ReturnValues="ALL_OLD",
            **update.params(),
        )
        old = answer.get("Attributes", {})
        if "startedAt" in old:
            return float(old["startedAt"]["N"]), False
        return float(_value(now)["N"]), True

    async def forget_mapping(self, mapping_uuid: str) -> None:
        """Delete the mapping's row (its lease and worker rows go with `delete_mapping`)."""
        key = self._key(_MAPPINGS, mapping_uuid)
        await self._call("delete_item", TableName=self.table, Key=key)

    # Internals.

    def _key(self, mapping_uuid: str, lease_key: str) -> dict[str, Any]:
        return {"mappingUuid": _value(mapping_uuid), "leaseKey": _value(lease_key)}

    async def _fenced(self, lease: Lease, update: _Update) -> Lease | Conflict:
        done, answer = await self._attempt(
            "update_item",
            TableName=self.table,
            Key=self._key(lease.mapping_uuid, lease.shard_id),
            ReturnValues="ALL_NEW",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
            **update.params(),
        )
        if done:
            return _lease_from_item(answer["Attributes"])
        if answer:  # DynamoDB and moto return the row; dynalite does not
            return Conflict(_lease_from_item(answer))
        return Conflict(await self.get_lease(lease.mapping_uuid, lease.shard_id))

    async def _attempt(self, operation: str, **params: Any) -> tuple[bool, dict[str, Any]]:
        """(True, the answer), or (False, the row if the server sent it) on a failed condition."""
        try:
            return True, await self._call(operation, **params)
        except _ConditionFailed as failed:
            return False, failed.item or {}

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        if self._client is None:
            raise LeaseStoreError("DynamoDBLeaseStore is not started: call start() first")
        try:
            with anyio.fail_after(self.call_timeout + 1.0):
                answer: dict[str, Any] = await getattr(self._client, operation)(**params)
                return answer
        except Exception as exc:
            raise _map_error(exc, operation, self.table) from exc
