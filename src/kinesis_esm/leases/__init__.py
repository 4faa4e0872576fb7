"""Leases: many workers share a mapping's shards, one live owner per shard (KCL's algorithm).

`LeaseCoordinator` runs one worker's side of one mapping against a `LeaseStore`
(`kinesis_esm.state._dynamodb.DynamoDBLeaseStore`, or `MemoryLeaseStore` in tests); the mapping
runtime implements `LeaseConsumer`. `plan` / `assign` are the pure balancer. See docs/leases.md.
"""

from ._balance import BalanceSettings, FleetView, Plan, assign, eligible_leases, plan
from ._contract import CheckpointOutcome, CoordinatorSettings, LeaseConsumer, LeaseStatistics
from ._coordinator import LeaseCoordinator
from ._memory import MemoryLeaseStore
from ._model import (
    SHARD_END,
    Checkpoint,
    Conflict,
    FleetSnapshot,
    Lease,
    LeaseLoad,
    Observer,
    WorkerRecord,
)
from ._store import (
    LeaseStore,
    LeaseStoreError,
    LeaseStoreThrottledError,
    LeaseStoreUnavailableError,
    LeaseTableAccessDeniedError,
)
from ._thread import LeaseThread, LeaseThreadStopped, MainLoopConsumer, ThreadedCoordinator

__all__ = (
    "SHARD_END",
    "BalanceSettings",
    "Checkpoint",
    "CheckpointOutcome",
    "Conflict",
    "CoordinatorSettings",
    "FleetSnapshot",
    "FleetView",
    "Lease",
    "LeaseConsumer",
    "LeaseCoordinator",
    "LeaseLoad",
    "LeaseStatistics",
    "LeaseStore",
    "LeaseStoreError",
    "LeaseStoreThrottledError",
    "LeaseStoreUnavailableError",
    "LeaseTableAccessDeniedError",
    "LeaseThread",
    "LeaseThreadStopped",
    "MainLoopConsumer",
    "MemoryLeaseStore",
    "Observer",
    "Plan",
    "ThreadedCoordinator",
    "WorkerRecord",
    "assign",
    "eligible_leases",
    "plan",
)
