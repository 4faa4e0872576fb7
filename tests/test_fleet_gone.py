"""A lease whose shard has left the stream is finished, so that its children do not wait
forever: the counting rule (pure, property-tested) and a worker against real servers."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kinesis_esm import Engine, EventSourceMappingConfig, KinesisConfig, PollSettings
from kinesis_esm.config import CoordinationConfig
from kinesis_esm.config._arn import stable_uuid
from kinesis_esm.engine._gone import AbsentShards
from kinesis_esm.leases import SHARD_END, Checkpoint, Lease
from kinesis_esm.state import MemoryCheckpointStore
from kinesis_esm.state._dynamodb import DynamoDBLeaseStore
from tests.support.kinesis import (
    KinesisClient,
    create_stream,
    put_records,
    wait_for,
)

SHARDS = [f"shardId-{i:012d}" for i in range(5)]


def lease(shard: str, *, finished: bool = False) -> Lease:
    checkpoint = Checkpoint(SHARD_END) if finished else None
    return Lease("m", shard, owner=None, counter=1, checkpoint=checkpoint)


# The rule.


def test_one_listing_without_a_shard_is_not_enough() -> None:
    absent = AbsentShards()
    leases = [lease(s) for s in SHARDS[:2]]
    absent.note(leases, [SHARDS[0]])
    assert not absent.gone(SHARDS[1])
    absent.note(leases, [SHARDS[0]])
    assert absent.gone(SHARDS[1]) and absent.shards() == [SHARDS[1]]
    absent.note(leases, SHARDS[:2])  # listed again (a short answer before): not gone
    assert absent.shards() == []


def test_an_empty_listing_proves_nothing_and_finished_leases_are_never_counted() -> None:
    absent = AbsentShards()
    leases = [lease(SHARDS[0]), lease(SHARDS[1], finished=True)]
    for _ in range(5):
        absent.note(leases, [])
    assert absent.shards() == []
    for _ in range(3):
        absent.note(leases, [SHARDS[2]])
    assert absent.shards() == [SHARDS[0]]
    with pytest.raises(ValueError):
        AbsentShards(after=1)


@given(
    after=st.integers(min_value=2, max_value=4),
    listings=st.lists(st.sets(st.sampled_from(SHARDS)), min_size=1, max_size=30),
    finished=st.sets(st.sampled_from(SHARDS)),
)
def test_gone_exactly_when_absent_from_the_last_listings(
    after: int, listings: list[set[str]], finished: set[str]
) -> None:
    """Against a model: gone iff unfinished and missing from each of the last `after`
    non-empty listings (empty ones are skipped, not counted)."""
    absent = AbsentShards(after=after)
    leases = [lease(s, finished=s in finished) for s in SHARDS]
    for listed in listings:
        absent.note(leases, listed)
    real = [listed for listed in listings if listed]
    for shard in SHARDS:
        recent = real[-after:]
        expected = (
            shard not in finished
            and len(recent) == after
            and all(shard not in listed for listed in recent)
        )
        assert absent.gone(shard) == expected, (shard, real)


# A worker against moto (Kinesis) and dynalite (leases).


@pytest.mark.anyio
async def test_a_parent_lease_whose_shard_left_the_stream_is_finished_and_its_child_runs(
    moto: str,
    client: KinesisClient,
    stream_name: str,
    dynamodb: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The table remembers a parent the stream no longer lists (past its retention, the
    fleet away meanwhile) and a child lease that waits on it, as a reshard a day ago left them."""
    arn = await create_stream(client, stream_name, 1)
    child, parent = SHARDS[0], "shardId-000000000099"
    config = EventSourceMappingConfig(
        function_name="gone", event_source_arn=arn, starting_position="TRIM_HORIZON"
    )
    table = f"gone-{uuid.uuid4().hex[:12]}"
    mapping = stable_uuid(config.function_name, arn)
    async with DynamoDBLeaseStore(table, endpoint_url=dynamodb, region="us-east-1") as store:
        assert await store.create_lease(mapping, parent)
        assert await store.create_lease(mapping, child, (parent,))
    records = await put_records(client, stream_name, [(f"k{i}", b"x") for i in range(10)])
    seen: set[str] = set()

    async def handler(event: dict[str, Any], context: Any) -> None:
        seen.update(r["kinesis"]["sequenceNumber"] for r in event["Records"])

    engine = Engine(
        kinesis=KinesisConfig(endpoint_url=moto, region="us-east-1"),
        checkpoint_store=MemoryCheckpointStore(),
        poll_settings=PollSettings(base_interval=0.2, min_interval=0.2),
        shard_sync_interval=0.5,
        coordination=CoordinationConfig(
            backend="dynamodb",
            table=table,
            worker_id="w1",
            failover_time=2,
            endpoint_url=dynamodb,
            region="us-east-1",
        ),
    )
    with caplog.at_level(logging.WARNING, logger="kinesis_esm.fleet"):
        async with engine:
            assert await engine.add_mapping(config, handler) == mapping
            expected = {r.sequence_number for r in records}
            await wait_for(lambda: expected <= seen, 30, message="the child's records")
    async with DynamoDBLeaseStore(table, endpoint_url=dynamodb, region="us-east-1") as store:
        rows = {row.shard_id: row for row in (await store.read_fleet(mapping)).leases}
    assert rows[parent].finished
    assert not rows[child].finished  # the child is read, not retired: it is in the stream
    assert any("is no longer in the stream" in r.getMessage() for r in caplog.records)
