"""Leases on their own thread: a worker whose event loop is busy still renews on time.

The contrast tests run the same coordinator on the main loop and show it losing its leases
under the same load, so the threaded result is not a property of the load being light."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from kinesis_esm import Engine, EventSourceMappingConfig, KinesisConfig, PollSettings
from kinesis_esm.config import CoordinationConfig
from kinesis_esm.leases import (
    CheckpointOutcome,
    CoordinatorSettings,
    Lease,
    LeaseCoordinator,
    LeaseThread,
    LeaseThreadStopped,
    MainLoopConsumer,
    MemoryLeaseStore,
    ThreadedCoordinator,
)
from kinesis_esm.state import MemoryCheckpointStore
from tests.support.kinesis import (
    KinesisClient,
    create_stream,
    put_records,
    wait_for,
)

pytestmark = pytest.mark.anyio

MAPPING = "m-1"
SHARDS = {f"shard-{i}": () for i in range(4)}
FAILOVER = 1.0  # hold time 0.9 s: a loop blocked for longer cannot have renewed in between


def hog(seconds: float) -> None:
    """Hold the interpreter as a parse of a big answer does: pure Python, no I/O, no await."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


class Recorder:
    """A LeaseConsumer that notes each call and the thread it came on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.released = anyio.Event()
        self.block_release = False

    def on_lease_gained(self, lease: Lease) -> None:
        self.calls.append(("gained", lease.shard_id, threading.get_ident()))

    def on_lease_lost(self, shard_id: str) -> None:
        self.calls.append(("lost", shard_id, threading.get_ident()))

    async def release_requested(self, shard_id: str) -> None:
        self.calls.append(("release", shard_id, threading.get_ident()))
        if self.block_release:
            await anyio.sleep_forever()

    def count(self, kind: str) -> int:
        return sum(1 for call in self.calls if call[0] == kind)


@pytest.fixture
async def thread() -> AsyncIterator[LeaseThread]:
    lease_thread = LeaseThread("test-leases")
    lease_thread.start()
    try:
        yield lease_thread
    finally:
        await lease_thread.aclose()


def settings(**overrides: Any) -> CoordinatorSettings:
    overrides.setdefault("failover_time", FAILOVER)
    overrides.setdefault("handoff_timeout", 2.0)
    return CoordinatorSettings(**overrides)


def threaded(
    thread: LeaseThread, store: MemoryLeaseStore, consumer: Recorder, **overrides: Any
) -> ThreadedCoordinator:
    forward = MainLoopConsumer(consumer)
    inner = LeaseCoordinator(
        store, MAPPING, "w1", forward, settings(**overrides), clock=time.monotonic
    )
    return ThreadedCoordinator(thread, inner, forward)


# LeaseThread


async def test_a_call_runs_on_the_lease_thread_and_returns_its_result(thread: LeaseThread) -> None:
    async def where(x: int) -> tuple[int, int]:
        await anyio.lowlevel.checkpoint()
        return threading.get_ident(), x * 2

    ident, doubled = await thread.call(where, 21)
    assert doubled == 42 and ident != threading.get_ident()


async def test_a_call_raises_the_error_raised_there(thread: LeaseThread) -> None:
    async def fail() -> None:
        raise KeyError("there")

    with pytest.raises(KeyError, match="there"):
        await thread.call(fail)


async def test_cancelling_the_caller_cancels_the_call_there_and_waits_for_its_end(
    thread: LeaseThread,
) -> None:
    entered, cleaned = threading.Event(), threading.Event()

    async def forever() -> None:
        entered.set()
        try:
            await anyio.sleep_forever()
        finally:
            await anyio.sleep(0.05)  # cleanup that takes a while: the caller must wait for it
            cleaned.set()

    with anyio.move_on_after(5) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(thread.call, forever)
            await wait_for(entered.is_set, 5, message="the call to begin")
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert cleaned.is_set()  # ended there before the caller's cancellation completed


async def test_a_cancelled_call_whose_end_raises_leaves_no_unretrieved_error(
    thread: LeaseThread,
) -> None:
    """The error a cancelled call ends with is the cancellation's: it is retrieved, so asyncio
    never reports "exception was never retrieved" for it (it did, once, after every kill)."""
    entered = threading.Event()
    reports: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reports.append(context))

    async def raises_when_cancelled() -> None:
        entered.set()
        try:
            await anyio.sleep_forever()
        finally:
            raise KeyError("while cancelled")

    try:
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(thread.call, raises_when_cancelled)
                await wait_for(entered.is_set, 5, message="the call to begin")
                tg.cancel_scope.cancel()
        gc.collect()  # an unretrieved future is reported when it is collected
        await anyio.lowlevel.checkpoint()
    finally:
        loop.set_exception_handler(previous)
    assert not scope.cancelled_caught
    assert reports == []


async def test_a_stopped_thread_refuses_calls_and_closing_twice_is_harmless() -> None:
    lease_thread = LeaseThread()
    lease_thread.start()
    await lease_thread.aclose()
    await lease_thread.aclose()
    assert not lease_thread.running

    async def nothing() -> None:
        return None

    with pytest.raises(LeaseThreadStopped):
        await lease_thread.call(nothing)


# ThreadedCoordinator


async def test_consumer_calls_come_back_to_the_main_loop_in_order(thread: LeaseThread) -> None:
    store, consumer = MemoryLeaseStore(), Recorder()
    coordinator = threaded(thread, store, consumer)
    assert await coordinator.add_shards(SHARDS) == 4
    async with anyio.create_task_group() as tg:
        await tg.start(coordinator.run)
        await wait_for(lambda: len(coordinator.held_leases()) == 4, 10, message="all four")
        assert all(coordinator.holds(shard) for shard in SHARDS)
        outcome = await coordinator.checkpoint("shard-0", "100")
        assert outcome is CheckpointOutcome.DEFERRED
        assert await coordinator.checkpoint("shard-1", "200", force=True) is (
            CheckpointOutcome.WRITTEN
        )
        await coordinator.stop()  # hands every lease off: release_requested here, then gone
    main = threading.get_ident()
    assert {ident for _, _, ident in consumer.calls} == {main}
    assert consumer.count("gained") == 4 and consumer.count("release") == 4
    for shard in SHARDS:  # gained before released, per shard
        kinds = [kind for kind, s, _ in consumer.calls if s == shard]
        assert kinds == ["gained", "release"]
    snapshot = await store.read_fleet(MAPPING)
    by_shard = {lease.shard_id: lease for lease in snapshot.leases}
    assert by_shard["shard-0"].checkpoint is not None  # the deferred one rode on the release
    assert by_shard["shard-0"].checkpoint.sequence == "100"
    assert by_shard["shard-1"].checkpoint is not None
    assert by_shard["shard-1"].checkpoint.sequence == "200"
    assert all(lease.owner is None for lease in snapshot.leases)


async def test_a_release_that_does_not_return_is_abandoned_at_the_handoff_timeout(
    thread: LeaseThread,
) -> None:
    store, consumer = MemoryLeaseStore(), Recorder()
    consumer.block_release = True
    coordinator = threaded(thread, store, consumer, handoff_timeout=0.3)
    await coordinator.add_shards({"shard-0": ()})
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(coordinator.run)
            await wait_for(lambda: coordinator.holds("shard-0"), 10, message="the lease")
            await coordinator.stop()
    assert consumer.count("release") == 1 and consumer.count("lost") == 1


async def test_renewals_keep_their_cadence_while_the_main_loop_is_blocked(
    thread: LeaseThread,
) -> None:
    store, consumer = MemoryLeaseStore(), Recorder()
    coordinator = threaded(thread, store, consumer)
    await coordinator.add_shards(SHARDS)
    async with anyio.create_task_group() as tg:
        await tg.start(coordinator.run)
        await wait_for(lambda: len(coordinator.held_leases()) == 4, 10, message="all four")
        before = {s: lease.counter for s, lease in coordinator.held_leases().items()}
        for _ in range(3):
            hog(4 * FAILOVER / 3)  # longer than the hold time, with no await in it
            assert all(coordinator.holds(shard) for shard in SHARDS)
            await anyio.lowlevel.checkpoint()
        after = {s: lease.counter for s, lease in coordinator.held_leases().items()}
        assert all(after[s] >= before[s] + 3 for s in SHARDS), (before, after)
        assert coordinator.statistics().lost == 0
        tg.cancel_scope.cancel()


async def test_contrast_on_the_main_loop_the_same_block_loses_the_leases() -> None:
    store, consumer = MemoryLeaseStore(), Recorder()
    coordinator = LeaseCoordinator(store, MAPPING, "w1", consumer, settings())
    await coordinator.add_shards(SHARDS)
    async with anyio.create_task_group() as tg:
        await tg.start(coordinator.run)
        await wait_for(lambda: len(coordinator.held_leases()) == 4, 10, message="all four")
        hog(4 * FAILOVER / 3)
        assert not any(coordinator.holds(shard) for shard in SHARDS)
        tg.cancel_scope.cancel()


# Through the engine: a handler that blocks the loop, leases in dynalite, records in moto.


async def test_a_worker_whose_handler_blocks_the_loop_keeps_its_leases(
    moto: str, client: KinesisClient, stream_name: str, dynamodb: str
) -> None:
    arn = await create_stream(client, stream_name, 2)
    seen: Counter[str] = Counter()

    async def handler(event: dict[str, Any], context: Any) -> None:
        hog(1.3)  # an inline handler with CPU work: the loop stalls past the hold time
        for record in event["Records"]:
            seen[record["eventID"]] += 1  # "<shard id>:<sequence number>"

    coordination = CoordinationConfig(
        backend="dynamodb",
        table=f"thread-{uuid.uuid4().hex[:12]}",
        worker_id="busy",
        failover_time=FAILOVER,
        endpoint_url=dynamodb,
        region="us-east-1",
    )
    engine = Engine(
        kinesis=KinesisConfig(endpoint_url=moto, region="us-east-1"),
        checkpoint_store=MemoryCheckpointStore(),
        poll_settings=PollSettings(base_interval=0.2, min_interval=0.2),
        shard_sync_interval=2.0,
        coordination=coordination,
    )
    config = EventSourceMappingConfig(
        function_name="busy", event_source_arn=arn, starting_position="TRIM_HORIZON", batch_size=5
    )
    async with engine:
        mapping = await engine.add_mapping(config, handler)

        def both_held() -> bool:
            leases = engine.mapping_statistics(mapping).leases
            return leases is not None and leases.held == 2

        await wait_for(both_held, 30, message="both leases")
        records = await put_records(client, stream_name, [(f"k{i}", b"x") for i in range(40)])
        expected = {f"{r.shard_id}:{r.sequence_number}" for r in records}
        await wait_for(lambda: expected <= set(seen), 60, interval=0.5, message="every record")
        leases = engine.mapping_statistics(mapping).leases
        assert leases is not None
        assert leases.lost == 0 and leases.stolen == 0 and leases.held == 2
        assert [s for s, n in seen.items() if n > 1] == []  # no restart from a lost lease
