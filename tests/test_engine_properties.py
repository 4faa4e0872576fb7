"""Engine-level properties on the in-memory stream, drawn by hypothesis.

- Bounded memory (invariant 5): whatever the batch size, factor, bound and function speed, the
  records a shard holds never exceed ``max_buffered_records``.
- Clean stop (invariant 6) and at least once (invariant 1): stopping at any moment and starting
  again from the stored checkpoint delivers every record, and a record at or below the stored
  checkpoint was delivered before the stop.
"""

from __future__ import annotations

from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinesis_esm import (
    Engine,
    EventSourceMappingConfig,
    MemoryCheckpointStore,
    MemoryStream,
    PollSettings,
    stable_uuid,
)
from tests.support.kinesis import wait_for

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/engine-properties"
FUNCTION = "properties"
UUID = stable_uuid(FUNCTION, ARN)
FAST = PollSettings(base_interval=0.02, min_interval=0.0)


def fill(stream: MemoryStream, n: int, keys: int) -> set[tuple[str, str]]:
    return {stream.put(f"k{i % keys}", f"r{i}".encode()) for i in range(n)}


def mapping(batch_size: int, factor: int, bound: int | None = None) -> EventSourceMappingConfig:
    return EventSourceMappingConfig(
        function_name=FUNCTION,
        event_source_arn=ARN,
        starting_position="TRIM_HORIZON",
        batch_size=batch_size,
        parallelization_factor=factor,
        max_buffered_records=bound,
    )


def ids(event: dict[str, Any]) -> list[tuple[str, str]]:
    return [tuple(r["eventID"].rsplit(":", 1)) for r in event["Records"]]  # type: ignore[misc]


async def bounded_scenario(batch_size: int, factor: int, extra: int, delay: float) -> None:
    stream = MemoryStream(ARN, 1)
    written = fill(stream, 300, keys=17)
    bound = batch_size + extra
    peak = 0
    seen: set[tuple[str, str]] = set()
    engine_ref: list[Engine] = []

    async def handler(event: dict[str, Any], context: object) -> None:
        nonlocal peak
        for shard in engine_ref[0].mapping_statistics(UUID).shards:
            peak = max(peak, shard.records_buffered)
        seen.update(ids(event))
        await anyio.sleep(delay)

    async with Engine(
        source=stream, checkpoint_store=MemoryCheckpointStore(), poll_settings=FAST
    ) as engine:
        engine_ref.append(engine)
        await engine.add_mapping(mapping(batch_size, factor, bound), handler)
        await wait_for(lambda: seen >= written, 20, message="every record")
    assert 0 < peak <= bound


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch_size=st.integers(1, 20),
    factor=st.integers(1, 4),
    extra=st.integers(0, 40),
    delay=st.sampled_from([0.0, 0.001, 0.003]),
)
def test_buffered_records_never_exceed_the_bound(
    batch_size: int, factor: int, extra: int, delay: float
) -> None:
    anyio.run(bounded_scenario, batch_size, factor, extra, delay)


async def stop_scenario(batch_size: int, factor: int, stop_after: int) -> None:
    stream = MemoryStream(ARN, 2)
    written = fill(stream, 120, keys=11)
    store = MemoryCheckpointStore()
    before: set[tuple[str, str]] = set()
    after: set[tuple[str, str]] = set()
    phase = before

    async def handler(event: dict[str, Any], context: object) -> None:
        phase.update(ids(event))
        await anyio.sleep(0.001)

    async with Engine(source=stream, checkpoint_store=store, poll_settings=FAST) as engine:
        await engine.add_mapping(mapping(batch_size, factor), handler)
        await wait_for(lambda: len(before) >= stop_after, 10, message="some progress")
    checkpoints = await store.get_checkpoints(UUID)
    for shard_id, checkpoint in checkpoints.items():
        below = {(s, q) for s, q in written if s == shard_id and int(q) <= int(checkpoint)}
        assert below <= before, "the checkpoint passed a record that was not delivered"
    phase = after
    async with Engine(source=stream, checkpoint_store=store, poll_settings=FAST) as engine:
        await engine.add_mapping(mapping(batch_size, factor), handler)
        await wait_for(lambda: before | after >= written, 10, message="the rest after restart")
    for shard_id, checkpoint in checkpoints.items():  # nothing at or below it came again
        again = {(s, q) for s, q in after if s == shard_id and int(q) <= int(checkpoint)}
        assert again == set()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch_size=st.integers(1, 15), factor=st.integers(1, 4), stop_after=st.integers(1, 110))
def test_a_stop_at_any_moment_then_restart_loses_nothing(
    batch_size: int, factor: int, stop_after: int
) -> None:
    anyio.run(stop_scenario, batch_size, factor, stop_after)
