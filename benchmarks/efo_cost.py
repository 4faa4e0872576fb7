"""The efo benchmark's cost measurements (see ``efo`` for the report).

Records/s and CPU per record to drain a pre-filled stream through an EFO mapping and through a
polling mapping of :class:`Engine`; CPU per record to parse one pre-built event offline (our
decoder and orjson against botocore's event stream and shape parsers, and the GetRecords
parsers of polling); CPU and bytes to receive one large event from kinesis-mock over HTTP/1.1
(aiohttp) and, when httpx and h2 are installed, over HTTP/2.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import anyio
import orjson

from kinesis_esm import (
    CallableFunction,
    Engine,
    EventSourceMappingConfig,
    KinesisConfig,
    MemoryCheckpointStore,
    Record,
)
from kinesis_esm.source._consumers import FanOutClient
from kinesis_esm.source._eventstream import EventStreamDecoder, encode_message
from kinesis_esm.source._kinesis import _records_from_raw
from kinesis_esm.source._sigv4 import SigV4
from kinesis_esm.source._subscribe_events import parse_subscribe_event

from .efo_latency import EVENT_HEADERS, REGION, _kinesis_mock_setup
from .harness import Meter, run

__all__ = ["measure_drain", "measure_parsing", "measure_transport"]


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
