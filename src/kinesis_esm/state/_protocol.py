"""Where checkpoints live. A checkpoint is a sequence number ("resume after it") or SHARD_END.

A shard with tumbling windows stores its window state with its checkpoint, in the same write
(``set_window_checkpoint``), so a restart resumes the window from exactly the state that the
checkpointed records produced. ``set_checkpoint`` stores a checkpoint without window state (and
forgets any the shard had).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["SHARD_END", "CheckpointStore"]

SHARD_END = "SHARD_END"


class CheckpointStore(Protocol):
    async def get_checkpoints(self, mapping_uuid: str) -> dict[str, str]: ...

    async def set_checkpoint(self, mapping_uuid: str, shard_id: str, checkpoint: str) -> None: ...

    async def set_window_checkpoint(
        self, mapping_uuid: str, shard_id: str, checkpoint: str, window_state: bytes
    ) -> None:
        """The checkpoint and the shard's tumbling-window state, in one write."""
        ...

    async def get_window_state(self, mapping_uuid: str, shard_id: str) -> bytes | None:
        """The window state stored with the shard's checkpoint, if any."""
        ...

    async def get_started_at(self, mapping_uuid: str) -> float | None:
        """When the mapping first started (for LATEST after a restart)."""
        ...

    async def set_started_at(self, mapping_uuid: str, started_at: float) -> None: ...

    async def delete_mapping(self, mapping_uuid: str) -> None: ...

    async def aclose(self) -> None: ...
