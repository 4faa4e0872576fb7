"""Idle cost: the CPU share of one core while polling 100 and 500 idle shards at the base rate.

The replay server answers every GetRecords with no records, so each shard is polled once per
second (Lambda's base rate). After a warm-up, the process's CPU time (``time.process_time``) is
read over a fixed wall interval; the consumer is pinned to one core, so CPU seconds per wall
second is the share of that core.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from aiobotocore.session import get_session
from botocore.config import Config

from kinesis_esm import (
    CallableFunction,
    Engine,
    EventSourceMappingConfig,
    KinesisSource,
    MemoryCheckpointStore,
)

from .harness import (
    RESULTS_DIR,
    Progress,
    Report,
    consumer_cpu,
    event_loop_name,
    median,
    pin_process,
    prepare_environment,
    run,
    server_cpu,
)
from .replay import REGION, ReplayServer, StreamSpec, shard_id

__all__ = ["main"]

GOAL_SHARDS = 500
GOAL_SHARE = 0.15
PROFILES = {"quick": (3.0, 4.0, 1), "default": (4.0, 10.0, 1), "full": (5.0, 30.0, 3)}


@dataclass(frozen=True, slots=True)
class IdleSample:
    cpu_share: float  # CPU seconds per wall second: the share of one core
    calls_per_second: float

    @property
    def cpu_us_per_call(self) -> float:
        if self.calls_per_second <= 0:
            return float("nan")
        return 1e6 * self.cpu_share / self.calls_per_second


Idler = Callable[[str, StreamSpec, float, float], Coroutine[Any, Any, IdleSample]]


async def _measure(warmup: float, interval: float, calls: Callable[[], int]) -> IdleSample:
    await anyio.sleep(warmup)
    calls0, cpu0, wall0 = calls(), time.process_time(), time.perf_counter()
    await anyio.sleep(interval)
    wall = time.perf_counter() - wall0
    return IdleSample((time.process_time() - cpu0) / wall, (calls() - calls0) / wall)


def esm_idler(*, fast_parse: bool) -> Idler:
    async def idle(url: str, spec: StreamSpec, warmup: float, interval: float) -> IdleSample:
        async def handler(event: Any, context: Any) -> None:
            return None

        source = KinesisSource(endpoint_url=url, region=REGION, fast_parse=fast_parse)
        config = EventSourceMappingConfig(
            function_name="idle", event_source_arn=spec.arn, starting_position="LATEST"
        )
        try:
            async with Engine(checkpoint_store=MemoryCheckpointStore(), source=source) as engine:
                uuid = await engine.add_mapping(config, CallableFunction(handler, name="idle"))

                def calls() -> int:
                    return engine.mapping_statistics(uuid).counters.get_records_calls

                sample = await _measure(warmup, interval, calls)
                await engine.stop()
        finally:
            await source.aclose()
        return sample

    return idle


async def raw_idler(url: str, spec: StreamSpec, warmup: float, interval: float) -> IdleSample:
    """The floor for aiobotocore: one GetRecords per shard per second, nothing else."""
    calls = 0
    config = Config(retries={"total_max_attempts": 1}, max_pool_connections=100)
    async with get_session().create_client(
        "kinesis", region_name=REGION, endpoint_url=url, config=config
    ) as client:

        async def poll(number: int, stop: float) -> None:
            nonlocal calls
            answer = await client.get_shard_iterator(
                StreamName=spec.name, ShardId=shard_id(number), ShardIteratorType="LATEST"
            )
            iterator = answer["ShardIterator"]
            while time.monotonic() < stop:
                began = time.monotonic()
                page = await client.get_records(ShardIterator=iterator, Limit=10_000)
                calls += 1
                iterator = page["NextShardIterator"]
                await anyio.sleep(max(0.0, began + 1.0 - time.monotonic()))

        stop = time.monotonic() + warmup + interval + 1.0
        async with anyio.create_task_group() as tg:
            for number in range(spec.shards):
                tg.start_soon(poll, number, stop)
            sample = await _measure(warmup, interval, lambda: calls)
            tg.cancel_scope.cancel()
    return sample


IDLERS: dict[str, tuple[str, Idler]] = {
    "esm": ("kinesis-esm (fast path)", esm_idler(fast_parse=True)),
    "esm-botocore": ("kinesis-esm, botocore path", esm_idler(fast_parse=False)),
    "raw-aiobotocore": ("raw aiobotocore, 1 poll/s/shard", raw_idler),
}


def build_report(
    results: dict[tuple[int, str], list[IdleSample]], command: str, interval: float
) -> Report:
    rows = [["shards", "consumer", "CPU share of one core", "GetRecords/s", "CPU per call"]]
    goal = None
    for (shards, key), samples in results.items():
        share = median([s.cpu_share for s in samples])
        rate = median([s.calls_per_second for s in samples])
        per_call = median([s.cpu_us_per_call for s in samples])
        rows.append(
            [str(shards), IDLERS[key][0], f"{share:.1%}", f"{rate:,.0f}", f"{per_call:,.0f} us"]
        )
        if key == "esm" and shards == GOAL_SHARDS:
            goal = share
    verdict = (
        "not measured"
        if goal is None
        else f"{goal:.1%}: {'met' if goal <= GOAL_SHARE else 'NOT met'}"
    )
    return Report(
        name="idle",
        title="Idle cost: polling idle shards at the base rate (1 GetRecords/s per shard)",
        command=command,
        notes=[
            "Server: the replay server (benchmarks/replay.py), answering every GetRecords with "
            "no records from memory, in its own process on another core: the consumer alone.",
            f"Consumer pinned to CPU {consumer_cpu()}; event loop {event_loop_name()}; process "
            f"CPU time over {interval:g} s of wall time after a warm-up.",
            f"Goal: kinesis-esm with {GOAL_SHARDS} idle shards uses at most "
            f"{GOAL_SHARE:.0%} of one core: {verdict}.",
        ],
        data={
            "interval_seconds": interval,
            "results": [
                {
                    "shards": shards,
                    "consumer": key,
                    "cpu_share": [s.cpu_share for s in samples],
                    "calls_per_second": [s.calls_per_second for s in samples],
                    "median_cpu_share": median([s.cpu_share for s in samples]),
                }
                for (shards, key), samples in results.items()
            ],
            "goal": {"shards": GOAL_SHARDS, "max_share": GOAL_SHARE, "measured": goal},
        },
        table=rows,
        plot=lambda figure: _plot(figure, results),
    )


def _plot(figure: Any, results: dict[tuple[int, str], list[IdleSample]]) -> None:
    ax = figure.subplots()
    shard_counts = sorted({shards for shards, _ in results})
    keys = [k for k in IDLERS if any(key == k for _, key in results)]
    width = 0.8 / max(1, len(keys))
    for i, key in enumerate(keys):
        xs = [j + i * width for j in range(len(shard_counts))]
        ys = [100 * median([s.cpu_share for s in results.get((n, key), [])]) for n in shard_counts]
        ax.bar(xs, ys, width, label=IDLERS[key][0])
    ax.axhline(100 * GOAL_SHARE, color="black", linestyle="--", label="goal: 15% at 500 shards")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shard_counts))])
    ax.set_xticklabels([f"{n} idle shards" for n in shard_counts])
    ax.set_ylabel("% of one core")
    ax.legend(fontsize=8)
    ax.set_title("Idle polling cost at 1 GetRecords/s per shard (replay server)")


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(prog="python -m benchmarks idle")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", const="quick", dest="profile")
    group.add_argument("--full", action="store_const", const="full", dest="profile")
    parser.add_argument("--shards", default="100,500")
    parser.add_argument("--consumers", default=",".join(IDLERS))
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    warmup, interval, repetitions = PROFILES[args.profile or "default"]
    shard_counts = [int(n) for n in args.shards.split(",")]
    keys = [k for k in args.consumers.split(",") if k in IDLERS]
    prepare_environment()
    pin_process(0, consumer_cpu())
    progress = Progress(len(shard_counts) * len(keys) * repetitions, "idle")
    results: dict[tuple[int, str], list[IdleSample]] = {}
    with ReplayServer(cpu=server_cpu()) as server:
        for shards in shard_counts:
            spec = StreamSpec(shards, 100, 0)
            for _ in range(repetitions):
                for key in keys:
                    sample = run(IDLERS[key][1](server.url, spec, warmup, interval))
                    results.setdefault((shards, key), []).append(sample)
                    progress.step(f"{shards} shards, {key}: {sample.cpu_share:.1%}")
    progress.close()
    report = build_report(results, " ".join(["python -m benchmarks idle", *(argv or [])]), interval)
    for path in report.write(args.results_dir):
        print(path)
    return report
