"""Enhanced fan-out: put -> receipt latency, and CPU per record of the subscription reader.

``python -m benchmarks.efo [--quick|--full] [--rate 100] [--shards 2]``, under a minute.

Latency (a producer process puts records carrying the wall clock just before PutRecords; the
reader takes the wall clock when a batch reaches it):

- ``efo``: :class:`ShardSubscriber` through kinesis-mock, from LATEST, one per shard;
- ``poll-1s`` / ``poll-0.2s``: GetRecords through :class:`KinesisSource` (the orjson fast
  path) every 1 s (Lambda's base rate) and every 0.2 s (the per-shard call limit);
- ``efo-push``: the same subscriber against a small push server in its own process that sends
  an event as soon as a PutRecords lands, as AWS does. kinesis-mock only emits an event once a
  second (a timer in its SubscribeToShard), which puts a uniform 0-1 s wait into every ``efo``
  figure; ``efo-push`` shows what the reader itself adds.

End to end through :class:`Engine` (put -> async handler), three mappings at once on kinesis-mock,
each on its own stream (so they do not share a shard's GetRecords budget), one producer putting
to the three streams in turn every tick: ``engine-efo`` (a consumer ARN as event_source_arn),
``engine-poll-1s`` (``PollSettings()``) and ``engine-poll-0.2s`` (``base_interval=0.2``). Then
records/s and CPU per record (``time.process_time``) to drain a pre-filled stream through an EFO
mapping and through a polling mapping, one after the other.

CPU per record (offline, on one pre-built event of 1,000 records of 100 B): our decoder and
orjson against botocore's EventStreamBuffer and shape parser (what aiobotocore's
``subscribe_to_shard`` would cost if it accepted kinesis-mock's stream), and the GetRecords
parsers of polling; split into framing + CRCs, JSON, and Record objects. Then the transport: the
bytes of one large event read from kinesis-mock over aiohttp's HTTP/1.1 and, when httpx and h2
are installed, over HTTP/2.
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing
import struct
import sys
import time
from pathlib import Path
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
from kinesis_esm.source._eventstream import EventStreamDecoder, encode_message
from kinesis_esm.source._kinesis import _records_from_raw
from kinesis_esm.source._sigv4 import SigV4
from kinesis_esm.source._subscribe_events import parse_subscribe_event

from .harness import (
    RESULTS_DIR,
    Meter,
    Progress,
    Report,
    consumer_cpu,
    event_loop_name,
    pin_process,
    prepare_environment,
    run,
    server_cpu,
)
from .latency import TICK, _produce_main, percentile

__all__ = ["main"]

REGION = "us-east-1"
PROFILES = {"quick": 3.0, "default": 4.0, "full": 15.0}
DRAIN_RECORDS = {"quick": 6000, "default": 10000, "full": 20000}
SETUPS = {
    "efo": "SubscribeToShard via kinesis-mock (1 event/s timer)",
    "efo-push": "SubscribeToShard via a push server (event on put)",
    "poll-1s": "GetRecords every 1 s (base rate)",
    "poll-0.2s": "GetRecords every 0.2 s",
    "engine-efo": "Engine, EFO mapping via kinesis-mock (1 event/s timer)",
    "engine-poll-1s": "Engine, polling mapping, PollSettings() (1 s)",
    "engine-poll-0.2s": "Engine, polling mapping, PollSettings(base_interval=0.2)",
}
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


# end to end through the Engine: draining a pre-filled stream, EFO against polling


async def _drain_setup(
    url: str, shards: int, counts: tuple[int, ...], consumers: int
) -> list[tuple[str, list[str]]]:
    """A pre-filled stream per count, each with `consumers` consumers: a consumer per EFO drain,
    so that a new engine's subscription never meets the last one's."""
    from tests.support.kinesis import create_stream, kinesis_client, put_records

    streams = []
    async with kinesis_client(url) as client, FanOutClient(endpoint_url=url, region=REGION) as fan:
        for count in counts:
            name = f"efo-drain-{count}-{time.time_ns()}"
            arn = await create_stream(client, name, shards)
            data = [(f"key-{i}", struct.pack("!dQ", 0.0, i).ljust(100, b".")) for i in range(count)]
            await put_records(client, name, data)
            names = [f"drain-{i}" for i in range(consumers)]
            streams.append((arn, [await fan.register_consumer(arn, n) for n in names]))
    return streams


async def _drain(url: str, event_source_arn: str, count: int) -> dict[str, float]:
    """From add_mapping until the handler has seen every record: wall and CPU of this process
    (the engine, its reader, event building and the handler; kinesis-mock runs elsewhere)."""
    handled, first = [0], [0.0]
    done = anyio.Event()

    async def handler(event: dict[str, Any], context: Any) -> None:
        if not handled[0]:
            first[0] = time.perf_counter()
        handled[0] += len(event["Records"])
        if handled[0] >= count:
            done.set()

    config = EventSourceMappingConfig(
        function_name="drain", event_source_arn=event_source_arn, starting_position="TRIM_HORIZON"
    )
    kinesis = KinesisConfig(endpoint_url=url, region=REGION)
    async with Engine(kinesis=kinesis, checkpoint_store=MemoryCheckpointStore()) as engine:
        began, meter = time.perf_counter(), Meter()
        await engine.add_mapping(config, CallableFunction(handler, name="drain"))
        with anyio.fail_after(40):
            await done.wait()
        sample = meter.stop(handled[0])
        await engine.stop()
    return {
        "records": sample.records,
        "seconds": sample.seconds,
        "first_record_s": first[0] - began,
        "records_per_s": sample.rate,
        "cpu_us_per_record": sample.cpu_us_per_record,
    }


def measure_drain(url: str, shards: int, count: int, rounds: int) -> dict[str, dict[str, float]]:
    """Alternating EFO and polling drains of a pre-filled stream, and of one a tenth its size:
    the difference in CPU is the cost per record without the engine's fixed start and stop.
    The round with the fastest large drain of each mode is kept."""
    small = max(1, count // 10)
    (big_arn, big_consumers), (small_arn, small_consumers) = run(
        _drain_setup(url, shards, (count, small), rounds)
    )
    best: dict[str, dict[str, float]] = {}
    for number in range(rounds):
        sources = {
            "efo": (big_consumers[number], small_consumers[number]),
            "polling": (big_arn, small_arn),
        }
        for key, (big_source, small_source) in sources.items():
            baseline = run(_drain(url, small_source, small))  # first: it also warms up
            result = run(_drain(url, big_source, count))
            cpu_big = result["cpu_us_per_record"] * count
            cpu_small = baseline["cpu_us_per_record"] * small
            marginal = (cpu_big - cpu_small) / (count - small)
            result["marginal_cpu_us_per_record"] = marginal
            result["fixed_cpu_ms"] = (cpu_small - marginal * small) / 1000
            if key not in best or result["seconds"] < best[key]["seconds"]:
                best[key] = result
    return best


# CPU per record, offline


def _wire_records(count: int, size: int) -> list[dict[str, Any]]:
    base = 49_600_000_000_000_000_000_000_000_000_000_000_000_000_000_000_000_000
    return [
        {
            "ApproximateArrivalTimestamp": 1_700_000_000.123 + i / 1000,
            "Data": base64.b64encode(struct.pack("!dQ", 1.0, i).ljust(size, b".")).decode(),
            "EncryptionType": "NONE",
            "PartitionKey": f"key-{i}",
            "SequenceNumber": str(base + i),
        }
        for i in range(count)
    ]


def _cpu_us(function: Any, records: int, repetitions: int, rounds: int = 5) -> float:
    """CPU microseconds per record: the best of `rounds` rounds (the least disturbed)."""
    function()  # warm up
    best = float("inf")
    for _ in range(rounds):
        began = time.process_time()
        for _ in range(repetitions):
            function()
        best = min(best, time.process_time() - began)
    return 1e6 * best / (records * repetitions)


def measure_parsing(
    records: int = 1000, size: int = 100, repetitions: int = 30
) -> dict[str, float]:
    from botocore.eventstream import EventStreamBuffer
    from botocore.parsers import EventStreamJSONParser, create_parser
    from botocore.session import get_session as botocore_session

    wire = _wire_records(records, size)
    continuation = wire[-1]["SequenceNumber"]
    payload = orjson.dumps(
        {"Records": wire, "ContinuationSequenceNumber": continuation, "MillisBehindLatest": 0}
    )
    frame = encode_message(EVENT_HEADERS, payload)
    get_records_body = orjson.dumps(
        {"Records": wire, "NextShardIterator": "x", "MillisBehindLatest": 0}
    )
    service = botocore_session().get_service_model("kinesis")
    event_shape = service.operation_model("SubscribeToShard").output_shape.members["EventStream"]
    get_records_shape = service.operation_model("GetRecords").output_shape
    event_parser, json_parser = EventStreamJSONParser(), create_parser("json")
    parsed = orjson.loads(payload)["Records"]

    def framing() -> None:
        decoder = EventStreamDecoder()
        decoder.feed(frame)
        decoder.next_message()

    def ours() -> None:
        decoder = EventStreamDecoder()
        decoder.feed(frame)
        message = decoder.next_message()
        assert message is not None
        parse_subscribe_event(message.payload)

    def botocore_event() -> None:
        buffer = EventStreamBuffer()
        buffer.add_data(frame)
        for event in buffer:
            body = event_parser.parse(event.to_response_dict(), event_shape)
            for r in body["SubscribeToShardEvent"]["Records"]:
                Record.from_bytes(
                    r["SequenceNumber"],
                    r["PartitionKey"],
                    r["Data"],
                    r["ApproximateArrivalTimestamp"].timestamp(),
                    r.get("EncryptionType"),
                )

    def botocore_framing() -> None:
        buffer = EventStreamBuffer()
        buffer.add_data(frame)
        for event in buffer:
            event.to_response_dict()

    def botocore_get_records() -> None:
        response = {"status_code": 200, "headers": {}, "body": get_records_body}
        body = json_parser.parse(response, get_records_shape)
        for r in body["Records"]:
            Record.from_bytes(
                r["SequenceNumber"],
                r["PartitionKey"],
                r["Data"],
                r["ApproximateArrivalTimestamp"].timestamp(),
            )

    cases = {
        "ours: whole event": ours,
        "ours: framing + CRCs": framing,
        "ours: orjson.loads": lambda: orjson.loads(payload),
        "ours: Record objects": lambda: _records_from_raw(parsed),
        "botocore event stream: whole event": botocore_event,
        "botocore event stream: framing + CRCs": botocore_framing,
        "polling fast path: orjson + Records": lambda: _records_from_raw(
            orjson.loads(get_records_body)["Records"]
        ),
        "polling botocore: parse + Records": botocore_get_records,
    }
    return {name: _cpu_us(case, records, repetitions) for name, case in cases.items()}


# the transport: one large event over HTTP/1.1 and HTTP/2


async def _transport_cpu(url: str, consumer: str, shard: str, use_h2: bool) -> dict[str, float]:
    """CPU and bytes to receive the first event holding records, raw bytes into our decoder."""
    from aiobotocore.session import get_session

    credentials = await (await get_session().get_credentials()).get_frozen_credentials()
    body = orjson.dumps(
        {"ConsumerARN": consumer, "ShardId": shard, "StartingPosition": {"Type": "TRIM_HORIZON"}}
    )
    headers = SigV4(url, REGION).headers(credentials, "Kinesis_20131202.SubscribeToShard", body)
    decoder, received, complete = EventStreamDecoder(), 0, False
    began = time.process_time()
    with anyio.move_on_after(4):  # HTTP/2 to kinesis-mock stalls on large events: bounded
        if use_h2:
            import httpx

            timeout = httpx.Timeout(5.0, read=None)
            async with (
                httpx.AsyncClient(http1=False, http2=True, timeout=timeout) as client,
                client.stream("POST", url, content=body, headers=headers) as h2_response,
            ):
                async for chunk in h2_response.aiter_raw():
                    decoder.feed(chunk)
                    received += len(chunk)
                    if decoder.next_message() is not None:
                        complete = True
                        break
        else:
            import aiohttp

            async with (
                aiohttp.ClientSession() as session,
                session.post(url, data=body, headers=headers) as response,
            ):
                async for chunk in response.content.iter_any():
                    decoder.feed(chunk)
                    received += len(chunk)
                    if decoder.next_message() is not None:
                        complete = True
                        break
    cpu = time.process_time() - began
    return {
        "bytes": received,
        "complete": float(complete),
        "cpu_us_per_mb": 1e12 * cpu / max(1, received),
    }


def measure_transport(url: str, repetitions: int) -> dict[str, dict[str, float]]:
    try:
        import h2  # noqa: F401
        import httpx  # noqa: F401
    except ImportError:
        h2_available = False
    else:
        h2_available = True
    from tests.support.kinesis import kinesis_client, put_records

    async def fill() -> tuple[str, list[str]]:
        name = f"efo-transport-{time.time_ns()}"
        arn, shards, _ = await _kinesis_mock_setup(url, name, 1)
        async with kinesis_client(url) as client:
            await put_records(client, name, [(f"k{i}", b"x" * 4096) for i in range(800)])
        async with FanOutClient(endpoint_url=url, region=REGION) as fan:
            names = [f"t{i}" for i in range(2 * repetitions)]
            return shards[0], [await fan.register_consumer(arn, n) for n in names]

    shard, consumers = run(fill())
    results: dict[str, dict[str, float]] = {}
    for i in range(repetitions):  # the best of the repetitions: the least disturbed
        runs = {"HTTP/1.1 aiohttp": run(_transport_cpu(url, consumers[2 * i], shard, False))}
        if h2_available:
            runs["HTTP/2 httpx+h2"] = run(_transport_cpu(url, consumers[2 * i + 1], shard, True))
        for name, result in runs.items():
            best = results.get(name)
            if best is None or result["cpu_us_per_mb"] < best["cpu_us_per_mb"]:
                results[name] = result
    return results


# report


def _drain_markdown(drain: dict[str, dict[str, float]], parsing: dict[str, float]) -> list[str]:
    """The drain table, and how much of each mode's CPU per record its parsing explains."""
    lines = ["", "## Engine: draining a pre-filled stream, EFO against polling", ""]
    lines += [
        "| mapping | records | first record | drain | records/s | CPU us/record "
        "| marginal CPU us/record | fixed CPU (start, stop) |"
    ]
    lines += ["| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [
        f"| {key} | {r['records']:.0f} | {r['first_record_s']:.2f} s | {r['seconds']:.2f} s | "
        f"{r['records_per_s']:.0f} | {r['cpu_us_per_record']:.1f} | "
        f"{r['marginal_cpu_us_per_record']:.1f} | {r['fixed_cpu_ms']:.0f} ms |"
        for key, r in drain.items()
    ]
    shares = {
        "efo": ("ours: whole event", "framing, CRCs, orjson, Record objects", "SubscribeToShard"),
        "polling": ("polling fast path: orjson + Records", "orjson, Record objects", "iterators"),
    }
    for key, (parse_key, parts, start) in shares.items():
        if key in drain and parse_key in parsing:
            result, parse = drain[key], parsing[parse_key]
            total, marginal = result["cpu_us_per_record"], result["marginal_cpu_us_per_record"]
            fixed = 1000 * result["fixed_cpu_ms"] / result["records"]
            lines += [
                "",
                f"{key}: parsing (`{parse_key}` above: {parts}, base64 `Data` kept as "
                f"received) is {parse:.2f} us of the drain's {total:.1f} us per record "
                f"(marginal: {marginal:.1f} us); {fixed:.1f} us of it is the fixed cost of "
                f"starting an engine (its clients, ListShards, {start}) spread over the "
                "records; the marginal rest is the engine's work per record and per batch of "
                "100 (admission, lanes, the Lambda event's dicts, the invocation, checkpoints) "
                "and the HTTP client's reads.",
            ]
    return lines


def build_report(
    latencies: dict[str, list[float]],
    parsing: dict[str, float],
    transport: dict[str, dict[str, float]],
    drain: dict[str, dict[str, float]],
    command: str,
    rate: float,
    shards: int,
    duration: float,
) -> Report:
    rows = [["setup", "records", "p50", "p95", "p99", "max"]]
    summary = {}
    for key, label in SETUPS.items():
        values = sorted(latencies.get(key, []))
        if not values:
            continue
        stats = {q: percentile(values, q) for q in (50, 95, 99, 100)}
        summary[key] = {"records": len(values), **{f"p{q}": v for q, v in stats.items()}}
        rows.append([label, str(len(values)), *(f"{1000 * stats[q]:.0f} ms" for q in stats)])
    extra = ["## CPU per record (1,000 records of 100 B in one event)", ""]
    extra += ["| path | us/record |", "| --- | --- |"]
    extra += [f"| {name} | {value:.2f} |" for name, value in parsing.items()]
    if drain:
        extra += _drain_markdown(drain, parsing)
    if transport:
        extra += ["", "## Transport: receiving one ~4 MB event from kinesis-mock", ""]
        extra += ["| transport | bytes received | whole event | CPU us per MB |"]
        extra += ["| --- | --- | --- | --- |"]
        extra += [
            f"| {name} | {r['bytes']:.0f} | "
            + (f"yes | {r['cpu_us_per_mb']:.0f} |" if r["complete"] else "no: stalled | - |")
            for name, r in transport.items()
        ]
        extra += [
            "",
            "kinesis-mock serves HTTP/2 (h2c) too; through httpx+h2 the first event larger than "
            "the first 48 KiB never completes (the stream's flow-control window is not reopened), "
            "so the reader uses HTTP/1.1.",
        ]
    return Report(
        name="efo",
        title="Enhanced fan-out: put -> receipt latency and parsing cost",
        command=command,
        notes=[
            f"{shards} shards on kinesis-mock (1 on the push server); a producer process puts "
            f"{rate:g} records/s of 100 B for {duration:g} s per setup, starting once every "
            "reader holds its LATEST position.",
            "Latency: wall clock when the batch reaches the reader minus the wall clock just "
            "before the record's PutRecords call (same machine).",
            "kinesis-mock's SubscribeToShard emits an event on a 1 s timer, so `efo` there waits "
            "0-1 s per record by construction; the push server sends on each put, as AWS does.",
            "`Engine` rows: three mappings in one engine process at once, each on its own "
            f"stream of {shards} shards (separate streams: mappings of one stream would share "
            "each shard's GetRecords budget); one producer puts the same rate to each stream "
            "every 50 ms, in rotating order. The handler is an async function taking "
            "time.time() per record; the Lambda event carries the put time in `data`.",
            "`Engine, EFO mapping` is bounded by kinesis-mock's 1 s event timer exactly as "
            "`efo` is; the push-server row (`efo-push`) is what the reader adds without that "
            "timer. Issue 15's goal (p50 <= 100 ms, p99 <= 250 ms) is judged on AWS-like "
            "delivery, i.e. that row plus the engine's own hand-off.",
            "Drain: a stream pre-filled with the records (100 B each), read from TRIM_HORIZON by "
            "a new engine per run with batch size 100 (Lambda's default), EFO (a fresh consumer "
            "each run) and polling (`PollSettings()`) alternating; the fastest run of each. Wall "
            "time from add_mapping to the handler's last record; CPU is this process's "
            "time.process_time over the same span (kinesis-mock runs in its own process). "
            "Marginal CPU: the difference against a drain of a tenth as many records, which "
            "takes out the fixed cost of starting and stopping an engine and its clients; it is "
            "a difference of two runs on a shared machine, so it moves by several us between "
            "runs (`--full` keeps the fastest of 3 rounds). "
            "EFO's first record waits for kinesis-mock's first event (its 1 s timer), so its "
            "drain time is mostly that wait at this size.",
            f"Reader pinned to CPU {consumer_cpu()}; servers and producer on CPU {server_cpu()}; "
            f"event loop {event_loop_name()}. Goal (issue 15): p50 <= 100 ms, p99 <= 250 ms.",
        ],
        data={
            "latency": summary,
            "cpu_us_per_record": parsing,
            "transport_cpu_us_per_mb": transport,
            "engine_drain": drain,
        },
        table=rows,
        extra_markdown=extra,
    )


def main(argv: list[str] | None = None) -> Report:
    from tests.support.emulators import KinesisMock

    parser = argparse.ArgumentParser(prog="python -m benchmarks.efo")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", const="quick", dest="profile")
    group.add_argument("--full", action="store_const", const="full", dest="profile")
    parser.add_argument("--rate", type=float, default=100.0, help="records per second")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    duration = PROFILES[args.profile or "default"]
    prepare_environment()
    pin_process(0, consumer_cpu())
    latencies: dict[str, list[float]] = {}
    progress = Progress(len(SETUPS) + 1, "efo")  # engine rows: one step; drain, transport, parsing
    with KinesisMock() as kinesis_mock:
        if kinesis_mock.pid is not None:
            pin_process(kinesis_mock.pid, server_cpu())
        url = kinesis_mock.endpoint_url
        for key in ("efo", "poll-1s", "poll-0.2s"):
            latencies[key] = measure_kinesis_mock(url, key, args.rate, duration, args.shards)
            progress.step(f"{key}: {len(latencies[key])} records")
        engine = measure_engine_latency(url, args.rate, duration, args.shards)
        latencies.update(engine)
        progress.step("engine: " + ", ".join(f"{k} {len(v)}" for k, v in engine.items()))
        profile = args.profile or "default"
        rounds = {"quick": 1, "default": 2, "full": 3}[profile]
        drain = measure_drain(url, args.shards, DRAIN_RECORDS[profile], rounds)
        progress.step("engine drain")
        transport = measure_transport(url, repetitions=3 if args.profile == "full" else 1)
        progress.step("transport")
    latencies["efo-push"] = measure_push(args.rate, duration)
    progress.step(f"efo-push: {len(latencies['efo-push'])} records")
    parsing = measure_parsing(repetitions=2 if args.profile == "quick" else 6)
    progress.step("parsing")
    progress.close()
    command = " ".join(["python -m benchmarks.efo", *(argv or [])])
    report = build_report(
        latencies, parsing, transport, drain, command, args.rate, args.shards, duration
    )
    for path in report.write(args.results_dir):
        print(path)
    print(report.markdown())
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
