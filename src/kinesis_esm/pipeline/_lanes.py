"""The parallelization-factor scheduler, as pure logic.

A shard's records are numbered in read order (an *index*) and routed to one of ``factor`` lanes
by a stable hash of their partition key. Each lane hands out batches strictly in order and has
at most one batch in flight, so two records with one key are never invoked out of order.

The shard's checkpoint is the *low-water mark*: the highest index at or below which every
record is done. It is ``min(lowest unfinished index of each lane) - 1``, or the last index read
when every lane is idle and empty. A lane far ahead never moves it past a lane still working.

No I/O and no awaiting here: the shard consumer drives it, and tests drive it directly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice

from ..events._record import Record

__all__ = ["Batch", "Lane", "ShardScheduler"]


@dataclass(slots=True)
class _Segment:
    records: list[Record]
    indices: Sequence[int]  # a range when the records are contiguous in the shard
    start: int = 0  # records before it were already taken into batches


@dataclass(slots=True)
class Batch:
    """Records handed to the function together, with their shard indices."""

    lane: int
    records: list[Record]
    indices: Sequence[int]

    def __len__(self) -> int:
        return len(self.records)


class Lane:
    """One lane's FIFO of records, and the batch it has in flight."""

    __slots__ = (
        "_segments",
        "count",
        "dropped_from",
        "in_flight",
        "lowest_unfinished_in_flight",
        "number",
    )

    def __init__(self, number: int) -> None:
        self.number = number
        self._segments: deque[_Segment] = deque()
        self.count = 0  # records buffered, not yet taken into a batch
        self.in_flight: Batch | None = None
        self.lowest_unfinished_in_flight = 0
        self.dropped_from: int | None = None  # first record dropped unfinished (drop_buffered)

    def append(self, records: list[Record], indices: Sequence[int]) -> None:
        if records:
            self._segments.append(_Segment(records, indices))
            self.count += len(records)

    def lowest_unfinished(self) -> int | None:
        """Index of the first record of this lane that is not done, or None."""
        if self.in_flight is not None:
            low = self.lowest_unfinished_in_flight
        elif self._segments:
            head = self._segments[0]
            low = head.indices[head.start]
        else:
            return self.dropped_from
        dropped = self.dropped_from
        return low if dropped is None or low < dropped else dropped

    def peek(self, limit: int) -> list[Record]:
        """Up to ``limit`` buffered records from the front, without taking them."""
        segments = self._segments
        if not segments:
            return []
        head = segments[0]
        start = head.start
        if start + limit <= len(head.records) or len(segments) == 1:  # the common case
            return head.records[start : start + limit]
        out = head.records[start:]
        for seg in islice(segments, 1, None):
            out.extend(seg.records[seg.start : seg.start + limit - len(out)])
            if len(out) >= limit:
                break
        return out

    def take(self, count: int) -> Batch:
        """Take the first ``count`` buffered records as the lane's in-flight batch."""
        if self.in_flight is not None:
            raise RuntimeError(f"lane {self.number} already has a batch in flight")
        count = min(count, self.count)
        if count <= 0:
            raise RuntimeError(f"lane {self.number} has no records to take")
        head = self._segments[0]
        if head.start + count <= len(head.records):  # the common case: one segment
            records = head.records[head.start : head.start + count]
            indices = head.indices[head.start : head.start + count]
            head.start += count
            if head.start == len(head.records):
                self._segments.popleft()
        else:
            records = []
            index_list: list[int] = []
            while len(records) < count:
                seg = self._segments[0]
                n = min(count - len(records), len(seg.records) - seg.start)
                records.extend(seg.records[seg.start : seg.start + n])
                index_list.extend(seg.indices[seg.start : seg.start + n])
                seg.start += n
                if seg.start == len(seg.records):
                    self._segments.popleft()
            indices = index_list
        self.count -= count
        batch = Batch(self.number, records, indices)
        self.in_flight = batch
        self.lowest_unfinished_in_flight = indices[0]
        return batch

    def advance(self, batch: Batch, done: int) -> None:
        """The first ``done`` records of the in-flight batch are finished; the rest are not."""
        if batch is not self.in_flight:
            raise RuntimeError("advance() on a batch that is not in flight")
        if done >= len(batch.indices):
            self.in_flight = None
        else:
            self.lowest_unfinished_in_flight = batch.indices[done]

    def finish(self, batch: Batch) -> None:
        self.advance(batch, len(batch.indices))

    def drop_buffered(self) -> int:
        """Forget buffered records not yet taken (on stop); returns how many.

        They were never handled, so the low-water mark stays below the first of them for good:
        after a restart they are read and delivered again.
        """
        if self._segments and self.dropped_from is None:
            head = self._segments[0]
            self.dropped_from = head.indices[head.start]
        dropped = self.count
        self._segments.clear()
        self.count = 0
        return dropped


def default_lane_of(factor: int) -> Callable[[str], int]:
    # Python's str hash is stable within a process, which is all per-key order needs: lanes are
    # rebuilt from the checkpoint after a restart.
    return lambda key: hash(key) % factor


class ShardScheduler:
    """Routes one shard's records to lanes and tracks the low-water mark."""

    def __init__(self, factor: int, lane_of: Callable[[str], int] | None = None) -> None:
        if factor < 1:
            raise ValueError("factor must be >= 1")
        self.factor = factor
        self.lanes = [Lane(i) for i in range(factor)]
        self._lane_of = lane_of or default_lane_of(factor)
        self._hash_routing = lane_of is None  # ingest inlines default_lane_of
        self.next_index = 0  # index the next record read will get
        self.done_index = -1  # low-water mark: every record at or below it is done
        self.done_sequence: str | None = None  # its sequence number
        self.highest_sequence: str | None = None  # the last record read
        self._chunks: deque[tuple[int, list[Record]]] = deque()  # kept for seq lookups

    @property
    def buffered(self) -> int:
        """Records read and not yet below the low-water mark (what memory holds)."""
        return self.next_index - 1 - self.done_index

    def ingest(self, records: list[Record], keep: Sequence[bool] | None = None) -> None:
        """Number ``records`` in read order and route them to lanes. With ``keep``, a record
        whose flag is False (filtered out) takes its index but goes to no lane: it counts as
        done, so the low-water mark passes it as soon as everything before it is done."""
        if not records:
            return
        base = self.next_index
        count = len(records)
        self.next_index = base + count
        self._chunks.append((base, records))
        self.highest_sequence = records[-1].record_id
        if keep is not None:
            self._ingest_kept(records, keep, base)
            return
        factor = self.factor
        if factor == 1:
            self.lanes[0].append(records, range(base, base + count))
            return
        # The one per-record loop of the scheduler: bound appends, and default_lane_of inlined
        # (a call per record costs as much as the rest of the loop body).
        lane_records: list[list[Record]] = [[] for _ in range(factor)]
        lane_indices: list[list[int]] = [[] for _ in range(factor)]
        add_record = [lst.append for lst in lane_records]
        add_index = [lst.append for lst in lane_indices]
        if self._hash_routing:
            for index, record in enumerate(records, base):
                lane = hash(record.partition_key) % factor
                add_record[lane](record)
                add_index[lane](index)
        else:
            lane_of = self._lane_of
            for index, record in enumerate(records, base):
                lane = lane_of(record.partition_key)
                add_record[lane](record)
                add_index[lane](index)
        for lane_obj, recs, indices in zip(self.lanes, lane_records, lane_indices, strict=True):
            lane_obj.append(recs, indices)

    def _ingest_kept(self, records: list[Record], keep: Sequence[bool], base: int) -> None:
        factor = self.factor
        lane_records: list[list[Record]] = [[] for _ in range(factor)]
        lane_indices: list[list[int]] = [[] for _ in range(factor)]
        lane_of = self._lane_of
        for index, (record, kept) in enumerate(zip(records, keep, strict=True), base):
            if kept:
                lane = lane_of(record.partition_key) if factor > 1 else 0
                lane_records[lane].append(record)
                lane_indices[lane].append(index)
        for lane_obj, recs, indices in zip(self.lanes, lane_records, lane_indices, strict=True):
            lane_obj.append(recs, indices)

    def low_water_index(self) -> int:
        low = self.next_index
        for lane in self.lanes:
            lane_low = lane.lowest_unfinished()
            if lane_low is not None and lane_low < low:
                low = lane_low
        return low - 1

    def update_low_water(self) -> str | None:
        """Move the low-water mark; return the new checkpoint sequence if it moved."""
        low = self.low_water_index()
        if low <= self.done_index:
            return None
        chunks = self._chunks
        while chunks and chunks[0][0] + len(chunks[0][1]) <= low:
            chunks.popleft()  # entirely below the new mark: no longer needed
        base, records = chunks[0]
        self.done_index = low
        self.done_sequence = records[low - base].record_id
        return self.done_sequence

    def busy_lanes(self) -> int:
        return sum(1 for lane in self.lanes if lane.in_flight is not None)

    def drop_buffered(self) -> int:
        return sum(lane.drop_buffered() for lane in self.lanes)
