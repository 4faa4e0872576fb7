"""tune_gc: fewer young collections, and start-up objects frozen out of full collections."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from kinesis_esm import tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_raises_the_young_threshold_and_freezes(restore_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc(young_threshold=12_345)
    assert gc.get_threshold() == (12_345, 10, 10)
    assert gc.get_freeze_count() > 0


def test_tune_gc_never_lowers_a_higher_threshold(restore_gc: None) -> None:
    gc.set_threshold(50_000, 10, 10)
    tune_gc(young_threshold=20_000)
    assert gc.get_threshold()[0] == 50_000
