"""StreamSource wrappers that inject faults at chosen calls: test seams for the poller's policy.

Each wrapper delegates to an inner source (usually a `MemoryStream`) and records what it was
asked, so a test can check *where* the consumer resumed, not only *that* it did:

- `RecordingSource`: logs every GetShardIterator position and every GetRecords call per shard;
- `ExpiringSource`: raises ExpiredIteratorError at chosen GetRecords calls (an idle shard whose
  iterator outlived five minutes, without waiting five minutes);
- `TrimmingSource`: models retention: records before a trim point are gone, and an iterator
  asked for inside the trimmed range raises TrimmedPositionError;
- `NeverEndingSource`: moto's closed shards, which never return a null NextShardIterator nor
  ChildShards; only ListShards' EndingSequenceNumber says they ended;
- `FailingShardSource`: one shard (or the whole stream) fails with a chosen error.

And the function side: `Deliveries`, a slow async handler that logs what it received, with the
checks the lifecycle tests share (parent-first, per-key order).
"""

from __future__ import annotations

import base64
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from kinesis_esm._errors import (
    ExpiredIteratorError,
    SourceError,
    ThrottledError,
    TrimmedPositionError,
)
from kinesis_esm.source import GetRecordsResult, IteratorPosition, ShardInfo, StreamSource

__all__ = [
    "Deliveries",
    "Delivery",
    "ExpiringSource",
    "FailingShardSource",
    "InjectingSource",
    "IteratorRequest",
    "NeverEndingSource",
    "RecordingSource",
    "TrimmingSource",
    "expired",
    "throttled",
]


@dataclass(frozen=True, slots=True)
class IteratorRequest:
    """One GetShardIterator call as the consumer made it."""

    shard_id: str
    position: IteratorPosition
    at: float  # time.monotonic()


@dataclass(slots=True)
class _ShardLog:
    get_records_times: list[float] = field(default_factory=list)
    last_sequence_returned: str | None = None


class RecordingSource:
    """Delegates to `inner`; records iterator requests and GetRecords calls per shard.

    Iterators are wrapped as ``"<shard id>#<inner iterator>"`` so every GetRecords call can be
    attributed to its shard whatever the inner iterators look like.
    """

    def __init__(self, inner: StreamSource) -> None:
        self.inner = inner
        self.iterator_requests: list[IteratorRequest] = []
        self.shards: defaultdict[str, _ShardLog] = defaultdict(_ShardLog)
        self.list_shards_calls = 0

    # hooks for subclasses

    async def _before_get_records(self, shard_id: str, call: int) -> None:
        """Runs before a GetRecords is forwarded; ``call`` counts this shard's calls from 1."""

    def _after_get_records(self, shard_id: str, result: GetRecordsResult) -> GetRecordsResult:
        return result

    # StreamSource

    async def list_shards(self, stream_arn: str) -> list[ShardInfo]:
        self.list_shards_calls += 1
        return await self.inner.list_shards(stream_arn)

    async def get_shard_iterator(
        self, stream_arn: str, shard_id: str, position: IteratorPosition
    ) -> str:
        self.iterator_requests.append(IteratorRequest(shard_id, position, time.monotonic()))
        iterator = await self.inner.get_shard_iterator(stream_arn, shard_id, position)
        return f"{shard_id}#{iterator}"

    async def get_records(self, stream_arn: str, iterator: str, limit: int) -> GetRecordsResult:
        shard_id, _, inner_iterator = iterator.partition("#")
        log = self.shards[shard_id]
        log.get_records_times.append(time.monotonic())
        await self._before_get_records(shard_id, len(log.get_records_times))
        result = await self.inner.get_records(stream_arn, inner_iterator, limit)
        result = self._after_get_records(shard_id, result)
        if result.records:
            log.last_sequence_returned = result.records[-1].sequence_number
        if result.next_iterator is not None:
            result.next_iterator = f"{shard_id}#{result.next_iterator}"
        return result

    async def aclose(self) -> None:
        await self.inner.aclose()

    # queries

    def positions(self, shard_id: str) -> list[IteratorPosition]:
        return [r.position for r in self.iterator_requests if r.shard_id == shard_id]

    def get_records_calls(self, shard_id: str) -> int:
        return len(self.shards[shard_id].get_records_times)


class InjectingSource(RecordingSource):
    """Raises ``inject(shard_id, call)`` at a GetRecords call when it returns an error.

    ``call`` counts the shard's GetRecords calls from 1, injected ones included. Each injection
    is logged in ``injected`` as (shard id, call, last sequence number handed to the consumer).
    """

    def __init__(
        self, inner: StreamSource, inject: Callable[[str, int], SourceError | None]
    ) -> None:
        super().__init__(inner)
        self._inject = inject
        self.injected: list[tuple[str, int, str | None]] = []

    async def _before_get_records(self, shard_id: str, call: int) -> None:
        error = self._inject(shard_id, call)
        if error is not None:
            self.injected.append((shard_id, call, self.shards[shard_id].last_sequence_returned))
            raise error


def expired() -> ExpiredIteratorError:
    return ExpiredIteratorError(
        "GetRecords: ExpiredIteratorException: Iterator expired (injected)",
        code="ExpiredIteratorException",
    )


def throttled() -> ThrottledError:
    return ThrottledError(
        "GetRecords: ProvisionedThroughputExceededException: Rate exceeded (injected)",
        code="ProvisionedThroughputExceededException",
    )


class ExpiringSource(InjectingSource):
    """Raises ExpiredIteratorError on the GetRecords calls ``expire(shard_id, call)`` picks."""

    def __init__(self, inner: StreamSource, expire: Callable[[str, int], bool]) -> None:
        super().__init__(inner, lambda shard, call: expired() if expire(shard, call) else None)


class TrimmingSource(RecordingSource):
    """Retention over an inner source whose sequence numbers are integers (MemoryStream).

    After ``trim(shard_id, first_kept)``, records below ``first_kept`` are gone: TRIM_HORIZON
    starts at ``first_kept``, GetRecords never returns older records, and an iterator asked for
    at or after a trimmed sequence number raises TrimmedPositionError, the way the source maps
    Kinesis's InvalidArgumentException for a position outside retention.
    """

    def __init__(self, inner: StreamSource) -> None:
        super().__init__(inner)
        self.first_kept: dict[str, int] = {}
        self.trimmed_errors = 0

    def trim(self, shard_id: str, first_kept: str) -> None:
        self.first_kept[shard_id] = int(first_kept)

    async def get_shard_iterator(
        self, stream_arn: str, shard_id: str, position: IteratorPosition
    ) -> str:
        first_kept = self.first_kept.get(shard_id)
        if first_kept is not None:
            if position.type == "TRIM_HORIZON":
                position = IteratorPosition("AT_SEQUENCE_NUMBER", sequence_number=str(first_kept))
            elif position.sequence_number is not None:
                target = int(position.sequence_number)
                # AFTER the record just below the horizon is still a valid position
                if target < first_kept - (position.type == "AFTER_SEQUENCE_NUMBER"):
                    self.iterator_requests.append(
                        IteratorRequest(shard_id, position, time.monotonic())
                    )
                    self.trimmed_errors += 1
                    raise TrimmedPositionError(
                        f"GetShardIterator: InvalidArgumentException: StartingSequenceNumber "
                        f"{position.sequence_number} is trimmed (injected; retention horizon "
                        f"{first_kept})",
                        code="InvalidArgumentException",
                    )
        return await super().get_shard_iterator(stream_arn, shard_id, position)

    def _after_get_records(self, shard_id: str, result: GetRecordsResult) -> GetRecordsResult:
        first_kept = self.first_kept.get(shard_id)
        if first_kept is not None:
            result.records = [r for r in result.records if r.sequence_int >= first_kept]
        return result


class NeverEndingSource(RecordingSource):
    """Closed shards never end, as on moto: no null NextShardIterator, no ChildShards.

    Reading a closed shard past its last record returns empty pages with a fresh iterator for
    ever. ListShards still reports the EndingSequenceNumber (the last record's number here).
    """

    def _after_get_records(self, shard_id: str, result: GetRecordsResult) -> GetRecordsResult:
        if result.next_iterator is None:
            last = result.records[-1].sequence_number if result.records else None
            result.child_shards = []
            result.millis_behind_latest = 0
            # keep the shard readable: an iterator after the last record, which stays empty
            result.next_iterator = f"{shard_id}|end|{last}"
        return result

    async def get_records(self, stream_arn: str, iterator: str, limit: int) -> GetRecordsResult:
        shard_id, _, inner_iterator = iterator.partition("#")
        if "|end|" in inner_iterator:
            self.shards[shard_id].get_records_times.append(time.monotonic())
            return GetRecordsResult([], f"{shard_id}#{inner_iterator}", 0, [])
        return await super().get_records(stream_arn, iterator, limit)


class FailingShardSource(RecordingSource):
    """Every call touching a failing shard raises ``error()``; ``fail_all`` fails every call."""

    def __init__(
        self,
        inner: StreamSource,
        error: Callable[[], SourceError],
        *,
        failing_shards: set[str] | None = None,
        fail_all: bool = False,
    ) -> None:
        super().__init__(inner)
        self._error = error
        self.failing_shards: set[str] = set(failing_shards or ())
        self.fail_all = fail_all
        self.failures = 0

    def _check(self, shard_id: str | None) -> None:
        if self.fail_all or (shard_id is not None and shard_id in self.failing_shards):
            self.failures += 1
            raise self._error()

    async def list_shards(self, stream_arn: str) -> list[ShardInfo]:
        self._check(None)
        return await super().list_shards(stream_arn)

    async def get_shard_iterator(
        self, stream_arn: str, shard_id: str, position: IteratorPosition
    ) -> str:
        self._check(shard_id)
        return await super().get_shard_iterator(stream_arn, shard_id, position)

    async def _before_get_records(self, shard_id: str, call: int) -> None:
        self._check(shard_id)


# The function side: a slow async handler that records every delivery in invocation order.


@dataclass(frozen=True, slots=True)
class Delivery:
    order: int  # position in the global delivery log
    shard_id: str
    sequence_number: str
    partition_key: str
    data: bytes


class Deliveries:
    """An async Lambda handler that logs each record it receives, in invocation order.

    ``delay()`` (seconds) is slept per invocation after logging, to make the function slow.
    """

    def __init__(self, delay: Callable[[Delivery], float] | None = None) -> None:
        self.log: list[Delivery] = []
        self._delay = delay
        self.invocations = 0

    async def __call__(self, event: dict[str, Any], context: object) -> None:
        self.invocations += 1
        first: Delivery | None = None
        for item in event["Records"]:
            shard_id, _, sequence = item["eventID"].rpartition(":")
            kinesis = item["kinesis"]
            delivery = Delivery(
                len(self.log),
                shard_id,
                sequence,
                kinesis["partitionKey"],
                base64.b64decode(kinesis["data"]),
            )
            self.log.append(delivery)
            first = first or delivery
        if self._delay is not None and first is not None:
            await anyio.sleep(self._delay(first))

    # queries

    def ids(self) -> set[tuple[str, str]]:
        """(shard id, sequence number) of every record delivered at least once."""
        return {(d.shard_id, d.sequence_number) for d in self.log}

    def count(self) -> int:
        return len(self.ids())

    def duplicates(self) -> int:
        return len(self.log) - len(self.ids())

    def by_shard(self) -> dict[str, list[Delivery]]:
        out: defaultdict[str, list[Delivery]] = defaultdict(list)
        for d in self.log:
            out[d.shard_id].append(d)
        return dict(out)

    def parent_first_violations(self, parents: dict[str, tuple[str, ...]]) -> list[str]:
        """Children delivered before one of their parents was completely delivered.

        ``parents`` maps a shard id to its parent shard ids (ListShards' lineage).
        """
        shards = self.by_shard()
        problems: list[str] = []
        for child, its_parents in parents.items():
            if child not in shards:
                continue
            first_child = min(d.order for d in shards[child])
            for parent in its_parents:
                if parent not in shards:
                    continue
                last_parent = max(d.order for d in shards[parent])
                if last_parent > first_child:
                    problems.append(
                        f"{child} delivered at #{first_child} before {parent} finished "
                        f"(#{last_parent})"
                    )
        return problems

    def key_order_violations(self, counter: Callable[[bytes], int]) -> list[str]:
        """Keys whose records were first delivered out of write order.

        ``counter(data)`` extracts the per-key write counter from a record's payload.
        """
        seen: dict[str, set[int]] = defaultdict(set)
        last: dict[str, int] = {}
        problems: list[str] = []
        for d in self.log:
            n = counter(d.data)
            if n in seen[d.partition_key]:
                continue  # a redelivery: order is judged on first deliveries
            seen[d.partition_key].add(n)
            previous = last.get(d.partition_key, -1)
            if n < previous:
                problems.append(f"key {d.partition_key}: #{n} delivered after #{previous}")
            last[d.partition_key] = max(previous, n)
        return problems
