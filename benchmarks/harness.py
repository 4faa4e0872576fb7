"""What every benchmark shares: the environment, one-core pinning, the event loop, timing,
medians and ratios, a progress bar, and the result files (JSON, Markdown, PNG).

Each benchmark builds a :class:`Report` and calls :meth:`Report.write`, which writes
``benchmarks/results/<name>.json``, ``<name>.md`` and ``<name>.png``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO, TypeVar

__all__ = [
    "RESULTS_DIR",
    "Meter",
    "Progress",
    "Report",
    "Sample",
    "consumer_cpu",
    "event_loop_name",
    "median",
    "pin_process",
    "prepare_environment",
    "ratio",
    "run",
    "server_cpu",
]

T = TypeVar("T")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
_PACKAGES = ("kinesis-esm", "aiobotocore", "botocore", "aiohttp", "orjson", "uvloop")


def prepare_environment() -> None:
    """Dummy credentials, no instance-metadata probing: benchmarks never touch an account."""
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)


def _cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


_ALL_CPUS = _cpus()


def consumer_cpu() -> int:
    return _ALL_CPUS[0]


def server_cpu() -> int | None:
    """A core for the server, apart from the consumer's; None on a one-core machine."""
    return _ALL_CPUS[1] if len(_ALL_CPUS) > 1 else None


def pin_process(pid: int, cpu: int | None) -> bool:
    """Pin every thread of ``pid`` (0: this process) to one core; False where unsupported."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return False
    task_dir = Path(f"/proc/{pid or os.getpid()}/task")
    tids = [int(t.name) for t in task_dir.iterdir()] if task_dir.is_dir() else [pid]
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, {cpu})
    return True


def event_loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on a fresh event loop: uvloop when importable. Collects garbage first."""
    gc.collect()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: T = uvloop.run(coro)
    return result


@dataclass(frozen=True, slots=True)
class Sample:
    """One timed run: records handled, wall seconds, and CPU seconds of this process."""

    records: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_record(self) -> float:
        return 1e6 * self.cpu_seconds / self.records if self.records else float("nan")


class Meter:
    """Wall and process CPU time from construction until :meth:`stop`."""

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def stop(self, records: int) -> Sample:
        return Sample(records, time.perf_counter() - self._wall, time.process_time() - self._cpu)


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v]
    return statistics.median(finite) if finite else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


class Progress:
    """A one-line progress bar on stderr (a line per tenth when stderr is not a terminal)."""

    def __init__(self, total: int, title: str, stream: TextIO | None = None) -> None:
        self.total = max(1, total)
        self.title = title
        self.done = 0
        self.stream = stream or sys.stderr
        self._tty = self.stream.isatty()
        self._started = time.monotonic()
        self._last_tenth = -1

    def step(self, label: str) -> None:
        self.done = min(self.total, self.done + 1)
        self.show(label)

    def show(self, label: str) -> None:
        fraction = self.done / self.total
        width = 30
        bar = "#" * int(fraction * width) + "." * (width - int(fraction * width))
        elapsed = time.monotonic() - self._started
        line = f"{self.title} [{bar}] {self.done}/{self.total} {elapsed:5.0f}s {label}"
        if self._tty:
            self.stream.write("\r" + line[:150].ljust(150))
            self.stream.flush()
        elif int(fraction * 10) != self._last_tenth or self.done == self.total:
            self._last_tenth = int(fraction * 10)
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "event_loop": event_loop_name(),
        "packages": {name: _version(name) for name in (*_PACKAGES, "async-kinesis", "matplotlib")},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


@dataclass
class Report:
    """A benchmark's results: JSON data, a Markdown table and notes, and a plot."""

    name: str
    title: str
    command: str
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    table: list[list[str]] = field(default_factory=list)  # first row: the header
    extra_markdown: list[str] = field(default_factory=list)
    plot: Callable[[Any], None] | None = None  # draws on a matplotlib Figure

    def markdown(self) -> str:
        lines = [f"# {self.title}", "", f"Command: `{self.command}`", ""]
        lines += [f"- {note}" for note in self.notes]
        if self.notes:
            lines.append("")
        if self.table:
            header, *rows = self.table
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join(" --- " for _ in header) + "|")
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines.append("")
        lines += self.extra_markdown
        return "\n".join(lines).rstrip() + "\n"

    def write(self, directory: Path = RESULTS_DIR) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        document = {
            "name": self.name,
            "title": self.title,
            "command": self.command,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            "notes": self.notes,
            **self.data,
        }
        paths = [directory / f"{self.name}.json", directory / f"{self.name}.md"]
        paths[0].write_text(json.dumps(_clean(document), indent=2, allow_nan=False) + "\n")
        paths[1].write_text(self.markdown())
        png = self._write_plot(directory / f"{self.name}.png")
        if png is not None:
            paths.append(png)
        return paths

    def _write_plot(self, path: Path) -> Path | None:
        if self.plot is None:
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            from matplotlib.figure import Figure
        except ImportError:
            return None
        figure = Figure(figsize=(11, 4.8), layout="constrained")
        self.plot(figure)
        figure.savefig(path, dpi=110)
        return path


def _clean(value: Any) -> Any:
    """JSON-ready: NaN and infinities become null."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
