"""On-failure destinations against moto (SQS, SNS, S3) and the local file, found through the
standard AWS_ENDPOINT_URL settings."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from kinesis_esm.destinations import (
    DestinationError,
    FailureReport,
    FileDestination,
    S3Destination,
    SNSDestination,
    SQSDestination,
    open_destination,
)
from kinesis_esm.policy._failures import s3_body
from tests.support.destinations import (
    ACCOUNT,
    REGION,
    aws_client,
    create_bucket,
    create_queue,
    point_destinations_at,
    receive_all,
    s3_objects,
    wait_for_messages,
)
from tests.support.emulators import free_port

pytestmark = pytest.mark.anyio

UUID = "6f1c63a4-7f0e-4d5e-9a57-2b1f0c6a0e11"
KEY = re.compile(
    rf"aws/lambda/{UUID}/shardId-000000000003/(\d{{4}})/(\d\d)/(\d\d)/"
    r"\1-\2-\3T\d\d\.\d\d\.\d\d-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)


def report(seq: str = "7") -> FailureReport:
    record = {
        "requestContext": {"requestId": "r", "condition": "RetryAttemptsExhausted"},
        "version": "1.0",
        "KinesisBatchInfo": {"startSequenceNumber": seq, "batchSize": 1},
    }
    event = {"Records": [{"kinesis": {"sequenceNumber": seq, "data": "eA=="}}]}
    return FailureReport(record, event, UUID, "shardId-000000000003", time.time(), 1)


async def test_sqs_gets_the_record_as_the_message_body(
    moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_destinations_at(monkeypatch, moto)
    async with aws_client("sqs", moto) as sqs:
        url, arn = await create_queue(sqs, "failures")
        destination = open_destination(arn)
        assert isinstance(destination, SQSDestination)
        try:
            await destination.deliver(report("7"))
            await destination.deliver(report("8"))
        finally:
            await destination.aclose()
        bodies = await wait_for_messages(sqs, url, 2)
    assert bodies == [report("7").record, report("8").record]


async def test_sns_publishes_the_record(moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    point_destinations_at(monkeypatch, moto)
    async with aws_client("sns", moto) as sns, aws_client("sqs", moto) as sqs:
        topic = (await sns.create_topic(Name="failures"))["TopicArn"]
        url, queue = await create_queue(sqs, "subscriber")
        await sns.subscribe(
            TopicArn=topic,
            Protocol="sqs",
            Endpoint=queue,
            Attributes={"RawMessageDelivery": "true"},
        )
        destination = open_destination(topic)
        assert isinstance(destination, SNSDestination)
        try:
            await destination.deliver(report())
        finally:
            await destination.aclose()
        assert await wait_for_messages(sqs, url, 1) == [report().record]


async def test_s3_puts_record_and_payload_under_lambdas_key_layout(
    moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_destinations_at(monkeypatch, moto)
    async with aws_client("s3", moto) as s3:
        arn = await create_bucket(s3, "failure-bucket")
        destination = open_destination(arn, region=REGION)
        assert isinstance(destination, S3Destination)
        sent = report()
        try:
            await destination.deliver(sent)
        finally:
            await destination.aclose()
        objects = await s3_objects(s3, "failure-bucket")
    [(key, body)] = objects.items()
    match = KEY.fullmatch(key)
    assert match, key
    assert match.group(1, 2, 3) == tuple(
        time.strftime("%Y %m %d", time.gmtime(sent.timestamp)).split()
    )
    assert body == s3_body(sent.record, sent.event)
    assert json.loads(body["payload"]) == sent.event


async def test_file_appends_json_lines(tmp_path: Any) -> None:
    path = tmp_path / "nested" / "failures.jsonl"
    destination = open_destination(f"file://{path}")
    assert isinstance(destination, FileDestination)
    await destination.deliver(report("1"))
    await destination.deliver(report("2"))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [s3_body(report(s).record, report(s).event) for s in ("1", "2")]


async def test_file_that_cannot_be_written_raises(tmp_path: Any) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    destination = FileDestination(f"file://{tmp_path}/taken/failures.jsonl")
    with pytest.raises(DestinationError):
        await destination.deliver(report())


async def test_generic_endpoint_variable_is_honoured(
    moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for service in ("SQS", "SNS", "S3"):
        monkeypatch.delenv(f"AWS_ENDPOINT_URL_{service}", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    async with aws_client("sqs", moto) as sqs:
        url, arn = await create_queue(sqs, "generic")
        destination = open_destination(arn)
        try:
            await destination.deliver(report())
        finally:
            await destination.aclose()
        assert await wait_for_messages(sqs, url, 1) == [report().record]


async def test_service_variable_wins_over_the_generic_one(
    moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing there
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", moto)
    async with aws_client("sqs", moto) as sqs:
        url, arn = await create_queue(sqs, "specific")
        destination = open_destination(arn)
        try:
            await destination.deliver(report())
        finally:
            await destination.aclose()
        assert await wait_for_messages(sqs, url, 1) == [report().record]


async def test_unreachable_endpoint_raises_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", f"http://127.0.0.1:{free_port()}")
    destination = SQSDestination(f"arn:aws:sqs:{REGION}:{ACCOUNT}:q", call_timeout=2.0)
    started = time.monotonic()
    try:
        with pytest.raises(DestinationError, match="get_queue_url"):
            await destination.deliver(report())
    finally:
        await destination.aclose()
    assert time.monotonic() - started < 5


async def test_missing_queue_and_fifo_targets_fail(
    moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_destinations_at(monkeypatch, moto)
    async with aws_client("sqs", moto) as sqs:
        await sqs.create_queue(QueueName="q.fifo", Attributes={"FifoQueue": "true"})
        fifo_url = (await sqs.get_queue_url(QueueName="q.fifo"))["QueueUrl"]
        for target, message in [
            (f"arn:aws:sqs:{REGION}:{ACCOUNT}:absent", "QueueDoesNotExist|NonExistentQueue"),
            (f"arn:aws:sqs:{REGION}:{ACCOUNT}:q.fifo", "FIFO"),
        ]:
            destination = open_destination(target)
            try:
                with pytest.raises(DestinationError, match=message):
                    await destination.deliver(report())
            finally:
                await destination.aclose()
        assert await receive_all(sqs, fifo_url) == []


@pytest.mark.parametrize(
    "target",
    ["arn:aws:lambda:us-east-1:123456789012:function:f", "file://", "nonsense", "arn:aws:s3:::"],
)
def test_unknown_targets_are_refused(target: str) -> None:
    with pytest.raises(ValueError, match="not"):
        open_destination(target)
