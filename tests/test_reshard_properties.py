"""Invariant 3 (parent before child) and invariant 1 (nothing lost) under random resharding.

Hypothesis draws a sequence of writes, splits and merges applied to an in-memory stream while a
mapping reads it. Keys move the way Kinesis hash ranges move them: a closed parent's keys go to
its children only. Afterwards every record was delivered, no child record came before its
parents were fully delivered, and each key's records were first delivered in write order.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

import anyio
import anyio.lowlevel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinesis_esm import (
    Engine,
    EventSourceMappingConfig,
    MemoryCheckpointStore,
    MemoryStream,
    PollSettings,
    RetrySettings,
)
from tests.support.faulty_source import Deliveries
from tests.support.kinesis import wait_for

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/reshard-properties"
FAST = PollSettings(base_interval=0.02, min_interval=0.005, error_backoff_initial=0.01)
Op = tuple[Literal["put", "split", "merge"], int]

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(1, 25)),
        st.tuples(st.just("split"), st.integers(0, 50)),
        st.tuples(st.just("merge"), st.integers(0, 50)),
    ),
    min_size=1,
    max_size=8,
)


class Topology:
    """Which open shard each key writes to, moved along shard lineage like hash ranges."""

    def __init__(self, stream: MemoryStream, keys: int) -> None:
        self.stream = stream
        open_shards = stream.shard_ids
        self.shard_of = {f"k{i}": open_shards[i % len(open_shards)] for i in range(keys)}
        self.open = list(open_shards)
        self.counts: defaultdict[str, int] = defaultdict(int)
        self.written: set[tuple[str, str]] = set()

    def put(self, n: int) -> None:
        keys = sorted(self.shard_of)
        for i in range(n):
            key = keys[i % len(keys)]
            data = f"{key}:{self.counts[key]}".encode()
            self.counts[key] += 1
            self.written.add(self.stream.put(key, data, shard_id=self.shard_of[key]))

    def split(self, pick: int) -> None:
        parent = self.open[pick % len(self.open)]
        children = self.stream.split(parent)
        moved = [k for k, s in sorted(self.shard_of.items()) if s == parent]
        for i, key in enumerate(moved):
            self.shard_of[key] = children[i % 2]
        self.open.remove(parent)
        self.open.extend(children)

    def merge(self, pick: int) -> None:
        if len(self.open) < 2:
            return
        first = self.open[pick % len(self.open)]
        second = self.open[(pick + 1) % len(self.open)]
        child = self.stream.merge(first, second)
        for key, shard in self.shard_of.items():
            if shard in (first, second):
                self.shard_of[key] = child
        self.open = [s for s in self.open if s not in (first, second)] + [child]


def counter(data: bytes) -> int:
    return int(data.rsplit(b":", 1)[1])


async def scenario(ops: list[Op], factor: int) -> None:
    stream = MemoryStream(ARN, 2)
    topology = Topology(stream, keys=6)
    deliveries = Deliveries(delay=lambda _: 0.003)  # a slow function keeps parents busy
    async with Engine(
        source=stream,
        checkpoint_store=MemoryCheckpointStore(),
        poll_settings=FAST,
        retry_settings=RetrySettings(initial=0.01, maximum=0.05),
        shard_sync_interval=0.05,
    ) as engine:
        await engine.add_mapping(
            EventSourceMappingConfig(
                function_name="reshard",
                event_source_arn=ARN,
                starting_position="TRIM_HORIZON",
                batch_size=2,
                parallelization_factor=factor,
            ),
            deliveries,
        )
        for kind, value in ops:
            getattr(topology, kind)(value)
            await anyio.lowlevel.checkpoint()  # let polling interleave with the resharding
        await wait_for(
            lambda: deliveries.ids() >= topology.written, 10, message="every record delivered"
        )
    lineage = {s.shard_id: s.parents for s in await stream.list_shards(ARN)}
    assert deliveries.parent_first_violations(lineage) == []
    assert deliveries.key_order_violations(counter) == []


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, factor=st.integers(1, 3))
def test_random_resharding_keeps_parent_first_and_loses_nothing(ops: list[Op], factor: int) -> None:
    anyio.run(scenario, ops, factor)
