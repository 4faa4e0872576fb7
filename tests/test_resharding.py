"""Resharding under load through real emulators: nothing lost, parents before children.

kinesis-mock ends closed shards with a null NextShardIterator and ChildShards, and applies
AWS's split, merge and UpdateShardCount rules. moto (5.2.5) cannot be used here: after a split
it keeps routing puts to the closed parent (the first shard whose hash range matches) and
renumbers the parent's records, so its children stay empty. The consumer's handling of closed
shards that never end (moto's other deviation) is tested on the in-memory stream instead
(tests/test_shard_lifecycle.py).

Records flow from a producer task while the stream is resharded, and the function is slow (an
async handler sleeping a few random milliseconds per batch). Afterwards every record was
delivered at least once, each key's records were first delivered in write order, and no child
shard's record was delivered before its parents' last one.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from botocore.exceptions import ClientError

from kinesis_esm import (
    Engine,
    EventSourceMappingConfig,
    KinesisConfig,
    PollSettings,
    RetrySettings,
)
from kinesis_esm.state import SHARD_END
from tests.support.emulators import KinesisMock
from tests.support.faulty_source import Deliveries
from tests.support.kinesis import (
    KinesisClient,
    StreamRecord,
    create_stream,
    kinesis_client,
    put_records,
    wait_for,
)

pytestmark = pytest.mark.anyio

POLL = PollSettings(base_interval=0.2, error_backoff_initial=0.05, error_backoff_max=1.0)
RETRYABLE_PUT_ERRORS = {"ResourceInUseException", "LimitExceededException"}


def counter(data: bytes) -> int:
    return int(data.rsplit(b":", 1)[1])


class Producer:
    """Writes ``key:n`` records (n counts per key) in small batches, and keeps what was written.

    Puts to a stream in the middle of a reshard may be refused for a moment: those are retried
    (bounded), so the producer's order per key is the write order.
    """

    def __init__(self, client: KinesisClient, stream: str, keys: int = 16) -> None:
        self.client = client
        self.stream = stream
        self.keys = keys
        self.counts: defaultdict[str, int] = defaultdict(int)
        self.written: list[StreamRecord] = []
        self._next_key = 0

    async def put(self, n: int, batch: int = 20) -> None:
        for start in range(0, n, batch):
            records: list[tuple[str, bytes]] = []
            for _ in range(min(batch, n - start)):
                key = f"key-{self._next_key % self.keys}"
                self._next_key += 1
                records.append((key, f"{key}:{self.counts[key]}".encode()))
                self.counts[key] += 1
            for attempt in range(50):
                try:
                    self.written.extend(await put_records(self.client, self.stream, records))
                    break
                except ClientError as error:
                    if error.response["Error"]["Code"] not in RETRYABLE_PUT_ERRORS:
                        raise
                    await anyio.sleep(0.02 * min(attempt + 1, 10))  # back off, then retry
            else:
                raise RuntimeError("puts refused for too long")

    def ids(self) -> set[tuple[str, str]]:
        return {(r.shard_id, r.sequence_number) for r in self.written}


async def describe_shards(client: KinesisClient, stream: str) -> list[dict[str, Any]]:
    shards: list[dict[str, Any]] = []
    response = await client.list_shards(StreamName=stream)
    for _ in range(100):
        shards.extend(response["Shards"])
        token = response.get("NextToken")
        if not token:
            return shards
        response = await client.list_shards(NextToken=token)
    raise RuntimeError("ListShards still paginating")


async def open_shards(client: KinesisClient, stream: str) -> list[dict[str, Any]]:
    """Open shards, by starting hash key (adjacent shards are neighbours in the list)."""
    shards = [
        s
        for s in await describe_shards(client, stream)
        if "EndingSequenceNumber" not in s["SequenceNumberRange"]
    ]
    return sorted(shards, key=lambda s: int(s["HashKeyRange"]["StartingHashKey"]))


async def lineage(client: KinesisClient, stream: str) -> dict[str, tuple[str, ...]]:
    return {
        s["ShardId"]: tuple(
            p for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p
        )
        for s in await describe_shards(client, stream)
    }


async def wait_active(client: KinesisClient, stream: str) -> None:
    async def active() -> bool:
        summary = await client.describe_stream_summary(StreamName=stream)
        return bool(summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE")

    await wait_for(active, 30, message=f"{stream} to be ACTIVE again")


async def split(client: KinesisClient, stream: str, shard: dict[str, Any]) -> None:
    low = int(shard["HashKeyRange"]["StartingHashKey"])
    high = int(shard["HashKeyRange"]["EndingHashKey"])
    await client.split_shard(
        StreamName=stream,
        ShardToSplit=shard["ShardId"],
        NewStartingHashKey=str((low + high) // 2 + 1),
    )
    await wait_active(client, stream)


async def merge(client: KinesisClient, stream: str, lower: str, upper: str) -> None:
    await client.merge_shards(StreamName=stream, ShardToMerge=lower, AdjacentShardToMerge=upper)
    await wait_active(client, stream)


async def update_shard_count(client: KinesisClient, stream: str, target: int) -> None:
    await client.update_shard_count(
        StreamName=stream, TargetShardCount=target, ScalingType="UNIFORM_SCALING"
    )
    await wait_active(client, stream)
    assert len(await open_shards(client, stream)) == target


def slow_function() -> Deliveries:
    rng = random.Random(5)
    return Deliveries(delay=lambda _: rng.uniform(0.02, 0.06))


@asynccontextmanager
async def consuming(
    endpoint_url: str, stream_arn: str, deliveries: Deliveries, **config: Any
) -> AsyncIterator[Engine]:
    config.setdefault("batch_size", 5)
    async with Engine(
        kinesis=KinesisConfig(endpoint_url=endpoint_url, region="us-east-1"),
        poll_settings=POLL,
        retry_settings=RetrySettings(initial=0.05, maximum=0.5),
        shard_sync_interval=0.2,
    ) as engine:
        await engine.add_mapping(
            EventSourceMappingConfig(
                function_name="resharding",
                event_source_arn=stream_arn,
                starting_position="TRIM_HORIZON",
                **config,
            ),
            deliveries,
            function_timeout=10.0,
        )
        yield engine


async def reshard_under_load(
    endpoint_url: str,
    stream: str,
    shards: int,
    steps: list[Callable[[KinesisClient], Awaitable[None]]],
    *,
    per_step: int = 60,
    **config: Any,
) -> tuple[Producer, Deliveries, dict[str, str], dict[str, tuple[str, ...]]]:
    """Run `steps` (reshards) while a producer writes and a slow function consumes.

    Returns the producer, the deliveries, the final checkpoints and the shard lineage.
    """
    deliveries = slow_function()
    async with kinesis_client(endpoint_url) as client:
        arn = await create_stream(client, stream, shards)
        producer = Producer(client, stream)
        await producer.put(per_step)
        async with consuming(endpoint_url, arn, deliveries, **config) as engine:
            for number, step in enumerate(steps):
                # reshard while the previous records are still being delivered...
                await wait_for(
                    lambda: deliveries.count() >= len(producer.written) // 4,
                    20,
                    message=f"deliveries before step {number}",
                )
                async with anyio.create_task_group() as tg:
                    tg.start_soon(producer.put, per_step)  # ...and while new ones arrive
                    await step(client)
                await producer.put(per_step // 2)
            expected = producer.ids()
            await wait_for(
                lambda: deliveries.ids() >= expected,
                60,
                message=f"all {len(expected)} records to be delivered",
            )
        shard_lineage = await lineage(client, stream)
    checkpoints = await engine.store.get_checkpoints(engine.statistics().mappings[0].uuid)
    return producer, deliveries, checkpoints, shard_lineage


def check_delivery(
    producer: Producer,
    deliveries: Deliveries,
    checkpoints: dict[str, str],
    shard_lineage: dict[str, tuple[str, ...]],
) -> None:
    assert deliveries.ids() >= producer.ids()  # at least once
    assert deliveries.key_order_violations(counter) == []  # per key, parent first
    assert deliveries.parent_first_violations(shard_lineage) == []
    parents = {p for ps in shard_lineage.values() for p in ps}
    for parent in parents:  # every closed shard was read to its end and checkpointed so
        assert checkpoints.get(parent) == SHARD_END, (parent, checkpoints)
    # a record's key moved between shards: some key really was delivered from several shards
    shards_per_key: defaultdict[str, set[str]] = defaultdict(set)
    for d in deliveries.log:
        shards_per_key[d.partition_key].add(d.shard_id)
    assert max(len(s) for s in shards_per_key.values()) >= 3


@pytest.mark.kinesis_mock
async def test_split_then_merge_under_load(kinesis_mock: KinesisMock, stream_name: str) -> None:
    async def split_first(client: KinesisClient) -> None:
        await split(client, stream_name, (await open_shards(client, stream_name))[0])

    async def merge_across_lineages(client: KinesisClient) -> None:
        # the upper child of the split and the untouched shard: a child with two parents of
        # different ages
        lower, upper = (await open_shards(client, stream_name))[1:3]
        await merge(client, stream_name, lower["ShardId"], upper["ShardId"])

    producer, deliveries, checkpoints, shard_lineage = await reshard_under_load(
        kinesis_mock.endpoint_url,
        stream_name,
        2,
        [split_first, merge_across_lineages],
        per_step=100,
    )
    assert len(shard_lineage) == 5
    assert any(len(parents) == 2 for parents in shard_lineage.values())
    check_delivery(producer, deliveries, checkpoints, shard_lineage)


@pytest.mark.kinesis_mock
async def test_update_shard_count_up_and_down_then_merge_to_one(
    kinesis_mock: KinesisMock, stream_name: str
) -> None:
    def scale(target: int) -> Callable[[KinesisClient], Awaitable[None]]:
        async def step(client: KinesisClient) -> None:
            await update_shard_count(client, stream_name, target)

        return step

    async def merge_to_one(client: KinesisClient) -> None:
        lower, upper = await open_shards(client, stream_name)
        await merge(client, stream_name, lower["ShardId"], upper["ShardId"])

    producer, deliveries, checkpoints, shard_lineage = await reshard_under_load(
        kinesis_mock.endpoint_url,
        stream_name,
        2,
        [scale(4), scale(2), merge_to_one],
    )
    open_now = [
        s for s in shard_lineage if s not in {p for ps in shard_lineage.values() for p in ps}
    ]
    assert len(open_now) == 1
    check_delivery(producer, deliveries, checkpoints, shard_lineage)
