"""A fleet as users run it: several ``kinesis-esm run`` processes on one stream, leases in
dynalite (which locks an item between a condition and its write, as DynamoDB does), Kinesis
from moto, records produced continuously. Each worker logs every batch with its pid
(tests/support/records_log.py), so the log says who delivered what, in which order.

Guarantees checked: every shard owned by exactly one live worker; kill -9 of a worker: its
shards taken within about failover_time plus a take interval, nothing lost, per-key order, and
the only records delivered twice are the killed worker's last, uncheckpointed ones; a new
worker and a SIGTERM move leases by hand-off, delivering nothing twice; a worker paused past
failover_time (SIGSTOP, SIGCONT) cannot move its old shard's checkpoint, invokes nothing more
for it, and says so; a missing table permission is one line and exit 2; two ``backend =
"local"`` daemons on one state file: the second is refused.
"""

from __future__ import annotations

import re
import signal
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from tests.support.fleet import (
    Fleet,
    config_text,
    done,
    ids,
    producing,
    sequence,
    shard_of,
    spawn,
    starts,
    write_handler_module,
)
from tests.support.http_faults import Fault, KinesisFaultInjector
from tests.support.kinesis import (
    KinesisClient,
    create_stream,
    put_records,
    wait_for,
)
from tests.support.records_log import LogEntry, read_log

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FAILOVER = 2.0
TAKE_EVERY = FAILOVER / 2
RENEW_EVERY = FAILOVER / 3


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    write_handler_module(tmp_path)
    return tmp_path


@pytest.fixture
async def fleet_of(
    moto: str, dynamodb: str, workdir: Path
) -> AsyncIterator[Callable[[str], Fleet]]:
    made: list[Fleet] = []

    def make(arn: str) -> Fleet:
        table = f"fleet-{uuid.uuid4().hex[:10]}"
        fleet = Fleet(workdir, moto, dynamodb, table, arn, failover_time=FAILOVER)
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        fleet.stop_all()


def check_per_key_order(log: list[LogEntry], keys: dict[str, str]) -> None:
    """Per key: each worker invoked its records in order, and first deliveries are in order."""
    first: dict[str, list[int]] = defaultdict(list)
    by_worker: dict[tuple[str, int], list[int]] = defaultdict(list)
    seen: set[str] = set()
    for entry in log:
        if entry.phase != "start":
            continue
        for event_id in entry.ids:
            key = keys[event_id]
            by_worker[(key, entry.pid)].append(sequence(event_id))
            if event_id not in seen:
                seen.add(event_id)
                first[key].append(sequence(event_id))
    for key, order in first.items():
        assert order == sorted(order), f"key {key}: first deliveries out of order"
    for (key, pid), order in by_worker.items():
        assert order == sorted(order), f"key {key}: worker {pid} out of order"


# The fleet under load: steady state, kill -9, a new worker, SIGTERM.


async def test_a_fleet_under_load_through_kill_9_a_new_worker_and_sigterm(
    client: KinesisClient, stream_name: str, fleet_of: Callable[[str], Fleet]
) -> None:
    shards = 8
    arn = await create_stream(client, stream_name, shards)
    fleet = fleet_of(arn)
    w1, w2, w3 = (fleet.start(name) for name in ("w1", "w2", "w3"))
    pids = {w.pid: w.name for w in (w1, w2, w3)}
    async with producing(client, stream_name) as producer:
        await wait_for(fleet.balanced({"w1", "w2", "w3"}, shards), 60, 0.3, "3/3/2 leases")

        # Steady state: every shard's records are delivered by its owner, and by nobody else.
        owners = await fleet.owners()
        mark = len(fleet.log())
        await wait_for(
            lambda: {shard_of(i) for i in starts(fleet.log()[mark:])} == set(owners),
            20,
            message="deliveries on every shard",
        )
        steady = fleet.log()[mark:]
        for shard, owner in owners.items():
            who = {
                pids[e.pid] for e in steady if e.phase == "start" and shard_of(e.ids[0]) == shard
            }
            assert who == {owner}, f"{shard} delivered by {who}, leased to {owner}"

        # kill -9: the shards of w1 are taken by w2 and w3, and delivered again soon.
        orphans = {shard for shard, owner in owners.items() if owner == "w1"}
        w1.signal_group(signal.SIGKILL)
        killed_at = time.monotonic()
        w1.process.wait(timeout=10)
        mark = len(fleet.log())

        def delivered_elsewhere() -> bool:
            fresh = fleet.log()[mark:]
            return orphans <= {shard_of(e.ids[0]) for e in fresh if e.phase == "start"}

        await wait_for(delivered_elsewhere, 30, message="w1's shards delivered by the others")
        takeover = time.monotonic() - killed_at
        # failover_time + a take interval + a renewal interval + starting the shard (a poll)
        assert takeover < FAILOVER + TAKE_EVERY + RENEW_EVERY + 3.0, f"took {takeover:.1f} s"
        assert set((await fleet.owners()).values()) <= {"w2", "w3"}

        # A fourth worker: leases move to it by hand-off.
        w4 = fleet.start("w4")
        pids[w4.pid] = "w4"
        await wait_for(fleet.balanced({"w2", "w3", "w4"}, shards), 60, 0.3, "3/3/2 with w4")

        # SIGTERM: w2 hands its leases off and exits 0.
        w2.process.send_signal(signal.SIGTERM)
        await wait_for(lambda: w2.process.poll() is not None, 30, message="w2 to exit")
        assert w2.process.returncode == 0, w2.output()
        await wait_for(fleet.balanced({"w3", "w4"}, shards), 30, 0.3, "4/4 after w2 left")
    written = producer.written
    await wait_for(lambda: ids(written) <= done(fleet.log()), 30, message="every record")
    for worker in (w3, w4):
        worker.process.send_signal(signal.SIGTERM)
    for worker in (w3, w4):
        await wait_for(lambda w=worker: w.process.poll() is not None, 30, message="exit")
        assert worker.process.returncode == 0, worker.output()

    log = fleet.log()
    assert ids(written) <= done(log)  # nothing lost
    keys = {f"{r.shard_id}:{r.sequence_number}": r.partition_key for r in written}
    check_per_key_order(log, keys)
    # Twice only: the killed worker's last records of each of its shards (delivered after its
    # last checkpoint reached the table). Hand-offs (startup, w4, SIGTERM) repeat nothing.
    counts = Counter(starts(log))
    twice = {i for i, n in counts.items() if n > 1}
    assert max(counts.values()) <= 2
    by_w1 = starts(log, w1.pid)
    assert twice <= set(by_w1), f"repeated, not by the killed worker: {twice - set(by_w1)}"
    for shard in {shard_of(i) for i in twice}:
        assert shard in orphans
        mine = sorted(sequence(i) for i in by_w1 if shard_of(i) == shard)
        again = sorted(sequence(i) for i in twice if shard_of(i) == shard)
        assert again == mine[len(mine) - len(again) :], f"{shard}: not a tail of w1's deliveries"
    print(f"takeover {takeover:.2f} s; {len(twice)} records twice, all w1's last ones")


# Fencing: a worker paused past failover_time.


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        text: str = answer.read().decode()
    return text


async def test_a_worker_paused_past_failover_time_cannot_move_the_checkpoint(
    client: KinesisClient, stream_name: str, fleet_of: Callable[[str], Fleet]
) -> None:
    arn = await create_stream(client, stream_name, 2)
    fleet = fleet_of(arn)
    w1, w2 = fleet.start("w1"), fleet.start("w2")
    await wait_for(fleet.balanced({"w1", "w2"}, 2), 60, 0.3, "a lease each")
    owners = await fleet.owners()
    (shard,) = [s for s, owner in owners.items() if owner == "w1"]

    # A batch of w1's shard in flight, held by w1's flag; then w1 is paused.
    w1.block_flag.touch()
    first = await put_records(client, stream_name, [(f"k{i}", b"1") for i in range(30)])
    on_shard = sorted(
        (r for r in first if r.shard_id == shard), key=lambda r: int(r.sequence_number)
    )
    assert on_shard, "no record landed on w1's shard"

    def in_flight() -> set[str]:
        log = fleet.log()
        return set(starts(log, w1.pid)) - done(log)

    await wait_for(in_flight, 20, message="a batch in flight on w1")
    held = in_flight()
    w1.signal_group(signal.SIGSTOP)
    w1.block_flag.unlink()  # when it runs again, its handler finishes that batch at once

    # w2 takes the shard after failover_time and delivers it from the last checkpoint on.
    async def taken() -> bool:
        return (await fleet.owners()).get(shard) == "w2"

    await wait_for(taken, 10 * FAILOVER, 0.2, "w2 to take w1's shard")
    more = await put_records(client, stream_name, [(f"k{i}", b"2") for i in range(30)])
    expected = ids(first + more)
    await wait_for(lambda: expected <= done(fleet.log()), 20, message="every record by w2")
    last = max(int(r.sequence_number) for r in first + more if r.shard_id == shard)

    async def checkpoint() -> int:
        (lease,) = [lease for lease in await fleet.leases() if lease.shard_id == shard]
        assert lease.checkpoint is not None
        return int(lease.checkpoint.sequence)

    async def reached() -> bool:
        return await checkpoint() >= last

    await wait_for(reached, 10, message="w2's checkpoint at the last record")

    # SIGCONT: w1 finishes the batch it had in flight, but may not checkpoint it or go on.
    mark = len(fleet.log())
    w1.signal_group(signal.SIGCONT)
    await wait_for(
        lambda: f"lost the lease of {shard}" in w1.output(), 10, message="w1 to say it lost it"
    )
    await wait_for(lambda: held <= done(fleet.log()), 10, message="w1's in-flight batch to end")
    deadline = time.monotonic() + 2 * RENEW_EVERY
    while time.monotonic() < deadline:  # bounded: two renewal rounds of w1 after its wake-up
        assert await checkpoint() >= last, "the paused worker moved the checkpoint back"
        await anyio.sleep(0.1)
    after = [i for i in starts(fleet.log()[mark:], w1.pid) if shard_of(i) == shard]
    assert all(sequence(i) > last for i in after), f"w1 invoked old records again: {after}"
    assert "lease" in w1.output() and "lost" in w1.output()
    metrics = await anyio.to_thread.run_sync(scrape, w1.metrics_url())
    lost = re.search(r'kinesis_esm_leases_lost_total\{[^}]*worker="w1"[^}]*\} (\S+)', metrics)
    assert lost and float(lost.group(1)) >= 1, metrics
    # Twice: only the batch w1 had in flight when it was paused.
    twice = {i for i, n in Counter(starts(fleet.log())).items() if n > 1}
    assert twice <= held
    for worker in (w1, w2):
        worker.process.send_signal(signal.SIGTERM)
    for worker in (w1, w2):
        await wait_for(lambda w=worker: w.process.poll() is not None, 30, message="exit")
        assert worker.process.returncode == 0, worker.output()


# Errors at start.


async def test_a_missing_table_permission_is_one_line_and_exit_2(
    moto: str, dynamodb: str, client: KinesisClient, stream_name: str, workdir: Path
) -> None:
    arn = await create_stream(client, stream_name, 1)
    denied = Fault("AccessDeniedException", message="User: x is not authorized to perform: X")
    async with KinesisFaultInjector(dynamodb, rule=lambda op, shard, n: denied) as proxy:
        fleet = Fleet(workdir, moto, proxy.endpoint_url, "fleet-denied", arn, FAILOVER)
        worker = fleet.start("w1")
        await wait_for(lambda: worker.process.poll() is not None, 30, message="the exit")
    assert worker.process.returncode == 2, worker.output()
    errors = [line for line in worker.output().splitlines() if line.startswith("kinesis-esm:")]
    assert len(errors) == 1, worker.output()
    assert "AccessDeniedException" in errors[0] and "fleet-denied" in errors[0]
    assert "dynamodb:UpdateItem" in errors[0]
    assert "Traceback" not in worker.output()


async def test_a_second_local_daemon_on_the_same_state_file_is_refused(
    moto: str, client: KinesisClient, stream_name: str, workdir: Path
) -> None:
    arn = await create_stream(client, stream_name, 1)
    config = workdir / "local.toml"
    config.write_text(config_text(moto, workdir / "state.db", arn))
    log_path, block = workdir / "records.log", workdir / "block"
    first = spawn(workdir, config, workdir / "first.out", log_path, block)
    started = [first]
    try:
        await wait_for(
            lambda: "control plane listening" in (workdir / "first.out").read_text(),
            30,
            message="the first daemon up",
        )
        second = spawn(workdir, config, workdir / "second.out", log_path, block)
        started.append(second)
        await wait_for(lambda: second.poll() is not None, 30, message="the second to exit")
        text = (workdir / "second.out").read_text()
        assert second.returncode == 2, text
        assert f"in use by another kinesis-esm daemon (pid {first.pid})" in text, text
        assert first.poll() is None  # the first one runs on
        first.kill()  # the lock goes with the process, even on kill -9
        first.wait(timeout=10)
        third = spawn(workdir, config, workdir / "third.out", log_path, block)
        started.append(third)
        (record,) = await put_records(client, stream_name, [("k", b"after")])
        await wait_for(
            lambda: f"{record.shard_id}:{record.sequence_number}" in done(read_log(log_path)),
            30,
            message="a daemon after the kill -9 delivering",
        )
        third.send_signal(signal.SIGTERM)
        assert third.wait(timeout=30) == 0
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
