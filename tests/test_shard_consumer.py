"""A shard consumer built alone, from the small objects of pipeline/_ports (no mapping runner):
it delivers a shard, and a checkpoint write that is refused (fencing: another worker holds the
lease now) stops it at the next batch boundary with nothing more written or invoked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from kinesis_esm import CallableFunction, EventSourceMappingConfig, MappingCounters, MemoryStream
from kinesis_esm.pipeline import (
    BatchProcessor,
    MappingIdentity,
    PollSettings,
    RetrySettings,
    ShardConsumer,
)
from kinesis_esm.source import IteratorPosition
from tests.support.kinesis import wait_for

pytestmark = pytest.mark.anyio
ARN = "arn:aws:kinesis:us-east-1:000000000000:stream/alone"


@dataclass
class Status:
    results: list[str] = field(default_factory=list)

    def source_problem(self, exc: Exception) -> None:
        self.results.append(f"PROBLEM: {exc}")

    def source_recovered(self) -> None:
        pass

    def processing_result(self, result: str) -> None:
        self.results.append(result)


@dataclass
class Committer:
    """Accepts ``allowed`` writes, then refuses every one (the lease was taken)."""

    allowed: int
    written: list[str] = field(default_factory=list)
    refused: int = 0

    async def commit(
        self, shard_id: str, sequence: str, *, window_state: bytes | None = None
    ) -> bool:
        if len(self.written) >= self.allowed:
            self.refused += 1
            return False
        self.written.append(sequence)
        return True


async def consumer(stream: MemoryStream, committer: Committer, handler: Any) -> ShardConsumer:
    config = EventSourceMappingConfig(
        function_name="f", event_source_arn=ARN, starting_position="TRIM_HORIZON", batch_size=5
    )
    identity = MappingIdentity("u", config, "arn:aws:iam::000000000000:role/r")
    counters, status = MappingCounters(), Status()
    function = CallableFunction(handler, name="f", timeout=5)
    processor = BatchProcessor(
        identity, function, counters=counters, status=status, retry_settings=RetrySettings()
    )
    (info,) = await stream.list_shards(ARN)
    return ShardConsumer(
        info,
        IteratorPosition("TRIM_HORIZON"),
        None,
        identity=identity,
        source=stream,
        committer=committer,
        handler=processor,
        counters=counters,
        status=status,
        poll_settings=PollSettings(base_interval=0.05, min_interval=0),
    )


async def run_until(shard: ShardConsumer, done: Any, limit: float = 10) -> None:
    """Run the shard until ``done()`` holds (bounded), then stop it."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(shard.run)
        await wait_for(done, limit, message="the shard's condition")
        shard.stop()


async def test_a_consumer_built_alone_delivers_and_checkpoints() -> None:
    stream = MemoryStream(ARN)
    written = [stream.put(f"k{i}", b"x") for i in range(23)]
    seen: list[str] = []
    committer = Committer(allowed=100)
    shard = await consumer(
        stream, committer, lambda e, c: seen.extend(r["eventID"] for r in e["Records"])
    )
    last = written[-1][1]
    await run_until(shard, lambda: shard.checkpoint == last)
    assert seen == [f"{s}:{q}" for s, q in written]
    assert committer.written[-1] == last


async def test_a_refused_checkpoint_stops_the_shard_at_the_next_batch_boundary() -> None:
    stream = MemoryStream(ARN)
    for i in range(40):
        stream.put(f"k{i}", b"x")
    batches: list[int] = []
    committer = Committer(allowed=2)  # two batches checkpointed, then the lease is gone
    shard = await consumer(stream, committer, lambda e, c: batches.append(len(e["Records"])))
    with anyio.fail_after(10):
        ended = await shard.run()  # returns by itself: the refused write stopped it
    assert not ended and shard.lost
    assert len(committer.written) == 2 and committer.refused == 1
    assert len(batches) == 3  # the batch whose checkpoint was refused, and nothing after it
    assert shard.checkpoint == committer.written[-1]  # what the store holds, not past it
