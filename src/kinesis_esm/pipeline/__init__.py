"""One shard's pipeline: the poll task, lanes keyed by partition key, batching, and the batch
processor that runs each batch under the failure policy. It sees the mapping around it only
through the small objects and Protocols in ``_ports``."""

from ._consumer import ShardConsumer
from ._ports import (
    BatchHandler,
    CheckpointCommitter,
    MappingIdentity,
    ShardHandle,
    StatusSink,
    StoreCommitter,
)
from ._processor import BatchProcessor
from ._settings import PollSettings, RetrySettings

__all__ = (
    "BatchHandler",
    "BatchProcessor",
    "CheckpointCommitter",
    "MappingIdentity",
    "PollSettings",
    "RetrySettings",
    "ShardConsumer",
    "ShardHandle",
    "StatusSink",
    "StoreCommitter",
)
