"""What the lease coordinator promises its two audiences: the consumer (the mapping runtime)
and the operator (settings and counters)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from ._balance import BalanceSettings
from ._model import Lease

__all__ = [
    "CheckpointOutcome",
    "CoordinatorSettings",
    "LeaseConsumer",
    "LeaseStatistics",
    "parents_first",
]


class CheckpointOutcome(Enum):
    WRITTEN = "written"
    DEFERRED = "deferred"  # recorded; the next renewal writes it
    LOST = "lost"  # the lease is not held (any more): stop the shard, do not checkpoint


class LeaseConsumer(Protocol):
    def on_lease_gained(self, lease: Lease) -> None:
        """Start the shard from `lease.checkpoint` (None: the mapping's starting position)."""

    def on_lease_lost(self, shard_id: str) -> None:
        """Stop the shard now; its checkpoints are refused from here on."""

    async def release_requested(self, shard_id: str) -> None:
        """Stop taking records, finish in-flight batches, `checkpoint()` the low-water mark,
        then return. Bounded by `handoff_timeout`; past it the lease is lost to the consumer."""


@dataclass(frozen=True, slots=True)
class CoordinatorSettings:
    failover_time: float = 10.0  # seconds without a counter change before a lease may be taken
    take_interval: float | None = None  # None: failover_time / 2
    handoff_timeout: float = 30.0  # how long a consumer may take to release a lease
    hold_margin: float = 0.1  # a lease is held failover_time * (1 - margin) after a renewal
    max_concurrent_writes: int = 16
    balance: BalanceSettings = field(default_factory=BalanceSettings)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.failover_time) and 0.1 <= self.failover_time <= 86_400):
            raise ValueError(
                f"failover_time must be between 0.1 and 86400 seconds, got {self.failover_time!r}"
            )
        if self.take_interval is not None and not 0.05 <= self.take_interval <= 86_400:
            raise ValueError(
                f"take_interval must be between 0.05 and 86400 seconds, got {self.take_interval!r}"
            )
        if not 0 < self.handoff_timeout <= 86_400:
            raise ValueError(f"handoff_timeout must be > 0 s, got {self.handoff_timeout!r}")
        if not 0 <= self.hold_margin < 0.5:
            raise ValueError(f"hold_margin must be >= 0 and < 0.5, got {self.hold_margin!r}")
        if not 1 <= self.max_concurrent_writes <= 1000:
            raise ValueError(
                "max_concurrent_writes must be between 1 and 1000, "
                f"got {self.max_concurrent_writes!r}"
            )

    @property
    def renew_interval(self) -> float:
        return self.failover_time / 3

    @property
    def take_every(self) -> float:
        return self.take_interval if self.take_interval is not None else self.failover_time / 2

    @property
    def hold_time(self) -> float:
        return self.failover_time * (1 - self.hold_margin)


@dataclass(frozen=True, slots=True)
class LeaseStatistics:
    worker_id: str
    held: int
    taken: int  # unowned leases taken
    stolen: int  # expired leases of another owner taken (a dead or paused worker's)
    received: int  # leases handed over on this worker's request
    handed_off: int  # leases given up gracefully (requests and stop)
    finished: int  # leases released at SHARD_END
    lost: int  # leases taken away before this worker released them
    renewal_failures: int  # renewals and checkpoints that failed on transport
    read_failures: int  # table reads, takes, requests and heartbeats that failed
    live_workers: int
    requests_pending: int  # hand-offs this worker asked for that have not arrived yet


def parents_first(shards: Mapping[str, Sequence[str]]) -> list[str]:
    """Shard ids ordered so that a shard comes after every parent listed with it."""
    depth: dict[str, int] = {}

    def depth_of(shard: str, trail: frozenset[str]) -> int:
        if shard not in depth:
            parents = [p for p in shards.get(shard, ()) if p in shards and p not in trail]
            depth[shard] = 1 + max((depth_of(p, trail | {shard}) for p in parents), default=-1)
        return depth[shard]

    return sorted(shards, key=lambda shard: (depth_of(shard, frozenset()), shard))
