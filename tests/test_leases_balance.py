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
from tests.support.lease_sim import FakeClock, FleetSim, SimEvent

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
        clock = FakeClock()
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
        clock = FakeClock()
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
        clock = FakeClock()
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
