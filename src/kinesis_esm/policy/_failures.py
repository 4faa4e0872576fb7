"""Lambda's failure policy for one Kinesis batch, as pure logic: no I/O, no clock, no awaiting.

The processor (``_processing``) drives a :class:`BatchPlan` with the outcome of each invocation
and does what it answers; the tests drive it directly. Choices, where AWS documents nothing
(docs/failure-handling.md has the long form):

* **Retries.** ``maximum_retry_attempts`` N counts *function failures* of a range of records
  after its first: the range is tried N + 1 times, then discarded with RetryAttemptsExhausted
  (N = -1: forever). A function failure is an error (exception, timeout, unserializable
  result), a malformed partial-batch response, or a valid one naming a failed record. An
  invocation that could not be made at all never reaches the plan, so it never counts.
* **Partial responses** (``ReportBatchItemFailures``): every row of the reference's table.
  ``None``, ``""``, ``[]``, ``{}``, and an object whose ``batchItemFailures`` is missing, null or
  ``[]`` mean complete success. An item that is not an object, lacks ``itemIdentifier``, has an
  empty / null one, or names a record not in the batch makes the whole response invalid: a
  complete failure. Any other value that is not a JSON object (a non-empty string, a number, a
  non-empty list, ``batchItemFailures`` not a list) is invalid too. Valid identifiers cut the
  range just before the lowest one: the records before it are done, the rest is retried, and
  the retry count carries on. Identifiers are sequence numbers as strings; an integer is read as
  its decimal string (what a JSON deserializer into a string field does).
* **Bisect** (``bisect_batch_on_function_error``): a range of n > 1 records that fails as a
  whole (error or malformed response, not a valid partial response) is split at n // 2 into two
  ranges, first half first; the split does not count as a retry, and each half keeps the
  parent's count so far. Only a range that cannot be split (one record), or one shrunk by
  partial responses, spends retries; so a single poison record is isolated and discarded alone.
* **Record age** (``maximum_record_age_in_seconds``): before each invocation the leading run of
  records older than the limit (now - approximateArrivalTimestamp > limit) is cut off and
  discarded with RecordAgeExceeded; the fresh rest goes on with its counts.
* **approximateInvokeCount** is the number of invocations that carried the discarded records
  (carried through splits and cuts), at least 1: a record too old at first read reports 1, as
  recorded on AWS. With N retries and no bisect this is N + 1, as on AWS.
* **Reports** describe exactly the records discarded (``KinesisBatchInfo``), with the request id
  of the last invocation that carried them; ``responseContext`` is absent for RecordAgeExceeded
  and has ``functionError`` "Unhandled" (or "Handled") for errors and null for response-driven
  failures.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from ..events._record import Record

__all__ = [
    "RECORD_AGE_EXCEEDED",
    "RETRY_ATTEMPTS_EXHAUSTED",
    "BatchPlan",
    "Discard",
    "Pending",
    "ResponseVerdict",
    "Step",
    "expired_prefix",
    "failure_report",
    "iso_millis",
    "parse_batch_response",
    "s3_body",
    "s3_object_key",
]

RETRY_ATTEMPTS_EXHAUSTED = "RetryAttemptsExhausted"
RECORD_AGE_EXCEEDED = "RecordAgeExceeded"


# partial batch responses


@dataclass(frozen=True, slots=True)
class ResponseVerdict:
    """How a ReportBatchItemFailures response settles the records it answered for."""

    kind: Literal["success", "partial", "invalid"]
    failed_from: int = 0  # "partial": index of the lowest failed record
    reason: str = ""  # "invalid": why, for the log

    @property
    def ok(self) -> bool:
        return self.kind == "success"


SUCCESS = ResponseVerdict("success")


def _invalid(reason: str) -> ResponseVerdict:
    return ResponseVerdict("invalid", reason=reason)


def parse_batch_response(payload: Any, records: Sequence[Record]) -> ResponseVerdict:
    """Read a function's return value as a partial batch response for these records."""
    if payload is None or (isinstance(payload, str | list | dict) and not payload):
        return SUCCESS
    if not isinstance(payload, dict):
        return _invalid(f"the response is a {type(payload).__name__}, not an object")
    items = payload.get("batchItemFailures")
    if items is None or (isinstance(items, list) and not items):
        return SUCCESS
    if not isinstance(items, list):
        return _invalid(f"batchItemFailures is a {type(items).__name__}, not a list")
    position: dict[str, int] = {}  # only on failures
    for i, r in enumerate(records):
        # a plain sequence number names a plain record, or a whole aggregate from its first
        # user record; "<sequence>:<sub-sequence>" names one user record (deaggregate = true)
        position.setdefault(r.sequence_number, i)
        if r.sub_sequence_number is not None:
            position[r.record_id] = i
    lowest = len(records)
    for item in items:
        if not isinstance(item, dict) or "itemIdentifier" not in item:
            return _invalid(f"batch item failure {item!r} has no itemIdentifier")
        identifier = item["itemIdentifier"]
        if isinstance(identifier, int) and not isinstance(identifier, bool):
            identifier = str(identifier)
        if not identifier or not isinstance(identifier, str):
            return _invalid(f"itemIdentifier {identifier!r} is empty or not a string")
        index = position.get(identifier)
        if index is None:
            return _invalid(f"itemIdentifier {identifier!r} is not a record of this batch")
        lowest = min(lowest, index)
    return ResponseVerdict("partial", failed_from=lowest)


# record age


def expired_prefix(records: Sequence[Record], now: float, maximum_age: int) -> int:
    """How many leading records are older than ``maximum_age`` seconds (-1: none ever are)."""
    if maximum_age < 0:
        return 0
    oldest_allowed = now - maximum_age
    count = 0
    for record in records:
        if record.approximate_arrival_timestamp >= oldest_allowed:
            break
        count += 1
    return count


# the plan of one batch


@dataclass(slots=True)
class Pending:
    """A contiguous range ``[start, end)`` of the batch still to be processed."""

    start: int
    end: int
    errors: int = 0  # function failures counted against MaximumRetryAttempts
    invocations: int = 0  # invocations that carried every record of the range
    request_id: str | None = None  # of the last of them
    function_error: str | None = None  # of the last failure: "Unhandled", or None

    def __len__(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Discard:
    """Records ``[start, end)`` of the batch given up on, and what the report says of them."""

    start: int
    end: int
    condition: str  # RETRY_ATTEMPTS_EXHAUSTED | RECORD_AGE_EXCEEDED
    approximate_invoke_count: int
    request_id: str | None
    function_error: str | None

    def __len__(self) -> int:
        return self.end - self.start


Step = Literal["continue", "retry"]  # go on at once (after a split), or back off first


class BatchPlan:
    """Which records of one batch to invoke next, and what each outcome does to them.

    Ranges are processed strictly front first, so ``done`` (the records settled: succeeded,
    cut off by a partial response, or discarded) only grows: the lane's checkpoint follows it.
    """

    __slots__ = ("bisect", "maximum_retry_attempts", "ranges", "size")

    def __init__(self, size: int, *, maximum_retry_attempts: int = -1, bisect: bool = False):
        self.size = size
        self.maximum_retry_attempts = maximum_retry_attempts
        self.bisect = bisect
        self.ranges: deque[Pending] = deque([Pending(0, size)] if size else [])

    @property
    def current(self) -> Pending | None:
        return self.ranges[0] if self.ranges else None

    @property
    def done(self) -> int:
        """Records settled, from the front of the batch."""
        return self.ranges[0].start if self.ranges else self.size

    def _current(self) -> Pending:
        if not self.ranges:
            raise RuntimeError("the plan has nothing left to process")
        return self.ranges[0]

    def invoked(self, request_id: str) -> None:
        current = self._current()
        current.invocations += 1
        current.request_id = request_id

    def succeeded(self) -> None:
        self.ranges.popleft()

    def expire(self, count: int) -> Discard:
        """Cut the first ``count`` records of the current range off as too old."""
        current = self._current()
        if not 0 < count <= len(current):
            raise ValueError(f"cannot expire {count} of {len(current)} records")
        discard = Discard(
            current.start,
            current.start + count,
            RECORD_AGE_EXCEEDED,
            max(1, current.invocations),
            current.request_id,
            None,
        )
        current.start += count
        if not len(current):
            self.ranges.popleft()
        return discard

    def failed(
        self, *, completed: int = 0, function_error: str | None = None, whole: bool = True
    ) -> Step | Discard:
        """The last invocation of the current range failed.

        ``completed``: leading records a valid partial response settled. ``whole``: the range
        failed as a whole (an error or a malformed response), so it may be bisected.
        """
        current = self._current()
        if not 0 <= completed < len(current):
            raise ValueError(f"completed {completed} of {len(current)} records")
        current.function_error = function_error
        current.start += completed
        if whole and self.bisect and len(current) > 1:
            mid = current.start + len(current) // 2
            second = Pending(mid, current.end, current.errors, current.invocations)
            second.request_id, second.function_error = current.request_id, function_error
            current.end = mid
            self.ranges.insert(1, second)
            return "continue"
        current.errors += 1
        if 0 <= self.maximum_retry_attempts < current.errors:
            self.ranges.popleft()
            return Discard(
                current.start,
                current.end,
                RETRY_ATTEMPTS_EXHAUSTED,
                max(1, current.invocations),
                current.request_id,
                function_error,
            )
        return "retry"


# the on-failure destination record


def iso_millis(timestamp: float) -> str:
    """ISO-8601 UTC with milliseconds and Z, as Lambda writes its report timestamps."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def failure_report(
    discard: Discard,
    records: Sequence[Record],
    *,
    request_id: str,
    function_arn: str,
    shard_id: str,
    stream_arn: str,
    now: float,
) -> dict[str, Any]:
    """Lambda's on-failure record for the discarded ``records`` (the SQS body, SNS message)."""
    report: dict[str, Any] = {
        "requestContext": {
            "requestId": request_id,
            "functionArn": function_arn,
            "condition": discard.condition,
            "approximateInvokeCount": discard.approximate_invoke_count,
        },
    }
    if discard.condition != RECORD_AGE_EXCEEDED:
        report["responseContext"] = {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": discard.function_error,
        }
    report["version"] = "1.0"
    report["timestamp"] = iso_millis(now)
    report["KinesisBatchInfo"] = {
        "shardId": shard_id,
        "startSequenceNumber": records[0].sequence_number,
        "endSequenceNumber": records[-1].sequence_number,
        "approximateArrivalOfFirstRecord": iso_millis(records[0].approximate_arrival_timestamp),
        "approximateArrivalOfLastRecord": iso_millis(records[-1].approximate_arrival_timestamp),
        "batchSize": len(records),
        "streamArn": stream_arn,
    }
    return report


def s3_body(report: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """An S3 (or file) report: the record plus ``payload``, the invocation event as a string."""
    return {**report, "payload": orjson.dumps(event).decode()}


def s3_object_key(mapping_uuid: str, shard_id: str, now: float, unique: str) -> str:
    """``aws/lambda/<ESM-UUID>/<shardId>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<uuid>``."""
    moment = datetime.fromtimestamp(now, UTC)
    return (
        f"aws/lambda/{mapping_uuid}/{shard_id}/{moment:%Y/%m/%d}/"
        f"{moment:%Y-%m-%dT%H.%M.%S}-{unique}"
    )
