"""The seam between polling policy and transport: what a shard reader must do."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..events._record import Record

__all__ = ["ChildShard", "GetRecordsResult", "IteratorPosition", "ShardInfo", "StreamSource"]

PositionType = Literal[
    "TRIM_HORIZON", "LATEST", "AT_TIMESTAMP", "AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"
]


@dataclass(frozen=True, slots=True)
class IteratorPosition:
    type: PositionType
    sequence_number: str | None = None
    timestamp: float | None = None

    @classmethod
    def after(cls, sequence_number: str) -> IteratorPosition:
        return cls("AFTER_SEQUENCE_NUMBER", sequence_number=sequence_number)

    def __str__(self) -> str:
        if self.sequence_number is not None:
            return f"{self.type} {self.sequence_number}"
        if self.timestamp is not None:
            return f"{self.type} {self.timestamp}"
        return self.type


@dataclass(frozen=True, slots=True)
class ShardInfo:
    shard_id: str
    parent_shard_id: str | None = None
    adjacent_parent_shard_id: str | None = None
    starting_sequence_number: str | None = None
    ending_sequence_number: str | None = None  # set once the shard is closed

    @property
    def parents(self) -> tuple[str, ...]:
        return tuple(p for p in (self.parent_shard_id, self.adjacent_parent_shard_id) if p)

    @property
    def is_closed(self) -> bool:
        return self.ending_sequence_number is not None


@dataclass(frozen=True, slots=True)
class ChildShard:
    shard_id: str
    parent_shards: tuple[str, ...]


@dataclass(slots=True)
class GetRecordsResult:
    records: list[Record]
    next_iterator: str | None  # None: the shard is closed and fully read
    millis_behind_latest: int | None = None
    child_shards: list[ChildShard] = field(default_factory=list)


class StreamSource(Protocol):
    """Reads one Kinesis stream. Implementations map transport errors to kinesis_esm errors."""

    async def list_shards(self, stream_arn: str) -> list[ShardInfo]: ...

    async def get_shard_iterator(
        self, stream_arn: str, shard_id: str, position: IteratorPosition
    ) -> str: ...

    async def get_records(self, stream_arn: str, iterator: str, limit: int) -> GetRecordsResult: ...

    async def aclose(self) -> None: ...
