"""End-to-end latency, put -> handler, on kinesalite at a steady produce rate.

A producer process puts records at a fixed rate, each carrying the wall-clock time just before
its PutRecords call; kinesis-esm's handler (on Lambda events) reads that time back. Runs:

- ``base``: Lambda's base rate, one GetRecords per second per shard, no batch window;
- ``window-1s``, ``window-2s``: the same with MaximumBatchingWindowInSeconds 1 and 2;
- ``fast-poll``: for reference, a poll every 0.2 s (Kinesis's per-shard call limit).

kinesalite is an emulator: its own put and read costs are part of these figures.
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from aiobotocore.session import get_session

from kinesis_esm import (
    CallableFunction,
    Engine,
    EventSourceMappingConfig,
    KinesisConfig,
    MemoryCheckpointStore,
    PollSettings,
)

from .harness import (
    RESULTS_DIR,
    Progress,
    Report,
    consumer_cpu,
    event_loop_name,
    pin_process,
    prepare_environment,
    run,
    server_cpu,
)

__all__ = ["main"]

REGION = "us-east-1"
TICK = 0.05  # the producer puts a batch every 50 ms
PROFILES = {"quick": 4.0, "default": 10.0, "full": 30.0}


@dataclass(frozen=True, slots=True)
class Setup:
    key: str
    label: str
    poll: PollSettings
    window: int = 0


SETUPS = (
    Setup("base", "base rate (1 poll/s), no window", PollSettings()),
    Setup("window-1s", "base rate, batch window 1 s", PollSettings(), window=1),
    Setup("window-2s", "base rate, batch window 2 s", PollSettings(), window=2),
    Setup("fast-poll", "poll every 0.2 s, no window", PollSettings(base_interval=0.2)),
)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


# the producer process


def _produce_main(url: str, stream: str, rate: float, duration: float, cpu: int | None) -> None:
    pin_process(0, cpu)
    prepare_environment()
    run(_produce(url, stream, rate, duration))


async def _produce(url: str, stream: str, rate: float, duration: float) -> None:
    per_tick = max(1, round(rate * TICK))
    async with get_session().create_client("kinesis", region_name=REGION, endpoint_url=url) as c:
        start = time.monotonic()
        number = 0
        for tick in range(int(duration / TICK)):
            await anyio.sleep(max(0.0, start + tick * TICK - time.monotonic()))
            now = time.time()
            entries = [
                {
                    "PartitionKey": f"key-{number + i}",
                    "Data": struct.pack("!dQ", now, number + i).ljust(100, b"."),
                }
                for i in range(per_tick)
            ]
            await c.put_records(StreamName=stream, Records=entries)
            number += per_tick


# the consumer


async def measure(
    url: str, arn: str, shards: int, setup: Setup, rate: float, duration: float
) -> list[float]:
    latencies: list[float] = []
    expected = int(duration / TICK) * max(1, round(rate * TICK))
    all_arrived = anyio.Event()

    async def handler(event: dict[str, Any], context: Any) -> None:
        now = time.time()
        for record in event["Records"]:
            sent = struct.unpack_from("!d", base64.b64decode(record["kinesis"]["data"]))[0]
            latencies.append(now - sent)
        if len(latencies) >= expected:
            all_arrived.set()

    config = EventSourceMappingConfig(
        function_name="latency",
        event_source_arn=arn,
        starting_position="LATEST",
        maximum_batching_window_in_seconds=setup.window,
    )
    engine = Engine(
        kinesis=KinesisConfig(endpoint_url=url, region=REGION),
        checkpoint_store=MemoryCheckpointStore(),
        poll_settings=setup.poll,
    )
    async with engine:
        uuid = await engine.add_mapping(config, CallableFunction(handler, name="latency"))
        await _wait_polling(engine, uuid, shards)
        stream = arn.rsplit("/", 1)[1]
        context = multiprocessing.get_context("spawn")
        producer = context.Process(
            target=_produce_main, args=(url, stream, rate, duration, server_cpu()), daemon=True
        )
        producer.start()
        await anyio.to_thread.run_sync(producer.join, duration + 60)
        if producer.is_alive():
            producer.kill()
        with anyio.move_on_after(5.0 + setup.window + setup.poll.base_interval):
            await all_arrived.wait()
        await engine.stop()
    if len(latencies) < expected:
        print(f"latency {setup.key}: only {len(latencies)} of {expected} records arrived")
    return latencies


async def _wait_polling(engine: Engine, uuid: str, shards: int) -> None:
    """Wait (bounded) until every shard has answered a GetRecords, so LATEST misses nothing."""
    with anyio.fail_after(30):
        while True:
            polled = engine.mapping_statistics(uuid).shards
            if len(polled) == shards and all(s.millis_behind_latest is not None for s in polled):
                return
            await anyio.sleep(0.05)


async def _create_stream(url: str, name: str, shards: int) -> str:
    async with get_session().create_client("kinesis", region_name=REGION, endpoint_url=url) as c:
        await c.create_stream(StreamName=name, ShardCount=shards)
        with anyio.fail_after(30):
            while True:
                summary = (await c.describe_stream_summary(StreamName=name))[
                    "StreamDescriptionSummary"
                ]
                if summary["StreamStatus"] == "ACTIVE":
                    return str(summary["StreamARN"])
                await anyio.sleep(0.05)


def build_report(
    results: dict[str, list[float]], command: str, rate: float, shards: int, duration: float
) -> Report:
    rows = [["setup", "records", "p50", "p95", "p99", "max"]]
    summary = {}
    for setup in SETUPS:
        if setup.key not in results:
            continue
        values = sorted(results[setup.key])
        stats = {q: percentile(values, q) for q in (50, 95, 99, 100)}
        summary[setup.key] = {"records": len(values), **{f"p{q}": v for q, v in stats.items()}}
        rows.append([setup.label, str(len(values)), *(f"{1000 * stats[q]:.0f} ms" for q in stats)])
    return Report(
        name="latency",
        title="End-to-end latency, put -> handler (kinesis-esm, Lambda events)",
        command=command,
        notes=[
            f"Server: kinesalite (an emulator, in memory), {shards} shards; a producer process "
            f"puts {rate:g} records/s of 100 B for {duration:g} s per setup, starting once every "
            "shard has its LATEST iterator.",
            "Latency: wall clock in the handler minus the wall clock just before the record's "
            "PutRecords call (same machine, same clock).",
            f"Consumer pinned to CPU {consumer_cpu()}; kinesalite and the producer on CPU "
            f"{server_cpu()}; event loop {event_loop_name()}.",
            "Lambda polls each shard once per second while it is not behind, so base-rate "
            "latency is about half a second on average by design; the batch window adds up to "
            "its length on top.",
        ],
        data={"rate": rate, "shards": shards, "duration": duration, "summary": summary},
        table=rows,
        plot=lambda figure: _plot(figure, results),
    )


def _plot(figure: Any, results: dict[str, list[float]]) -> None:
    ax = figure.subplots()
    for setup in SETUPS:
        values = sorted(results.get(setup.key, []))
        if values:
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.plot([1000 * v for v in values], ys, label=setup.label)
    ax.set_xlabel("put -> handler latency (ms)")
    ax.set_ylabel("fraction of records")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("End-to-end latency on kinesalite (CDF)")


def main(argv: list[str] | None = None) -> Report:
    from tests.support.emulators import Kinesalite

    parser = argparse.ArgumentParser(prog="python -m benchmarks latency")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", const="quick", dest="profile")
    group.add_argument("--full", action="store_const", const="full", dest="profile")
    parser.add_argument("--rate", type=float, default=200.0, help="records per second")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--setups", default=",".join(s.key for s in SETUPS))
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    duration = PROFILES[args.profile or "default"]
    keys = args.setups.split(",")
    prepare_environment()
    pin_process(0, consumer_cpu())
    results: dict[str, list[float]] = {}
    progress = Progress(len(keys), "latency")
    with Kinesalite() as kinesalite:
        if kinesalite.pid is not None:
            pin_process(kinesalite.pid, server_cpu())
        for number, setup in enumerate(s for s in SETUPS if s.key in keys):
            url = kinesalite.endpoint_url
            arn = run(_create_stream(url, f"latency-{number}-{int(time.time())}", args.shards))
            results[setup.key] = run(measure(url, arn, args.shards, setup, args.rate, duration))
            progress.step(f"{setup.key}: {len(results[setup.key])} records")
    progress.close()
    command = " ".join(["python -m benchmarks latency", *(argv or [])])
    report = build_report(results, command, args.rate, args.shards, duration)
    for path in report.write(args.results_dir):
        print(path)
    return report
