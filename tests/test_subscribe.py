"""Enhanced fan-out: the event-stream decoder, consumer registration and ShardSubscriber.

Three layers:
- the frame decoder and the pure rules (retry delays, ARN parsing, event parsing), no I/O;
- a scripted event-stream server on 127.0.0.1 for what kinesis-mock 0.6.2 never does: send
  ChildShards at a closed shard's end, an ``initial-response``, exception frames mid-stream,
  HTTP errors, and half an event before a drop. It speaks AWS's wire format, built by hand;
- kinesis-mock (the `kinesis_mock` fixture) for everything it implements: RegisterStreamConsumer,
  SubscribeToShard over HTTP/1.1 (no initial-response; one event per second; ResourceInUse for
  a second subscription), behind the fault proxy for dropped connections.
"""

from __future__ import annotations

import base64
import itertools
import random
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from kinesis_esm import Record
from kinesis_esm._errors import (
    AccessDeniedError,
    SourceError,
    StreamNotFoundError,
    ThrottledError,
    TransientSourceError,
    TrimmedPositionError,
)
from kinesis_esm.source import IteratorPosition
from kinesis_esm.source._consumers import ConsumerArn, FanOutClient, is_consumer_arn
from kinesis_esm.source._eventstream import (
    MAX_PAYLOAD_LENGTH,
    EventStreamDecoder,
    EventStreamMessage,
    EventStreamProtocolError,
    HeaderValue,
    encode_message,
)
from kinesis_esm.source._subscribe import ShardSubscriber
from kinesis_esm.source._subscribe_events import (
    ConsumerNotFoundError,
    SubscribeSettings,
    SubscriptionEvent,
    SubscriptionInUseError,
    parse_subscribe_event,
    retry_delay,
)
from tests.support.emulators import KinesisMock
from tests.support.kinesis import (
    KinesisClient,
    create_stream,
    kinesis_client,
    list_shard_ids,
    put_records,
    wait_for,
)
from tests.support.proxy import FaultProxy

pytestmark = pytest.mark.anyio

REGION = "us-east-1"
SHARD = "shardId-000000000000"
FAST = SubscribeSettings(min_subscribe_interval=1.0, call_timeout=5.0, event_timeout=10.0)


# the frame decoder


def decode_all(data: bytes, cuts: list[int] | None = None) -> list[EventStreamMessage]:
    decoder = EventStreamDecoder()
    messages: list[EventStreamMessage] = []
    bounds = sorted({0, len(data), *(c for c in cuts or () if 0 < c < len(data))})
    for start, end in itertools.pairwise(bounds):
        decoder.feed(data[start:end])
        while (message := decoder.next_message()) is not None:
            messages.append(message)
    assert decoder.buffered == 0
    return messages


def test_decoder_reads_every_header_type() -> None:
    import uuid

    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    raw_headers = (
        b"\x04true\x00"
        b"\x05false\x01"
        b"\x04byte\x02\xff"
        b"\x05short\x03\x01\x02"
        b"\x03int\x04\xff\xff\xff\xfe"
        b"\x04long\x05" + struct.pack(">q", 2**40) + b"\x05bytes\x06\x00\x03abc"
        b"\x06string\x07\x00\x02hi"
        b"\x04time\x08" + struct.pack(">q", 1_700_000_000_000) + b"\x04uuid\x09" + ident.bytes
    )
    payload = b'{"x": 1}'
    total = 12 + len(raw_headers) + len(payload) + 4
    front = struct.pack(">II", total, len(raw_headers))
    body = front + struct.pack(">I", zlib.crc32(front)) + raw_headers + payload
    frame = body + struct.pack(">I", zlib.crc32(body))
    (message,) = decode_all(frame)
    assert message.payload == payload
    assert message.headers == {
        "true": True,
        "false": False,
        "byte": -1,
        "short": 258,
        "int": -2,
        "long": 2**40,
        "bytes": b"abc",
        "string": "hi",
        "time": 1_700_000_000_000,
        "uuid": ident,
    }


header_values = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.binary(max_size=40),
    st.text(max_size=40),
)
messages_strategy = st.lists(
    st.tuples(
        st.dictionaries(st.text(min_size=1, max_size=20), header_values, max_size=5),
        st.binary(max_size=300),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(messages_strategy, st.lists(st.integers(0, 3000), max_size=20))
def test_decoder_gives_the_same_messages_however_the_bytes_are_cut(
    messages: list[tuple[dict[str, HeaderValue], bytes]], cuts: list[int]
) -> None:
    data = b"".join(encode_message(headers, payload) for headers, payload in messages)
    decoded = decode_all(data, cuts)
    assert [(m.headers, m.payload) for m in decoded] == messages


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=10), header_values, max_size=3),
    st.binary(max_size=200),
    st.data(),
)
def test_decoder_rejects_any_single_flipped_bit(
    headers: dict[str, HeaderValue], payload: bytes, data: st.DataObject
) -> None:
    frame = bytearray(encode_message(headers, payload))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    decoder = EventStreamDecoder()
    decoder.feed(bytes(frame))
    # CRC32 catches every single-bit error; the prelude's own CRC makes a corrupt length fail
    # at once instead of waiting for bytes that never come
    with pytest.raises(EventStreamProtocolError, match=r"CRC|malformed|length"):
        decoder.next_message()


def test_decoder_names_the_failed_crc() -> None:
    frame = bytearray(encode_message({":message-type": "event"}, b"payload"))
    frame[-1] ^= 0xFF
    decoder = EventStreamDecoder()
    decoder.feed(bytes(frame))
    with pytest.raises(EventStreamProtocolError, match="message CRC mismatch"):
        decoder.next_message()
    frame = bytearray(encode_message({":message-type": "event"}, b"payload"))
    frame[9] ^= 0x01  # inside the prelude CRC
    decoder = EventStreamDecoder()
    decoder.feed(bytes(frame[:12]))  # the prelude alone is enough to tell
    with pytest.raises(EventStreamProtocolError, match="prelude CRC mismatch"):
        decoder.next_message()


def test_decoder_refuses_an_oversized_payload_from_its_prelude() -> None:
    total = 16 + MAX_PAYLOAD_LENGTH + 1
    front = struct.pack(">II", total, 0)
    decoder = EventStreamDecoder()
    decoder.feed(front + struct.pack(">I", zlib.crc32(front)))
    with pytest.raises(EventStreamProtocolError, match="exceeds"):
        decoder.next_message()


def test_decoder_waits_for_a_partial_message_and_says_how_much_is_missing() -> None:
    frame = encode_message({":event-type": "x"}, b"0123456789")
    decoder = EventStreamDecoder()
    assert decoder.bytes_needed() == 12
    decoder.feed(frame[:5])
    assert decoder.next_message() is None and decoder.bytes_needed() == 7
    decoder.feed(frame[5:20])
    assert decoder.next_message() is None and decoder.bytes_needed() == len(frame) - 20
    decoder.feed(frame[20:])
    message = decoder.next_message()
    assert message is not None and message.payload == b"0123456789"
    assert decoder.next_message() is None and decoder.buffered == 0


# pure rules


def test_consumer_arns_are_taken_apart_and_bad_ones_named() -> None:
    arn = "arn:aws:kinesis:eu-west-1:123456789012:stream/orders/consumer/esm-1:1700000000"
    parsed = ConsumerArn.parse(arn)
    assert (parsed.region, parsed.account, parsed.stream_name, parsed.consumer_name) == (
        "eu-west-1",
        "123456789012",
        "orders",
        "esm-1",
    )
    assert parsed.creation_timestamp == 1700000000
    assert parsed.stream_arn == "arn:aws:kinesis:eu-west-1:123456789012:stream/orders"
    assert is_consumer_arn(arn)
    assert not is_consumer_arn("arn:aws:kinesis:eu-west-1:123456789012:stream/orders")
    for bad in (
        "arn:aws:kinesis:eu-west-1:123456789012:stream/orders",
        "arn:aws:kinesis:eu-west-1:123456789012:stream/orders/consumer/esm-1",
        "arn:aws:kinesis:eu-west-1:12345:stream/orders/consumer/esm-1:1",
        "arn:aws:kinesis:eu-west-1:123456789012:stream/or ders/consumer/esm-1:1",
    ):
        with pytest.raises(ValueError, match="consumer_arn must be a stream consumer ARN"):
            ConsumerArn.parse(bad)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 60),
    st.sampled_from(["drop", "throttle", "in-use"]),
    st.floats(0, 5),
    st.floats(0.1, 60),
    st.integers(0, 2**32),
)
def test_retry_delays_back_off_within_bounds(
    attempt: int, kind: str, initial: float, maximum: float, seed: int
) -> None:
    if initial > maximum:
        initial, maximum = maximum, initial
    config = SubscribeSettings(backoff_initial=initial, backoff_max=maximum)
    error: TransientSourceError = {
        "drop": TransientSourceError("reset"),
        "throttle": ThrottledError("LimitExceededException", code="LimitExceededException"),
        "in-use": SubscriptionInUseError("in use", code="ResourceInUseException"),
    }[kind]
    delay = retry_delay(error, attempt, config, random.Random(seed))
    ceiling = min(maximum, initial * 2 ** (attempt - 1))
    if kind == "drop":
        assert delay == 0.0 if attempt == 1 else ceiling / 2 <= delay <= ceiling
    else:  # LimitExceeded and ResourceInUse: never sooner than a second
        assert max(1.0, ceiling / 2) <= delay <= max(1.0, ceiling)


def test_settings_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match="event_timeout must be > 0"):
        SubscribeSettings(event_timeout=0)
    with pytest.raises(ValueError, match="max_retries must be >= 0"):
        SubscribeSettings(max_retries=-1)


def wire_record(sequence: int, data: bytes, key: str = "k") -> dict[str, Any]:
    return {
        "SequenceNumber": str(sequence),
        "PartitionKey": key,
        "Data": base64.b64encode(data).decode(),
        "ApproximateArrivalTimestamp": 1700000000.25 + sequence,
        "EncryptionType": "NONE",
    }


def event_payload(
    records: list[dict[str, Any]],
    continuation: str | None,
    behind: int = 0,
    children: list[dict[str, Any]] | None = None,
) -> bytes:
    return orjson.dumps(
        {
            "Records": records,
            "ContinuationSequenceNumber": continuation,
            "MillisBehindLatest": behind,
            "ChildShards": children,
        }
    )


def test_event_payload_keeps_data_as_base64() -> None:
    event = parse_subscribe_event(event_payload([wire_record(7, b"\x00hi")], "7", behind=1500))
    (record,) = event.records
    assert record == Record("7", "k", base64.b64encode(b"\x00hi").decode(), 1700000007.25, "NONE")
    assert record.data == b"\x00hi"
    assert (event.continuation_sequence_number, event.millis_behind_latest) == ("7", 1500)
    assert not event.shard_ended and event.child_shards == []
    with pytest.raises(EventStreamProtocolError, match="malformed SubscribeToShardEvent"):
        parse_subscribe_event(b'{"Records": [{"SequenceNumber": "1"}]}')


# a scripted event-stream server: what kinesis-mock does not do


def event_frame(payload: bytes, event_type: str = "SubscribeToShardEvent") -> bytes:
    headers: dict[str, HeaderValue] = {
        ":message-type": "event",
        ":event-type": event_type,
        ":content-type": "application/json",
    }
    return encode_message(headers, payload)


def exception_frame(code: str, message: str) -> bytes:
    headers: dict[str, HeaderValue] = {
        ":message-type": "exception",
        ":exception-type": code,
        ":content-type": "application/json",
    }
    return encode_message(headers, orjson.dumps({"message": message}))


Step = tuple[str, Any]  # ("send", bytes) | ("end", None) | ("drop", None) | ("hang", seconds)


@dataclass
class Script:
    """One list of steps per SubscribeToShard call; the requests are kept."""

    calls: list[list[Step]]
    http_error: dict[int, tuple[int, dict[str, str]]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


@asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[str]:
    async def subscribe(request: web.Request) -> web.StreamResponse:
        assert request.headers["X-Amz-Target"] == "Kinesis_20131202.SubscribeToShard"
        assert request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
        number = len(script.requests)
        script.requests.append(orjson.loads(await request.read()))
        script.times.append(time.monotonic())
        if number in script.http_error:
            status, body = script.http_error[number]
            return web.Response(
                status=status, body=orjson.dumps(body), content_type="application/x-amz-json-1.1"
            )
        steps: list[Step] = script.calls[number] if number < len(script.calls) else [("hang", 30)]
        response = web.StreamResponse(
            headers={"Content-Type": "application/vnd.amazon.eventstream"}
        )
        await response.prepare(request)
        for action, value in steps:
            if action == "send":
                await response.write(bytes(value))
            elif action == "hang":  # bounded; cut short when the test is over
                with anyio.move_on_after(value):
                    await stopping.wait()
            elif action == "drop":
                assert request.transport is not None
                request.transport.abort()
                return response
        await response.write_eof()
        return response

    stopping = anyio.Event()
    app = web.Application()
    app.router.add_post("/", subscribe)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stopping.set()
        await runner.cleanup()


CONSUMER = "arn:aws:kinesis:us-east-1:000000000000:stream/s/consumer/c:1700000000"


async def drain(subscriber: ShardSubscriber, seconds: float = 20.0) -> list[SubscriptionEvent]:
    """Every event until the subscriber ends (bounded)."""
    events: list[SubscriptionEvent] = []
    with anyio.fail_after(seconds):
        async for event in subscriber:
            events.append(event)
    return events


async def test_closed_shard_ends_with_child_shards_and_initial_response_is_skipped() -> None:
    children = [
        {"ShardId": "shardId-000000000001", "ParentShards": [SHARD], "HashKeyRange": {}},
        {"ShardId": "shardId-000000000002", "ParentShards": [SHARD], "HashKeyRange": {}},
    ]
    script = Script(
        calls=[
            [
                ("send", event_frame(b"{}", "initial-response")),
                ("send", event_frame(event_payload([wire_record(1, b"a")], "1"))),
                ("send", event_frame(event_payload([wire_record(2, b"b")], None, 0, children))),
                ("hang", 5),  # AWS ends the stream here; the subscriber must not wait for it
            ]
        ]
    )
    async with scripted_server(script) as url, FanOutClient(endpoint_url=url, region=REGION) as fan:
        subscriber = fan.subscriber(CONSUMER, SHARD, IteratorPosition("TRIM_HORIZON"), FAST)
        events = await drain(subscriber, seconds=3)
    assert [[r.data for r in e.records] for e in events] == [[b"a"], [b"b"]]
    assert events[-1].shard_ended
    assert [(c.shard_id, c.parent_shards) for c in events[-1].child_shards] == [
        ("shardId-000000000001", (SHARD,)),
        ("shardId-000000000002", (SHARD,)),
    ]
    assert len(script.requests) == 1
    assert script.requests[0]["StartingPosition"] == {"Type": "TRIM_HORIZON"}


async def test_mid_stream_limit_exceeded_resumes_after_the_last_event_a_second_later() -> None:
    script = Script(
        calls=[
            [
                ("send", event_frame(event_payload([wire_record(1, b"a")], "1"))),
                ("send", exception_frame("LimitExceededException", "slow down")),
            ],
            [("send", event_frame(event_payload([wire_record(2, b"b")], None)))],
        ]
    )
    async with scripted_server(script) as url, FanOutClient(endpoint_url=url, region=REGION) as fan:
        subscriber = fan.subscriber(
            CONSUMER, SHARD, IteratorPosition("AT_SEQUENCE_NUMBER", sequence_number="1"), FAST
        )
        events = await drain(subscriber)
    assert [r.sequence_number for e in events for r in e.records] == ["1", "2"]
    assert script.requests[1]["StartingPosition"] == {
        "Type": "AFTER_SEQUENCE_NUMBER",
        "SequenceNumber": "1",
    }
    assert script.times[1] - script.times[0] >= 1.0
    assert subscriber.errors == 1 and isinstance(subscriber.last_error, ThrottledError)


async def test_connection_dropped_inside_an_event_skips_nothing() -> None:
    second = event_frame(event_payload([wire_record(2, b"b"), wire_record(3, b"c")], "3"))
    script = Script(
        calls=[
            [
                ("send", event_frame(event_payload([wire_record(1, b"a")], "1"))),
                ("send", second[: len(second) // 2]),
                ("drop", None),
            ],
            [("send", second), ("send", event_frame(event_payload([], None)))],
        ]
    )
    async with scripted_server(script) as url, FanOutClient(endpoint_url=url, region=REGION) as fan:
        subscriber = fan.subscriber(CONSUMER, SHARD, IteratorPosition("TRIM_HORIZON"), FAST)
        events = await drain(subscriber)
    assert [r.sequence_number for e in events for r in e.records] == ["1", "2", "3"]
    assert script.requests[1]["StartingPosition"]["SequenceNumber"] == "1"
    assert subscriber.errors == 1 and isinstance(subscriber.last_error, TransientSourceError)
    assert subscriber.statistics().resubscriptions == 1


async def test_latest_before_any_event_resumes_at_the_time_of_the_first_call() -> None:
    script = Script(
        calls=[[("drop", None)], [("send", event_frame(event_payload([], None)))]],
    )
    async with scripted_server(script) as url, FanOutClient(endpoint_url=url, region=REGION) as fan:
        before = time.time()
        subscriber = fan.subscriber(CONSUMER, SHARD, IteratorPosition("LATEST"), FAST)
        await drain(subscriber)
    assert script.requests[0]["StartingPosition"] == {"Type": "LATEST"}
    second = script.requests[1]["StartingPosition"]
    assert second["Type"] == "AT_TIMESTAMP" and before <= second["Timestamp"] <= time.time()


async def test_silence_past_the_event_timeout_counts_as_a_dead_connection() -> None:
    script = Script(
        calls=[
            [("send", event_frame(event_payload([wire_record(1, b"a")], "1"))), ("hang", 30)],
            [("send", event_frame(event_payload([wire_record(2, b"b")], None)))],
        ]
    )
    quick = SubscribeSettings(min_subscribe_interval=0.1, event_timeout=0.5)
    async with scripted_server(script) as url, FanOutClient(endpoint_url=url, region=REGION) as fan:
        subscriber = fan.subscriber(CONSUMER, SHARD, IteratorPosition("TRIM_HORIZON"), quick)
        events = await drain(subscriber, seconds=10)
    assert [r.sequence_number for e in events for r in e.records] == ["1", "2"]
    assert "no event for 0.5 s" in str(subscriber.last_error)


@pytest.mark.parametrize(
    ("status", "code", "message", "expected"),
    [
        (400, "ResourceNotFoundException", "Consumer c not found", ConsumerNotFoundError),
        (400, "ResourceNotFoundException", "Shard shardId-9 does not exist", StreamNotFoundError),
        (400, "ResourceInUseException", "Another subscription", SubscriptionInUseError),
        (400, "InvalidArgumentException", "Sequence number was trimmed", TrimmedPositionError),
        (403, "AccessDeniedException", "not allowed", AccessDeniedError),
    ],
)
async def test_http_errors_before_the_stream_are_mapped(
    status: int, code: str, message: str, expected: type[SourceError]
) -> None:
    script = Script(calls=[], http_error={0: (status, {"__type": code, "message": message})})
    no_retry = SubscribeSettings(max_retries=0)
    async with scripted_server(script) as url, FanOutClient(endpoint_url=url, region=REGION) as fan:
        subscriber = fan.subscriber(CONSUMER, SHARD, IteratorPosition("TRIM_HORIZON"), no_retry)
        with pytest.raises(SourceError) as caught:
            await drain(subscriber, seconds=5)
    assert type(caught.value) is expected and caught.value.code == code
    assert str(subscriber.position) == "TRIM_HORIZON"  # iterating again starts there


# kinesis-mock


@dataclass
class Setup:
    client: KinesisClient
    fan: FanOutClient
    name: str
    arn: str


@asynccontextmanager
async def stream_setup(
    endpoint_url: str, name: str, shards: int = 1, fan_url: str | None = None
) -> AsyncIterator[Setup]:
    async with (
        kinesis_client(endpoint_url) as client,
        FanOutClient(endpoint_url=fan_url or endpoint_url, region=REGION, settings=FAST) as fan,
    ):
        arn = await create_stream(client, name, shards)
        yield Setup(client, fan, name, arn)


async def records_until(
    subscriber: ShardSubscriber,
    count: int,
    seconds: float = 30.0,
    on_event: Callable[[SubscriptionEvent], None] | None = None,
) -> list[Record]:
    """Pull events until `count` records came (bounded); fails on more than `count`."""
    records: list[Record] = []
    with anyio.fail_after(seconds):
        async for event in subscriber:
            records.extend(event.records)
            if on_event is not None:
                on_event(event)
            if len(records) >= count:
                break
    assert len(records) == count, f"{len(records)} records, expected {count}"
    return records


def keyed(count: int, start: int = 0, size: int = 20) -> list[tuple[str, bytes]]:
    return [
        (f"key-{i % 7}", f"record-{i:06d}".encode().ljust(size, b"."))
        for i in range(start, start + count)
    ]


async def test_register_consumer_waits_for_active_and_is_idempotent(
    kinesis_mock: KinesisMock, stream_name: str
) -> None:
    async with stream_setup(kinesis_mock.endpoint_url, stream_name) as s:
        arn = await s.fan.register_consumer(s.arn, "esm-consumer")
        parsed = ConsumerArn.parse(arn)
        assert (parsed.stream_arn, parsed.consumer_name) == (s.arn, "esm-consumer")
        description = await s.fan.describe_consumer(arn)
        assert (description.status, description.stream_arn) == ("ACTIVE", s.arn)
        assert await s.fan.register_consumer(s.arn, "esm-consumer") == arn
        with pytest.raises(ValueError, match="register_consumer must be a consumer name"):
            await s.fan.register_consumer(s.arn, "bad name")
        missing = s.arn.replace(stream_name, stream_name + "-missing")
        with pytest.raises(StreamNotFoundError):
            await s.fan.register_consumer(missing, "esm-consumer", max_wait=5)


async def test_delivers_every_record_in_order_with_data_as_base64(
    kinesis_mock: KinesisMock, stream_name: str
) -> None:
    async with stream_setup(kinesis_mock.endpoint_url, stream_name) as s:
        written = await put_records(s.client, s.name, keyed(600))
        consumer = await s.fan.register_consumer(s.arn, "c")
        async with s.fan.subscriber(consumer, SHARD, IteratorPosition("TRIM_HORIZON")) as sub:
            records = await records_until(sub, 600)
            assert sub.statistics().subscription_age is not None
            assert sub.statistics().millis_behind_latest is not None
    assert [r.sequence_number for r in records] == [w.sequence_number for w in written]
    assert [(r.partition_key, r.data) for r in records] == [
        (w.partition_key, w.data) for w in written
    ]
    assert all(r.data_b64 == base64.b64encode(r.data).decode() for r in records)
    assert all(abs(r.approximate_arrival_timestamp - time.time()) < 120 for r in records)


async def test_resubscription_resumes_after_the_last_continuation(
    kinesis_mock: KinesisMock, stream_name: str
) -> None:
    async with stream_setup(kinesis_mock.endpoint_url, stream_name) as s:
        first = await put_records(s.client, s.name, keyed(50))
        consumer = await s.fan.register_consumer(s.arn, "c")
        sub = s.fan.subscriber(consumer, SHARD, IteratorPosition("TRIM_HORIZON"))
        async with sub:
            got = await records_until(sub, 50)
            assert str(sub.position) == f"AFTER_SEQUENCE_NUMBER {first[-1].sequence_number}"
            sub.end_subscription()  # what the end of a 5-minute subscription does
            second = await put_records(s.client, s.name, keyed(30, start=50))
            got += await records_until(sub, 30)
            stats = sub.statistics()
        assert [r.sequence_number for r in got] == [w.sequence_number for w in first + second]
        assert stats.resubscriptions == 1 and stats.subscribe_calls >= 2
        # a fresh subscriber at the saved position (a restart after a checkpoint) sees the rest
        third = await put_records(s.client, s.name, keyed(5, start=80))
        after = IteratorPosition.after(second[-1].sequence_number)
        async with s.fan.subscriber(consumer, SHARD, after) as restarted:
            rest = await records_until(restarted, 5)
        assert [r.sequence_number for r in rest] == [w.sequence_number for w in third]


async def test_every_starting_position(kinesis_mock: KinesisMock, stream_name: str) -> None:
    async with stream_setup(kinesis_mock.endpoint_url, stream_name) as s:
        old = await put_records(s.client, s.name, keyed(10))
        consumers = [await s.fan.register_consumer(s.arn, f"c{i}") for i in range(4)]
        await anyio.sleep(0.01)  # arrival timestamps are in milliseconds
        stamp = time.time()
        positions = {
            "LATEST": IteratorPosition("LATEST"),
            "AT_SEQUENCE_NUMBER": IteratorPosition(
                "AT_SEQUENCE_NUMBER", sequence_number=old[4].sequence_number
            ),
            "AFTER_SEQUENCE_NUMBER": IteratorPosition.after(old[4].sequence_number),
            "AT_TIMESTAMP": IteratorPosition("AT_TIMESTAMP", timestamp=stamp),
        }
        subscribers = {
            key: s.fan.subscriber(c, SHARD, p)
            for (key, p), c in zip(positions.items(), consumers, strict=True)
        }
        got: dict[str, list[str]] = {}
        # LATEST counts from its first subscription: wait for every one to have an event
        firsts = {key: await anext(sub) for key, sub in subscribers.items()}
        new = await put_records(s.client, s.name, keyed(3, start=10))
        expected = {
            "LATEST": new,
            "AT_SEQUENCE_NUMBER": old[4:] + new,
            "AFTER_SEQUENCE_NUMBER": old[5:] + new,
            "AT_TIMESTAMP": new,
        }

        async def read(key: str) -> None:
            first = [r.sequence_number for r in firsts[key].records]
            more = await records_until(subscribers[key], len(expected[key]) - len(first))
            got[key] = first + [r.sequence_number for r in more]

        async with anyio.create_task_group() as group:
            for key in subscribers:
                group.start_soon(read, key)
        for sub in subscribers.values():
            await sub.aclose()
    assert got == {key: [w.sequence_number for w in records] for key, records in expected.items()}


async def test_a_consumer_that_does_not_exist_or_was_deregistered(
    kinesis_mock: KinesisMock, stream_name: str
) -> None:
    async with stream_setup(kinesis_mock.endpoint_url, stream_name) as s:
        consumer = await s.fan.register_consumer(s.arn, "c")
        never = consumer.replace("/consumer/c:", "/consumer/never-registered:")
        with pytest.raises(ConsumerNotFoundError, match="never-registered"):
            await s.fan.describe_consumer(never)
        async with s.fan.subscriber(never, SHARD, IteratorPosition("TRIM_HORIZON")) as sub:
            with pytest.raises(ConsumerNotFoundError, match="not found"):
                await drain(sub, seconds=10)
        with pytest.raises(ValueError, match="consumer_arn must be a stream consumer ARN"):
            s.fan.subscriber(s.arn, SHARD, IteratorPosition("TRIM_HORIZON"))
        await s.fan.deregister_consumer(consumer)
        await wait_for(
            lambda: _gone(s.fan, consumer), 10, message="the consumer to be deregistered"
        )
        async with s.fan.subscriber(consumer, SHARD, IteratorPosition("TRIM_HORIZON")) as sub:
            with pytest.raises(ConsumerNotFoundError):
                await drain(sub, seconds=10)


async def _gone(fan: FanOutClient, consumer: str) -> bool:
    try:
        await fan.describe_consumer(consumer)
    except ConsumerNotFoundError:
        return True
    return False


async def test_a_second_subscription_on_the_same_consumer_and_shard_is_in_use(
    kinesis_mock: KinesisMock, stream_name: str
) -> None:
    async with stream_setup(kinesis_mock.endpoint_url, stream_name) as s:
        await put_records(s.client, s.name, keyed(3))
        consumer = await s.fan.register_consumer(s.arn, "c")
        holder = s.fan.subscriber(consumer, SHARD, IteratorPosition("TRIM_HORIZON"))
        await records_until(holder, 3)
        patient = SubscribeSettings(max_retries=1)
        second = s.fan.subscriber(consumer, SHARD, IteratorPosition("TRIM_HORIZON"), patient)
        began = time.monotonic()
        with pytest.raises(SubscriptionInUseError, match="Another active subscription"):
            await drain(second, seconds=15)
        assert time.monotonic() - began >= 1.0  # one retry, at least a second later
        assert second.subscribe_calls == 2 and second.errors == 2
        await holder.aclose()
        await second.aclose()


async def test_two_consumers_on_one_stream_both_receive_everything(
    kinesis_mock: KinesisMock, stream_name: str
) -> None:
    async with stream_setup(kinesis_mock.endpoint_url, stream_name, shards=2) as s:
        written = await put_records(s.client, s.name, keyed(200))
        shard_ids = await list_shard_ids(s.client, s.name)
        consumers = [await s.fan.register_consumer(s.arn, name) for name in ("one", "two")]
        expected = {
            shard: [w.sequence_number for w in written if w.shard_id == shard]
            for shard in shard_ids
        }
        got: dict[tuple[str, str], list[str]] = {}

        async def read(consumer: str, shard: str) -> None:
            async with s.fan.subscriber(consumer, shard, IteratorPosition("TRIM_HORIZON")) as sub:
                records = await records_until(sub, len(expected[shard]))
            got[(consumer, shard)] = [r.sequence_number for r in records]

        async with anyio.create_task_group() as group:
            for consumer in consumers:
                for shard in shard_ids:
                    group.start_soon(read, consumer, shard)
    assert all(expected.values())  # both shards had records
    assert got == {(c, shard): expected[shard] for c in consumers for shard in shard_ids}


async def test_a_slow_reader_holds_a_bounded_number_of_bytes(
    kinesis_mock: KinesisMock, stream_name: str
) -> None:
    async with stream_setup(kinesis_mock.endpoint_url, stream_name) as s:
        consumer = await s.fan.register_consumer(s.arn, "c")
        first = await put_records(s.client, s.name, keyed(10, size=4096))
        async with s.fan.subscriber(consumer, SHARD, IteratorPosition("TRIM_HORIZON")) as sub:
            got = await records_until(sub, 10)
            # the reader stops pulling; the server has ~8 MB of events for it meanwhile
            peak = 0
            written = []
            for start in range(10, 1510, 500):
                written += await put_records(s.client, s.name, keyed(500, start, size=4096))
                peak = max(peak, sub.buffered_bytes)
            server_bytes = len(orjson.dumps([wire_record(0, b"x" * 4096)])) * len(written)
            assert server_bytes > 6_000_000
            for _ in range(30):  # three of kinesis-mock's 1 s ticks, sampled
                await anyio.sleep(0.1)
                peak = max(peak, sub.buffered_bytes)
            assert peak < 1_000_000, f"{peak} bytes buffered while not reading"
            got += await records_until(sub, len(written), seconds=60)
    assert [r.sequence_number for r in got] == [w.sequence_number for w in first + written]


async def test_a_connection_reset_mid_stream_loses_and_repeats_nothing(
    kinesis_mock: KinesisMock, stream_name: str
) -> None:
    async with (
        FaultProxy("127.0.0.1", kinesis_mock.port) as proxy,
        stream_setup(kinesis_mock.endpoint_url, stream_name, fan_url=proxy.endpoint_url) as s,
    ):
        consumer = await s.fan.register_consumer(s.arn, "c")
        first = await put_records(s.client, s.name, keyed(40))
        async with s.fan.subscriber(consumer, SHARD, IteratorPosition("TRIM_HORIZON")) as sub:
            got = await records_until(sub, 40)
            assert await proxy.reset_connections() >= 1
            second = await put_records(s.client, s.name, keyed(40, start=40))
            got += await records_until(sub, 40)
            await proxy.reset_connections()
            third = await put_records(s.client, s.name, keyed(40, start=80))
            got += await records_until(sub, 40)
            stats = sub.statistics()
    expected = [w.sequence_number for w in first + second + third]
    assert [r.sequence_number for r in got] == expected
    assert stats.errors >= 2 and stats.resubscriptions >= 2


async def _split(client: KinesisClient, name: str) -> list[str]:
    shard = (await client.list_shards(StreamName=name))["Shards"][0]
    low = int(shard["HashKeyRange"]["StartingHashKey"])
    high = int(shard["HashKeyRange"]["EndingHashKey"])
    await client.split_shard(
        StreamName=name, ShardToSplit=shard["ShardId"], NewStartingHashKey=str((low + high) // 2)
    )

    async def children() -> list[str] | None:
        ids = await list_shard_ids(client, name)
        return ids if len(ids) == 3 else None

    return await wait_for(children, 30, message="the split's children")


async def test_a_split_parent_delivers_all_its_records(
    kinesis_mock: KinesisMock, stream_name: str
) -> None:
    async with stream_setup(kinesis_mock.endpoint_url, stream_name) as s:
        before = await put_records(s.client, s.name, keyed(60))
        await _split(s.client, s.name)
        consumer = await s.fan.register_consumer(s.arn, "c")
        async with s.fan.subscriber(consumer, SHARD, IteratorPosition("TRIM_HORIZON")) as sub:
            records = await records_until(sub, 60)
    assert [r.sequence_number for r in records] == [w.sequence_number for w in before]


@pytest.mark.xfail(
    strict=True,
    raises=TimeoutError,
    reason="kinesis-mock 0.6.2 never ends a closed shard's subscription: no ChildShards",
)
async def test_a_split_parent_ends_with_its_child_shards(
    kinesis_mock: KinesisMock, stream_name: str
) -> None:
    async with stream_setup(kinesis_mock.endpoint_url, stream_name) as s:
        await put_records(s.client, s.name, keyed(5))
        children = [i for i in await _split(s.client, s.name) if i != SHARD]
        consumer = await s.fan.register_consumer(s.arn, "c")
        async with s.fan.subscriber(consumer, SHARD, IteratorPosition("TRIM_HORIZON")) as sub:
            events = await drain(sub, seconds=4)
    assert events[-1].shard_ended
    assert sorted(c.shard_id for c in events[-1].child_shards) == sorted(children)
