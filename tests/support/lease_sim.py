"""A fleet of real LeaseCoordinators over the in-memory store, stepped tick by tick on a fake
clock through random kills, pauses, stops, new workers, shard ends, splits, merges, load changes
and store failures, asserting the lease invariants at every step (tests/test_leases_balance.py).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kinesis_esm.leases import (
    SHARD_END,
    BalanceSettings,
    Conflict,
    CoordinatorSettings,
    FleetSnapshot,
    Lease,
    LeaseCoordinator,
    LeaseLoad,
    LeaseStoreUnavailableError,
    MemoryLeaseStore,
    assign,
    eligible_leases,
)


@dataclass
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


SIM_MAPPING = "m-sim"
SIM_SETTINGS = CoordinatorSettings(
    failover_time=3.0,
    take_interval=1.0,
    handoff_timeout=4.0,
    balance=BalanceSettings(max_takes_per_round=3, max_handoffs_per_round=1),
)
TICK = 1.0  # = renew_interval: every worker renews, answers, takes and works once per tick
PAUSED_TICKS = (1, 2, 4, 5, 6)  # shorter and longer than failover_time


@dataclass(frozen=True)
class SimEvent:
    kind: str
    arg: int
    ticks_after: int = 1


class FlakyStore:
    """Wraps a store; fails calls at `failure_rate`, half before the write and half after it
    (the write landed, the answer was lost). Counts successful takes and requests per worker."""

    def __init__(self, inner: MemoryLeaseStore, rng: random.Random) -> None:
        self.inner = inner
        self.rng = rng
        self.failure_rate = 0.0
        self.moves: Counter[tuple[str, str]] = Counter()

    def _fail(self, when: str) -> None:
        if self.failure_rate and self.rng.random() < self.failure_rate / 2:
            raise LeaseStoreUnavailableError(f"injected failure {when} the write")

    async def read_fleet(self, mapping_uuid: str) -> FleetSnapshot:
        self._fail("before")
        return await self.inner.read_fleet(mapping_uuid)

    async def get_lease(self, mapping_uuid: str, shard_id: str) -> Lease | None:
        self._fail("before")
        return await self.inner.get_lease(mapping_uuid, shard_id)

    async def create_lease(self, *args: Any, **kwargs: Any) -> bool:
        return await self.inner.create_lease(*args, **kwargs)

    async def renew(self, lease: Lease, **kwargs: Any) -> Lease | Conflict:
        self._fail("before")
        result = await self.inner.renew(lease, **kwargs)
        self._fail("after")
        return result

    async def take(self, lease: Lease, worker_id: str) -> Lease | Conflict:
        self._fail("before")
        result = await self.inner.take(lease, worker_id)
        if isinstance(result, Lease):
            self.moves["take", worker_id] += 1
        self._fail("after")
        return result

    async def request_handoff(self, lease: Lease, worker_id: str) -> bool:
        self._fail("before")
        result = await self.inner.request_handoff(lease, worker_id)
        if result:
            self.moves["request", worker_id] += 1
        self._fail("after")
        return result

    async def release(self, lease: Lease, **kwargs: Any) -> Lease | Conflict:
        self._fail("before")
        result = await self.inner.release(lease, **kwargs)
        self._fail("after")
        return result

    async def heartbeat(self, mapping_uuid: str, worker_id: str) -> None:
        self._fail("before")
        await self.inner.heartbeat(mapping_uuid, worker_id)

    async def deregister_worker(self, *args: Any, **kwargs: Any) -> bool:
        self._fail("before")
        return await self.inner.deregister_worker(*args, **kwargs)

    async def delete_mapping(self, mapping_uuid: str) -> int:
        return await self.inner.delete_mapping(mapping_uuid)

    async def aclose(self) -> None:
        await self.inner.aclose()


class SimConsumer:
    """A shard consumer: one record per tick per held shard, checkpointing each (batched)."""

    def __init__(self, sim: FleetSim, name: str) -> None:
        self.sim = sim
        self.name = name
        self.positions: dict[str, int] = {}
        self.coordinator: LeaseCoordinator | None = None

    def on_lease_gained(self, lease: Lease) -> None:
        assert not lease.finished
        start = 0 if lease.checkpoint is None else int(lease.checkpoint.sequence)
        self.sim.gained(lease.shard_id, start)
        self.positions[lease.shard_id] = start

    def on_lease_lost(self, shard_id: str) -> None:
        self.positions.pop(shard_id, None)
        self.sim.dirty.add(shard_id)

    async def release_requested(self, shard_id: str) -> None:
        assert self.coordinator is not None
        position = self.positions.pop(shard_id, None)
        if position is not None:  # the final checkpoint: the release writes it
            await self.coordinator.checkpoint(shard_id, str(position))

    async def work(self) -> None:
        assert self.coordinator is not None
        for shard in sorted(self.positions):
            if shard not in self.positions or not self.coordinator.holds(shard):
                continue
            self.positions[shard] += 1
            self.sim.last_position[shard] = max(
                self.sim.last_position.get(shard, 0), self.positions[shard]
            )
            await self.coordinator.checkpoint(shard, str(self.positions[shard]))
            self.coordinator.report_load(shard, self.sim.loads[shard])

    async def finish(self, shard_id: str) -> None:
        assert self.coordinator is not None
        if shard_id in self.positions and self.coordinator.holds(shard_id):
            del self.positions[shard_id]
            await self.coordinator.checkpoint(shard_id, SHARD_END)


@dataclass
class SimWorker:
    coordinator: LeaseCoordinator
    consumer: SimConsumer
    state: str = "running"  # running | paused | stopping | gone
    resume_at: int = 0


class FleetSim:
    def __init__(
        self,
        rng: random.Random,
        *,
        shards: int,
        workers: int,
        store: MemoryLeaseStore | None = None,
    ) -> None:
        self.rng = rng
        self.inner = store or MemoryLeaseStore()
        self.store = FlakyStore(self.inner, rng)
        self.clock = FakeClock()
        self.ticks = 0
        self.workers: list[SimWorker] = []
        self.initial_shards = shards
        self.initial_workers = workers
        self.loads: dict[str, LeaseLoad] = {}
        self.last_position: dict[str, int] = {}
        self.high_water: dict[str, float] = {}
        self.dirty: set[str] = set()  # shards whose records may legitimately run twice
        self.children = 0

    def add_worker(self) -> SimWorker:
        name = f"w{len(self.workers)}"
        consumer = SimConsumer(self, name)
        coordinator = LeaseCoordinator(
            self.store, SIM_MAPPING, name, consumer, SIM_SETTINGS, clock=self.clock
        )
        consumer.coordinator = coordinator
        worker = SimWorker(coordinator, consumer)
        self.workers.append(worker)
        return worker

    async def add_shard(self, shard: str, parents: tuple[str, ...] = ()) -> None:
        await self.inner.create_lease(SIM_MAPPING, shard, parents)
        records = self.rng.choice([0.0, 1.0, 10.0, 100.0, 1000.0])
        self.loads[shard] = LeaseLoad(records, records * self.rng.choice([10, 1000]))

    def gained(self, shard: str, start: int) -> None:
        if shard not in self.dirty:  # a planned move resumes exactly where the last owner was
            assert start == self.last_position.get(shard, 0), (shard, start, self.last_position)

    async def rows(self) -> dict[str, Lease]:
        return {
            lease.shard_id: lease for lease in (await self.inner.read_fleet(SIM_MAPPING)).leases
        }

    async def check(self) -> None:
        rows = await self.rows()
        for shard, lease in rows.items():
            holders = [w.consumer.name for w in self.workers if w.coordinator.holds(shard)]
            assert len(holders) <= 1, f"{shard} held by {holders} at t={self.clock.now}"
            if holders:
                for parent in lease.parent_shard_ids:
                    assert parent not in rows or rows[parent].finished, (shard, parent)
            value = (
                -1.0
                if lease.checkpoint is None
                else math.inf
                if lease.finished
                else float(lease.checkpoint.sequence)
            )
            assert value >= self.high_water.get(shard, -1.0), f"{shard} checkpoint went back"
            self.high_water[shard] = value

    async def step(self, worker: SimWorker) -> None:
        c, name = worker.coordinator, worker.consumer.name
        for kind in ("take", "request"):
            self.store.moves[kind, name] = 0
        if worker.state == "running":
            await c.heartbeat()
            await c.renew_round()
            await c.handoff_round()
            await c.take_round()
            await worker.consumer.work()
        elif worker.state == "stopping":
            await c.renew_round()  # retries failed releases, passes on leases handed to it
            pending = c.statistics().requests_pending
            if not c.held_leases() and (not pending or self.ticks >= worker.resume_at):
                worker.state = "gone"  # as run() does, within a bound
        caps = SIM_SETTINGS.balance
        assert self.store.moves["request", name] <= caps.max_handoffs_per_round
        assert (
            self.store.moves["take", name] <= caps.max_takes_per_round + caps.max_handoffs_per_round
        )
        await self.check()

    async def tick(self) -> None:
        self.ticks += 1
        self.clock.now += TICK
        if self.store.failure_rate:
            self.dirty.update(self.loads)
        order = [w for w in self.workers if w.state != "gone"]
        self.rng.shuffle(order)
        for worker in order:
            if worker.state == "paused":
                if self.ticks < worker.resume_at:
                    continue
                worker.state = "running"
            await self.step(worker)

    def pick(self, arg: int, state: str = "running") -> SimWorker | None:
        candidates = [w for w in self.workers if w.state == state]
        return candidates[arg % len(candidates)] if candidates else None

    async def apply(self, event: SimEvent) -> None:
        rows = await self.rows()
        open_rows = sorted(s for s, lease in rows.items() if not lease.finished)
        parents = {p for lease in rows.values() for p in lease.parent_shard_ids}
        childless = [s for s in open_rows if s not in parents]
        if event.kind == "add":
            self.add_worker()
        elif event.kind in ("kill", "pause", "stop") and (w := self.pick(event.arg)):
            if event.kind == "kill":
                self.dirty.update(w.consumer.positions)
                w.state = "gone"
            elif event.kind == "pause":
                self.dirty.update(w.consumer.positions)
                w.state, w.resume_at = "paused", self.ticks + PAUSED_TICKS[event.arg % 5]
            else:  # graceful: exact, unless an earlier failure already marked the shard
                await w.coordinator.release_all()
                await w.coordinator.deregister()
                w.state, w.resume_at = "stopping", self.ticks + 3
        elif event.kind == "finish" and open_rows:
            shard = open_rows[event.arg % len(open_rows)]
            for w in self.workers:
                if w.state == "running":
                    await w.consumer.finish(shard)
        elif event.kind == "split" and childless:
            shard = childless[event.arg % len(childless)]
            for k in range(2):
                await self.add_shard(f"{shard}.{k}", (shard,))
        elif event.kind == "merge" and len(childless) >= 2:
            i = event.arg % len(childless)
            pair = tuple(sorted({childless[i], childless[(i + 1) % len(childless)]}))
            self.children += 1
            await self.add_shard(f"merged-{self.children}", pair)
        elif event.kind == "load" and self.loads:
            shard = sorted(self.loads)[event.arg % len(self.loads)]
            records = self.rng.choice([0.0, 1.0, 10.0, 100.0, 1000.0])
            self.loads[shard] = LeaseLoad(records, records * 100)
        elif event.kind == "flaky":
            self.store.failure_rate = (event.arg % 5 + 1) / 10
        elif event.kind == "calm":
            self.store.failure_rate = 0.0
        await self.check()

    async def settled(self) -> dict[str, str] | None:
        """Shard -> holder once every eligible lease is held once and counts are even."""
        rows = await self.rows()
        running = [w for w in self.workers if w.state == "running"]
        if any(w.state == "stopping" for w in self.workers):
            return None
        if any(lease.handoff_target is not None for lease in rows.values()):
            return None
        holders: dict[str, str] = {}
        for lease in eligible_leases(rows.values()):
            names = [w.consumer.name for w in running if w.coordinator.holds(lease.shard_id)]
            if len(names) != 1 or lease.owner != names[0]:
                return None
            if lease.load != self.loads[lease.shard_id]:
                return None  # not yet published: the balancer has not seen the real loads
            holders[lease.shard_id] = names[0]
        counts = Counter(holders.values())
        base = len(holders) // len(running)
        if not all(base <= counts[w.consumer.name] <= base + 1 for w in running):
            return None
        names = [w.consumer.name for w in running]
        if assign(names, rows.values(), holders, SIM_SETTINGS.balance) != holders:
            return None  # the balancer would still move something (by load)
        return holders

    async def play(self, events: list[SimEvent]) -> None:
        for i in range(self.initial_shards):
            await self.add_shard(f"shard-{i:02d}")
        for _ in range(self.initial_workers):
            self.add_worker()
        for event in events:
            await self.apply(event)
            for _ in range(event.ticks_after):
                await self.tick()
        # The stable period: no failures, nobody paused, at least one worker.
        self.store.failure_rate = 0.0
        for w in self.workers:
            if w.state == "paused":
                w.resume_at = self.ticks
        if not any(w.state in ("running", "paused") for w in self.workers):
            self.add_worker()
        bound = 20 + 8 * len(await self.rows())
        holders = None
        for _ in range(bound):
            await self.tick()
            if (holders := await self.settled()) is not None:
                break
        assert holders is not None, f"the fleet did not settle within {bound} ticks"
        gains = sum(w.coordinator.statistics().taken for w in self.workers)
        for _ in range(2 * int(SIM_SETTINGS.failover_time) + 2):  # settled: nothing moves
            await self.tick()
            assert await self.settled() == holders
        assert sum(w.coordinator.statistics().taken for w in self.workers) == gains
