"""Failure handling end to end: real Kinesis, SQS and S3 (moto), driven through the Engine.

Every wait is for a condition, with a bound; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import pytest

from kinesis_esm import (
    DestinationConfig,
    Engine,
    EventSourceMappingConfig,
    InvokeResult,
    KinesisConfig,
    LambdaContext,
    OnFailure,
    PollSettings,
    RetrySettings,
)
from kinesis_esm.pipeline import _processor as processing
from kinesis_esm.policy._failures import iso_millis
from tests.support.destinations import (
    aws_client,
    create_bucket,
    create_queue,
    point_destinations_at,
    receive_all,
    s3_objects,
    wait_for_messages,
)
from tests.support.kinesis import create_stream, kinesis_client, put_records, wait_for
from tests.support.proxy import FaultProxy

pytestmark = pytest.mark.anyio

SHARD = "shardId-000000000000"
ACCOUNT = "123456789012"
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
FAST_POLL = PollSettings(base_interval=0.05, min_interval=0.02)
FAST_RETRY = RetrySettings(initial=0.01, maximum=0.05)


@dataclass
class Env:
    endpoint: str
    stream_name: str
    stream_arn: str
    kinesis: Any
    sqs: Any
    s3: Any
    queue_url: str = ""
    queue_arn: str = ""
    bucket: str = "esm-failures"
    bucket_arn: str = ""


@pytest.fixture
async def env(moto: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    point_destinations_at(monkeypatch, moto)
    async with (
        kinesis_client(moto) as kinesis,
        aws_client("sqs", moto) as sqs,
        aws_client("s3", moto) as s3,
    ):
        arn = await create_stream(kinesis, "failures", 1)
        e = Env(moto, "failures", arn, kinesis, sqs, s3)
        e.queue_url, e.queue_arn = await create_queue(sqs, "failures")
        e.bucket_arn = await create_bucket(s3, e.bucket)
        yield e


@asynccontextmanager
async def engine_for(env: Env) -> AsyncIterator[Engine]:
    async with Engine(
        kinesis=KinesisConfig(endpoint_url=env.endpoint),
        poll_settings=FAST_POLL,
        retry_settings=FAST_RETRY,
    ) as engine:
        yield engine


def mapping(
    env: Env, name: str, destination: str | None, **settings: Any
) -> EventSourceMappingConfig:
    return EventSourceMappingConfig(
        function_name=name,
        event_source_arn=env.stream_arn,
        starting_position="TRIM_HORIZON",
        destination_config=DestinationConfig(OnFailure(destination)),
        **settings,
    )


@dataclass
class Calls:
    """What a handler saw: the sequence numbers of each invocation, its event and request id."""

    batches: list[list[str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)

    def record(self, event: dict[str, Any], context: LambdaContext) -> list[str]:
        seqs = [r["kinesis"]["sequenceNumber"] for r in event["Records"]]
        self.batches.append(seqs)
        self.events.append(json.loads(json.dumps(event)))
        self.request_ids.append(context.aws_request_id)
        return seqs


async def checkpoint_reaches(engine: Engine, uuid: str, seq: str, timeout: float = 15.0) -> None:  # noqa: ASYNC109
    def reached() -> bool:
        shards = engine.mapping_statistics(uuid).shards
        return bool(shards) and shards[0].checkpoint == seq

    await wait_for(reached, timeout, message=f"checkpoint of {uuid} to reach {seq}")


def checkpoint(engine: Engine, uuid: str) -> str | None:
    shards = engine.mapping_statistics(uuid).shards
    return shards[0].checkpoint if shards else None


def parse_iso(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:{name}"


def assert_batch_info(report: dict[str, Any], env: Env, records: list[dict[str, Any]]) -> None:
    first, last = records[0]["kinesis"], records[-1]["kinesis"]
    assert report["KinesisBatchInfo"] == {
        "shardId": SHARD,
        "startSequenceNumber": first["sequenceNumber"],
        "endSequenceNumber": last["sequenceNumber"],
        "approximateArrivalOfFirstRecord": iso_millis(first["approximateArrivalTimestamp"]),
        "approximateArrivalOfLastRecord": iso_millis(last["approximateArrivalTimestamp"]),
        "batchSize": len(records),
        "streamArn": env.stream_arn,
    }


# the reference's response table, section 3: BatchSize 1, MaximumRetryAttempts 2

RAISE = object()
VALID = object()  # the batch's own sequence number: a valid partial response
ROWS: list[tuple[str, Any, int, str | None]] = [
    # (row, what the function returns, invocations, functionError; None: complete success)
    ("empty string", "", 1, None),
    ("empty list", [], 1, None),
    ("null", None, 1, None),
    ("empty object", {}, 1, None),
    ("batchItemFailures []", {"batchItemFailures": []}, 1, None),
    ("batchItemFailures null", {"batchItemFailures": None}, 1, None),
    ("itemIdentifier empty", {"batchItemFailures": [{"itemIdentifier": ""}]}, 3, "null"),
    ("itemIdentifier null", {"batchItemFailures": [{"itemIdentifier": None}]}, 3, "null"),
    ("wrong key", {"batchItemFailures": [{"foo": 123}]}, 3, "null"),
    ("wrong key, null", {"batchItemFailures": [{"foo": None}]}, 3, "null"),
    ("unknown identifier", {"batchItemFailures": [{"itemIdentifier": 123}]}, 3, "null"),
    ("unhandled exception", RAISE, 3, "Unhandled"),
    ("valid identifier", VALID, 3, "null"),
]


@pytest.mark.parametrize(
    ("returns", "invocations", "function_error"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
async def test_response_table(
    env: Env, returns: Any, invocations: int, function_error: str | None
) -> None:
    [written] = await put_records(env.kinesis, env.stream_name, [("key", b"the record")])
    seq = written.sequence_number
    assert seq != "123"
    calls = {"sqs": Calls(), "s3": Calls()}

    def handler_for(kind: str) -> Callable[[dict[str, Any], LambdaContext], Any]:
        def handler(event: dict[str, Any], context: LambdaContext) -> Any:
            seqs = calls[kind].record(event, context)
            if returns is RAISE:
                raise RuntimeError("boom")
            if returns is VALID:
                return {"batchItemFailures": [{"itemIdentifier": seqs[0]}]}
            return returns

        return handler

    settings = {
        "batch_size": 1,
        "maximum_retry_attempts": 2,
        "function_response_types": ("ReportBatchItemFailures",),
    }
    started = time.time()
    async with engine_for(env) as engine:
        uuids = {
            "sqs": await engine.add_mapping(
                mapping(env, "to-sqs", env.queue_arn, **settings), handler_for("sqs")
            ),
            "s3": await engine.add_mapping(
                mapping(env, "to-s3", env.bucket_arn, **settings), handler_for("s3")
            ),
        }
        for uuid in uuids.values():
            await checkpoint_reaches(engine, uuid, seq)
        counters = {kind: engine.mapping_statistics(uuid).counters for kind, uuid in uuids.items()}
        results = {
            kind: engine.mapping_statistics(uuid).last_processing_result
            for kind, uuid in uuids.items()
        }
    for kind in ("sqs", "s3"):
        assert calls[kind].batches == [[seq]] * invocations
        assert counters[kind].invocations == invocations
        assert counters[kind].errors == (invocations if returns is RAISE else 0)
        assert counters[kind].dropped_events == 0
    if function_error is None:
        assert await receive_all(env.sqs, env.queue_url) == []
        assert await s3_objects(env.s3, env.bucket) == {}
        assert results == {"sqs": "OK", "s3": "OK"}
        return
    [message] = await wait_for_messages(env.sqs, env.queue_url, 1)
    [(key, s3_report)] = (await s3_objects(env.s3, env.bucket)).items()
    for kind, report in (("sqs", message), ("s3", s3_report)):
        name = f"to-{kind}"
        assert report["requestContext"] == {
            "requestId": calls[kind].request_ids[-1],
            "functionArn": function_arn(name),
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 3,
        }
        assert report["responseContext"] == {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": None if function_error == "null" else function_error,
        }
        assert report["version"] == "1.0"
        assert ISO.fullmatch(report["timestamp"])
        assert started - 1 <= parse_iso(report["timestamp"]) <= time.time() + 1
        assert_batch_info(report, env, calls[kind].events[-1]["Records"])
        assert counters[kind].on_failure_delivered_events == 1
        assert counters[kind].failed_invoke_events == 3
    assert list(message) == [
        "requestContext",
        "responseContext",
        "version",
        "timestamp",
        "KinesisBatchInfo",
    ]
    assert list(s3_report) == [*message, "payload"]
    assert json.loads(s3_report["payload"]) == calls["s3"].events[-1]
    stamp = s3_report["timestamp"]
    expected_key = (
        rf"aws/lambda/{uuids['s3']}/{SHARD}/{stamp[:4]}/{stamp[5:7]}/{stamp[8:10]}/"
        rf"{stamp[:10]}T{stamp[11:13]}\.{stamp[14:16]}\.{stamp[17:19]}-{UUID}"
    )
    assert re.fullmatch(expected_key, key), key


async def test_poison_record_is_isolated_by_bisect(env: Env) -> None:
    written = await put_records(
        env.kinesis,
        env.stream_name,
        [("key", b"poison" if i == 37 else b"record %d" % i) for i in range(100)],
    )
    poison = written[37].sequence_number
    calls = Calls()
    succeeded: list[str] = []

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        seqs = calls.record(event, context)
        if poison in seqs:
            raise ValueError("poison")
        succeeded.extend(seqs)

    config = mapping(
        env,
        "bisecting",
        env.queue_arn,
        batch_size=100,
        maximum_retry_attempts=1,
        bisect_batch_on_function_error=True,
    )
    async with engine_for(env) as engine:
        uuid = await engine.add_mapping(config, handler)
        await checkpoint_reaches(engine, uuid, written[-1].sequence_number)
        stats = engine.mapping_statistics(uuid)
    assert calls.batches[0] == [r.sequence_number for r in written]  # one batch of 100
    assert sorted(succeeded, key=int) == [r.sequence_number for r in written if r.data != b"poison"]
    [report] = await wait_for_messages(env.sqs, env.queue_url, 1)
    assert report["KinesisBatchInfo"]["batchSize"] == 1
    assert report["KinesisBatchInfo"]["startSequenceNumber"] == poison
    assert report["KinesisBatchInfo"]["endSequenceNumber"] == poison
    carried = [i for i, seqs in enumerate(calls.batches) if poison in seqs]
    assert report["requestContext"]["approximateInvokeCount"] == len(carried)
    assert report["requestContext"]["requestId"] == calls.request_ids[carried[-1]]
    assert calls.batches.count([poison]) == 2  # alone: 1 + MaximumRetryAttempts
    assert report["responseContext"]["functionError"] == "Unhandled"
    assert stats.counters.on_failure_delivered_events == 1
    assert stats.counters.dropped_events == 0
    assert await receive_all(env.sqs, env.queue_url) == []


async def arrival_times(env: Env) -> dict[str, float]:
    shard_iterator = (
        await env.kinesis.get_shard_iterator(
            StreamName=env.stream_name, ShardId=SHARD, ShardIteratorType="TRIM_HORIZON"
        )
    )["ShardIterator"]
    response = await env.kinesis.get_records(ShardIterator=shard_iterator)
    return {
        r["SequenceNumber"]: r["ApproximateArrivalTimestamp"].timestamp()
        for r in response["Records"]
    }


async def test_expired_records_are_reported_without_invoking(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = await put_records(env.kinesis, env.stream_name, [("k", b"old %d" % i) for i in range(3)])
    arrived = await arrival_times(env)
    last_old = arrived[old[-1].sequence_number]
    await wait_for(lambda: time.time() > last_old + 0.01, 5, message="the clock to move on")
    fresh = await put_records(
        env.kinesis, env.stream_name, [("k", b"new %d" % i) for i in range(2)]
    )
    arrived = await arrival_times(env)
    first_fresh = arrived[fresh[0].sequence_number]
    assert first_fresh > last_old
    # a frozen clock exactly 60 s after the first fresh record arrived: the old ones are older
    monkeypatch.setattr(processing, "wall_clock", lambda: first_fresh + 60)
    calls = Calls()
    config = mapping(env, "aging", env.queue_arn, batch_size=10, maximum_record_age_in_seconds=60)
    async with engine_for(env) as engine:
        uuid = await engine.add_mapping(config, calls.record)
        await checkpoint_reaches(engine, uuid, fresh[-1].sequence_number)
        counters = engine.mapping_statistics(uuid).counters
    assert calls.batches == [[r.sequence_number for r in fresh]]
    [report] = await wait_for_messages(env.sqs, env.queue_url, 1)
    assert "responseContext" not in report
    context = report["requestContext"]
    assert (context["condition"], context["approximateInvokeCount"]) == ("RecordAgeExceeded", 1)
    assert re.fullmatch(UUID, context["requestId"])
    assert context["functionArn"] == function_arn("aging")
    info = report["KinesisBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (
        old[0].sequence_number,
        old[-1].sequence_number,
        3,
    )
    assert info["approximateArrivalOfLastRecord"] == iso_millis(last_old)
    assert report["timestamp"] == iso_millis(first_fresh + 60)
    assert (counters.invocations, counters.invoked_events) == (1, 2)
    assert counters.on_failure_delivered_events == 3


async def test_records_age_out_while_retried(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    written = await put_records(env.kinesis, env.stream_name, [("k", b"a"), ("k", b"b")])
    offset = [0.0]
    monkeypatch.setattr(processing, "wall_clock", lambda: time.time() + offset[0])
    calls = Calls()

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        calls.record(event, context)
        if len(calls.batches) == 4:
            offset[0] = 3600.0  # an hour passes during the fourth attempt
        raise RuntimeError("still failing")

    config = mapping(env, "retrying", env.bucket_arn, maximum_record_age_in_seconds=60)
    async with engine_for(env) as engine:
        uuid = await engine.add_mapping(config, handler)  # MaximumRetryAttempts -1: forever
        await checkpoint_reaches(engine, uuid, written[-1].sequence_number)
    [report] = (await s3_objects(env.s3, env.bucket)).values()
    assert report["requestContext"]["condition"] == "RecordAgeExceeded"
    assert report["requestContext"]["approximateInvokeCount"] == 4
    assert report["requestContext"]["requestId"] == calls.request_ids[-1]
    assert "responseContext" not in report
    assert_batch_info(report, env, calls.events[-1]["Records"])
    assert json.loads(report["payload"])["Records"] == calls.events[-1]["Records"]


async def test_destination_down_holds_the_shard_until_it_is_back(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = await put_records(env.kinesis, env.stream_name, [("k", b"%d" % i) for i in range(3)])
    host, port = env.endpoint.removeprefix("http://").split(":")
    async with FaultProxy(host, int(port)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", proxy.endpoint_url)
        await proxy.set_mode("refuse")

        def handler(event: dict[str, Any], context: LambdaContext) -> None:
            raise RuntimeError("fails")

        config = mapping(env, "held", env.queue_arn, maximum_retry_attempts=0)
        async with engine_for(env) as engine:
            uuid = await engine.add_mapping(config, handler)

            def failures() -> int:
                return engine.mapping_statistics(uuid).counters.destination_delivery_failures

            await wait_for(lambda: failures() >= 3, 10, message="failed deliveries")
            stats = engine.mapping_statistics(uuid)
            assert stats.counters.dropped_events == 0
            assert stats.counters.invocations == 1  # the shard waits: nothing further invoked
            assert checkpoint(engine, uuid) is None
            assert stats.last_processing_result == processing.DELIVERY_FAILED
            await proxy.set_mode("pass")
            await checkpoint_reaches(engine, uuid, written[-1].sequence_number)
            counters = engine.mapping_statistics(uuid).counters
    assert (counters.dropped_events, counters.on_failure_delivered_events) == (0, 3)
    [report] = await wait_for_messages(env.sqs, env.queue_url, 1)
    assert report["KinesisBatchInfo"]["batchSize"] == 3


async def test_drop_mode_counts_and_goes_on(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    written = await put_records(env.kinesis, env.stream_name, [("k", b"a"), ("k", b"b")])
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", env.endpoint)
    settings: dict[str, Any] = {"maximum_retry_attempts": 0, "on_failure_delivery": "drop"}
    missing_queue = env.queue_arn.replace(":failures", ":no-such-queue")
    config = mapping(env, "dropping", missing_queue, **settings)

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        raise RuntimeError("fails")

    with caplog.at_level(logging.ERROR, logger="kinesis_esm.dropped"):
        async with engine_for(env) as engine:
            uuid = await engine.add_mapping(config, handler)
            await checkpoint_reaches(engine, uuid, written[-1].sequence_number)
            counters = engine.mapping_statistics(uuid).counters
    assert (counters.destination_delivery_failures, counters.dropped_events) == (1, 2)
    assert counters.on_failure_delivered_events == 0
    span = f"{written[0].sequence_number}..{written[-1].sequence_number}"
    assert any(span in r.getMessage() for r in caplog.records)


async def test_without_destination_discards_are_counted_and_logged(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    written = await put_records(env.kinesis, env.stream_name, [("k", b"a"), ("k", b"b")])

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        raise RuntimeError("fails")

    config = mapping(env, "nowhere", None, maximum_retry_attempts=1)
    with caplog.at_level(logging.ERROR, logger="kinesis_esm.dropped"):
        async with engine_for(env) as engine:
            uuid = await engine.add_mapping(config, handler)
            await checkpoint_reaches(engine, uuid, written[-1].sequence_number)
            counters = engine.mapping_statistics(uuid).counters
    assert (counters.invocations, counters.errors, counters.dropped_events) == (2, 2, 2)
    span = f"{written[0].sequence_number}..{written[-1].sequence_number}"
    [logged] = [r for r in caplog.records if r.name == "kinesis_esm.dropped"]
    assert span in logged.getMessage() and "RetryAttemptsExhausted" in logged.getMessage()


class HangingFunction:
    """A function backend that never answers (no timeout of its own)."""

    name = "hangs"
    arn = function_arn("hangs")
    timeout = 0.1
    input: Literal["event", "records"] = "event"

    async def invoke(self, payload: Any) -> InvokeResult:
        await anyio.sleep_forever()
        raise AssertionError


async def _slow(event: Any, context: LambdaContext) -> None:
    await anyio.sleep(30)


def _unserializable(event: Any, context: LambdaContext) -> object:
    return object()


@pytest.mark.parametrize(
    "function", [HangingFunction(), _slow, _unserializable], ids=["hangs", "times-out", "garbage"]
)
async def test_misbehaving_functions_never_stall_the_shard(
    env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, function: Any
) -> None:
    monkeypatch.setattr(processing, "INVOKE_GRACE", 0.1)
    written = await put_records(env.kinesis, env.stream_name, [("k", b"x")])
    target = tmp_path / "failures.jsonl"
    config = mapping(env, "misbehaves", f"file://{target}", maximum_retry_attempts=0)
    async with engine_for(env) as engine:
        uuid = await engine.add_mapping(config, function, function_timeout=0.2)
        await checkpoint_reaches(engine, uuid, written[-1].sequence_number)
        stats = engine.mapping_statistics(uuid)
    [line] = target.read_text().splitlines()
    report = json.loads(line)
    assert report["responseContext"]["functionError"] == "Unhandled"
    assert report["requestContext"]["approximateInvokeCount"] == 1
    assert (
        json.loads(report["payload"])["Records"][0]["kinesis"]["sequenceNumber"]
        == written[0].sequence_number
    )
    assert (stats.counters.errors, stats.counters.on_failure_delivered_events) == (1, 1)
    assert stats.last_processing_result == processing.FUNCTION_CALL_FAILED


class FlakyInvoker:
    """Cannot invoke (raises) the first ``failures`` times, then runs the handler."""

    name = "flaky"
    arn = function_arn("flaky")
    timeout = 1.0
    input: Literal["event", "records"] = "event"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def invoke(self, payload: Any) -> InvokeResult:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("TooManyRequestsException: Rate exceeded")
        return InvokeResult(f"request-{self.calls}", payload=None)


async def test_errors_before_invocation_do_not_count_as_retries(env: Env) -> None:
    written = await put_records(env.kinesis, env.stream_name, [("k", b"x")])
    function = FlakyInvoker(failures=4)
    config = mapping(env, "flaky", env.queue_arn, maximum_retry_attempts=0)
    async with engine_for(env) as engine:
        uuid = await engine.add_mapping(config, function)
        await checkpoint_reaches(engine, uuid, written[-1].sequence_number)
        stats = engine.mapping_statistics(uuid)
    assert function.calls == 5
    assert (stats.counters.invocations, stats.counters.errors) == (1, 0)
    assert (stats.counters.dropped_events, stats.counters.on_failure_delivered_events) == (0, 0)
    assert stats.last_processing_result == "OK"
    assert await receive_all(env.sqs, env.queue_url) == []


async def test_partial_failure_reports_only_the_remaining_records(env: Env) -> None:
    """Recorded on AWS: BatchSize 3, MaximumRetryAttempts 3, the last record failing ->
    approximateInvokeCount 4, functionError null, KinesisBatchInfo covering that record."""
    written = await put_records(env.kinesis, env.stream_name, [("k", b"%d" % i) for i in range(3)])
    last = written[-1].sequence_number
    calls = Calls()

    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        calls.record(event, context)
        return {"batchItemFailures": [{"itemIdentifier": last}]}

    config = mapping(
        env,
        "partial",
        env.queue_arn,
        batch_size=3,
        maximum_retry_attempts=3,
        function_response_types=("ReportBatchItemFailures",),
    )
    async with engine_for(env) as engine:
        uuid = await engine.add_mapping(config, handler)
        await checkpoint_reaches(engine, uuid, last)
        counters = engine.mapping_statistics(uuid).counters
    assert calls.batches == [[r.sequence_number for r in written]] + [[last]] * 3
    [report] = await wait_for_messages(env.sqs, env.queue_url, 1)
    assert report["requestContext"]["approximateInvokeCount"] == 4
    assert report["requestContext"]["requestId"] == calls.request_ids[-1]
    assert report["responseContext"] == {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": None,
    }
    assert_batch_info(report, env, calls.events[-1]["Records"])
    assert (counters.errors, counters.failed_invoke_events, counters.succeeded_events) == (0, 4, 2)


async def test_checkpoint_passes_good_halves_while_a_poison_record_is_retried(env: Env) -> None:
    written = await put_records(
        env.kinesis, env.stream_name, [("k", b"poison" if i == 37 else b"ok") for i in range(100)]
    )
    poison = written[37].sequence_number
    calls = Calls()

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        if poison in calls.record(event, context):
            raise ValueError("poison")

    config = mapping(env, "stuck", None, batch_size=100, bisect_batch_on_function_error=True)
    async with engine_for(env) as engine:
        uuid = await engine.add_mapping(config, handler)  # retries forever
        await checkpoint_reaches(engine, uuid, written[36].sequence_number)
        await wait_for(lambda: calls.batches.count([poison]) >= 5, 10, message="poison retries")
        assert checkpoint(engine, uuid) == written[36].sequence_number
        invoked = {seq for batch in calls.batches for seq in batch}
        assert invoked == {r.sequence_number for r in written}  # the first batch held them all
        assert all(max(map(int, b)) <= int(poison) for b in calls.batches[1:] if poison not in b)
        assert engine.mapping_statistics(uuid).counters.dropped_events == 0
