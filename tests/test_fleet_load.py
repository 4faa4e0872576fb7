"""The load figures a fleet worker publishes: long windows and hysteresis, so the balancer
sees steady numbers (pure: no clock, no I/O)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kinesis_esm.engine._load import LoadMeter


def feed(
    meter: LoadMeter, rate: float, seconds: float, every: float, start: float = 0.0
) -> list[float]:
    published = []
    steps = int(seconds / every)
    for step in range(1, steps + 1):
        now = start + step * every
        value = meter.sample(math.floor(rate * now), now)
        if value is not None:
            published.append(value)
    return published


def test_nothing_is_published_before_the_window_is_full_at_low_rates() -> None:
    meter = LoadMeter(window=60, min_records=1000)
    assert feed(meter, 4.0, 59, 0.5) == []
    assert feed(meter, 4.0, 2, 0.5, start=59)  # 60 s reached


def test_a_high_rate_is_published_once_enough_records_and_seconds_were_seen() -> None:
    meter = LoadMeter(window=60, min_records=1000, min_seconds=30)
    assert feed(meter, 2000.0, 29.5, 0.25) == []  # enough records, not yet enough time
    published = feed(meter, 2000.0, 2.0, 0.25, start=29.5)
    assert published == [pytest.approx(2000.0, rel=0.01)]


def test_the_burst_of_a_shard_just_taken_is_not_its_load() -> None:
    """A new owner's reader fills its buffer at once (10,000 records in the first half
    second), then reads at the shard's rate: published, that burst would look like 20,000
    records/s and move leases. After min_seconds the figure is the rate."""
    meter = LoadMeter(window=60, min_records=1000, min_seconds=30)
    published = [meter.sample(0, 0.1), meter.sample(10_000, 0.5)]
    for step in range(2, 80):
        now = step * 0.5
        published.append(meter.sample(10_000 + math.floor(2500 * (now - 0.5)), now))
    values = [v for v in published if v is not None]
    assert len(values) == 1 and values[0] == pytest.approx(2500, rel=0.25)


def test_a_steady_rate_is_published_once_and_a_real_change_again() -> None:
    meter = LoadMeter(window=10, min_records=100, change=0.25)
    assert len(feed(meter, 50.0, 60, 0.5)) == 1
    later = feed(meter, 200.0, 30, 0.5, start=60)
    assert later and later[-1] == pytest.approx(200.0, rel=0.1)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        LoadMeter(window=0)
    with pytest.raises(ValueError):
        LoadMeter(change=1.0)


@given(
    rate=st.floats(min_value=0.1, max_value=10_000),
    every=st.floats(min_value=0.1, max_value=5.0),
    jitter=st.lists(st.floats(min_value=-0.2, max_value=0.2), min_size=50, max_size=400),
)
def test_a_constant_rate_with_noisy_samples_is_published_at_most_once(
    rate: float, every: float, jitter: list[float]
) -> None:
    """Sampling times jitter (renewal rounds fire early, a loop is late); counts are whole
    records. The published figure settles: no flapping that would move leases around."""
    meter = LoadMeter(window=30, min_records=500, change=0.25)
    published = []
    now = 0.0
    for shift in jitter:
        now += every * (1 + shift)
        value = meter.sample(math.floor(rate * now), now)
        if value is not None:
            published.append(value)
    assert len(published) <= 1
    for value in published:
        assert value == pytest.approx(rate, rel=0.3, abs=1.0)


def ramp(meter: LoadMeter, low: float, high: float, start: float, seconds: float) -> list[float]:
    """Sample every 0.5 s while the rate climbs linearly from low to high; counts integrate."""
    published, now, count = [], start, meter._samples[-1][1] if meter._samples else 0
    for _ in range(int(seconds / 0.5)):
        rate = low + (high - low) * (now + 0.5 - start) / seconds
        now += 0.5
        count += math.floor(rate * 0.5)
        value = meter.sample(count, now)
        if value is not None:
            published.append(value)
    return published


def test_a_ramp_publishes_nothing_until_the_rate_settles() -> None:
    """A backlog released: 2,500 records/s per shard climbing to 15,000 over 10 s. Figures
    published mid-ramp differ per shard only by when they were taken, and move leases."""
    meter = LoadMeter(window=20, min_records=1000, change=0.25)
    steady = ramp(meter, 2500, 2500, 0.0, 30)
    assert steady == [pytest.approx(2500, rel=0.05)]
    assert ramp(meter, 2500, 15_000, 30.0, 10) == []
    after = ramp(meter, 15_000, 15_000, 40.0, 40)
    assert len(after) == 1 and after[0] == pytest.approx(15_000, rel=0.25)


def test_a_step_is_published_once_it_has_passed_through_the_window() -> None:
    meter = LoadMeter(window=10, min_records=100, change=0.25)
    assert len(ramp(meter, 50, 50, 0.0, 30)) == 1
    early = ramp(meter, 400, 400, 30.0, 4)  # the step is still passing through the window
    assert early == []
    later = ramp(meter, 400, 400, 34.0, 20)
    assert later and later[-1] == pytest.approx(400, rel=0.25)
