"""State stores: checkpoints (and later mappings and leases)."""

from ._memory import MemoryCheckpointStore
from ._protocol import SHARD_END, CheckpointStore
from ._sqlite import SQLiteCheckpointStore

__all__ = ("SHARD_END", "CheckpointStore", "MemoryCheckpointStore", "SQLiteCheckpointStore")
