"""The consumer through a real Kinesis API (moto): batch size, batch window, poll cadence,
starting positions, resume after restart, and a failing function retried without blocking
other shards."""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kinesis_esm import (
    Engine,
    EventSourceMappingConfig,
    KinesisSource,
    LambdaContext,
    MappingStatistics,
    MemoryCheckpointStore,
    RetrySettings,
    SQLiteCheckpointStore,
)
from kinesis_esm.source import GetRecordsResult, IteratorPosition
from tests.support.kinesis import (
    KinesisClient,
    StreamRecord,
    create_stream,
    list_shard_ids,
    put_records,
    wait_for,
)

pytestmark = pytest.mark.anyio

REGION = "us-east-1"


def ids(records: list[StreamRecord]) -> list[str]:
    return [f"{r.shard_id}:{r.sequence_number}" for r in records]


def by_shard(event_ids: list[str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for event_id in event_ids:
        grouped[event_id.split(":")[0]].append(event_id)
    return dict(grouped)


@dataclass
class Batch:
    at: float  # time.monotonic() when the handler got it
    ids: list[str]
    keys: list[str]


@dataclass
class Recorder:
    """A handler that records every batch it is given (thread-safe: sync handlers run in
    threads). ``fail_when`` makes it raise for a batch it returns True for."""

    fail_when: Callable[[Batch], bool] | None = None
    batches: list[Batch] = field(default_factory=list)
    failed: list[Batch] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: dict[str, Any], context: LambdaContext) -> None:
        records = event["Records"]
        batch = Batch(
            time.monotonic(),
            [r["eventID"] for r in records],
            [r["kinesis"]["partitionKey"] for r in records],
        )
        if self.fail_when is not None and self.fail_when(batch):
            with self._lock:
                self.failed.append(batch)
            raise RuntimeError(f"refusing {batch.ids[0]}..{batch.ids[-1]}")
        with self._lock:
            self.batches.append(batch)

    @property
    def ids(self) -> list[str]:
        with self._lock:
            return [i for b in self.batches for i in b.ids]

    def has(self, wanted: list[str]) -> bool:
        return set(wanted) <= set(self.ids)


class RecordingSource(KinesisSource):
    """The real Kinesis reader, noting each call: when, which shard, how many records."""

    def __init__(self, endpoint_url: str) -> None:
        super().__init__(endpoint_url=endpoint_url, region=REGION)
        self._shard_of: dict[str, str] = {}
        self.positions: dict[str, list[str]] = defaultdict(list)  # shard -> iterator positions
        self.calls: list[tuple[float, str, int]] = []  # (monotonic start, shard, records)

    async def get_shard_iterator(
        self, stream_arn: str, shard_id: str, position: IteratorPosition
    ) -> str:
        iterator = await super().get_shard_iterator(stream_arn, shard_id, position)
        self._shard_of[iterator] = shard_id
        self.positions[shard_id].append(str(position))
        return iterator

    async def get_records(self, stream_arn: str, iterator: str, limit: int) -> GetRecordsResult:
        started = time.monotonic()
        result = await super().get_records(stream_arn, iterator, limit)
        shard_id = self._shard_of.pop(iterator, "?")
        if result.next_iterator is not None:
            self._shard_of[result.next_iterator] = shard_id
        self.calls.append((started, shard_id, len(result.records)))
        return result

    def polled(self, shard_ids: set[str]) -> bool:
        """Every one of the shards has had at least one GetRecords answered."""
        return shard_ids <= {shard for _, shard, _ in self.calls}


@pytest.fixture
async def recording(moto: str) -> AsyncIterator[RecordingSource]:
    source = RecordingSource(moto)
    async with source:
        yield source


def mapping(arn: str, **settings: Any) -> EventSourceMappingConfig:
    settings.setdefault("starting_position", "TRIM_HORIZON")
    return EventSourceMappingConfig(function_name="consumer", event_source_arn=arn, **settings)


def engine(source: KinesisSource, store: Any = None, **kwargs: Any) -> Engine:
    return Engine(
        source=source,
        checkpoint_store=store if store is not None else MemoryCheckpointStore(),
        retry_settings=RetrySettings(initial=0.1, maximum=0.8),
        **kwargs,
    )


def records(prefix: str, count: int) -> list[tuple[str, bytes]]:
    return [(f"{prefix}-{i}", f"{prefix} {i}".encode()) for i in range(count)]


# Batch size and batch window


@pytest.mark.parametrize(("batch_size", "sizes"), [(1, [1] * 12), (5, [5, 5, 2]), (50, [12])])
async def test_batch_size_is_honoured_exactly(
    client: KinesisClient,
    recording: RecordingSource,
    stream_name: str,
    batch_size: int,
    sizes: list[int],
) -> None:
    arn = await create_stream(client, stream_name, 1)
    written = await put_records(client, stream_name, records("k", 12))
    handler = Recorder()
    async with engine(recording) as e:
        await e.add_mapping(mapping(arn, batch_size=batch_size), handler)
        await wait_for(lambda: handler.has(ids(written)), 10, message="every record")
    assert [len(b.ids) for b in handler.batches] == sizes
    assert handler.ids == ids(written)


async def test_batch_window_gathers_a_burst_into_one_batch_after_the_window(
    client: KinesisClient, recording: RecordingSource, stream_name: str
) -> None:
    """Records arriving over two polls wait for the window and go in one batch; the next
    window starts when that invocation completes."""
    window = 3  # a second of margin per poll, on a loaded machine too
    arn = await create_stream(client, stream_name, 1)
    first = await put_records(client, stream_name, records("a", 3))
    handler = Recorder()
    async with engine(recording) as e:
        started = time.monotonic()
        uuid = await e.add_mapping(
            mapping(arn, batch_size=100, maximum_batching_window_in_seconds=window), handler
        )

        def polled() -> int:
            return e.statistics().mapping(uuid).counters.polled_events

        await wait_for(lambda: polled() >= 3, 5, message="the first records to be polled")
        second = await put_records(client, stream_name, records("b", 3))  # polled a second later
        await wait_for(lambda: polled() >= 6, 5, message="the second records to be polled")
        assert handler.batches == [], "invoked before the window was over"
        await wait_for(lambda: handler.batches, window + 2, message="the windowed batch")
        batch = handler.batches[0]
        assert batch.ids == ids(first + second)
        assert batch.at - started >= window - 0.05

        # The next window is counted from the end of that invocation.
        third = await put_records(client, stream_name, records("c", 2))
        await wait_for(lambda: len(handler.batches) >= 2, window + 3, message="a second batch")
    assert len(handler.batches) == 2
    assert handler.batches[1].ids == ids(third)
    assert handler.batches[1].at - batch.at >= window - 0.05


async def test_full_batch_does_not_wait_for_the_window(
    client: KinesisClient, recording: RecordingSource, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 1)
    written = await put_records(client, stream_name, records("k", 5))
    handler = Recorder()
    async with engine(recording) as e:
        started = time.monotonic()
        config = mapping(arn, batch_size=5, maximum_batching_window_in_seconds=30)
        await e.add_mapping(config, handler)
        await wait_for(lambda: handler.batches, 5, message="the full batch")
    assert handler.batches[0].ids == ids(written)
    assert handler.batches[0].at - started < 2


# Poll cadence


@pytest.mark.parametrize("backlog", [0, 5], ids=["empty", "caught-up"])
async def test_idle_shard_is_polled_about_once_a_second(
    client: KinesisClient, recording: RecordingSource, stream_name: str, backlog: int
) -> None:
    """An empty shard, or one whose records were all read: one GetRecords a second."""
    arn = await create_stream(client, stream_name, 1)
    written = await put_records(client, stream_name, records("k", backlog))
    handler = Recorder()
    async with engine(recording) as e:
        uuid = await e.add_mapping(mapping(arn), handler)

        def calls() -> int:
            return e.statistics().mapping(uuid).counters.get_records_calls

        await wait_for(lambda: calls() >= 1 and handler.has(ids(written)), 5, message="caught up")
        first, began, already = calls(), time.monotonic(), len(recording.calls)
        await wait_for(lambda: calls() >= first + 3, 6, message="three more GetRecords")
        elapsed = time.monotonic() - began
        total = calls()
    assert 2.5 <= elapsed <= 4.2, f"3 polls of an idle shard took {elapsed:.2f}s"
    assert total - 1 <= len(recording.calls) <= total  # the last may be cut short by the stop
    idle = recording.calls[already - 1 :]
    assert all(n == 0 for _, _, n in idle[1:])
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(idle)]
    assert all(0.9 <= gap <= 1.6 for gap in gaps), gaps


async def test_full_polls_go_again_at_once_but_never_above_five_per_second(
    client: KinesisClient, recording: RecordingSource, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 1)
    written = await put_records(client, stream_name, records("k", 40))
    handler = Recorder()
    async with engine(recording) as e:
        config = mapping(arn, batch_size=10, max_buffered_records=10)
        await e.add_mapping(config, handler)
        await wait_for(lambda: handler.has(ids(written)), 10, message="every record")
    assert handler.ids == ids(written)
    full = [call for call in recording.calls if call[2] == 10]
    assert len(full) == 4
    starts = [call[0] for call in recording.calls]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.19, f"GetRecords calls closer than 0.2 s: {gaps}"
    # Four full polls back to back, not one a second.
    assert full[-1][0] - full[0][0] < 2.0, gaps


# Starting positions


async def test_trim_horizon_delivers_what_was_there_and_what_comes(
    client: KinesisClient, recording: RecordingSource, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 2)
    before = await put_records(client, stream_name, records("before", 10))
    handler = Recorder()
    async with engine(recording) as e:
        await e.add_mapping(mapping(arn, starting_position="TRIM_HORIZON"), handler)
        await wait_for(lambda: handler.has(ids(before)), 10, message="the earlier records")
        after = await put_records(client, stream_name, records("after", 10))
        await wait_for(lambda: handler.has(ids(after)), 10, message="the later records")
    assert by_shard(handler.ids) == by_shard(ids(before + after))  # once each, in order


async def test_latest_skips_what_was_there_and_delivers_what_comes(
    client: KinesisClient, recording: RecordingSource, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 2)
    before = await put_records(client, stream_name, records("before", 10))
    handler = Recorder()
    async with engine(recording) as e:
        await e.add_mapping(mapping(arn, starting_position="LATEST"), handler)
        shards = {r.shard_id for r in before}
        # LATEST is "after the tip when the iterator is taken": wait until every shard has one.
        await wait_for(lambda: recording.polled(shards), 5, message="every shard polled")
        after = await put_records(client, stream_name, records("after", 10))
        await wait_for(lambda: handler.has(ids(after)), 10, message="the later records")
    assert {s: p[0] for s, p in recording.positions.items()} == dict.fromkeys(shards, "LATEST")
    assert by_shard(handler.ids) == by_shard(ids(after))


async def test_at_timestamp_starts_at_the_first_record_at_or_after_it(
    client: KinesisClient, recording: RecordingSource, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 2)
    before = await put_records(client, stream_name, records("before", 10))
    boundary = time.time()
    # Arrival times have millisecond resolution: let the clock pass the boundary first.
    await wait_for(lambda: time.time() > boundary + 0.002, 1, message="the clock to move on")
    after = await put_records(client, stream_name, records("after", 10))
    handler = Recorder()
    async with engine(recording) as e:
        config = mapping(
            arn, starting_position="AT_TIMESTAMP", starting_position_timestamp=boundary
        )
        await e.add_mapping(config, handler)
        await wait_for(lambda: handler.has(ids(after)), 10, message="the later records")
    assert {r.shard_id for r in before} == {r.shard_id for r in after}  # both shards, both sides
    assert by_shard(handler.ids) == by_shard(ids(after))


# Resume after a restart


@pytest.mark.parametrize("starting_position", ["TRIM_HORIZON", "LATEST"])
async def test_restart_resumes_after_the_checkpoint(
    client: KinesisClient,
    recording: RecordingSource,
    stream_name: str,
    tmp_path: Path,
    starting_position: str,
) -> None:
    """Stop, put more, start again on the same SQLite file: nothing skipped, nothing delivered
    again. With LATEST, a shard that had no record before the stop has no checkpoint: what
    arrived there while the consumer was down must still be delivered."""
    arn = await create_stream(client, stream_name, 2)
    shards = set(await list_shard_ids(client, stream_name))
    db = tmp_path / "checkpoints.db"
    config = mapping(arn, starting_position=starting_position, batch_size=4)

    first_run = Recorder()
    store = SQLiteCheckpointStore(db)
    async with engine(recording, store) as e:
        uuid = await e.add_mapping(config, first_run)
        if starting_position == "TRIM_HORIZON":
            earlier = await put_records(client, stream_name, records("early", 10))
        else:
            await wait_for(lambda: recording.polled(shards), 5, message="every shard polled")
            earlier = await put_records(client, stream_name, records("early", 1))
        await wait_for(lambda: first_run.has(ids(earlier)), 10, message="the first records")
    checkpoints = await store.get_checkpoints(uuid)
    await store.aclose()
    assert by_shard(first_run.ids) == by_shard(ids(earlier))
    assert checkpoints == {s: i[-1].split(":")[1] for s, i in by_shard(ids(earlier)).items()}

    while_down = await put_records(client, stream_name, records("down", 10))
    assert {r.shard_id for r in while_down} == shards

    second_run = Recorder()
    store = SQLiteCheckpointStore(db)
    try:
        async with engine(recording, store) as e:
            assert await e.add_mapping(config, second_run) == uuid
            await wait_for(
                lambda: second_run.has(ids(while_down)), 10, message="the records put while down"
            )
    finally:
        await store.aclose()
    assert by_shard(second_run.ids) == by_shard(ids(while_down))


# A failing function


def mapping_stats(e: Engine, uuid: str) -> MappingStatistics:
    return e.statistics().mapping(uuid)


async def test_failing_batch_is_retried_with_backoff_and_other_shards_go_on(
    client: KinesisClient, recording: RecordingSource, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 2)
    written = await put_records(client, stream_name, records("k", 12))
    bad_shard = written[0].shard_id
    poison = written[0].partition_key  # a key the handler refuses while `failing` is set
    good_keys = [r.partition_key for r in written if r.shard_id != bad_shard]
    assert good_keys, "all records went to one shard"
    failing = threading.Event()
    failing.set()
    handler = Recorder(fail_when=lambda b: failing.is_set() and poison in b.keys)
    bad_ids = [i for i in ids(written) if i.startswith(bad_shard + ":")]
    good_ids = [i for i in ids(written) if not i.startswith(bad_shard + ":")]

    async with engine(recording) as e:
        uuid = await e.add_mapping(mapping(arn, batch_size=100), handler)
        await wait_for(lambda: len(handler.failed) >= 4, 5, message="four failed attempts")
        await wait_for(lambda: handler.has(good_ids), 5, message="the healthy shard's records")

        # The healthy shard keeps flowing while the other is stuck.
        more = await put_records(client, stream_name, [(k, b"more") for k in good_keys[:5]])
        await wait_for(lambda: handler.has(ids(more)), 5, message="new records, healthy shard")
        stats = mapping_stats(e, uuid)
        assert stats.counters.errors >= 4
        assert stats.counters.errors == len(handler.failed)
        stuck = {s.shard_id: s for s in stats.shards}[bad_shard]
        assert stuck.checkpoint is None  # the failing shard did not advance
        assert not set(bad_ids) & set(handler.ids)  # nor delivered anything past the failure

        # The same batch each time, with growing delays (capped exponential back-off).
        assert all(f.ids == bad_ids for f in handler.failed)
        times = [f.at for f in handler.failed]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 0.04, gaps  # never a hot loop (initial 0.1, jittered to >= half)
        assert gaps[2] > gaps[0], gaps  # [0.2, 0.4] after [0.05, 0.1]

        failing.clear()  # the failure clears: the batch goes through on its next retry
        await wait_for(lambda: handler.has(bad_ids), 5, message="the retried batch to succeed")
        errors_then = mapping_stats(e, uuid).counters.errors
        after = await put_records(client, stream_name, records("after", 10))
        await wait_for(lambda: handler.has(ids(after)), 5, message="records after recovery")
        stats = mapping_stats(e, uuid)
    assert stats.counters.errors == errors_then  # no failure since
    assert stats.last_processing_result == "OK"
    assert by_shard(handler.ids) == by_shard(ids(written + more + after))
    checkpoints = {s.shard_id: s.checkpoint for s in stats.shards}
    assert checkpoints == {s: i[-1].split(":")[1] for s, i in by_shard(handler.ids).items()}


async def test_stop_during_backoff_is_prompt_and_the_failed_batch_comes_again(
    client: KinesisClient, recording: RecordingSource, stream_name: str, tmp_path: Path
) -> None:
    """A stop does not wait out a retry back-off, and does not checkpoint past the failing
    batch: after a restart on the same SQLite file, it is delivered, then the rest."""
    arn = await create_stream(client, stream_name, 1)
    written = await put_records(client, stream_name, records("k", 6))
    db = tmp_path / "checkpoints.db"
    config = mapping(arn, batch_size=3)

    refusing = Recorder(fail_when=lambda b: True)
    store = SQLiteCheckpointStore(db)
    try:
        slow_retries = Engine(
            source=recording,
            checkpoint_store=store,
            retry_settings=RetrySettings(initial=10, maximum=30),  # the first wait is >= 5 s
        )
        async with slow_retries as e:
            uuid = await e.add_mapping(config, refusing)
            await wait_for(lambda: refusing.failed, 10, message="a failed attempt")
            stopping = time.monotonic()
        stop_took = time.monotonic() - stopping
        checkpoints = await store.get_checkpoints(uuid)
    finally:
        await store.aclose()
    assert stop_took < 2, f"the stop waited {stop_took:.1f}s for a retry back-off"
    assert len(refusing.failed) == 1
    assert refusing.failed[0].ids == ids(written[:3])
    assert checkpoints == {}

    healthy = Recorder()
    store = SQLiteCheckpointStore(db)
    try:
        async with engine(recording, store) as e:
            await e.add_mapping(config, healthy)
            await wait_for(lambda: healthy.has(ids(written)), 10, message="every record")
    finally:
        await store.aclose()
    assert [b.ids for b in healthy.batches] == [ids(written[:3]), ids(written[3:])]


async def test_stop_during_the_batch_window_is_prompt_and_loses_nothing(
    client: KinesisClient, recording: RecordingSource, stream_name: str, tmp_path: Path
) -> None:
    """Records read but still waiting for the window when the engine stops are not lost:
    a restart reads them again from the checkpoint."""
    arn = await create_stream(client, stream_name, 1)
    written = await put_records(client, stream_name, records("k", 3))
    db = tmp_path / "checkpoints.db"
    waiting = Recorder()
    store = SQLiteCheckpointStore(db)
    try:
        async with engine(recording, store) as e:
            config = mapping(arn, maximum_batching_window_in_seconds=60)
            uuid = await e.add_mapping(config, waiting)

            def polled() -> int:
                return e.statistics().mapping(uuid).counters.polled_events

            await wait_for(lambda: polled() >= 3, 5, message="the records to be read")
            stopping = time.monotonic()
        stop_took = time.monotonic() - stopping
        checkpoints = await store.get_checkpoints(uuid)
    finally:
        await store.aclose()
    assert stop_took < 2, f"the stop waited {stop_took:.1f}s for the batch window"
    assert waiting.batches == [] and checkpoints == {}

    after = Recorder()
    store = SQLiteCheckpointStore(db)
    try:
        async with engine(recording, store) as e:
            await e.add_mapping(mapping(arn), after)
            await wait_for(lambda: after.has(ids(written)), 10, message="every record")
    finally:
        await store.aclose()
    assert after.ids == ids(written)
