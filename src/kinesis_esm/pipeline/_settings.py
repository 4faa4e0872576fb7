"""Timing settings of the pipeline: polling cadence and error back-off, the idle close of a
tumbling window, batch retry back-off."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PollSettings", "RetrySettings"]


@dataclass(frozen=True, slots=True)
class PollSettings:
    base_interval: float = 1.0  # Lambda's base rate: one poll per second per shard
    min_interval: float = 0.2  # Kinesis allows five GetRecords per second per shard
    max_records_per_call: int = 10_000
    error_backoff_initial: float = 0.2
    error_backoff_max: float = 10.0
    problem_backoff_max: float = 60.0  # deleted stream, missing permission
    # tumbling windows: how long past a window's end a caught-up shard waits for more records
    # before it closes the window (Lambda waits up to 2 minutes)
    window_idle_close: float = 120.0


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Back-off between retries of a failing batch."""

    initial: float = 0.5
    maximum: float = 30.0
