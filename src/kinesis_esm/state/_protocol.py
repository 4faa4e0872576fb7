"""Where checkpoints live. A checkpoint is a sequence number ("resume after it") or SHARD_END."""

from __future__ import annotations

from typing import Protocol

__all__ = ["SHARD_END", "CheckpointStore"]

SHARD_END = "SHARD_END"


class CheckpointStore(Protocol):
    async def get_checkpoints(self, mapping_uuid: str) -> dict[str, str]: ...

    async def set_checkpoint(self, mapping_uuid: str, shard_id: str, checkpoint: str) -> None: ...

    async def get_started_at(self, mapping_uuid: str) -> float | None:
        """When the mapping first started (for LATEST after a restart)."""
        ...

    async def set_started_at(self, mapping_uuid: str, started_at: float) -> None: ...

    async def delete_mapping(self, mapping_uuid: str) -> None: ...

    async def aclose(self) -> None: ...
