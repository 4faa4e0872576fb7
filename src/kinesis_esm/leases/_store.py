"""The lease store seam: every write is conditional, and a failed condition is a result.

DynamoDB is the first backend (`kinesis_esm.state._dynamodb.DynamoDBLeaseStore`); any store
with compare-and-set on one row can sit behind this Protocol (a SQL table with a version
column, etcd, ...). Transport trouble raises the `LeaseStoreError` family; a condition that
does not hold returns `Conflict` with the current row, so callers never parse error codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .._errors import KinesisESMError
from ._model import Checkpoint, Conflict, FleetSnapshot, Lease, LeaseLoad

__all__ = [
    "LeaseStore",
    "LeaseStoreError",
    "LeaseStoreThrottledError",
    "LeaseStoreUnavailableError",
    "LeaseTableAccessDeniedError",
]


class LeaseStoreError(KinesisESMError):
    """A lease store call failed (not a failed condition: that is a `Conflict`)."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class LeaseStoreUnavailableError(LeaseStoreError):
    """Worth retrying as is: a timeout, a reset connection, a 5xx."""


class LeaseStoreThrottledError(LeaseStoreUnavailableError):
    """The store throttled the call (DynamoDB's ProvisionedThroughputExceeded, Throttling)."""


class LeaseTableAccessDeniedError(LeaseStoreError):
    """The credentials lack a permission on the lease table: an operator must fix the policy."""


class LeaseStore(Protocol):
    """Lease and worker rows of many mappings. All methods are safe to call concurrently."""

    async def read_fleet(self, mapping_uuid: str) -> FleetSnapshot:
        """Every lease and worker row of the mapping (eventually consistent is fine)."""
        ...

    async def get_lease(self, mapping_uuid: str, shard_id: str) -> Lease | None:
        """One lease row, strongly consistent."""
        ...

    async def create_lease(
        self,
        mapping_uuid: str,
        shard_id: str,
        parent_shard_ids: Sequence[str] = (),
        checkpoint: Checkpoint | None = None,
    ) -> bool:
        """Create an unowned lease unless it exists; True when this call created it."""
        ...

    async def renew(
        self, lease: Lease, *, checkpoint: Checkpoint | None = None, load: LeaseLoad | None = None
    ) -> Lease | Conflict:
        """counter + 1 if owner and counter are still `lease`'s; carries a checkpoint (fenced:
        it moves only while the writer holds the lease) and load figures when given."""
        ...

    async def take(self, lease: Lease, worker_id: str) -> Lease | Conflict:
        """Become the owner if the counter is still `lease.counter`; clears any hand-off."""
        ...

    async def request_handoff(self, lease: Lease, worker_id: str) -> bool:
        """Ask `lease.owner` to hand the lease to `worker_id`. Does not touch the counter, so
        the owner's renewals go on; False if the owner changed meanwhile."""
        ...

    async def release(
        self, lease: Lease, *, to: str | None = None, checkpoint: Checkpoint | None = None
    ) -> Lease | Conflict:
        """Give the lease up (to nobody, or straight to `to`) with a final checkpoint, if
        owner and counter are still `lease`'s."""
        ...

    async def heartbeat(self, mapping_uuid: str, worker_id: str) -> None:
        """Register the worker or bump its heartbeat counter (only the worker writes its row)."""
        ...

    async def deregister_worker(
        self, mapping_uuid: str, worker_id: str, *, heartbeat: int | None = None
    ) -> bool:
        """Delete the worker's row; with `heartbeat`, only while it still has that value (a
        dead worker's row, removed by another). True when a row was deleted."""
        ...

    async def delete_mapping(self, mapping_uuid: str) -> int:
        """Delete every lease and worker row of the mapping; how many rows went."""
        ...

    async def aclose(self) -> None: ...
