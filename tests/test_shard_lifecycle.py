"""Shard lifecycle policy on the in-memory stream: resharding, expiry, trimming, faults, rates.

Fast and deterministic: `MemoryStream` splits and merges like Kinesis (closed shards end with a
null NextShardIterator and ChildShards), and the wrappers of `tests/support/faulty_source.py`
inject expired iterators, trimmed positions, throttles and failures at chosen calls.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from kinesis_esm import (
    Engine,
    EventSourceMappingConfig,
    MemoryCheckpointStore,
    MemoryStream,
    PollSettings,
    RetrySettings,
    stable_uuid,
)
from kinesis_esm._errors import AccessDeniedError, StreamNotFoundError, TransientSourceError
from kinesis_esm.source import GetRecordsResult, IteratorPosition, ShardInfo, StreamSource
from kinesis_esm.state import SHARD_END, CheckpointStore
from tests.support.faulty_source import (
    Deliveries,
    ExpiringSource,
    FailingShardSource,
    InjectingSource,
    NeverEndingSource,
    RecordingSource,
    TrimmingSource,
    throttled,
)
from tests.support.http_faults import max_calls_in_window
from tests.support.kinesis import wait_for

pytestmark = pytest.mark.anyio

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/lifecycle"
FUNCTION = "lifecycle"
UUID = stable_uuid(FUNCTION, ARN)
SHARD0, SHARD1, SHARD2 = (f"shardId-{i:012d}" for i in range(3))

# Fast settings: cadence is not under test here (except where a test says so).
FAST = PollSettings(
    base_interval=0.05,
    min_interval=0.01,
    error_backoff_initial=0.02,
    error_backoff_max=0.2,
    problem_backoff_max=0.5,
)


def counter(data: bytes) -> int:
    return int(data.rsplit(b":", 1)[1])


class Writer:
    """Writes ``key:n`` payloads with a per-key counter n, and remembers what it wrote."""

    def __init__(self, stream: MemoryStream, keys: int = 8) -> None:
        self.stream = stream
        self.keys = keys
        self.counts: defaultdict[str, int] = defaultdict(int)
        self.written: list[tuple[str, str]] = []  # (shard id, sequence number)

    def put(self, n: int, *, shard_id: str | None = None, prefix: str = "k") -> None:
        for i in range(n):
            key = f"{prefix}{i % self.keys}"
            data = f"{key}:{self.counts[key]}".encode()
            self.counts[key] += 1
            self.written.append(self.stream.put(key, data, shard_id=shard_id))

    @property
    def ids(self) -> set[tuple[str, str]]:
        return set(self.written)

    def last_sequence(self, shard_id: str) -> str:
        return [seq for shard, seq in self.written if shard == shard_id][-1]


async def lineage(stream: MemoryStream) -> dict[str, tuple[str, ...]]:
    return {s.shard_id: s.parents for s in await stream.list_shards(ARN)}


@asynccontextmanager
async def running(
    source: StreamSource,
    handler: Any,
    *,
    store: CheckpointStore | None = None,
    poll: PollSettings = FAST,
    starting_position: str = "TRIM_HORIZON",
    **config: Any,
) -> AsyncIterator[Engine]:
    config.setdefault("batch_size", 5)
    async with Engine(
        source=source,
        checkpoint_store=store or MemoryCheckpointStore(),
        poll_settings=poll,
        retry_settings=RetrySettings(initial=0.01, maximum=0.1),
        shard_sync_interval=0.1,
    ) as engine:
        await engine.add_mapping(
            EventSourceMappingConfig(
                function_name=FUNCTION,
                event_source_arn=ARN,
                starting_position=starting_position,
                **config,
            ),
            handler,
            function_timeout=10.0,
        )
        yield engine


def counters(engine: Engine) -> Any:
    return engine.mapping_statistics(UUID).counters


async def delivered_at_least(deliveries: Deliveries, n: int, message: str) -> None:
    await wait_for(lambda: deliveries.count() >= n, 10, message=message)


async def injected_at_least(source: InjectingSource, n: int) -> None:
    await wait_for(lambda: len(source.injected) >= n, 5, message=f"{n} injected faults")


# Resharding: parent before child.


async def test_split_children_wait_for_their_parent() -> None:
    stream = MemoryStream(ARN, 1)
    writer = Writer(stream)
    writer.put(60)
    deliveries = Deliveries(delay=lambda _: 0.02)
    async with running(stream, deliveries) as engine:
        await wait_for(lambda: deliveries.count() >= 5, 5, message="the parent to start")
        children = stream.split(SHARD0)
        writer.put(60)
        assert {shard for shard, _ in writer.written[60:]} == set(children)
        await wait_for(lambda: deliveries.count() == 120, 10, message="every record")
    checkpoints = await engine.store.get_checkpoints(UUID)  # final, after a clean stop
    assert deliveries.ids() == writer.ids
    assert deliveries.duplicates() == 0
    assert deliveries.parent_first_violations(await lineage(stream)) == []
    assert deliveries.key_order_violations(counter) == []
    assert checkpoints[SHARD0] == SHARD_END
    for child in children:
        assert checkpoints[child] == writer.last_sequence(child)


async def test_children_waiting_on_their_parent_show_in_statistics() -> None:
    stream = MemoryStream(ARN, 1)
    writer = Writer(stream)
    writer.put(10)
    gate = anyio.Event()

    async def handler(event: dict[str, Any], context: Any) -> None:
        await gate.wait()  # hold the parent's first batch

    async with running(stream, handler) as engine:
        children = stream.split(SHARD0)
        writer.put(10)

        def states() -> dict[str, str]:
            return {s.shard_id: s.state for s in engine.mapping_statistics(UUID).shards}

        await wait_for(
            lambda: all(states().get(c) == "waiting_on_parents" for c in children),
            5,
            message="the children listed as waiting",
        )
        assert states()[SHARD0] == "polling"
        gate.set()
        await wait_for(
            lambda: all(states().get(c) == "polling" for c in children) and SHARD0 not in states(),
            5,
            message="the parent to end and the children to start",
        )


async def test_merge_child_waits_for_both_parents() -> None:
    stream = MemoryStream(ARN, 2)
    writer = Writer(stream)
    writer.put(40, shard_id=SHARD0, prefix="a")  # per-key order is per shard: distinct keys
    writer.put(40, shard_id=SHARD1, prefix="b")
    # shard 0 is slow, so the merged child is ready long before its second parent is done
    deliveries = Deliveries(delay=lambda d: 0.03 if d.shard_id == SHARD0 else 0.0)
    async with running(stream, deliveries) as engine:
        await wait_for(lambda: deliveries.count() >= 5, 5, message="the parents to start")
        child = stream.merge(SHARD0, SHARD1)
        writer.put(20, prefix="a")
        writer.put(20, prefix="b")
        await wait_for(lambda: deliveries.count() == 120, 10, message="every record")
    checkpoints = await engine.store.get_checkpoints(UUID)  # final, after a clean stop
    by_shard = deliveries.by_shard()
    first_child = min(d.order for d in by_shard[child])
    assert first_child > max(d.order for d in by_shard[SHARD0])
    assert first_child > max(d.order for d in by_shard[SHARD1])
    assert deliveries.ids() == writer.ids
    assert deliveries.key_order_violations(counter) == []
    assert checkpoints[SHARD0] == checkpoints[SHARD1] == SHARD_END


async def test_children_start_at_their_first_record_even_at_latest() -> None:
    stream = MemoryStream(ARN, 1)
    writer = Writer(stream)
    writer.put(10)  # before the mapping: LATEST skips these
    source = RecordingSource(stream)
    deliveries = Deliveries()
    async with running(source, deliveries, starting_position="LATEST") as engine:
        await wait_for(lambda: source.get_records_calls(SHARD0) > 0, 5, message="first poll")
        writer.put(20)
        children = stream.split(SHARD0)
        writer.put(40)
        expected = set(writer.written[10:])
        await wait_for(lambda: deliveries.ids() == expected, 10, message="every new record")
    checkpoints = await engine.store.get_checkpoints(UUID)
    assert deliveries.key_order_violations(counter) == []
    for child in children:
        assert source.positions(child)[0] == IteratorPosition("TRIM_HORIZON")
        assert checkpoints[child] == writer.last_sequence(child)


async def test_per_key_order_across_splits_and_merges_with_parallel_lanes() -> None:
    stream = MemoryStream(ARN, 1)
    writer = Writer(stream, keys=12)
    writer.put(40)
    rng_delays = [0.0, 0.005, 0.01, 0.002, 0.015]
    deliveries = Deliveries(delay=lambda d: rng_delays[d.order % len(rng_delays)])
    async with running(stream, deliveries, parallelization_factor=3, batch_size=3):
        for step in range(3):
            await delivered_at_least(deliveries, len(writer.written) // 2, f"step {step}")
            if step == 0:
                stream.split(SHARD0)  # -> 1, 2
            elif step == 1:
                stream.merge("shardId-000000000001", "shardId-000000000002")  # -> 3
            else:
                stream.split("shardId-000000000003")  # -> 4, 5
            writer.put(40)
        total = len(writer.written)
        await wait_for(lambda: deliveries.count() == total, 15, message="every record")
    assert deliveries.ids() == writer.ids
    assert deliveries.parent_first_violations(await lineage(stream)) == []
    assert deliveries.key_order_violations(counter) == []


class NoChildShards(RecordingSource):
    """A server that ends closed shards but never returns ChildShards (kinesalite)."""

    def _after_get_records(self, shard_id: str, result: GetRecordsResult) -> GetRecordsResult:
        result.child_shards = []
        return result


async def test_children_are_found_from_list_shards_without_child_shards() -> None:
    stream = MemoryStream(ARN, 1)
    writer = Writer(stream)
    writer.put(20)
    deliveries = Deliveries()
    async with running(NoChildShards(stream), deliveries):
        await wait_for(lambda: deliveries.count() == 20, 5, message="the parent")
        stream.split(SHARD0)
        writer.put(40)
        await wait_for(lambda: deliveries.count() == 60, 10, message="the children")
    assert deliveries.parent_first_violations(await lineage(stream)) == []


class LaggingListShards(RecordingSource):
    """ListShards that does not show shards created after ``hide_from`` until released
    (an eventually consistent listing); GetRecords still returns ChildShards."""

    def __init__(self, inner: MemoryStream, hide_from: int) -> None:
        super().__init__(inner)
        self.hide_from = hide_from
        self.hiding = True

    async def list_shards(self, stream_arn: str) -> list[ShardInfo]:
        shards = await super().list_shards(stream_arn)
        if not self.hiding:
            return shards
        return [s for s in shards if int(s.shard_id[-12:]) < self.hide_from]


async def test_children_start_from_child_shards_before_list_shards_shows_them() -> None:
    stream = MemoryStream(ARN, 1)
    writer = Writer(stream)
    writer.put(20)
    source = LaggingListShards(stream, hide_from=1)
    deliveries = Deliveries()
    async with Engine(
        source=source,
        checkpoint_store=MemoryCheckpointStore(),
        poll_settings=FAST,
        shard_sync_interval=30.0,  # the periodic ListShards will not come in time
    ) as engine:
        await engine.add_mapping(
            EventSourceMappingConfig(
                function_name=FUNCTION, event_source_arn=ARN, starting_position="TRIM_HORIZON"
            ),
            deliveries,
        )
        await wait_for(lambda: deliveries.count() == 20, 5, message="the parent")
        stream.split(SHARD0)
        writer.put(40)
        try:
            await wait_for(lambda: deliveries.count() == 60, 3, message="the children")
        finally:
            source.hiding = False  # let the engine stop cleanly either way
    assert deliveries.parent_first_violations(await lineage(stream)) == []


async def test_closed_shard_that_never_ends_is_detected_from_list_shards() -> None:
    stream = MemoryStream(ARN, 1)
    writer = Writer(stream)
    writer.put(20)
    deliveries = Deliveries()
    async with running(NeverEndingSource(stream), deliveries) as engine:
        await wait_for(lambda: deliveries.count() == 20, 5, message="the parent")
        stream.split(SHARD0)
        writer.put(40)
        await wait_for(lambda: deliveries.count() == 60, 5, message="the children")
    checkpoints = await engine.store.get_checkpoints(UUID)
    assert checkpoints[SHARD0] == SHARD_END
    assert deliveries.parent_first_violations(await lineage(stream)) == []


# Expired iterators.


async def test_expired_iterator_resumes_after_the_last_record_read_not_the_checkpoint() -> None:
    stream = MemoryStream(ARN, 1)
    writer = Writer(stream)
    writer.put(30)
    source = ExpiringSource(stream, lambda shard, call: call == 2)
    gate_open = False
    deliveries = Deliveries()
    original = deliveries.__call__

    async def handler(event: dict[str, Any], context: object) -> None:
        # the first batch is held until the iterator has expired, so no checkpoint exists yet
        await wait_for(lambda: gate_open, 5, message="the gate")
        await original(event, context)

    async with running(source, handler, max_buffered_records=100) as engine:
        await wait_for(lambda: source.injected, 5, message="the injected expiry")
        await wait_for(lambda: len(source.positions(SHARD0)) >= 2, 5, message="a new iterator")
        assert engine.mapping_statistics(UUID).shards[0].checkpoint is None
        gate_open = True
        writer.put(30)
        await wait_for(lambda: deliveries.count() == 60, 10, message="every record")
    assert source.injected == [(SHARD0, 2, writer.written[29][1])]
    assert source.positions(SHARD0) == [
        IteratorPosition("TRIM_HORIZON"),
        IteratorPosition.after(writer.written[29][1]),  # not TRIM_HORIZON again
    ]
    assert deliveries.ids() == writer.ids
    assert deliveries.duplicates() == 0


async def test_idle_shard_survives_repeated_iterator_expiry() -> None:
    stream = MemoryStream(ARN, 2)
    writer = Writer(stream)
    # shard 1 idles for "more than five minutes" again and again: every 3rd poll expires
    source = ExpiringSource(stream, lambda shard, call: shard == SHARD1 and call % 3 == 0)
    deliveries = Deliveries()
    async with running(source, deliveries):
        for round_ in range(3):
            await injected_at_least(source, 2 * (round_ + 1))
            writer.put(10, shard_id=SHARD1)
            writer.put(10, shard_id=SHARD0)
            await delivered_at_least(deliveries, len(writer.written), "records")
    assert deliveries.ids() == writer.ids
    assert deliveries.duplicates() == 0
    # every new iterator starts right after the last record read at that moment
    positions = source.positions(SHARD1)
    resumed = [last for _, _, last in source.injected]
    assert positions[0] == IteratorPosition("TRIM_HORIZON")
    for position, last in zip(positions[1:], resumed, strict=True):
        expected_position = (
            IteratorPosition("TRIM_HORIZON") if last is None else IteratorPosition.after(last)
        )
        assert position == expected_position


# Trimmed data: a checkpoint older than the retention period.


async def test_trimmed_checkpoint_restarts_at_trim_horizon(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = MemoryStream(ARN, 1)
    writer = Writer(stream)
    writer.put(50)
    store = MemoryCheckpointStore()
    await store.set_started_at(UUID, 1.0)  # not a first start: the checkpoint counts
    await store.set_checkpoint(UUID, SHARD0, writer.written[9][1])  # records 0-9 were done
    source = TrimmingSource(stream)
    source.trim(SHARD0, writer.written[30][1])  # retention dropped records 0-29
    deliveries = Deliveries()
    caplog.set_level(logging.WARNING, logger="kinesis_esm")
    async with running(source, deliveries, store=store) as engine:
        await wait_for(lambda: deliveries.count() == 20, 5, message="the records kept")
        writer.put(10)
        await wait_for(lambda: deliveries.count() == 30, 5, message="new records")
        stats = engine.mapping_statistics(UUID)
    assert deliveries.ids() == set(writer.written[30:])
    assert source.trimmed_errors == 1  # no loop on the trimmed position
    assert stats.counters.retention_gaps == 1
    assert any("trim" in r.getMessage().lower() for r in caplog.records)
    assert not stats.last_processing_result.startswith("PROBLEM")


# Faults: one bad shard, a deleted stream, a missing permission, LATEST across an outage.


async def test_one_failing_shard_never_stalls_the_others() -> None:
    stream = MemoryStream(ARN, 3)
    writer = Writer(stream)
    source = FailingShardSource(
        stream,
        lambda: TransientSourceError("GetRecords: timed out (injected)"),
        failing_shards={SHARD1},
    )
    deliveries = Deliveries()
    async with running(source, deliveries) as engine:
        for shard in (SHARD0, SHARD1, SHARD2):
            writer.put(20, shard_id=shard)
        healthy = {(s, q) for s, q in writer.written if s != SHARD1}
        await wait_for(lambda: deliveries.ids() == healthy, 5, message="the healthy shards")
        await wait_for(lambda: source.failures >= 3, 5, message="retries on the bad shard")
        source.failing_shards.clear()
        await wait_for(lambda: deliveries.ids() == writer.ids, 5, message="the bad shard")
        assert counters(engine).source_errors >= 3
    assert deliveries.duplicates() == 0


@pytest.mark.parametrize(
    "error",
    [
        lambda: StreamNotFoundError("ResourceNotFoundException: Stream lifecycle not found"),
        lambda: AccessDeniedError("AccessDeniedException: not authorized to kinesis:GetRecords"),
    ],
    ids=["stream-deleted", "access-denied"],
)
async def test_a_lost_stream_or_permission_is_a_visible_problem_not_a_crash_loop(
    error: Any, caplog: pytest.LogCaptureFixture
) -> None:
    stream = MemoryStream(ARN, 2)
    writer = Writer(stream)
    writer.put(20)
    source = FailingShardSource(stream, error)
    deliveries = Deliveries()
    caplog.set_level(logging.INFO, logger="kinesis_esm")
    async with running(source, deliveries) as engine:
        await wait_for(lambda: deliveries.count() == 20, 5, message="records before the fault")
        source.fail_all = True
        await wait_for(
            lambda: engine.statistics().mappings[0].last_processing_result.startswith("PROBLEM"),
            5,
            message="the problem state",
        )
        # Back-off, not a tight loop: ten more failed calls take a while, not microseconds
        # (two shards and the shard sync retry about every problem_backoff_max = 0.5 s).
        before = source.failures
        await wait_for(lambda: source.failures >= before + 4, 5, message="retries")
        started, calls = time.monotonic(), source.failures
        await wait_for(lambda: source.failures >= calls + 10, 10, message="more retries")
        assert time.monotonic() - started >= 0.5
        stats = engine.statistics().mappings[0]
        assert stats.state == "Enabled"
        assert stats.last_processing_result.startswith("PROBLEM")
        # The stream comes back: the mapping recovers by itself.
        source.fail_all = False
        writer.put(20)
        await wait_for(lambda: deliveries.count() == 40, 10, message="recovery")
        await wait_for(
            lambda: (
                not engine.statistics().mappings[0].last_processing_result.startswith("PROBLEM")
            ),
            5,
            message="the problem to clear",
        )
        assert counters(engine).source_errors >= 4
    assert any(r.levelno >= logging.ERROR for r in caplog.records)


async def test_latest_shard_loses_nothing_across_a_transient_failure() -> None:
    stream = MemoryStream(ARN, 1)
    writer = Writer(stream)
    source = FailingShardSource(
        stream, lambda: TransientSourceError("GetRecords: connection reset (injected)")
    )
    deliveries = Deliveries()
    async with running(source, deliveries, starting_position="LATEST"):
        await wait_for(lambda: source.get_records_calls(SHARD0) > 0, 5, message="first poll")
        source.failing_shards.add(SHARD0)  # the consumer's network fails; producers go on
        await wait_for(lambda: source.failures >= 1, 5, message="a failure")
        writer.put(20)
        await wait_for(lambda: source.failures >= 3, 5, message="retries")
        source.failing_shards.clear()
        await wait_for(lambda: deliveries.count() == 20, 5, message="the records written")
    assert deliveries.ids() == writer.ids


class FlakyListShards(RecordingSource):
    """ListShards fails (transiently) on the chosen calls; records when each call came."""

    def __init__(self, inner: StreamSource) -> None:
        super().__init__(inner)
        self.fail_calls: set[int] = set()
        self.list_times: list[float] = []

    async def list_shards(self, stream_arn: str) -> list[ShardInfo]:
        self.list_times.append(time.monotonic())
        if len(self.list_times) in self.fail_calls:
            raise TransientSourceError("ListShards: connection reset (injected)")
        return await super().list_shards(stream_arn)


async def test_a_failed_list_shards_is_retried_soon_after_a_healthy_period() -> None:
    stream = MemoryStream(ARN, 1)
    source = FlakyListShards(stream)
    poll = PollSettings(base_interval=0.05, problem_backoff_max=10.0)
    async with Engine(source=source, poll_settings=poll, shard_sync_interval=0.05) as engine:
        await engine.add_mapping(
            EventSourceMappingConfig(
                function_name=FUNCTION, event_source_arn=ARN, starting_position="TRIM_HORIZON"
            ),
            Deliveries(),
        )
        await wait_for(lambda: len(source.list_times) >= 12, 5, message="healthy sync rounds")
        failing = len(source.list_times) + 1
        source.fail_calls.add(failing)
        await wait_for(lambda: len(source.list_times) >= failing, 5, message="the failure")
        # the first retry of a fresh failure waits about the initial 0.5 s, not 10 s
        await wait_for(lambda: len(source.list_times) > failing, 2.0, message="the retry")
    assert source.list_times[failing] - source.list_times[failing - 1] < 1.5


# Throttling and the per-shard GetRecords rate.


async def test_get_records_never_above_five_per_second_per_shard() -> None:
    stream = MemoryStream(ARN, 2)
    writer = Writer(stream)
    writer.put(200, shard_id=SHARD0)
    writer.put(200, shard_id=SHARD1)
    source = RecordingSource(stream)
    # asks to poll at 50/s and to refill at once: only min_interval holds it to 5/s
    poll = PollSettings(base_interval=0.02, max_records_per_call=10)
    deliveries = Deliveries()
    async with running(source, deliveries, poll=poll, batch_size=10):
        await wait_for(
            lambda: all(source.get_records_calls(s) >= 12 for s in (SHARD0, SHARD1)),
            10,
            message="polls at full speed",
        )
    for shard in (SHARD0, SHARD1):
        times = source.shards[shard].get_records_times
        assert max_calls_in_window(times) <= 5, (shard, times)
        # polling was really as fast as allowed: the limit was what held it back
        assert max_calls_in_window(times) >= 4


async def test_throttling_backs_off_with_jitter_and_loses_nothing() -> None:
    stream = MemoryStream(ARN, 2)
    writer = Writer(stream)
    writer.put(30, shard_id=SHARD0)
    writer.put(30, shard_id=SHARD1)
    # shard 0: its 2nd to 5th GetRecords are throttled, four in a row; shard 1 is never throttled
    source = InjectingSource(
        stream, lambda shard, call: throttled() if shard == SHARD0 and 2 <= call <= 5 else None
    )
    poll = PollSettings(
        base_interval=0.05, min_interval=0.01, error_backoff_initial=0.2, error_backoff_max=2.0
    )
    deliveries = Deliveries()
    async with running(source, deliveries, poll=poll) as engine:
        await wait_for(lambda: deliveries.ids() == writer.ids, 10, message="every record")
        assert counters(engine).throttles == 4
        assert counters(engine).source_errors == 4
    times = source.shards[SHARD0].get_records_times
    gaps = [b - a for a, b in itertools.pairwise(times[1:6])]
    # equal jitter: the k-th retry waits between half and all of 0.2 * 2**(k-1) seconds
    for k, gap in enumerate(gaps):
        ceiling = 0.2 * 2**k
        assert ceiling / 2 - 0.01 <= gap <= ceiling + 0.1, (k, gaps)
    assert deliveries.duplicates() == 0
    assert source.positions(SHARD0) == [IteratorPosition("TRIM_HORIZON")]  # iterator kept
