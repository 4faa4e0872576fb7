"""Pipeline: kinesis-esm's own cost per record, without a network, on one core.

The in-memory source (MemoryStream) is pre-filled with one shard of records built directly with
``Record(...)`` (one shared base64 payload), and a no-op async handler drains it at batch size
100. Nothing here is I/O: what is measured is polling, lanes, batching, building the payload,
invoking through CallableFunction, and checkpointing (MemoryCheckpointStore).

Cases, each repeated and interleaved, medians reported:

* ``records``: the handler takes typed Record lists (``input="records"``), factor 1 and 10;
* ``events``: the handler takes Lambda event dicts of 100-byte records, factor 1 and 10;
* ``bare``: the pipeline ceiling, a plain loop calling the handler on pre-cut batches (building
  the event dict for ``events``, since any consumer must), and ``bare-invoke``, the same loop
  through ``CallableFunction.invoke`` (the function layer's share).

Goals (issue 3): factor 10 / factor 1 >= 0.5; records >= 2,000,000 rec/s; events >= 500,000.

``python -m benchmarks.pipeline [--quick|--full] [--profile CASE]``; results go to
benchmarks/results/pipeline.json (and .md).
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import gc
import io
import pstats
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from kinesis_esm import (
    CallableFunction,
    Engine,
    EventSourceMappingConfig,
    Filter,
    FilterCriteria,
    LambdaContext,
    MemoryCheckpointStore,
    MemoryStream,
    PollSettings,
    Record,
    build_event,
)
from kinesis_esm.events._lambda import EventSource

from .harness import (
    Meter,
    Report,
    Sample,
    consumer_cpu,
    event_loop_name,
    median,
    pin_process,
    ratio,
    run,
)

__all__ = ["main"]

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/pipeline"
BATCH_SIZE = 100
RECORD_BYTES = 100
KEYS = 1000
GOALS = {"factor_ratio": 0.5, "records": 2_000_000.0, "events": 500_000.0}
# records per run and repetitions of every case
BUDGETS = {"quick": (200_000, 3), "default": (1_000_000, 5), "full": (2_000_000, 9)}

Input = Literal["records", "events"]
HANDLER_INPUT: dict[Input, Literal["records", "event"]] = {"records": "records", "events": "event"}
MAX_BUFFERED: int | None = None  # per-shard bound; None: the whole stream (set by --max-buffered)


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    kind: Literal["engine", "bare", "bare-invoke"]
    input: Input
    factor: int = 1
    filters: int = 0  # FilterCriteria patterns; the last one matches every record

    @property
    def label(self) -> str:
        if self.kind == "engine" and self.filters:
            return f"kinesis-esm {self.input}, factor {self.factor}, {self.filters} filters"
        if self.kind == "engine":
            return f"kinesis-esm {self.input}, factor {self.factor}"
        return f"{self.kind} loop, {self.input}"


CASES: tuple[Case, ...] = (
    Case("records-f1", "engine", "records", 1),
    Case("records-f10", "engine", "records", 10),
    Case("events-f1", "engine", "events", 1),
    Case("events-f10", "engine", "events", 10),
    Case("events-f1-filter5", "engine", "events", 1, filters=5),
    Case("bare-records", "bare", "records"),
    Case("bare-events", "bare", "events"),
    Case("bare-invoke-records", "bare-invoke", "records"),
    Case("bare-invoke-events", "bare-invoke", "events"),
)


# JSON data of RECORD_BYTES, so the filter cases have something to match on
_PAYLOAD = b'{"kind":"order","shop":"s1","total":42,"pad":"' + b"x" * (RECORD_BYTES - 50) + b'"}'
# Five patterns, the last one matching every record: each record is tested against all five
FILTERS = (
    '{"data": {"kind": ["refund"]}}',
    '{"data": {"total": [{"numeric": [">", 1000]}]}}',
    '{"partitionKey": [{"prefix": "nobody-"}]}',
    '{"data": {"shop": [{"anything-but": ["s1"]}]}}',
    '{"data": {"kind": ["order"], "total": [{"numeric": [">=", 0, "<", 100]}]}}',
)


def build_records(count: int) -> list[Record]:
    data = base64.b64encode(_PAYLOAD).decode("ascii")  # shared by every record
    keys = [f"partition-key-{k:05d}" for k in range(KEYS)]
    now = 1_700_000_000.0
    base = 10**55
    return [Record(str(base + i), keys[i % KEYS], data, now + i * 1e-6) for i in range(count)]


class Counter:
    """The no-op handler's only work: count records, and say when all have arrived."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.done = anyio.Event()

    def handler(self, input: Input) -> Callable[[Any, Any], Any]:
        if input == "records":

            async def on_records(records: list[Record], context: Any) -> None:
                self.count += len(records)
                if self.count >= self.total:
                    self.done.set()

            return on_records

        async def on_event(event: dict[str, Any], context: Any) -> None:
            self.count += len(event["Records"])
            if self.count >= self.total:
                self.done.set()

        return on_event


async def run_engine(records: list[Record], case: Case) -> Sample:
    stream = MemoryStream(ARN, shard_count=1)
    shard_id = stream.shard_ids[0]
    stream.put_records(shard_id, records)
    counter = Counter(len(records))
    function = CallableFunction(
        counter.handler(case.input), name="noop", input=HANDLER_INPUT[case.input], timeout=60
    )
    config = EventSourceMappingConfig(
        function_name="noop",
        event_source_arn=ARN,
        starting_position="TRIM_HORIZON",
        batch_size=BATCH_SIZE,
        parallelization_factor=case.factor,
        max_buffered_records=MAX_BUFFERED or len(records),
        filter_criteria=FilterCriteria(tuple(Filter(p) for p in FILTERS[: case.filters]))
        if case.filters
        else None,
    )
    store = MemoryCheckpointStore()
    async with Engine(
        source=stream,
        checkpoint_store=store,
        poll_settings=PollSettings(min_interval=0, base_interval=0.05),
        shard_sync_interval=3600,
    ) as engine:
        meter = Meter()
        uuid = await engine.add_mapping(config, function)
        await counter.done.wait()
        sample = meter.stop(len(records))
    checkpoint = store.checkpoints[uuid][shard_id]
    if checkpoint != records[-1].sequence_number or counter.count != len(records):
        raise RuntimeError(f"{case.name}: {counter.count} records, checkpoint {checkpoint}")
    return sample


async def run_bare(records: list[Record], case: Case) -> Sample:
    batches = [records[i : i + BATCH_SIZE] for i in range(0, len(records), BATCH_SIZE)]
    source = EventSource(ARN, "shardId-000000000000", "us-east-1", "arn:aws:iam::1:role/r")
    counter = Counter(len(records))
    handler = counter.handler(case.input)
    events = case.input == "events"
    if case.kind == "bare":
        context = LambdaContext("noop", "arn:aws:lambda:us-east-1:1:function:noop", 128, 60)
        meter = Meter()
        for batch in batches:
            await handler(build_event(source, batch) if events else batch, context)
        sample = meter.stop(len(records))
    else:
        function = CallableFunction(
            handler, name="noop", input=HANDLER_INPUT[case.input], timeout=60
        )
        meter = Meter()
        for batch in batches:
            result = await function.invoke(build_event(source, batch) if events else list(batch))
            if not result.ok:
                raise RuntimeError(result.error_message)
        sample = meter.stop(len(records))
    if counter.count != len(records):
        raise RuntimeError(f"{case.name}: {counter.count} records")
    return sample


def cpu_rate_of(sample: Sample) -> float:
    return sample.records / sample.cpu_seconds if sample.cpu_seconds > 0 else float("nan")


def measure(records: list[Record], case: Case) -> Sample:
    if case.kind == "engine":
        return run(run_engine(records, case))
    return run(run_bare(records, case))


def profile(records: list[Record], case: Case, limit: int = 35) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    measure(records, case)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="200k records, 3 repetitions")
    size.add_argument("--full", action="store_true", help="2M records, 9 repetitions")
    parser.add_argument(
        "--profile",
        choices=[c.name for c in CASES],
        help="print a cProfile of one run of this case instead of benchmarking",
    )
    parser.add_argument(
        "--cases",
        help="comma-separated case names to run (default: all); no report is written",
    )
    parser.add_argument("--max-buffered", type=int, help="max_buffered_records (default: all)")
    args = parser.parse_args(argv)
    global MAX_BUFFERED
    MAX_BUFFERED = args.max_buffered
    budget = "quick" if args.quick else "full" if args.full else "default"
    count, repetitions = BUDGETS[budget]

    pinned = pin_process(0, consumer_cpu())
    records = build_records(count)
    # The pre-filled stream is a benchmark artefact (a live shard buffers a bounded number of
    # records): keep the collector from rescanning a million long-lived records in every run.
    gc.collect()
    gc.freeze()

    if args.profile:
        case = next(c for c in CASES if c.name == args.profile)
        print(profile(records, case))
        return

    cases = CASES
    if args.cases:
        wanted = args.cases.split(",")
        cases = tuple(c for c in CASES if c.name in wanted)
    samples: dict[str, list[Sample]] = {c.name: [] for c in cases}
    for repetition in range(repetitions):
        order = cases[repetition % len(cases) :] + cases[: repetition % len(cases)]
        for case in order:
            samples[case.name].append(measure(records, case))
        print(
            f"repetition {repetition + 1}/{repetitions}: "
            + ", ".join(
                f"{c.name} {samples[c.name][-1].rate / 1e6:.2f}M "
                f"({samples[c.name][-1].cpu_us_per_record:.3f} us CPU)"
                for c in cases
            ),
            file=sys.stderr,
        )
    if args.cases:
        return

    wall = {name: median([s.rate for s in runs]) for name, runs in samples.items()}
    cpu_rate = {name: median([cpu_rate_of(s) for s in runs]) for name, runs in samples.items()}
    cpu_us = {name: median([s.cpu_us_per_record for s in runs]) for name, runs in samples.items()}

    def paired(numerator: str, denominator: str) -> dict[str, float]:
        """Median of per-repetition ratios (the two cases ran back to back)."""
        num, den = samples[numerator], samples[denominator]
        return {
            "wall": median([ratio(a.rate, b.rate) for a, b in zip(num, den, strict=True)]),
            "cpu": median(
                [ratio(cpu_rate_of(a), cpu_rate_of(b)) for a, b in zip(num, den, strict=True)]
            ),
        }

    ratios = {
        "records: factor 10 / factor 1": paired("records-f10", "records-f1"),
        "events: factor 10 / factor 1": paired("events-f10", "events-f1"),
        "events: 5 filters / no filter": paired("events-f1-filter5", "events-f1"),
        "records: kinesis-esm / bare loop": paired("records-f1", "bare-records"),
        "events: kinesis-esm / bare loop": paired("events-f1", "bare-events"),
        "records: kinesis-esm / bare invoke loop": paired("records-f1", "bare-invoke-records"),
        "events: kinesis-esm / bare invoke loop": paired("events-f1", "bare-invoke-events"),
    }
    goal_checks = [
        ("records: factor 10 / factor 1 >= 0.5", "records: factor 10 / factor 1", "ratio"),
        ("events: factor 10 / factor 1 >= 0.5", "events: factor 10 / factor 1", "ratio"),
        ("records, factor 1 >= 2,000,000 rec/s", "records-f1", "records"),
        ("events, factor 1 >= 500,000 rec/s", "events-f1", "events"),
    ]
    goals: dict[str, dict[str, bool]] = {}
    for label, key, kind in goal_checks:
        if kind == "ratio":
            values = ratios[key]
            goals[label] = {m: values[m] >= GOALS["factor_ratio"] for m in ("wall", "cpu")}
        else:
            goals[label] = {"wall": wall[key] >= GOALS[kind], "cpu": cpu_rate[key] >= GOALS[kind]}

    command = "python -m benchmarks.pipeline" + {"quick": " --quick", "full": " --full"}.get(
        budget, ""
    )
    report = Report(
        name="pipeline",
        title="Pipeline: in-memory source, no-op async handler, one core",
        command=command,
        notes=[
            f"{count:,} records of {RECORD_BYTES} bytes, {KEYS} partition keys, one shard, "
            f"batch size {BATCH_SIZE}; {repetitions} repetitions per case, interleaved; medians "
            "(ratios: median of per-repetition ratios)",
            f"event loop {event_loop_name()}; pinned to core {consumer_cpu()}: {pinned}; "
            "the pre-built records are gc.freeze()-d",
            "engine: PollSettings(min_interval=0), max_buffered_records = "
            f"{MAX_BUFFERED or 'all records'}, MemoryCheckpointStore; "
            "timed from add_mapping to the last record handled",
            "wall: records per wall-clock second; CPU: records per CPU-second of this "
            "(single-threaded) process, i.e. what one dedicated core does. The two agree on an "
            "idle machine; on a shared one the CPU figure is the one that measures kinesis-esm",
            "bare loop, records: the handler only counts, so it is no ceiling for typed records; "
            "the bare invoke loop (CallableFunction.invoke per pre-cut batch) is the useful one",
        ],
        data={
            "settings": {
                "records": count,
                "repetitions": repetitions,
                "batch_size": BATCH_SIZE,
                "record_bytes": RECORD_BYTES,
                "keys": KEYS,
                "max_buffered_records": MAX_BUFFERED or count,
                "event_loop": event_loop_name(),
                "pinned_core": consumer_cpu() if pinned else None,
            },
            "wall_rates": wall,
            "cpu_rates": cpu_rate,
            "cpu_us_per_record": cpu_us,
            "samples": {
                name: [
                    {"records": s.records, "seconds": s.seconds, "cpu_seconds": s.cpu_seconds}
                    for s in runs
                ]
                for name, runs in samples.items()
            },
            "ratios": ratios,
            "goals": goals,
        },
        table=[
            ["case", "records/s (wall)", "records/CPU-s", "CPU us/record", "CPU vs bare loop"],
            *(
                [
                    c.label,
                    f"{wall[c.name]:,.0f}",
                    f"{cpu_rate[c.name]:,.0f}",
                    f"{cpu_us[c.name]:.3f}",
                    f"{ratio(cpu_rate[c.name], cpu_rate['bare-' + c.input]):.3f}",
                ]
                for c in CASES
            ),
        ],
        extra_markdown=[
            "| ratio | wall | CPU |",
            "| --- | --- | --- |",
            *(f"| {name} | {v['wall']:.3f} | {v['cpu']:.3f} |" for name, v in ratios.items()),
            "",
            "| goal | wall | CPU |",
            "| --- | --- | --- |",
            *(
                f"| {goal} | {'met' if met['wall'] else 'NOT met'} | "
                f"{'met' if met['cpu'] else 'NOT met'} |"
                for goal, met in goals.items()
            ),
        ],
    )
    paths = report.write()
    print(report.markdown())
    print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
