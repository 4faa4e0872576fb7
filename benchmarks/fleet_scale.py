"""The fleet benchmark's scale-out section: one `kinesis-esm run` worker against two.

Workers (coordination backend dynamodb, leases in dynalite) drain the replay server's 48-shard
stream from TRIM_HORIZON, each pinned to its own core; records delivered over a window once
the leases have settled (batches are held while they settle). Interleaved runs, medians, the
ratio against the goal of 1.7x. On a 2-core machine the replay server and dynalite run
unpinned beside the workers: with two workers they take their CPU from the workers' cores,
which bounds the ratio below 2. 48 shards, because one shard drains at about 30,000 records/s
here (3 MB/s of 100-byte records, above the 2 MB/s Kinesis serves a shard's readers): with
16, one worker already reads every shard at that ceiling, and a second one could only wait.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from .harness import Progress, median, pin_process, ratio, run
from .replay import ReplayServer, StreamSpec

__all__ = [
    "SCALE_FAILOVER_TIME",
    "SCALE_PROFILES",
    "ScaleRun",
    "measure_scale_out",
    "run_scale_out",
    "scale_json",
    "scale_notes",
    "scale_ratio",
    "scale_rows",
]

REGION = "us-east-1"

COUNT_DIR_ENV = "ESM_BENCH_COUNT_DIR"
COUNT_MODULE = "esm_fleet_count"
SCALE_SHARDS = 48  # see the module docstring: the fleet, not the shards, must be the limit
SCALE_BATCH = 2500  # its buffer (4 batches) lets every GetRecords take 10,000
SCALE_FAILOVER_TIME = 2.0  # take interval 1 s: settles sooner; at 1 s a busy worker lost leases
SCALE_GOAL = 1.7
SCALE_PROFILES = {  # repetitions of each fleet size, window (s), records per shard
    "quick": (2, 4.0, 150_000),  # shorter windows catch the readers still ramping up
    "default": (3, 6.0, 200_000),
    "full": (5, 8.0, 250_000),
}
# The handler: one O_APPEND write of the batch's record count per invocation, to a file per
# worker process; it runs in the worker's event loop (isolation "none"), so the figure is the
# engine's own cost. While the gate file exists (the leases settling) each batch waits 1 s,
# so the stream is not drained before the window opens; the wait does not hold a hand-off long.
_COUNT_HANDLER = """\
import asyncio
import os

_path = os.path.join(os.environ["ESM_BENCH_COUNT_DIR"], str(os.getpid()))
_fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
_gate = os.path.join(os.environ["ESM_BENCH_COUNT_DIR"], os.pardir, "gate")


async def handler(event, context):
    if os.path.exists(_gate):
        await asyncio.sleep(1.0)
    os.write(_fd, b"%d\\n" % len(event["Records"]))
"""


@dataclass(frozen=True, slots=True)
class ScaleRun:
    workers: int
    records: int  # delivered within the window
    seconds: float
    worker_cpu: list[float]  # each worker's CPU seconds over the window / the window
    server_cpu: float  # the replay server's, the same way
    drained: bool  # the stream ran dry before the window closed: the rate is a floor
    leases_lost: int = 0  # "the lease was lost" lines in the workers' logs, over the whole run
    moves: int = 0  # hand-offs ("handing <shard> off" lines) that began within the window

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    @property
    def valid(self) -> bool:
        """Neither a stream that ran dry nor a window in which nothing was delivered."""
        return self.records > 0 and not self.drained


def _delivered(directory: Path) -> int:
    total = 0
    for path in directory.iterdir():
        total += sum(
            int(line)
            for line in path.read_bytes().splitlines(keepends=True)
            if line.endswith(b"\n")
        )
    return total


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process and its reaped children (/proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return float("nan")
    ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _even(fleet: Any, shards: int) -> Any:
    """True once every worker owns its even share of the leases and no hand-off is pending."""
    names = set(fleet.workers)
    low, extra = divmod(shards, len(names))
    even = sorted([low + 1] * extra + [low] * (len(names) - extra))

    async def check() -> bool:
        try:
            leases = await fleet.leases()
        except Exception:  # the table may not exist yet
            return False
        held = Counter(lease.owner for lease in leases)
        pending = any(lease.handoff_target for lease in leases)
        return set(held) == names and sorted(held.values()) == even and not pending

    return check


def _cpus_for(workers: int) -> list[int | None]:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return [cpus[i] if len(cpus) >= workers else None for i in range(workers)]


def _count_config(
    kinesis: str, workdir: Path, name: str, arn: str, settings: dict[str, object]
) -> str:
    from tests.support.fleet import FUNCTION

    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in settings.items())
    return f"""\
[kinesis]
endpoint_url = "{kinesis}"
region = "{REGION}"

[state]
path = "{workdir / f"{name}.db"}"

[control]
port = 0

[coordination]
{lines}
[functions.{FUNCTION}]
handler = "{COUNT_MODULE}:handler"
timeout = 60
isolation = "none"

[[event_source_mappings]]
function_name = "{FUNCTION}"
event_source_arn = "{arn}"
starting_position = "TRIM_HORIZON"
batch_size = {SCALE_BATCH}
"""


async def measure_scale_out(
    server: ReplayServer,
    spec: StreamSpec,
    dynamodb: str,
    workdir: Path,
    workers: int,
    failover_time: float,
    window: float,
) -> ScaleRun:
    """`workers` kinesis-esm run processes, each pinned to its own core, drain the stream from
    TRIM_HORIZON into a fresh lease table; once the leases have settled, the records delivered
    over `window` seconds."""
    from tests.support.fleet import Fleet, Worker, spawn
    from tests.support.kinesis import wait_for

    run_dir = workdir / f"scale-{uuid.uuid4().hex[:8]}"
    counts = run_dir / "counts"
    counts.mkdir(parents=True)
    gate = run_dir / "gate"
    gate.touch()
    (run_dir / f"{COUNT_MODULE}.py").write_text(_COUNT_HANDLER)
    table = f"fleet-scale-{uuid.uuid4().hex[:8]}"
    fleet = Fleet(run_dir, server.url, dynamodb, table, spec.arn, failover_time=failover_time)
    os.environ[COUNT_DIR_ENV] = str(counts)  # spawn passes this process's environment on
    try:
        for name, cpu in zip(
            [f"w{i + 1}" for i in range(workers)], _cpus_for(workers), strict=True
        ):
            settings: dict[str, object] = {
                "backend": "dynamodb",
                "table": table,
                "worker_id": name,
                "failover_time": failover_time,
                "endpoint_url": dynamodb,
                "region": REGION,
            }
            config = run_dir / f"{name}.toml"
            config.write_text(_count_config(server.url, run_dir, name, spec.arn, settings))
            output = run_dir / f"{name}.out"
            process = spawn(run_dir, config, output, run_dir / "unused.log", run_dir / "no.block")
            pin_process(process.pid, cpu)  # before its threads start: they inherit the core
            fleet.workers[name] = Worker(name, process, output, run_dir / "no.block")
        try:
            await wait_for(_even(fleet, spec.shards), 60, 0.2, "leases")
        except TimeoutError as exc:
            tails = "\n".join(w.output()[-1000:] for w in fleet.workers.values())
            raise RuntimeError(f"the leases never settled; the workers said:\n{tails}") from exc
        gate.unlink()
        await anyio.sleep(1.5)  # the batches held at the gate are through
        pids = [w.pid for w in fleet.workers.values()]
        assert server._process is not None  # the benchmarks' own helper: its pid, for its CPU
        server_pid = server._process.pid
        handing = _handoffs(fleet)
        first, began = _delivered(counts), time.monotonic()
        cpu_before = [_cpu_seconds(pid) for pid in pids]
        server_before = _cpu_seconds(server_pid)
        await anyio.sleep(window)
        last, seconds = _delivered(counts), time.monotonic() - began
        worker_cpu = [
            (_cpu_seconds(p) - c) / seconds for p, c in zip(pids, cpu_before, strict=True)
        ]
        server_cpu = (_cpu_seconds(server_pid) - server_before) / seconds
        for worker in fleet.workers.values():
            if worker.process.poll() is not None:
                raise RuntimeError(f"worker {worker.name} exited: {worker.output()[-2000:]}")
        lost = sum(w.output().count("the lease was lost") for w in fleet.workers.values())
        moves = _handoffs(fleet) - handing
    finally:
        fleet.stop_all()
    # a shard that ran dry leaves its worker idle: 95 % of the stream is a safe margin
    drained = last >= 0.95 * spec.total
    return ScaleRun(workers, last - first, seconds, worker_cpu, server_cpu, drained, lost, moves)


def _handoffs(fleet: Any) -> int:
    return sum(w.output().count(": handing shardId-") for w in fleet.workers.values())


def run_scale_out(
    dynamodb: str,
    workdir: Path,
    failover_time: float,
    profile: str,
    progress: Progress | None = None,
) -> list[ScaleRun]:
    repetitions, window, per_shard = SCALE_PROFILES[profile]
    spec = StreamSpec(SCALE_SHARDS, 100, per_shard)
    runs: list[ScaleRun] = []
    # unpinned: with one worker it has the other core to itself; with two it shares both
    with ReplayServer() as server:
        run(_build_stream(server.url, spec.name))
        for rep in range(repetitions):
            for workers in (1, 2) if rep % 2 == 0 else (2, 1):  # interleaved, order alternating
                result = run(
                    measure_scale_out(
                        server, spec, dynamodb, workdir, workers, failover_time, window
                    )
                )
                runs.append(result)
                if progress is not None:
                    progress.step(f"scale-out, {workers} worker(s): {result.rate:,.0f} records/s")
    return runs


async def _build_stream(url: str, name: str) -> None:
    from tests.support.kinesis import kinesis_client

    async with kinesis_client(url, read_timeout=300) as client:
        await client.list_shards(StreamName=name)  # the server builds the records now


def scale_rows(runs: list[ScaleRun]) -> list[list[str]]:
    rows: list[list[str]] = []
    for workers in (1, 2):
        every = [r for r in runs if r.workers == workers]
        mine = [r for r in every if r.valid]
        cpu = ", ".join(f"{median([r.worker_cpu[i] for r in mine]):.0%}" for i in range(workers))
        rows.append(
            [
                f"scale-out, {workers} worker process(es), median of {len(mine)} valid "
                f"of {len(every)} runs",
                f"{median([r.rate for r in mine]):,.0f} records/s",
                f"worker CPU {cpu}; replay server CPU "
                f"{median([r.server_cpu for r in mine]):.0%} of a core; leases lost "
                f"{sum(r.leases_lost for r in every)}; hand-offs in the windows "
                f"{sum(r.moves for r in every)}",
            ]
        )
    rows.append(
        [
            "scale-out, 2 workers / 1 worker (median of interleaved pairs)",
            f"{scale_ratio(runs):.2f}x",
            f"goal >= {SCALE_GOAL}x",
        ]
    )
    return rows


def scale_ratio(runs: list[ScaleRun]) -> float:
    """Median over repetitions of 2 workers' rate over 1 worker's; only pairs of valid runs."""
    ones = [r for r in runs if r.workers == 1]
    twos = [r for r in runs if r.workers == 2]
    pairs = zip(ones, twos, strict=False)
    return median([ratio(two.rate, one.rate) for one, two in pairs if one.valid and two.valid])


def scale_notes(runs: list[ScaleRun]) -> list[str]:
    notes = [
        f"Scale-out: `kinesis-esm run` workers (coordination backend dynamodb) drain one "
        f"{SCALE_SHARDS}-shard replay-server stream of 100-byte records from TRIM_HORIZON, "
        f"batch_size {SCALE_BATCH}, a handler inline (isolation none) that appends each batch's "
        "count to a file; records counted over a window once the leases have settled; 1 and 2 "
        "workers interleaved, a fresh lease table each run (failover_time "
        f"{SCALE_FAILOVER_TIME:g} s, leases in dynalite). While the leases settle every batch "
        "is held 1 s, so the stream is not drained before the window opens.",
        f"Cores: {os.cpu_count()}. Each worker pinned to its own core; the replay server "
        "(one process) and dynalite are not pinned: with one worker the server has the other "
        "core nearly to itself, with two it takes its CPU from the workers' cores.",
    ]
    invalid = [r for r in runs if not r.valid]
    if invalid:
        notes.append(
            f"{len(invalid)} run(s) left out of the medians and the ratio: the stream ran dry "
            "before the window closed, or nothing was delivered in it."
        )
    return notes


def scale_json(run: ScaleRun) -> dict[str, Any]:
    return {
        "workers": run.workers,
        "records": run.records,
        "seconds": run.seconds,
        "records_per_second": run.rate,
        "worker_cpu": run.worker_cpu,
        "server_cpu": run.server_cpu,
        "drained": run.drained,
        "leases_lost": run.leases_lost,
        "moves": run.moves,
    }
