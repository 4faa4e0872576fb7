"""FilterCriteria through a real Kinesis API (moto): only matching records reach the function,
BatchSize counts only them, the checkpoint passes filtered-out records (also when nothing of a
poll matches), and Lambda's FilteredOutEventCount counts them."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from kinesis_esm import (
    Engine,
    EventSourceMappingConfig,
    Filter,
    FilterCriteria,
    KinesisSource,
    MemoryCheckpointStore,
)
from tests.support.kinesis import (
    KinesisClient,
    create_stream,
    put_records,
    wait_for,
)

pytestmark = pytest.mark.anyio


class Collect:
    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> None:
        with self._lock:
            self.batches.append(event["Records"])

    @property
    def keys(self) -> list[str]:
        with self._lock:
            return [r["kinesis"]["partitionKey"] for b in self.batches for r in b]


def criteria(*patterns: dict[str, Any]) -> FilterCriteria:
    return FilterCriteria(tuple(Filter(json.dumps(p)) for p in patterns))


async def test_only_matching_records_are_invoked_and_the_checkpoint_passes_the_rest(
    moto: str, client: KinesisClient, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 1)
    records: list[tuple[str, bytes]] = []
    for i in range(60):
        kind = "order" if i % 3 == 0 else "ping"
        records.append((f"k{i}", json.dumps({"kind": kind, "n": i}).encode()))
    records.append(("not-json", b"\x00\xffbinary"))  # a filter with a data clause drops it
    written = await put_records(client, stream_name, records)
    collect = Collect()
    store = MemoryCheckpointStore()
    config = EventSourceMappingConfig(
        function_name="f",
        event_source_arn=arn,
        starting_position="TRIM_HORIZON",
        batch_size=7,
        maximum_batching_window_in_seconds=2,  # batches fill up to BatchSize matching records
        filter_criteria=criteria({"data": {"kind": ["order"]}}, {"partitionKey": ["k1"]}),
    )
    wanted = [k for k, d in records if k == "k1" or b'"order"' in d]
    async with (
        KinesisSource(endpoint_url=moto, region="us-east-1") as source,
        Engine(source=source, checkpoint_store=store) as engine,
    ):
        uuid = await engine.add_mapping(config, collect)

        async def settled() -> bool:
            cps = await store.get_checkpoints(uuid)
            return cps.get(written[-1].shard_id) == written[-1].sequence_number

        await wait_for(settled, 20, message="the checkpoint past the last (filtered-out) record")
        counters = engine.mapping_statistics(uuid).counters
    assert collect.keys == wanted  # in order, and nothing else
    # BatchSize counts only matching records: full batches of 7 of them (all were read at once)
    assert [len(b) for b in collect.batches] == [7, 7, 7]
    assert counters.filtered_out_events == len(records) - len(wanted)
    assert counters.polled_events == len(records)
    assert counters.invoked_events == len(wanted)


async def test_a_poll_where_nothing_matches_advances_the_checkpoint_and_invokes_nothing(
    moto: str, client: KinesisClient, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 1)
    written = await put_records(
        client, stream_name, [(f"p{i}", b'{"kind":"ping"}') for i in range(25)]
    )
    collect = Collect()
    store = MemoryCheckpointStore()
    config = EventSourceMappingConfig(
        function_name="f",
        event_source_arn=arn,
        starting_position="TRIM_HORIZON",
        filter_criteria=criteria({"data": {"kind": ["order"]}}),
    )
    async with (
        KinesisSource(endpoint_url=moto, region="us-east-1") as source,
        Engine(source=source, checkpoint_store=store) as engine,
    ):
        uuid = await engine.add_mapping(config, collect)

        async def checkpointed() -> bool:
            cps = await store.get_checkpoints(uuid)
            return cps.get(written[-1].shard_id) == written[-1].sequence_number

        await wait_for(checkpointed, 20, message="the checkpoint past every filtered-out record")
        counters = engine.mapping_statistics(uuid).counters
    assert collect.batches == []
    assert counters.invocations == 0
    assert counters.filtered_out_events == 25
