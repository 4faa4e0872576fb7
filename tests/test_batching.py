"""Cutting batches: BatchSize, the 6 MB event cap, single oversized records, awkward keys.

The size estimate is checked against the real thing: ``orjson.dumps(build_event(...))``, the
bytes a function would receive. It must be an upper bound (a batch never exceeds the cap) and
not wildly pessimistic (a batch is cut only when the next record really would not fit, give or
take a few bytes of per-record slack).
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kinesis_esm.events._lambda import (
    MAX_EVENT_BYTES,
    EventSource,
    build_event,
    event_record_overhead,
    record_event_size,
)
from kinesis_esm.events._record import Record
from kinesis_esm.pipeline._batching import EVENT_ENVELOPE_BYTES, batch_count, event_bytes

SOURCE = EventSource(
    "arn:aws:kinesis:eu-central-1:123456789012:stream/orders-stream",
    "shardId-000000000007",
    "eu-central-1",
    "arn:aws:iam::123456789012:role/kinesis-esm",
)
OVERHEAD = event_record_overhead(SOURCE)
SEQUENCE = "49590338271490256608559692538361571095921575989136588898"  # a real-looking one
TIMESTAMP = 1_700_000_000.123
MiB = 1024 * 1024


def real_size(records: list[Record]) -> int:
    """The serialized event, exactly as a function would get it."""
    return len(orjson.dumps(build_event(SOURCE, records)))


def key_escape_slack(key: str) -> int:
    """record_event_size counts quotes and backslashes twice for non-ASCII keys: harmless."""
    return key.count('"') + key.count("\\")


def b64(size: int) -> str:
    """A valid base64 text of ``size`` bytes of payload (the event never decodes it)."""
    return "A" * (4 * ((size + 2) // 3))


def record(
    data_b64: str,
    key: str = "k",
    sequence: str = SEQUENCE,
    timestamp: float = TIMESTAMP,
    encryption: str | None = None,
) -> Record:
    return Record(sequence, key, data_b64, timestamp, encryption)


# BatchSize


@pytest.mark.parametrize(
    ("count", "batch_size", "expected"),
    [(0, 10, 0), (1, 10, 1), (9, 10, 9), (10, 10, 10), (11, 10, 10), (500, 100, 100), (5, 1, 1)],
)
def test_batch_size_is_honoured(count: int, batch_size: int, expected: int) -> None:
    records = [record(b64(100), key=f"k{i}") for i in range(count)]
    assert batch_count(records, batch_size, OVERHEAD) == expected


def test_the_largest_batch_size_of_small_records_fits_in_one_event() -> None:
    # each record costs about 570 bytes of event besides its data: 10 bytes of data still fit
    records = [record(b64(10), key=f"key-{i}") for i in range(10_000)]
    assert batch_count(records, 10_000, OVERHEAD) == 10_000
    assert real_size(records) <= MAX_EVENT_BYTES


# the 6 MB cap


@pytest.mark.parametrize("payload", [1000, 100 * 1024, 700 * 1024, 1 * MiB, 3 * MiB])
def test_the_6_mb_cap_cuts_where_the_real_event_would_overflow(payload: int) -> None:
    records = [
        record(b64(payload), key=f"key-{i}") for i in range(10_000 if payload < 2000 else 80)
    ]
    n = batch_count(records, 10_000, OVERHEAD)
    assert 1 <= n < len(records)
    assert real_size(records[:n]) <= MAX_EVENT_BYTES  # an upper bound: never over the cap
    assert real_size(records[: n + 1]) > MAX_EVENT_BYTES - 64 * (n + 1)  # not pessimistic
    assert event_bytes(records[:n], OVERHEAD) <= MAX_EVENT_BYTES


def test_a_realistic_cap_wastes_under_two_percent() -> None:
    # about 24 bytes of room per record (timestamp digits, an encryption type) on ~1.9 KB
    records = [record(b64(1000), key=f"customer-{i:06d}") for i in range(10_000)]
    n = batch_count(records, 10_000, OVERHEAD)
    assert 0.98 * MAX_EVENT_BYTES < real_size(records[:n]) <= MAX_EVENT_BYTES


def test_a_single_record_over_6_mb_forms_a_batch_of_one() -> None:
    small = record(b64(1000), key="small")
    huge = record(b64(7 * MiB), key="huge")
    assert event_bytes([huge], OVERHEAD) > MAX_EVENT_BYTES
    assert batch_count([huge], 100, OVERHEAD) == 1
    assert batch_count([huge, small, small], 100, OVERHEAD) == 1
    assert batch_count([small, huge, small], 100, OVERHEAD) == 1  # huge waits for its own batch
    assert batch_count([small, small, huge], 100, OVERHEAD) == 2


def test_a_record_just_under_the_cap_is_alone_and_fits() -> None:
    room = MAX_EVENT_BYTES - EVENT_ENVELOPE_BYTES - OVERHEAD - 2 * len(SEQUENCE) - 1
    big = record("A" * (room - room % 4))
    assert real_size([big]) <= MAX_EVENT_BYTES
    assert event_bytes([big], OVERHEAD) <= MAX_EVENT_BYTES
    assert batch_count([big, record(b64(1))], 100, OVERHEAD) == 1


# partition keys that need escaping or take several bytes per character


AWKWARD_KEYS = [
    "plain",
    "ключ-раздела",  # 2 bytes per character in UTF-8
    "分区键",  # 3 bytes
    "😀" * 64,  # 4 bytes, outside the BMP
    '"quoted" and \\back\\slashed',  # 2 bytes each when escaped
    "tab\tnew\nline\rform\ffeed\bback",  # short escapes
    "\x00\x01\x1f control",  # \u00XX: 6 bytes each
    "\x7f del and \u2028 line separator",  # not escaped by JSON
    'é"mixed\\',  # non-ASCII and escapes together
    "\x00" * 256,  # the worst case: 256 characters of 6 bytes each
]


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_awkward_keys_are_sized_as_an_upper_bound(key: str) -> None:
    one = record(b64(100), key=key)
    exact = real_size([one]) - EVENT_ENVELOPE_BYTES
    estimate = record_event_size(one, OVERHEAD)
    assert exact <= estimate <= exact + 40 + key_escape_slack(key)
    # and the cut with a tiny cap stays within it
    records = [record(b64(100), key=key)] * 50
    cap = 20 * estimate
    n = batch_count(records, 100, OVERHEAD, max_bytes=cap)
    assert real_size(records[:n]) <= cap < real_size(records[: n + 1]) + 40 * n


def test_encryption_type_none_is_within_the_estimate() -> None:
    # Kinesis's EncryptionType is NONE or KMS; emulators send NONE for plain streams.
    records = [record(b64(100), encryption="NONE", key=f"k{i:03d}") for i in range(200)]
    assert real_size(records) <= event_bytes(records, OVERHEAD)


# the property, with a small cap so that hypothesis can reach every branch cheaply

KEYS = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=256)
RECORDS = st.builds(
    record,
    data_b64=st.integers(0, 3000).map(b64),
    key=KEYS,
    sequence=st.integers(0, 10**60).map(str),
    timestamp=st.floats(0, 9_999_999_999.999, allow_nan=False),
    encryption=st.sampled_from([None, "KMS", "NONE"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(RECORDS, max_size=40),
    st.integers(1, 10_000),
    st.integers(EVENT_ENVELOPE_BYTES, 60_000),
)
def test_cuts_are_upper_bounds_and_tight(
    records: list[Record], batch_size: int, max_bytes: int
) -> None:
    n = batch_count(records, batch_size, OVERHEAD, max_bytes)
    if not records:
        assert n == 0
        return
    assert 1 <= n <= min(len(records), batch_size)
    assert real_size(records[:n]) <= event_bytes(records[:n], OVERHEAD)
    if n > 1:
        assert real_size(records[:n]) <= max_bytes  # a single oversized record may exceed it
    if n < min(len(records), batch_size):
        # cut by size: the next record really would (nearly) overflow
        slack = sum(40 + key_escape_slack(r.partition_key) for r in records[: n + 1])
        assert event_bytes(records[: n + 1], OVERHEAD) > max_bytes
        assert real_size(records[: n + 1]) > max_bytes - slack


def _cut_record_by_record(records: list[Record], batch_size: int, cap: int) -> int:
    """The reference cut: add records while the running upper bound stays within the cap."""
    total, count = EVENT_ENVELOPE_BYTES, 0
    for r in records[:batch_size]:
        size = event_bytes([r], OVERHEAD) - EVENT_ENVELOPE_BYTES
        if count and total + size > cap:
            break
        total += size
        count += 1
    return count


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=60),
    keys=st.lists(st.text("abcXYZ019-_.:", min_size=1, max_size=40), min_size=1, max_size=60),
    batch_size=st.integers(1, 80),
    cap=st.integers(500, 40_000),
)
def test_the_arithmetic_cut_for_plain_keys_equals_the_record_by_record_cut(
    sizes: list[int], keys: list[str], batch_size: int, cap: int
) -> None:
    records = [
        record(b64(size), key=keys[i % len(keys)], sequence=str(10**20 + i))
        for i, size in enumerate(sizes)
    ]
    assert batch_count(records, batch_size, OVERHEAD, max_bytes=cap) == _cut_record_by_record(
        records, batch_size, cap
    )
