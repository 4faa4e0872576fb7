"""Reading what on-failure destinations received, on moto: SQS messages and S3 objects.

Every wait is bounded (`wait_for`); clients get the endpoint explicitly, while the code under test
must find it through AWS_ENDPOINT_URL_* (`point_destinations_at`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from tests.support.kinesis import wait_for

AwsClient = Any  # aiobotocore clients are generated at run time
ACCOUNT = "123456789012"  # moto's
REGION = "us-east-1"


def point_destinations_at(monkeypatch: pytest.MonkeyPatch, endpoint_url: str) -> None:
    """Botocore's standard per-service endpoint settings, as a user would set them."""
    for service in ("SQS", "SNS", "S3"):
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service}", endpoint_url)


@asynccontextmanager
async def aws_client(service: str, endpoint_url: str) -> AsyncIterator[AwsClient]:
    config = AioConfig(retries={"total_max_attempts": 3}, connect_timeout=5, read_timeout=30)
    async with get_session().create_client(
        service, endpoint_url=endpoint_url, region_name=REGION, config=config
    ) as client:
        yield client


def queue_arn(name: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"


async def create_queue(sqs: AwsClient, name: str) -> tuple[str, str]:
    """(queue URL, queue ARN)."""
    url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
    return url, queue_arn(name)


async def create_bucket(s3: AwsClient, name: str) -> str:
    await s3.create_bucket(Bucket=name)
    return f"arn:aws:s3:::{name}"


async def receive_all(sqs: AwsClient, queue_url: str) -> list[dict[str, Any]]:
    """Every message now visible in the queue (deleted as read), bodies parsed as JSON."""
    bodies: list[dict[str, Any]] = []
    for _ in range(100):
        response = await sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        )
        messages = response.get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            await sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    raise RuntimeError("the queue did not drain within 100 receives")


async def wait_for_messages(
    sqs: AwsClient,
    queue_url: str,
    count: int,
    timeout: float = 10.0,  # noqa: ASYNC109 - bounds the wait
) -> list[dict[str, Any]]:
    """Wait (bounded) until ``count`` messages have arrived; return them all."""
    got: list[dict[str, Any]] = []

    async def enough() -> list[dict[str, Any]] | None:
        got.extend(await receive_all(sqs, queue_url))
        return got if len(got) >= count else None

    return await wait_for(enough, timeout, message=f"{count} messages in {queue_url}")


async def s3_objects(s3: AwsClient, bucket: str) -> dict[str, dict[str, Any]]:
    """Every object of the bucket: key -> body parsed as JSON."""
    listing = await s3.list_objects_v2(Bucket=bucket)
    objects: dict[str, dict[str, Any]] = {}
    for item in listing.get("Contents", []):
        response = await s3.get_object(Bucket=bucket, Key=item["Key"])
        async with response["Body"] as stream:
            objects[item["Key"]] = json.loads(await stream.read())
    return objects
