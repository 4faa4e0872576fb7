"""The throughput contenders: each drains one pre-filled stream and times itself.

Set-up (client creation, loading botocore's models, a first call that opens the connection) is
done before the clock starts, the same way for every contender; the clock stops when the last
record has reached the consumer's hand. Every loop is bounded by ``time_limit``.

1. ``raw-aiobotocore``: GetShardIterator, then GetRecords until drained, per shard, doing nothing
   with the records: the floor of any consumer built on aiobotocore's default parser.
2. ``async-kinesis`` (PyPI), set up fairly: a pass-through processor, short idle sleeps, no
   per-shard rate limit of its own, and ``while True`` around its iterator, which ends after
   ``idle_timeout`` without items.
3. ``esm-events``: kinesis-esm, a no-op handler on Lambda events.
4. ``esm-records``: kinesis-esm, a no-op handler on typed records.
5. ``esm-events-botocore``: as 3 on the plain botocore path (``KinesisSource(fast_parse=False)``).
6. ``esm-events-b100``: as 3 with BatchSize 100 (Lambda's default) instead of 10,000.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio
from aiobotocore.session import get_session
from botocore.config import Config

from kinesis_esm import (
    CallableFunction,
    Engine,
    EventSourceMappingConfig,
    KinesisSource,
    MemoryCheckpointStore,
    PollSettings,
)

from .harness import Meter, Sample
from .replay import REGION, StreamSpec, shard_id

__all__ = ["CONTENDERS", "Contender"]

Drain = Callable[[str, StreamSpec, float], Coroutine[Any, Any, Sample]]


@dataclass(frozen=True, slots=True)
class Contender:
    key: str
    label: str
    drain: Drain


def _client_config(shards: int) -> Config:
    return Config(retries={"total_max_attempts": 1}, max_pool_connections=max(10, shards))


async def raw_aiobotocore(url: str, spec: StreamSpec, time_limit: float) -> Sample:
    session = get_session()
    config = _client_config(spec.shards)
    async with session.create_client(
        "kinesis", region_name=REGION, endpoint_url=url, config=config
    ) as client:
        await client.list_shards(StreamName=spec.name)  # loads the models, opens a connection
        deadline = time.monotonic() + time_limit

        async def drain_shard(number: int) -> int:
            answer = await client.get_shard_iterator(
                StreamName=spec.name, ShardId=shard_id(number), ShardIteratorType="TRIM_HORIZON"
            )
            iterator = answer["ShardIterator"]
            count = 0
            while iterator and count < spec.records_per_shard and time.monotonic() < deadline:
                page = await client.get_records(ShardIterator=iterator, Limit=10_000)
                count += len(page["Records"])
                iterator = page.get("NextShardIterator")
            return count

        meter = Meter()
        counts = await asyncio.gather(*(drain_shard(i) for i in range(spec.shards)))
        return meter.stop(sum(counts))


def _pass_through_processor() -> Any:
    from kinesis.aggregators import SimpleAggregator  # type: ignore[import-untyped]
    from kinesis.processors import Processor  # type: ignore[import-untyped]

    class PassThroughProcessor(Processor, SimpleAggregator):  # type: ignore[misc]
        """Yields each record's bytes as they are: no JSON, no UTF-8 decoding."""

        def serialize(self, item: bytes) -> bytes:
            return item

        def deserialize(self, data: bytes) -> bytes:
            return data

    return PassThroughProcessor()


async def async_kinesis(url: str, spec: StreamSpec, time_limit: float) -> Sample:
    from kinesis import Consumer  # type: ignore[import-untyped]

    # its teardown logs the GetRecords it abandons; keep the progress bar readable
    logging.getLogger("kinesis").setLevel(logging.ERROR)

    consumer = Consumer(
        spec.name,
        endpoint_url=url,
        region_name=REGION,
        processor=_pass_through_processor(),
        iterator_type="TRIM_HORIZON",
        record_limit=10_000,
        max_queue_size=20_000,
        sleep_time_no_records=0.05,  # default 2 s
        shard_fetch_rate=1_000,  # default 1 GetRecords per second per shard
        idle_timeout=0.5,
        use_list_shards=True,
    )
    async with consumer:  # creates the client and lists the shards
        deadline = time.monotonic() + time_limit
        meter = Meter()
        count = 0
        while count < spec.total and time.monotonic() < deadline:  # the `while True`
            async for _item in consumer:
                count += 1
                if count >= spec.total or (count & 1023 == 0 and time.monotonic() > deadline):
                    break
        sample = meter.stop(count)
        await _cancel_fetches(consumer)
    return sample


async def _cancel_fetches(consumer: Any) -> None:
    """Teardown only: a GetRecords still in flight at close sleeps 3 s after its error."""
    consumer.is_fetching = False
    for shard in consumer.shards or ():
        task = shard.get("fetch")
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=5)
        shard["fetch"] = None


def kinesis_esm(
    *, handler_input: str = "event", batch_size: int = 10_000, fast_parse: bool = True
) -> Drain:
    async def drain(url: str, spec: StreamSpec, time_limit: float) -> Sample:
        source = KinesisSource(endpoint_url=url, region=REGION, fast_parse=fast_parse)
        await source.start()
        await source.list_shards(spec.arn)  # opens a connection, as the others do
        count = 0
        done = anyio.Event()

        if handler_input == "event":

            async def handler(event: Any, context: Any) -> None:
                nonlocal count
                count += len(event["Records"])
                if count >= spec.total:
                    done.set()
        else:

            async def handler(event: Any, context: Any) -> None:
                nonlocal count
                count += len(event)
                if count >= spec.total:
                    done.set()

        function = CallableFunction(handler, name="bench", input=handler_input)  # type: ignore[arg-type]
        config = EventSourceMappingConfig(
            function_name="bench",
            event_source_arn=spec.arn,
            starting_position="TRIM_HORIZON",
            batch_size=batch_size,
            max_buffered_records=max(20_000, 2 * batch_size),
        )
        try:
            async with Engine(
                checkpoint_store=MemoryCheckpointStore(),
                source=source,
                poll_settings=PollSettings(min_interval=0.0),
            ) as engine:
                meter = Meter()
                await engine.add_mapping(config, function)
                with anyio.move_on_after(time_limit):
                    await done.wait()
                sample = meter.stop(count)
        finally:
            await source.aclose()
        return sample

    return drain


CONTENDERS: dict[str, Contender] = {
    c.key: c
    for c in (
        Contender("raw-aiobotocore", "raw aiobotocore loop", raw_aiobotocore),
        Contender("async-kinesis", "async-kinesis", async_kinesis),
        Contender("esm-events", "kinesis-esm, Lambda events", kinesis_esm()),
        Contender(
            "esm-records", "kinesis-esm, typed records", kinesis_esm(handler_input="records")
        ),
        Contender(
            "esm-events-botocore",
            "kinesis-esm, Lambda events, botocore parser",
            kinesis_esm(fast_parse=False),
        ),
        Contender(
            "esm-events-b100",
            "kinesis-esm, Lambda events, BatchSize 100",
            kinesis_esm(batch_size=100),
        ),
    )
}
