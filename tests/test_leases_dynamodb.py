"""The DynamoDB lease store through real servers, and coordinators sharing leases through it.

Store functions run against both moto's server and dynalite; races and fleets of coordinators
run against dynalite, which (unlike moto) locks an item between a condition and its write.
Errors (a missing permission, throttling, an outage) come from the HTTP fault proxy in front
of a real server, or from a port that answers nothing.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiobotocore.session import get_session

from kinesis_esm.leases import (
    Checkpoint,
    Conflict,
    CoordinatorSettings,
    Lease,
    LeaseCoordinator,
    LeaseLoad,
    LeaseStoreError,
    LeaseStoreThrottledError,
    LeaseStoreUnavailableError,
    LeaseTableAccessDeniedError,
)
from kinesis_esm.state._dynamodb import DynamoDBLeaseStore
from tests.support.dynalite import dynalite, dynalite_server  # noqa: F401 - fixtures
from tests.support.http_faults import Fault, KinesisFaultInjector
from tests.support.kinesis import wait_for

pytestmark = pytest.mark.anyio
M = "mapping-1"


@pytest.fixture(params=["moto", "dynalite"])
def dynamodb(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(request.param)
    return url


@pytest.fixture
def table() -> str:
    return f"leases-{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def opened(url: str, table: str, **options: Any) -> AsyncIterator[DynamoDBLeaseStore]:
    options.setdefault("call_timeout", 5.0)
    async with DynamoDBLeaseStore(table, endpoint_url=url, region="us-east-1", **options) as s:
        yield s


async def describe(url: str, table: str) -> dict[str, Any]:
    async with get_session().create_client(
        "dynamodb", endpoint_url=url, region_name="us-east-1"
    ) as client:
        answer: dict[str, Any] = (await client.describe_table(TableName=table))["Table"]
        return answer


# The store, on both emulators.


async def test_start_creates_one_on_demand_table_even_when_workers_race(
    dynamodb: str, table: str
) -> None:
    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(lambda: _open_and_close(dynamodb, table))
    description = await describe(dynamodb, table)
    assert description["TableStatus"] == "ACTIVE"
    assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    keys = {k["AttributeName"]: k["KeyType"] for k in description["KeySchema"]}
    assert keys == {"mappingUuid": "HASH", "leaseKey": "RANGE"}


async def _open_and_close(url: str, table: str) -> None:
    async with opened(url, table):
        pass


async def test_a_table_of_another_shape_is_refused(dynamodb: str, table: str) -> None:
    async with get_session().create_client(
        "dynamodb", endpoint_url=dynamodb, region_name="us-east-1"
    ) as client:
        await client.create_table(
            TableName=table,
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
        )
    with pytest.raises(LeaseStoreError, match="not a kinesis-esm lease table"):
        async with opened(dynamodb, table):
            pass
    with pytest.raises(LeaseStoreError, match="does not exist and create_table is off"):
        async with opened(dynamodb, table + "-missing", create_table=False):
            pass


async def test_create_take_renew_release_round_trip(dynamodb: str, table: str) -> None:
    async with opened(dynamodb, table) as store:
        assert await store.create_lease(M, "shard-2", ["shard-0", "shard-1"], Checkpoint("7", 2))
        assert not await store.create_lease(M, "shard-2")  # exists: untouched
        fresh = await store.get_lease(M, "shard-2")
        assert fresh == Lease(M, "shard-2", None, 0, Checkpoint("7", 2), ("shard-0", "shard-1"))
        taken = await store.take(fresh, "a")
        assert isinstance(taken, Lease) and (taken.owner, taken.counter) == ("a", 1)
        assert taken.owner_switches == 1
        renewed = await store.renew(
            taken, checkpoint=Checkpoint("49", 3), load=LeaseLoad(12.5, 2048.0)
        )
        assert isinstance(renewed, Lease)
        assert (renewed.counter, renewed.checkpoint) == (2, Checkpoint("49", 3))
        assert renewed.load == LeaseLoad(12.5, 2048.0) and renewed.owner_switches == 0
        released = await store.release(renewed, checkpoint=Checkpoint("50"))
        assert isinstance(released, Lease)
        assert (released.owner, released.counter, released.checkpoint) == (
            None,
            3,
            Checkpoint("50"),
        )
        assert await store.get_lease(M, "shard-2") == released
        assert await store.get_lease(M, "shard-9") is None
        assert (await store.read_fleet(M)).leases == (released,)
        assert (await store.read_fleet("another-mapping")).leases == ()


async def test_every_lease_write_is_conditional_and_a_conflict_shows_the_row(
    dynamodb: str, table: str
) -> None:
    async with opened(dynamodb, table) as store:
        await store.create_lease(M, "s")
        fresh = await store.get_lease(M, "s")
        assert fresh is not None
        mine = await store.take(fresh, "a")
        assert isinstance(mine, Lease)
        stale_take = await store.take(fresh, "b")  # counter moved: b loses the race
        assert stale_take == Conflict(mine)
        assert await store.renew(Lease(M, "s", "b", mine.counter)) == Conflict(mine)  # not b's
        assert await store.release(fresh) == Conflict(mine)  # stale counter
        assert await store.renew(Lease(M, "gone", "a", 0)) == Conflict(None)
        assert await store.get_lease(M, "s") == mine


async def test_fencing_a_worker_whose_lease_was_taken_cannot_checkpoint(
    dynamodb: str, table: str
) -> None:
    async with opened(dynamodb, table) as store:
        await store.create_lease(M, "s")
        fresh = await store.get_lease(M, "s")
        assert fresh is not None
        a = await store.take(fresh, "a")
        assert isinstance(a, Lease)
        a = await store.renew(a, checkpoint=Checkpoint("10"))
        assert isinstance(a, Lease)
        b = await store.take(a, "b")  # b saw a's counter stand still: takes over
        assert isinstance(b, Lease) and b.owner == "b"
        refused = await store.renew(a, checkpoint=Checkpoint("99"))
        assert isinstance(refused, Conflict) and refused.current == b
        assert isinstance(await store.release(a, checkpoint=Checkpoint("99")), Conflict)
        row = await store.get_lease(M, "s")
        assert row is not None and row.checkpoint == Checkpoint("10") and row.owner == "b"


async def test_a_handoff_request_keeps_the_counter_and_reaches_the_owner(
    dynamodb: str, table: str
) -> None:
    async with opened(dynamodb, table) as store:
        await store.create_lease(M, "s")
        fresh = await store.get_lease(M, "s")
        assert fresh is not None
        a = await store.take(fresh, "a")
        assert isinstance(a, Lease)
        assert not await store.request_handoff(Lease(M, "s", "c", a.counter), "b")  # not c's
        assert await store.request_handoff(a, "b")
        row = await store.get_lease(M, "s")
        assert row is not None and row.counter == a.counter and row.handoff_target == "b"
        renewed = await store.renew(a)  # the owner's renewals go on, and tell it
        assert isinstance(renewed, Lease) and renewed.handoff_target == "b"
        given = await store.release(renewed, to="b", checkpoint=Checkpoint("42"))
        assert isinstance(given, Lease)
        assert (given.owner, given.handoff_target, given.checkpoint) == (
            "b",
            None,
            Checkpoint("42"),
        )
        assert given.owner_switches == 1
        adopted = await store.take(given, "b")
        assert isinstance(adopted, Lease) and adopted.owner == "b" and adopted.owner_switches == 1


async def test_worker_rows_heartbeat_and_deregister(dynamodb: str, table: str) -> None:
    async with opened(dynamodb, table) as store:
        await store.create_lease(M, "s")
        for _ in range(3):
            await store.heartbeat(M, "a")
        await store.heartbeat(M, "b")
        workers = {w.worker_id: w.heartbeat for w in (await store.read_fleet(M)).workers}
        assert workers == {"a": 3, "b": 1}
        assert [lease.shard_id for lease in (await store.read_fleet(M)).leases] == ["s"]
        assert not await store.deregister_worker(M, "a", heartbeat=2)  # it beat since
        assert await store.deregister_worker(M, "a", heartbeat=3)
        assert await store.deregister_worker(M, "b")
        assert not await store.deregister_worker(M, "b")
        assert (await store.read_fleet(M)).workers == ()


async def test_delete_mapping_removes_only_its_rows(dynamodb: str, table: str) -> None:
    async with opened(dynamodb, table) as store:
        for i in range(30):
            await store.create_lease(M, f"shard-{i:02d}")
        await store.heartbeat(M, "a")
        await store.create_lease("other", "shard-00")
        assert await store.delete_mapping(M) == 31
        snapshot = await store.read_fleet(M)
        assert snapshot.leases == () and snapshot.workers == ()
        assert await store.get_lease("other", "shard-00") is not None


# Races: dynalite only (moto interleaves a condition and its write under concurrency).


async def test_concurrent_takes_of_one_lease_have_exactly_one_winner(
    dynalite: str,  # noqa: F811
    table: str,
) -> None:
    async with opened(dynalite, table) as store:
        for round_ in range(10):
            await store.create_lease(M, f"s{round_}")
            fresh = await store.get_lease(M, f"s{round_}")
            assert fresh is not None
            results: list[Lease | Conflict] = []

            async def take(
                worker: str, lease: Lease = fresh, sink: list[Lease | Conflict] = results
            ) -> None:
                sink.append(await store.take(lease, worker))

            async with anyio.create_task_group() as group:
                for i in range(16):
                    group.start_soon(take, f"w{i}")
            winners = [r for r in results if isinstance(r, Lease)]
            assert len(winners) == 1, results
            assert await store.get_lease(M, f"s{round_}") == winners[0]


# Errors: typed, and clear.


async def test_a_missing_table_permission_is_a_clear_error(moto: str, table: str) -> None:
    denied = Fault("AccessDeniedException", message="User: x is not authorized to perform: X")
    rule = _always(denied, "DescribeTable")
    async with KinesisFaultInjector(moto, rule=rule) as proxy:
        with pytest.raises(LeaseTableAccessDeniedError) as caught:
            async with opened(proxy.endpoint_url, table):
                pass
    assert table in str(caught.value) and "dynamodb:UpdateItem" in str(caught.value)


async def test_throttling_and_outages_are_typed_errors(moto: str, table: str) -> None:
    async with KinesisFaultInjector(moto) as proxy, opened(proxy.endpoint_url, table) as store:
        await store.create_lease(M, "s")
        fresh = await store.get_lease(M, "s")
        assert fresh is not None
        proxy.rule = _always(Fault("ProvisionedThroughputExceededException"), "UpdateItem")
        with pytest.raises(LeaseStoreThrottledError):
            await store.take(fresh, "a")
        proxy.rule = _always(Fault("InternalServerError", status=500), "Query")
        with pytest.raises(LeaseStoreUnavailableError):
            await store.read_fleet(M)
        proxy.rule = None
        assert isinstance(await store.take(fresh, "a"), Lease)


async def test_a_silent_server_times_out_within_the_call_timeout(table: str) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        store = DynamoDBLeaseStore(table, endpoint_url=url, region="us-east-1", call_timeout=0.5)
        began = time.monotonic()
        with pytest.raises(LeaseStoreUnavailableError):
            await store.start()
        assert time.monotonic() - began < 3.0
        await store.aclose()


def _always(fault: Fault, operation: str) -> Callable[[str, str | None, int], Fault | None]:
    return lambda op, shard, number: fault if op == operation else None


# Fleets of coordinators, on dynalite.

FAST = CoordinatorSettings(failover_time=1.0, handoff_timeout=3.0)


class Ledger:
    """Every (shard, position) processed, by whom; and the workers, to check exclusivity."""

    def __init__(self) -> None:
        self.processed: dict[str, Counter[int]] = defaultdict(Counter)
        self.workers: list[Worker] = []

    def duplicates(self) -> dict[str, list[int]]:
        found = {s: sorted(p for p, n in c.items() if n > 1) for s, c in self.processed.items()}
        return {shard: positions for shard, positions in found.items() if positions}


class Consumer:
    """Processes one record per `tick` per held shard, checking `holds` before each."""

    def __init__(self, name: str, ledger: Ledger, tick: float) -> None:
        self.name = name
        self.ledger = ledger
        self.tick = tick
        self.positions: dict[str, int] = {}
        self.gained: list[tuple[str, int]] = []
        self.lost: list[str] = []
        self.coordinator: LeaseCoordinator | None = None

    def on_lease_gained(self, lease: Lease) -> None:
        others = [w for w in self.ledger.workers if w.consumer is not self]
        holders = [w.consumer.name for w in others if w.coordinator.holds(lease.shard_id)]
        assert not holders, f"{self.name} gained {lease.shard_id} still held by {holders}"
        start = 0 if lease.checkpoint is None else int(lease.checkpoint.sequence)
        self.positions[lease.shard_id] = start
        self.gained.append((lease.shard_id, start))

    def on_lease_lost(self, shard_id: str) -> None:
        self.positions.pop(shard_id, None)
        self.lost.append(shard_id)

    async def release_requested(self, shard_id: str) -> None:
        assert self.coordinator is not None
        position = self.positions.pop(shard_id, None)
        if position is not None:
            await self.coordinator.checkpoint(shard_id, str(position))

    async def work(self) -> None:
        assert self.coordinator is not None
        while True:
            for shard in list(self.positions):
                if shard in self.positions and self.coordinator.holds(shard):
                    self.positions[shard] += 1
                    self.ledger.processed[shard][self.positions[shard]] += 1
                    await self.coordinator.checkpoint(shard, str(self.positions[shard]))
            await anyio.sleep(self.tick)


class Worker:
    def __init__(
        self,
        store: DynamoDBLeaseStore,
        name: str,
        ledger: Ledger,
        settings: CoordinatorSettings = FAST,
        tick: float = 0.02,
    ) -> None:
        self.consumer = Consumer(name, ledger, tick)
        self.coordinator = LeaseCoordinator(store, M, name, self.consumer, settings)
        self.consumer.coordinator = self.coordinator
        self.scope = anyio.CancelScope()
        ledger.workers.append(self)

    async def run(self) -> None:
        with self.scope:
            async with anyio.create_task_group() as group:
                group.start_soon(self.consumer.work)
                await self.coordinator.run()
                group.cancel_scope.cancel()

    def kill(self) -> None:
        """As a kill -9 would: no release, no deregistration."""
        self.scope.cancel()

    def held(self) -> set[str]:
        return {shard for shard in self.coordinator.held_leases() if self.coordinator.holds(shard)}


def spread(workers: list[Worker]) -> list[int]:
    return sorted(len(w.held()) for w in workers)


async def test_coordinators_converge_hand_off_on_stop_and_take_over_from_a_killed_one(
    dynalite: str,  # noqa: F811
    table: str,
) -> None:
    ledger = Ledger()
    async with opened(dynalite, table) as store:
        for i in range(6):
            await store.create_lease(M, f"shard-{i}")
        w0, w1, w2 = (Worker(store, f"w{i}", ledger) for i in range(3))
        async with anyio.create_task_group() as group:
            for w in (w0, w1, w2):
                group.start_soon(w.run)
            await wait_for(lambda: spread([w0, w1, w2]) == [2, 2, 2], 20, message="2 each")

            await w0.coordinator.stop()  # graceful: finish, checkpoint, release
            assert w0.held() == set() and w0.coordinator.statistics().handed_off >= 2
            await wait_for(lambda: spread([w1, w2]) == [3, 3], 20, message="3 each")
            assert ledger.duplicates() == {}, "a planned move delivered records twice"

            victim = set(w1.held())
            killed_at = time.monotonic()
            w1.kill()
            await wait_for(lambda: len(w2.held()) == 6, 20, message="the survivor takes all")
            elapsed = time.monotonic() - killed_at
            assert elapsed >= FAST.failover_time - FAST.renew_interval
            assert w2.coordinator.statistics().stolen == 3
            await w2.coordinator.stop()
    duplicates = ledger.duplicates()
    assert set(duplicates) <= victim  # only the killed worker's shards ...
    per_renewal = FAST.renew_interval / 0.02
    for positions in duplicates.values():  # ... and only what it had not yet checkpointed
        assert len(positions) <= 2 * per_renewal + 5, positions


async def test_a_new_worker_gets_leases_by_graceful_handoff_without_duplicates(
    dynalite: str,  # noqa: F811
    table: str,
) -> None:
    ledger = Ledger()
    async with opened(dynalite, table) as store:
        for i in range(6):
            await store.create_lease(M, f"shard-{i}")
        w0, w1 = Worker(store, "w0", ledger), Worker(store, "w1", ledger)
        async with anyio.create_task_group() as group:
            group.start_soon(w0.run)
            group.start_soon(w1.run)
            await wait_for(lambda: spread([w0, w1]) == [3, 3], 20, message="3 each")
            w2 = Worker(store, "w2", ledger)
            group.start_soon(w2.run)
            await wait_for(lambda: spread([w0, w1, w2]) == [2, 2, 2], 20, message="2 each")
            for w in (w0, w1, w2):
                await w.coordinator.stop()
    assert w2.coordinator.statistics().received == 2
    assert w0.consumer.lost == w1.consumer.lost == w2.consumer.lost == []
    assert ledger.duplicates() == {}, "a planned move delivered records twice"
    rows = (await _read(dynalite, table)).leases
    assert all(lease.owner is None for lease in rows)  # all released at the stop
    for lease in rows:  # each final checkpoint is the last position processed
        assert lease.checkpoint == Checkpoint(str(max(ledger.processed[lease.shard_id])))


async def test_an_outage_stops_processing_in_time_and_recovery_needs_no_operator(
    dynalite: str,  # noqa: F811
    table: str,
) -> None:
    ledger = Ledger()
    outage = _always_all(Fault("InternalServerError", status=500))
    async with KinesisFaultInjector(dynalite) as proxy, opened(proxy.endpoint_url, table) as store:
        for i in range(2):
            await store.create_lease(M, f"shard-{i}")
        w = Worker(store, "w", ledger)
        async with anyio.create_task_group() as group:
            group.start_soon(w.run)
            await wait_for(lambda: len(w.held()) == 2, 10, message="both leases held")
            began = time.monotonic()
            proxy.rule = outage
            await wait_for(lambda: not w.held(), 5, message="processing stops")
            # It kept processing while the leases were still valid.
            assert time.monotonic() - began >= FAST.hold_time - FAST.renew_interval - 0.1
            # The consumer is told at the next renewal attempt, at most a renewal interval on.
            await wait_for(
                lambda: sorted(w.consumer.lost) == ["shard-0", "shard-1"],
                2 * FAST.renew_interval + 1,
                message="loss reported",
            )
            assert w.coordinator.statistics().renewal_failures > 0
            proxy.rule = None
            await wait_for(lambda: len(w.held()) == 2, 10, message="leases regained")
            await w.coordinator.stop()


async def test_checkpoints_ride_on_renewals_so_requests_do_not_grow_with_records(
    dynalite: str,  # noqa: F811
    table: str,
) -> None:
    settings = CoordinatorSettings(failover_time=1.5)
    ledger = Ledger()
    async with KinesisFaultInjector(dynalite) as proxy, opened(proxy.endpoint_url, table) as store:
        for i in range(4):
            await store.create_lease(M, f"shard-{i}")
        w = Worker(store, "w", ledger, settings, tick=0.002)  # ~500 checkpoints/s per shard
        async with anyio.create_task_group() as group:
            group.start_soon(w.run)
            await wait_for(lambda: len(w.held()) == 4, 10, message="all leases held")
            began, calls_before = time.monotonic(), len(proxy.calls)
            records_before = sum(sum(c.values()) for c in ledger.processed.values())
            await anyio.sleep(3.0)  # the measurement window itself, not a wait for a condition
            window = time.monotonic() - began
            calls = proxy.calls[calls_before:]
            records = sum(sum(c.values()) for c in ledger.processed.values()) - records_before
            await w.coordinator.stop()
    updates = sum(1 for c in calls if c.operation == "UpdateItem")
    queries = sum(1 for c in calls if c.operation == "Query")
    assert records > 1000  # checkpoints were asked for at a high rate ...
    # ... but each lease (and the worker's heartbeat) writes once per renewal interval, at most
    # 25 % early (timer jitter), and the table is read once per take interval.
    assert updates <= 5 * window / settings.renew_interval * 1.25 + 5, updates
    assert queries <= window / settings.take_every * 1.25 + 2, queries


async def _read(url: str, table: str) -> Any:
    async with opened(url, table) as store:
        return await store.read_fleet(M)


def _always_all(fault: Fault) -> Callable[[str, str | None, int], Fault | None]:
    return lambda op, shard, number: fault
