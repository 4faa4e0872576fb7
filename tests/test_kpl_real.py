"""KPL de-aggregation (``deaggregate = true``) through a real Kinesis API (moto), with aggregates
made by aws-kinesis-agg: user records delivered once in per-key order, the policy acting on user
records (bisect, partial responses), and checkpoints inside an aggregate."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from aws_kinesis_agg.aggregator import RecordAggregator

from kinesis_esm import (
    DestinationConfig,
    Engine,
    EventSourceMappingConfig,
    KinesisSource,
    MemoryCheckpointStore,
    OnFailure,
    RetrySettings,
    SQLiteCheckpointStore,
)
from tests.support.kinesis import (
    KinesisClient,
    create_stream,
    put_records,
    wait_for,
)

pytestmark = pytest.mark.anyio


def aggregate(users: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    aggregator = RecordAggregator()
    for key, data in users:
        assert aggregator.add_user_record(key, data, None) is None
    packed = aggregator.clear_and_get()
    assert packed is not None
    outer_key, _, blob = packed.get_contents()
    return outer_key, blob


class Collect:
    def __init__(self, poison: set[str] | None = None, report: bool = False) -> None:
        self.events: list[list[dict[str, Any]]] = []
        self.poison = poison or set()
        self.report = report
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        records = event["Records"]
        with self._lock:
            self.events.append(records)
        bad = [r for r in records if r["kinesis"]["partitionKey"] in self.poison]
        if bad and self.report:
            first = bad[0]["kinesis"]
            identifier = f"{first['sequenceNumber']}:{first['subSequenceNumber']}"
            return {"batchItemFailures": [{"itemIdentifier": identifier}]}
        if bad:
            raise ValueError("poison")
        return None

    def keys(self) -> list[str]:
        with self._lock:
            return [r["kinesis"]["partitionKey"] for batch in self.events for r in batch]


def config(arn: str, **settings: Any) -> EventSourceMappingConfig:
    return EventSourceMappingConfig(
        function_name="f",
        event_source_arn=arn,
        starting_position="TRIM_HORIZON",
        deaggregate=True,
        **settings,
    )


async def test_every_user_record_once_in_key_order_with_plain_records_mixed_in(
    moto: str, client: KinesisClient, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 1)
    users = [
        [(f"user-{a}-{i % 4}", json.dumps([a, i]).encode()) for i in range(30)] for a in range(3)
    ]
    puts = [aggregate(group) for group in users]
    puts.insert(1, ("plain-key", b"a plain record"))
    await put_records(client, stream_name, puts)
    collect = Collect()
    async with (
        KinesisSource(endpoint_url=moto, region="us-east-1") as source,
        Engine(source=source, checkpoint_store=MemoryCheckpointStore()) as engine,
    ):
        uuid = await engine.add_mapping(
            config(arn, batch_size=17, parallelization_factor=3), collect
        )
        await wait_for(lambda: len(collect.keys()) >= 91, 20, message="every user record")
        counters = engine.mapping_statistics(uuid).counters
    records = [r for batch in collect.events for r in batch]
    assert len(records) == 91
    assert len({r["eventID"] for r in records}) == 91  # unique per user record
    datas = sorted(r["kinesis"]["data"] for r in records)
    expected = sorted(base64.b64encode(d).decode() for g in users for _, d in g)
    expected.append(base64.b64encode(b"a plain record").decode())
    assert datas == sorted(expected)
    plain = [r for r in records if r["kinesis"]["partitionKey"] == "plain-key"]
    assert len(plain) == 1 and "subSequenceNumber" not in plain[0]["kinesis"]
    for key in {k for g in users for k, _ in g}:  # per user-record key, in order
        subs = [
            (int(r["kinesis"]["sequenceNumber"]), r["kinesis"]["subSequenceNumber"])
            for r in records
            if r["kinesis"]["partitionKey"] == key
        ]
        assert subs == sorted(subs) and len(subs) == 8 - (key.endswith(("2", "3")) * 1)
    for r in records:
        if "subSequenceNumber" in r["kinesis"]:
            k = r["kinesis"]
            assert r["eventID"].endswith(f":{k['sequenceNumber']}:{k['subSequenceNumber']}")
    assert counters.deaggregation_errors == 0


async def test_bisect_isolates_one_poison_user_record_inside_an_aggregate(
    moto: str, client: KinesisClient, stream_name: str, tmp_path: Path
) -> None:
    arn = await create_stream(client, stream_name, 1)
    group = [(f"u{i}", b"{}") for i in range(40)]
    await put_records(client, stream_name, [aggregate(group)])
    collect = Collect(poison={"u23"})
    target = tmp_path / "failures.jsonl"
    settings = {
        "batch_size": 40,
        "bisect_batch_on_function_error": True,
        "maximum_retry_attempts": 0,
        "destination_config": DestinationConfig(OnFailure(f"file://{target}")),
    }
    async with (
        KinesisSource(endpoint_url=moto, region="us-east-1") as source,
        Engine(
            source=source,
            checkpoint_store=MemoryCheckpointStore(),
            retry_settings=RetrySettings(0.01, 0.05),
        ) as engine,
    ):
        uuid = await engine.add_mapping(config(arn, **settings), collect)
        await wait_for(
            lambda: engine.mapping_statistics(uuid).counters.on_failure_delivered_events == 1,
            20,
            message="the poison user record reported",
        )
        await wait_for(
            lambda: {f"u{i}" for i in range(40) if i != 23} <= set(collect.keys()),
            20,
            message="every good user record handled",
        )
    reports = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(reports) == 1
    assert reports[0]["KinesisBatchInfo"]["batchSize"] == 1  # only the poison user record


async def test_a_partial_response_naming_a_user_record_retries_from_that_user_record(
    moto: str, client: KinesisClient, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 1)
    await put_records(client, stream_name, [aggregate([(f"u{i}", b"{}") for i in range(10)])])
    collect = Collect(poison={"u6"}, report=True)
    async with (
        KinesisSource(endpoint_url=moto, region="us-east-1") as source,
        Engine(
            source=source,
            checkpoint_store=MemoryCheckpointStore(),
            retry_settings=RetrySettings(0.01, 0.05),
        ) as engine,
    ):
        settings = {
            "batch_size": 10,
            "function_response_types": ("ReportBatchItemFailures",),
            "maximum_retry_attempts": 1,
        }
        uuid = await engine.add_mapping(config(arn, **settings), collect)
        await wait_for(
            lambda: engine.mapping_statistics(uuid).counters.dropped_events == 4,
            20,
            message="the retry given up",
        )
    assert len(collect.events) == 2
    first, retry = collect.events[0], collect.events[1]
    assert [r["kinesis"]["partitionKey"] for r in first] == [f"u{i}" for i in range(10)]
    # the retry begins at the user record named, not at the aggregate's first user record
    assert [r["kinesis"]["partitionKey"] for r in retry] == [f"u{i}" for i in range(6, 10)]


async def test_a_restart_inside_an_aggregate_does_not_deliver_its_done_user_records_again(
    moto: str, client: KinesisClient, stream_name: str, tmp_path: Path
) -> None:
    arn = await create_stream(client, stream_name, 1)
    await put_records(client, stream_name, [aggregate([(f"u{i}", b"{}") for i in range(30)])])
    state = str(tmp_path / "state.db")
    release = threading.Event()
    seen: list[str] = []

    def hold_the_second_batch(event: dict[str, Any], context: Any) -> None:
        keys = [r["kinesis"]["partitionKey"] for r in event["Records"]]
        seen.extend(keys)
        if "u10" in keys:
            release.wait(10)  # bounded: the test stops the engine meanwhile
            raise RuntimeError("not this time")

    async with (
        KinesisSource(endpoint_url=moto, region="us-east-1") as source,
        Engine(source=source, checkpoint_store=state, stop_grace=0.5) as engine,
    ):
        uuid = await engine.add_mapping(config(arn, batch_size=10), hold_the_second_batch)
        await wait_for(lambda: "u10" in seen, 20, message="the second batch in flight")
        release.set()
    checkpoints = await SQLiteCheckpointStore(state).get_checkpoints(uuid)
    (checkpoint,) = checkpoints.values()
    assert checkpoint.endswith(":9")  # user records 0..9 of the aggregate are done

    collect = Collect()
    async with (
        KinesisSource(endpoint_url=moto, region="us-east-1") as source,
        Engine(source=source, checkpoint_store=state) as engine,
    ):
        await engine.add_mapping(config(arn, batch_size=10), collect)
        await wait_for(lambda: collect.keys()[-1:] == ["u29"], 20, message="the rest")
    assert collect.keys() == [f"u{i}" for i in range(10, 30)]  # nothing before the checkpoint
