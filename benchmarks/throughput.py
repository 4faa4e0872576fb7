"""Throughput: draining a pre-filled stream, every contender on the same replay server and data.

The matrix is shards x record sizes; each cell runs every contender ``repetitions`` times,
interleaved (the order rotates each repetition), and reports medians. Ratios are taken within a
repetition (contenders run back to back) and their median is reported. The consumer is pinned
to one core and the replay server to another.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contenders import CONTENDERS
from .harness import (
    RESULTS_DIR,
    Progress,
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
from .replay import ReplayServer, StreamSpec

__all__ = ["Settings", "main", "run_throughput"]

SIZES = (100, 1024, 10240)
SHARDS = (1, 4, 16)
MAIN = "esm-events"
GOAL_RATIOS = {"async-kinesis": 5.0, "raw-aiobotocore": 3.0}
GOAL_SIZES = (100, 1024)
# total records per cell, by record size
BUDGETS = {
    "quick": {100: 12_000, 1024: 6_000, 10240: 1_600},
    "default": {100: 60_000, 1024: 30_000, 10240: 6_400},
    "full": {100: 200_000, 1024: 100_000, 10240: 20_000},
}
REPETITIONS = {"quick": 1, "default": 3, "full": 5}


@dataclass
class Settings:
    profile: str = "default"
    shards: tuple[int, ...] = SHARDS
    sizes: tuple[int, ...] = SIZES
    contenders: tuple[str, ...] = tuple(CONTENDERS)
    repetitions: int = 3
    records: int | None = None  # total per cell; None: the profile's budget
    time_limit: float = 60.0
    pin: bool = True
    gc_threshold: int | None = None  # gen0 threshold for every run; None: Python's default

    def spec(self, shards: int, size: int) -> StreamSpec:
        total = self.records or BUDGETS[self.profile].get(size, 10_000)
        return StreamSpec(shards, size, max(1, total // shards))


@dataclass
class Cell:
    spec: StreamSpec
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def median_rate(self, key: str) -> float:
        return median([s.rate for s in self.samples.get(key, [])])

    def median_cpu(self, key: str) -> float:
        return median([s.cpu_us_per_record for s in self.samples.get(key, [])])

    def paired_ratio(self, key: str, other: str, *, cpu: bool = False) -> float:
        """Median over repetitions of ``key``'s rate over ``other``'s, in the same repetition."""
        pairs = zip(self.samples.get(key, []), self.samples.get(other, []), strict=False)
        if cpu:  # records per CPU-second: the one-core capacity, less sensitive to other load
            return median([ratio(b.cpu_us_per_record, a.cpu_us_per_record) for a, b in pairs])
        return median([ratio(a.rate, b.rate) for a, b in pairs])

    def complete(self, key: str) -> bool:
        return all(s.records >= self.spec.total for s in self.samples.get(key, []))


def run_throughput(url: str, settings: Settings, progress: Progress | None = None) -> list[Cell]:
    keys = [k for k in settings.contenders if k in CONTENDERS]
    cells: list[Cell] = []
    warm = StreamSpec(1, 100, 10)
    for key in keys:  # imports, first model loads: outside every measurement
        run(CONTENDERS[key].drain(url, warm, 30.0))
    for size in settings.sizes:
        for shards in settings.shards:
            cell = Cell(settings.spec(shards, size))
            cells.append(cell)
            for rep in range(settings.repetitions):
                order = keys[rep % len(keys) :] + keys[: rep % len(keys)]
                for key in order:
                    with gc_threshold(settings.gc_threshold):
                        sample = run(CONTENDERS[key].drain(url, cell.spec, settings.time_limit))
                    cell.samples.setdefault(key, []).append(sample)
                    if progress is not None:
                        progress.step(f"{shards} shards, {size} B, {key}: {sample.rate:,.0f}/s")
    return cells


@contextlib.contextmanager
def gc_threshold(threshold: int | None) -> Iterator[None]:
    """The same garbage-collector setting for every contender, restored afterwards."""
    if threshold is None:
        yield
        return
    saved = gc.get_threshold()
    gc.set_threshold(threshold, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def _fmt_rate(value: float) -> str:
    return "-" if value != value else f"{value:,.0f}"


def _fmt_ratio(value: float) -> str:
    return "-" if value != value else f"{value:.2f}x"


def goals(cells: list[Cell]) -> list[dict[str, Any]]:
    out = []
    for cell in cells:
        if cell.spec.record_bytes not in GOAL_SIZES or MAIN not in cell.samples:
            continue
        for other, target in GOAL_RATIOS.items():
            if other not in cell.samples:
                continue
            wall = cell.paired_ratio(MAIN, other)
            cpu = cell.paired_ratio(MAIN, other, cpu=True)
            out.append(
                {
                    "goal": f"{MAIN} >= {target:g}x {other}",
                    "shards": cell.spec.shards,
                    "record_bytes": cell.spec.record_bytes,
                    "ratio_wall": wall,
                    "ratio_cpu": cpu,
                    "met": wall >= target,
                    "met_on_cpu": cpu >= target,
                }
            )
    return out


def build_report(cells: list[Cell], settings: Settings, command: str) -> Report:
    keys = [k for k in settings.contenders if any(k in c.samples for c in cells)]
    header = ["shards", "record", "records", *(CONTENDERS[k].label for k in keys)]
    ratio_keys = [k for k in GOAL_RATIOS if k in keys] if MAIN in keys else []
    header += [f"{MAIN} / {k}" for k in ratio_keys]
    rows: list[list[str]] = [header]
    cpu_rows: list[list[str]] = [["shards", "record", *(CONTENDERS[k].label for k in keys)]]
    for cell in cells:
        spec = cell.spec
        head = [str(spec.shards), f"{spec.record_bytes} B"]
        rates = [
            _fmt_rate(cell.median_rate(k)) + ("" if cell.complete(k) else " (timed out)")
            for k in keys
        ]
        ratios = [
            f"{_fmt_ratio(cell.paired_ratio(MAIN, k))} "
            f"(cpu {_fmt_ratio(cell.paired_ratio(MAIN, k, cpu=True))})"
            for k in ratio_keys
        ]
        rows.append([*head, f"{spec.total:,}", *rates, *ratios])
        cpu_rows.append([*head, *(f"{cell.median_cpu(k):.2f}" for k in keys)])
    goal_rows = goals(cells)
    pinning = f"Consumer pinned to CPU {consumer_cpu()}" if settings.pin else "Not pinned"
    met = sum(g["met"] for g in goal_rows)
    gc_note = (
        "Garbage collector: Python's defaults (700, 10, 10), as users get them."
        if settings.gc_threshold is None
        else f"Garbage collector: gc.set_threshold({settings.gc_threshold}, 10, 10) for every "
        "contender alike."
    )
    report = Report(
        name="throughput" if settings.gc_threshold is None else "throughput-gc",
        title="Throughput: draining a pre-filled stream (records/s, median)",
        command=command,
        notes=[
            "Server: the replay server in benchmarks/replay.py, answering from response bodies "
            "held in memory, in its own process on another core. It measures the consumers "
            "alone, not an emulator; real Kinesis adds network latency and its 5 GetRecords/s "
            "per shard limit.",
            f"{pinning}; event loop: {event_loop_name()}; {settings.repetitions} repetitions "
            "per cell, contenders interleaved; ratios are medians of ratios within a repetition.",
            "records/s is records over wall time; 'cpu' ratios compare CPU time per record "
            "(records per CPU-second), which other load on the machine disturbs less.",
            gc_note,
            "kinesis-esm runs with PollSettings(min_interval=0.0), BatchSize 10,000 unless "
            "noted, max_buffered_records 20,000, a no-op async handler.",
            "async-kinesis: pass-through processor, sleep_time_no_records=0.05, "
            "shard_fetch_rate=1000, idle_timeout=0.5 inside `while`, record_limit=10000. Its "
            "fetch loop sleeps 0.2 s per round (hard-coded), so it makes at most 5 GetRecords "
            "per shard per second; with 10 KiB records (about 1,000 per 10 MiB page) that caps it.",
            f"Goals (Lambda-event path, {', '.join(f'{s} B' for s in GOAL_SIZES)}): "
            f"{met} of {len(goal_rows)} met on wall-clock ratios.",
        ],
        data={
            "settings": vars(settings),
            "cells": [
                {
                    "shards": c.spec.shards,
                    "record_bytes": c.spec.record_bytes,
                    "records": c.spec.total,
                    "contenders": {
                        k: {
                            "median_rate": c.median_rate(k),
                            "median_cpu_us_per_record": c.median_cpu(k),
                            "complete": c.complete(k),
                            "runs": [
                                {
                                    "records": s.records,
                                    "seconds": s.seconds,
                                    "cpu_seconds": s.cpu_seconds,
                                    "rate": s.rate,
                                }
                                for s in v
                            ],
                        }
                        for k, v in c.samples.items()
                    },
                    "ratios": {
                        f"{MAIN}/{k}": {
                            "wall": c.paired_ratio(MAIN, k),
                            "cpu": c.paired_ratio(MAIN, k, cpu=True),
                        }
                        for k in keys
                        if k != MAIN and MAIN in c.samples
                    },
                }
                for c in cells
            ],
            "goals": goal_rows,
        },
        table=rows,
        extra_markdown=_cpu_table(cpu_rows) + _goal_lines(goal_rows),
        plot=lambda figure: _plot(figure, cells, keys),
    )
    return report


def _cpu_table(rows: list[list[str]]) -> list[str]:
    header, *body = rows
    lines = ["## CPU per record (microseconds, median)", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(" --- " for _ in header) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return [*lines, ""]


def _goal_lines(goal_rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Goals", ""]
    for g in goal_rows:
        verdict = "met" if g["met"] else "NOT met"
        lines.append(
            f"- {g['goal']} at {g['shards']} shards, {g['record_bytes']} B: "
            f"{_fmt_ratio(g['ratio_wall'])} wall, {_fmt_ratio(g['ratio_cpu'])} cpu: {verdict}"
        )
    return [*lines, ""]


def _plot(figure: Any, cells: list[Cell], keys: list[str]) -> None:
    sizes = sorted({c.spec.record_bytes for c in cells})
    axes = figure.subplots(1, len(sizes), squeeze=False)[0]
    for ax, size in zip(axes, sizes, strict=True):
        row = [c for c in cells if c.spec.record_bytes == size]
        width = 0.8 / max(1, len(keys))
        for i, key in enumerate(keys):
            xs = [j + i * width for j in range(len(row))]
            ax.bar(xs, [c.median_rate(key) for c in row], width, label=CONTENDERS[key].label)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(row))])
        ax.set_xticklabels([f"{c.spec.shards} shards" for c in row])
        ax.set_yscale("log")
        ax.set_title(f"{size} B records")
        ax.set_ylabel("records/s (median)")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
    figure.suptitle("Throughput on the replay server (consumer on one core)")


def parse_args(argv: list[str] | None) -> tuple[Settings, Path]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks throughput")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", const="quick", dest="profile")
    group.add_argument("--full", action="store_const", const="full", dest="profile")
    parser.add_argument("--shards", type=_ints, default=SHARDS)
    parser.add_argument("--sizes", type=_ints, default=SIZES)
    parser.add_argument("--contenders", type=lambda s: tuple(s.split(",")), default=None)
    parser.add_argument("--repetitions", type=int, default=None)
    parser.add_argument("--records", type=int, default=None, help="total records per cell")
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one core")
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=None,
        help="run every contender with gc.set_threshold(N, 10, 10); results go to throughput-gc.*",
    )
    args = parser.parse_args(argv)
    profile = args.profile or "default"
    unknown = set(args.contenders or ()) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}; choose from {sorted(CONTENDERS)}")
    settings = Settings(
        profile=profile,
        shards=args.shards,
        sizes=args.sizes,
        contenders=args.contenders or tuple(CONTENDERS),
        repetitions=args.repetitions or REPETITIONS[profile],
        records=args.records,
        time_limit=args.time_limit,
        pin=not args.no_pin,
        gc_threshold=args.gc_threshold,
    )
    return settings, args.results_dir


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main(argv: list[str] | None = None, command: str = "python -m benchmarks throughput") -> Report:
    settings, results_dir = parse_args(argv)
    command = " ".join([command, *(argv or [])])
    prepare_environment()
    if settings.pin:
        pin_process(0, consumer_cpu())
    steps = len(settings.shards) * len(settings.sizes) * settings.repetitions
    progress = Progress(steps * len(settings.contenders), "throughput")
    with ReplayServer(cpu=server_cpu() if settings.pin else None) as server:
        cells = run_throughput(server.url, settings, progress)
    progress.close()
    report = build_report(cells, settings, command)
    for path in report.write(results_dir):
        print(path)
    return report
