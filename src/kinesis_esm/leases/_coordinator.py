"""One worker's side of one mapping's leases: renew, take, hand off, and notice loss.

The consumer (the mapping runtime) implements `LeaseConsumer` and asks two things back:
`holds(shard_id)` at every batch boundary, and `checkpoint(...)`, which is fenced (conditional
on owner and counter) and batched: it rides on the next renewal, so store requests do not grow
with the record rate; SHARD_END and `force=True` are written at once.

`run()` drives the steps on timers; tests may drive them directly with a fake clock:
`heartbeat` and `renew_round` (every failover_time / 3: renew held leases with their checkpoints
and loads, retry failed releases, poll the leases this worker asked for), `take_round` (every
take interval: read the table, observe counters, apply the balancer's plan) and `handoff_round`
(answer hand-off requests that renewals found). `stop()` hands every lease off gracefully;
cancelling `run()` releases nothing (as a crash would), and the leases expire for the others.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ._balance import FleetView, plan
from ._contract import (
    CheckpointOutcome,
    CoordinatorSettings,
    LeaseConsumer,
    LeaseStatistics,
    parents_first,
)
from ._holdings import Holdings
from ._model import Checkpoint, FleetSnapshot, Lease, LeaseLoad, Observer
from ._store import LeaseStore, LeaseStoreError

__all__ = ["LeaseCoordinator"]

log = logging.getLogger("kinesis_esm.leases")

_REAP_AFTER_FAILOVERS = 6  # a worker row unchanged this many failover times is deleted


class LeaseCoordinator:
    """The leases of one mapping as one worker holds them."""

    def __init__(
        self,
        store: LeaseStore,
        mapping_uuid: str,
        worker_id: str,
        consumer: LeaseConsumer,
        settings: CoordinatorSettings | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not worker_id:
            raise ValueError("worker_id must be a non-empty string")
        self.mapping_uuid = mapping_uuid
        self.worker_id = worker_id
        self.settings = settings or CoordinatorSettings()
        self._store = store
        self._clock = clock or anyio.current_time
        self._counts: Counter[str] = Counter()
        self._held = Holdings(store, worker_id, consumer, self.settings, self._clock, self._counts)
        self._lease_seen: Observer[str] = Observer(self.settings.failover_time)
        self._worker_seen: Observer[str] = Observer(self.settings.failover_time)
        self._requested: dict[str, float] = {}  # shard -> when this worker asked for it
        self._registered_at: float | None = None
        self._snapshot: FleetSnapshot | None = None
        self._random = random.Random()
        self._stopping = False
        self._stop_event: anyio.Event | None = None
        self._stopped: anyio.Event | None = None

    # The consumer's side.

    def holds(self, shard_id: str) -> bool:
        """Whether this worker may still process the shard: ask at every batch boundary."""
        return self._held.holds(shard_id)

    def held_leases(self) -> dict[str, Lease]:
        return self._held.leases()

    def report_load(self, shard_id: str, load: LeaseLoad) -> None:
        """The shard's measured rates; published with the next renewal for the balancer."""
        self._held.report_load(shard_id, load)

    def defer_checkpoint(self, shard_id: str, checkpoint: Checkpoint) -> bool:
        """Record "resume after this" for the next renewal if that needs no write and no
        await (so another thread may call it); False: call `checkpoint` instead. A window
        state travels in `checkpoint.window_state`."""
        return self._held.defer(shard_id, checkpoint)

    async def checkpoint(
        self,
        shard_id: str,
        sequence: str,
        sub_sequence: int = 0,
        *,
        force: bool = False,
        window_state: bytes | None = None,
    ) -> CheckpointOutcome:
        """Record "resume after this record" (with the shard's tumbling-window state, if
        any, written in the same update). Fenced; batched unless `force` or SHARD_END.

        LOST means the shard must stop at once (on_lease_lost has been called too)."""
        checkpoint = Checkpoint(sequence, sub_sequence, window_state)
        return await self._held.checkpoint(shard_id, checkpoint, force=force)

    async def add_shards(
        self,
        shards: Mapping[str, Sequence[str]],
        checkpoints: Mapping[str, Checkpoint] | None = None,
    ) -> int:
        """Create leases for shards (id -> parent ids) that have none, parents first; an
        initial checkpoint may come from `checkpoints` (a migration from local state)."""
        known = {lease.shard_id for lease in self._snapshot.leases} if self._snapshot else set()
        created = 0
        for shard in parents_first(shards):
            if shard not in known:
                checkpoint = (checkpoints or {}).get(shard)
                parents = tuple(shards[shard])
                if await self._store.create_lease(self.mapping_uuid, shard, parents, checkpoint):
                    created += 1
        return created

    def statistics(self) -> LeaseStatistics:
        c = self._counts
        return LeaseStatistics(
            worker_id=self.worker_id,
            held=self._held.active(),
            taken=c["taken"],
            stolen=c["stolen"],
            received=c["received"],
            handed_off=c["handed_off"],
            finished=c["finished"],
            lost=c["lost"],
            renewal_failures=c["renewal_failures"],
            read_failures=c["read_failures"],
            live_workers=len(self._held.live),
            requests_pending=len(self._requested),
        )

    def snapshot(self) -> FleetSnapshot | None:
        """The table as the last take round read it (for `kinesis-esm status`)."""
        return self._snapshot

    def live_workers(self) -> frozenset[str]:
        """The workers the last take round counted live (this one always): a read only, so
        another thread may call it."""
        return self._held.live

    # Lifecycle.

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold leases until `stop()` (graceful hand-off) or cancellation (no release)."""
        if self._stop_event is not None:
            raise RuntimeError("LeaseCoordinator.run() can be called once")
        self._stop_event, self._stopped = anyio.Event(), anyio.Event()
        s = self.settings
        try:
            async with anyio.create_task_group() as group:
                renew_scope, take_scope = anyio.CancelScope(), anyio.CancelScope()
                await self._renew_tick(group)
                group.start_soon(self._repeat, renew_scope, s.renew_interval, self._renew_tick)
                group.start_soon(self._repeat, take_scope, s.take_every, self._take_tick, True)
                task_status.started()
                await self._stop_event.wait()
                take_scope.cancel()
                await self.release_all()
                with anyio.move_on_after(s.hold_time + s.renew_interval):
                    await self._held.wait_empty()  # the renew loop retries failed releases
                    # ... and passes on leases handed to us meanwhile (bounded by the scope)
                    while self._requested:  # noqa: ASYNC110
                        await anyio.sleep(s.renew_interval / 4)
                renew_scope.cancel()
                await self.deregister()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Hand every lease off (consumers finish and checkpoint), deregister, then return."""
        if self._stop_event is None or self._stopped is None:
            return
        self._stop_event.set()
        await self._stopped.wait()

    async def _repeat(
        self,
        scope: anyio.CancelScope,
        interval: float,
        step: Callable[[TaskGroup], Awaitable[None]],
        now: bool = False,
    ) -> None:
        with scope:
            async with anyio.create_task_group() as group:
                while True:
                    if now:
                        await step(group)
                    now = True
                    # Up to 20 % early, so that workers started together drift apart.
                    await anyio.sleep(interval * (1 - 0.2 * self._random.random()))

    async def _renew_tick(self, group: TaskGroup) -> None:
        await self.heartbeat()
        await self.renew_round()
        for shard, target in self._take_due():
            group.start_soon(self._held.hand_off, shard, target)

    async def _take_tick(self, group: TaskGroup) -> None:
        await self.take_round()

    # The steps.

    async def heartbeat(self) -> None:
        try:
            await self._store.heartbeat(self.mapping_uuid, self.worker_id)
        except LeaseStoreError as error:
            self._counts["read_failures"] += 1
            log.warning("worker %s: heartbeat failed: %s", self.worker_id, error)
            return
        if self._registered_at is None:
            self._registered_at = self._clock()

    async def renew_round(self) -> None:
        async with anyio.create_task_group() as group:
            for shard in self._held.shards():
                group.start_soon(self._held.renew, shard)
            for shard in list(self._requested):
                group.start_soon(self._poll_request, shard)

    async def handoff_round(self) -> None:
        async with anyio.create_task_group() as group:
            for shard, target in self._take_due():
                group.start_soon(self._held.hand_off, shard, target)

    async def release_all(self) -> None:
        """Hand off every held lease (to its requester, else to nobody); no takes after."""
        self._stopping = True
        self._held.due.clear()
        async with anyio.create_task_group() as group:
            for shard, target in self._held.releasable():
                group.start_soon(self._held.hand_off, shard, target)

    async def take_round(self) -> None:
        if self._stopping:
            return
        try:
            snapshot = await self._store.read_fleet(self.mapping_uuid)
        except LeaseStoreError as error:
            self._counts["read_failures"] += 1
            log.warning("worker %s: reading the lease table failed: %s", self.worker_id, error)
            return
        now = self._clock()
        self._snapshot = snapshot
        me = self.worker_id
        others = [lease for lease in snapshot.leases if lease.shard_id not in self._held]
        for lease in others:
            self._lease_seen.observe(lease.shard_id, (lease.owner, lease.counter), now)
        self._lease_seen.retain(lease.shard_id for lease in others)
        for worker in snapshot.workers:
            self._worker_seen.observe(worker.worker_id, worker.heartbeat, now)
        self._worker_seen.retain(worker.worker_id for worker in snapshot.workers)
        live = {
            w.worker_id for w in snapshot.workers if not self._worker_seen.expired(w.worker_id, now)
        }
        self._held.live = frozenset(live | {me})
        dead = [w for w in snapshot.workers if self._dead_for_long(w.worker_id, now)]
        # Ours but not held (an earlier life of this worker id, or dropped in an outage) is free.
        expired = frozenset(
            lease.shard_id
            for lease in others
            if lease.owner in (None, me) or self._lease_seen.expired(lease.shard_id, now)
        )
        rows = tuple(
            self._held.lease(lease.shard_id) if lease.shard_id in self._held else lease
            for lease in snapshot.leases
        )
        decision = plan(FleetView(me, self._held.live, rows, expired), self.settings.balance)
        by_shard = {lease.shard_id: lease for lease in rows}
        # A new worker asks for leases only once the others have had a round to see it.
        registered = self._registered_at
        warm = registered is not None and now - registered >= self.settings.take_every
        async with anyio.create_task_group() as group:
            for shard in decision.take:
                group.start_soon(self._take, by_shard[shard])
            for shard in decision.request_handoff if warm else ():
                group.start_soon(self._request, by_shard[shard], now)
            for worker in dead:
                group.start_soon(self._reap, worker.worker_id, worker.heartbeat)

    # Internals.

    def _take_due(self) -> list[tuple[str, str]]:
        due = [(shard, target) for shard, target in self._held.due.items() if shard in self._held]
        self._held.due.clear()
        return [] if self._stopping else due

    async def _take(self, lease: Lease) -> None:
        if self._stopping:
            return
        requested = lease.shard_id in self._requested
        if await self._held.take(lease, requested=requested):
            self._requested.pop(lease.shard_id, None)

    async def _request(self, lease: Lease, now: float) -> None:
        try:
            accepted = await self._store.request_handoff(lease, self.worker_id)
        except LeaseStoreError as error:
            self._counts["read_failures"] += 1
            log.warning(
                "worker %s: asking for %s failed: %s", self.worker_id, lease.shard_id, error
            )
            return
        if accepted:
            self._requested[lease.shard_id] = now

    async def _poll_request(self, shard: str) -> None:
        """Watch a lease this worker asked for, to take it as soon as its owner lets go."""
        asked = self._requested.get(shard)
        limit = self.settings.handoff_timeout + 2 * self.settings.renew_interval
        if asked is None or shard in self._held or self._clock() - asked > limit:
            self._requested.pop(shard, None)
            return
        try:
            lease = await self._store.get_lease(self.mapping_uuid, shard)
        except LeaseStoreError:
            self._counts["read_failures"] += 1
            return
        if lease is None or lease.finished:
            self._requested.pop(shard, None)
        elif self._stopping:  # too late: pass a lease handed to us on to nobody, at once
            if lease.owner == self.worker_id:
                await self._pass_on(lease)
            elif lease.handoff_target != self.worker_id:
                self._requested.pop(shard, None)
        elif lease.owner in (None, self.worker_id):  # handed to us, or released to nobody
            await self._take(lease)
        elif lease.handoff_target != self.worker_id:  # another worker's request replaced ours
            self._requested.pop(shard, None)

    async def _pass_on(self, lease: Lease) -> None:
        try:
            await self._store.release(lease)
        except LeaseStoreError:
            self._counts["renewal_failures"] += 1
            return  # the next poll retries; past the stop's bound the lease expires instead
        self._requested.pop(lease.shard_id, None)

    def _dead_for_long(self, worker_id: str, now: float) -> bool:
        unchanged = self._worker_seen.unchanged_for(worker_id, now)
        limit = _REAP_AFTER_FAILOVERS * self.settings.failover_time
        return worker_id != self.worker_id and unchanged is not None and unchanged >= limit

    async def _reap(self, worker_id: str, heartbeat: int) -> None:
        """Delete the row of a worker gone for long (ids with a pid would pile up otherwise)."""
        try:
            await self._store.deregister_worker(self.mapping_uuid, worker_id, heartbeat=heartbeat)
        except LeaseStoreError:
            self._counts["read_failures"] += 1

    async def deregister(self) -> None:
        """Remove this worker's row, so the others stop counting it at their next read."""
        try:
            await self._store.deregister_worker(self.mapping_uuid, self.worker_id)
        except LeaseStoreError as error:
            log.warning("worker %s: deregistering failed: %s", self.worker_id, error)
