"""Execution environments: what one invocation costs in a worker process (ProcessFunction,
``isolation = "process"``) against a worker thread (CallableFunction, ``isolation = "thread"``).

The handler does nothing (``return None``), so what is measured is the function layer alone:
for threads, handing the event dict to a thread and back; for processes, serializing the event
with orjson, sending it over the socket pair, parsing it in the worker, building the context,
and the answer's way back. Events are Lambda's own (``build_event``) of 100-byte records, at
batch sizes 1, 100 and 10,000 (about 4.5 MB), invoked one after the other, as one lane does.

Reported per batch size, medians over interleaved repetitions: wall time per invocation, the
daemon's CPU per invocation, and the worker's CPU (from /proc, Linux). Overhead = wall time
minus a direct call of the handler with a context. Goal (issue 11): process isolation costs at
most 1 ms per invocation at batch 100.

``python -m benchmarks.environments [--quick]``; results go to benchmarks/results/environments.*
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kinesis_esm import CallableFunction, Record, build_event
from kinesis_esm.events import EventSource
from kinesis_esm.functions._context import LambdaContext
from kinesis_esm.functions._environments import ProcessFunction

from .harness import Report, median, run

__all__ = ["main"]

BATCH_SIZES = (1, 100, 10_000)
RECORD_BYTES = 100
GOAL_MS = 1.0  # process isolation's extra cost per invocation at batch 100
# invocations per repetition and repetitions, per batch size
BUDGETS = {
    "quick": {1: 300, 100: 200, 10_000: 5},
    "default": {1: 3000, 100: 2000, 10_000: 40},
}
REPETITIONS = {"quick": 2, "default": 5}
SOURCE = EventSource(
    "arn:aws:kinesis:us-east-1:123456789012:stream/bench",
    "shardId-000000000000",
    "us-east-1",
    "arn:aws:iam::123456789012:role/bench",
)
HANDLER = """
import os

def handler(event, context):
    if "pid" in event:
        return os.getpid()
    return None
"""


def noop(event: Any, context: Any) -> None:
    return None


def event_of(size: int) -> dict[str, Any]:
    data = base64.b64encode(b"x" * RECORD_BYTES).decode("ascii")
    records = [
        Record(str(10**55 + i), f"partition-key-{i % 1000:05d}", data, 1_700_000_000.0 + i)
        for i in range(size)
    ]
    return build_event(SOURCE, records)


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of another process (Linux); NaN elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Timing:
    def __init__(self, count: int) -> None:
        self.count = count
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def stop(self) -> tuple[float, float]:
        """Wall and this process's CPU, in microseconds per invocation."""
        wall = (time.perf_counter() - self.wall) * 1e6 / self.count
        cpu = (time.process_time() - self.cpu) * 1e6 / self.count
        return wall, cpu


async def measure_direct(event: dict[str, Any], count: int) -> dict[str, float]:
    arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    timing = Timing(count)
    for _ in range(count):
        noop(event, LambdaContext("bench", arn, 128, 60))
    wall, cpu = timing.stop()
    return {"wall_us": wall, "cpu_us": cpu}


async def measure_threads(event: dict[str, Any], count: int) -> dict[str, float]:
    function = CallableFunction(noop, name="bench", timeout=60)
    await function.invoke(event)  # the thread pool's first thread
    timing = Timing(count)
    for _ in range(count):
        result = await function.invoke(event)
        if not result.ok:
            raise RuntimeError(result.error_message)
    wall, cpu = timing.stop()
    return {"wall_us": wall, "cpu_us": cpu}


async def measure_process(event: dict[str, Any], count: int, root: Path) -> dict[str, float]:
    function = ProcessFunction("app:handler", name="bench", task_root=root, timeout=60)
    try:
        probe = await function.invoke({"pid": True})  # init, outside the timing
        if not probe.ok:
            raise RuntimeError(probe.error_message)
        worker = int(probe.payload)
        worker_cpu = _cpu_of(worker)
        timing = Timing(count)
        for _ in range(count):
            result = await function.invoke(event)
            if not result.ok:
                raise RuntimeError(result.error_message)
        wall, cpu = timing.stop()
        worker_us = (_cpu_of(worker) - worker_cpu) * 1e6 / count
    finally:
        await function.aclose()
    return {"wall_us": wall, "cpu_us": cpu, "worker_cpu_us": worker_us}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.environments", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer invocations, 2 repetitions")
    args = parser.parse_args(argv)
    budget = "quick" if args.quick else "default"
    counts, repetitions = BUDGETS[budget], REPETITIONS[budget]
    events = {size: event_of(size) for size in BATCH_SIZES}
    samples: dict[int, dict[str, list[dict[str, float]]]] = {
        size: {"direct": [], "thread": [], "process": []} for size in BATCH_SIZES
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "app.py").write_text(HANDLER)
        models: dict[str, Callable[[dict[str, Any], int], Any]] = {
            "direct": measure_direct,
            "thread": measure_threads,
            "process": lambda event, count: measure_process(event, count, root),
        }
        for repetition in range(repetitions):
            for size in BATCH_SIZES:
                order = list(models) if repetition % 2 == 0 else list(reversed(models))
                for model in order:
                    samples[size][model].append(run(models[model](events[size], counts[size])))
            print(
                f"repetition {repetition + 1}/{repetitions} done, "
                f"{time.monotonic() - started:.0f} s",
                file=sys.stderr,
            )

    def med(size: int, model: str, key: str) -> float:
        return median([s[key] for s in samples[size][model]])

    rows = []
    figures: dict[str, dict[str, float]] = {}
    for size in BATCH_SIZES:
        direct = med(size, "direct", "wall_us")
        thread, process = med(size, "thread", "wall_us"), med(size, "process", "wall_us")
        figures[str(size)] = {
            "direct_wall_us": direct,
            "thread_wall_us": thread,
            "process_wall_us": process,
            "thread_overhead_us": thread - direct,
            "process_overhead_us": process - direct,
            "process_minus_thread_us": process - thread,
            "thread_cpu_us": med(size, "thread", "cpu_us"),
            "process_daemon_cpu_us": med(size, "process", "cpu_us"),
            "process_worker_cpu_us": med(size, "process", "worker_cpu_us"),
        }
        f = figures[str(size)]
        rows.append(
            [
                f"{size:,}",
                f"{f['thread_overhead_us']:,.0f}",
                f"{f['process_overhead_us']:,.0f}",
                f"{f['process_minus_thread_us']:,.0f}",
                f"{f['thread_cpu_us']:,.0f}",
                f"{f['process_daemon_cpu_us']:,.0f} + {f['process_worker_cpu_us']:,.0f}",
            ]
        )
    at_100 = figures["100"]["process_overhead_us"] / 1000
    goal_met = at_100 <= GOAL_MS
    report = Report(
        name="environments",
        title="Execution environments: cost per invocation, process vs thread",
        command="python -m benchmarks.environments" + (" --quick" if args.quick else ""),
        notes=[
            f"no-op handler; Lambda events of {RECORD_BYTES}-byte records; invocations one "
            f"after the other; {repetitions} repetitions, interleaved; medians",
            "invocations per repetition: "
            + ", ".join(f"batch {s:,}: {counts[s]:,}" for s in BATCH_SIZES),
            "overhead: wall time per invocation minus a direct call of the handler; "
            "CPU: the daemon's process time per invocation (+ the worker's, from /proc)",
            f"goal: process overhead at batch 100 <= {GOAL_MS} ms: "
            f"{'met' if goal_met else 'NOT met'} ({at_100:.3f} ms)",
        ],
        data={"figures": figures, "goal_met": goal_met, "samples": samples},
        table=[
            [
                "batch size",
                "thread overhead (us)",
                "process overhead (us)",
                "process - thread (us)",
                "thread CPU (us)",
                "process CPU, daemon + worker (us)",
            ],
            *rows,
        ],
    )
    paths = report.write()
    print(report.markdown())
    print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
