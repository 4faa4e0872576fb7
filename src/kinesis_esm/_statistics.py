"""Counters and cheap snapshots, in the manner of anyio's ``statistics()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .leases._contract import LeaseStatistics

__all__ = [
    "EngineStatistics",
    "MappingCounters",
    "MappingStatistics",
    "ShardStatistics",
    "WorkerStatistics",
    "waiting_statistics",
]


@dataclass(slots=True)
class MappingCounters:
    """Lambda's ESM counts, with Lambda's meanings (reference section 6)."""

    polled_events: int = 0  # PolledEventCount
    invocations: int = 0  # Invocations
    errors: int = 0  # Errors: invocations that ended in a function error
    invoked_events: int = 0  # InvokedEventCount: records sent, again on each retry
    failed_invoke_events: int = 0  # FailedInvokeEventCount
    succeeded_events: int = 0  # records whose invocation succeeded (not a Lambda metric)
    dropped_events: int = 0  # DroppedEventCount
    on_failure_delivered_events: int = 0  # OnFailureDestinationDeliveredEventCount
    destination_delivery_failures: int = 0  # DestinationDeliveryFailures
    filtered_out_events: int = 0  # FilteredOutEventCount
    deaggregation_errors: int = 0  # KPL aggregates that did not parse, delivered whole
    oversized_batches: int = 0  # single records too large for a 6 MB event, sent alone
    get_records_calls: int = 0
    source_errors: int = 0
    throttles: int = 0
    retention_gaps: int = 0  # checkpoints found trimmed by retention (restarted at TRIM_HORIZON)


@dataclass(frozen=True, slots=True)
class ShardStatistics:
    shard_id: str
    state: str  # "waiting_on_parents" | "polling" | "ended" | "stopped"
    lanes: int
    lanes_busy: int
    records_buffered: int
    checkpoint: str | None  # the low-water mark written to the store
    highest_sequence_read: str | None
    iterator_age_ms: int | None  # Lambda's IteratorAge: age of the last record of a batch
    millis_behind_latest: int | None  # from the last GetRecords
    records_polled: int
    records_invoked: int
    read_mode: str = "polling"  # "polling" (GetRecords) or "subscribe" (enhanced fan-out)
    subscription_age_s: float | None = None  # of the current SubscribeToShard
    resubscriptions: int = 0
    owner: str | None = None  # in a fleet: the worker holding the shard's lease (None: free)
    lease_counter: int | None = None  # in a fleet: the lease's counter as last read or written


def waiting_statistics(shard_id: str, checkpoint: str | None) -> ShardStatistics:
    """A shard that is not read yet because a parent is still being read."""
    return ShardStatistics(
        shard_id, "waiting_on_parents", 0, 0, 0, checkpoint, None, None, None, 0, 0
    )


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    """One worker of a fleet as this worker sees it, for one mapping."""

    worker_id: str
    leases: int  # unfinished leases of the mapping it owns, as last read (ours: as held)
    live: bool  # its heartbeat changed within failover_time on this worker's clock
    heartbeat: int | None  # its heartbeat counter as last read (None: not read yet)
    this_worker: bool = False


@dataclass(frozen=True, slots=True)
class MappingStatistics:
    uuid: str
    function_name: str
    event_source_arn: str
    state: str
    last_processing_result: str
    counters: MappingCounters
    shards: tuple[ShardStatistics, ...]
    leases: LeaseStatistics | None = None  # in a fleet: this worker's leases of the mapping
    workers: tuple[WorkerStatistics, ...] = ()  # in a fleet: every worker, by id

    @property
    def iterator_age_ms(self) -> int | None:
        ages = [s.iterator_age_ms for s in self.shards if s.iterator_age_ms is not None]
        return max(ages) if ages else None


@dataclass(frozen=True, slots=True)
class EngineStatistics:
    mappings: tuple[MappingStatistics, ...] = field(default_factory=tuple)

    def mapping(self, uuid: str) -> MappingStatistics:
        for m in self.mappings:
            if m.uuid == uuid:
                return m
        raise KeyError(uuid)
