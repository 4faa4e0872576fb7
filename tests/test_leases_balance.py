"""Property tests of the lease balancer (pure) and of the lease state machine.

The balancer tests draw random fleets: workers, leases with lineage, owners (live, gone, none),
pending hand-offs, expired sets and loads. The state-machine tests run real LeaseCoordinators
against the in-memory store, stepped tick by tick on a fake clock through random kills, pauses
(a SIGSTOP), graceful stops, new workers, shard ends, splits, merges, load changes and store
failures (before the write, or after it with the answer lost); then a stable period.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinesis_esm.leases import (
    SHARD_END,
    BalanceSettings,
    Checkpoint,
    Conflict,
    CoordinatorSettings,
    FleetSnapshot,
    FleetView,
    Lease,
    LeaseCoordinator,
    LeaseLoad,
    LeaseStoreUnavailableError,
    MemoryLeaseStore,
    assign,
    eligible_leases,
    plan,
)

WIDE = BalanceSettings(max_takes_per_round=1000, max_handoffs_per_round=1000, max_load_steps=10_000)
LOADS = st.sampled_from([0.0, 0.0, 1.0, 5.0, 50.0, 500.0])


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[str], list[Lease], frozenset[str]]:
    workers = [f"w{i}" for i in range(draw(st.integers(1, 6)))]
    leases: list[Lease] = []
    for i in range(draw(st.integers(0, 30))):
        earlier = [lease.shard_id for lease in leases]
        parents: tuple[str, ...] = ()
        if earlier and draw(st.booleans()):
            parents = tuple(sorted(draw(st.sets(st.sampled_from(earlier), min_size=1, max_size=2))))
        finished = draw(st.integers(0, 4)) == 0
        leases.append(
            Lease(
                "m",
                f"shard-{i:03d}",
                draw(st.sampled_from([*workers, None, "gone"])),
                draw(st.integers(0, 5)),
                Checkpoint(SHARD_END) if finished else None,
                parents,
                draw(st.none() | st.sampled_from(workers)),
                load=LeaseLoad(draw(LOADS), draw(LOADS) * 100),
            )
        )
    expired = frozenset(
        draw(st.sets(st.sampled_from([lease.shard_id for lease in leases] or ["x"])))
    )
    return workers, leases, expired


def owners(leases: list[Lease], workers: list[str]) -> dict[str, str | None]:
    return {lease.shard_id: lease.owner if lease.owner in workers else None for lease in leases}


@given(fleets())
@settings(max_examples=300, deadline=None)
def test_counts_are_even_and_every_eligible_lease_is_assigned_once(
    fleet: tuple[list[str], list[Lease], frozenset[str]],
) -> None:
    workers, leases, _ = fleet
    target = assign(workers, leases, owners(leases, workers), BalanceSettings())
    eligible = {lease.shard_id for lease in eligible_leases(leases)}
    assert set(target) == eligible
    assert set(target.values()) <= set(workers)
    counts = Counter(target.values())
    base = len(eligible) // len(workers)
    assert all(base <= counts[w] <= base + 1 for w in workers), counts


@given(fleets())
@settings(max_examples=300, deadline=None)
def test_a_child_is_never_assigned_before_its_parents_finish(
    fleet: tuple[list[str], list[Lease], frozenset[str]],
) -> None:
    workers, leases, expired = fleet
    rows = {lease.shard_id: lease for lease in leases}
    for me in workers:
        decision = plan(
            FleetView(me, frozenset(workers), tuple(leases), expired), BalanceSettings()
        )
        for shard in (*decision.assignment, *decision.take, *decision.request_handoff):
            lease = rows[shard]
            assert not lease.finished
            assert all(rows[p].finished for p in lease.parent_shard_ids if p in rows)


@given(fleets(), st.randoms(use_true_random=False))
@settings(max_examples=300, deadline=None)
def test_the_target_is_a_fixpoint_and_ignores_listing_order(
    fleet: tuple[list[str], list[Lease], frozenset[str]], rng: random.Random
) -> None:
    workers, leases, _ = fleet
    target = assign(workers, leases, owners(leases, workers), WIDE)
    shuffled_leases, shuffled_workers = leases[:], workers[:]
    rng.shuffle(shuffled_leases)
    rng.shuffle(shuffled_workers)
    assert assign(shuffled_workers, shuffled_leases, owners(leases, workers), WIDE) == target
    assert assign(workers, leases, dict(target), WIDE) == target  # nothing moves a second time


@given(fleets())
@settings(max_examples=300, deadline=None)
def test_a_balanced_fleet_moves_nothing(
    fleet: tuple[list[str], list[Lease], frozenset[str]],
) -> None:
    workers, leases, _ = fleet
    target = assign(workers, leases, owners(leases, workers), WIDE)
    settled = [  # every eligible lease with its target owner; the rest keep live owners only
        replace(
            lease,
            owner=target.get(lease.shard_id, lease.owner if lease.owner in workers else None),
            handoff_target=None,
        )
        for lease in leases
    ]
    for me in workers:
        view = FleetView(me, frozenset(workers), tuple(settled), frozenset())
        decision = plan(view, WIDE)
        assert decision.take == () and decision.request_handoff == (), me


def test_equal_loads_split_evenly_by_count_stay_put() -> None:
    workers = ["a", "b", "c"]
    leases = [
        Lease("m", f"s{i}", workers[i % 3], 1, load=LeaseLoad(10.0, 1000.0)) for i in range(7)
    ]
    for me in workers:
        decision = plan(FleetView(me, frozenset(workers), tuple(leases), frozenset()), WIDE)
        assert decision.take == () and decision.request_handoff == ()


def test_uneven_loads_are_spread_within_the_count_rule() -> None:
    loads = {"hot1": 100.0, "hot2": 100.0, "cold1": 1.0, "cold2": 1.0}
    leases = [
        Lease("m", shard, "a" if shard.startswith("hot") else "b", 1, load=LeaseLoad(r, r * 100))
        for shard, r in loads.items()
    ]
    target = assign(["a", "b"], leases, {lease.shard_id: lease.owner for lease in leases}, WIDE)
    assert {target["hot1"], target["hot2"]} == {"a", "b"}  # one hot shard each
    assert Counter(target.values()) == {"a": 2, "b": 2}


@given(fleets())
@settings(max_examples=300, deadline=None)
def test_no_single_move_or_swap_between_hottest_and_coldest_would_pay(
    fleet: tuple[list[str], list[Lease], frozenset[str]],
) -> None:
    workers, leases, _ = fleet
    target = assign(workers, leases, owners(leases, workers), WIDE)
    eligible = eligible_leases(leases)
    totals = [math.fsum(getattr(lease.load, f) for lease in eligible) for f in LeaseLoad.__slots__]
    load = {
        lease.shard_id: math.fsum(
            getattr(lease.load, f) / t
            for f, t in zip(LeaseLoad.__slots__, totals, strict=True)
            if t
        )
        for lease in eligible
    }
    total = math.fsum(load.values())
    if total == 0 or len(workers) < 2:
        return
    held = {w: [s for s, owner in target.items() if owner == w] for w in workers}
    per = {w: math.fsum(load[s] for s in held[w]) for w in workers}
    hot = max(workers, key=lambda w: (per[w], w))
    cold = min(workers, key=lambda w: (per[w], w))
    threshold = WIDE.load_tolerance * total / len(workers)
    deltas = [load[a] - load[b] for a in held[hot] for b in held[cold]]
    if len(held[hot]) > len(held[cold]):
        deltas += [load[a] for a in held[hot]]
    for delta in deltas:
        if delta > 0:
            gain = per[hot] - max(per[hot] - delta, per[cold] + delta)
            assert gain < threshold + 1e-9


@given(fleets(), st.integers(1, 3), st.integers(1, 3))
@settings(max_examples=300, deadline=None)
def test_a_plan_is_bounded_and_only_moves_toward_the_planner(
    fleet: tuple[list[str], list[Lease], frozenset[str]], max_takes: int, max_handoffs: int
) -> None:
    workers, leases, expired = fleet
    caps = BalanceSettings(max_takes_per_round=max_takes, max_handoffs_per_round=max_handoffs)
    rows = {lease.shard_id: lease for lease in leases}
    for me in workers:
        decision = plan(FleetView(me, frozenset(workers), tuple(leases), expired), caps)
        assert len(decision.take) <= max_takes
        outstanding = sum(
            1
            for lease in leases
            if lease.handoff_target == me
            and lease.owner not in (None, me)
            and lease.shard_id not in expired
        )
        assert len(decision.request_handoff) <= max(0, max_handoffs - outstanding)
        for shard in decision.take:
            lease = rows[shard]
            assert decision.assignment[shard] == me
            assert lease.owner is None or shard in expired
        for shard in decision.request_handoff:
            lease = rows[shard]
            assert decision.assignment[shard] == me
            assert lease.owner not in (None, me) and shard not in expired


# The state machine: coordinators over the in-memory store, stepped on a fake clock.

EVENTS = st.lists(
    st.tuples(
        st.sampled_from(
            ["add", "kill", "pause", "stop", "finish", "split", "merge", "load", "flaky", "calm"]
        ),
        st.integers(0, 30),
        st.integers(1, 4),  # plain ticks after the event
    ),
    max_size=12,
)


@given(
    st.integers(1, 10),
    st.integers(1, 4),
    EVENTS,
    st.randoms(use_true_random=False),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_fleets_keep_one_holder_per_shard_and_settle_without_churn(
    shards: int, workers: int, events: list[tuple[str, int, int]], rng: random.Random
) -> None:
    sim = FleetSim(rng, shards=shards, workers=workers)
    anyio.run(sim.play, [SimEvent(*event) for event in events])
    # play() asserted on every step: one holder per shard, parents before children, fenced
    # checkpoints never going back, bounded moves per round, exact hand-offs.
    assert sim.ticks > 0


def test_the_simulation_can_fail() -> None:
    """The checker is not vacuous: without fencing, a paused worker comes back as a second
    holder of the shards that were taken from it."""

    class NoFencing(MemoryLeaseStore):
        async def renew(
            self,
            lease: Lease,
            *,
            checkpoint: Checkpoint | None = None,
            load: LeaseLoad | None = None,
        ) -> Lease | Conflict:
            current = self._leases[(lease.mapping_uuid, lease.shard_id)]
            return await super().renew(current, checkpoint=checkpoint, load=load)

    sim = FleetSim(random.Random(7), shards=4, workers=2, store=NoFencing())
    with pytest.raises(AssertionError, match="held by"):
        anyio.run(sim.play, [SimEvent("calm", 0, 4), SimEvent("pause", 3, 8)])


def test_fencing_refuses_a_paused_workers_checkpoint() -> None:
    async def main() -> None:
        clock = _Clock()
        store = MemoryLeaseStore()
        await store.create_lease("m", "s1")
        cfg = CoordinatorSettings(failover_time=3.0, take_interval=1.0)
        a = LeaseCoordinator(store, "m", "a", _NullConsumer(), cfg, clock=clock)
        b = LeaseCoordinator(store, "m", "b", _NullConsumer(), cfg, clock=clock)
        await a.heartbeat()
        await a.take_round()
        assert a.holds("s1")
        assert (await a.checkpoint("s1", "10", force=True)).value == "written"
        for _ in range(5):  # a is paused; b sees the counter stand still and takes over
            clock.now += 1.0
            await b.heartbeat()
            await b.take_round()
        assert b.holds("s1") and not a.holds("s1")
        assert (await a.checkpoint("s1", "99", force=True)).value == "lost"
        row = await store.get_lease("m", "s1")
        assert row is not None and row.owner == "b" and row.checkpoint == Checkpoint("10")

    anyio.run(main)


def test_a_write_whose_answer_was_lost_is_adopted_not_lost() -> None:
    async def main() -> None:
        clock = _Clock()
        store = _LoseNextAnswer()
        await store.create_lease("m", "s1")
        a = LeaseCoordinator(
            store, "m", "a", _NullConsumer(), CoordinatorSettings(3.0), clock=clock
        )
        await a.heartbeat()
        await a.take_round()
        store.lose_next = True
        clock.now += 1.0
        await a.renew_round()  # landed, but a never heard
        clock.now += 1.0
        await a.renew_round()  # conflicts with its own write: adopted and renewed
        assert a.holds("s1") and a.statistics().lost == 0
        row = await store.get_lease("m", "s1")
        assert row is not None and row.owner == "a" and row.counter == 3  # take, lost, retry

    anyio.run(main)


def test_a_lease_handed_to_a_worker_that_is_stopping_is_passed_on_at_once() -> None:
    async def main() -> None:
        clock = _Clock()
        store = MemoryLeaseStore()
        for shard in ("s1", "s2"):
            await store.create_lease("m", shard)
        cfg = CoordinatorSettings(failover_time=3.0, take_interval=1.0)
        a = LeaseCoordinator(store, "m", "a", _NullConsumer(), cfg, clock=clock)
        b = LeaseCoordinator(store, "m", "b", _NullConsumer(), cfg, clock=clock)
        await a.heartbeat()
        await a.take_round()  # a takes both before b exists
        await b.heartbeat()
        clock.now += 1.0
        for c in (a, b):
            await c.heartbeat()
            await c.take_round()  # b is warm now and asks for one of a's leases
        assert b.statistics().requests_pending == 1
        await b.release_all()  # b stops before the hand-off arrives ...
        clock.now += 1.0
        await a.renew_round()
        await a.handoff_round()  # ... a hands it to b all the same ...
        given = [lease for lease in (await store.read_fleet("m")).leases if lease.owner == "b"]
        assert len(given) == 1
        await b.renew_round()  # ... and b passes it on to nobody instead of sitting on it
        row = await store.get_lease("m", given[0].shard_id)
        assert row is not None and row.owner is None and b.statistics().requests_pending == 0
        assert b.held_leases() == {}

    anyio.run(main)


@dataclass
class _Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class _NullConsumer:
    events: list[str] = field(default_factory=list)

    def on_lease_gained(self, lease: Lease) -> None:
        self.events.append(f"gained {lease.shard_id}")

    def on_lease_lost(self, shard_id: str) -> None:
        self.events.append(f"lost {shard_id}")

    async def release_requested(self, shard_id: str) -> None:
        self.events.append(f"release {shard_id}")


class _LoseNextAnswer(MemoryLeaseStore):
    lose_next = False

    async def renew(
        self, lease: Lease, *, checkpoint: Checkpoint | None = None, load: LeaseLoad | None = None
    ) -> Lease | object:
        result = await super().renew(lease, checkpoint=checkpoint, load=load)
        if self.lose_next:
            self.lose_next = False
            raise LeaseStoreUnavailableError("injected: the answer was lost")
        return result


# The simulator behind the state-machine tests.

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
        self.clock = _Clock()
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
