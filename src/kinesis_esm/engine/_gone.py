"""Leases of shards that have left the stream, so that their children do not wait forever.

A closed parent shard past the stream's retention period disappears from ListShards; if its
lease was never finished (the fleet was away, or behind), nobody can read it to its end and
its children's leases never become eligible. `AbsentShards` counts, per unfinished lease, the
successful listings in a row that lacked its shard; after `RETIRE_AFTER_LISTINGS` the holder
finishes the lease (`FleetMappingRunner`). One listing is not enough: a short answer, or a
child announced by ChildShards before the listing shows it, must not finish a live lease. A
deleted stream fails the listing instead, so nothing is counted for it. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..leases import Lease

__all__ = ["RETIRE_AFTER_LISTINGS", "AbsentShards"]

RETIRE_AFTER_LISTINGS = 2


class AbsentShards:
    def __init__(self, after: int = RETIRE_AFTER_LISTINGS) -> None:
        if after < 2:
            raise ValueError(f"after must be at least 2 listings, got {after!r}")
        self.after = after
        self._missing: dict[str, int] = {}  # shard -> listings in a row without it

    def note(self, leases: Iterable[Lease], listed: Iterable[str]) -> None:
        """One successful listing (`listed`, never empty) against the table's leases."""
        shown = set(listed)
        if not shown:
            return  # no stream has no shards: an answer like this proves nothing
        missing = {lease.shard_id for lease in leases if not lease.finished} - shown
        self._missing = {shard: self._missing.get(shard, 0) + 1 for shard in missing}

    def gone(self, shard_id: str) -> bool:
        return self._missing.get(shard_id, 0) >= self.after

    def shards(self) -> list[str]:
        """The shards counted gone, in order."""
        return sorted(shard for shard, count in self._missing.items() if count >= self.after)
