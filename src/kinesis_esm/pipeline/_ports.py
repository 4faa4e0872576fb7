"""What a shard's pipeline needs from the mapping around it, as small objects and Protocols.

A shard consumer and a batch processor receive these instead of the mapping runner, so either
can be built and tested alone, and nothing in the pipeline imports the layers above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .._errors import SourceError
from ..config import EventSourceMappingConfig
from ..events._lambda import EventSource
from ..policy._filters import RecordFilter
from ..state import CheckpointStore
from ._lanes import Batch, Lane

__all__ = [
    "BatchHandler",
    "CheckpointCommitter",
    "LeaseCheck",
    "MappingIdentity",
    "ShardHandle",
    "ShardWindowing",
    "StatusSink",
    "StoreCommitter",
    "WindowedShardHandle",
]


@dataclass(frozen=True, slots=True)
class MappingIdentity:
    """A mapping's identity and settings, as its shards and batches see them."""

    uuid: str
    config: EventSourceMappingConfig
    invoke_identity_arn: str
    # FilterCriteria compiled once per mapping; None: every record is handed on
    record_filter: RecordFilter | None = field(default=None, compare=False)

    @property
    def stream_arn(self) -> str:
        return self.config.stream_arn

    @property
    def region(self) -> str:
        return self.config.region

    def event_source(self, shard_id: str) -> EventSource:
        return EventSource(
            self.stream_arn,
            shard_id,
            self.region,
            self.invoke_identity_arn,
            user_records=self.config.deaggregate,
        )


class StatusSink(Protocol):
    """Where a mapping's LastProcessingResult and source problems are reported."""

    def source_problem(self, exc: SourceError) -> None: ...

    def source_recovered(self) -> None: ...

    def processing_result(self, result: str) -> None: ...


class CheckpointCommitter(Protocol):
    """Writes one mapping's shard checkpoints (the place where a lease fences them).

    ``window_state``: a tumbling window's state, stored with the checkpoint in one write (the
    window resumes from exactly what the checkpointed records produced). Returns False when
    the write was refused because this worker no longer holds the shard: the shard stops at
    once, without further checkpoints or invocations."""

    async def commit(
        self, shard_id: str, sequence: str, *, window_state: bytes | None = None
    ) -> bool: ...


class LeaseCheck(Protocol):
    """Whether this worker still holds a shard's lease (in a fleet), asked before each batch.

    It turns False by itself once renewals have failed for too long, so a worker that was
    paused or cut off invokes nothing more for the shard, even before it hears of the loss."""

    def holds(self, shard_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class StoreCommitter:
    """Checkpoints straight into a CheckpointStore, under the mapping's UUID."""

    store: CheckpointStore
    uuid: str

    async def commit(
        self, shard_id: str, sequence: str, *, window_state: bytes | None = None
    ) -> bool:
        if window_state is None:
            await self.store.set_checkpoint(self.uuid, shard_id, sequence)
        else:
            await self.store.set_window_checkpoint(self.uuid, shard_id, sequence, window_state)
        return True


class ShardHandle(Protocol):
    """What a batch processor needs of the shard whose batch it runs."""

    event_source: EventSource
    iterator_age_ms: int | None

    @property
    def shard_id(self) -> str: ...

    async def commit(self) -> None: ...

    async def sleep_unless_stopped(self, delay: float) -> bool: ...


class BatchHandler(Protocol):
    """Runs one lane batch to completion (the shard commits after it returns)."""

    async def process(self, shard: ShardHandle, lane: Lane, batch: Batch) -> None: ...


class WindowedShardHandle(ShardHandle, Protocol):
    """What a shard's tumbling-window lane loop needs of the shard (``_consumer``)."""

    config: EventSourceMappingConfig
    overhead: int  # per-record bytes of the event beyond data and key
    ended: bool  # read to its end: no more records will come
    millis_behind_latest: int | None
    records_invoked: int

    @property
    def stopping(self) -> bool: ...

    @property
    def polling_done(self) -> bool: ...

    async def wait_lane(self, number: int, seconds: float | None) -> None:
        """Until records reach the lane, the shard stops, or ``seconds`` pass."""
        ...

    def holds_shard(self) -> bool:
        """Asked before each invocation: False (the shard stops) once a fleet's lease is lost."""
        ...

    async def commit(self, *, force: bool = False) -> None:
        """Write the low-water checkpoint (with the window state); ``force``: also when it did
        not move, for a window state that changed without records (a final invocation)."""
        ...


class ShardWindowing(Protocol):
    """One shard's tumbling windows (``_windowed.WindowedLanes``): it runs the shard's lane
    instead of the plain lane loop, and gives the state stored with each checkpoint."""

    async def run_lane(self, shard: WindowedShardHandle, lane: Lane) -> None: ...

    def stored_state(self) -> bytes: ...
