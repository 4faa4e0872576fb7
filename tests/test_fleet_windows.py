"""Tumbling windows in a fleet: the window state rides in the lease's checkpoint.

The store layer runs against moto's server, dynalite and the in-memory store (the same
conditions); the fleet runs engines in one process, Kinesis from moto, leases in dynalite (as
tests/test_fleet_engine.py). Windows are epoch-aligned on moto's arrival stamps, so a test
waits (bounded) for the wall clock to be early enough in a window for its moves to fit, and
the idle close is shortened with ``PollSettings.window_idle_close``.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from kinesis_esm import Engine, EventSourceMappingConfig, PollSettings
from kinesis_esm._statistics import MappingStatistics
from kinesis_esm.engine._fleet import WINDOW_STATE_LIMIT
from kinesis_esm.leases import (
    Checkpoint,
    CoordinatorSettings,
    Lease,
    LeaseCoordinator,
    LeaseStore,
    MemoryLeaseStore,
)
from kinesis_esm.leases._model import MAX_WINDOW_STATE_BYTES
from kinesis_esm.policy._windows import WindowSnapshot, window_of
from kinesis_esm.state._dynamodb import DynamoDBLeaseStore
from tests.support.fleet_engines import fleet_engine
from tests.support.kinesis import (
    KinesisClient,
    StreamRecord,
    create_stream,
    put_records,
    wait_for,
)

pytestmark = pytest.mark.anyio

M = "mapping-w"
FAILOVER = 2.0
IDLE_CLOSE = 0.5
FAST_POLL = PollSettings(base_interval=0.2, min_interval=0.1, window_idle_close=IDLE_CLOSE)


@pytest.fixture
def table() -> str:
    return f"fleet-windows-{uuid.uuid4().hex[:12]}"


# The model and the store.


def test_the_state_is_part_of_the_checkpoint_and_bounded_for_the_row() -> None:
    assert Checkpoint("7", 0, b"{}") != Checkpoint("7", 0, b'{"a":1}')  # a state change alone
    assert Checkpoint("7", 0, b"{}") != Checkpoint("7")
    assert Checkpoint("7", 1, b"{}") == Checkpoint("7", 1, b"{}")
    assert "window_state" not in repr(Checkpoint("7", 0, b"x" * 1000))  # not in the logs
    Checkpoint("7", 0, b"x" * MAX_WINDOW_STATE_BYTES)
    with pytest.raises(ValueError, match="window_state must be at most 393216 bytes"):
        Checkpoint("7", 0, b"x" * (MAX_WINDOW_STATE_BYTES + 1))
    with pytest.raises(ValueError, match="non-empty bytes"):
        Checkpoint("7", 0, b"")
    # the fleet's cap leaves room for the snapshot around the state, in the row's limit
    assert WINDOW_STATE_LIMIT + 4096 < MAX_WINDOW_STATE_BYTES < 400 * 1000


@pytest.fixture(params=["memory", "moto", "dynalite"])
async def store(request: pytest.FixtureRequest, table: str) -> AsyncIterator[LeaseStore]:
    if request.param == "memory":
        yield MemoryLeaseStore()
        return
    url: str = request.getfixturevalue(request.param)
    async with DynamoDBLeaseStore(table, endpoint_url=url, region="us-east-1") as dynamo:
        yield dynamo


def leased(result: Lease | object) -> Lease:
    assert isinstance(result, Lease), result
    return result


async def test_a_state_round_trips_through_create_take_renew_release_and_is_removed_with_it(
    store: LeaseStore,
) -> None:
    seed = Checkpoint("10", 0, b'{"seed":1}')
    assert await store.create_lease(M, "shard-0", (), seed)
    fresh = await store.get_lease(M, "shard-0")
    assert fresh is not None and fresh.checkpoint == seed
    assert fresh.checkpoint.window_state == b'{"seed":1}'

    taken = leased(await store.take(fresh, "a"))  # a take carries it
    assert taken.checkpoint == seed
    binary = bytes(range(256)) * 4  # any bytes, not only UTF-8
    renewed = leased(await store.renew(taken, checkpoint=Checkpoint("11", 0, binary)))
    assert renewed.checkpoint == Checkpoint("11", 0, binary)
    kept = leased(await store.renew(renewed))  # no checkpoint: the state stays
    assert kept.checkpoint == Checkpoint("11", 0, binary)

    same_sequence = Checkpoint("11", 0, b'{"n":2}')  # only the state moved
    moved = leased(await store.renew(kept, checkpoint=same_sequence))
    assert moved.checkpoint == same_sequence

    handed = leased(await store.release(moved, to="b", checkpoint=Checkpoint("12", 2, b"{}")))
    assert (handed.owner, handed.checkpoint) == ("b", Checkpoint("12", 2, b"{}"))
    received = leased(await store.take(handed, "b"))  # the new owner reads it back
    assert received.checkpoint == Checkpoint("12", 2, b"{}")
    assert (await store.read_fleet(M)).leases == (received,)

    cleared = leased(await store.renew(received, checkpoint=Checkpoint("13")))
    assert cleared.checkpoint == Checkpoint("13") and cleared.checkpoint.window_state is None
    again = await store.get_lease(M, "shard-0")
    assert again is not None and again.checkpoint == Checkpoint("13")

    restated = leased(await store.renew(cleared, checkpoint=Checkpoint("14", 0, b"{}")))
    ended = leased(await store.release(restated, checkpoint=Checkpoint("SHARD_END")))
    assert ended.finished and ended.checkpoint == Checkpoint("SHARD_END")
    assert await store.get_lease(M, "shard-0") == ended


async def test_the_largest_state_a_checkpoint_allows_fits_in_a_lease_row(
    store: LeaseStore, request: pytest.FixtureRequest
) -> None:
    if "moto" in request.node.callspec.id:
        # moto adds an attribute's old size to its new one when an update replaces it, so it
        # refuses a second big state that DynamoDB (and dynalite) accept
        pytest.skip("moto counts a replaced attribute twice towards the 400 KB item size")
    parents = ("shardId-000000000000", "shardId-000000000001")
    await store.create_lease(M, "shardId-000000000002", parents)
    lease = await store.get_lease(M, "shardId-000000000002")
    assert lease is not None
    owner = "w" * 200  # a long worker id
    taken = leased(await store.take(lease, owner))
    big = Checkpoint("4" * 56, 12, b"s" * MAX_WINDOW_STATE_BYTES)
    renewed = leased(await store.renew(taken, checkpoint=big))
    assert renewed.checkpoint == big
    released = leased(await store.release(renewed, to="b" * 200, checkpoint=big))
    assert released.checkpoint == big


async def test_a_state_change_alone_is_written_with_the_next_renewal_and_the_release(
    store: LeaseStore,
) -> None:
    class Consumer:
        def on_lease_gained(self, lease: Lease) -> None: ...

        def on_lease_lost(self, shard_id: str) -> None: ...

        async def release_requested(self, shard_id: str) -> None: ...

    coordinator = LeaseCoordinator(
        store, M, "a", Consumer(), CoordinatorSettings(failover_time=10.0), clock=time.monotonic
    )
    await coordinator.add_shards({"shard-0": ()})
    await coordinator.take_round()
    assert coordinator.holds("shard-0")

    async def stored() -> Checkpoint | None:
        row = await store.get_lease(M, "shard-0")
        assert row is not None
        return row.checkpoint

    await coordinator.checkpoint("shard-0", "5", window_state=b'{"n":1}')  # recorded
    assert await stored() is None
    await coordinator.renew_round()
    assert await stored() == Checkpoint("5", 0, b'{"n":1}')
    await coordinator.checkpoint("shard-0", "5", window_state=b'{"n":2}')  # state alone
    await coordinator.renew_round()
    assert await stored() == Checkpoint("5", 0, b'{"n":2}')
    await coordinator.checkpoint("shard-0", "6", window_state=b'{"n":3}')
    await coordinator.release_all()  # the hand-off writes the last one
    assert await stored() == Checkpoint("6", 0, b'{"n":3}')
    row = await store.get_lease(M, "shard-0")
    assert row is not None and row.owner is None


# Engines as workers of one fleet.


@dataclass
class Call:
    worker: str
    shard: str
    window: tuple[int, int]
    state: dict[str, Any]
    sequences: list[str]
    values: list[int]
    keys: list[str]
    final: bool
    early: bool


@dataclass
class Summer:
    """A window function summing the records' values into ``state["total"]``; the record of
    key ``block`` never returns on the worker named in ``block_on`` (an in-flight batch at a
    kill). ``pad`` answers, for a batch's first key, a string of that many bytes in the state."""

    calls: list[Call] = field(default_factory=list)
    block_on: str | None = None
    blocked: anyio.Event = field(default_factory=anyio.Event)
    pad: dict[str, int] = field(default_factory=dict)

    def handler(self, worker: str) -> Any:
        async def handle(event: dict[str, Any], context: Any) -> Any:
            records = event["Records"]
            window = event["window"]
            call = Call(
                worker,
                event["shardId"],
                (_epoch(window["start"]), _epoch(window["end"])),
                json.loads(json.dumps(event["state"])),
                [r["kinesis"]["sequenceNumber"] for r in records],
                [int(base64.b64decode(r["kinesis"]["data"])) for r in records],
                [r["kinesis"]["partitionKey"] for r in records],
                event["isFinalInvokeForWindow"],
                event["isWindowTerminatedEarly"],
            )
            self.calls.append(call)
            if worker == self.block_on and "block" in call.keys:
                self.blocked.set()
                await anyio.sleep_forever()  # cancelled with its worker
            state = event["state"]
            state.pop("pad", None)
            state["total"] = state.get("total", 0) + sum(call.values)
            state["count"] = state.get("count", 0) + len(records)
            if call.keys and call.keys[0] in self.pad:
                state["pad"] = "x" * self.pad[call.keys[0]]
            await anyio.lowlevel.checkpoint()
            return {"state": state}

        return handle

    def finals(self, shard: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.final and shard in (None, c.shard)]

    def batches(self, shard: str) -> list[Call]:
        return [c for c in self.calls if not c.final and c.shard == shard]

    def invoked(self) -> set[tuple[str, str]]:
        """(shard, sequence) of every record invoked (moto numbers each shard from 1)."""
        return {(c.shard, s) for c in self.calls for s in c.sequences}


def _epoch(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def worker(moto: str, dynamodb: str, table: str, name: str) -> Engine:
    return fleet_engine(
        moto, dynamodb, table, name, poll_settings=FAST_POLL, failover_time=FAILOVER
    )


def windowed(arn: str, length: int, batch_size: int = 10) -> EventSourceMappingConfig:
    return EventSourceMappingConfig(
        function_name="fleet-windows",
        event_source_arn=arn,
        starting_position="TRIM_HORIZON",
        batch_size=batch_size,
        tumbling_window_in_seconds=length,
    )


@asynccontextmanager
async def lease_table(dynamodb: str, table: str) -> AsyncIterator[DynamoDBLeaseStore]:
    async with DynamoDBLeaseStore(table, endpoint_url=dynamodb, region="us-east-1") as store:
        yield store


async def owners(store: DynamoDBLeaseStore, mapping_uuid: str) -> dict[str, str | None]:
    snapshot = await store.read_fleet(mapping_uuid)
    return {lease.shard_id: lease.owner for lease in snapshot.leases if not lease.finished}


async def stored_total(store: DynamoDBLeaseStore, mapping_uuid: str, shard: str) -> int | None:
    """The window total in the shard's lease row (None: no state there yet)."""
    lease = await store.get_lease(mapping_uuid, shard)
    if lease is None or lease.checkpoint is None or lease.checkpoint.window_state is None:
        return None
    state = json.loads(WindowSnapshot.from_json(lease.checkpoint.window_state).state_json)
    total = state.get("total")
    return total if isinstance(total, int) else None


async def room_in_window(length: int, needed: float) -> tuple[int, int]:
    """Wait (bounded) until at least ``needed`` seconds are left in the current window."""
    await wait_for(lambda: length - time.time() % length >= needed, length + 1, interval=0.02)
    window = window_of(time.time(), length)
    return window.start, window.end


def ids(records: list[StreamRecord]) -> set[tuple[str, str]]:
    return {(r.shard_id, r.sequence_number) for r in records}


def values_of(records: list[StreamRecord]) -> dict[str, int]:
    """Each shard's sum of the records' values."""
    sums: dict[str, int] = {}
    for r in records:
        sums[r.shard_id] = sums.get(r.shard_id, 0) + int(r.data)
    return sums


def numbered(keys: list[str], start: int) -> list[tuple[str, bytes]]:
    """One record per key, with distinct values (so a sum tells which records it holds)."""
    return [(key, str(start + 7 * i).encode()) for i, key in enumerate(keys, 1)]


# keys that MD5 onto each half of the hash range: shard 0 and shard 1 of a 2-shard stream
KEYS = [f"k{i}" for i in range(12)]


def lease_stats(stats: MappingStatistics) -> tuple[int, int]:
    leases = stats.leases
    assert leases is not None
    return leases.lost, leases.renewal_failures


def both_shards(records: list[StreamRecord]) -> Iterator[str]:
    shards = sorted({r.shard_id for r in records})
    assert len(shards) == 2, f"the keys did not reach both shards: {shards}"
    yield from shards


async def test_a_window_carries_its_state_across_a_join_and_a_stop_to_the_final(
    moto: str, client: KinesisClient, stream_name: str, dynamodb: str, table: str
) -> None:
    length = 30
    arn = await create_stream(client, stream_name, 2)
    summer = Summer()
    config = windowed(arn, length)
    # b's engine is open from the start (task groups nest), but runs nothing until it joins
    async with (
        lease_table(dynamodb, table) as leases,
        worker(moto, dynamodb, table, "b") as b,
    ):
        async with worker(moto, dynamodb, table, "a") as a:
            mapping = await a.add_mapping(config, summer.handler("a"))

            async def a_holds_both() -> bool:
                return list((await owners(leases, mapping)).values()) == ["a", "a"]

            await wait_for(a_holds_both, 30, interval=0.2, message="a to lease both shards")
            window = await room_in_window(length, 22)
            phase1 = await put_records(client, stream_name, numbered(KEYS, 100))
            shards = list(both_shards(phase1))
            sums = values_of(phase1)

            async def phase1_stored() -> bool:
                totals = [await stored_total(leases, mapping, s) for s in shards]
                return totals == [sums[s] for s in shards]

            await wait_for(phase1_stored, 15, interval=0.2, message="phase 1 in the lease rows")

            await b.add_mapping(config, summer.handler("b"))  # joins: one shard moves to b

            async def one_each() -> bool:
                held = sorted(str(o) for o in (await owners(leases, mapping)).values())
                return held == ["a", "b"]

            await wait_for(one_each, 30, interval=0.2, message="a hand-off to b")
            phase2 = await put_records(client, stream_name, numbered(KEYS, 1000))
            await wait_for(
                lambda: ids(phase2) <= summer.invoked(),
                15,
                message="phase 2 invoked",
            )
            assert lease_stats(a.mapping_statistics(mapping)) == (0, 0)
        # a stopped gracefully: its other shard was handed off with its final checkpoint

        async def b_holds_both() -> bool:
            return list((await owners(leases, mapping)).values()) == ["b", "b"]

        await wait_for(b_holds_both, 20, interval=0.2, message="b to take a's last shard")
        phase3 = await put_records(client, stream_name, numbered(KEYS, 10000))
        everything = phase1 + phase2 + phase3
        await wait_for(
            lambda: len(summer.finals()) == 2, length + 20, message="both windows' finals"
        )
        assert lease_stats(b.mapping_statistics(mapping)) == (0, 0)

    assert {c.window for c in summer.calls} == {window}, (
        "the moves took longer than the window: the test cannot show the carry"
    )
    totals = values_of(everything)
    delivered = [(c.shard, s) for c in summer.calls for s in c.sequences]
    assert set(delivered) == ids(everything)
    assert len(delivered) == len(everything)  # graceful moves deliver nothing twice
    for shard in shards:
        (final,) = summer.finals(shard)
        assert final.worker == "b" and not final.early
        assert final.state["total"] == totals[shard]  # every record of the window, once
        assert final.state["count"] == sum(r.shard_id == shard for r in everything)
        batches = summer.batches(shard)
        assert batches[0].worker == "a" and batches[-1].worker == "b"
        moved = next(i for i, c in enumerate(batches) if c.worker == "b")
        # b's first batch got the state a's last one left, read from the lease
        assert batches[moved].state["total"] == sum(v for c in batches[:moved] for v in c.values)
        assert batches[moved].state["total"] >= sums[shard]
    # one shard moved at b's join (its phase 2 on b), the other at a's stop (phase 2 on a)
    p2 = ids(phase2)
    movers = {
        shard: {c.worker for c in summer.batches(shard) if {(shard, s) for s in c.sequences} & p2}
        for shard in shards
    }
    assert sorted(tuple(sorted(w)) for w in movers.values()) == [("a",), ("b",)]


async def test_a_killed_owners_window_resumes_from_the_last_written_checkpoint_and_state(
    moto: str, client: KinesisClient, stream_name: str, dynamodb: str, table: str
) -> None:
    length = 30
    arn = await create_stream(client, stream_name, 1)
    summer = Summer(block_on="a")
    config = windowed(arn, length)
    async with lease_table(dynamodb, table) as leases:
        with anyio.CancelScope() as kill:
            async with worker(moto, dynamodb, table, "a") as a:
                mapping = await a.add_mapping(config, summer.handler("a"))

                async def a_holds() -> bool:
                    return list((await owners(leases, mapping)).values()) == ["a"]

                await wait_for(a_holds, 30, interval=0.2, message="a to lease the shard")
                window = await room_in_window(length, 20)
                phase1 = await put_records(client, stream_name, numbered(KEYS[:5], 100))
                (shard,) = values_of(phase1)
                written = values_of(phase1)[shard]

                async def phase1_stored() -> bool:
                    return await stored_total(leases, mapping, shard) == written

                await wait_for(phase1_stored, 15, interval=0.2, message="phase 1 in the row")
                # the first record of phase 2 never returns on a: nothing of it is done there
                phase2 = await put_records(
                    client, stream_name, [("block", b"5"), *numbered(KEYS[5:9], 1000)]
                )
                await wait_for(summer.blocked.is_set, 15, message="phase 2 in flight on a")
                kill.cancel()  # as a crash: no hand-off, no checkpoint, no deregistration
                await anyio.lowlevel.checkpoint()
        assert kill.cancelled_caught
        # what a's renewals wrote is all the next owner has
        assert await stored_total(leases, mapping, shard) == written
        row = await leases.get_lease(mapping, shard)
        assert row is not None and row.owner == "a"

        async with worker(moto, dynamodb, table, "b") as b:
            await b.add_mapping(config, summer.handler("b"))
            await wait_for(lambda: summer.finals(), length + 20, message="the window's final")
            assert b.mapping_statistics(mapping).leases.stolen == 1  # type: ignore[union-attr]

    assert {c.window for c in summer.calls} == {window}, (
        "the take took longer than the window: the test cannot show the resume"
    )
    everything = phase1 + phase2
    (final,) = summer.finals()
    assert final.worker == "b" and not final.early
    assert final.state["total"] == values_of(everything)[shard]  # exact: nothing twice
    assert final.state["count"] == len(everything)
    on_b = [c for c in summer.calls if c.worker == "b" and not c.final]
    assert on_b[0].state["total"] == written  # the state stored with the checkpoint
    assert on_b[0].sequences[0] == phase2[0].sequence_number  # the first after it
    on_a = {s for c in summer.calls if c.worker == "a" for s in c.sequences}
    delivered_b = {s for c in on_b for s in c.sequences}
    again = on_a & {r.sequence_number for r in phase2}
    assert phase2[0].sequence_number in again and again <= delivered_b  # re-delivered
    assert delivered_b == {r.sequence_number for r in phase2}
    assert len(delivered_b) == sum(len(c.sequences) for c in on_b)  # once each on b


@pytest.mark.parametrize(
    ("pad", "early"),
    [
        (200 * 1024, False),  # under the fleet's cap: the window goes on with it
        (WINDOW_STATE_LIMIT + 40 * 1024, True),  # over it, and the row could hold it
        (600 * 1024, True),  # over what the row can hold (and under Lambda's 1 MB)
    ],
)
async def test_a_state_over_the_fleet_cap_ends_the_window_early_instead_of_failing(
    moto: str,
    client: KinesisClient,
    stream_name: str,
    dynamodb: str,
    table: str,
    pad: int,
    early: bool,
) -> None:
    length = 4
    arn = await create_stream(client, stream_name, 1)
    summer = Summer(pad={"b0": pad})
    async with (
        lease_table(dynamodb, table) as leases,
        worker(moto, dynamodb, table, "a") as a,
    ):
        mapping = await a.add_mapping(windowed(arn, length, batch_size=2), summer.handler("a"))

        async def a_holds() -> bool:
            return list((await owners(leases, mapping)).values()) == ["a"]

        await wait_for(a_holds, 30, interval=0.2, message="a to lease the shard")
        await room_in_window(length, 3)
        records = await put_records(client, stream_name, numbered(["b0", "b1", "b2", "b3"], 1))
        await wait_for(
            lambda: summer.finals() and not summer.finals()[-1].early,
            length + 15,
            message="the window's last final",
        )
        stats = a.mapping_statistics(mapping)
        assert lease_stats(stats) == (0, 0)  # no write failed, no lease lost
        assert stats.counters.errors == 0
    values = [int(r.data) for r in records]
    first, *rest = summer.calls
    assert first.keys == ["b0", "b1"] and not first.final
    if early:
        early_final, second, last = rest
        assert early_final.final and early_final.early and early_final.keys == []
        assert len(early_final.state["pad"]) == pad  # the whole state reached the function
        assert early_final.state["total"] == sum(values[:2])
        assert second.keys == ["b2", "b3"] and second.state == {}  # the window goes on fresh
        assert second.window == first.window
        assert last.final and not last.early and last.state["total"] == sum(values[2:])
    else:
        second, last = rest
        assert second.keys == ["b2", "b3"] and len(second.state["pad"]) == pad
        assert last.final and not last.early and last.state["total"] == sum(values)
