"""The parallelization-factor scheduler as pure logic: properties with hypothesis, and examples.

The property test drives a :class:`ShardScheduler` through random runs: random keys, records read
in random chunks, random batch sizes, lanes taking and finishing batches in a random order,
partial advances, lanes that never finish ("failures"), and crashes at random steps followed by a
restart from the last stored checkpoint. After every step it checks, against a plain model:

* per-key order: a record is taken only after every earlier record of its key was taken, and
  only once the batch holding the earlier one is finished (or in the same batch, after it);
* the low-water mark: ``low_water_index()`` is the highest index at or below which every record
  is finished, and ``update_low_water()`` moves the checkpoint exactly there, never backwards;
* ``buffered`` and the lane counters;
* nothing lost after a crash: every record at or below the stored checkpoint was finished, and
  at the end every record was finished at least once, records delivered twice only above the
  checkpoint stored before the crash that preceded the second delivery.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinesis_esm.events._record import Record
from kinesis_esm.pipeline._lanes import Batch, ShardScheduler, default_lane_of

SEQ_BASE = 10**20


def make_records(keys: list[str], gaps: list[int] | None = None) -> list[Record]:
    """Records with these keys and increasing sequence numbers (same width, so they sort)."""
    out: list[Record] = []
    seq = SEQ_BASE
    for i, key in enumerate(keys):
        seq += gaps[i] if gaps else 1
        out.append(Record(str(seq), key, "AAAA", 1_700_000_000.0 + i))
    return out


# -- the model -------------------------------------------------------------------------------


@dataclass
class Delivery:
    """One batch handed out, in one incarnation of the scheduler."""

    incarnation: int
    lane: int
    positions: list[int]  # positions in the stream
    done: int = 0  # how many of them are finished
    finished: bool = False


@dataclass
class Incarnation:
    """The model of one scheduler's life, between a (re)start and a crash."""

    number: int
    scheduler: ShardScheduler
    lane_of: Callable[[str], int]
    start: int  # stream position of the scheduler's index 0
    stuck: frozenset[int]  # lanes whose batches never finish in this incarnation
    finished: set[int] = field(default_factory=set)  # scheduler indices
    in_flight: dict[int, Delivery] = field(default_factory=dict)  # lane -> delivery
    batches: dict[int, Batch] = field(default_factory=dict)  # lane -> batch
    by_key: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    taken_per_key: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    last_delivery_of_key: dict[str, Delivery] = field(default_factory=dict)
    lane_queue: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    lane_taken: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    ingested: int = 0
    taken: int = 0
    committed_low: int = -1  # the low-water index as of the last update_low_water()


class Simulation:
    def __init__(
        self, stream: list[Record], factor: int, routing: dict[str, int] | None, batch_size: int
    ) -> None:
        self.stream = stream
        self.seqs = [int(r.sequence_number) for r in stream]
        self.factor = factor
        self.routing = routing
        self.batch_size = batch_size
        self.checkpoint: str | None = None  # what the store holds
        self.finished_ever: set[int] = set()
        self.deliveries: dict[int, list[Delivery]] = defaultdict(list)  # position -> deliveries
        self.checkpoint_at_crash: list[int] = []  # checkpoint position before each crash
        self.inc: Incarnation = self._start(0, frozenset())
        self.step = 0

    # lifecycle

    def _lane_of(self) -> Callable[[str], int]:
        if self.routing is None:
            return default_lane_of(self.factor)
        routing = self.routing
        return lambda key: routing[key]

    def _start(self, number: int, stuck: frozenset[int]) -> Incarnation:
        start = 0
        if self.checkpoint is not None:
            cp = int(self.checkpoint)
            start = next((i for i, s in enumerate(self.seqs) if s > cp), len(self.stream))
        lane_of = self._lane_of()
        scheduler = ShardScheduler(self.factor, None if self.routing is None else lane_of)
        return Incarnation(number, scheduler, lane_of, start, stuck)

    def checkpoint_position(self) -> int:
        """Stream position of the stored checkpoint, -1 when there is none."""
        if self.checkpoint is None:
            return -1
        return self.seqs.index(int(self.checkpoint))

    def crash(self, stuck: frozenset[int]) -> None:
        self.check_nothing_lost()
        self.checkpoint_at_crash.append(self.checkpoint_position())
        self.inc = self._start(self.inc.number + 1, stuck)

    def stop(self, stuck: frozenset[int]) -> None:
        """A clean stop: drop what no lane took, let working lanes finish, commit, restart."""
        inc = self.inc
        assert inc.scheduler.drop_buffered() == inc.ingested - inc.taken
        for lane in self.advanceable_lanes():
            self.advance(lane, len(inc.in_flight[lane].positions))
        self.commit()
        self.crash(stuck)

    # actions

    @property
    def read_position(self) -> int:
        return self.inc.start + self.inc.ingested

    def unread(self) -> int:
        return len(self.stream) - self.read_position

    def ingest(self, count: int) -> None:
        inc = self.inc
        chunk = self.stream[self.read_position : self.read_position + count]
        for offset, record in enumerate(chunk):
            inc.by_key[record.partition_key].append(inc.ingested + offset)
            inc.lane_queue[inc.lane_of(record.partition_key)].append(inc.ingested + offset)
        inc.scheduler.ingest(list(chunk))
        inc.ingested += len(chunk)

    def takeable_lanes(self) -> list[int]:
        """Lanes with records buffered and, as the model sees it, no batch in flight."""
        lanes = self.inc.scheduler.lanes
        return [n for n in range(self.factor) if lanes[n].count and n not in self.inc.in_flight]

    def busy_lanes_with_records(self) -> list[int]:
        return [n for n in self.inc.in_flight if self.inc.scheduler.lanes[n].count]

    def take_while_busy(self, lane_number: int) -> None:
        """Per-key order rests on one batch in flight per lane: a second take is refused."""
        lane = self.inc.scheduler.lanes[lane_number]
        count = lane.count
        with pytest.raises(RuntimeError, match="already has a batch in flight"):
            lane.take(1)
        assert lane.count == count

    def take(self, lane_number: int, count: int) -> None:
        inc = self.inc
        lane = inc.scheduler.lanes[lane_number]
        expected = min(count, lane.count)
        batch = lane.take(count)
        assert batch.lane == lane_number
        assert len(batch) == len(batch.indices) == expected
        assert list(batch.indices) == sorted(batch.indices), "a batch is in shard order"
        taken = inc.lane_taken[lane_number]
        assert list(batch.indices) == inc.lane_queue[lane_number][taken : taken + expected]
        inc.lane_taken[lane_number] += expected
        delivery = Delivery(inc.number, lane_number, [inc.start + i for i in batch.indices])
        for index, record in zip(batch.indices, batch.records, strict=True):
            assert record is self.stream[inc.start + index], "index and record disagree"
            key = record.partition_key
            assert inc.lane_of(key) == lane_number, "a record in another key's lane"
            # per-key order: the next record of this key, and the previous one's batch is done
            assert inc.by_key[key][inc.taken_per_key[key]] == index, f"key {key!r} out of order"
            inc.taken_per_key[key] += 1
            previous = inc.last_delivery_of_key.get(key)
            assert previous is None or previous.finished or previous is delivery, (
                f"key {key!r}: record {index} taken before the batch of the record before it "
                "finished"
            )
            inc.last_delivery_of_key[key] = delivery
            self.deliveries[inc.start + index].append(delivery)
        inc.taken += len(batch)
        inc.in_flight[lane_number] = delivery
        inc.batches[lane_number] = batch

    def advanceable_lanes(self) -> list[int]:
        return [n for n in self.inc.in_flight if n not in self.inc.stuck]

    def advance(self, lane_number: int, done: int) -> None:
        inc = self.inc
        delivery = inc.in_flight[lane_number]
        batch = inc.batches[lane_number]
        assert delivery.done <= done <= len(batch)
        inc.scheduler.lanes[lane_number].advance(batch, done)
        for index in batch.indices[delivery.done : done]:
            inc.finished.add(index)
            self.finished_ever.add(inc.start + index)
        delivery.done = done
        if done == len(batch):
            delivery.finished = True
            del inc.in_flight[lane_number]
            del inc.batches[lane_number]

    def commit(self) -> None:
        inc = self.inc
        before = inc.scheduler.done_sequence
        expected = self.expected_low()
        moved = inc.scheduler.update_low_water()
        assert inc.scheduler.done_index == max(expected, inc.committed_low)
        if expected > inc.committed_low:
            sequence = self.stream[inc.start + expected].sequence_number
            assert moved == sequence
            assert inc.scheduler.done_sequence == sequence
            inc.committed_low = expected
            if self.checkpoint is not None:
                assert int(sequence) > int(self.checkpoint), "the checkpoint went backwards"
            self.checkpoint = sequence  # the shard writes it to the store
        else:
            assert moved is None
            assert inc.scheduler.done_sequence == before
        self.check_nothing_lost()

    # checks

    def expected_low(self) -> int:
        """The highest index at or below which every record is finished (-1: none)."""
        low = -1
        while low + 1 < self.inc.ingested and low + 1 in self.inc.finished:
            low += 1
        return low

    def check_nothing_lost(self) -> None:
        for position in range(self.checkpoint_position() + 1):
            assert position in self.finished_ever, (
                f"checkpoint {self.checkpoint} passes record {position}, never finished"
            )

    def check_invariants(self) -> None:
        inc = self.inc
        sched = inc.scheduler
        assert sched.low_water_index() == self.expected_low()
        assert sched.done_index == inc.committed_low
        assert sched.next_index == inc.ingested
        assert sched.buffered == inc.ingested - 1 - inc.committed_low
        unfinished_in_flight = sum(len(d.positions) - d.done for d in inc.in_flight.values())
        counts = sum(lane.count for lane in sched.lanes)
        assert counts == inc.ingested - inc.taken
        assert sched.buffered >= counts + unfinished_in_flight
        assert sched.busy_lanes() == len(inc.in_flight)
        for lane in sched.lanes:
            assert (lane.in_flight is not None) == (lane.number in inc.in_flight)
            queue = inc.lane_queue[lane.number][inc.lane_taken[lane.number] :]
            assert lane.count == len(queue)
            for limit in {1, self.batch_size, lane.count, lane.count + 1}:
                expected = [self.stream[inc.start + i] for i in queue[:limit]]
                assert lane.peek(limit) == expected, "peek() is not the lane's front"
        if inc.ingested:
            assert sched.highest_sequence == self.stream[self.read_position - 1].sequence_number

    def check_end(self) -> None:
        """After a final drain: everything finished, duplicates only above a crash checkpoint."""
        assert self.finished_ever == set(range(len(self.stream)))
        assert self.inc.scheduler.buffered == 0
        if self.stream:
            assert self.checkpoint == self.stream[-1].sequence_number
        for position, deliveries in self.deliveries.items():
            incarnations = sorted({d.incarnation for d in deliveries})
            for earlier, later in pairwise(incarnations):
                # delivered again in `later`: only if above the checkpoint of the crash before it
                assert position > self.checkpoint_at_crash[later - 1], (
                    f"record {position} delivered again below checkpoint "
                    f"{self.checkpoint_at_crash[later - 1]} (incarnations {earlier}, {later})"
                )


# -- strategies ------------------------------------------------------------------------------

KEY_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Record], int, dict[str, int] | None]:
    factor = draw(st.integers(1, 10))
    keys = draw(st.lists(KEY_TEXT, min_size=1, max_size=12, unique=True))
    chosen = draw(st.lists(st.sampled_from(keys), max_size=60))
    gaps = draw(st.lists(st.integers(1, 1000), min_size=len(chosen), max_size=len(chosen)))
    routing: dict[str, int] | None = None
    if draw(st.booleans()):  # a drawn routing reaches skewed spreads that hash() rarely gives
        routing = {key: draw(st.integers(0, factor - 1)) for key in keys}
    return make_records(chosen, gaps), factor, routing


def drive(data: st.DataObject, sim: Simulation, max_steps: int, crashes: bool) -> None:
    for _ in range(max_steps):
        enabled = ["commit"]
        if sim.unread():
            enabled.append("ingest")
        if sim.takeable_lanes():
            enabled.append("take")
        if sim.busy_lanes_with_records():
            enabled.append("take_busy")
        if sim.advanceable_lanes():
            enabled += ["advance", "finish"]
        if crashes:
            enabled += ["crash", "stop"]
        action = data.draw(st.sampled_from(enabled), label="action")
        if action == "ingest":
            sim.ingest(data.draw(st.integers(1, sim.unread()), label="chunk"))
        elif action == "take":
            lane = data.draw(st.sampled_from(sim.takeable_lanes()), label="lane")
            sim.take(lane, data.draw(st.integers(1, sim.batch_size), label="count"))
        elif action == "take_busy":
            sim.take_while_busy(data.draw(st.sampled_from(sim.busy_lanes_with_records())))
        elif action in ("advance", "finish"):
            lane = data.draw(st.sampled_from(sim.advanceable_lanes()), label="lane")
            delivery = sim.inc.in_flight[lane]
            total = len(delivery.positions)
            done = (
                total
                if action == "finish"
                else data.draw(st.integers(delivery.done, total), label="done")
            )
            sim.advance(lane, done)
        elif action == "commit":
            sim.commit()
        else:
            stuck = data.draw(st.frozensets(st.integers(0, sim.factor - 1)), label="stuck")
            if action == "crash":
                sim.crash(stuck)
            else:
                sim.stop(stuck)
        sim.check_invariants()


def drain(sim: Simulation) -> None:
    """Run to the end with no failures, committing after every batch like the shard does."""
    while sim.unread():
        sim.ingest(sim.unread())
    while True:
        for lane in sim.takeable_lanes():
            sim.take(lane, sim.batch_size)
        if not sim.inc.in_flight:
            break
        for lane in list(sim.inc.in_flight):
            sim.advance(lane, len(sim.inc.in_flight[lane].positions))
            sim.commit()
            sim.check_invariants()
    sim.commit()
    sim.check_invariants()


PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(streams(), st.integers(1, 10), st.data())
def test_random_runs_keep_order_low_water_and_lose_nothing(
    stream: tuple[list[Record], int, dict[str, int] | None],
    batch_size: int,
    data: st.DataObject,
) -> None:
    records, factor, routing = stream
    sim = Simulation(records, factor, routing, batch_size)
    stuck = data.draw(st.frozensets(st.integers(0, factor - 1)), label="stuck")
    sim.inc.stuck = stuck
    drive(data, sim, data.draw(st.integers(0, 150), label="steps"), crashes=True)
    sim.crash(frozenset())  # a last crash at an arbitrary point, then run to the end
    drain(sim)
    sim.check_end()


@PROPERTY_SETTINGS
@given(streams(), st.integers(1, 10), st.data())
def test_without_crashes_each_record_is_delivered_once(
    stream: tuple[list[Record], int, dict[str, int] | None],
    batch_size: int,
    data: st.DataObject,
) -> None:
    records, factor, routing = stream
    sim = Simulation(records, factor, routing, batch_size)
    drive(data, sim, data.draw(st.integers(0, 150), label="steps"), crashes=False)
    drain(sim)
    sim.check_end()
    assert all(len(d) == 1 for d in sim.deliveries.values())
    assert len(sim.deliveries) == len(records)


@PROPERTY_SETTINGS
@given(streams(), st.data())
def test_a_stuck_lane_holds_the_checkpoint_below_its_first_record(
    stream: tuple[list[Record], int, dict[str, int] | None], data: st.DataObject
) -> None:
    """Every other lane runs to its end; the checkpoint stops just below the stuck batch."""
    records, factor, routing = stream
    sim = Simulation(records, factor, routing, batch_size=data.draw(st.integers(1, 10)))
    sim.ingest(sim.unread())
    takeable = sim.takeable_lanes()
    if not takeable:
        return
    stuck = data.draw(st.sampled_from(takeable))
    sim.inc.stuck = frozenset({stuck})
    sim.take(stuck, sim.batch_size)
    first_stuck = sim.inc.in_flight[stuck].positions[0]
    while True:
        lanes = [n for n in sim.takeable_lanes() if n != stuck]
        for lane in lanes:
            sim.take(lane, sim.batch_size)
        for lane in sim.advanceable_lanes():
            sim.advance(lane, len(sim.inc.in_flight[lane].positions))
            sim.commit()
            sim.check_invariants()
        if not lanes and not sim.advanceable_lanes():
            break
    sim.commit()
    assert sim.checkpoint_position() == first_stuck - 1
    assert sim.inc.scheduler.busy_lanes() == 1
    assert sim.inc.scheduler.buffered == len(records) - first_stuck


# -- examples --------------------------------------------------------------------------------


def two_lane_scheduler(keys: str) -> tuple[ShardScheduler, list[Record]]:
    """Keys 'a' go to lane 0 and 'b' to lane 1."""
    records = make_records(list(keys))
    scheduler = ShardScheduler(2, lane_of=lambda key: 0 if key == "a" else 1)
    scheduler.ingest(records)
    return scheduler, records


def test_factor_one_batches_and_checkpoints_in_order() -> None:
    records = make_records(["k"] * 5)
    scheduler = ShardScheduler(1)
    scheduler.ingest(records[:2])
    scheduler.ingest(records[2:])
    lane = scheduler.lanes[0]
    batch = lane.take(3)
    assert batch.records == records[:3]
    assert list(batch.indices) == [0, 1, 2]
    assert scheduler.update_low_water() is None  # nothing finished yet
    assert scheduler.done_sequence is None
    lane.finish(batch)
    assert scheduler.update_low_water() == records[2].sequence_number
    assert scheduler.update_low_water() is None  # did not move
    assert scheduler.buffered == 2
    lane.finish(lane.take(10))
    assert scheduler.update_low_water() == records[4].sequence_number
    assert scheduler.buffered == 0
    assert scheduler.highest_sequence == records[4].sequence_number


def test_a_lane_far_ahead_does_not_move_the_checkpoint() -> None:
    scheduler, records = two_lane_scheduler("abbbbb")
    slow = scheduler.lanes[0].take(10)
    fast = scheduler.lanes[1]
    fast.finish(fast.take(10))
    assert scheduler.update_low_water() is None
    assert scheduler.low_water_index() == -1
    assert scheduler.buffered == 6
    scheduler.lanes[0].finish(slow)
    assert scheduler.update_low_water() == records[-1].sequence_number


def test_the_checkpoint_stops_below_the_oldest_unfinished_record() -> None:
    scheduler, records = two_lane_scheduler("bbabab")
    lane_b = scheduler.lanes[1]
    lane_b.finish(lane_b.take(2))  # indices 0, 1
    first_a = scheduler.lanes[0].take(1)  # index 2, still in flight
    assert scheduler.update_low_water() == records[1].sequence_number
    lane_b.finish(lane_b.take(10))  # indices 3, 5
    assert scheduler.update_low_water() is None
    scheduler.lanes[0].finish(first_a)
    assert scheduler.update_low_water() == records[3].sequence_number  # 4 is still buffered


def test_partial_advance_moves_the_checkpoint_within_a_batch() -> None:
    records = make_records(["k"] * 6)
    scheduler = ShardScheduler(1)
    scheduler.ingest(records)
    lane = scheduler.lanes[0]
    batch = lane.take(6)
    lane.advance(batch, 0)
    assert scheduler.update_low_water() is None
    lane.advance(batch, 4)
    assert lane.in_flight is batch  # the rest of the batch is still the lane's business
    assert scheduler.update_low_water() == records[3].sequence_number
    with pytest.raises(RuntimeError, match="already has a batch in flight"):
        lane.take(1)
    lane.advance(batch, 6)
    assert lane.in_flight is None
    assert scheduler.update_low_water() == records[5].sequence_number


def test_one_batch_in_flight_per_lane_and_advance_checks_the_batch() -> None:
    scheduler, _ = two_lane_scheduler("aab")
    lane = scheduler.lanes[0]
    batch = lane.take(1)
    with pytest.raises(RuntimeError, match="already has a batch in flight"):
        lane.take(1)
    with pytest.raises(RuntimeError, match="not in flight"):
        scheduler.lanes[1].advance(batch, 1)
    lane.finish(batch)
    lane.finish(lane.take(1))
    with pytest.raises(RuntimeError, match="no records to take"):
        lane.take(1)


def test_a_batch_spans_several_reads_of_a_lane() -> None:
    records = make_records(list("abababab"))
    scheduler = ShardScheduler(2, lane_of=lambda key: 0 if key == "a" else 1)
    for i in range(0, 8, 3):
        scheduler.ingest(records[i : i + 3])
    batch = scheduler.lanes[0].take(3)
    assert [r.sequence_number for r in batch.records] == [
        records[i].sequence_number for i in (0, 2, 4)
    ]
    assert list(batch.indices) == [0, 2, 4]
    assert scheduler.lanes[0].count == 1
    assert scheduler.lanes[0].peek(5) == [records[6]]


def test_dropping_buffered_records_never_checkpoints_past_them() -> None:
    scheduler, records = two_lane_scheduler("ababab")
    lane_a, lane_b = scheduler.lanes
    batch = lane_a.take(1)  # index 0
    lane_b.finish(lane_b.take(1))  # index 1
    assert scheduler.drop_buffered() == 4  # indices 2..5, never handed out
    lane_a.finish(batch)
    assert scheduler.update_low_water() == records[1].sequence_number
    assert scheduler.low_water_index() == 1
    assert scheduler.buffered == 4


def test_the_default_lane_of_is_stable_and_in_range() -> None:
    lane_of = default_lane_of(7)
    for key in ["a", "b", "üñí", "", "x" * 256]:
        assert 0 <= lane_of(key) < 7
        assert lane_of(key) == lane_of(key)
    with pytest.raises(ValueError, match="factor"):
        ShardScheduler(0)


def test_empty_reads_change_nothing() -> None:
    scheduler = ShardScheduler(3)
    scheduler.ingest([])
    assert scheduler.next_index == 0
    assert scheduler.buffered == 0
    assert scheduler.update_low_water() is None
    assert scheduler.highest_sequence is None


# -- filtered-out records (FilterCriteria) ------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=60),
    keep_bits=st.lists(st.booleans(), min_size=60, max_size=60),
    factor=st.integers(1, 4),
    batch_size=st.integers(1, 5),
    chunk=st.integers(1, 20),
    order=st.randoms(use_true_random=False),
)
def test_filtered_out_records_are_never_delivered_and_never_hold_the_checkpoint(
    keys: list[str],
    keep_bits: list[bool],
    factor: int,
    batch_size: int,
    chunk: int,
    order: random.Random,
) -> None:
    records = make_records(keys)
    keep = keep_bits[: len(records)]
    scheduler = ShardScheduler(factor)
    delivered: list[int] = []  # stream positions, in the order invoked
    finished: set[int] = set()
    position = {r.sequence_number: i for i, r in enumerate(records)}
    read = 0
    for _ in range(10 * len(records) + 20):  # bounded: every step reads or finishes something
        if read < len(records) and order.random() < 0.5:
            scheduler.ingest(records[read : read + chunk], keep[read : read + chunk])
            read = min(len(records), read + chunk)
        lanes = [lane for lane in scheduler.lanes if lane.in_flight is not None or lane.count]
        if not lanes:
            if read == len(records):
                break
            continue
        lane = order.choice(lanes)
        if lane.in_flight is None:
            batch = lane.take(batch_size)
            delivered.extend(position[r.sequence_number] for r in batch.records)
        else:
            batch = lane.in_flight
            lane.finish(batch)
            finished.update(position[r.sequence_number] for r in batch.records)
        scheduler.update_low_water()
        low = scheduler.done_index
        # never past a kept record that is not finished
        assert all(i in finished for i in range(low + 1) if keep[i]), (low, finished)
    assert read == len(records)
    kept = [i for i in range(len(records)) if keep[i]]
    assert sorted(delivered) == kept  # every kept record once, no filtered-out one
    for key in set(keys):  # per-key order among kept records
        mine = [i for i in delivered if records[i].partition_key == key]
        assert mine == sorted(mine)
    assert scheduler.update_low_water() in (None, records[-1].sequence_number)
    assert scheduler.done_index == len(records) - 1  # filtered-out tail passed too
    assert scheduler.buffered == 0
