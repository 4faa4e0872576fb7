"""Checkpoints in a dict: for tests and benchmarks; nothing survives the process."""

from __future__ import annotations

__all__ = ["MemoryCheckpointStore"]


class MemoryCheckpointStore:
    def __init__(self) -> None:
        self.checkpoints: dict[str, dict[str, str]] = {}
        self.window_states: dict[str, dict[str, bytes]] = {}
        self.started_at: dict[str, float] = {}
        self.writes = 0

    async def get_checkpoints(self, mapping_uuid: str) -> dict[str, str]:
        return dict(self.checkpoints.get(mapping_uuid, {}))

    async def set_checkpoint(self, mapping_uuid: str, shard_id: str, checkpoint: str) -> None:
        self.writes += 1
        self.checkpoints.setdefault(mapping_uuid, {})[shard_id] = checkpoint
        if self.window_states:
            self.window_states.get(mapping_uuid, {}).pop(shard_id, None)

    async def set_window_checkpoint(
        self, mapping_uuid: str, shard_id: str, checkpoint: str, window_state: bytes
    ) -> None:
        self.writes += 1
        self.checkpoints.setdefault(mapping_uuid, {})[shard_id] = checkpoint
        self.window_states.setdefault(mapping_uuid, {})[shard_id] = bytes(window_state)

    async def get_window_state(self, mapping_uuid: str, shard_id: str) -> bytes | None:
        return self.window_states.get(mapping_uuid, {}).get(shard_id)

    async def get_started_at(self, mapping_uuid: str) -> float | None:
        return self.started_at.get(mapping_uuid)

    async def set_started_at(self, mapping_uuid: str, started_at: float) -> None:
        self.started_at[mapping_uuid] = started_at

    async def delete_mapping(self, mapping_uuid: str) -> None:
        self.checkpoints.pop(mapping_uuid, None)
        self.window_states.pop(mapping_uuid, None)
        self.started_at.pop(mapping_uuid, None)

    async def aclose(self) -> None:
        return None
