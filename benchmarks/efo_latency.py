"""The efo benchmark's latency measurements (see ``efo`` for the setups and the report).

Put -> receipt latency of the readers on kinesis-mock (``efo``: :class:`ShardSubscriber` from
LATEST; ``poll-1s`` / ``poll-0.2s``: GetRecords through :class:`KinesisSource`), of the
subscriber against a push server in its own process that sends an event on each put
(``efo-push``), and end to end through :class:`Engine` (put -> async handler), three mappings
at once, each on its own stream, one producer process putting to the three streams in turn.
The functions run in child processes (``_push_server_main``, ``_produce_streams_main``) stay at
the top level of this module, where a spawned process can import them.
"""

from __future__ import annotations

import base64
import multiprocessing
import struct
import time
from typing import Any

import anyio
import orjson
from aiohttp import web

from kinesis_esm import (
    CallableFunction,
    Engine,
    EventSourceMappingConfig,
    KinesisConfig,
    KinesisSource,
    MemoryCheckpointStore,
    PollSettings,
    Record,
)
from kinesis_esm.source import IteratorPosition
from kinesis_esm.source._consumers import FanOutClient
from kinesis_esm.source._eventstream import encode_message

from .harness import pin_process, prepare_environment, run, server_cpu
from .latency import TICK, _produce_main

__all__ = [
    "ENGINE_KEYS",
    "EVENT_HEADERS",
    "REGION",
    "measure_engine_latency",
    "measure_kinesis_mock",
    "measure_push",
]

REGION = "us-east-1"
ENGINE_KEYS = ("engine-efo", "engine-poll-1s", "engine-poll-0.2s")
PUSH_CONSUMER = "arn:aws:kinesis:us-east-1:000000000000:stream/push/consumer/bench:1700000000"
EVENT_HEADERS: dict[str, Any] = {
    ":message-type": "event",
    ":event-type": "SubscribeToShardEvent",
    ":content-type": "application/json",
}


def _sent_at(record: Record) -> float:
    sent: float = struct.unpack_from("!d", record.data)[0]
    return sent


# latency: the readers


async def _subscribe_latencies(
    url: str, consumer: str, shards: list[str], producer: Any, expected: int, seconds: float
) -> list[float]:
    latencies: list[float] = []
    async with FanOutClient(endpoint_url=url, region=REGION) as fan:
        subscribers = [fan.subscriber(consumer, s, IteratorPosition("LATEST")) for s in shards]
        with anyio.fail_after(15):  # LATEST holds from each subscription's first event
            for subscriber in subscribers:
                await anext(subscriber)
        producer.start()

        async def read(subscriber: Any) -> None:
            async for event in subscriber:
                now = time.time()
                latencies.extend(now - _sent_at(r) for r in event.records)
                if len(latencies) >= expected:
                    group.cancel_scope.cancel()

        with anyio.move_on_after(seconds):
            async with anyio.create_task_group() as group:
                for subscriber in subscribers:
                    group.start_soon(read, subscriber)
        for subscriber in subscribers:
            await subscriber.aclose()
    return latencies


async def _poll_latencies(
    url: str,
    arn: str,
    shards: list[str],
    interval: float,
    producer: Any,
    expected: int,
    seconds: float,
) -> list[float]:
    latencies: list[float] = []
    async with KinesisSource(endpoint_url=url, region=REGION) as source:
        iterators = [
            await source.get_shard_iterator(arn, s, IteratorPosition("LATEST")) for s in shards
        ]
        producer.start()

        async def poll(iterator: str | None) -> None:
            while iterator is not None:
                began = time.monotonic()
                result = await source.get_records(arn, iterator, 10_000)
                now = time.time()
                latencies.extend(now - _sent_at(r) for r in result.records)
                if len(latencies) >= expected:
                    group.cancel_scope.cancel()
                iterator = result.next_iterator
                await anyio.sleep(max(0.0, began + interval - time.monotonic()))

        with anyio.move_on_after(seconds):
            async with anyio.create_task_group() as group:
                for iterator in iterators:
                    group.start_soon(poll, iterator)
    return latencies


def _producer(url: str, stream: str, rate: float, duration: float) -> Any:
    context = multiprocessing.get_context("spawn")
    args = (url, stream, rate, duration, server_cpu())
    return context.Process(target=_produce_main, args=args, daemon=True)


def _expected(rate: float, duration: float) -> int:
    return int(duration / 0.05) * max(1, round(rate * 0.05))  # latency.py's producer ticks


async def _kinesis_mock_setup(url: str, name: str, shards: int) -> tuple[str, list[str], str]:
    from tests.support.kinesis import create_stream, kinesis_client, list_shard_ids

    async with kinesis_client(url) as client, FanOutClient(endpoint_url=url, region=REGION) as fan:
        arn = await create_stream(client, name, shards)
        consumer = await fan.register_consumer(arn, "bench")
        return arn, await list_shard_ids(client, name), consumer


def measure_kinesis_mock(
    url: str, key: str, rate: float, duration: float, shards: int
) -> list[float]:
    name = f"efo-{key.replace('.', '')}-{time.time_ns()}"
    arn, shard_ids, consumer = run(_kinesis_mock_setup(url, name, shards))
    producer = _producer(url, name, rate, duration)
    expected, bound = _expected(rate, duration), duration + 15
    try:
        if key == "efo":
            return run(_subscribe_latencies(url, consumer, shard_ids, producer, expected, bound))
        interval = 1.0 if key == "poll-1s" else 0.2
        return run(_poll_latencies(url, arn, shard_ids, interval, producer, expected, bound))
    finally:
        producer.join(duration + 30)
        if producer.is_alive():
            producer.kill()


# latency: a push server that sends an event as soon as records are put


async def _push_server(port: int, started: Any) -> None:
    records: list[dict[str, Any]] = []
    state = {"changed": anyio.Event()}

    async def handle(request: web.Request) -> web.StreamResponse:
        target = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        body = orjson.loads(await request.read())
        if target == "PutRecords":
            entries = []
            for entry in body["Records"]:
                number = str(len(records) + 1)
                records.append(
                    {
                        "SequenceNumber": number,
                        "PartitionKey": entry["PartitionKey"],
                        "Data": entry["Data"],  # base64 on the wire both ways
                        "ApproximateArrivalTimestamp": time.time(),
                    }
                )
                entries.append({"SequenceNumber": number, "ShardId": "shardId-000000000000"})
            changed, state["changed"] = state["changed"], anyio.Event()
            changed.set()
            answer = {"FailedRecordCount": 0, "Records": entries}
            return web.Response(
                body=orjson.dumps(answer), content_type="application/x-amz-json-1.1"
            )
        if target != "SubscribeToShard":
            return web.Response(status=400, text=f"{target} is not served here")
        response = web.StreamResponse(
            headers={"Content-Type": "application/vnd.amazon.eventstream"}
        )
        await response.prepare(request)
        sent = len(records)  # LATEST
        deadline = time.monotonic() + 300  # AWS's five minutes
        while time.monotonic() < deadline:
            with anyio.move_on_after(1.0):  # a heartbeat event at least once a second
                await state["changed"].wait()
            fresh, sent = records[sent:], len(records)
            last = fresh[-1]["SequenceNumber"] if fresh else str(sent or 0)
            payload = {
                "Records": fresh,
                "ContinuationSequenceNumber": last,
                "MillisBehindLatest": 0,
            }
            await response.write(encode_message(EVENT_HEADERS, orjson.dumps(payload)))
        await response.write_eof()
        return response

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    started.set()
    await anyio.sleep(600)  # the parent terminates this process when done


def _push_server_main(port: int, started: Any, cpu: int | None) -> None:
    pin_process(0, cpu)
    run(_push_server(port, started))


def measure_push(rate: float, duration: float) -> list[float]:
    from tests.support.emulators import free_port

    context = multiprocessing.get_context("spawn")
    port, started = free_port(), context.Event()
    server = context.Process(
        target=_push_server_main, args=(port, started, server_cpu()), daemon=True
    )
    server.start()
    try:
        if not started.wait(30):
            raise RuntimeError("the push server did not start")
        url = f"http://127.0.0.1:{port}"
        producer = _producer(url, "push", rate, duration)
        expected = _expected(rate, duration)
        shards = ["shardId-000000000000"]
        latencies = run(
            _subscribe_latencies(url, PUSH_CONSUMER, shards, producer, expected, duration + 15)
        )
        producer.join(duration + 30)
        return latencies
    finally:
        server.terminate()
        server.join(10)


# end to end through the Engine: three mappings at once, put -> handler


def _sent_at_event_record(record: dict[str, Any]) -> float:
    sent: float = struct.unpack_from("!d", base64.b64decode(record["kinesis"]["data"]))[0]
    return sent


def _produce_streams_main(
    url: str, streams: list[str], rate: float, duration: float, cpu: int | None
) -> None:
    pin_process(0, cpu)
    prepare_environment()
    run(_produce_streams(url, streams, rate, duration))


async def _produce_streams(url: str, streams: list[str], rate: float, duration: float) -> None:
    """latency.py's producer, to several streams: a PutRecords to each per tick, the order
    rotated every tick so that no stream is always put first."""
    from aiobotocore.session import get_session

    per_tick = max(1, round(rate * TICK))
    session = get_session()
    async with session.create_client("kinesis", region_name=REGION, endpoint_url=url) as client:
        start, number = time.monotonic(), 0
        for tick in range(int(duration / TICK)):
            await anyio.sleep(max(0.0, start + tick * TICK - time.monotonic()))
            shift = tick % len(streams)
            for stream in streams[shift:] + streams[:shift]:
                now = time.time()
                entries = [
                    {
                        "PartitionKey": f"key-{number + i}",
                        "Data": struct.pack("!dQ", now, number + i).ljust(100, b"."),
                    }
                    for i in range(per_tick)
                ]
                await client.put_records(StreamName=stream, Records=entries)
            number += per_tick


async def _wait_reading(engine: Engine, uuid: str, shards: int) -> None:
    """Wait (bounded) until every shard has had a GetRecords answer or a subscription event,
    so that LATEST misses nothing the producer puts."""
    with anyio.fail_after(30):
        while True:
            read = engine.mapping_statistics(uuid).shards
            if len(read) == shards and all(s.millis_behind_latest is not None for s in read):
                return
            await anyio.sleep(0.05)


async def _engine_setup(url: str, shards: int) -> tuple[dict[str, str], dict[str, str]]:
    """A stream per mapping; the EFO one with a registered consumer. Returns each mapping's
    event_source_arn and its stream's name."""
    from tests.support.kinesis import create_stream, kinesis_client

    sources, names = {}, {}
    async with kinesis_client(url) as client, FanOutClient(endpoint_url=url, region=REGION) as fan:
        for key in ENGINE_KEYS:
            names[key] = f"{key.replace('.', '')}-{time.time_ns()}"
            arn = await create_stream(client, names[key], shards)
            is_efo = key == "engine-efo"
            sources[key] = await fan.register_consumer(arn, "engine") if is_efo else arn
    return sources, names


async def _engine_latencies(
    url: str, sources: dict[str, str], shards: int, producer: Any, expected: int, seconds: float
) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {key: [] for key in ENGINE_KEYS}
    arrived = {key: anyio.Event() for key in ENGINE_KEYS}

    def handler_for(key: str) -> Any:
        got, done = latencies[key], arrived[key]

        async def handler(event: dict[str, Any], context: Any) -> None:
            for record in event["Records"]:
                got.append(time.time() - _sent_at_event_record(record))
            if len(got) >= expected:
                done.set()

        return handler

    kinesis = KinesisConfig(endpoint_url=url, region=REGION)
    base = Engine(kinesis=kinesis, checkpoint_store=MemoryCheckpointStore())
    fast = Engine(
        kinesis=kinesis,
        checkpoint_store=MemoryCheckpointStore(),
        poll_settings=PollSettings(base_interval=0.2),
    )
    engines = {"engine-efo": base, "engine-poll-1s": base, "engine-poll-0.2s": fast}
    async with base, fast:
        uuids = {}
        for key in ENGINE_KEYS:
            config = EventSourceMappingConfig(
                function_name=key, event_source_arn=sources[key], starting_position="LATEST"
            )
            function = CallableFunction(handler_for(key), name=key)
            uuids[key] = await engines[key].add_mapping(config, function)
        for key in ENGINE_KEYS:
            await _wait_reading(engines[key], uuids[key], shards)
        producer.start()
        await anyio.to_thread.run_sync(producer.join, seconds + 30)
        if producer.is_alive():
            producer.kill()
        with anyio.move_on_after(5.0):  # the last records: EFO's timer, the 1 s poll
            for event in arrived.values():
                await event.wait()
        await base.stop()
        await fast.stop()
    return latencies


def measure_engine_latency(
    url: str, rate: float, duration: float, shards: int
) -> dict[str, list[float]]:
    sources, names = run(_engine_setup(url, shards))
    context = multiprocessing.get_context("spawn")
    streams = [names[key] for key in ENGINE_KEYS]
    producer = context.Process(
        target=_produce_streams_main,
        args=(url, streams, rate, duration, server_cpu()),
        daemon=True,
    )
    expected = _expected(rate, duration)
    latencies = run(_engine_latencies(url, sources, shards, producer, expected, duration))
    for key, values in latencies.items():
        if len(values) < expected:
            print(f"efo {key}: only {len(values)} of {expected} records arrived")
    return latencies
