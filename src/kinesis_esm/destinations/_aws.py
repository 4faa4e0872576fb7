"""SQS, SNS and S3 destinations over aiobotocore.

Clients are created on first use with no ``endpoint_url`` of their own, so botocore's standard
settings choose the endpoint: ``AWS_ENDPOINT_URL_SQS`` / ``_SNS`` / ``_S3``, then
``AWS_ENDPOINT_URL``, then the config file, then AWS. Every call has a connect and read timeout
and an overall deadline; botocore does not retry (the processor owns retries and back-off).
As on Lambda, FIFO queues and topics are refused at delivery time.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any, ClassVar

import anyio
import orjson
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

from ..policy._failures import s3_body, s3_object_key
from ._protocol import DestinationError, FailureReport

__all__ = ["S3Destination", "SNSDestination", "SQSDestination"]


class _AwsDestination:
    service: ClassVar[str]

    def __init__(self, target: str, *, region: str | None, call_timeout: float = 10.0) -> None:
        self.target = target
        self.region = region
        self.call_timeout = call_timeout
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._lock = anyio.Lock()

    async def _get_client(self) -> Any:
        async with self._lock:
            if self._client is None:
                config = Config(
                    connect_timeout=min(5.0, self.call_timeout),
                    read_timeout=self.call_timeout,
                    retries={"total_max_attempts": 1},
                )
                stack = contextlib.AsyncExitStack()
                # no endpoint_url here: botocore's AWS_ENDPOINT_URL* settings must apply
                client_context = get_session().create_client(
                    self.service, region_name=self.region, config=config
                )
                self._client = await stack.enter_async_context(client_context)
                self._stack = stack
            return self._client

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        try:
            with anyio.fail_after(self.call_timeout + 1.0):
                client = await self._get_client()
                result: dict[str, Any] = await getattr(client, operation)(**params)
                return result
        except ClientError as exc:
            error = exc.response.get("Error", {})
            message = f"{self.target}: {operation}: {error.get('Code')}: {error.get('Message')}"
            raise DestinationError(message) from exc
        except TimeoutError as exc:
            raise DestinationError(f"{self.target}: {operation}: timed out") from exc
        except Exception as exc:
            raise DestinationError(
                f"{self.target}: {operation}: {type(exc).__name__}: {exc}"
            ) from exc

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r})"


def _arn_parts(arn: str) -> tuple[str, str, str]:
    """(region, account, resource name) of an SQS or SNS ARN."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or not parts[3] or not parts[4] or not parts[5]:
        raise ValueError(f"{arn!r} is not an SQS or SNS ARN")
    return parts[3], parts[4], parts[5]


def _refuse_fifo(target: str, name: str) -> None:
    if name.endswith(".fifo"):
        raise DestinationError(f"{target}: Lambda does not deliver failure reports to FIFO targets")


class SQSDestination(_AwsDestination):
    """Sends the record as the message body to the queue the ARN names."""

    service = "sqs"

    def __init__(self, target: str, *, call_timeout: float = 10.0) -> None:
        region, self.account, self.queue_name = _arn_parts(target)
        super().__init__(target, region=region, call_timeout=call_timeout)
        self._queue_url: str | None = None

    async def deliver(self, report: FailureReport) -> None:
        _refuse_fifo(self.target, self.queue_name)
        if self._queue_url is None:
            found = await self._call(
                "get_queue_url", QueueName=self.queue_name, QueueOwnerAWSAccountId=self.account
            )
            self._queue_url = str(found["QueueUrl"])
        try:
            await self._call(
                "send_message",
                QueueUrl=self._queue_url,
                MessageBody=orjson.dumps(report.record).decode(),
            )
        except DestinationError:
            self._queue_url = None  # the queue may have been deleted and made again
            raise


class SNSDestination(_AwsDestination):
    """Publishes the record as the message to the topic the ARN names."""

    service = "sns"

    def __init__(self, target: str, *, call_timeout: float = 10.0) -> None:
        region, _, self.topic_name = _arn_parts(target)
        super().__init__(target, region=region, call_timeout=call_timeout)

    async def deliver(self, report: FailureReport) -> None:
        _refuse_fifo(self.target, self.topic_name)
        message = orjson.dumps(report.record).decode()
        await self._call("publish", TopicArn=self.target, Message=message)


class S3Destination(_AwsDestination):
    """Puts the record plus ``payload`` under Lambda's key layout in the bucket the ARN names."""

    service = "s3"

    def __init__(self, target: str, *, region: str | None, call_timeout: float = 10.0) -> None:
        prefix = target.split(":::", 1)
        if len(prefix) != 2 or not prefix[1] or not prefix[0].endswith(":s3"):
            raise ValueError(f"{target!r} is not an S3 bucket ARN")
        self.bucket = prefix[1]
        super().__init__(target, region=region, call_timeout=call_timeout)

    async def deliver(self, report: FailureReport) -> None:
        key = s3_object_key(report.mapping_uuid, report.shard_id, report.timestamp, _unique())
        await self._call(
            "put_object",
            Bucket=self.bucket,
            Key=key,
            Body=orjson.dumps(s3_body(report.record, report.event)),
            ContentType="application/json",
        )


def _unique() -> str:
    return str(uuid.uuid4())
