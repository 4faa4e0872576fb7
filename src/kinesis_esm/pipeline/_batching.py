"""Cutting batches: at most BatchSize records, within Lambda's 6 MB event, at least one record.

A single record too large for any 6 MB event (streams allow records up to 10 MiB) is sent in a
batch of its own: a local function has no 6 MB transport limit, and dropping it would lose data.
The consumer counts these as ``oversized_batches`` and logs them.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from operator import attrgetter

from ..events._lambda import MAX_EVENT_BYTES, record_event_size
from ..events._record import Record

__all__ = ["EVENT_ENVELOPE_BYTES", "batch_count"]

EVENT_ENVELOPE_BYTES = len('{"Records":[]}')
# Worst case of a partition key (256 characters, each escaped as \u00XX) and of two copies of a
# sequence number (128 digits each): lets the common case skip the per-record size estimate.
_WORST_KEY_AND_SEQUENCES = 256 * 6 + 2 * 128
_data_b64 = attrgetter("data_b64")
_partition_key = attrgetter("partition_key")
_sequence = attrgetter("sequence_number")


def batch_count(
    records: Sequence[Record],
    batch_size: int,
    overhead: int,
    max_bytes: int = MAX_EVENT_BYTES,
) -> int:
    """How many records from the front of ``records`` form the next batch."""
    candidates = records if len(records) <= batch_size else records[:batch_size]
    n = len(candidates)
    if n == 0:
        return 0
    data_lens = list(map(len, map(_data_b64, candidates)))
    if (
        EVENT_ENVELOPE_BYTES + sum(data_lens) + n * (overhead + _WORST_KEY_AND_SEQUENCES)
        <= max_bytes
    ):
        return n
    keys = list(map(_partition_key, candidates))
    joined = "".join(keys)
    if joined.isascii() and joined.isprintable() and '"' not in joined and "\\" not in joined:
        # keys serialize as they are: each record's size is plain arithmetic, and the cut is a
        # binary search over prefix sums instead of a per-record estimate
        sizes = [
            overhead + d + k + 2 * q
            for d, k, q in zip(
                data_lens, map(len, keys), map(len, map(_sequence, candidates)), strict=True
            )
        ]
        prefix = list(accumulate(sizes, initial=EVENT_ENVELOPE_BYTES))
        return max(1, bisect_right(prefix, max_bytes) - 1)
    total = EVENT_ENVELOPE_BYTES
    for count, record in enumerate(candidates):
        size = record_event_size(record, overhead)
        if count and total + size > max_bytes:
            return count
        total += size
    return n


def event_bytes(records: Sequence[Record], overhead: int) -> int:
    """Upper bound of the serialized event of ``records``."""
    return EVENT_ENVELOPE_BYTES + sum(record_event_size(r, overhead) for r in records)
