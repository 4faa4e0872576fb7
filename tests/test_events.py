"""Golden tests of what a handler receives, through a real Kinesis API (moto): Lambda's event,
field by field and in Lambda's key order, and the context object."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from typing import Any

import pytest

from kinesis_esm import (
    Engine,
    EventSourceMappingConfig,
    KinesisConfig,
    LambdaContext,
    MemoryCheckpointStore,
    Record,
    build_event,
)
from kinesis_esm.events import EventSource
from tests.support.kinesis import (
    KinesisClient,
    StreamRecord,
    create_stream,
    kinesis_client,
    put_records,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.anyio

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/orders-consumer"
# Lambda's order of the keys, outside and inside "kinesis" (reference section 2.1).
RECORD_KEYS = [
    "kinesis",
    "eventSource",
    "eventVersion",
    "eventID",
    "eventName",
    "invokeIdentityArn",
    "awsRegion",
    "eventSourceARN",
]
KINESIS_KEYS = [
    "kinesisSchemaVersion",
    "partitionKey",
    "sequenceNumber",
    "data",
    "approximateArrivalTimestamp",
]
# Epoch seconds (10 integer digits) with at most millisecond decimals, as JSON text.
TIMESTAMP_TEXT = re.compile(r"\d{10}(\.\d{1,3})?")


async def arrival_timestamps(
    client: KinesisClient, stream: str, shard_ids: set[str]
) -> dict[str, float]:
    """ApproximateArrivalTimestamp of every record, read with botocore's own parser."""
    found: dict[str, float] = {}
    for shard_id in sorted(shard_ids):
        iterator = (
            await client.get_shard_iterator(
                StreamName=stream, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
            )
        )["ShardIterator"]
        response = await client.get_records(ShardIterator=iterator, Limit=10_000)
        for r in response["Records"]:
            found[f"{shard_id}:{r['SequenceNumber']}"] = r[
                "ApproximateArrivalTimestamp"
            ].timestamp()
    return found


def expected_record(
    written: StreamRecord, arrival: float, stream_arn: str, role: str
) -> dict[str, Any]:
    """Lambda's event record, built independently from what was written."""
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": written.partition_key,
            "sequenceNumber": written.sequence_number,
            "data": base64.b64encode(written.data).decode("ascii"),
            "approximateArrivalTimestamp": round(arrival, 3),
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{written.shard_id}:{written.sequence_number}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": role,
        "awsRegion": REGION,
        "eventSourceARN": stream_arn,
    }


def payloads() -> list[tuple[str, bytes]]:
    """Keys and data with some range: unicode, quotes, binary, JSON, a large record."""
    items: list[tuple[str, bytes]] = [
        ("customer-1", b'{"order": 1, "amount": 12.5}'),
        ("kunde-ü-✓", "naïve café ✓".encode()),
        ('quote"and\\backslash', bytes(range(256))),
        ("x" * 256, b"\x00\xff" * 50),
        ("big", b"B" * 100_000),
    ]
    items += [(f"key-{i}", f"record {i}".encode()) for i in range(35)]
    return items


async def test_event_is_lambdas_exactly(moto: str, stream_name: str) -> None:
    """Every field, in Lambda's key order, checked against what was put; eventID is
    shardId:sequenceNumber; data is the base64 of the bytes put; the arrival time is epoch
    seconds with milliseconds; a batch holds one shard's records in sequence order."""
    async with kinesis_client(moto) as client:
        stream_arn = await create_stream(client, stream_name, 2)
        before = time.time()
        written = await put_records(client, stream_name, payloads())
        after = time.time()
        arrivals = await arrival_timestamps(client, stream_name, {w.shard_id for w in written})
    assert len({w.shard_id for w in written}) == 2  # both shards have records

    events: list[str] = []  # each event as the JSON text a Lambda handler would get

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        events.append(json.dumps(event))

    config = EventSourceMappingConfig(
        function_name="golden",
        event_source_arn=stream_arn,
        starting_position="TRIM_HORIZON",
        batch_size=8,
    )
    async with Engine(
        kinesis=KinesisConfig(endpoint_url=moto, region=REGION),
        checkpoint_store=MemoryCheckpointStore(),
    ) as engine:
        await engine.add_mapping(config, handler, invoke_identity_arn=ROLE)

        def delivered() -> int:
            return sum(len(json.loads(e)["Records"]) for e in events)

        await wait_for(lambda: delivered() >= len(written), 10, message="every record")

    by_id = {f"{w.shard_id}:{w.sequence_number}": w for w in written}
    seen: dict[str, list[str]] = {}  # shard -> event ids in delivery order
    for text in events:
        event = json.loads(text)
        assert list(event) == ["Records"]
        records = event["Records"]
        assert 1 <= len(records) <= 8
        shards = {r["eventID"].split(":")[0] for r in records}
        assert len(shards) == 1, f"a batch mixes shards: {shards}"
        sequences = [int(r["kinesis"]["sequenceNumber"]) for r in records]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
        for record in records:
            assert list(record) == RECORD_KEYS
            assert list(record["kinesis"]) == KINESIS_KEYS
            event_id = record["eventID"]
            expected = expected_record(by_id[event_id], arrivals[event_id], stream_arn, ROLE)
            # Same text: same keys, same order, same values, same number formatting.
            assert json.dumps(record) == json.dumps(expected)
            stamp = record["kinesis"]["approximateArrivalTimestamp"]
            assert TIMESTAMP_TEXT.fullmatch(json.dumps(stamp)), stamp
            assert before - 2 <= stamp <= after + 2  # seconds, not milliseconds
            assert base64.b64decode(record["kinesis"]["data"]) == by_id[event_id].data
        seen.setdefault(shards.pop(), []).extend(r["eventID"] for r in records)

    # Every record exactly once, and each shard's records in the order they were written.
    for shard_id, ids in seen.items():
        assert ids == [
            f"{w.shard_id}:{w.sequence_number}" for w in written if w.shard_id == shard_id
        ]
    assert sum(len(ids) for ids in seen.values()) == len(written)


async def test_default_invoke_identity_is_a_role_of_the_streams_account(
    moto: str, stream_name: str
) -> None:
    async with kinesis_client(moto) as client:
        stream_arn = await create_stream(client, stream_name, 1)
        await put_records(client, stream_name, [("k", b"v")])
    events: list[dict[str, Any]] = []
    config = EventSourceMappingConfig(
        function_name="plain", event_source_arn=stream_arn, starting_position="TRIM_HORIZON"
    )
    async with Engine(kinesis=KinesisConfig(endpoint_url=moto, region=REGION)) as engine:
        await engine.add_mapping(config, lambda event, context: events.append(event))
        await wait_for(lambda: events, 10, message="the event")
    record = events[0]["Records"][0]
    assert re.fullmatch(r"arn:aws:iam::123456789012:role/[\w+=,.@/-]+", record["invokeIdentityArn"])
    assert record["eventSourceARN"] == stream_arn
    assert record["awsRegion"] == REGION


async def test_context_has_what_lambda_handlers_use(moto: str, stream_name: str) -> None:
    async with kinesis_client(moto) as client:
        stream_arn = await create_stream(client, stream_name, 1)
        await put_records(client, stream_name, [(f"k{i}", b"v") for i in range(3)])
    seen: list[dict[str, Any]] = []
    handler_threads: set[int] = set()

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        handler_threads.add(threading.get_ident())
        first = context.get_remaining_time_in_millis()
        # Time passes inside the handler (bounded): the remaining time goes down with it.
        later = wait_until(
            lambda: (left := context.get_remaining_time_in_millis()) < first and left,
            2,
            interval=0.01,
            message="the remaining time to decrease",
        )
        seen.append(
            {
                "aws_request_id": context.aws_request_id,
                "function_name": context.function_name,
                "invoked_function_arn": context.invoked_function_arn,
                "memory_limit_in_mb": context.memory_limit_in_mb,
                "remaining": (first, later),
            }
        )

    config = EventSourceMappingConfig(
        function_name="orders-fn",
        event_source_arn=stream_arn,
        starting_position="TRIM_HORIZON",
        batch_size=1,
    )
    async with Engine(kinesis=KinesisConfig(endpoint_url=moto, region=REGION)) as engine:
        await engine.add_mapping(config, handler, function_timeout=4.0)
        await wait_for(lambda: len(seen) >= 3, 10, message="three invocations")

    request_ids = [s["aws_request_id"] for s in seen]
    assert len(set(request_ids)) == len(request_ids)  # one per invocation
    for s in seen:
        assert str(uuid.UUID(s["aws_request_id"])) == s["aws_request_id"]
        assert s["function_name"] == "orders-fn"
        assert s["invoked_function_arn"] == (
            "arn:aws:lambda:us-east-1:123456789012:function:orders-fn"
        )
        assert int(s["memory_limit_in_mb"]) == 128  # Lambda's default memory size
        first, later = s["remaining"]
        assert 3000 < first <= 4000  # the function timeout, counted from the invocation
        assert 0 < later < first


@pytest.mark.parametrize(
    ("wire", "shown"), [(None, None), ("NONE", None), ("KMS", "KMS")], ids=["absent", "NONE", "KMS"]
)
def test_encryption_type_appears_for_kms_streams_only(wire: str | None, shown: str | None) -> None:
    """AWS's sample event of a KMS stream has encryptionType; its unencrypted samples have none,
    though GetRecords may say EncryptionType NONE for them."""
    source = EventSource(
        "arn:aws:kinesis:us-east-1:123456789012:stream/s", "shardId-1", "us-east-1", "r"
    )
    event = build_event(source, [Record("1", "k", "AA==", 1.0, wire)])
    assert event["Records"][0]["kinesis"].get("encryptionType") == shown
