"""An in-memory stream for unit tests of policy and for pipeline benchmarks.

It implements the same StreamSource protocol as the real reader, including closed shards that
end with ``next_iterator=None`` and ChildShards, so policy code runs unchanged on it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from .._errors import ExpiredIteratorError, StreamNotFoundError
from ..events._record import Record
from ._protocol import ChildShard, GetRecordsResult, IteratorPosition, ShardInfo

__all__ = ["MemoryStream"]

_SEQ_BASE = 10**20


@dataclass(slots=True)
class _Shard:
    info: ShardInfo
    records: list[Record] = field(default_factory=list)
    closed: bool = False
    children: list[ChildShard] = field(default_factory=list)


class MemoryStream:
    """A Kinesis stream held in memory. ``put`` routes by the MD5 of the partition key."""

    def __init__(self, stream_arn: str, shard_count: int = 1) -> None:
        self.stream_arn = stream_arn
        self._shards: dict[str, _Shard] = {}
        self._open: list[str] = []
        self._next_shard = 0
        self.get_records_calls = 0
        for _ in range(shard_count):
            self._open.append(self._new_shard().info.shard_id)

    def _new_shard(self, parents: tuple[str, ...] = ()) -> _Shard:
        shard_id = f"shardId-{self._next_shard:012d}"
        self._next_shard += 1
        info = ShardInfo(
            shard_id,
            parent_shard_id=parents[0] if parents else None,
            adjacent_parent_shard_id=parents[1] if len(parents) > 1 else None,
        )
        shard = _Shard(info)
        self._shards[shard_id] = shard
        return shard

    @property
    def shard_ids(self) -> list[str]:
        return list(self._shards)

    def shard_for_key(self, partition_key: str) -> str:
        digest = int.from_bytes(hashlib.md5(partition_key.encode()).digest()[:8], "big")
        return self._open[digest % len(self._open)]

    def put(
        self,
        partition_key: str,
        data: bytes,
        *,
        shard_id: str | None = None,
        arrival: float | None = None,
    ) -> tuple[str, str]:
        shard = self._shards[shard_id or self.shard_for_key(partition_key)]
        if shard.closed:
            raise ValueError(f"{shard.info.shard_id} is closed")
        seq = str(_SEQ_BASE * (int(shard.info.shard_id[-12:]) + 1) + len(shard.records))
        ts = time.time() if arrival is None else arrival
        shard.records.append(Record.from_bytes(seq, partition_key, data, ts))
        return shard.info.shard_id, seq

    def put_records(self, shard_id: str, records: list[Record]) -> None:
        """Append prepared records to a shard as they are (for benchmarks)."""
        self._shards[shard_id].records.extend(records)

    def split(self, shard_id: str) -> tuple[str, str]:
        """Close ``shard_id`` and open two children; keys re-route over the open shards."""
        parent = self._shards[shard_id]
        parent.closed = True
        children = [self._new_shard((shard_id,)), self._new_shard((shard_id,))]
        parent.children = [ChildShard(c.info.shard_id, (shard_id,)) for c in children]
        index = self._open.index(shard_id)
        self._open[index : index + 1] = [c.info.shard_id for c in children]
        return children[0].info.shard_id, children[1].info.shard_id

    def merge(self, shard_id: str, adjacent_shard_id: str) -> str:
        child = self._new_shard((shard_id, adjacent_shard_id))
        for parent_id in (shard_id, adjacent_shard_id):
            parent = self._shards[parent_id]
            parent.closed = True
            parent.children = [ChildShard(child.info.shard_id, (shard_id, adjacent_shard_id))]
            self._open.remove(parent_id)
        self._open.append(child.info.shard_id)
        return child.info.shard_id

    # StreamSource

    async def list_shards(self, stream_arn: str) -> list[ShardInfo]:
        self._check(stream_arn)
        result = []
        for shard in self._shards.values():
            end = shard.records[-1].sequence_number if shard.records else "0"
            result.append(
                ShardInfo(
                    shard.info.shard_id,
                    shard.info.parent_shard_id,
                    shard.info.adjacent_parent_shard_id,
                    ending_sequence_number=end if shard.closed else None,
                )
            )
        return result

    async def get_shard_iterator(
        self, stream_arn: str, shard_id: str, position: IteratorPosition
    ) -> str:
        self._check(stream_arn)
        shard = self._shards.get(shard_id)
        if shard is None:
            raise StreamNotFoundError(f"shard {shard_id} not found")
        records = shard.records
        if position.type == "TRIM_HORIZON":
            offset = 0
        elif position.type == "LATEST":
            offset = len(records)
        elif position.type == "AT_TIMESTAMP":
            ts = position.timestamp or 0.0
            offset = next(
                (i for i, r in enumerate(records) if r.approximate_arrival_timestamp >= ts),
                len(records),
            )
        else:
            target = int(position.sequence_number or 0)
            after = position.type == "AFTER_SEQUENCE_NUMBER"
            offset = next(
                (
                    i
                    for i, r in enumerate(records)
                    if (r.sequence_int > target if after else r.sequence_int >= target)
                ),
                len(records),
            )
        return f"{shard_id}|{offset}|{time.monotonic()}"

    async def get_records(self, stream_arn: str, iterator: str, limit: int) -> GetRecordsResult:
        self.get_records_calls += 1
        shard_id, offset_text, issued = iterator.split("|")
        if time.monotonic() - float(issued) > 300:
            raise ExpiredIteratorError("iterator expired")
        shard = self._shards[shard_id]
        offset = int(offset_text)
        records = shard.records[offset : offset + limit]
        end = offset + len(records)
        if shard.closed and end >= len(shard.records):
            return GetRecordsResult(records, None, 0, list(shard.children))
        behind = 0 if end >= len(shard.records) else 1000
        return GetRecordsResult(records, f"{shard_id}|{end}|{time.monotonic()}", behind)

    async def aclose(self) -> None:
        return None

    def _check(self, stream_arn: str) -> None:
        if stream_arn != self.stream_arn:
            raise StreamNotFoundError(f"Stream not found: {stream_arn}")
