"""Function targets: the http target against the in-process target, on one core.

Two measurements, in one run, each repeated and interleaved, medians reported:

* **engine**: the same pre-filled in-memory stream (MemoryStream, one shard of 100-byte
  records) drained by a mapping at batch size 100, factor 1 and 10, once with a no-op async
  handler in process (CallableFunction) and once through HttpFunction to a local server.
  Records/s and invocations/s, and http / in-process as ratios.
* **invoke**: the function layer alone, a loop of ``invoke(event)`` on pre-built Lambda events
  of 1, 100 and 10,000 records: time per invocation of each target, the http target's overhead
  (http minus in-process, per invocation) and http / in-process as a ratio. Wall time, and CPU
  time of this process (the client's share; the server has a core of its own).

The server (``--serve``, a child process pinned to the other core) is a minimal aiohttp app
that reads each request body in full and answers 200 with an empty body: it measures the
target's cost (serializing, HTTP, pooling, parsing the answer), not a consumer service's.

``python -m benchmarks.targets [--quick]``; results go to benchmarks/results/targets.json (.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
from aiohttp import web

from kinesis_esm import (
    CallableFunction,
    Engine,
    EventSourceMappingConfig,
    MemoryCheckpointStore,
    MemoryStream,
    PollSettings,
    Record,
    build_event,
)
from kinesis_esm.events import EventSource
from kinesis_esm.functions._http import HttpFunction

from .harness import (
    Meter,
    Report,
    Sample,
    consumer_cpu,
    event_loop_name,
    median,
    pin_process,
    prepare_environment,
    ratio,
    run,
    server_cpu,
)

__all__ = ["main"]

HOST = "127.0.0.1"
ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/targets"
RECORD_BYTES = 100
KEYS = 1000
ENGINE_BATCH = 100
FACTORS = (1, 10)
INVOKE_SIZES = (1, 100, 10_000)
# (engine records, invocations per size, repetitions)
BUDGETS: dict[str, tuple[int, dict[int, int], int]] = {
    "quick": (20_000, {1: 500, 100: 200, 10_000: 6}, 2),
    "default": (200_000, {1: 5000, 100: 2000, 10_000: 40}, 5),
}

Target = Literal["in-process", "http"]
TARGETS: tuple[Target, ...] = ("in-process", "http")


# The server


async def serve(port: int) -> None:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response()  # an empty 2xx body: success, return value None

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/invoke", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port, backlog=1024)
    await site.start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


class TargetServer:
    """The server in a child process; ``with TargetServer(cpu) as server: server.url``."""

    def __init__(self, cpu: int | None, startup_timeout: float = 20.0) -> None:
        self.cpu = cpu
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/invoke"

    def __enter__(self) -> TargetServer:
        root = Path(__file__).resolve().parents[1]
        env = dict(os.environ, PYTHONPATH=str(root))
        command = [sys.executable, "-m", "benchmarks.targets", "--serve"]
        if self.cpu is not None:
            command += ["--cpu", str(self.cpu)]
        self._process = subprocess.Popen(
            command, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        assert self._process.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            line = self._process.stdout.readline().decode()
            if line.startswith("PORT "):
                self.port = int(line.split()[1])
                return self
            if not line and self._process.poll() is not None:
                break
        self.__exit__()
        raise RuntimeError("the target server did not start")

    def __exit__(self, *exc_info: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


# The consumer side


def build_records(count: int) -> list[Record]:
    data = base64.b64encode(b"x" * RECORD_BYTES).decode("ascii")
    keys = [f"partition-key-{k:05d}" for k in range(KEYS)]
    base = 10**55
    now = time.time()
    return [Record(str(base + i), keys[i % KEYS], data, now) for i in range(count)]


class NoOp:
    """The in-process handler: counts records and invocations."""

    def __init__(self) -> None:
        self.records = 0
        self.invocations = 0

    async def __call__(self, event: dict[str, Any], context: Any) -> None:
        self.records += len(event["Records"])
        self.invocations += 1


def make_function(target: Target, url: str) -> tuple[Any, NoOp | None]:
    if target == "http":
        return HttpFunction(url, name="targets", timeout=60), None
    handler = NoOp()
    return CallableFunction(handler, name="targets", timeout=60), handler


class DrainedStore(MemoryCheckpointStore):
    """Sets ``drained`` when the last record's checkpoint is written."""

    def __init__(self, last: str) -> None:
        super().__init__()
        self.last = last
        self.drained = anyio.Event()

    async def set_checkpoint(self, mapping_uuid: str, shard_id: str, checkpoint: str) -> None:
        await super().set_checkpoint(mapping_uuid, shard_id, checkpoint)
        if checkpoint == self.last:
            self.drained.set()


@dataclass(frozen=True, slots=True)
class EngineSample:
    sample: Sample
    invocations: int

    @property
    def invocation_rate(self) -> float:
        return self.invocations / self.sample.seconds if self.sample.seconds > 0 else 0.0


async def run_engine(records: list[Record], target: Target, factor: int, url: str) -> EngineSample:
    stream = MemoryStream(ARN, shard_count=1)
    shard_id = stream.shard_ids[0]
    stream.put_records(shard_id, records)
    function, _ = make_function(target, url)
    store = DrainedStore(records[-1].sequence_number)
    config = EventSourceMappingConfig(
        function_name="targets",
        event_source_arn=ARN,
        starting_position="TRIM_HORIZON",
        batch_size=ENGINE_BATCH,
        parallelization_factor=factor,
        max_buffered_records=len(records),
    )
    try:
        async with Engine(
            source=stream,
            checkpoint_store=store,
            poll_settings=PollSettings(min_interval=0, base_interval=0.05),
            shard_sync_interval=3600,
        ) as engine:
            meter = Meter()
            uuid = await engine.add_mapping(config, function)
            with anyio.move_on_after(120):
                await store.drained.wait()
            if not store.drained.is_set():
                raise RuntimeError(f"{target}: not drained within 120 s")
            sample = meter.stop(len(records))
            counters = engine.mapping_statistics(uuid).counters
    finally:
        if isinstance(function, HttpFunction):
            await function.aclose()
    if counters.errors or counters.succeeded_events != len(records):
        raise RuntimeError(f"{target}: {counters}")
    return EngineSample(sample, counters.invocations)


async def run_invoke(event: dict[str, Any], count: int, target: Target, url: str) -> Sample:
    function, handler = make_function(target, url)
    try:
        first = await function.invoke(event)  # connection and set-up outside the clock
        if not first.ok:
            raise RuntimeError(f"{target}: {first.error_type}: {first.error_message}")
        meter = Meter()
        for _ in range(count):
            result = await function.invoke(event)
            if not result.ok:
                raise RuntimeError(f"{target}: {result.error_type}: {result.error_message}")
        sample = meter.stop(count)  # "records" here: invocations
    finally:
        if isinstance(function, HttpFunction):
            await function.aclose()
    if handler is not None and handler.invocations != count + 1:
        raise RuntimeError(f"{target}: {handler.invocations} invocations")
    return sample


def per_invocation_us(sample: Sample) -> tuple[float, float]:
    """(wall, CPU) microseconds per invocation."""
    return 1e6 * sample.seconds / sample.records, 1e6 * sample.cpu_seconds / sample.records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.targets", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="smaller runs, 2 repetitions (a few seconds)"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        if args.cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {args.cpu})
        runner: Any = asyncio.run
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
        with contextlib.suppress(KeyboardInterrupt):
            runner(serve(args.port))
        return

    prepare_environment()
    budget = "quick" if args.quick else "default"
    engine_records, invoke_counts, repetitions = BUDGETS[budget]
    records = build_records(max(engine_records, max(INVOKE_SIZES)))
    source = EventSource(ARN, "shardId-000000000000", "us-east-1", "arn:aws:iam::1:role/r")
    events = {size: build_event(source, records[:size]) for size in INVOKE_SIZES}
    gc.collect()
    gc.freeze()  # the pre-built records and events live for the whole run

    engine_cases = [(target, factor) for factor in FACTORS for target in TARGETS]
    invoke_cases = [(target, size) for size in INVOKE_SIZES for target in TARGETS]
    engine_samples: dict[tuple[Target, int], list[EngineSample]] = {c: [] for c in engine_cases}
    invoke_samples: dict[tuple[Target, int], list[Sample]] = {c: [] for c in invoke_cases}

    with TargetServer(server_cpu()) as server:
        pinned = pin_process(0, consumer_cpu())
        for repetition in range(repetitions):
            shift = repetition % len(TARGETS)  # alternate which target goes first
            for target, factor in engine_cases[shift:] + engine_cases[:shift]:
                engine_samples[(target, factor)].append(
                    run(run_engine(records[:engine_records], target, factor, server.url))
                )
            for target, size in invoke_cases[shift:] + invoke_cases[:shift]:
                invoke_samples[(target, size)].append(
                    run(run_invoke(events[size], invoke_counts[size], target, server.url))
                )
            print(f"repetition {repetition + 1}/{repetitions} done", file=sys.stderr)

    engine_rows: dict[str, dict[str, float]] = {}
    for target, factor in engine_cases:
        runs = engine_samples[(target, factor)]
        engine_rows[f"{target}, factor {factor}"] = {
            "records_per_s": median([s.sample.rate for s in runs]),
            "invocations_per_s": median([s.invocation_rate for s in runs]),
            "cpu_us_per_record": median([s.sample.cpu_us_per_record for s in runs]),
        }
    engine_ratios = {
        f"factor {factor}": {
            "records_per_s": median(
                [
                    ratio(h.sample.rate, p.sample.rate)
                    for h, p in zip(
                        engine_samples[("http", factor)],
                        engine_samples[("in-process", factor)],
                        strict=True,
                    )
                ]
            ),
            "invocations_per_s": median(
                [
                    ratio(h.invocation_rate, p.invocation_rate)
                    for h, p in zip(
                        engine_samples[("http", factor)],
                        engine_samples[("in-process", factor)],
                        strict=True,
                    )
                ]
            ),
        }
        for factor in FACTORS
    }
    invoke_rows: dict[str, dict[str, float]] = {}
    for size in INVOKE_SIZES:
        http = [per_invocation_us(s) for s in invoke_samples[("http", size)]]
        local = [per_invocation_us(s) for s in invoke_samples[("in-process", size)]]
        invoke_rows[f"batch {size}"] = {
            "http_wall_us": median([w for w, _ in http]),
            "http_cpu_us": median([c for _, c in http]),
            "in_process_wall_us": median([w for w, _ in local]),
            "in_process_cpu_us": median([c for _, c in local]),
            "overhead_wall_us": median([h[0] - p[0] for h, p in zip(http, local, strict=True)]),
            "overhead_cpu_us": median([h[1] - p[1] for h, p in zip(http, local, strict=True)]),
            "time_ratio_wall": median(
                [ratio(h[0], p[0]) for h, p in zip(http, local, strict=True)]
            ),
            "time_ratio_cpu": median([ratio(h[1], p[1]) for h, p in zip(http, local, strict=True)]),
        }

    report = Report(
        name="targets",
        title="Function targets: http against in-process, one core",
        command="python -m benchmarks.targets" + (" --quick" if args.quick else ""),
        notes=[
            f"engine: {engine_records:,} records of {RECORD_BYTES} bytes, {KEYS} keys, one shard, "
            f"batch size {ENGINE_BATCH}; invoke loop: pre-built events of "
            + ", ".join(f"{s:,}" for s in INVOKE_SIZES)
            + " records, "
            + ", ".join(f"{invoke_counts[s]:,}" for s in INVOKE_SIZES)
            + f" invocations; {repetitions} repetitions, interleaved; medians (ratios: median of "
            "per-repetition ratios)",
            f"event loop {event_loop_name()}; consumer pinned to core {consumer_cpu()}: {pinned}; "
            f"server (aiohttp, reads the body, empty 200) on core {server_cpu()}",
            "ratios are http / in-process: below 1 for rates means the http target is slower; "
            "above 1 for time per invocation means it costs more",
            "overhead = http minus in-process per invocation; CPU is this process's only (the "
            "client side: orjson serialization, aiohttp, the answer)",
        ],
        data={
            "settings": {
                "engine_records": engine_records,
                "invoke_counts": invoke_counts,
                "repetitions": repetitions,
                "record_bytes": RECORD_BYTES,
                "engine_batch_size": ENGINE_BATCH,
            },
            "engine": engine_rows,
            "engine_ratios": engine_ratios,
            "invoke": invoke_rows,
        },
        table=[
            ["engine case", "records/s", "invocations/s", "CPU us/record"],
            *(
                [
                    name,
                    f"{row['records_per_s']:,.0f}",
                    f"{row['invocations_per_s']:,.0f}",
                    f"{row['cpu_us_per_record']:.2f}",
                ]
                for name, row in engine_rows.items()
            ),
        ],
        extra_markdown=[
            "| http / in-process (engine) | records/s | invocations/s |",
            "| --- | --- | --- |",
            *(
                f"| {name} | {v['records_per_s']:.3f} | {v['invocations_per_s']:.3f} |"
                for name, v in engine_ratios.items()
            ),
            "",
            "| invoke loop | http us/inv (wall, CPU) | in-process us/inv (wall, CPU) "
            "| overhead us/inv (wall, CPU) | http / in-process (wall, CPU) |",
            "| --- | --- | --- | --- | --- |",
            *(
                f"| {name} | {r['http_wall_us']:,.0f}, {r['http_cpu_us']:,.0f} "
                f"| {r['in_process_wall_us']:,.1f}, {r['in_process_cpu_us']:,.1f} "
                f"| {r['overhead_wall_us']:,.0f}, {r['overhead_cpu_us']:,.0f} "
                f"| {r['time_ratio_wall']:,.1f}, {r['time_ratio_cpu']:,.1f} |"
                for name, r in invoke_rows.items()
            ),
        ],
    )
    paths = report.write()
    print(report.markdown())
    print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
