"""One shard: a reading task (``_readers``: polling or enhanced fan-out) feeding long-lived
lane tasks, and the low-water checkpoint. Records read pass KPL de-aggregation and the
mapping's filter before they reach the lanes (``_admit``)."""

from __future__ import annotations

import asyncio
import logging
import time

import anyio

from .._backoff import Backoff
from .._errors import (
    AccessDeniedError,
    SourceError,
    StreamNotFoundError,
    ThrottledError,
)
from .._statistics import MappingCounters, ShardStatistics
from ..events._lambda import MAX_EVENT_BYTES, USER_RECORD_OVERHEAD, event_record_overhead
from ..events._record import Record
from ..source import ChildShard, IteratorPosition, ShardInfo, StreamSource
from ..source._consumers import FanOutClient
from ..source._kpl import expand_all
from ..source._subscribe import ShardSubscriber
from ..state import SHARD_END
from ._batching import batch_count, event_bytes
from ._budget import ShardReadBudget
from ._lanes import Lane, ShardScheduler
from ._ports import (
    BatchHandler,
    CheckpointCommitter,
    LeaseCheck,
    MappingIdentity,
    ShardWindowing,
    StatusSink,
)
from ._readers import poll_shard, read_statistics, subscribe_shard
from ._settings import PollSettings

__all__ = ["ShardConsumer"]

log = logging.getLogger("kinesis_esm.shard")


class ShardConsumer:
    """One shard of one mapping. It knows the mapping only through the small objects it is
    given: identity and settings, the source, a checkpoint committer, a batch handler, and the
    sinks for counts and status."""

    def __init__(
        self,
        shard: ShardInfo,
        position: IteratorPosition,
        checkpoint: str | None,
        *,
        identity: MappingIdentity,
        source: StreamSource,
        committer: CheckpointCommitter,
        handler: BatchHandler,
        counters: MappingCounters,
        status: StatusSink,
        poll_settings: PollSettings,
        fan_out: FanOutClient | None = None,
        consumer_arn: str | None = None,
        lease: LeaseCheck | None = None,
        windows: ShardWindowing | None = None,
        read_budget: ShardReadBudget | None = None,
    ) -> None:
        self.shard = shard
        self.windows = windows  # tumbling windows: they run the (single) lane, state is stored
        self.lease = lease  # in a fleet: asked before each batch; None: the shard is ours
        self.position = position
        self.identity = identity
        self.source = source
        self.committer = committer
        self.handler = handler
        self.counters = counters
        self.status = status
        self.poll_settings = poll_settings
        self.fan_out = fan_out  # with consumer_arn: read by SubscribeToShard (enhanced fan-out)
        self.consumer_arn = consumer_arn
        self.read_budget = read_budget  # GetRecords turns shared with the process's other mappings
        self.subscriber: ShardSubscriber | None = None
        cfg = identity.config
        self.config = cfg
        self.scheduler = ShardScheduler(cfg.parallelization_factor)
        self.max_buffered = cfg.buffered_records_limit
        self.event_source = identity.event_source(shard.shard_id)
        self.overhead = event_record_overhead(self.event_source)
        self._deaggregate = cfg.deaggregate
        self._resume_within: tuple[str, int] | None = None
        if cfg.deaggregate:
            self.overhead += USER_RECORD_OVERHEAD
            if checkpoint is not None and ":" in checkpoint:  # "<sequence>:<sub-sequence>"
                sequence, _, sub = checkpoint.partition(":")
                self._resume_within = (sequence, int(sub))
        self.state = "polling"
        self.checkpoint = checkpoint
        self.last_read_sequence: str | None = None
        self.ended = False
        self.lost = False  # a checkpoint write was refused (fencing)
        self.child_shards: list[ChildShard] = []
        self.iterator_age_ms: int | None = None
        self.millis_behind_latest: int | None = None
        self.records_polled = 0
        self.records_invoked = 0
        self._stopping = False
        self._polling_done = False
        self._lane_events = [anyio.Event() for _ in self.scheduler.lanes]
        self._space = anyio.Event()
        self._stop_event = anyio.Event()
        self._commit_lock = asyncio.Lock()  # uncontended: far cheaper than anyio.Lock
        self._poll_scope: anyio.CancelScope | None = None

    # lifecycle

    async def run(self) -> bool:
        """Consume until stopped or the shard's end; True once SHARD_END is checkpointed."""
        async with anyio.create_task_group() as tg:
            for lane in self.scheduler.lanes:
                tg.start_soon(self._lane_loop, lane)
            with anyio.CancelScope() as self._poll_scope:
                if not self._stopping:
                    await self._read()
            self._polling_done = True
            self._wake_all()
        if self.ended and not self._stopping and self.scheduler.buffered == 0:
            if not await self.committer.commit(self.shard.shard_id, SHARD_END):
                self._lose()
                self.state = "lost"
                return False
            self.checkpoint = SHARD_END
            self.state = "ended"
            return True
        self.state = "stopped"
        return False

    def stop(self) -> None:
        """Stop polling; lanes finish their in-flight batch, buffered records are left."""
        self._stopping = True
        self._stop_event.set()
        if self._poll_scope is not None:
            self._poll_scope.cancel()
        self._wake_all()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def shard_id(self) -> str:
        return self.shard.shard_id

    def _wake_all(self) -> None:
        for event in self._lane_events:
            event.set()
        self._space.set()

    # reading (the loops are in _readers: polling GetRecords, or an enhanced fan-out subscription)

    async def _read(self) -> None:
        if self.fan_out is None or self.consumer_arn is None:
            await poll_shard(self)
            return
        self.subscriber = self.fan_out.subscriber(
            self.consumer_arn, self.shard.shard_id, self.resume_position()
        )
        await subscribe_shard(self, self.subscriber)

    def resume_position(self) -> IteratorPosition:
        if self.last_read_sequence is not None:  # after the last record read, not the checkpoint
            return IteratorPosition.after(self.last_read_sequence)
        return self.position

    async def wait_for_room(self) -> None:
        """Back-pressure: read again once a batch or half the bound is free, not per record."""
        room_needed = max(
            1, min(self.max_buffered, max(self.config.batch_size, self.max_buffered // 2))
        )
        while self.max_buffered - self.scheduler.buffered < room_needed:
            self._space = anyio.Event()
            await self._space.wait()

    @property
    def room(self) -> int:
        return self.max_buffered - self.scheduler.buffered

    async def accept(self, records: list[Record], millis_behind_latest: int | None) -> None:
        """Records read from the shard, in order, handed to the lanes."""
        self.status.source_recovered()
        self.millis_behind_latest = millis_behind_latest
        if records:
            self.records_polled += len(records)
            self.counters.polled_events += len(records)
            self.last_read_sequence = records[-1].sequence_number
            if self._admit(records):
                await self.commit()  # the checkpoint may pass filtered-out records now

    def end(self, child_shards: list[ChildShard]) -> None:
        """The shard is read to its end; its children are known."""
        self.ended = True
        self.child_shards = child_shards

    def _admit(self, records: list[Record]) -> bool:
        """Hand records read to the lanes: KPL user records when de-aggregating, filtered by
        FilterCriteria. True if some were filtered out (they count as done at once)."""
        if self._deaggregate:
            records = self._user_records(records)
        keep = None
        record_filter = self.identity.record_filter
        if record_filter is not None and records:
            keep = [record_filter.matches(r) for r in records]
            self.counters.filtered_out_events += len(keep) - sum(keep)
        self.scheduler.ingest(records, keep)
        for event in self._lane_events:
            event.set()
        return keep is not None and not all(keep)

    def _user_records(self, records: list[Record]) -> list[Record]:
        pairs, errors = expand_all(records)
        for record, error in errors:  # delivered whole, as KCL does, and counted
            self.counters.deaggregation_errors += 1
            log.warning(
                "%s: record %s is not a valid KPL aggregate (%s); delivered as it is",
                self.shard.shard_id,
                record.sequence_number,
                error,
            )
        users = [record for record, _ in pairs]
        if self._resume_within is not None:  # restarted inside an aggregate: skip what was done
            sequence, done = self._resume_within
            self._resume_within = None
            users = [
                r
                for r in users
                if r.sequence_number != sequence
                or (r.sub_sequence_number is not None and r.sub_sequence_number > done)
            ]
        return users

    def restart_after_trim(self, position: IteratorPosition, exc: SourceError) -> None:
        # The checkpoint is older than the stream's retention: what lay between is gone. Count
        # the gap, say so loudly, and go on from the oldest record rather than loop or crash.
        self.counters.retention_gaps += 1
        log.error(
            "%s: %s is no longer in the stream (%s); records after it were trimmed by retention "
            "and are lost; restarting at TRIM_HORIZON",
            self.shard.shard_id,
            position,
            exc,
        )
        self.last_read_sequence = None
        self.position = IteratorPosition("TRIM_HORIZON")

    async def source_failed(self, exc: SourceError, backoff: Backoff) -> None:
        counters = self.counters
        counters.source_errors += 1
        delay = backoff.next_delay()
        if isinstance(exc, ThrottledError):
            counters.throttles += 1
        if isinstance(exc, StreamNotFoundError | AccessDeniedError):
            self.status.source_problem(exc)
            delay = min(self.poll_settings.problem_backoff_max, delay * 4)
        log.warning("%s: %s; retrying in %.1fs", self.shard.shard_id, exc, delay)
        await anyio.sleep(delay)

    # lanes

    async def _wait_lane(self, number: int, seconds: float | None) -> None:
        event = self._lane_events[number]
        with anyio.move_on_after(seconds):
            await event.wait()
        if event.is_set():
            self._lane_events[number] = anyio.Event()

    def _batch_ready(self, lane: Lane) -> bool:
        cfg = self.config
        if lane.count >= cfg.batch_size or self._polling_done:
            return True
        # the 6 MB cap is reached before BatchSize: no point waiting for the window
        recs = lane.peek(lane.count)
        return batch_count(recs, cfg.batch_size, self.overhead) < len(recs)

    @property
    def polling_done(self) -> bool:
        return self._polling_done

    async def wait_lane(self, number: int, seconds: float | None) -> None:
        await self._wait_lane(number, seconds)

    def holds_shard(self) -> bool:
        """At a batch boundary: False (and the shard stops) if a fleet's lease is not held."""
        if self.lease is not None and not self.lease.holds(self.shard.shard_id):
            self._lose()
            return False
        return True

    async def _lane_loop(self, lane: Lane) -> None:
        if self.windows is not None:
            await self.windows.run_lane(self, lane)
            return
        cfg = self.config
        window = cfg.maximum_batching_window_in_seconds
        handler = self.handler
        window_start = time.monotonic()
        while not self._stopping:
            if lane.count == 0:
                if self._polling_done:
                    return
                await self._wait_lane(lane.number, None)
                continue
            if window > 0:
                remaining = window_start + window - time.monotonic()
                if remaining > 0 and not self._batch_ready(lane):
                    await self._wait_lane(lane.number, remaining)
                    continue
            if self.lease is not None and not self.lease.holds(self.shard.shard_id):
                self._lose()  # a batch boundary: invoke nothing more for a shard not held
                return
            n = batch_count(lane.peek(cfg.batch_size), cfg.batch_size, self.overhead)
            batch = lane.take(n)
            if n == 1 and self._oversized(batch.records[0]):
                self.counters.oversized_batches += 1
                log.warning(
                    "%s: record %s exceeds the 6 MB event limit; sending it alone",
                    self.shard.shard_id,
                    batch.records[0].sequence_number,
                )
            self.records_invoked += n
            await handler.process(self, lane, batch)
            window_start = time.monotonic()
            await self.commit()

    def _lose(self) -> None:
        """Fenced: another worker holds the shard now. Stop at the next batch boundary, and
        write nothing more (the new owner resumes from the last checkpoint it can see)."""
        if not self.lost:
            self.lost = True
            log.warning("%s: the lease was lost; stopping, no further checkpoints", self.shard_id)
            self.stop()

    def _oversized(self, record: Record) -> bool:
        return event_bytes([record], self.overhead) > MAX_EVENT_BYTES

    async def commit(self, *, force: bool = False) -> None:
        """Write the low-water mark if it moved, and let the poller refill. With tumbling
        windows the state goes with it (``force``: also when the mark did not move)."""
        async with self._commit_lock:
            sequence = self.scheduler.update_low_water()
            if self.windows is not None:
                await self._commit_windowed(sequence, force)
            elif sequence is not None and not self.lost:
                if await self.committer.commit(self.shard.shard_id, sequence):
                    self.checkpoint = sequence
                else:
                    self._lose()
        self._space.set()

    async def _commit_windowed(self, sequence: str | None, force: bool) -> None:
        # under the commit lock; a final invocation changes the state without records (force)
        if sequence is None and force:
            sequence = self.checkpoint
        if sequence is None or self.lost or self.windows is None:
            return
        state = self.windows.stored_state()
        if await self.committer.commit(self.shard.shard_id, sequence, window_state=state):
            self.checkpoint = sequence
        else:
            self._lose()

    async def sleep_unless_stopped(self, delay: float) -> bool:
        """Sleep for a retry back-off; True if the shard was stopped meanwhile."""
        with anyio.move_on_after(delay):
            await self._stop_event.wait()
        return self._stopping

    def statistics(self) -> ShardStatistics:
        return ShardStatistics(
            shard_id=self.shard.shard_id,
            state=self.state,
            lanes=len(self.scheduler.lanes),
            lanes_busy=self.scheduler.busy_lanes(),
            records_buffered=self.scheduler.buffered,
            checkpoint=self.checkpoint,
            highest_sequence_read=self.scheduler.highest_sequence,
            iterator_age_ms=self.iterator_age_ms,
            millis_behind_latest=self.millis_behind_latest,
            records_polled=self.records_polled,
            records_invoked=self.records_invoked,
            **read_statistics(self.consumer_arn, self.subscriber),
        )
