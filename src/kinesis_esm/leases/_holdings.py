"""The leases one worker holds, and every fenced write on them.

A held lease is valid for hold_time = failover_time * (1 - hold_margin) after the *start* of
its last successful renewal. Another worker may take it only after seeing its counter
unchanged for failover_time on its own clock, from an observation made after that renewal
landed, so the two never both believe they hold it (given clocks that tick at the same rate).

Writes on one lease hold its lock, so a renewal and a checkpoint never race on the counter
(KCL's "counter off by one between renewer and checkpointer"). A write whose answer was lost
but which landed shows up as a conflict with owner = us and counter = seen + 1: that is
adopted, as nobody else can produce it (a take by another worker then a hand-off back to us
bumps the counter twice).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import anyio

from ._contract import CheckpointOutcome, CoordinatorSettings, LeaseConsumer
from ._model import Checkpoint, Conflict, Lease, LeaseLoad
from ._store import LeaseStore, LeaseStoreError

__all__ = ["Holdings"]

log = logging.getLogger("kinesis_esm.leases")


@dataclass(eq=False)
class _Held:
    lease: Lease
    valid_until: float
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    checkpoint: Checkpoint | None = None  # the consumer's latest, written or not
    load: LeaseLoad | None = None
    closing: Literal["handoff", "finish"] | None = None  # releasing: holds() is False
    release_to: str | None = None


class Holdings:
    def __init__(
        self,
        store: LeaseStore,
        worker_id: str,
        consumer: LeaseConsumer,
        settings: CoordinatorSettings,
        clock: Callable[[], float],
        counts: Counter[str],
    ) -> None:
        self.worker_id = worker_id
        self.live: frozenset[str] = frozenset({worker_id})  # the coordinator's latest view
        self.due: dict[str, str] = {}  # hand-off requests that renewals found: shard -> target
        self._store = store
        self._consumer = consumer
        self._settings = settings
        self._clock = clock
        self._counts = counts
        self._held: dict[str, _Held] = {}
        self._handing_off: set[str] = set()
        self._limiter = anyio.CapacityLimiter(settings.max_concurrent_writes)
        self._emptied: anyio.Event | None = None

    def __contains__(self, shard_id: str) -> bool:
        return shard_id in self._held

    def __len__(self) -> int:
        return len(self._held)

    def shards(self) -> list[str]:
        return list(self._held)

    # Reads may come from another thread (`ThreadedCoordinator`): they copy first, in one step.

    def active(self) -> int:
        return sum(1 for held in tuple(self._held.values()) if held.closing is None)

    def lease(self, shard_id: str) -> Lease:
        return self._held[shard_id].lease

    def leases(self) -> dict[str, Lease]:
        return {shard: held.lease for shard, held in tuple(self._held.items())}

    def holds(self, shard_id: str) -> bool:
        held = self._held.get(shard_id)
        return held is not None and held.closing is None and self._clock() < held.valid_until

    def report_load(self, shard_id: str, load: LeaseLoad) -> None:
        held = self._held.get(shard_id)
        if held is not None:
            held.load = load

    async def wait_empty(self) -> None:
        if self._held:
            self._emptied = anyio.Event()
            await self._emptied.wait()

    def defer(self, shard_id: str, checkpoint: Checkpoint) -> bool:
        """Record a checkpoint for the next renewal, with no I/O and no await (safe from
        another thread); False when it needs more: a SHARD_END to write, or a lease gone or
        overdue, which `checkpoint` reports."""
        held = self._held.get(shard_id)
        if held is None or checkpoint.shard_end or self._clock() >= held.valid_until:
            return False
        held.checkpoint = checkpoint
        return True

    async def checkpoint(
        self, shard_id: str, checkpoint: Checkpoint, *, force: bool
    ) -> CheckpointOutcome:
        if not force and self.defer(shard_id, checkpoint):
            return CheckpointOutcome.DEFERRED
        held = self._held.get(shard_id)
        if held is None:
            return CheckpointOutcome.LOST
        if self._clock() >= held.valid_until:
            self._lose(held, "its renewal is overdue")
            return CheckpointOutcome.LOST
        held.checkpoint = checkpoint
        if not (force or checkpoint.shard_end):
            return CheckpointOutcome.DEFERRED
        async with held.lock:
            if self._held.get(shard_id) is not held:
                return CheckpointOutcome.LOST
            outcome = await self._write(held)
            if outcome is CheckpointOutcome.WRITTEN and held.lease.finished:
                held.closing = "finish"
                await self._release(held)
        return outcome

    async def renew(self, shard_id: str) -> None:
        """Renew (carrying the checkpoint and load), or retry a release that failed."""
        held = self._held.get(shard_id)
        if held is None:
            return
        async with held.lock:
            if self._held.get(shard_id) is not held:
                return
            if held.closing is not None:
                await self._release(held)
                return
            outcome = await self._write(held)
            if outcome is CheckpointOutcome.WRITTEN and held.lease.finished:
                held.closing = "finish"
                await self._release(held)

    async def take(self, lease: Lease, *, requested: bool) -> bool:
        """Take `lease` (counter still as read); the consumer hears of it on success."""
        if lease.shard_id in self._held:
            return False
        started = self._clock()
        try:
            async with self._limiter:
                result = await self._store.take(lease, self.worker_id)
        except LeaseStoreError as error:
            self._counts["read_failures"] += 1
            log.warning("worker %s: taking %s failed: %s", self.worker_id, lease.shard_id, error)
            return False
        if isinstance(result, Conflict) or lease.shard_id in self._held:
            return False
        if requested:
            kind = "received"
        else:
            kind = "taken" if lease.owner in (None, self.worker_id) else "stolen"
        self._counts[kind] += 1
        self._held[lease.shard_id] = _Held(result, started + self._settings.hold_time)
        self._consumer.on_lease_gained(result)
        return True

    async def hand_off(self, shard_id: str, target: str | None) -> None:
        """Ask the consumer to stop (bounded), then release with its final checkpoint."""
        held = self._held.get(shard_id)
        if held is None or held.closing is not None or shard_id in self._handing_off:
            return
        self._handing_off.add(shard_id)
        try:
            stopped = False
            with anyio.move_on_after(self._settings.handoff_timeout):
                try:
                    await self._consumer.release_requested(shard_id)
                    stopped = True
                except Exception:
                    log.exception(
                        "worker %s: release_requested(%s) failed", self.worker_id, shard_id
                    )
            if self._held.get(shard_id) is not held:
                return  # lost meanwhile; the consumer was told
            if not stopped:
                log.warning("worker %s: %s did not stop in time", self.worker_id, shard_id)
                self._consumer.on_lease_lost(shard_id)
            held.closing, held.release_to = "handoff", target
            async with held.lock:
                if self._held.get(shard_id) is held:
                    await self._release(held)
        finally:
            self._handing_off.discard(shard_id)

    def releasable(self) -> list[tuple[str, str | None]]:
        """Held leases not yet being released, with their requester (for a stop)."""
        return [
            (shard, held.lease.handoff_target)
            for shard, held in self._held.items()
            if held.closing is None and shard not in self._handing_off
        ]

    async def _write(self, held: _Held, *, adopt: bool = True) -> CheckpointOutcome:
        lease = held.lease
        checkpoint = held.checkpoint if held.checkpoint != lease.checkpoint else None
        started = self._clock()
        try:
            async with self._limiter:
                result = await self._store.renew(lease, checkpoint=checkpoint, load=held.load)
        except LeaseStoreError as error:
            self._counts["renewal_failures"] += 1
            if self._clock() >= held.valid_until:
                self._lose(held, f"it could not be renewed in time: {error}")
                return CheckpointOutcome.LOST
            log.warning("worker %s: renewing %s failed: %s", self.worker_id, lease.shard_id, error)
            return CheckpointOutcome.DEFERRED
        if isinstance(result, Conflict):
            now = result.current
            landed = now is not None and now.owner == self.worker_id
            if adopt and landed and now is not None and now.counter == lease.counter + 1:
                held.lease = now
                return await self._write(held, adopt=False)
            self._lose(held, "another worker took it" if now else "its row was deleted")
            return CheckpointOutcome.LOST
        held.lease = result
        held.valid_until = max(held.valid_until, started + self._settings.hold_time)
        target = result.handoff_target
        if target is not None and target != self.worker_id and held.closing is None:
            self.due[lease.shard_id] = target
        return CheckpointOutcome.WRITTEN

    async def _release(self, held: _Held) -> None:
        """Write the final checkpoint and give the lease up; the caller holds its lock."""
        lease = held.lease
        to = held.release_to if held.release_to in self.live - {self.worker_id} else None
        checkpoint = held.checkpoint if held.checkpoint != lease.checkpoint else None
        try:
            async with self._limiter:
                result = await self._store.release(lease, to=to, checkpoint=checkpoint)
        except LeaseStoreError as error:
            self._counts["renewal_failures"] += 1
            if self._clock() >= held.valid_until:  # it expires for the others on its own
                self._drop(held)
            log.warning("worker %s: releasing %s failed: %s", self.worker_id, lease.shard_id, error)
            return
        self._drop(held)
        if isinstance(result, Conflict):
            self._counts["lost"] += 1
            log.warning(
                "worker %s: %s was taken before its release", self.worker_id, lease.shard_id
            )
        else:
            self._counts["finished" if held.closing == "finish" else "handed_off"] += 1

    def _drop(self, held: _Held) -> None:
        shard = held.lease.shard_id
        if self._held.get(shard) is held:
            del self._held[shard]
        self.due.pop(shard, None)
        if not self._held and self._emptied is not None:
            self._emptied.set()

    def _lose(self, held: _Held, reason: str) -> None:
        if self._held.get(held.lease.shard_id) is not held:
            return
        self._drop(held)
        self._counts["lost"] += 1
        log.warning("worker %s: lease %s lost: %s", self.worker_id, held.lease.shard_id, reason)
        self._consumer.on_lease_lost(held.lease.shard_id)
