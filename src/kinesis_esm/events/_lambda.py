"""Lambda's Kinesis event, built per batch (the context object is the functions' concern)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ._record import Record

__all__ = ["EventSource", "build_event", "event_record_overhead"]

# Lambda's synchronous invocation payload limit: a batch's serialized event stays within it.
MAX_EVENT_BYTES = 6 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class EventSource:
    """The per-shard constants every event record of a batch repeats."""

    stream_arn: str
    shard_id: str
    region: str
    invoke_identity_arn: str
    user_records: bool = False  # deaggregate = true: records may be KPL user records


def build_event(source: EventSource, records: Sequence[Record]) -> dict[str, Any]:
    """Lambda's event for one batch: records in sequence order, all from one shard."""
    shard_prefix = source.shard_id + ":"
    region = source.region
    arn = source.stream_arn
    role = source.invoke_identity_arn
    out: list[dict[str, Any]] = []
    append = out.append
    for r in records:
        kinesis: dict[str, Any] = {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": r.partition_key,
            "sequenceNumber": r.sequence_number,
            "data": r.data_b64,
            "approximateArrivalTimestamp": round(r.approximate_arrival_timestamp, 3),
        }
        encryption = r.encryption_type
        if encryption is not None and encryption != "NONE":
            # Lambda's documented events carry encryptionType for KMS streams only (AWS's
            # sample of a KMS stream's event has it, every unencrypted sample lacks it), while
            # GetRecords may answer EncryptionType NONE for an unencrypted stream
            kinesis["encryptionType"] = encryption
        append(
            {
                "kinesis": kinesis,
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": shard_prefix + r.sequence_number,
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": role,
                "awsRegion": region,
                "eventSourceARN": arn,
            }
        )
    if source.user_records:  # a pass of its own: plain mappings pay nothing for it
        _mark_user_records(records, out)
    return {"Records": out}


def _mark_user_records(records: Sequence[Record], out: list[dict[str, Any]]) -> None:
    """A user record of a KPL aggregate is named by its sub-sequence number too, with
    aws-kinesis-agg's field names, so handlers written for its deaggregator still work."""
    for r, item in zip(records, out, strict=True):
        sub = r.sub_sequence_number
        if sub is not None:
            kinesis = item["kinesis"]
            kinesis["subSequenceNumber"] = sub
            if r.explicit_hash_key is not None:
                kinesis["explicitHashKey"] = r.explicit_hash_key
            item["eventID"] = f"{item['eventID']}:{sub}"


# What a user record of a KPL aggregate adds at most: its sub-sequence number (in the kinesis
# object and in eventID) and an explicit hash key (up to 39 digits).
USER_RECORD_OVERHEAD = (
    len(',"subSequenceNumber":') + 20 + 1 + 20 + len(',"explicitHashKey":""') + 39
)


def event_record_overhead(source: EventSource) -> int:
    """Bytes one record adds to the serialized event beyond its data, key and sequence number.

    Measured from the real serializer on an empty record, plus room for the widest timestamp
    and an encryption type, so the batcher's size estimate is an upper bound.
    """
    empty = Record("", "", "", 0.0)
    one = len(orjson.dumps(build_event(source, [empty])["Records"][0]))
    timestamp_room = len("9999999999.999") - len("0.0")
    return one + 1 + timestamp_room + len(',"encryptionType":"NONE"')  # NONE or KMS


def record_event_size(record: Record, overhead: int) -> int:
    """Upper bound of one record's share of the serialized event."""
    key = record.partition_key
    key_len = len(key) if key.isascii() and key.isprintable() else len(orjson.dumps(key)) - 2
    key_len += key.count('"') + key.count("\\")
    return overhead + len(record.data_b64) + 2 * len(record.sequence_number) + key_len
