"""The load a worker publishes for a shard: steady figures, or the balancer churns.

The balancer moves leases when workers' loads differ by more than its tolerance (10 % of the
mean). A rate measured over one renewal interval is noise at ordinary rates (4 records/s over
0.7 s is 2 or 3 records), and noise above the tolerance moves leases back and forth. So a rate
is measured over at least `min_seconds` (a shard just taken starts with a burst: its buffer
filling at once), long enough to hold `min_records` records (at most `window` seconds), and
published only when it differs from the published one by more than `change`
and by more than counting noise (at low rates a few records more or less are no change).

A new figure is also held back while the rate is still moving: when the window's last quarter
disagrees with the whole (a ramp, or a step not yet through the window). Otherwise, in
a ramp (a backlog released, traffic growing), each shard publishes its climbing rate at its
own moments, the workers' sums differ by more than the tolerance for a while, and leases move
that a moment later would not have; the benchmark's fleet made two such moves per window
before this rule. The balancer sees the last steady figures until the rate settles.
Pure: the caller passes the count and its clock.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["LoadMeter"]


class LoadMeter:
    def __init__(
        self,
        *,
        window: float = 60.0,
        min_records: int = 1000,
        change: float = 0.25,
        min_seconds: float = 30.0,
    ) -> None:
        if not window > 0 or min_records < 1 or not 0 < change < 1 or min_seconds < 0:
            raise ValueError(
                "window > 0, min_records >= 1, 0 < change < 1 and min_seconds >= 0 are required"
            )
        self.window = window
        self.min_seconds = min(min_seconds, window)
        self.min_records = min_records
        self.change = change
        self.published: float | None = None
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, count: int, now: float) -> float | None:
        """Record the shard's record count at `now`; the rate to publish, or None for none."""
        samples = self._samples
        samples.append((now, count))
        # keep one sample at or before the window's start, so the window can be complete
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        start, first = samples[0]
        elapsed, records = now - start, count - first
        if elapsed <= 0 or elapsed < self.min_seconds:
            return None
        if records < self.min_records and elapsed < self.window:
            return None
        rate = max(0.0, records / elapsed)
        published = self.published
        if published is not None:
            moved = abs(rate - published)
            # both a relative change and one beyond counting noise (3 sigma, Poisson)
            if moved <= self.change * max(rate, published):
                return None
            if moved * elapsed <= 3 * math.sqrt(max(records, published * elapsed, 1.0)):
                return None
        if not self._steady(now, count, rate):
            return None
        self.published = rate
        return rate

    def _steady(self, now: float, count: int, rate: float) -> bool:
        """Whether the rate over the window's last quarter agrees with the whole's."""
        samples = self._samples
        cut = now - (now - samples[0][0]) / 4
        start, first = next(((t, c) for t, c in reversed(samples) if t <= cut), samples[0])
        elapsed, records = now - start, count - first
        if elapsed <= 0:
            return True
        recent = max(0.0, records / elapsed)
        moved = abs(recent - rate)
        return moved <= self.change * max(recent, rate) or moved * elapsed <= 3 * math.sqrt(
            max(records, rate * elapsed, 1.0)
        )
