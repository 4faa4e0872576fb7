"""`kinesis-esm run` workers of one fleet, for tests and benchmarks: each worker with its own
config and state file, leases in one DynamoDB table, one records log for all
(tests/support/records_log.py: the handler logs every batch with the worker's pid), a
continuous producer, and readers of the log and of the lease table.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from kinesis_esm import stable_uuid
from kinesis_esm.leases import Lease
from kinesis_esm.state._dynamodb import DynamoDBLeaseStore
from tests.support.kinesis import KinesisClient, StreamRecord, put_records
from tests.support.records_log import BLOCK_ENV, LOG_ENV, LogEntry, read_log

__all__ = [
    "FUNCTION",
    "HANDLER_MODULE",
    "Fleet",
    "Producer",
    "Worker",
    "config_text",
    "done",
    "ids",
    "producing",
    "sequence",
    "shard_of",
    "spawn",
    "starts",
    "write_handler_module",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).with_name("kinesis-esm")
FUNCTION = "logger"
HANDLER_MODULE = "esm_fleet_handlers"
BATCH = 10


def config_text(
    kinesis: str, state: Path, arn: str, coordination: dict[str, object] | None = None
) -> str:
    section = ""
    if coordination is not None:
        lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in coordination.items())
        section = f"[coordination]\n{lines}\n"
    return f"""\
[kinesis]
endpoint_url = "{kinesis}"
region = "us-east-1"

[state]
path = "{state}"

[control]
port = 0

{section}[functions.{FUNCTION}]
handler = "{HANDLER_MODULE}:handler"
timeout = 10
isolation = "thread"

[[event_source_mappings]]
function_name = "{FUNCTION}"
event_source_arn = "{arn}"
starting_position = "TRIM_HORIZON"
batch_size = {BATCH}
"""


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    output_path: Path
    block_flag: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def signal_group(self, signum: signal.Signals) -> None:
        os.killpg(self.process.pid, signum)  # the daemon and anything it started

    def metrics_url(self) -> str:
        found = re.search(r"control plane listening on (http://\S+)", self.output())
        assert found, self.output()
        return found.group(1) + "/metrics"


@dataclass
class Fleet:
    """`kinesis-esm run` workers of one mapping, each with its own config and state file."""

    workdir: Path
    kinesis: str
    dynamodb: str
    table: str
    arn: str
    failover_time: float = 2.0
    workers: dict[str, Worker] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.workdir / "records.log"

    @property
    def uuid(self) -> str:
        return stable_uuid(FUNCTION, self.arn)

    def start(self, name: str, **coordination: object) -> Worker:
        settings: dict[str, object] = {
            "backend": "dynamodb",
            "table": self.table,
            "worker_id": name,
            "failover_time": self.failover_time,
            "endpoint_url": self.dynamodb,
            "region": "us-east-1",
            **coordination,
        }
        config = self.workdir / f"{name}.toml"
        state = self.workdir / f"{name}.db"
        config.write_text(config_text(self.kinesis, state, self.arn, settings))
        block = self.workdir / f"{name}.block"
        output = self.workdir / f"{name}.out"
        worker = Worker(
            name, spawn(self.workdir, config, output, self.log_path, block), output, block
        )
        self.workers[name] = worker
        return worker

    def log(self) -> list[LogEntry]:
        return read_log(self.log_path)

    async def leases(self) -> list[Lease]:
        async with DynamoDBLeaseStore(
            self.table, endpoint_url=self.dynamodb, region="us-east-1", create_table=False
        ) as store:
            snapshot = await store.read_fleet(self.uuid)
        return [lease for lease in snapshot.leases if not lease.finished]

    async def owners(self) -> dict[str, str | None]:
        return {lease.shard_id: lease.owner for lease in await self.leases()}

    def balanced(self, names: set[str], shards: int) -> Callable[[], object]:
        """True once every lease is owned by one of `names`, as evenly as counts allow, with
        no hand-off pending, and the same for 2.5 take intervals (the fleet has settled)."""
        low, extra = divmod(shards, len(names))
        even = sorted([low + 1] * extra + [low] * (len(names) - extra))
        since: list[tuple[dict[str, str | None], float]] = []

        async def check() -> bool:
            try:
                leases = await self.leases()
            except Exception:  # the table may not exist yet
                return False
            owners = {lease.shard_id: lease.owner for lease in leases}
            held = Counter(owners.values())
            pending = any(lease.handoff_target for lease in leases)
            if set(held) != names or sorted(held.values()) != even or pending:
                since.clear()
                return False
            now = time.monotonic()
            if not since or since[0][0] != owners:
                since[:] = [(owners, now)]
            return now - since[0][1] >= 1.25 * self.failover_time  # 2.5 take intervals

        return check

    def stop_all(self) -> None:
        for worker in self.workers.values():
            if worker.process.poll() is None:
                with_suppressed(worker.signal_group, signal.SIGCONT)
                with_suppressed(worker.signal_group, signal.SIGKILL)
                worker.process.wait(timeout=10)


def with_suppressed(call: Callable[[signal.Signals], None], signum: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # already gone
        call(signum)


def spawn(
    workdir: Path, config: Path, output: Path, log_path: Path, block: Path
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            LOG_ENV: str(log_path),
            BLOCK_ENV: str(block),
            "PYTHONPATH": str(REPO_ROOT),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    with output.open("wb") as out:
        return subprocess.Popen(
            [str(CLI), "run", "--config", str(config)],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class Producer:
    """Puts records continuously (16 keys, round robin) until stopped; keeps what it wrote.
    A stop waits for the put in progress, so every record written is known."""

    def __init__(self, client: KinesisClient, stream: str, per_put: int, every: float) -> None:
        self.client, self.stream, self.per_put, self.every = client, stream, per_put, every
        self.written: list[StreamRecord] = []
        self.stopping = anyio.Event()

    async def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            batch = [(f"k{(n + i) % 16}", f"{n + i}".encode()) for i in range(self.per_put)]
            n += self.per_put
            self.written += await put_records(self.client, self.stream, batch)
            with anyio.move_on_after(self.every):
                await self.stopping.wait()


@asynccontextmanager
async def producing(
    client: KinesisClient, stream: str, per_put: int = 8, every: float = 0.25
) -> AsyncIterator[Producer]:
    producer = Producer(client, stream, per_put, every)
    async with anyio.create_task_group() as group:
        group.start_soon(producer.run)
        try:
            yield producer
        finally:
            producer.stopping.set()


def ids(records: list[StreamRecord]) -> set[str]:
    return {f"{r.shard_id}:{r.sequence_number}" for r in records}


def starts(log: list[LogEntry], pid: int | None = None) -> list[str]:
    return [i for e in log if e.phase == "start" and pid in (None, e.pid) for i in e.ids]


def done(log: list[LogEntry]) -> set[str]:
    return {i for e in log if e.phase == "done" for i in e.ids}


def sequence(event_id: str) -> int:
    return int(event_id.split(":")[1])


def shard_of(event_id: str) -> str:
    return event_id.split(":")[0]


def write_handler_module(workdir: Path) -> None:
    """The module the configs name: the records-log handler, as a user's module would be."""
    (workdir / f"{HANDLER_MODULE}.py").write_text("from tests.support.records_log import handler\n")
