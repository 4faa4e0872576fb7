"""KPL de-aggregation: user records/s against plain records of the same size, on one core.

Aggregates are built with aws-kinesis-agg (a real producer library), as ``Record`` objects the
way ``KinesisSource`` makes them (base64 text, decoded on first use). Cases, per shape:

* ``plain``: ``expand_all()`` of a page of plain records of the user records' size (they pass
  through; ``plain, expand``: one ``expand()`` call each);
* ``expand_all``: ``expand_all()`` of a page of aggregates: what the pipeline pays per user
  record, base64 decoding of the aggregate, encoding of each user record and holding the
  page's records alive included;
* ``expand``: one ``expand()`` call per aggregate, and ``expand-protobuf``, the same output
  built on protobuf's parser (the candidate not chosen);
* ``deaggregate``: ``deaggregate()`` of the aggregates' bytes into UserRecords (hand parser);
* ``deaggregate-protobuf``: the same through ``protobuf`` (upb when installed), with the checks
  the hand parser makes: MD5, required fields, UTF-8 keys, indices in range.

Shapes: 100 user records of 100 bytes per aggregate, and 20 of 1 KiB (two-byte lengths).
Repetitions are interleaved, medians reported; rates are per CPU-second of this process.

``python -m benchmarks.kpl [--quick|--full]``; results go to benchmarks/results/kpl.json (.md).
Needs ``aws-kinesis-agg`` (the test extra), which brings ``protobuf``.
"""

from __future__ import annotations

import argparse
import base64
import functools
import gc
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kinesis_esm import Record
from kinesis_esm.source._kpl import (
    DeaggregationError,
    Expansion,
    UserRecord,
    deaggregate,
    expand,
    expand_all,
    is_aggregate,
)

from .harness import Meter, Report, Sample, consumer_cpu, median, pin_process

__all__ = ["main", "protobuf_deaggregate", "protobuf_expand"]

# user records per shape and per run, and repetitions
BUDGETS = {"quick": (40_000, 3), "default": (100_000, 5), "full": (500_000, 9)}


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    per_aggregate: int
    record_bytes: int


SHAPES = (Shape("100 x 100 B", 100, 100), Shape("20 x 1 KiB", 20, 1024))
KEYS = 10  # distinct partition keys per aggregate
PAGE = 100  # Kinesis records per expand_all() call (a GetRecords page holds up to 10,000)


@functools.cache
def _message_class() -> Any:
    """aws-kinesis-agg's generated AggregatedRecord (its module needs the aggregator first)."""
    from aws_kinesis_agg import aggregator

    return aggregator.messages_pb2.AggregatedRecord


def _protobuf_parse(data: bytes) -> tuple[Any, list[str], list[str]]:
    """The candidate not chosen: protobuf's parser, plus the checks the hand parser makes."""
    from google.protobuf.message import DecodeError

    if not is_aggregate(data):
        raise DeaggregationError("not a KPL aggregate")
    end = len(data) - 16
    body = memoryview(data)[4:end]
    if hashlib.md5(body).digest() != data[end:]:
        raise DeaggregationError("the MD5 trailer does not match")
    message = _message_class()()
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise DeaggregationError(f"protobuf: {exc}") from None
    if not message.IsInitialized():  # upb's parse does not check required fields
        raise DeaggregationError(f"missing required fields {message.FindInitializationErrors()}")
    if not message.records:
        raise DeaggregationError("the aggregate holds no user records")
    keys = list(message.partition_key_table)
    hash_keys = list(message.explicit_hash_key_table)
    if not all(type(k) is str for k in keys) or not all(type(k) is str for k in hash_keys):
        raise DeaggregationError("a key is not valid UTF-8")  # upb gives bytes back for those
    return message, keys, hash_keys


def protobuf_deaggregate(data: bytes) -> list[UserRecord]:
    """``deaggregate`` on protobuf (one pass over the parsed records; the fastest form found)."""
    message, keys, hash_keys = _protobuf_parse(data)
    key_count, hash_key_count = len(keys), len(hash_keys)
    out: list[UserRecord] = []
    for sub, record in enumerate(message.records):
        key_index = record.partition_key_index
        if key_index >= key_count:
            raise DeaggregationError("a partition key index is outside its table")
        hash_key = None
        if record.HasField("explicit_hash_key_index"):
            if record.explicit_hash_key_index >= hash_key_count:
                raise DeaggregationError("an explicit hash key index is outside its table")
            hash_key = hash_keys[record.explicit_hash_key_index]
        out.append(UserRecord(keys[key_index], hash_key, record.data, sub))
    return out


def protobuf_expand(record: Record) -> Expansion:
    """``expand`` on protobuf: the same Records and pairs."""
    data = record.data
    if not is_aggregate(data):
        return Expansion(((record, None),), None)
    try:
        message, keys, hash_keys = _protobuf_parse(data)
        key_count, hash_key_count = len(keys), len(hash_keys)
        sequence, arrival = record.sequence_number, record.approximate_arrival_timestamp
        encryption = record.encryption_type
        users: list[tuple[Record, int | None]] = []
        for sub, user in enumerate(message.records):
            key_index = user.partition_key_index
            if key_index >= key_count or (
                user.HasField("explicit_hash_key_index")
                and user.explicit_hash_key_index >= hash_key_count
            ):
                raise DeaggregationError("a key index is outside its table")
            users.append(
                (Record.from_bytes(sequence, keys[key_index], user.data, arrival, encryption), sub)
            )
    except DeaggregationError as error:
        return Expansion(((record, None),), error)
    return Expansion(users, None)


def build_aggregates(shape: Shape, user_records: int) -> list[bytes]:
    from aws_kinesis_agg.aggregator import RecordAggregator

    aggregates: list[bytes] = []
    for number in range(user_records // shape.per_aggregate):
        aggregator = RecordAggregator()
        for i in range(shape.per_aggregate):
            payload = (b"%08d" % (number * shape.per_aggregate + i)) * (shape.record_bytes // 8)
            payload = payload.ljust(shape.record_bytes, b".")
            aggregator.add_user_record(f"partition-key-{i % KEYS:04d}", payload)
        aggregate = aggregator.clear_and_get()
        if aggregate is None or aggregator.get_num_user_records() != 0:
            raise RuntimeError("aws-kinesis-agg did not pack the records into one aggregate")
        aggregates.append(aggregate.get_contents()[2])
    return aggregates


def as_records(blobs: list[bytes], base: int = 10**55) -> list[Record]:
    """Records as KinesisSource builds them: base64 text, the payload decoded on first use."""
    return [
        Record(str(base + i), "outer-key", base64.b64encode(blob).decode("ascii"), 1.7e9)
        for i, blob in enumerate(blobs)
    ]


def _time_expand(function: Callable[[Record], Expansion], records: list[Record]) -> Sample:
    fresh = [Record(r.sequence_number, r.partition_key, r.data_b64, 1.7e9) for r in records]
    meter = Meter()
    count = 0
    for record in fresh:
        count += len(function(record).records)
    return meter.stop(count)


def _time_expand_all(records: list[Record]) -> Sample:
    fresh = [Record(r.sequence_number, r.partition_key, r.data_b64, 1.7e9) for r in records]
    pages = [fresh[i : i + PAGE] for i in range(0, len(fresh), PAGE)]
    meter = Meter()
    count = 0
    for page in pages:
        pairs, errors = expand_all(page)
        if errors:
            raise RuntimeError(f"{len(errors)} aggregates failed: {errors[0][1]}")
        count += len(pairs)
    return meter.stop(count)


def _time_deaggregate(function: Callable[[bytes], list[UserRecord]], blobs: list[bytes]) -> Sample:
    meter = Meter()
    count = 0
    for blob in blobs:
        count += len(function(blob))
    return meter.stop(count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kpl", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="40k user records, 3 repetitions")
    size.add_argument("--full", action="store_true", help="500k user records, 9 repetitions")
    args = parser.parse_args(argv)
    budget = "quick" if args.quick else "full" if args.full else "default"
    count, repetitions = BUDGETS[budget]
    try:
        _message_class()
    except ImportError:
        print("benchmarks.kpl needs aws-kinesis-agg: pip install aws-kinesis-agg", file=sys.stderr)
        raise SystemExit(2) from None
    from google.protobuf.internal import api_implementation

    pinned = pin_process(0, consumer_cpu())
    cases: dict[str, Callable[[], Sample]] = {}
    for shape in SHAPES:
        blobs = build_aggregates(shape, count)
        aggregates = as_records(blobs)
        plain = as_records([b"p" * shape.record_bytes] * count)
        for blob, record in zip(blobs[:3], aggregates[:3], strict=False):  # same answers
            users = [(r.partition_key, r.data, sub) for r, sub in expand(record).records]
            if users != [
                (u.partition_key, u.data, u.sub_sequence_number) for u in deaggregate(blob)
            ]:
                raise RuntimeError("expand and deaggregate disagree")
            if deaggregate(blob) != protobuf_deaggregate(blob):
                raise RuntimeError("the two parsers disagree")
        part = functools.partial
        cases[f"{shape.name}: plain"] = part(_time_expand_all, plain)
        cases[f"{shape.name}: expand_all"] = part(_time_expand_all, aggregates)
        cases[f"{shape.name}: plain, expand"] = part(_time_expand, expand, plain)
        cases[f"{shape.name}: expand"] = part(_time_expand, expand, aggregates)
        cases[f"{shape.name}: expand-protobuf"] = part(_time_expand, protobuf_expand, aggregates)
        cases[f"{shape.name}: deaggregate"] = part(_time_deaggregate, deaggregate, blobs)
        cases[f"{shape.name}: deaggregate-protobuf"] = part(
            _time_deaggregate, protobuf_deaggregate, blobs
        )
    names = list(cases)
    gc.collect()
    gc.freeze()  # the inputs live through every run: keep the collector from rescanning them
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for repetition in range(repetitions):
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(cases[name]())
        print(f"repetition {repetition + 1}/{repetitions} done", file=sys.stderr)

    def rate(name: str) -> float:
        return median([s.records / s.cpu_seconds for s in samples[name] if s.cpu_seconds > 0])

    def us(name: str) -> float:
        return median([s.cpu_us_per_record for s in samples[name]])

    rates = {name: rate(name) for name in names}
    # each aggregate case against plain records of the same size through the same function
    baselines = {"expand_all": "plain", "expand": "plain, expand"}
    table = [["case", "records/CPU-s", "CPU us/record", "vs plain records", "protobuf / hand"]]
    for name in names:
        shape_name, _, case = name.partition(": ")
        baseline = baselines.get(case)
        hand = f"{shape_name}: {case.removesuffix('-protobuf')}"
        table.append(
            [
                name,
                f"{rates[name]:,.0f}",
                f"{us(name):.3f}",
                f"{rates[name] / rates[f'{shape_name}: {baseline}']:.3f}" if baseline else "",
                f"{rates[name] / rates[hand]:.3f}" if case.endswith("-protobuf") else "",
            ]
        )
    command = "python -m benchmarks.kpl" + {"quick": " --quick", "full": " --full"}.get(budget, "")
    report = Report(
        name="kpl",
        title="KPL de-aggregation: user records against plain records, one core",
        command=command,
        notes=[
            f"{count:,} user records per case and shape (aggregates by aws-kinesis-agg, "
            f"{KEYS} partition keys each); {repetitions} repetitions, interleaved; medians",
            f"plain: records of the user records' size; expand_all() takes pages of {PAGE} "
            f"records; protobuf backend: {api_implementation.Type()}; pinned to core "
            f"{consumer_cpu()}: {pinned}; inputs gc.freeze()-d",
            "records/CPU-s counts user records for the aggregate cases; expand includes "
            "building each user record's Record (base64 of its data), deaggregate its UserRecord",
            "expand_all keeps a page's user records alive, as the pipeline does, so the garbage "
            "collector's and the caches' cost of that live set is in it; expand() drops each "
            "aggregate's records before the next, which is what compares the two parsers",
        ],
        data={
            "settings": {"records": count, "repetitions": repetitions},
            "cpu_rates": rates,
            "cpu_us_per_record": {name: us(name) for name in names},
        },
        table=table,
    )
    paths = report.write()
    print(report.markdown())
    print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
