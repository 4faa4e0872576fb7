"""Capped exponential back-off with full jitter."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    def __init__(self, initial: float, maximum: float, *, jitter: bool = True) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.attempts = 0

    def next_delay(self) -> float:
        ceiling = float(min(self.maximum, self.initial * (2.0**self.attempts)))
        self.attempts = min(self.attempts + 1, 64)
        if not self.jitter:
            return ceiling
        # "equal jitter": never less than half the ceiling, so retries always back off
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempts = 0
