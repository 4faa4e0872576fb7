"""KPL de-aggregation: aggregates from a real producer library (aws-kinesis-agg) parsed back
exactly, through a real Kinesis API (moto) too; corrupt and hostile aggregates; and the hand
parser checked against protobuf's own parser on generated messages."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable

import pytest
from aws_kinesis_agg.aggregator import RecordAggregator
from benchmarks.kpl import protobuf_deaggregate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinesis_esm import KinesisSource, Record
from kinesis_esm.source import IteratorPosition
from kinesis_esm.source._kpl import (
    MAGIC,
    DeaggregationError,
    UserRecord,
    deaggregate,
    expand,
    expand_all,
    is_aggregate,
    parse_item_identifier,
    user_record_id,
)
from tests.support.kinesis import create_stream, kinesis_client, put_records

REGION = "us-east-1"
UserInput = tuple[str, bytes, str | None]  # partition key, data, explicit hash key


# --- building aggregates ---------------------------------------------------------------------


def aggregate(users: list[UserInput]) -> tuple[str, bytes]:
    """One aggregate made by aws-kinesis-agg: (its outer partition key, its bytes)."""
    aggregator = RecordAggregator()
    for key, data, hash_key in users:
        if aggregator.add_user_record(key, data, hash_key) is not None:
            raise AssertionError("the user records do not fit in one aggregate")
    packed = aggregator.clear_and_get()
    assert packed is not None
    outer_key, _, blob = packed.get_contents()
    return outer_key, blob


def varint(value: int, padding: int = 0) -> bytes:
    """A protobuf varint, with ``padding`` redundant zero groups (non-minimal, still valid)."""
    groups = [value & 0x7F]
    while value > 0x7F:
        value >>= 7
        groups.append(value & 0x7F)
    groups += [0] * padding
    return bytes([group | 0x80 for group in groups[:-1]] + [groups[-1]])


def field(number: int, wire_type: int, payload: bytes = b"") -> bytes:
    if wire_type == 2:
        payload = varint(len(payload)) + payload
    return varint(number << 3 | wire_type) + payload


def wrap(message: bytes) -> bytes:
    """Magic, message and its correct MD5: the parser, not the digest check, sees the message."""
    return MAGIC + message + hashlib.md5(message).digest()


def user_message(key_index: int, data: bytes, hash_key_index: int | None = None) -> bytes:
    body = field(1, 0, varint(key_index))
    if hash_key_index is not None:
        body += field(2, 0, varint(hash_key_index))
    return field(3, 2, body + field(3, 2, data))


def expected(users: list[UserInput]) -> list[UserRecord]:
    return [UserRecord(key, hash_key, data, sub) for sub, (key, data, hash_key) in enumerate(users)]


def kinesis_record(data: bytes, sequence: str = "49" + "1" * 54) -> Record:
    """A record as KinesisSource builds it: base64 text only, decoded on first use."""
    return Record(sequence, "outer", base64.b64encode(data).decode(), 1_700_000_000.5, "KMS")


# --- aggregates from aws-kinesis-agg ------------------------------------------------------------


def test_aggregate_from_aws_kinesis_agg_parses_back_exactly() -> None:
    users: list[UserInput] = [
        ("order-1", b'{"id": 1}', None),
        ("order-2", b"", "170141183460469231731687303715884105728"),  # empty data
        ("order-1", b"x" * 200, None),  # a two-byte length
        ("ключ-🔑", bytes(range(256)) * 80, "1"),  # a three-byte length, a non-ASCII key
        ("order-2", b"\x00", "340282366920938463463374607431768211455"),
        ("order-3", b"last", "1"),  # a hash key used twice
    ]
    _, blob = aggregate(users)
    assert is_aggregate(blob)
    assert deaggregate(blob) == expected(users)


def test_aggregates_cut_by_the_aggregator_when_full_parse_back_in_order() -> None:
    """aws-kinesis-agg's own packing (4 KB aggregates): every aggregate and record, in order."""
    aggregator = RecordAggregator(max_size=4096)
    blobs: list[bytes] = []
    users: list[UserInput] = []
    for number in range(300):
        user = (f"key-{number % 7}", b"%05d" % number * (number % 40), None)
        users.append(user)
        full = aggregator.add_user_record(*user)
        if full is not None:
            blobs.append(full.get_contents()[2])
    last = aggregator.clear_and_get()
    assert last is not None
    blobs.append(last.get_contents()[2])
    assert len(blobs) > 5
    parsed = [deaggregate(blob) for blob in blobs]
    assert all([u.sub_sequence_number for u in part] == list(range(len(part))) for part in parsed)
    assert [(u.partition_key, u.data) for part in parsed for u in part] == [
        (key, data) for key, data, _ in users
    ]


def test_aggregate_with_thousands_of_keys_parses_back() -> None:
    """Key indices of two bytes, some whose second byte is the data field's tag (0x1A: indices
    3328 to 3455) followed by 25 bytes of data, which a careless fast path would misread."""
    users: list[UserInput] = [(f"k{i}", b"%d" % i, None) for i in range(4000)]
    users += [(f"k{i}", b"%025d" % i, None) for i in range(3300, 3500)]
    _, blob = aggregate(users)
    assert deaggregate(blob) == expected(users)


keys_st = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=64)
hash_keys_st = st.none() | st.integers(0, 2**128 - 1).map(str)
users_st = st.lists(
    st.tuples(keys_st, st.binary(max_size=300), hash_keys_st), min_size=1, max_size=40
)


@settings(max_examples=150, deadline=None)
@given(users_st)
def test_generated_aggregates_round_trip(users: list[UserInput]) -> None:
    _, blob = aggregate(users)
    assert deaggregate(blob) == expected(users)
    assert protobuf_deaggregate(blob) == expected(users)  # the benchmark's candidate agrees


@settings(max_examples=60, deadline=None)
@given(users_st)
def test_expand_gives_records_with_the_aggregates_sequence_and_times(
    users: list[UserInput],
) -> None:
    _, blob = aggregate(users)
    outer = kinesis_record(blob)
    result = expand(outer)
    assert result.error is None
    assert [sub for _, sub in result.records] == list(range(len(users)))
    for (record, _), (key, data, _) in zip(result.records, users, strict=True):
        assert (record.partition_key, record.data) == (key, data)
        assert record.sequence_number == outer.sequence_number
        assert record.approximate_arrival_timestamp == outer.approximate_arrival_timestamp
        assert record.encryption_type == outer.encryption_type
        assert base64.b64decode(record.data_b64) == data


# --- plain records, and what is not an aggregate ------------------------------------------------


def test_plain_records_pass_through_unchanged() -> None:
    for data in (b"", b"plain", MAGIC, MAGIC + b"\x00" * 16, b'{"a": 1}' * 100):
        record = kinesis_record(data)
        result = expand(record)
        assert result.error is None
        assert len(result.records) == 1
        assert result.records[0][0] is record
        assert result.records[0][1] is None


def test_is_aggregate_needs_the_magic_and_more_than_a_digest_after_it() -> None:
    assert not is_aggregate(MAGIC + b"\x00" * 16)  # KCL: 16 bytes or fewer after the magic
    assert is_aggregate(MAGIC + b"\x00" * 17)
    assert not is_aggregate(b"\xf3\x89\x9a\xc3" + b"\x00" * 40)
    assert not is_aggregate(b"")


def test_every_base64_of_the_magic_has_the_prefix_expand_tests() -> None:
    """expand() tells plain records apart by their base64 text: no aggregate may slip by."""
    for fourth in range(256):
        head = MAGIC[:3] + bytes([fourth])
        text = base64.b64encode(head).decode()
        assert text.startswith("84maw") == (0xC0 <= fourth <= 0xC3)  # MAGIC's 4th byte is 0xC2


# --- corrupt and hostile aggregates -------------------------------------------------------------

GOOD_USERS: list[UserInput] = [("a", b"one", None), ("b", b"two", "7"), ("a", b"three", None)]


def corruptions() -> dict[str, bytes]:
    _, good = aggregate(GOOD_USERS)
    body = good[4:-16]
    table = field(1, 2, b"a")
    return {
        "bad MD5 trailer": good[:-1] + bytes([good[-1] ^ 1]),
        "a body byte flipped": good[:10] + bytes([good[10] ^ 0x40]) + good[11:],
        "truncated protobuf": wrap(body[:-3]),
        "truncated record": good[:-20],
        "wrong magic": b"\xf3\x89\x9a\xc3" + good[4:],
        "no magic": b"plain text that is long enough",
        "too short": MAGIC + b"\x00" * 16,
        "key index out of range": wrap(table + user_message(1, b"x")),
        "hash key index out of range": wrap(table + field(2, 2, b"9") + user_message(0, b"x", 1)),
        "hash key index with no table": wrap(table + user_message(0, b"x", 0)),
        "huge key index": wrap(table + user_message(2**64 - 1, b"x")),
        "no user records": wrap(table),
        "empty message": wrap(b""),
        "record without data": wrap(table + field(3, 2, field(1, 0, b"\x00"))),
        "record without key index": wrap(table + field(3, 2, field(3, 2, b"x"))),
        "tag without key": wrap(
            table + field(3, 2, field(1, 0, b"\x00") + field(3, 2) + field(4, 2))
        ),
        "key not UTF-8": wrap(field(1, 2, b"\xff\xfe") + user_message(0, b"x")),
        "claimed length 2**32 - 1": wrap(table + b"\x1a" + varint(2**32 - 1) + b"\x08\x00"),
        "claimed data length 2**31": wrap(table + field(3, 2, b"\x08\x00\x1a" + varint(2**31))),
        "claimed length in 10 bytes": wrap(
            b"\x0a" + varint(1, padding=9) + b"a" + user_message(0, b"x")
        ),
        "varint of 11 bytes": wrap(table + field(3, 2, b"\x08" + b"\x80" * 10 + b"\x00")),
        "groups nested 100 000 deep": wrap(b"\x0b" * 100_000 + b"\x0c" * 100_000),
        "unmatched end group": wrap(b"\x0c" + table + user_message(0, b"x")),
        "field number 0": wrap(b"\x00\x00" + table + user_message(0, b"x")),
        "wire type 7": wrap(b"\x0f" + table + user_message(0, b"x")),
        "truncated fixed64": wrap(table + user_message(0, b"x") + b"\x09\x00\x00"),
    }


@pytest.mark.parametrize("name", list(corruptions()))
def test_corrupt_aggregate_is_a_deaggregation_error(name: str) -> None:
    blob = corruptions()[name]
    with pytest.raises(DeaggregationError):
        deaggregate(blob)
    with pytest.raises(DeaggregationError):
        protobuf_deaggregate(blob)  # protobuf's parser agrees with every verdict


@pytest.mark.parametrize("name", list(corruptions()))
def test_expand_delivers_a_corrupt_aggregate_whole_with_the_error(name: str) -> None:
    blob = corruptions()[name]
    record = kinesis_record(blob)
    result = expand(record)
    assert len(result.records) == 1
    assert result.records[0][0] is record
    assert result.records[0][1] is None
    # what is not an aggregate at all is a plain record, not an error (KCL's detection rule)
    assert (result.error is None) == (not is_aggregate(blob))


def test_messages_protobuf_accepts_are_accepted() -> None:
    """Encodings a producer may legally write: fields out of order, unknown fields of every
    wire type, groups, non-minimal varints, repeated scalars (the last wins), tags."""
    record = (
        field(9, 0, varint(5))
        + field(3, 0, varint(1))  # field 3 with the wrong wire type: unknown, skipped
        + field(1, 0, varint(7))  # replaced by the next key index (last one wins)
        + varint(1 << 3, padding=2)  # the tag of field 1 in a non-minimal encoding
        + varint(1)
        + field(4, 2, field(1, 2, b"tag-key") + field(2, 2, b"tag-value"))
        + field(3, 2, b"payload")
        + field(12, 1, b"\x00" * 8)
        + field(13, 5, b"\x00" * 4)
        + field(14, 3)
        + field(15, 0, b"\x01")
        + field(14, 4)
    )
    message = field(3, 2, record) + field(1, 2, b"first") + field(1, 2, b"second")
    message += field(20, 2, b"unknown") + field(2, 2, b"99")
    blob = wrap(message)
    want = [UserRecord("second", None, b"payload", 0)]
    assert deaggregate(blob) == want
    assert protobuf_deaggregate(blob) == want


def nested_groups(count: int) -> bytes:
    return b"\x2b" * count + b"\x2c" * count  # field 5 start-group tags, then their ends


@pytest.mark.parametrize(
    ("level", "limit"),
    [("aggregate", 100), ("user record", 99), ("tag", 98)],
)
def test_group_nesting_limit_counts_the_enclosing_messages(level: str, limit: int) -> None:
    """protobuf allows 100 levels in all, the user record and tag messages included."""

    def blob(groups: int) -> bytes:
        if level == "aggregate":
            return wrap(nested_groups(groups) + field(1, 2, b"k") + user_message(0, b"x"))
        tag = field(1, 2, b"t") + (nested_groups(groups) if level == "tag" else b"")
        user = field(1, 0, b"\x00") + field(3, 2, b"x") + field(4, 2, tag)
        if level == "user record":
            user += nested_groups(groups)
        return wrap(field(1, 2, b"k") + field(3, 2, user))

    want = [UserRecord("k", None, b"x", 0)]
    assert deaggregate(blob(limit)) == protobuf_deaggregate(blob(limit)) == want
    for parse in (deaggregate, protobuf_deaggregate):
        with pytest.raises(DeaggregationError):
            parse(blob(limit + 1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.booleans())
def test_random_bytes_after_the_magic_only_raise_deaggregation_errors(
    body: bytes, digest_ok: bool
) -> None:
    blob = wrap(body) if digest_ok else MAGIC + body
    try:
        users = deaggregate(blob)
    except DeaggregationError:
        return
    assert users and all(isinstance(u, UserRecord) for u in users)


# --- the hand parser against protobuf's parser --------------------------------------------------


# Each generated message is either clean (well-formed protobuf: it may still fail the
# semantic checks) or hostile (wrong lengths, stray bytes, bad wire types, a changed byte),
# so that both parsers' accepting and rejecting paths are compared.


TRUNCATED = [2**64, 2**64 + 1, 2**64 + 2, 2**64 - 1]  # protobuf keeps the low 64 bits


@st.composite
def varints(draw: st.DrawFn, clean: bool) -> bytes:
    if clean:  # at most 10 bytes
        return varint(draw(st.integers(0, 2**63)), padding=draw(st.integers(0, 1)))
    value = draw(st.integers(0, 3) | st.integers(0, 2**70) | st.sampled_from(TRUNCATED))
    return varint(value, padding=draw(st.sampled_from([0, 0, 1, 4, 9])))


@st.composite
def length_delimited(draw: st.DrawFn, number: int, payload: bytes, clean: bool) -> bytes:
    if clean:
        return varint(number << 3 | 2) + varint(len(payload)) + payload
    error = draw(st.sampled_from([0] * 6 + [-2, -1, 1, 3]))
    padding = draw(st.sampled_from([0] * 6 + [1, 4, 5]))  # 5 and 6 bytes: only 5 are allowed
    return varint(number << 3 | 2) + varint(max(len(payload) + error, 0), padding) + payload


@st.composite
def unknown_fields(draw: st.DrawFn, clean: bool) -> bytes:
    number = draw(st.integers(5, 40) if clean else st.integers(0, 40))
    wire_type = draw(st.sampled_from([0, 1, 2, 3, 5] if clean else list(range(8))))
    paddings = [0, 0, 0, 1, 3] if clean else [0, 0, 0, 0, 0, 1, 3, 4]  # tags: 5 bytes at most
    tag = varint(number << 3 | wire_type, padding=draw(st.sampled_from(paddings)))
    if wire_type == 0:
        return tag + draw(varints(clean))
    if wire_type in (1, 5):
        size = 8 if wire_type == 1 else 4
        return tag + draw(st.binary(min_size=size if clean else 0, max_size=size))
    if wire_type == 2:
        return draw(length_delimited(number, draw(st.binary(max_size=12)), clean))
    if wire_type == 3:
        inner = b"".join(draw(st.lists(unknown_fields(clean), max_size=2)))
        closing = number if clean else draw(st.sampled_from([number, number, number + 1]))
        return tag + inner + varint(closing << 3 | 4)
    return tag  # an end-group tag, or wire type 6 or 7


texts = st.text(max_size=8).map(str.encode)


def strings(clean: bool) -> st.SearchStrategy[bytes]:
    return texts if clean else texts | st.binary(max_size=8)


@st.composite
def tag_messages(draw: st.DrawFn, clean: bool) -> bytes:
    parts = [draw(strings(clean).flatmap(lambda s: length_delimited(1, s, clean)))]  # the key
    others = strings(clean).flatmap(lambda s: length_delimited(2, s, clean))
    parts += draw(st.lists(others | unknown_fields(clean), max_size=2))
    if not clean and draw(st.booleans()):
        parts.pop(0)  # no key
    return b"".join(draw(st.permutations(parts)))


@st.composite
def user_record_messages(draw: st.DrawFn, clean: bool) -> bytes:
    # clean messages have 3 partition keys and 2 hash keys: index 3 or 2 is out of range
    indices = st.integers(0, 3) | st.sampled_from(TRUNCATED)
    key_index = varint(draw(indices)) if clean else draw(indices.map(varint) | varints(False))
    parts = [
        b"\x08" + key_index,
        draw(st.binary(max_size=20).flatmap(lambda data: length_delimited(3, data, clean))),
    ]
    optional = st.one_of(
        (st.integers(0, 2) | st.sampled_from(TRUNCATED)).map(lambda i: b"\x10" + varint(i)),
        st.binary(max_size=20).flatmap(lambda data: length_delimited(3, data, clean)),
        tag_messages(clean).flatmap(lambda tag: length_delimited(4, tag, clean)),
        unknown_fields(clean),
    )
    parts += draw(st.lists(optional, max_size=3))
    if not clean:
        parts += draw(st.lists(st.binary(min_size=1, max_size=3), max_size=1))  # garbage
        del parts[: draw(st.integers(0, 1))]  # sometimes no key index
    body = b"".join(draw(st.permutations(parts)))
    return draw(length_delimited(3, body, clean))


@st.composite
def aggregate_messages(draw: st.DrawFn) -> bytes:
    clean = draw(st.booleans())
    if clean:
        parts = [
            draw(length_delimited(1, key, True))
            for key in draw(st.lists(texts, min_size=3, max_size=3))
        ]
        parts += [
            draw(length_delimited(2, key, True))
            for key in draw(st.lists(texts, min_size=2, max_size=2))
        ]
    else:
        tables = strings(False).flatmap(
            lambda s: length_delimited(draw(st.integers(1, 2)), s, False)
        )
        parts = draw(st.lists(tables, max_size=5))
    parts += draw(st.lists(user_record_messages(clean), min_size=1, max_size=5))
    parts += draw(st.lists(unknown_fields(clean), max_size=2))
    # tables before records, as producers write them, or anywhere
    if not clean or draw(st.booleans()):
        parts = draw(st.permutations(parts))
    message = b"".join(parts)
    if not clean and message and draw(st.booleans()):  # one byte changed
        at = draw(st.integers(0, len(message) - 1))
        message = message[:at] + bytes([draw(st.integers(0, 255))]) + message[at + 1 :]
    return message


def verdict(parse: Callable[[bytes], list[UserRecord]], blob: bytes) -> object:
    try:
        return parse(blob)
    except DeaggregationError:
        return "DeaggregationError"


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(aggregate_messages())
def test_hand_parser_agrees_with_protobuf_on_generated_messages(message: bytes) -> None:
    """Same records or both errors, against protobuf's parser (upb) with the same semantic
    checks (required fields, UTF-8 keys, indices in range, at least one user record)."""
    blob = wrap(message)
    assert verdict(deaggregate, blob) == verdict(protobuf_deaggregate, blob)


# --- identifiers ----------------------------------------------------------------------------------


@given(st.integers(0, 10**56).map(str), st.none() | st.integers(0, 10**6))
def test_user_record_ids_parse_back(sequence: str, sub: int | None) -> None:
    assert parse_item_identifier(user_record_id(sequence, sub)) == (sequence, sub)


@pytest.mark.parametrize("identifier", ["", ":1", "49:", "49:x", "49:1:2", "49:-1", "49:\u0661"])
def test_malformed_item_identifiers_are_rejected(identifier: str) -> None:
    with pytest.raises(ValueError, match="itemIdentifier"):
        parse_item_identifier(identifier)


# --- a page of records ----------------------------------------------------------------------------


def test_expand_all_keeps_page_order_and_lists_the_aggregates_left_whole() -> None:
    _, first = aggregate([("k1", b"a", None), ("k2", b"b", None)])
    _, second = aggregate([("k3", b"c", None)])
    bad = corruptions()["bad MD5 trailer"]
    page = [
        kinesis_record(b"plain-0", "100"),
        kinesis_record(first, "101"),
        kinesis_record(bad, "102"),
        kinesis_record(second, "103"),
        kinesis_record(b"plain-1", "104"),
    ]
    pairs, errors = expand_all(page)
    assert [(r.sequence_number, sub, r.data) for r, sub in pairs] == [
        ("100", None, b"plain-0"),
        ("101", 0, b"a"),
        ("101", 1, b"b"),
        ("102", None, bad),
        ("103", 0, b"c"),
        ("104", None, b"plain-1"),
    ]
    assert pairs[3][0] is page[2]
    assert [(record.sequence_number, type(error)) for record, error in errors] == [
        ("102", DeaggregationError)
    ]


# --- through a real Kinesis API ---------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.timeout(90)
@pytest.mark.parametrize("fast_parse", [True, False])
async def test_aggregates_and_plain_records_through_moto(moto: str, fast_parse: bool) -> None:
    """aws-kinesis-agg aggregates mixed with plain records in a 2-shard moto stream, read back
    with KinesisSource and expanded: every user record once, in order, with its key; plain
    records unchanged."""
    name = f"kpl-{int(time.time() * 1000)}"
    puts: list[tuple[str, bytes]] = []
    # what each put becomes: (partition key, data, sub-sequence number or None) per user record
    want: list[list[tuple[str, bytes, int | None]]] = []
    for number in range(30):
        if number % 3 == 2:
            data = b"plain-%d" % number
            puts.append((f"plain-{number % 4}", data))
            want.append([(f"plain-{number % 4}", data, None)])
            continue
        users: list[UserInput] = [
            (f"user-{(number + i) % 5}", b"%d/%d " % (number, i) * (i % 4), None)
            for i in range(1 + number % 9)
        ]
        outer_key, blob = aggregate(users)
        puts.append((outer_key, blob))
        want.append([(key, data, sub) for sub, (key, data, _) in enumerate(users)])

    async with kinesis_client(moto) as client:
        arn = await create_stream(client, name, 2)
        written = await put_records(client, name, puts)

    expected_by_shard: dict[str, list[tuple[str, str, bytes, int | None]]] = {}
    for put, users_of_put in zip(written, want, strict=True):
        expected_by_shard.setdefault(put.shard_id, []).extend(
            (put.sequence_number, key, data, sub) for key, data, sub in users_of_put
        )
    plain_sent = {
        (put.shard_id, put.sequence_number): put for put in written if not is_aggregate(put.data)
    }
    assert len(expected_by_shard) == 2, "the test wants records in both shards"

    got_by_shard: dict[str, list[tuple[str, str, bytes, int | None]]] = {}
    async with KinesisSource(endpoint_url=moto, region=REGION, fast_parse=fast_parse) as source:
        for shard in await source.list_shards(arn):
            want_count = sum(put.shard_id == shard.shard_id for put in written)
            position = IteratorPosition("TRIM_HORIZON")
            iterator = await source.get_shard_iterator(arn, shard.shard_id, position)
            got: list[tuple[str, str, bytes, int | None]] = []
            kinesis_records = 0
            deadline = time.monotonic() + 30
            for _ in range(100):  # bounded: pages until every put of this shard is read
                page = await source.get_records(arn, iterator, 10_000)
                kinesis_records += len(page.records)
                pairs, errors = expand_all(page.records)
                assert errors == []
                for record, sub in pairs:
                    got.append((record.sequence_number, record.partition_key, record.data, sub))
                    if sub is None:  # a plain record is the very record read, unchanged
                        sent = plain_sent[shard.shard_id, record.sequence_number]
                        assert (record.partition_key, record.data) == (
                            sent.partition_key,
                            sent.data,
                        )
                assert page.next_iterator is not None
                iterator = page.next_iterator
                if kinesis_records >= want_count or time.monotonic() > deadline:
                    break
            extra = await source.get_records(arn, iterator, 10_000)
            assert extra.records == []
            got_by_shard[shard.shard_id] = got

    assert got_by_shard == expected_by_shard
    every_user_record = [
        (shard_id, seq, sub) for shard_id, got in got_by_shard.items() for seq, _, _, sub in got
    ]
    assert len(every_user_record) == len(set(every_user_record)) == sum(map(len, want))
