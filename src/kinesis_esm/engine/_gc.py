"""Garbage-collector settings for a long-running consumer.

A large GetRecords response allocates tens of thousands of objects at once, which with the
default thresholds triggers young collections every few hundred records and, regularly, full
collections over everything start-up allocated (clients, modules). Measured in the benchmarks:
the Lambda-event path goes from about 5.0 to 2.8 us per record. This is process-wide, so the
library never does it on its own: the daemon and the demo call it, embedders may.
"""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]

YOUNG_THRESHOLD = 20_000


def tune_gc(young_threshold: int = YOUNG_THRESHOLD) -> None:
    """Freeze what exists now out of future collections, and collect the young generation less
    often. Call once, after start-up."""
    gc.collect()
    gc.freeze()
    first, second, third = gc.get_threshold()
    gc.set_threshold(max(first, young_threshold), second, third)
