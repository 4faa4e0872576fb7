"""Many mappings of one daemon on one stream share each shard's five GetRecords per second
(Kinesis's limit for all consumers together), through a real Kinesis API (moto): adding
mappings never pushes a shard past it, and every mapping still gets every record."""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from typing import Any

import anyio
import pytest

from kinesis_esm import Engine, EventSourceMappingConfig, MemoryCheckpointStore, PollSettings
from kinesis_esm.pipeline._budget import ShardReadBudget
from tests.support.kinesis import create_stream, kinesis_client, put_records, wait_for
from tests.test_consumer_real import RecordingSource

pytestmark = pytest.mark.anyio
MAPPINGS = 12


async def test_twelve_mappings_of_one_shard_stay_within_five_reads_per_second(
    moto: str, stream_name: str
) -> None:
    async with kinesis_client(moto) as client:
        arn = await create_stream(client, stream_name, 1)
        written = await put_records(client, stream_name, [(f"k{i}", b"x") for i in range(30)])
    got: dict[str, set[str]] = defaultdict(set)
    lock = threading.Lock()

    def handler_for(name: str) -> Any:
        def handler(event: dict[str, Any], context: Any) -> None:
            with lock:
                got[name].update(r["kinesis"]["sequenceNumber"] for r in event["Records"])

        return handler

    wanted = {w.sequence_number for w in written}
    source = RecordingSource(moto)
    async with (
        source,
        Engine(
            source=source,
            checkpoint_store=MemoryCheckpointStore(),
            poll_settings=PollSettings(base_interval=0.2),  # each mapping asks 5 times a second
        ) as engine,
    ):
        for i in range(MAPPINGS):
            config = EventSourceMappingConfig(
                function_name=f"f{i}", event_source_arn=arn, starting_position="TRIM_HORIZON"
            )
            await engine.add_mapping(config, handler_for(f"f{i}"))
        await wait_for(
            lambda: all(got[f"f{i}"] >= wanted for i in range(MAPPINGS)),
            30,
            message="every mapping has every record",
        )
        await wait_for(lambda: len(source.calls) >= 25, 30, message="reads over a few seconds")
    starts = sorted(start for start, _, _ in source.calls)
    # any one second holds at most five calls: turns are 0.2 s apart (the event loop's timers
    # may fire up to a millisecond early, hence the 5 ms of slack)
    for i, start in enumerate(starts):
        assert sum(1 for s in starts[i:] if s < start + 1.0 - 0.005) <= 5, starts[i : i + 7]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.2 - 0.005


async def test_turns_are_min_interval_apart_in_the_order_asked() -> None:

    budget = ShardReadBudget()
    order: list[tuple[int, float]] = []

    async def reader(n: int) -> None:
        await budget.wait_turn("arn", "shard", 0.05)
        order.append((n, time.monotonic()))

    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(reader, n)
    assert [n for n, _ in order] == list(range(6))
    times = [t for _, t in order]
    assert all(b - a >= 0.045 for a, b in itertools.pairwise(times))
