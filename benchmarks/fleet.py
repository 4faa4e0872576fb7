"""A fleet's published figures: failover time after kill -9, the lease table's requests per
lease per second at steady state, and scale-out from one worker process to two.

``python -m benchmarks fleet [--quick|--full] [--failover-time 3] [--only SECTION]``: a few
minutes (--quick: two kills, short windows, two pairs of scale-out runs); ``--only failover``,
``requests`` or ``scale-out`` runs one section and writes ``fleet-<section>`` results.

**Failover** (`kinesis-esm run` workers, Kinesis from moto, leases in dynalite, records
produced continuously, 8 shards): three workers; per repetition the fleet settles, one worker
is killed with kill -9, and for each of its shards the time from the kill to the first
invocation by another worker is taken from the records log (polled every 50 ms). A kill's
failover time is its slowest shard. A replacement worker is then started. Expected: about
failover_time plus a take interval (failover_time / 2), plus the shard's start (an iterator
and a first poll).

**Requests** (one engine in this process holding every lease of a 4-shard mapping, the lease
table behind a counting proxy, tests/support/http_faults.py): DynamoDB calls by operation over
a window at steady state, per lease per second, at about 1 record/s per shard (moto and a
producer) and at the highest rate the consumer drains (the replay server). Checkpoints ride on
renewals, so the two should match: 3 (L + 1) / F UpdateItem (renewals, the heartbeat) and
2 / F Query pages (take rounds) per second, with the timers' early jitter (up to 20 %) on top.

**Scale-out** (one `kinesis-esm run` worker against two on a 48-shard replay-server stream):
see ``fleet_scale``.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from kinesis_esm import Engine, EventSourceMappingConfig, KinesisConfig, PollSettings
from kinesis_esm.config import CoordinationConfig
from kinesis_esm.state import MemoryCheckpointStore

from .fleet_scale import (
    SCALE_FAILOVER_TIME,
    SCALE_PROFILES,
    ScaleRun,
    run_scale_out,
    scale_json,
    scale_notes,
    scale_ratio,
    scale_rows,
)
from .harness import (
    RESULTS_DIR,
    Progress,
    Report,
    median,
    prepare_environment,
    run,
)
from .replay import ReplayServer, StreamSpec

__all__ = ["main"]

REGION = "us-east-1"
PROFILES = {  # kills, request-count window (s)
    "quick": (2, 5.0),
    "default": (3, 10.0),
    "full": (6, 30.0),
}
FAILOVER_SHARDS = 8
REQUEST_SHARDS = 2
SECTIONS = ("failover", "requests", "scale-out")
HIGH_RATE = 20_000  # records/s per shard the consumer drains the replay server at, about


@dataclass(frozen=True, slots=True)
class Kill:
    worker: str
    shards: int
    slowest: float  # seconds from the kill to the last orphan shard's first delivery elsewhere
    fastest: float


@dataclass(frozen=True, slots=True)
class RequestRate:
    case: str
    leases: int
    seconds: float
    records_per_shard_second: float
    calls: dict[str, int]
    still_draining: bool = True  # records were left when the window closed

    def per_lease_second(self, operation: str | None = None) -> float:
        count = sum(self.calls.values()) if operation is None else self.calls.get(operation, 0)
        return count / self.leases / self.seconds


# Failover, through kinesis-esm run processes.


async def measure_failover(
    moto: str, dynamodb: str, workdir: Path, failover_time: float, kills: int
) -> list[Kill]:
    from tests.support.fleet import Fleet, producing, shard_of, write_handler_module
    from tests.support.kinesis import create_stream, kinesis_client, wait_for

    write_handler_module(workdir)
    async with kinesis_client(moto) as client:
        stream = f"fleet-bench-{uuid.uuid4().hex[:8]}"
        arn = await create_stream(client, stream, FAILOVER_SHARDS)
        table = f"fleet-bench-{uuid.uuid4().hex[:8]}"
        fleet = Fleet(workdir, moto, dynamodb, table, arn, failover_time=failover_time)
        names = ["w1", "w2", "w3"]
        for name in names:
            fleet.start(name)
        results: list[Kill] = []
        try:
            async with producing(client, stream):
                for number in range(kills):
                    settle = fleet.balanced(set(names), FAILOVER_SHARDS)
                    await wait_for(settle, 90, 0.3, "the fleet to settle")
                    victim = names[number % len(names)]
                    owners = await fleet.owners()
                    orphans = {shard for shard, owner in owners.items() if owner == victim}
                    worker = fleet.workers[victim]
                    mark = len(fleet.log())
                    worker.signal_group(signal.SIGKILL)
                    killed = time.monotonic()
                    worker.process.wait(timeout=10)
                    first: dict[str, float] = {}
                    deadline = killed + 20 * failover_time
                    while set(first) != orphans and time.monotonic() < deadline:
                        for entry in fleet.log()[mark:]:
                            shard = shard_of(entry.ids[0])
                            if entry.phase == "start" and shard in orphans:
                                first.setdefault(shard, time.monotonic() - killed)
                        await anyio.sleep(0.05)
                    if set(first) != orphans:
                        raise RuntimeError(f"shards {orphans - set(first)} were never taken over")
                    results.append(
                        Kill(victim, len(orphans), max(first.values()), min(first.values()))
                    )
                    replacement = f"{victim}-{number + 2}"
                    names[names.index(victim)] = replacement
                    fleet.start(replacement)
        finally:
            fleet.stop_all()
    return results


# Requests per lease per second, through a counting proxy.


async def _noop(event: dict[str, Any], context: Any) -> None:
    return None


async def measure_requests(
    case: str,
    kinesis: str,
    arn: str,
    dynamodb: str,
    failover_time: float,
    window: float,
    producer: Any = None,
    total: int | None = None,
) -> RequestRate:
    from tests.support.http_faults import KinesisFaultInjector
    from tests.support.kinesis import wait_for

    table = f"fleet-requests-{uuid.uuid4().hex[:8]}"
    async with KinesisFaultInjector(dynamodb) as proxy:
        coordination = CoordinationConfig(
            backend="dynamodb",
            table=table,
            worker_id="bench",
            failover_time=failover_time,
            endpoint_url=proxy.endpoint_url,
            region=REGION,
        )
        engine = Engine(
            kinesis=KinesisConfig(endpoint_url=kinesis, region=REGION),
            checkpoint_store=MemoryCheckpointStore(),
            poll_settings=PollSettings(base_interval=1.0),
            coordination=coordination,
        )
        config = EventSourceMappingConfig(
            function_name="bench",
            event_source_arn=arn,
            starting_position="TRIM_HORIZON",
            batch_size=1000,
        )
        async with engine, anyio.create_task_group() as group:
            if producer is not None:
                group.start_soon(producer)
            mapping = await engine.add_mapping(config, _noop)

            def all_held() -> bool:
                leases = engine.mapping_statistics(mapping).leases
                return leases is not None and leases.held == REQUEST_SHARDS

            await wait_for(all_held, 60, message="every lease held")
            await anyio.sleep(failover_time)  # past the first rounds: steady state
            start, began = len(proxy.calls), time.monotonic()
            done = engine.mapping_statistics(mapping).counters.succeeded_events
            await anyio.sleep(window)
            seconds = time.monotonic() - began
            calls = Counter(call.operation for call in proxy.calls[start:])
            finished = engine.mapping_statistics(mapping).counters.succeeded_events
            group.cancel_scope.cancel()
    rate = (finished - done) / seconds / REQUEST_SHARDS
    left = total is None or finished < total
    return RequestRate(case, REQUEST_SHARDS, seconds, rate, dict(calls), left)


async def _low_rate(moto: str, dynamodb: str, failover_time: float, window: float) -> RequestRate:
    from tests.support.kinesis import create_stream, kinesis_client, put_records

    async with kinesis_client(moto) as client:
        stream = f"fleet-low-{uuid.uuid4().hex[:8]}"
        arn = await create_stream(client, stream, REQUEST_SHARDS)

        async def produce() -> None:  # about one record per shard per second
            n = 0
            while True:
                batch = [(f"key-{n + i}", b"x" * 100) for i in range(REQUEST_SHARDS)]
                n += REQUEST_SHARDS
                await put_records(client, stream, batch)
                await anyio.sleep(1.0)

        return await measure_requests(
            "about 1 record/s per shard (moto)", moto, arn, dynamodb, failover_time, window, produce
        )


async def _high_rate(dynamodb: str, failover_time: float, window: float) -> RequestRate:
    from tests.support.kinesis import kinesis_client

    # enough records that the consumer is still draining when the window closes
    spec = StreamSpec(REQUEST_SHARDS, 50, int(HIGH_RATE * (window + failover_time + 4)))
    with ReplayServer() as server:
        async with kinesis_client(server.url, read_timeout=300) as client:
            await client.list_shards(StreamName=spec.name)  # the server builds the records now
        return await measure_requests(
            "drain as fast as it goes (replay server)",
            server.url,
            spec.arn,
            dynamodb,
            failover_time,
            window,
            total=spec.total,
        )


# The report.


def formula(leases: int, failover_time: float) -> dict[str, float]:
    """Requests per lease per second the algorithm predicts (docs/leases.md), no jitter."""
    return {
        "UpdateItem": 3 * (leases + 1) / failover_time / leases,
        "Query": 2 / failover_time / leases,
    }


def build_report(
    kills: list[Kill],
    rates: list[RequestRate],
    scale: list[ScaleRun],
    failover_time: float,
    command: str,
    name: str = "fleet",
) -> Report:
    rows = [["figure", "value", "against"]]
    if kills:
        rows += failover_rows(kills, failover_time)
    for rate in rates:
        rows += request_rows(rate, failover_time)
    if scale:
        rows += scale_rows(scale)
    notes = []
    if kills or rates:
        notes.append(
            f"failover_time = {failover_time:g} s (take interval {failover_time / 2:g} s, "
            f"renewals every {failover_time / 3:.2f} s); leases in dynalite."
        )
    if kills:
        notes += [
            f"{len(kills)} kills of one of three `kinesis-esm run` workers on an "
            f"{FAILOVER_SHARDS}-shard moto stream under load.",
            "Failover of a kill: from kill -9 to the first invocation by another worker of the "
            "last of the dead worker's shards (records log polled every 50 ms).",
        ]
    if rates:
        notes += [
            f"Requests: one worker holding all {REQUEST_SHARDS} leases of a mapping; every "
            "DynamoDB call counted by a proxy over the window. Per lease figures include the "
            "worker's heartbeat and take rounds spread over its leases.",
            "Checkpoints ride on renewals: the rate does not grow with the record rate.",
        ]
    if scale:
        notes += scale_notes(scale)
    return Report(
        name=name,
        title="Fleet: failover after kill -9, lease-table requests per lease per second, scale-out",
        command=command,
        notes=notes,
        data={
            "failover_time": failover_time,
            "kills": [_kill(k) for k in kills],
            "requests": [_rate(r) for r in rates],
            "formula_per_lease_second": formula(REQUEST_SHARDS, failover_time),
            "scale_out": [scale_json(r) for r in scale],
            "scale_out_ratio": scale_ratio(scale) if scale else None,
        },
        table=rows,
    )


def failover_rows(kills: list[Kill], failover_time: float) -> list[list[str]]:
    slowest = [k.slowest for k in kills]
    bound = failover_time * 1.5
    rows: list[list[str]] = []
    rows.append(
        [
            "failover, median of kills (slowest shard)",
            f"{median(slowest):.2f} s",
            f"failover_time {failover_time:g} s; + take interval = {bound:g} s",
        ]
    )
    rows.append(["failover, max", f"{max(slowest):.2f} s", f"{bound:g} s + shard start"])
    rows.append(["first shard back, median", f"{median([k.fastest for k in kills]):.2f} s", ""])
    return rows


def request_rows(rate: RequestRate, failover_time: float) -> list[list[str]]:
    predicted = formula(REQUEST_SHARDS, failover_time)
    rows: list[list[str]] = []
    for operation in ("UpdateItem", "Query", "GetItem"):
        expected = predicted.get(operation)
        rows.append(
            [
                f"{operation}/lease/s, {rate.case}, "
                f"{rate.records_per_shard_second:,.0f} records/s per shard",
                f"{rate.per_lease_second(operation):.3f}",
                "" if expected is None else f"formula {expected:.3f} (+20 % jitter)",
            ]
        )
    rows.append([f"all requests/lease/s, {rate.case}", f"{rate.per_lease_second():.3f}", ""])
    return rows


def _kill(kill: Kill) -> dict[str, Any]:
    return {
        "worker": kill.worker,
        "shards": kill.shards,
        "slowest": kill.slowest,
        "fastest": kill.fastest,
    }


def _rate(rate: RequestRate) -> dict[str, Any]:
    return {
        "case": rate.case,
        "leases": rate.leases,
        "seconds": rate.seconds,
        "records_per_shard_second": rate.records_per_shard_second,
        "calls": dict(rate.calls),
        "per_lease_second": rate.per_lease_second(),
        "still_draining": rate.still_draining,
    }


def main(argv: list[str] | None = None) -> Report:
    from tests.support.dynalite import Dynalite
    from tests.support.emulators import MotoServer

    parser = argparse.ArgumentParser(prog="python -m benchmarks fleet", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", const="quick", dest="profile")
    group.add_argument("--full", action="store_const", const="full", dest="profile")
    parser.add_argument("--failover-time", type=float, default=3.0)
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        help="run one section; its report is fleet-<section> (fleet holds all three)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    profile = args.profile or "default"
    kills, window = PROFILES[profile]
    sections = [args.only] if args.only else list(SECTIONS)
    prepare_environment()
    progress = Progress(_steps(sections, profile), "fleet")
    failovers: list[Kill] = []
    rates: list[RequestRate] = []
    scale: list[ScaleRun] = []
    with MotoServer() as moto, Dynalite() as dynalite, tempfile.TemporaryDirectory() as tmp:
        if "failover" in sections:
            failovers = run(
                measure_failover(
                    moto.endpoint_url, dynalite.endpoint_url, Path(tmp), args.failover_time, kills
                )
            )
            progress.step(f"failover: {', '.join(f'{k.slowest:.1f}s' for k in failovers)}")
        if "requests" in sections:
            low = run(
                _low_rate(moto.endpoint_url, dynalite.endpoint_url, args.failover_time, window)
            )
            progress.step(f"requests at {low.records_per_shard_second:.1f} rec/s/shard")
            high = run(_high_rate(dynalite.endpoint_url, args.failover_time, window))
            progress.step(f"requests at {high.records_per_shard_second:,.0f} rec/s/shard")
            rates = [low, high]
        if "scale-out" in sections:
            scale = run_scale_out(
                dynalite.endpoint_url, Path(tmp), SCALE_FAILOVER_TIME, profile, progress
            )
    progress.close()
    command = " ".join(["python -m benchmarks fleet", *(argv or [])])
    name = "fleet" if len(sections) == len(SECTIONS) else f"fleet-{sections[0]}"
    report = build_report(failovers, rates, scale, args.failover_time, command, name)
    for path in report.write(args.results_dir):
        print(path)
    return report


def _steps(sections: list[str], profile: str) -> int:
    steps = {"failover": 1, "requests": 2, "scale-out": 2 * SCALE_PROFILES[profile][0]}
    return sum(steps[section] for section in sections)


if __name__ == "__main__":
    main()
