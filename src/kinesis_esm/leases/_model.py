"""What a lease is, and when one counts as expired, without comparing clocks of different hosts.

A lease row is the single source of truth for one shard of one mapping: who holds it, its
counter (bumped by every renewal, take and release), its checkpoint, its parents, a pending
hand-off target, and the load its owner measured. Expiry follows KCL: an observer remembers,
per lease, the last (owner, counter) it saw and when, on its own monotonic clock; the lease is
expired once that value has not changed for failover_time.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = [
    "MAX_WINDOW_STATE_BYTES",
    "SHARD_END",
    "Checkpoint",
    "Conflict",
    "FleetSnapshot",
    "Lease",
    "LeaseLoad",
    "Observer",
    "WorkerRecord",
]

SHARD_END = "SHARD_END"  # the same sentinel as kinesis_esm.state.SHARD_END
# A DynamoDB item holds at most 400 KB, the row's other attributes included: room left for them.
MAX_WINDOW_STATE_BYTES = 384 * 1024

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class LeaseLoad:
    """What the owner measured on the lease's shard: records and bytes delivered per second."""

    records_per_second: float = 0.0
    bytes_per_second: float = 0.0

    def __post_init__(self) -> None:
        for name in ("records_per_second", "bytes_per_second"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """'Resume after this record': a sequence number (or SHARD_END) and a KPL sub-sequence,
    with the shard's tumbling-window state when the mapping has windows (stored in the same
    write, so a new owner resumes the window exactly where the checkpoint is). Equality covers
    the state: a changed state alone is a new checkpoint to write."""

    sequence: str
    sub_sequence: int = 0
    window_state: bytes | None = field(default=None, repr=False)  # up to ~384 KiB: not logged

    def __post_init__(self) -> None:
        if not self.sequence:
            raise ValueError("checkpoint sequence must be a non-empty string")
        if self.sub_sequence < 0:
            raise ValueError(f"sub_sequence must be >= 0, got {self.sub_sequence}")
        state = self.window_state
        if state is not None:
            if not isinstance(state, bytes) or not state:
                raise ValueError("window_state must be non-empty bytes or None")
            if len(state) > MAX_WINDOW_STATE_BYTES:
                raise ValueError(
                    f"window_state must be at most {MAX_WINDOW_STATE_BYTES} bytes (a lease row "
                    f"holds 400 KB), got {len(state)}"
                )

    @property
    def shard_end(self) -> bool:
        return self.sequence == SHARD_END


@dataclass(frozen=True, slots=True)
class Lease:
    """One lease row as last read or written. Frozen: a change is a new row from the store."""

    mapping_uuid: str
    shard_id: str
    owner: str | None
    counter: int
    checkpoint: Checkpoint | None = None
    parent_shard_ids: tuple[str, ...] = ()
    handoff_target: str | None = None  # a worker that asked the owner to hand the lease over
    owner_switches: int = 0  # ownership changes since the checkpoint last moved (KCL's churn)
    load: LeaseLoad = field(default_factory=LeaseLoad)

    @property
    def finished(self) -> bool:
        """The shard was read to its end and every record processed: children may start."""
        return self.checkpoint is not None and self.checkpoint.shard_end


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A worker's registry row: its heartbeat counter, bumped every renewal interval."""

    worker_id: str
    heartbeat: int


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """Every lease and worker row of one mapping, from one read of the store."""

    leases: tuple[Lease, ...]
    workers: tuple[WorkerRecord, ...]


@dataclass(frozen=True, slots=True)
class Conflict:
    """A conditional write whose condition failed; `current` is the row now (None: gone)."""

    current: Lease | None


class Observer(Generic[K]):
    """Expiry on the observer's own clock: a value unchanged for failover_time is expired.

    `now` is the caller's monotonic time. A key seen for the first time is not expired: the
    observer cannot know for how long it has been unchanged, so it waits a full failover_time.
    """

    def __init__(self, failover_time: float) -> None:
        if not failover_time > 0:
            raise ValueError(f"failover_time must be > 0, got {failover_time!r}")
        self.failover_time = failover_time
        self._seen: dict[K, tuple[Hashable, float]] = {}

    def observe(self, key: K, value: Hashable, now: float) -> None:
        previous = self._seen.get(key)
        if previous is None or previous[0] != value:
            self._seen[key] = (value, now)

    def expired(self, key: K, now: float) -> bool:
        seen = self._seen.get(key)
        return seen is not None and now - seen[1] >= self.failover_time

    def unchanged_for(self, key: K, now: float) -> float | None:
        seen = self._seen.get(key)
        return None if seen is None else now - seen[1]

    def retain(self, keys: Iterable[K]) -> None:
        """Forget keys that are no longer in the table (a deleted lease, a deregistered worker)."""
        keep = set(keys)
        for key in [key for key in self._seen if key not in keep]:
            del self._seen[key]
