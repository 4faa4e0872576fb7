"""Async Kinesis helpers over aiobotocore for tests, and bounded waits for conditions.

The suite never waits with a bare sleep: it waits for a condition, with a bound, through
`wait_for` (async) or `wait_until` (sync).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, TypeVar, overload

import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

T = TypeVar("T")

KinesisClient = Any  # aiobotocore's client is generated at run time; no static type for it.

PUT_BATCH = 500


class StreamRecord(NamedTuple):
    """One record as written (`put_records`) or read (`read_all`); compare them as tuples."""

    shard_id: str
    sequence_number: str
    partition_key: str
    data: bytes


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T | None]],
    timeout: float,  # noqa: ASYNC109 - the bound is the point of this helper
    interval: float = ...,
    message: str = ...,
    ignore: tuple[type[Exception], ...] = ...,
) -> T: ...
@overload
async def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,  # noqa: ASYNC109
    interval: float = ...,
    message: str = ...,
    ignore: tuple[type[Exception], ...] = ...,
) -> T: ...
async def wait_for(
    predicate: Callable[[], object],
    timeout: float,  # noqa: ASYNC109
    interval: float = 0.05,
    message: str = "condition",
    ignore: tuple[type[Exception], ...] = (),
) -> object:
    """Poll `predicate` (sync or async) until it returns something truthy, and return that.

    Raises TimeoutError naming `message` after `timeout` seconds. Exceptions of the `ignore`
    types count as "not yet"; the last one is chained to the TimeoutError.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    last_value: object = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            last_value = value
        except ignore as error:
            last_error = error
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"timed out after {timeout} s waiting for {message} (last value {last_value!r})"
            ) from last_error
        await anyio.sleep(min(interval, remaining))


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    interval: float = 0.05,
    message: str = "condition",
    ignore: tuple[type[Exception], ...] = (),
) -> T:
    """The synchronous twin of `wait_for`, for sync tests and benchmark scripts."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    last_value: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last_value = value
        except ignore as error:
            last_error = error
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"timed out after {timeout} s waiting for {message} (last value {last_value!r})"
            ) from last_error
        time.sleep(min(interval, remaining))


@asynccontextmanager
async def kinesis_client(
    endpoint_url: str,
    *,
    region: str = "us-east-1",
    max_attempts: int = 3,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
) -> AsyncIterator[KinesisClient]:
    """An aiobotocore Kinesis client for an emulator, with dummy credentials and short timeouts.

    `max_attempts` counts every attempt, the first included (1 = no retries).
    """
    config = AioConfig(
        # botocore's own "max_attempts" counts retries only; "total_max_attempts" counts all.
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    session = get_session()
    async with session.create_client(
        "kinesis",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=config,
    ) as client:
        yield client


async def create_stream(
    client: KinesisClient,
    name: str,
    shards: int,
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 - bounds the wait for ACTIVE
) -> str:
    """Create a provisioned stream, wait (bounded) until it is ACTIVE, and return its ARN."""
    await client.create_stream(StreamName=name, ShardCount=shards)

    async def active_arn() -> str | None:
        summary = (await client.describe_stream_summary(StreamName=name))[
            "StreamDescriptionSummary"
        ]
        return summary["StreamARN"] if summary["StreamStatus"] == "ACTIVE" else None

    return await wait_for(active_arn, timeout, message=f"stream {name} to become ACTIVE")


async def put_records(
    client: KinesisClient,
    name: str,
    records: list[tuple[str, bytes]],
    *,
    max_attempts: int = 20,
) -> list[StreamRecord]:
    """Write (partition_key, data) pairs in PutRecords of 500, one call at a time.

    Serial on purpose: moto hands out duplicate sequence numbers, and loses records, under
    concurrent puts to one shard. Failed entries are retried (bounded). Returns one StreamRecord
    per input, in input order.
    """
    results: list[StreamRecord | None] = [None] * len(records)
    for start in range(0, len(records), PUT_BATCH):
        pending = list(range(start, min(start + PUT_BATCH, len(records))))
        for attempt in range(max_attempts):
            response = await client.put_records(
                StreamName=name,
                Records=[{"PartitionKey": records[i][0], "Data": records[i][1]} for i in pending],
            )
            failed: list[int] = []
            for index, entry in zip(pending, response["Records"], strict=True):
                if "ErrorCode" in entry:
                    failed.append(index)
                else:
                    key, data = records[index]
                    results[index] = StreamRecord(
                        entry["ShardId"], entry["SequenceNumber"], key, data
                    )
            pending = failed
            if not pending:
                break
            await anyio.sleep(min(0.05 * 2**attempt, 1.0))  # back off before retrying
        if pending:
            raise RuntimeError(f"{len(pending)} records not written after {max_attempts} attempts")
    return [record for record in results if record is not None]


async def list_shard_ids(client: KinesisClient, name: str, *, max_pages: int = 100) -> list[str]:
    """Every shard id of the stream (open and closed), following NextToken (bounded)."""
    shard_ids: list[str] = []
    response = await client.list_shards(StreamName=name)
    for _ in range(max_pages):
        shard_ids.extend(shard["ShardId"] for shard in response["Shards"])
        token = response.get("NextToken")
        if not token:
            return shard_ids
        response = await client.list_shards(NextToken=token)
    raise RuntimeError(f"ListShards of {name} still paginating after {max_pages} pages")


async def read_shard(
    client: KinesisClient,
    name: str,
    shard_id: str,
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 - bounds the drain
) -> list[StreamRecord]:
    """Every record of one shard from TRIM_HORIZON, until its end or its tip (bounded)."""
    iterator: str | None = (
        await client.get_shard_iterator(
            StreamName=name, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )
    )["ShardIterator"]
    records: list[StreamRecord] = []
    deadline = time.monotonic() + timeout
    while iterator is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading shard {shard_id} of {name} took over {timeout} s")
        response = await client.get_records(ShardIterator=iterator, Limit=10_000)
        records.extend(
            StreamRecord(shard_id, r["SequenceNumber"], r["PartitionKey"], r["Data"])
            for r in response["Records"]
        )
        iterator = response.get("NextShardIterator")
        # An open shard never ends: stop at its tip, i.e. an empty page that is not behind.
        if not response["Records"] and response.get("MillisBehindLatest", 0) == 0:
            break
    return records


async def read_all(
    client: KinesisClient,
    name: str,
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 - bounds the drain
) -> list[StreamRecord]:
    """Drain every shard of the stream from TRIM_HORIZON; records grouped by shard, in order."""
    records: list[StreamRecord] = []
    deadline = time.monotonic() + timeout
    for shard_id in await list_shard_ids(client, name):
        remaining = max(deadline - time.monotonic(), 0.001)
        records.extend(await read_shard(client, name, shard_id, timeout=remaining))
    return records
