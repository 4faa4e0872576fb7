"""The parallelization factor through a real Kinesis API (moto's server).

* With factor 4, many keys and a handler that sleeps a random time, one shard runs several
  invocations at once, and per-key order holds in the recorded invocations.
* With a slow handler, the records buffered per shard never exceed ``max_buffered_records`` and
  the poller stops reading while the function is behind (back-pressure, not memory).
* ``kinesis-esm run`` killed with SIGKILL mid-stream and restarted delivers every record at least
  once, and delivers again only records above the checkpoint stored before the kill.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from kinesis_esm import (
    Engine,
    EventSourceMappingConfig,
    KinesisConfig,
    MemoryCheckpointStore,
    PollSettings,
    ShardStatistics,
)
from tests.support.emulators import REPO_ROOT
from tests.support.engine_child import OUT_VARIABLE, SLEEP_VARIABLE, read_deliveries
from tests.support.kinesis import (
    StreamRecord,
    create_stream,
    kinesis_client,
    put_records,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.anyio

FAST_POLL = PollSettings(base_interval=0.2)


def keyed_records(count: int, keys: int, seed: int = 7) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    names = [f"customer-{k:03d}" for k in range(keys)]
    return [(key, f"{key}|{i}".encode()) for i, key in enumerate(rng.choices(names, k=count))]


async def make_stream(
    endpoint: str, name: str, shards: int, count: int, keys: int
) -> tuple[str, list[StreamRecord]]:
    async with kinesis_client(endpoint) as client:
        arn = await create_stream(client, name, shards)
        written = await put_records(client, name, keyed_records(count, keys))
    return arn, written


@dataclass
class Invocation:
    shard: str
    start: int  # ticks of one logical clock shared by every invocation
    records: list[tuple[str, int]]  # (partition key, sequence number)
    end: int = -1


@dataclass
class Recorder:
    """An async handler that logs its invocations and counts them in flight, per shard."""

    sleep: tuple[float, float]
    invocations: list[Invocation] = field(default_factory=list)
    active: Counter[str] = field(default_factory=Counter)
    peak: Counter[str] = field(default_factory=Counter)
    finished_records: int = 0
    _clock: Iterator[int] = field(default_factory=itertools.count)
    _rng: random.Random = field(default_factory=lambda: random.Random(3))

    async def __call__(self, event: dict[str, Any], context: Any) -> None:
        records = event["Records"]
        shard = records[0]["eventID"].split(":", 1)[0]
        invocation = Invocation(
            shard,
            next(self._clock),
            [(r["kinesis"]["partitionKey"], int(r["kinesis"]["sequenceNumber"])) for r in records],
        )
        self.invocations.append(invocation)
        self.active[shard] += 1
        self.peak[shard] = max(self.peak[shard], self.active[shard])
        try:
            await anyio.sleep(self._rng.uniform(*self.sleep))
        finally:
            self.active[shard] -= 1
            invocation.end = next(self._clock)
            self.finished_records += len(records)

    def delivered(self) -> int:
        return sum(len(i.records) for i in self.invocations if i.end >= 0)


def check_per_key_order(invocations: list[Invocation]) -> int:
    """Per key: sequence numbers rise across invocations (in start order), and an invocation
    holding a later record started after the one holding the earlier record finished.
    Returns how many keys were seen."""
    by_key: dict[str, list[tuple[int, Invocation]]] = defaultdict(list)
    for invocation in sorted(invocations, key=lambda i: i.start):
        sequences = [seq for _, seq in invocation.records]
        assert sequences == sorted(sequences), "a batch out of shard order"
        for key, seq in invocation.records:
            by_key[key].append((seq, invocation))
    for key, seen in by_key.items():
        for (seq_a, inv_a), (seq_b, inv_b) in itertools.pairwise(seen):
            assert seq_a < seq_b, f"key {key}: {seq_b} handed out before {seq_a}"
            if inv_a is not inv_b:
                assert inv_b.start > inv_a.end, (
                    f"key {key}: the invocation of {seq_b} started (tick {inv_b.start}) before "
                    f"the invocation of {seq_a} finished (tick {inv_a.end})"
                )
    return len(by_key)


def shard_stats(engine: Engine) -> list[ShardStatistics]:
    return [s for m in engine.statistics().mappings for s in m.shards]


async def test_lanes_run_concurrently_on_one_shard_and_keep_per_key_order(
    moto: str, stream_name: str
) -> None:
    arn, written = await make_stream(moto, stream_name, shards=1, count=1200, keys=80)
    store = MemoryCheckpointStore()
    recorder = Recorder(sleep=(0.0, 0.02))
    config = EventSourceMappingConfig(
        function_name="lanes",
        event_source_arn=arn,
        starting_position="TRIM_HORIZON",
        batch_size=20,
        parallelization_factor=4,
    )
    last_sequence = written[-1].sequence_number
    with anyio.fail_after(20):
        async with Engine(
            kinesis=KinesisConfig(endpoint_url=moto),
            checkpoint_store=store,
            poll_settings=FAST_POLL,
        ) as engine:
            uuid = await engine.add_mapping(config, recorder)
            await wait_for(lambda: recorder.delivered() >= len(written), 15, message="every record")
            await wait_for(
                lambda: store.checkpoints.get(uuid, {}).get(written[0].shard_id) == last_sequence,
                5,
                message="the checkpoint at the last record",
            )
            (stats,) = shard_stats(engine)
            assert stats.lanes == 4
            assert stats.records_buffered == 0

    shard = written[0].shard_id
    assert recorder.peak[shard] > 1, "lanes of one shard never ran at the same time"
    assert recorder.peak[shard] <= 4
    delivered = Counter(seq for i in recorder.invocations for _, seq in i.records)
    assert set(delivered) == {int(r.sequence_number) for r in written}
    assert max(delivered.values()) == 1  # no failures, no restart: exactly once
    assert check_per_key_order(recorder.invocations) == 80
    assert max(len(i.records) for i in recorder.invocations) <= 20


async def test_a_slow_function_bounds_buffered_records_and_pauses_polling(
    moto: str, stream_name: str
) -> None:
    max_buffered = 60
    arn, written = await make_stream(moto, stream_name, shards=1, count=1500, keys=50)
    recorder = Recorder(sleep=(0.1, 0.1))
    config = EventSourceMappingConfig(
        function_name="slow",
        event_source_arn=arn,
        starting_position="TRIM_HORIZON",
        batch_size=10,
        parallelization_factor=4,
        max_buffered_records=max_buffered,
    )
    peak_buffered = 0
    samples = 0
    polled = 0

    async def sample(engine: Engine) -> None:
        nonlocal peak_buffered, samples, polled
        while True:
            for stats in shard_stats(engine):
                # one snapshot, no await in between: the handler's count is consistent with it
                peak_buffered = max(peak_buffered, stats.records_buffered)
                polled = stats.records_polled
                assert stats.records_buffered <= max_buffered
                # what was read and not finished is what is buffered, within the bound
                assert stats.records_polled <= recorder.finished_records + max_buffered
                samples += 1
            await anyio.sleep(0.005)

    with anyio.fail_after(20):
        async with (
            Engine(
                kinesis=KinesisConfig(endpoint_url=moto),
                checkpoint_store=MemoryCheckpointStore(),
                poll_settings=FAST_POLL,
            ) as engine,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(sample, engine)
            await engine.add_mapping(config, recorder)
            await wait_for(lambda: recorder.finished_records >= 300, 15, message="300 records")
            tg.cancel_scope.cancel()

    assert samples > 50
    assert max_buffered // 2 <= peak_buffered <= max_buffered  # it filled up, and no further
    assert polled < len(written) // 2, "the poller read ahead of a slow function"
    assert recorder.peak[written[0].shard_id] > 1


# kill -9 and restart of the daemon


def daemon_command(config: Path) -> list[str]:
    script = Path(sys.executable).with_name("kinesis-esm")
    if script.exists():
        return [str(script), "--log-level", "WARNING", "run", "--config", str(config)]
    code = "import sys; from kinesis_esm.cli._main import main; sys.exit(main())"
    return [sys.executable, "-c", code, "--log-level", "WARNING", "run", "--config", str(config)]


def start_daemon(config: Path, out: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, OUT_VARIABLE: str(out), SLEEP_VARIABLE: "0.05,0.15"}
    with log.open("ab") as log_file:
        return subprocess.Popen(
            daemon_command(config),
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stored_checkpoints(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT shard_id, checkpoint FROM checkpoints").fetchall()
    return {shard: checkpoint for shard, checkpoint in rows}


def stop_process(process: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    return process.wait(timeout)


async def test_kill_9_and_restart_delivers_everything_duplicates_only_above_checkpoint(
    moto: str, stream_name: str, tmp_path: Path
) -> None:
    arn, written = await make_stream(moto, stream_name, shards=2, count=2000, keys=40)
    db = tmp_path / "state.db"
    config = tmp_path / "kinesis-esm.toml"
    config.write_text(
        f"""
[kinesis]
endpoint_url = "{moto}"
region = "us-east-1"

[state]
path = "{db}"

[control]
port = 0

[functions.recorder]
handler = "tests.support.engine_child:handler"
timeout = 10

[[event_source_mappings]]
function_name = "recorder"
event_source_arn = "{arn}"
starting_position = "TRIM_HORIZON"
batch_size = 10
parallelization_factor = 4
"""
    )
    first_out, second_out = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    log = tmp_path / "daemon.log"
    shards = {r.shard_id for r in written}

    first = start_daemon(config, first_out, log)
    try:
        wait_until(
            lambda: (
                first.poll() is None
                and len(read_deliveries(first_out)) >= 500
                and db.exists()
                and set(stored_checkpoints(db)) == shards
            ),
            20,
            message="a third of the stream delivered and checkpointed",
        )
    finally:
        first.kill()  # SIGKILL: no clean stop, batches in flight are lost
        first.wait(10)
    assert first.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    checkpoints = stored_checkpoints(db)  # what the store held at the moment of the kill
    first_run = read_deliveries(first_out)
    assert len(first_run) < len(written), "the kill came after the end of the stream"

    second = start_daemon(config, second_out, log)
    try:
        wanted = {(r.shard_id, r.sequence_number) for r in written}

        def all_delivered() -> bool:
            assert second.poll() is None, log.read_text()[-3000:]
            seen = {(d["shard"], d["seq"]) for d in first_run + read_deliveries(second_out)}
            return wanted <= seen

        wait_until(all_delivered, 25, message="every record after the restart")
        assert stop_process(second, signal.SIGTERM, 15) == 0, log.read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(10)

    second_run = read_deliveries(second_out)
    checkpoint = {shard: int(checkpoints[shard]) for shard in shards}
    first_seen = {(d["shard"], int(d["seq"])) for d in first_run}
    second_seen = {(d["shard"], int(d["seq"])) for d in second_run}
    everything = {(r.shard_id, int(r.sequence_number)) for r in written}
    above = {(s, q) for s, q in everything if q > checkpoint[s]}
    assert first_seen | second_seen == everything  # at least once, nothing invented
    assert {(s, q) for s, q in first_seen if q <= checkpoint[s]} == everything - above
    assert second_seen == above, "the restart did not resume right after the checkpoint"
    duplicates = first_seen & second_seen
    assert duplicates, "no batch was in flight at the kill"
    assert all(q > checkpoint[s] for s, q in duplicates)
    assert len(second_run) == len(second_seen)  # the clean second run delivered each once
    # per-key order in each run's delivery log (lines are written when an invocation starts)
    for run in (first_run, second_run):
        last: dict[tuple[str, str], int] = {}
        for d in run:
            shard_key = (d["shard"], d["key"])
            assert int(d["seq"]) > last.get(shard_key, -1), f"key {d['key']} out of order"
            last[shard_key] = int(d["seq"])
