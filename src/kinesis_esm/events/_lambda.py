"""Lambda's Kinesis event, built per batch, and the context object handlers receive."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ._record import Record

__all__ = ["EventSource", "LambdaContext", "build_event", "event_record_overhead"]

# Lambda's synchronous invocation payload limit: a batch's serialized event stays within it.
MAX_EVENT_BYTES = 6 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class EventSource:
    """The per-shard constants every event record of a batch repeats."""

    stream_arn: str
    shard_id: str
    region: str
    invoke_identity_arn: str


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
        if r.encryption_type is not None:
            kinesis["encryptionType"] = r.encryption_type
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
    return {"Records": out}


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


class LambdaContext:
    """What Lambda handlers read from ``context``."""

    __slots__ = (
        "_deadline",
        "aws_request_id",
        "client_context",
        "function_name",
        "function_version",
        "identity",
        "invoked_function_arn",
        "log_group_name",
        "log_stream_name",
        "memory_limit_in_mb",
    )

    def __init__(
        self,
        function_name: str,
        invoked_function_arn: str,
        memory_limit_in_mb: int,
        timeout: float,
        aws_request_id: str | None = None,
    ) -> None:
        self.aws_request_id = aws_request_id or str(uuid.uuid4())
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = invoked_function_arn
        # a string, as in Lambda's Python runtime (it reads an environment variable)
        self.memory_limit_in_mb = str(memory_limit_in_mb)
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "kinesis-esm"
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def __repr__(self) -> str:
        return f"LambdaContext(function_name={self.function_name!r}, request={self.aws_request_id})"
