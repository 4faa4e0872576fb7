"""One mapping as one worker of a fleet runs it: shards start and stop with their leases.

The runner lists the stream's shards as `MappingRunner` does, but only to create their leases
(parents with each child); which shards it reads is the `LeaseCoordinator`'s decision:

- `on_lease_gained`: start the shard from the lease's checkpoint (none: the mapping's start
  position, with LATEST taken at the fleet's start time, so nothing between is skipped);
- `on_lease_lost`: stop it now; its checkpoints are refused from here on (fencing), and the
  consumer asks `holds()` before every batch, so it invokes nothing more for the shard;
- `release_requested` (a hand-off, or this worker stopping): stop reading, let the lanes finish
  their in-flight batches and checkpoint the low-water mark, then return; the coordinator
  writes that checkpoint and the new owner in one conditional update.

Parent before child across workers comes from the table: a child's lease is assigned only
once every parent's lease is finished (SHARD_END), whoever held the parent. A shard's end adds
its children's leases at once (from ChildShards), before a listing would show them.

A lease whose shard has left the stream (past its retention) is finished by its holder once
listings no longer show it (``_gone``), so that its children can start; a free one is finished
by the worker the balancer gives it to.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import anyio
import anyio.abc

from .._errors import SourceError
from .._statistics import MappingStatistics, ShardStatistics, WorkerStatistics
from ..leases import FleetSnapshot, Lease, LeaseLoad, LeaseStoreError, eligible_leases
from ..pipeline._consumer import ShardConsumer
from ..pipeline._windowed import WindowedLanes
from ..source import ShardInfo
from ..state import SHARD_END
from ._fleet import WINDOW_STATE_LIMIT, Fleet, LeaseCommitter, lease_checkpoint, text_checkpoint
from ._gone import AbsentShards
from ._load import LoadMeter
from ._mapping import MappingRunner

__all__ = ["FleetMappingRunner"]

log = logging.getLogger("kinesis_esm.fleet")


class FleetMappingRunner(MappingRunner):
    """A `MappingRunner` whose shards are leased; it is the coordinator's `LeaseConsumer`."""

    def __init__(self, *args: Any, fleet: Fleet, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fleet = fleet
        self.worker_id = fleet.worker_id
        self.coordinator = fleet.coordinator(
            self.uuid, self, function_timeout=float(getattr(self.function, "timeout", 3.0))
        )
        self.lease_committer = LeaseCommitter(self.coordinator)
        self._tg: anyio.abc.TaskGroup | None = None
        self._shards: dict[str, ShardInfo] = {}  # every shard listed or announced, by id
        self._done: dict[str, anyio.Event] = {}  # set when the shard's consumer has returned
        self._coordinating = False
        self._absent = AbsentShards()  # leases whose shards listings no longer show

    # the lifecycle

    async def run(self) -> None:
        try:
            await self._claim_started_at()
            if self.consumer_arn is None and self.config.register_consumer is not None:
                await self._register_consumer()
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await self._serve(tg)
                await self.coordinator.stop()  # hand every lease off; consumers finish first
                for consumer in list(self._consumers.values()):
                    consumer.stop()  # any not handed off in time (lost meanwhile)
                for done in list(self._done.values()):
                    await done.wait()  # in-flight batches finish (the engine bounds the stop)
                tg.cancel_scope.cancel()  # the load reporter
        finally:
            with anyio.CancelScope(shield=True):
                await self.processor.aclose()
                close = getattr(self.function, "aclose", None)
                if self._owns_function and close is not None:
                    await close()
            self.stopped.set()

    def stop(self) -> None:
        """Leases are handed off by `run` (which stops the consumers), not dropped here."""
        self._stopping = True
        self._sync_requested.set()

    async def _claim_started_at(self) -> None:
        backoff = 0.5
        while not self._stopping:
            try:
                started_at, first = await self.fleet.started_at(self.uuid, time.time())
            except LeaseStoreError as error:
                self._lease_problem(error)
                with anyio.move_on_after(backoff):
                    await self._sync_requested.wait()
                backoff = min(backoff * 2, self.poll_settings.problem_backoff_max)
                continue
            self._started_at, self._first_start = started_at, first
            return

    async def _serve(self, tg: anyio.abc.TaskGroup) -> None:
        backoff = 0.5
        while not self._stopping:
            synced = await self._sync_shards(tg)
            if synced and not self._coordinating and not self._stopping:
                await tg.start(self.coordinator.run)  # after the first listing: leases exist
                tg.start_soon(self._report_loads)
                self._coordinating = True
            if synced and self.state == "Creating":
                self.state = "Enabled"
            if synced:
                wait, backoff = self.shard_sync_interval, 0.5
            else:
                wait = backoff
                backoff = min(backoff * 2, self.poll_settings.problem_backoff_max)
            with anyio.move_on_after(wait):
                await self._sync_requested.wait()
            self._sync_requested = anyio.Event()

    async def _sync_shards(self, tg: anyio.abc.TaskGroup) -> bool:
        """List the shards and create the leases that are missing (parents first)."""
        try:
            shards = await self.source.list_shards(self.stream_arn)
        except SourceError as exc:
            self.source_problem(exc)
            return False
        self.source_recovered()
        listed = {s.shard_id for s in shards}
        if self._first_listing is None:
            self._first_listing = listed
        for shard in shards:
            self._shards[shard.shard_id] = shard
            running = self._consumers.get(shard.shard_id)
            if running is not None:
                running.shard = shard  # learns that its shard closed, and where it ends
        # Checkpoints of the local state file seed new leases: a move from backend "local".
        local = await self.store.get_checkpoints(self.uuid)
        added = await self._add_leases({s.shard_id: s.parents for s in shards}, local)
        snapshot = self.coordinator.snapshot()
        self._absent.note(tuple(snapshot.leases) if snapshot is not None else (), listed)
        for shard_id in self._absent.shards():
            if self.coordinator.holds(shard_id):
                await self._retire(shard_id)
        return added

    async def _retire(self, shard_id: str) -> None:
        """Finish the lease of a shard no longer in the stream, so its children can start."""
        consumer, done = self._consumers.get(shard_id), self._done.get(shard_id)
        if consumer is not None and done is not None:
            consumer.stop()  # it cannot read a shard that is gone; its last checkpoint stays
            await done.wait()
        if self._stopping or not self.coordinator.holds(shard_id):
            return
        log.warning(
            "mapping %s: %s is no longer in the stream (past its retention): finishing its "
            "lease so that its children can start",
            self.uuid,
            shard_id,
        )
        try:
            await self.coordinator.checkpoint(shard_id, SHARD_END, force=True)
        except LeaseStoreError as error:
            self._lease_problem(error)  # retried at the next listing

    async def _add_leases(
        self, parents: dict[str, tuple[str, ...]], local: dict[str, str] | None = None
    ) -> bool:
        seeds = {shard: lease_checkpoint(cp) for shard, cp in (local or {}).items()}
        try:
            created = await self.coordinator.add_shards(parents, seeds)
        except LeaseStoreError as error:
            self._lease_problem(error)
            return False
        if created:
            log.info("mapping %s: %d new lease(s) in %s", self.uuid, created, self.fleet.table)
        return True

    def _lease_problem(self, error: LeaseStoreError) -> None:
        message = f"PROBLEM: lease table: {error}"
        if self.problem != message:
            log.error("mapping %s: %s", self.uuid, error)
        self.problem = message
        self.last_processing_result = message

    # the LeaseConsumer protocol

    def on_lease_gained(self, lease: Lease) -> None:
        if self._tg is None or self._stopping:
            return  # the coordinator's stop hands it on
        if self._absent.gone(lease.shard_id):
            self._tg.start_soon(self._retire, lease.shard_id)
        else:
            self._tg.start_soon(self._run_leased, lease)

    def on_lease_lost(self, shard_id: str) -> None:
        consumer = self._consumers.get(shard_id)
        if consumer is not None:
            log.warning(
                "mapping %s: worker %s lost the lease of %s: stopping it, no more checkpoints",
                self.uuid,
                self.worker_id,
                shard_id,
            )
            consumer.lost = True  # its commits would be refused anyway; do not even try
            consumer.stop()

    async def release_requested(self, shard_id: str) -> None:
        consumer = self._consumers.get(shard_id)
        done = self._done.get(shard_id)
        if consumer is None or done is None:
            return
        log.info("mapping %s: handing %s off", self.uuid, shard_id)
        consumer.stop()  # lanes finish their in-flight batch and checkpoint; then run returns
        await done.wait()

    # shards

    async def _run_leased(self, lease: Lease) -> None:
        shard_id = lease.shard_id
        previous = self._done.get(shard_id)
        if previous is not None:  # a consumer of an earlier lease still finishing
            await previous.wait()
        if self._stopping or shard_id in self._consumers or not self.coordinator.holds(shard_id):
            return
        shard = self._shards.get(shard_id) or _shard_of(lease)
        checkpoint = text_checkpoint(lease.checkpoint)
        position = self._start_position(shard, checkpoint)
        consumer = ShardConsumer(
            shard,
            position,
            checkpoint,
            identity=self.identity,
            source=self.source,
            committer=self.lease_committer,
            handler=self.processor,
            counters=self.counters,
            status=self,
            poll_settings=self.poll_settings,
            fan_out=self.fan_out,
            consumer_arn=self.consumer_arn,
            lease=self.coordinator,
            windows=self._leased_windows(lease),
            read_budget=self.read_budget,
        )
        done = anyio.Event()
        self._consumers[shard_id], self._done[shard_id] = consumer, done
        log.info(
            "mapping %s: %s leased to %s (counter %d), starts at %s",
            self.uuid,
            shard_id,
            self.worker_id,
            lease.counter,
            position,
        )
        try:
            ended = await consumer.run()
        finally:
            if self._consumers.get(shard_id) is consumer:
                del self._consumers[shard_id]
            if self._done.get(shard_id) is done:
                del self._done[shard_id]
            done.set()
        if ended:
            children = {c.shard_id: c.parent_shards for c in consumer.child_shards}
            log.info("mapping %s: %s ended; children %s", self.uuid, shard_id, sorted(children))
            for child, parents in children.items():
                self._shards.setdefault(child, _shard_of_parents(child, parents))
            if children and await self._add_leases(children):
                self._sync_requested.set()

    def _leased_windows(self, lease: Lease) -> WindowedLanes | None:
        """The shard's tumbling windows from the state in its lease's checkpoint (the last
        owner's, carried by the hand-off or take; none: a fresh window), capped for the row."""
        stored = lease.checkpoint.window_state if lease.checkpoint is not None else None
        return self._restore_windows(lease.shard_id, stored, max_state_bytes=WINDOW_STATE_LIMIT)

    async def _report_loads(self) -> None:
        """Each held shard's records/s, published with the renewals for the balancer (steady
        figures only: see `LoadMeter`)."""
        interval = self.coordinator.settings.renew_interval
        meters: dict[tuple[str, ShardConsumer], LoadMeter] = {}
        while True:
            await anyio.sleep(interval)
            now = anyio.current_time()
            running = {(shard_id, c) for shard_id, c in self._consumers.items()}
            for key in meters.keys() - running:
                del meters[key]
            for shard_id, consumer in running:
                meter = meters.setdefault((shard_id, consumer), LoadMeter())
                rate = meter.sample(consumer.records_polled, now)
                if rate is not None:
                    self.coordinator.report_load(shard_id, LeaseLoad(records_per_second=rate))

    # figures

    def statistics(self) -> MappingStatistics:
        """This worker's shards with their lease counters, and every other lease of the
        mapping as the last table read showed it (owner, counter, checkpoint)."""
        base = super().statistics()
        held = self.coordinator.held_leases()
        shards: list[ShardStatistics] = []
        for s in base.shards:
            lease = held.get(s.shard_id)
            counter = None if lease is None else lease.counter
            shards.append(dataclasses.replace(s, owner=self.worker_id, lease_counter=counter))
        snapshot = self.coordinator.snapshot()
        if snapshot is not None:
            local = {s.shard_id for s in shards}
            eligible = {lease.shard_id for lease in eligible_leases(snapshot.leases)}
            for lease in snapshot.leases:
                if lease.shard_id in local or lease.finished:
                    continue
                state = (
                    "waiting_on_parents"
                    if lease.shard_id not in eligible
                    else "leased"
                    if lease.owner
                    else "unowned"
                )
                shards.append(_lease_statistics(lease, state))
        leases = self.coordinator.statistics()
        workers = self._worker_statistics(snapshot, leases.held)
        return dataclasses.replace(base, shards=tuple(shards), leases=leases, workers=workers)

    def _worker_statistics(
        self, snapshot: FleetSnapshot | None, held: int
    ) -> tuple[WorkerStatistics, ...]:
        """Every worker of the mapping as the last table read showed it, this one always (with
        the leases it holds now); also an owner of leases whose worker row is gone."""
        live = self.coordinator.live_workers()
        rows = () if snapshot is None else tuple(snapshot.workers)
        heartbeats: dict[str, int | None] = {row.worker_id: row.heartbeat for row in rows}
        owned: dict[str, int] = {}
        for lease in () if snapshot is None else tuple(snapshot.leases):
            if lease.owner is not None and not lease.finished:
                owned[lease.owner] = owned.get(lease.owner, 0) + 1
                heartbeats.setdefault(lease.owner, None)
        heartbeats.setdefault(self.worker_id, None)
        owned[self.worker_id] = held
        return tuple(
            WorkerStatistics(
                worker_id,
                leases=owned.get(worker_id, 0),
                live=worker_id in live or worker_id == self.worker_id,
                heartbeat=heartbeats[worker_id],
                this_worker=worker_id == self.worker_id,
            )
            for worker_id in sorted(heartbeats)
        )


def _shard_of(lease: Lease) -> ShardInfo:
    return _shard_of_parents(lease.shard_id, lease.parent_shard_ids)


def _shard_of_parents(shard_id: str, parents: tuple[str, ...]) -> ShardInfo:
    return ShardInfo(
        shard_id,
        parent_shard_id=parents[0] if parents else None,
        adjacent_parent_shard_id=parents[1] if len(parents) > 1 else None,
    )


def _lease_statistics(lease: Lease, state: str) -> ShardStatistics:
    """A shard another worker holds (or nobody yet), as this worker last read its lease."""
    return ShardStatistics(
        lease.shard_id,
        state,
        0,
        0,
        0,
        text_checkpoint(lease.checkpoint),
        None,
        None,
        None,
        0,
        0,
        owner=lease.owner,
        lease_counter=lease.counter,
    )
