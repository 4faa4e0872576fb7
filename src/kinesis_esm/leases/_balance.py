"""Who should hold which lease: a pure function of the fleet as one worker sees it.

Every worker computes the same target assignment from the same rows, and acts only on its own
part of it: it takes free leases that the target gives it, and asks live owners to hand over
leases the target moves to it. Owners never push; they answer hand-off requests.

The target, in two phases, both deterministic and sticky:

1. Count. With N eligible leases and W live workers each worker gets N // W, and the N % W
   workers that hold the most already get one more. A worker over its quota gives up its
   surplus; free and surplus leases go heaviest first to the least loaded worker with room.
2. Load (only when owners published loads). Repeatedly take the most and least loaded workers
   and move one lease (when their counts allow) or swap two, choosing the change that lowers
   the larger of the two loads most; stop when the best change would gain less than
   `load_tolerance` of the mean worker load. The tolerance is the hysteresis: loads must shift
   by that much before anything moves again, so a balanced fleet moves nothing.

A lease is eligible when it is not finished (SHARD_END) and every parent's lease is finished
or gone: a child is never assigned before its parents are done.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._model import Lease

__all__ = ["BalanceSettings", "FleetView", "Plan", "assign", "eligible_leases", "plan"]


@dataclass(frozen=True, slots=True)
class BalanceSettings:
    max_takes_per_round: int = 16  # free (unowned or expired) leases taken per round
    max_handoffs_per_round: int = 1  # hand-off requests outstanding per worker
    load_tolerance: float = 0.1  # fraction of the mean worker load a change must gain
    max_load_steps: int = 64  # load-phase changes per computation

    def __post_init__(self) -> None:
        for name in ("max_takes_per_round", "max_handoffs_per_round", "max_load_steps"):
            value = getattr(self, name)
            if not 1 <= value <= 10_000:
                raise ValueError(f"{name} must be between 1 and 10000, got {value!r}")
        if not 0.0 < self.load_tolerance <= 1.0:
            raise ValueError(f"load_tolerance must be > 0 and <= 1, got {self.load_tolerance!r}")


@dataclass(frozen=True, slots=True)
class FleetView:
    """One worker's view: the live workers, every lease row, and which leases are free.

    `expired` holds the shard ids that may be taken: unowned, owned by a worker that is not
    live, or whose counter the observer saw unchanged for failover_time.
    """

    worker_id: str
    live_workers: frozenset[str]
    leases: tuple[Lease, ...]
    expired: frozenset[str]


@dataclass(frozen=True, slots=True)
class Plan:
    take: tuple[str, ...]  # free leases to take now
    request_handoff: tuple[str, ...]  # leases held by live workers to ask for
    assignment: Mapping[str, str]  # eligible shard id -> the worker the fleet converges to


def eligible_leases(leases: Iterable[Lease]) -> list[Lease]:
    """Unfinished leases whose parents are all finished or gone, sorted by shard id."""
    rows = list(leases)
    finished = {lease.shard_id for lease in rows if lease.finished}
    present = {lease.shard_id for lease in rows}
    return sorted(
        (
            lease
            for lease in rows
            if not lease.finished
            and all(p in finished or p not in present for p in lease.parent_shard_ids)
        ),
        key=lambda lease: lease.shard_id,
    )


def _scalar_loads(leases: list[Lease]) -> dict[str, float]:
    """Each lease's share of the fleet's records/s plus its share of the fleet's bytes/s."""
    total_records = math.fsum(lease.load.records_per_second for lease in leases)
    total_bytes = math.fsum(lease.load.bytes_per_second for lease in leases)
    loads: dict[str, float] = {}
    for lease in leases:
        value = 0.0
        if total_records > 0:
            value += lease.load.records_per_second / total_records
        if total_bytes > 0:
            value += lease.load.bytes_per_second / total_bytes
        loads[lease.shard_id] = value
    return loads


def _live_workers(view: FleetView) -> list[str]:
    """The view's live workers, plus self, plus owners still renewing (KCL counts those)."""
    live = set(view.live_workers) | {view.worker_id}
    live.update(
        lease.owner
        for lease in view.leases
        if lease.owner is not None and lease.shard_id not in view.expired
    )
    return sorted(live)


def _effective_owner(lease: Lease, view: FleetView, live: set[str]) -> str | None:
    """Who the lease counts for: nobody when free, the hand-off target while one is pending."""
    if lease.owner is None or lease.shard_id in view.expired or lease.owner not in live:
        return None
    target = lease.handoff_target
    if target is not None and target != lease.owner and target in live:
        return target
    return lease.owner


def assign(
    workers: Iterable[str],
    leases: Iterable[Lease],
    current: Mapping[str, str | None],
    settings: BalanceSettings,
) -> dict[str, str]:
    """The target owner of every eligible lease. `current` maps shard id to its present
    owner (None or missing: free); owners that are not in `workers` count as free."""
    names = sorted(set(workers))
    if not names:
        raise ValueError("assign needs at least one worker")
    rows = eligible_leases(leases)
    load = _scalar_loads(rows)
    held: dict[str, list[str]] = {name: [] for name in names}
    pool: list[str] = []
    for lease in rows:
        owner = current.get(lease.shard_id)
        (pool if owner is None else held.get(owner, pool)).append(lease.shard_id)

    # Phase 1: count quotas, sticky (the extra lease goes to those that hold most already).
    base, extra = divmod(len(rows), len(names))
    by_count = sorted(names, key=lambda name: (-len(held[name]), name))
    quota = {name: base + (1 if rank < extra else 0) for rank, name in enumerate(by_count)}
    total_load = math.fsum(load.values())
    for name in names:
        surplus = len(held[name]) - quota[name]
        if surplus <= 0:
            continue
        mine = sorted(held[name], key=lambda shard: (load[shard], shard))
        share = total_load * quota[name] / len(rows)
        mine_load = math.fsum(load[shard] for shard in mine)
        for _ in range(surplus):  # shed heavy leases when above a fair share, light ones below
            victim = mine.pop() if mine_load > share else mine.pop(0)
            mine_load -= load[victim]
            pool.append(victim)
        held[name] = mine
    worker_load = {name: math.fsum(load[shard] for shard in held[name]) for name in names}
    for shard in sorted(pool, key=lambda shard: (-load[shard], shard)):
        name = min(
            (name for name in names if len(held[name]) < quota[name]),
            key=lambda name: (worker_load[name], len(held[name]), name),
        )
        held[name].append(shard)
        worker_load[name] += load[shard]

    # Phase 2: load, by moves and swaps between the most and the least loaded worker.
    if total_load > 0 and len(names) > 1:
        threshold = settings.load_tolerance * total_load / len(names)
        for _ in range(settings.max_load_steps):
            if not _improve_load(names, held, load, threshold):
                break
    return {shard: name for name in names for shard in held[name]}


def _improve_load(
    names: list[str], held: dict[str, list[str]], load: Mapping[str, float], threshold: float
) -> bool:
    """Apply the best move or swap between the hottest and coldest worker, if worth it.

    Sums are exact (fsum) and ties go by name, so the decision does not depend on the order
    leases were listed in: every worker, and a recomputation from the result, decide alike.
    """
    worker_load = {name: math.fsum(load[shard] for shard in held[name]) for name in names}
    hot = max(names, key=lambda name: (worker_load[name], name))
    cold = min(names, key=lambda name: (worker_load[name], name))
    high, low = worker_load[hot], worker_load[cold]
    if high - low <= threshold:
        return False
    best: tuple[float, str, str] | None = None  # (larger load after, from hot, from cold or "")
    if len(held[hot]) > len(held[cold]):  # a move keeps both counts within [base, base + 1]
        for a in held[hot]:
            candidate = (max(high - load[a], low + load[a]), a, "")
            best = candidate if best is None or candidate < best else best
    for a in held[hot]:
        for b in held[cold]:
            delta = load[a] - load[b]
            if delta > 0:
                candidate = (max(high - delta, low + delta), a, b)
                best = candidate if best is None or candidate < best else best
    if best is None or high - best[0] < threshold:
        return False
    _, a, b = best
    held[hot].remove(a)
    held[cold].append(a)
    if b:
        held[cold].remove(b)
        held[hot].append(b)
    return True


def plan(view: FleetView, settings: BalanceSettings) -> Plan:
    """What `view.worker_id` should do this round to move the fleet toward the target."""
    names = _live_workers(view)
    live = set(names)
    current = {lease.shard_id: _effective_owner(lease, view, live) for lease in view.leases}
    target = assign(names, view.leases, current, settings)
    me = view.worker_id
    mine = sorted(shard for shard, name in target.items() if name == me)
    take = tuple(shard for shard in mine if current.get(shard) is None)
    outstanding = sum(
        1
        for lease in view.leases
        if lease.owner != me and current.get(lease.shard_id) == me  # pending, to me
    )
    room = max(0, settings.max_handoffs_per_round - outstanding)
    owner = {lease.shard_id: lease.owner for lease in view.leases}
    # Never ask for a lease we own whose hand-off to another worker is already pending.
    handoff = tuple(s for s in mine if current.get(s) not in (None, me) and owner[s] != me)
    return Plan(
        take=take[: settings.max_takes_per_round],
        request_handoff=handoff[:room],
        assignment=target,
    )
