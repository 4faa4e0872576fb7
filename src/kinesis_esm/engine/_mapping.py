"""One event source mapping at run time: shard discovery, parent-before-child, shard tasks.

Start positions: on a mapping's first start, the shards listed then start at StartingPosition
and shards found later (children of a reshard) start at their first record. On later starts a
stored checkpoint always wins; a shard with none starts at TRIM_HORIZON / AT_TIMESTAMP as
configured, and for LATEST at the time the mapping first started, so records that arrived while
the daemon was down are not skipped.
"""

from __future__ import annotations

import logging
import time

import anyio

from .._errors import SourceError
from .._statistics import MappingCounters, MappingStatistics, waiting_statistics
from ..config import EventSourceMappingConfig, stable_uuid
from ..functions import Function
from ..pipeline._budget import ShardReadBudget
from ..pipeline._consumer import ShardConsumer
from ..pipeline._ports import MappingIdentity, StoreCommitter
from ..pipeline._processor import BatchProcessor
from ..pipeline._settings import PollSettings, RetrySettings
from ..pipeline._windowed import WindowedLanes
from ..policy._filters import RecordFilter
from ..policy._windows import MAX_STATE_BYTES
from ..source import IteratorPosition, ShardInfo, StreamSource
from ..source._consumers import FanOutClient
from ..state import SHARD_END, CheckpointStore

__all__ = ["MappingRunner"]

log = logging.getLogger("kinesis_esm.mapping")


class MappingRunner:
    def __init__(
        self,
        config: EventSourceMappingConfig,
        function: Function,
        source: StreamSource,
        store: CheckpointStore,
        *,
        poll_settings: PollSettings | None = None,
        retry_settings: RetrySettings | None = None,
        shard_sync_interval: float = 60.0,
        invoke_identity_arn: str | None = None,
        owns_function: bool = False,
        fan_out: FanOutClient | None = None,
        read_budget: ShardReadBudget | None = None,
    ) -> None:
        self.config = config
        self.function = function
        self._owns_function = owns_function
        self.fan_out = fan_out
        self.read_budget = read_budget
        # enhanced fan-out: the consumer named by the ARN, or registered at start
        self.consumer_arn: str | None = config.consumer_arn
        self.source = source
        self.store = store
        self.uuid = config.uuid or stable_uuid(config.function_name, config.event_source_arn)
        self.stream_arn = config.stream_arn
        self.region = config.region
        self.invoke_identity_arn = (
            invoke_identity_arn or f"arn:aws:iam::{config.account_id}:role/kinesis-esm"
        )
        self.poll_settings = poll_settings or PollSettings()
        self.retry_settings = retry_settings or RetrySettings()
        self.shard_sync_interval = shard_sync_interval
        filters = config.filter_criteria.filters if config.filter_criteria else ()
        self.identity = MappingIdentity(
            self.uuid,
            config,
            self.invoke_identity_arn,
            RecordFilter.compile([f.pattern for f in filters]) if filters else None,
        )
        self.counters = MappingCounters()
        self.committer = StoreCommitter(store, self.uuid)
        self.processor = BatchProcessor(
            self.identity,
            function,
            counters=self.counters,
            status=self,
            retry_settings=self.retry_settings,
        )
        self.state = "Creating"
        self.last_processing_result = "No records processed"
        self.problem: str | None = None
        self._consumers: dict[str, ShardConsumer] = {}
        self._finished: set[str] = set()
        self._waiting: dict[str, str | None] = {}  # children waiting on parents: checkpoint
        self._announced_children: dict[str, ShardInfo] = {}  # from ChildShards at a shard's end
        self._first_listing: set[str] | None = None
        self._first_start = False
        self._started_at = 0.0
        self._stopping = False
        self._sync_requested = anyio.Event()
        self._stop_event = anyio.Event()
        self.stopped = anyio.Event()

    # problem state, reported through LastProcessingResult

    def source_problem(self, exc: SourceError) -> None:
        message = f"PROBLEM: {exc}"
        if self.problem != message:
            log.error("mapping %s: %s", self.uuid, exc)
        self.problem = message
        self.last_processing_result = message

    def processing_result(self, result: str) -> None:
        self.last_processing_result = result

    def source_recovered(self) -> None:
        if self.problem is not None:
            log.info("mapping %s: stream reachable again", self.uuid)
            self.problem = None
            self.last_processing_result = "No records processed"

    # lifecycle

    async def run(self) -> None:
        try:
            started_at = await self.store.get_started_at(self.uuid)
            self._first_start = started_at is None
            if started_at is None:
                started_at = time.time()
                await self.store.set_started_at(self.uuid, started_at)
            self._started_at = started_at
            if self.consumer_arn is None and self.config.register_consumer is not None:
                await self._register_consumer()
            async with anyio.create_task_group() as tg:
                backoff = 0.5
                while not self._stopping:
                    synced = await self._sync_shards(tg)
                    if synced and self.state == "Creating":
                        self.state = "Enabled"
                    if synced:
                        wait, backoff = self.shard_sync_interval, 0.5
                    else:  # a failed ListShards: retry soon, backing off while it keeps failing
                        wait = backoff
                        backoff = min(backoff * 2, self.poll_settings.problem_backoff_max)
                    with anyio.move_on_after(wait):
                        await self._sync_requested.wait()
                    self._sync_requested = anyio.Event()
        finally:
            with anyio.CancelScope(shield=True):
                await self.processor.aclose()  # the on-failure destination's client
                close = getattr(self.function, "aclose", None)
                if self._owns_function and close is not None:
                    await close()  # environments, HTTP sessions, clients
            self.stopped.set()

    def stop(self) -> None:
        self._stopping = True
        self._sync_requested.set()
        for consumer in self._consumers.values():
            consumer.stop()

    async def _run_shard(self, consumer: ShardConsumer) -> None:
        shard_id = consumer.shard.shard_id
        ended = await consumer.run()
        if ended and not self._stopping:
            self._finished.add(shard_id)
            del self._consumers[shard_id]
            log.info(
                "mapping %s: %s ended; children %s",
                self.uuid,
                shard_id,
                [c.shard_id for c in consumer.child_shards],
            )
            for child in consumer.child_shards:  # known before ListShards may show them
                parents = child.parent_shards
                self._announced_children.setdefault(
                    child.shard_id,
                    ShardInfo(
                        child.shard_id,
                        parent_shard_id=parents[0] if parents else None,
                        adjacent_parent_shard_id=parents[1] if len(parents) > 1 else None,
                    ),
                )
            self._sync_requested.set()  # start the children now

    async def _sync_shards(self, tg: anyio.abc.TaskGroup) -> bool:
        try:
            shards = await self.source.list_shards(self.stream_arn)
            checkpoints = await self.store.get_checkpoints(self.uuid)
        except SourceError as exc:
            self.source_problem(exc)
            return False
        self.source_recovered()
        listed = {s.shard_id for s in shards}
        if self._first_listing is None:
            self._first_listing = listed
        for shard_id in listed & self._announced_children.keys():
            del self._announced_children[shard_id]  # the listing's fuller info wins
        shards = [*shards, *self._announced_children.values()]
        known = listed | self._announced_children.keys() | self._consumers.keys()
        done = self._finished | {s for s, cp in checkpoints.items() if cp == SHARD_END}
        self._waiting = {}
        for shard in shards:
            if self._stopping:
                break
            running = self._consumers.get(shard.shard_id)
            if running is not None:
                running.shard = shard  # learns that its shard closed, and where it ends
                continue
            if shard.shard_id in done:
                continue
            if any(p in known and p not in done for p in shard.parents):
                self._waiting[shard.shard_id] = checkpoints.get(shard.shard_id)
                continue  # parent before child
            position = self._start_position(shard, checkpoints.get(shard.shard_id))
            consumer = ShardConsumer(
                shard,
                position,
                checkpoints.get(shard.shard_id),
                identity=self.identity,
                source=self.source,
                committer=self.committer,
                handler=self.processor,
                counters=self.counters,
                status=self,
                poll_settings=self.poll_settings,
                fan_out=self.fan_out,
                consumer_arn=self.consumer_arn,
                windows=await self._windows_for(shard.shard_id),
                read_budget=self.read_budget,
            )
            self._consumers[shard.shard_id] = consumer
            log.info("mapping %s: %s starts at %s", self.uuid, shard.shard_id, position)
            tg.start_soon(self._run_shard, consumer)
        return True

    async def _windows_for(self, shard_id: str) -> WindowedLanes | None:
        """Tumbling windows for a shard starting, from the state stored with its checkpoint
        (none for a new shard, so children start fresh)."""
        if not self.config.tumbling_window_in_seconds:
            return None
        return self._restore_windows(
            shard_id, await self.store.get_window_state(self.uuid, shard_id)
        )

    def _restore_windows(
        self, shard_id: str, stored: bytes | None, *, max_state_bytes: int = MAX_STATE_BYTES
    ) -> WindowedLanes | None:
        """The shard's windows from a stored state (None: fresh), wherever it was stored;
        None when the mapping has no windows."""
        length = self.config.tumbling_window_in_seconds
        if not length:
            return None
        return WindowedLanes.restore(
            self.processor,
            length,
            stored,
            idle_close_seconds=self.poll_settings.window_idle_close,
            shard_id=shard_id,
            max_state_bytes=max_state_bytes,
        )

    async def _register_consumer(self) -> None:
        """kinesis-esm's ``register_consumer``: the stream's consumer of that name, registered
        if missing (and left registered on exit: other workers of the fleet may read by it)."""
        name = self.config.register_consumer
        assert self.fan_out is not None and name is not None
        backoff = 0.5
        while not self._stopping:
            try:
                self.consumer_arn = await self.fan_out.register_consumer(self.stream_arn, name)
                log.info("mapping %s: reading through consumer %s", self.uuid, self.consumer_arn)
                self.source_recovered()
                return
            except SourceError as exc:
                self.source_problem(exc)
                with anyio.move_on_after(backoff):
                    await self._sync_requested.wait()
                backoff = min(backoff * 2, self.poll_settings.problem_backoff_max)

    def _start_position(self, shard: ShardInfo, checkpoint: str | None) -> IteratorPosition:
        if checkpoint is not None:
            sequence, within, _ = checkpoint.partition(":")
            if within:  # inside a KPL aggregate: read it again, the consumer skips what was done
                return IteratorPosition("AT_SEQUENCE_NUMBER", sequence_number=sequence)
            return IteratorPosition.after(checkpoint)
        cfg = self.config
        first_listing = self._first_listing or set()
        if self._first_start and shard.shard_id not in first_listing:
            return IteratorPosition("TRIM_HORIZON")  # a child found after the mapping started
        if cfg.starting_position == "AT_TIMESTAMP":
            return IteratorPosition("AT_TIMESTAMP", timestamp=cfg.starting_position_timestamp)
        if cfg.starting_position == "LATEST":
            if self._first_start:
                return IteratorPosition("LATEST")
            return IteratorPosition("AT_TIMESTAMP", timestamp=self._started_at)
        return IteratorPosition("TRIM_HORIZON")

    def statistics(self) -> MappingStatistics:
        return MappingStatistics(
            uuid=self.uuid,
            function_name=self.config.function_name,
            event_source_arn=self.config.event_source_arn,
            state=self.state,
            last_processing_result=self.last_processing_result,
            counters=MappingCounters(
                **{name: getattr(self.counters, name) for name in MappingCounters.__slots__}
            ),
            shards=(
                *(c.statistics() for c in self._consumers.values()),
                *(waiting_statistics(s, cp) for s, cp in self._waiting.items()),
            ),
        )
