"""Shard readers: the real Kinesis API and an in-memory stream."""

from ._kinesis import KinesisSource
from ._memory import MemoryStream
from ._protocol import ChildShard, GetRecordsResult, IteratorPosition, ShardInfo, StreamSource

__all__ = (
    "ChildShard",
    "GetRecordsResult",
    "IteratorPosition",
    "KinesisSource",
    "MemoryStream",
    "ShardInfo",
    "StreamSource",
)
