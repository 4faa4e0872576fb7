"""One GetRecords budget per shard, shared by every mapping of a process that reads the shard.

Kinesis allows five GetRecords per second per shard, for all its consumers together. Each
mapping's poller keeps its own calls ``min_interval`` apart; without a shared budget, thirty
mappings of one stream would make thirty times that and get the stream's legitimate consumers
throttled. A turn is reserved before the wait (the event loop is single-threaded, so no lock),
so waiting pollers are served in the order they asked.
"""

from __future__ import annotations

import time

import anyio

__all__ = ["ShardReadBudget"]


class ShardReadBudget:
    def __init__(self) -> None:
        self._next_turn: dict[tuple[str, str], float] = {}  # (stream, shard) -> monotonic time

    async def wait_turn(self, stream_arn: str, shard_id: str, min_interval: float) -> None:
        """Return when this shard may be read: at least ``min_interval`` after the last turn."""
        key = (stream_arn, shard_id)
        now = time.monotonic()
        turn = max(now, self._next_turn.get(key, 0.0))
        self._next_turn[key] = turn + min_interval
        if turn > now:
            await anyio.sleep(turn - now)
            # woken late: the next turn counts from now, so reads stay min_interval apart
            woke = time.monotonic()
            if woke > turn:
                self._next_turn[key] = max(self._next_turn[key], woke + min_interval)

    def forget(self, stream_arn: str, shard_id: str) -> None:
        """The shard is no longer read here (ended, or its lease moved)."""
        self._next_turn.pop((stream_arn, shard_id), None)
