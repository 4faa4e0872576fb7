"""Record: the wire's base64 kept as is, decoded once and only when a handler reads ``data``."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

import pytest

from kinesis_esm import KinesisSource, Record
from kinesis_esm.source import IteratorPosition
from tests.support.kinesis import create_stream, kinesis_client, put_records

SEQUENCE = "49590338271490256608559692538361571095921575989136588898"
ARRIVAL = 1_700_000_000.123


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every base64 decode anyone makes during the test, by argument."""
    calls: list[str] = []
    real: Callable[..., bytes] = base64.b64decode

    def counting(s: str | bytes, *args: object, **kwargs: object) -> bytes:
        calls.append(s if isinstance(s, str) else s.decode("ascii", "replace"))
        return real(s, *args, **kwargs)

    monkeypatch.setattr(base64, "b64decode", counting)
    return calls


def test_wire_record_decodes_only_when_data_is_read(decode_calls: list[str]) -> None:
    payload = b'{"order": 1, "amount": 12.5}'
    wire = base64.b64encode(payload).decode("ascii")
    record = Record(SEQUENCE, "customer-1", wire, ARRIVAL)

    # Everything but `data` is available without decoding.
    assert record.sequence_number == SEQUENCE
    assert record.partition_key == "customer-1"
    assert record.data_b64 == wire
    assert record.approximate_arrival_timestamp == ARRIVAL
    assert record.encryption_type is None
    assert record.sequence_int == int(SEQUENCE)
    assert "customer-1" in repr(record)
    assert record == Record(SEQUENCE, "customer-1", wire, ARRIVAL)
    assert decode_calls == []

    first = record.data
    assert first == payload
    assert decode_calls == [wire]

    # Decoded once: later reads are the cached bytes, not a second decode.
    assert record.data is first
    assert record.data is first
    assert decode_calls == [wire]


def test_record_from_bytes_keeps_the_bytes_and_never_decodes(decode_calls: list[str]) -> None:
    payload = bytes(range(256))
    record = Record.from_bytes(SEQUENCE, "k", payload, ARRIVAL, "KMS")
    assert record.data is payload
    assert record.data_b64 == base64.b64encode(payload).decode("ascii")
    assert record.encryption_type == "KMS"
    assert decode_calls == []
    # Equality is by value, whichever way the record was built and whether it was decoded.
    assert record == Record(SEQUENCE, "k", record.data_b64, ARRIVAL, "KMS")
    assert record != Record(SEQUENCE, "k", record.data_b64, ARRIVAL)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00", b"ab", b"abc", bytes(range(256)) * 3, "ünïcödé ✓".encode()],
    ids=["empty", "nul", "pad2", "pad0", "all-bytes", "utf8"],
)
def test_data_round_trips_every_byte(payload: bytes) -> None:
    record = Record(SEQUENCE, "k", base64.b64encode(payload).decode("ascii"), ARRIVAL)
    assert record.data == payload


def test_records_are_not_hashable() -> None:
    """Equality is by value over a mutable cache: a hash would be a trap."""
    with pytest.raises(TypeError):
        hash(Record(SEQUENCE, "k", "", ARRIVAL))


@pytest.mark.parametrize(
    "bad",
    ["not base64!", "YWJj$", "YWJjZA", "YW=J", "YWJj\nZGVm", " YWJj"],
    ids=["punctuation", "dollar", "no-padding", "inner-padding", "newline", "space"],
)
def test_invalid_base64_is_a_clear_error_naming_the_record(bad: str) -> None:
    # Built without complaint: the check happens when the data is read, not before.
    record = Record(SEQUENCE, "customer-1", bad, ARRIVAL)
    assert record.data_b64 == bad

    with pytest.raises(ValueError, match=rf"record {SEQUENCE} carries invalid base64 data") as err:
        _ = record.data
    assert isinstance(err.value.__cause__, binascii.Error)

    # A failed decode is not cached as if it had succeeded: it fails again, the same way.
    with pytest.raises(ValueError, match="invalid base64"):
        _ = record.data


@pytest.mark.anyio
async def test_records_read_from_kinesis_match_what_was_put_and_decode_lazily(
    moto: str, stream_name: str, decode_calls: list[str]
) -> None:
    """Through a real API: the fast GetRecords path keeps base64 undecoded until `data` is
    read, and gives exactly the records botocore's own parser gives."""
    payloads = [b"", b"plain", bytes(range(256)), "ünïcödé".encode(), b"\x00" * 1000]
    async with kinesis_client(moto) as client:
        arn = await create_stream(client, stream_name, 1)
        written = await put_records(
            client, stream_name, [(f"key-{i}", p) for i, p in enumerate(payloads)]
        )
    shard_id = written[0].shard_id

    async with KinesisSource(endpoint_url=moto, region="us-east-1") as fast:
        iterator = await fast.get_shard_iterator(arn, shard_id, IteratorPosition("TRIM_HORIZON"))
        fast_records = (await fast.get_records(arn, iterator, 100)).records
    assert decode_calls == []  # the fast path kept the wire's base64 as is

    async with KinesisSource(endpoint_url=moto, region="us-east-1", fast_parse=False) as slow:
        iterator = await slow.get_shard_iterator(arn, shard_id, IteratorPosition("TRIM_HORIZON"))
        slow_records = (await slow.get_records(arn, iterator, 100)).records
    decode_calls.clear()  # botocore's own parser decodes; only ours is counted from here

    assert [r.sequence_number for r in fast_records] == [w.sequence_number for w in written]
    assert [r.partition_key for r in fast_records] == [w.partition_key for w in written]
    assert [r.data_b64 for r in fast_records] == [
        base64.b64encode(p).decode("ascii") for p in payloads
    ]
    assert fast_records == slow_records  # every field, timestamps included

    assert [r.data for r in fast_records] == payloads
    assert len(decode_calls) == len(payloads)
    assert [r.data for r in fast_records] == payloads
    assert len(decode_calls) == len(payloads)  # cached
