"""Engines as workers of one fleet, in one process: Kinesis from moto, leases in dynalite.

The fast functional layer under tests/test_fleet_real.py (which runs `kinesis-esm run`
processes): shards split between workers, exactly one worker per shard, graceful hand-off on a
stop without a record delivered twice, SHARD_END across workers, the fleet-wide start time, the
figures, and what a fleet refuses.
"""

from __future__ import annotations

import base64
import dataclasses
import time
import uuid
from collections import Counter, defaultdict
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from kinesis_esm import Engine, EventSourceMappingConfig, PollSettings
from kinesis_esm._statistics import MappingStatistics, WorkerStatistics
from kinesis_esm.cli._status import rows as status_rows
from kinesis_esm.cli._status import worker_rows
from kinesis_esm.config import CoordinationConfig
from kinesis_esm.engine._fleet import lease_checkpoint, text_checkpoint
from kinesis_esm.leases import SHARD_END, Checkpoint
from kinesis_esm.state._dynamodb import DynamoDBLeaseStore
from tests.support.emulators import KinesisMock
from tests.support.fleet_engines import fleet_coordination, fleet_engine
from tests.support.http_faults import Fault, KinesisFaultInjector
from tests.support.kinesis import (
    KinesisClient,
    create_stream,
    kinesis_client,
    put_records,
    wait_for,
)
from tests.test_resharding import Producer, counter, describe_shards, merge, open_shards, split

pytestmark = pytest.mark.anyio
FAST_POLL = PollSettings(base_interval=0.2, min_interval=0.2)
FAILOVER = 2.0


class Deliveries:
    """Every record each worker was invoked with, in order: (worker, shard, sequence, key)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, str]] = []
        self.data: dict[tuple[str, str], bytes] = {}

    def handler(self, worker: str) -> Any:
        async def handle(event: dict[str, Any], context: Any) -> None:
            for r in event["Records"]:
                shard = r["eventID"].split(":")[0]
                sequence = r["kinesis"]["sequenceNumber"]
                self.seen.append((worker, shard, sequence, r["kinesis"]["partitionKey"]))
                self.data[(shard, sequence)] = base64.b64decode(r["kinesis"]["data"])
                await anyio.lowlevel.checkpoint()

        return handle

    def ids(self) -> set[tuple[str, str]]:
        return {(shard, seq) for _, shard, seq, _ in self.seen}

    def duplicates(self) -> list[tuple[str, str]]:
        counts = Counter((shard, seq) for _, shard, seq, _ in self.seen)
        return [record for record, n in counts.items() if n > 1]

    def workers_of(self, records: set[tuple[str, str]]) -> set[str]:
        return {w for w, shard, seq, _ in self.seen if (shard, seq) in records}


def status_mapping(stats: MappingStatistics) -> dict[str, Any]:
    """One mapping as /status would answer it."""
    return {
        "UUID": stats.uuid,
        "FunctionName": stats.function_name,
        "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:fleet",
        "EventSourceArn": stats.event_source_arn,
        "State": stats.state,
        "BatchSize": 10,
        "ParallelizationFactor": 1,
        "LastProcessingResult": stats.last_processing_result,
        "counters": {},
        "shards": [dataclasses.asdict(s) for s in stats.shards],
        "workers": [dataclasses.asdict(w) for w in stats.workers],
    }


def status_states(stats: MappingStatistics) -> dict[str, str]:
    """The State cell per shard of `kinesis-esm status`, from what /status would answer."""
    _, shard_rows = status_rows({"time": 0.0, "mappings": [status_mapping(stats)]})
    return {row[1]: row[2] for row in shard_rows}


def status_workers(stats: MappingStatistics) -> list[list[str]]:
    """The Workers rows of `kinesis-esm status` (mapping, worker, live, leases, heartbeat)."""
    return worker_rows({"time": 0.0, "mappings": [status_mapping(stats)]})


def ids(records: list[Any]) -> set[tuple[str, str]]:
    return {(r.shard_id, r.sequence_number) for r in records}


@pytest.fixture
def table() -> str:
    return f"fleet-{uuid.uuid4().hex[:12]}"


def coordination(dynamodb: str, table: str, worker: str) -> CoordinationConfig:
    return fleet_coordination(dynamodb, table, worker, failover_time=FAILOVER)


def worker(moto: str, dynamodb: str, table: str, name: str) -> Engine:
    return fleet_engine(
        moto, dynamodb, table, name, poll_settings=FAST_POLL, failover_time=FAILOVER
    )


def mapping(arn: str, **settings: Any) -> EventSourceMappingConfig:
    settings.setdefault("starting_position", "TRIM_HORIZON")
    settings.setdefault("batch_size", 10)
    return EventSourceMappingConfig(function_name="fleet", event_source_arn=arn, **settings)


async def owners(dynamodb: str, table: str, mapping_uuid: str) -> dict[str, str | None]:
    async with DynamoDBLeaseStore(table, endpoint_url=dynamodb, region="us-east-1") as store:
        snapshot = await store.read_fleet(mapping_uuid)
    return {lease.shard_id: lease.owner for lease in snapshot.leases if not lease.finished}


def test_checkpoint_text_and_lease_checkpoints_map_one_to_one() -> None:
    for text in ("4959", "4959:0", "4959:7", SHARD_END):
        assert text_checkpoint(lease_checkpoint(text)) == text
    assert lease_checkpoint("4959") == Checkpoint("4959", 0)
    assert lease_checkpoint("4959:0") == Checkpoint("4959", 1)  # user record 0 done, not all
    assert text_checkpoint(None) is None


async def test_two_workers_split_the_shards_and_a_stop_hands_off_without_duplicates(
    moto: str, client: KinesisClient, stream_name: str, dynamodb: str, table: str
) -> None:
    arn = await create_stream(client, stream_name, 4)
    seen = Deliveries()
    config = mapping(arn)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(worker(moto, dynamodb, table, "a"))
        uuid_a = await a.add_mapping(config, seen.handler("a"))
        async with worker(moto, dynamodb, table, "b") as b:
            await b.add_mapping(config, seen.handler("b"))

            async def balanced() -> bool:
                held = Counter((await owners(dynamodb, table, uuid_a)).values())
                return held == Counter({"a": 2, "b": 2})

            await wait_for(balanced, 30, interval=0.3, message="two shards each")
            first = await put_records(client, stream_name, [(f"k{i}", b"1") for i in range(40)])
            await wait_for(
                lambda: ids(first) <= seen.ids(),
                20,
                message="the first records",
            )
            stats = b.mapping_statistics(uuid_a)
            assert stats.leases is not None and stats.leases.held == 2
            mine = [s for s in stats.shards if s.owner == "b"]
            assert len(mine) == 2 and all(s.lease_counter for s in mine)
            assert {s.owner for s in stats.shards} == {"a", "b"}  # the others, as last read
            shown = status_states(stats)  # as `kinesis-esm status` shows them
            assert shown == {
                s.shard_id: f"{s.state} {s.owner}#{s.lease_counter}" for s in stats.shards
            }
            assert {v.split()[0] for v in shown.values()} <= {"polling", "leased"}

            def workers() -> tuple[WorkerStatistics, ...] | None:
                found = b.mapping_statistics(uuid_a).workers  # b's last read of the table
                counted = {(w.worker_id, w.live, w.leases, w.this_worker) for w in found}
                expected = {("a", True, 2, False), ("b", True, 2, True)}
                return found if counted == expected else None

            fleet = await wait_for(workers, 20, interval=0.3, message="b to count a and b")
            assert [w.worker_id for w in fleet] == ["a", "b"]  # by id, one row each
            assert all(w.heartbeat is not None and w.heartbeat > 0 for w in fleet)
            rows = status_workers(b.mapping_statistics(uuid_a))
            assert [row[:4] for row in rows] == [
                [uuid_a[:8], "a", "yes", "2"],
                [uuid_a[:8], "b (this)", "yes", "2"],
            ]
            assert all(row[4].isdigit() for row in rows)  # the heartbeat counters
        # b stopped: its leases were handed off with their final checkpoints
        assert Counter((await owners(dynamodb, table, uuid_a)).values()) in (
            Counter({"a": 4}),
            Counter({"a": 2, None: 2}),  # released, not yet taken
        )
        second = await put_records(client, stream_name, [(f"k{i}", b"2") for i in range(40)])
        await wait_for(
            lambda: ids(second) <= seen.ids(),
            20,
            message="the second records, all by a",
        )
    assert seen.duplicates() == []
    for shard in {r.shard_id for r in first}:  # one worker per shard
        assert len(seen.workers_of({i for i in ids(first) if i[0] == shard})) == 1
    assert seen.workers_of(ids(second)) == {"a"}
    per_key: dict[str, list[int]] = defaultdict(list)
    for _, _, seq, key in seen.seen:
        per_key[key].append(int(seq))
    assert all(seqs == sorted(seqs) for seqs in per_key.values())


async def test_the_start_time_is_the_fleets_first(dynamodb: str, table: str) -> None:
    async with DynamoDBLeaseStore(table, endpoint_url=dynamodb, region="us-east-1") as store:
        first = await store.claim_started_at("m", 1000.25)
        again = await store.claim_started_at("m", 2000.0)
        other = await store.claim_started_at("n", 3000.0)
        await store.forget_mapping("m")
        after = await store.claim_started_at("m", 4000.0)
    assert first == (1000.25, True)
    assert again == (1000.25, False)
    assert other == (3000.0, True)
    assert after == (4000.0, True)


# Resharding while the fleet runs (kinesis-mock: moto routes puts to a split parent).


async def test_a_split_and_a_merge_while_two_workers_run_keep_parents_before_children(
    kinesis_mock: KinesisMock, stream_name: str, dynamodb: str, table: str
) -> None:
    url = kinesis_mock.endpoint_url
    seen = Deliveries()
    async with kinesis_client(url) as client:
        arn = await create_stream(client, stream_name, 2)
        producer = Producer(client, stream_name)
        config = mapping(arn)
        async with worker(url, dynamodb, table, "a") as a, worker(url, dynamodb, table, "b") as b:
            await a.add_mapping(config, seen.handler("a"))
            await b.add_mapping(config, seen.handler("b"))
            await producer.put(60)
            parent = (await open_shards(client, stream_name))[0]
            await split(client, stream_name, parent)
            await producer.put(60)
            children = [
                s["ShardId"]
                for s in await open_shards(client, stream_name)
                if s.get("ParentShardId") == parent["ShardId"]
            ]
            assert len(children) == 2
            await merge(client, stream_name, *children)
            await producer.put(60)
            await wait_for(lambda: producer.ids() <= seen.ids(), 60, 0.2, "every record")
            lineage = {
                s["ShardId"]: [
                    p for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p
                ]
                for s in await describe_shards(client, stream_name)
            }
    assert seen.duplicates() == []  # nothing moved but by hand-off or SHARD_END
    assert {w for w, *_ in seen.seen} == {"a", "b"}  # the fleet shared the stream
    order: dict[str, list[int]] = defaultdict(list)
    for _, shard, sequence, key in seen.seen:
        order[key].append(counter(seen.data[(shard, sequence)]))
    assert all(ns == sorted(ns) for ns in order.values()), "a key's records out of order"
    position = {}
    for index, (_, shard, _, _) in enumerate(seen.seen):
        position.setdefault(shard, [index, index])[1] = index
    for child, parents in lineage.items():
        for p in parents:
            if child in position and p in position:
                assert position[p][1] < position[child][0], f"{child} began before {p} ended"


# A DynamoDB outage: shards stop once their leases cannot be renewed, and come back.


async def test_an_outage_of_the_lease_table_stops_the_shards_and_they_come_back(
    moto: str, client: KinesisClient, stream_name: str, dynamodb: str, table: str
) -> None:
    arn = await create_stream(client, stream_name, 2)
    seen = Deliveries()
    async with KinesisFaultInjector(dynamodb) as proxy:
        engine = worker(moto, proxy.endpoint_url, table, "a")
        async with engine:
            uuid_a = await engine.add_mapping(mapping(arn), seen.handler("a"))

            def polling() -> bool:
                shards = engine.mapping_statistics(uuid_a).shards
                return sum(s.state == "polling" and s.owner == "a" for s in shards) == 2

            await wait_for(polling, 20, message="both shards leased and read")
            proxy.rule = lambda op, shard, n: Fault("InternalServerError", status=500)
            outage = time.monotonic()

            def dropped() -> bool:
                leases = engine.mapping_statistics(uuid_a).leases
                return leases is not None and leases.held == 0

            await wait_for(dropped, 10, message="the leases dropped")
            stopped_after = time.monotonic() - outage
            # held until hold_time (0.9 failover_time) after the last renewal, not longer
            hold = 0.9 * FAILOVER
            assert hold - FAILOVER / 3 - 0.2 < stopped_after < hold + FAILOVER / 3 + 1.0
            during = await put_records(client, stream_name, [(f"k{i}", b"x") for i in range(20)])
            await anyio.sleep(0.5)  # watch a few polls' time: nothing may be invoked now
            assert not ids(during) & seen.ids(), "invoked a shard whose lease was not held"
            proxy.rule = None  # DynamoDB answers again: the worker takes its leases back
            await wait_for(lambda: ids(during) <= seen.ids(), 20, message="delivery resumed")
            stats = engine.mapping_statistics(uuid_a).leases
            assert stats is not None and stats.lost >= 2 and stats.renewal_failures >= 2
    assert seen.duplicates() == []


async def test_a_delete_removes_the_leases_only_when_no_other_worker_runs_the_mapping(
    moto: str, client: KinesisClient, stream_name: str, dynamodb: str, table: str
) -> None:
    arn = await create_stream(client, stream_name, 2)
    seen = Deliveries()
    config = mapping(arn)
    async with worker(moto, dynamodb, table, "a") as a, worker(moto, dynamodb, table, "b") as b:
        uuid_a = await a.add_mapping(config, seen.handler("a"))
        await b.add_mapping(config, seen.handler("b"))
        await wait_for(lambda: owners(dynamodb, table, uuid_a), 20, message="the leases")
        await a.remove_mapping(uuid_a, delete_state=True)  # b still runs it: kept
        assert len(await owners(dynamodb, table, uuid_a)) == 2
        await b.remove_mapping(uuid_a, delete_state=True)  # the last worker: gone
        assert await owners(dynamodb, table, uuid_a) == {}
    async with DynamoDBLeaseStore(table, endpoint_url=dynamodb, region="us-east-1") as store:
        assert (await store.read_fleet(uuid_a)).workers == ()
        assert (await store.claim_started_at(uuid_a, 5.0)) == (5.0, True)  # its row went too
