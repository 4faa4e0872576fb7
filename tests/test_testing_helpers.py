"""kinesis_esm.testing, tested on itself: events and contexts as Lambda builds them, and
run_handler's account of invocations, retries, bisect, reports and checkpoints. The last test
is the sample user test of docs/function-targets.md."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from kinesis_esm import LambdaContext, Record
from kinesis_esm.testing import (
    FIRST_SEQUENCE,
    STREAM_ARN,
    NotSettled,
    make_context,
    make_event,
    make_records,
    run_handler,
    sequence_numbers,
)

pytestmark = pytest.mark.anyio


def seqs(event: dict[str, Any]) -> list[str]:
    return [r["kinesis"]["sequenceNumber"] for r in event["Records"]]


# Building records, events and contexts


def test_make_records_from_keys_and_payloads() -> None:
    records = make_records(
        [("order-1", b"raw"), ("order-2", "text"), ("order-3", {"id": 3}), [1, 2]], arrival=1000.5
    )
    assert [r.partition_key for r in records] == ["order-1", "order-2", "order-3", "key-3"]
    assert [r.data for r in records] == [b"raw", b"text", b'{"id":3}', b"[1,2]"]
    assert [r.sequence_int for r in records] == [FIRST_SEQUENCE + i for i in range(4)]
    assert {r.approximate_arrival_timestamp for r in records} == {1000.5}
    kept = Record("5", "k", base64.b64encode(b"x").decode(), 1.0)
    assert make_records([kept]) == [kept]


def test_make_records_refuses_malformed_items() -> None:
    with pytest.raises(ValueError, match="item 0"):
        make_records([("key", b"data", "extra")])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="item 1: a partition key"):
        make_records([("ok", b""), ("", b"")])


def test_make_event_is_lambdas_event() -> None:
    event = make_event([("order-1", b"hello")], shard_id="shardId-000000000003")
    [record] = event["Records"]
    sequence = str(FIRST_SEQUENCE)
    assert record["kinesis"]["data"] == base64.b64encode(b"hello").decode()
    assert record["kinesis"]["partitionKey"] == "order-1"
    assert record["kinesis"]["sequenceNumber"] == sequence
    assert record["eventID"] == f"shardId-000000000003:{sequence}"
    assert record["eventSourceARN"] == STREAM_ARN
    assert record["awsRegion"] == "us-east-1"
    assert record["invokeIdentityArn"] == "arn:aws:iam::123456789012:role/kinesis-esm"
    with pytest.raises(ValueError, match="not a Kinesis stream ARN"):
        make_event([("k", b"")], stream_arn="arn:aws:sqs:us-east-1:1:q")


def test_make_context() -> None:
    context = make_context("orders", timeout=2.0, request_id="req-1")
    assert isinstance(context, LambdaContext)
    assert context.function_name == "orders"
    assert context.aws_request_id == "req-1"
    assert context.invoked_function_arn == "arn:aws:lambda:us-east-1:123456789012:function:orders"
    assert 1500 < context.get_remaining_time_in_millis() <= 2000


async def test_the_event_the_engine_sends_is_the_one_make_event_builds() -> None:
    records = make_records([("a", b"1"), ("b", b"2"), ("c", b"3")])
    events: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        events.append(event)

    await run_handler(handler, records, batch_size=10)
    assert events == [make_event(records)]


# run_handler


async def test_a_good_handler_settles_quickly_in_batches() -> None:
    records = make_records([(f"k{i}", f"v{i}") for i in range(10)])
    contexts: list[LambdaContext] = []

    async def handler(event: dict[str, Any], context: LambdaContext) -> None:
        contexts.append(context)

    started = time.monotonic()
    result = await run_handler(handler, records, batch_size=4, function_name="orders")
    assert time.monotonic() - started < 2.0
    assert result.settled
    assert result.batches == [
        sequence_numbers(records[0:4]),
        sequence_numbers(records[4:8]),
        sequence_numbers(records[8:10]),
    ]
    assert all(i.ok and i.response is None and i.error is None for i in result.invocations)
    assert result.checkpoints[-1] == records[-1].sequence_number
    assert list(result.checkpoints) == sorted(set(result.checkpoints), key=int)
    assert result.failures == () and result.retried == () and result.not_invoked == ()
    assert (result.counters.invocations, result.counters.succeeded_events) == (3, 10)
    assert {c.function_name for c in contexts} == {"orders"}


async def test_records_input_passes_typed_records() -> None:
    seen: list[list[bytes]] = []

    def handler(records: list[Record], context: LambdaContext) -> None:
        seen.append([r.data for r in records])

    await run_handler(handler, make_records([b"a", b"b"]), input="records")
    assert seen == [[b"a", b"b"]]


async def test_partial_responses_retry_from_the_lowest_failed_record() -> None:
    records = make_records([b"a", b"b", b"c", b"d"])
    failed_once: set[str] = set()

    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        third = records[2].sequence_number
        if third in seqs(event) and third not in failed_once:
            failed_once.add(third)
            return {"batchItemFailures": [{"itemIdentifier": third}]}
        return {"batchItemFailures": []}

    result = await run_handler(
        handler, records, batch_size=4, function_response_types=["ReportBatchItemFailures"]
    )
    assert result.batches == [sequence_numbers(records), sequence_numbers(records[2:])]
    assert result.retried == sequence_numbers(records[2:])
    assert result.invocations[0].response == {
        "batchItemFailures": [{"itemIdentifier": records[2].sequence_number}]
    }
    assert result.checkpoints == (records[1].sequence_number, records[3].sequence_number)


async def test_records_too_old_are_reported_without_an_invocation() -> None:
    records = make_records([b"old", b"older"], arrival=time.time() - 3600)
    calls: list[int] = []
    result = await run_handler(
        lambda event, context: calls.append(1), records, maximum_record_age_in_seconds=60
    )
    assert calls == [] and result.invocations == ()
    [failure] = result.failures
    assert failure.condition == "RecordAgeExceeded"
    assert failure.sequence_numbers == sequence_numbers(records)
    assert failure.approximate_invoke_count == 1
    assert "responseContext" not in failure.report


async def test_without_capture_discarded_records_are_counted_as_dropped() -> None:
    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        raise RuntimeError("always")

    result = await run_handler(
        handler, make_records([b"x"]), maximum_retry_attempts=1, capture_failures=False
    )
    assert result.failures == ()
    assert result.counters.dropped_events == 1
    assert len(result.invocations) == 2


async def test_a_handler_that_never_succeeds_is_not_settled_within_the_wait() -> None:
    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        raise RuntimeError("stuck")

    started = time.monotonic()
    with pytest.raises(NotSettled) as caught:
        await run_handler(handler, make_records([b"x", b"y"]), wait=0.5)
    assert time.monotonic() - started < 5.0
    result = caught.value.result
    assert not result.settled
    assert len(result.invocations) > 1  # Lambda's default: retry forever
    assert all(i.error == "Unhandled: RuntimeError: stuck" for i in result.invocations)
    assert result.checkpoints == ()
    assert "maximum_retry_attempts" in str(caught.value)


async def test_sequence_numbers_must_increase() -> None:
    records = make_records([b"a", b"b"])
    with pytest.raises(ValueError, match="must increase"):
        await run_handler(lambda e, c: None, [records[1], records[0]])
    with pytest.raises(ValueError, match="at least one"):
        await run_handler(lambda e, c: None, [])


async def test_settings_reach_the_mapping() -> None:
    records = make_records([(f"key-{i % 3}", b"x") for i in range(9)])
    result = await run_handler(lambda e, c: None, records, batch_size=2, parallelization_factor=3)
    assert result.settled
    assert max(len(b) for b in result.batches) <= 2
    assert sorted(s for b in result.batches for s in b) == sorted(sequence_numbers(records))


# The sample user test (docs/function-targets.md shows it)


def process(payload: bytes) -> None:
    if payload == b"poison":
        raise ValueError("cannot parse order")


def handler(event: dict[str, Any], context: Any) -> None:
    for record in event["Records"]:
        process(base64.b64decode(record["kinesis"]["data"]))


async def test_a_poison_record_is_isolated_by_bisect_and_reported() -> None:
    records = make_records([("o-1", b"ok"), ("o-2", b"ok"), ("o-3", b"poison"), ("o-4", b"ok")])
    poison = records[2].sequence_number

    result = await run_handler(
        handler,
        records,
        batch_size=4,
        bisect_batch_on_function_error=True,
        maximum_retry_attempts=1,
    )

    assert [len(batch) for batch in result.batches] == [4, 2, 2, 1, 1, 1]  # halves, then one
    assert result.reported == (poison,)  # only the poison record reached the destination
    [failure] = result.failures
    assert failure.condition == "RetryAttemptsExhausted"
    assert failure.function_error == "Unhandled"
    assert failure.approximate_invoke_count == 4  # 4, 2, then 1 and its one retry
    assert result.checkpoints[-1] == records[-1].sequence_number  # the shard moved on
    assert result.invocations_of(poison)[-1].error == "Unhandled: ValueError: cannot parse order"
