"""One mapping per function and stream across a fleet: the registry's claims (against real
dynalite, whose conditional writes are atomic under concurrency), the pure rules behind them
(hypothesis), and the removal of old tombstones by a running worker.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kinesis_esm.config import CoordinationConfig, EventSourceMappingConfig, stable_uuid
from kinesis_esm.runtime._checks import duplicate_message
from kinesis_esm.runtime._fleet_sync import (
    TOMBSTONE_TTL,
    FleetMappingSync,
    Verdict,
    claim_key,
    claim_verdict,
    tombstone_expired,
)
from kinesis_esm.runtime._model import RESOURCE_CONFLICT, RESOURCE_IN_USE, MappingError
from kinesis_esm.state._dynamodb import DynamoDBLeaseStore
from kinesis_esm.state._mappings import Origin, StoredMapping, config_to_dict
from kinesis_esm.state._registry import (
    Fence,
    MappingRegistry,
    RegistryConflict,
    RegistryRow,
)
from tests.support.control import ACCOUNT, REGION, call, lambda_client, running_daemon
from tests.support.dynalite import dynalite, dynalite_server  # noqa: F401 - fixtures
from tests.support.kinesis import create_stream, kinesis_client, wait_for

STREAM = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/orders"
OTHER_STREAM = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/payments"
ROUNDS = 20
ROUNDS_TIME = 60.0  # seconds all rounds of a race test may take together


def mapping_row(
    uid: str,
    function: str = "f",
    stream: str = STREAM,
    *,
    origin: str = "api",
    deleted: bool = False,
    batch_size: int = 100,
) -> StoredMapping:
    config = EventSourceMappingConfig(
        function_name=function,
        event_source_arn=stream,
        starting_position="LATEST",
        batch_size=batch_size,
        uuid=uid,
    )
    kind: Origin = "config" if origin == "config" else "api"
    return StoredMapping(uid, kind, config_to_dict(config), None, {}, 1.0, 2.0, deleted)


def new_uuid() -> str:
    return str(uuid.uuid4())


# the pure rules

NAMES = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)


def spellings(name: str) -> list[str]:
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
    return [name, f"{name}:$LATEST", f"{ACCOUNT}:function:{name}", arn, f"{arn}:$LATEST"]


@given(NAMES, st.sampled_from([STREAM, OTHER_STREAM]))
def test_every_spelling_of_one_function_claims_one_key(name: str, stream: str) -> None:
    keys = {claim_key(mapping_row(new_uuid(), spelled, stream)) for spelled in spellings(name)}
    assert len(keys) == 1
    (key,) = keys
    assert key == f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name} {stream}"


@given(NAMES, NAMES)
def test_another_function_or_stream_is_another_key(one: str, other: str) -> None:
    assert claim_key(mapping_row(new_uuid(), one)) != claim_key(
        mapping_row(new_uuid(), one, OTHER_STREAM)
    )
    same = claim_key(mapping_row(new_uuid(), one)) == claim_key(mapping_row(new_uuid(), other))
    assert same == (one == other)


def test_a_row_without_a_valid_configuration_claims_nothing() -> None:
    assert claim_key(StoredMapping(new_uuid(), "api", {"function_name": "f"})) is None


HOLDERS = st.sampled_from([str(uuid.UUID(int=n)) for n in (1, 2, 3)])


@st.composite
def entries(draw: st.DrawFn) -> RegistryRow | Fence | None:
    kind = draw(st.sampled_from(["none", "fence", "row"]))
    if kind == "none":
        return None
    if kind == "fence":
        return Fence(draw(HOLDERS), draw(HOLDERS), draw(st.floats(0, 1e9)))
    function = draw(st.sampled_from(["f", "f:$LATEST", "g"]))
    stream = draw(st.sampled_from([STREAM, OTHER_STREAM]))
    row = mapping_row(draw(HOLDERS), function, stream, deleted=draw(st.booleans()))
    return RegistryRow(row, draw(st.integers(1, 50)), None)


@given(HOLDERS, HOLDERS, entries())
def test_a_claim_is_taken_from_another_mapping_only_when_that_one_is_not_a_live_holder(
    claimant: str, holder: str, entry: RegistryRow | Fence | None
) -> None:
    key = claim_key(mapping_row(claimant, "f"))
    assert key is not None
    verdict = claim_verdict(key, claimant, holder, entry)
    if claimant == holder:
        assert verdict is Verdict.OURS
        return
    row = entry if isinstance(entry, RegistryRow) and not entry.mapping.deleted else None
    live = row is not None
    live_same_key = row is not None and claim_key(row.mapping) == key
    # a live mapping of the same function and stream keeps its claim, and only it does
    assert (verdict is Verdict.HELD) == live_same_key
    # what may still write a row of this key is fenced first; a deleted holder is not
    assert (verdict is Verdict.FENCE_MISSING) == (entry is None)
    assert (verdict is Verdict.FENCE_MOVED) == (live and not live_same_key)
    assert (verdict is Verdict.TAKE) == (entry is not None and not live)


@given(
    st.one_of(st.none(), st.floats(0, 1e10)),
    st.floats(0, 1e10),
    st.floats(0, 1e7),
    st.floats(0, 1e7),
)
def test_a_tombstone_expires_once_it_is_ttl_old_and_stays_expired(
    written: float | None, now: float, ttl: float, later: float
) -> None:
    expired = tombstone_expired(written, now, ttl)
    assert expired == (written is not None and now - written >= ttl)
    if expired:
        assert tombstone_expired(written, now + later, ttl)


def test_the_tombstone_ttl_is_bounded_by_the_interval() -> None:
    store = DynamoDBLeaseStore("t-closed", endpoint_url="http://127.0.0.1:9", region=REGION)
    with pytest.raises(ValueError, match="tombstone_ttl must be at least 10 intervals"):
        FleetMappingSync(MappingRegistry(store), interval=1.0, tombstone_ttl=9.0)
    assert FleetMappingSync(MappingRegistry(store)).tombstone_ttl == TOMBSTONE_TTL == 604800


# against dynalite


@pytest.fixture
def table() -> str:
    return f"fleet-registry-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def stores(
    dynalite: str,  # noqa: F811 - the fixture
    table: str,
) -> AsyncIterator[list[DynamoDBLeaseStore]]:
    """Three workers' own clients of one lease table."""
    opened = [
        DynamoDBLeaseStore(table, endpoint_url=dynalite, region=REGION, call_timeout=5)
        for _ in range(3)
    ]
    for store in opened:
        await store.start()
    try:
        yield opened
    finally:
        for store in opened:
            await store.aclose()


async def create_at_once(
    syncs: list[FleetMappingSync], rows: list[StoredMapping]
) -> dict[str, MappingError | None]:
    outcomes: dict[str, MappingError | None] = {}

    async def create(sync: FleetMappingSync, row: StoredMapping) -> None:
        try:
            await sync.publish(row)
            outcomes[row.uuid] = None
        except MappingError as error:
            outcomes[row.uuid] = error

    async with anyio.create_task_group() as tg:
        for sync, row in zip(syncs, rows, strict=True):
            tg.start_soon(create, sync, row)
    return outcomes


async def live_rows_of(registry: MappingRegistry, key: str) -> list[str]:
    rows = await registry.read_all()
    return sorted(
        u for u, r in rows.items() if not r.mapping.deleted and claim_key(r.mapping) == key
    )


@pytest.mark.anyio
@pytest.mark.parametrize("workers", [2, 3])
async def test_of_workers_creating_one_function_and_stream_at_once_exactly_one_succeeds(
    stores: list[DynamoDBLeaseStore], workers: int
) -> None:
    syncs = [FleetMappingSync(MappingRegistry(s)) for s in stores[:workers]]
    registry = syncs[0].registry
    key = claim_key(mapping_row(new_uuid()))
    assert key is not None
    with anyio.fail_after(ROUNDS_TIME):
        for round_ in range(ROUNDS):
            rows = [mapping_row(new_uuid()) for _ in syncs]
            outcomes = await create_at_once(syncs, rows)
            winners = [u for u, error in outcomes.items() if error is None]
            assert len(winners) == 1, (round_, outcomes)
            (winner,) = winners
            for uid, error in outcomes.items():
                if uid != winner:
                    assert error is not None
                    assert error.code == RESOURCE_CONFLICT
                    assert error.message == duplicate_message(STREAM, "f", winner)
            assert await live_rows_of(registry, key) == [winner]
            assert await registry.read_claim(key) == winner
            # the winner deletes it (its tombstone, then the claim released); the next round
            # creates again, from whichever worker wins
            index = [r.uuid for r in rows].index(winner)
            await syncs[index].publish(mapping_row(winner, deleted=True))
            assert await registry.read_claim(key) is None
            assert await live_rows_of(registry, key) == []


@pytest.mark.anyio
async def test_a_claim_left_by_a_crash_before_the_row_does_not_block_a_create(
    stores: list[DynamoDBLeaseStore],
) -> None:
    registry = MappingRegistry(stores[0])
    sync = FleetMappingSync(MappingRegistry(stores[1]))
    ghost, created = new_uuid(), new_uuid()
    key = claim_key(mapping_row(ghost))
    assert key is not None
    assert await registry.claim(key, ghost)  # the claim written, then the worker died
    await sync.publish(mapping_row(created))
    assert await registry.read_claim(key) == created
    # were the crashed create only slow, its row can no longer be written
    fence = await registry.read(ghost)
    assert isinstance(fence, Fence)
    assert (fence.uuid, fence.superseded_by) == (ghost, created)
    assert abs(fence.written_at - time.time()) < 60
    with pytest.raises(RegistryConflict):
        await registry.write(mapping_row(ghost), None)
    # and its retry through a sync is Lambda's conflict, naming the mapping that exists
    with pytest.raises(MappingError) as error:
        await FleetMappingSync(registry).publish(mapping_row(ghost))
    assert (error.value.code, error.value.message) == (
        RESOURCE_CONFLICT,
        duplicate_message(STREAM, "f", created),
    )
    assert sorted((await registry.read_contents()).fences) == [ghost]  # not a mapping row
    assert await live_rows_of(registry, key) == [created]


class GatedRegistry(MappingRegistry):
    """The real registry, whose mapping-row writes wait for ``gate``: a worker paused
    between its claim and its row."""

    def __init__(self, store: DynamoDBLeaseStore) -> None:
        super().__init__(store)
        self.gate = anyio.Event()

    async def write(
        self, mapping: StoredMapping, seen: int | None, *, written_at: float | None = None
    ) -> int:
        await self.gate.wait()
        return await super().write(mapping, seen, written_at=written_at)


@pytest.mark.anyio
async def test_a_create_overtaken_between_its_claim_and_its_row_is_a_conflict(
    stores: list[DynamoDBLeaseStore],
) -> None:
    slow_registry = GatedRegistry(stores[0])
    slow, fast = FleetMappingSync(slow_registry), FleetMappingSync(MappingRegistry(stores[1]))
    first, second = new_uuid(), new_uuid()
    key = claim_key(mapping_row(first))
    assert key is not None
    outcome: list[MappingError | None] = []

    async def create_slowly() -> None:
        try:
            await slow.publish(mapping_row(first))
            outcome.append(None)
        except MappingError as error:
            outcome.append(error)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(create_slowly)
            await wait_for(
                lambda: fast.registry.read_claim(key), 10, message="the slow worker's claim"
            )
            await fast.publish(mapping_row(second))  # it finds no row: fences, takes over
            slow_registry.gate.set()
    assert len(outcome) == 1 and outcome[0] is not None
    assert (outcome[0].code, outcome[0].message) == (
        RESOURCE_CONFLICT,
        duplicate_message(STREAM, "f", second),
    )
    assert await fast.registry.read_claim(key) == second
    assert await live_rows_of(fast.registry, key) == [second]
    assert first not in slow.applied


@pytest.mark.anyio
async def test_a_claim_of_a_deleted_or_moved_mapping_is_taken_over(
    stores: list[DynamoDBLeaseStore],
) -> None:
    registry = MappingRegistry(stores[0])
    sync = FleetMappingSync(MappingRegistry(stores[1]))
    key = claim_key(mapping_row(new_uuid()))
    assert key is not None
    # deleted: its tombstone written, the release lost
    deleted = new_uuid()
    assert await registry.claim(key, deleted)
    await registry.write(mapping_row(deleted), None)
    await registry.write(mapping_row(deleted, deleted=True), 1)
    first = new_uuid()
    await sync.publish(mapping_row(first))
    assert await registry.read_claim(key) == first
    assert (await registry.read_all())[deleted].version == 2  # a tombstone needs no fence
    # moved: the holder's row names another function now (a crash before its release); its
    # row is written again one version up, so a write still under way over the old one fails
    await sync.publish(mapping_row(first, deleted=True))
    moved = new_uuid()
    assert await registry.claim(key, moved)
    await registry.write(mapping_row(moved, "g"), None)
    second = new_uuid()
    await sync.publish(mapping_row(second))
    assert await registry.read_claim(key) == second
    row = (await registry.read_all())[moved]
    assert (row.version, row.mapping.config["function_name"]) == (2, "g")
    assert await live_rows_of(registry, key) == [second]


@pytest.mark.anyio
async def test_an_update_claims_only_a_new_function(stores: list[DynamoDBLeaseStore]) -> None:
    registry = MappingRegistry(stores[0])
    sync = FleetMappingSync(MappingRegistry(stores[1]))
    uid = new_uuid()
    key_f, key_g = claim_key(mapping_row(uid, "f")), claim_key(mapping_row(uid, "g"))
    assert key_f is not None and key_g is not None
    await sync.publish(mapping_row(uid, "f"))
    assert await registry.read_claim(key_f) == uid
    # an update of another setting writes no claim (here: none comes back once removed)
    assert await registry.release(key_f, uid)
    await sync.publish(mapping_row(uid, "f:$LATEST", batch_size=7))  # the same function
    assert await registry.read_claim(key_f) is None
    assert await registry.claim(key_f, uid)
    # a new function: claimed, and the old one given back for another mapping to take
    await sync.publish(mapping_row(uid, "g"))
    assert (await registry.read_claim(key_g), await registry.read_claim(key_f)) == (uid, None)
    other = new_uuid()
    await FleetMappingSync(registry).publish(mapping_row(other, "f"))
    with pytest.raises(MappingError) as error:  # g is taken
        await FleetMappingSync(registry).publish(mapping_row(new_uuid(), "g"))
    assert error.value.message == duplicate_message(STREAM, "g", uid)
    # a move onto a taken function is refused, and keeps the old claim and row
    with pytest.raises(MappingError) as error:
        await sync.publish(mapping_row(uid, "f"))
    assert error.value.message == duplicate_message(STREAM, "f", other)
    assert await registry.read_claim(key_g) == uid
    assert (await registry.read_all())[uid].mapping.config["function_name"] == "g"


@pytest.mark.anyio
async def test_a_config_file_mapping_changed_on_two_workers_does_not_conflict_with_itself(
    stores: list[DynamoDBLeaseStore],
) -> None:
    syncs = [FleetMappingSync(MappingRegistry(s)) for s in stores[:2]]
    uid = stable_uuid("f", STREAM)  # declared in both workers' files
    rows = [mapping_row(uid, origin="config", batch_size=size) for size in (5, 6)]
    outcomes: list[MappingError | None] = []

    async def change(sync: FleetMappingSync, row: StoredMapping) -> None:
        try:
            await sync.publish(row)
            outcomes.append(None)
        except MappingError as error:
            outcomes.append(error)

    async with anyio.create_task_group() as tg:
        for sync, row in zip(syncs, rows, strict=True):
            tg.start_soon(change, sync, row)
    errors = [e for e in outcomes if e is not None]
    assert len(errors) == 1  # the row's version settles it, as for any mapping
    assert errors[0].code == RESOURCE_IN_USE
    registry = syncs[0].registry
    key = claim_key(rows[0])
    assert key is not None
    assert await registry.read_claim(key) == uid
    assert await live_rows_of(registry, key) == [uid]


# a running worker


def coordination(dynamodb: str, table: str) -> CoordinationConfig:
    return CoordinationConfig(
        backend="dynamodb",
        table=table,
        worker_id="a",
        failover_time=3,
        endpoint_url=dynamodb,
        region=REGION,
        mapping_sync_interval=0.5,
    )


@pytest.mark.anyio
async def test_a_worker_removes_tombstones_and_fences_older_than_the_ttl(
    tmp_path: Path,
    moto: str,
    dynalite: str,  # noqa: F811
    table: str,
    stores: list[DynamoDBLeaseStore],
) -> None:
    registry = MappingRegistry(stores[0])
    now = time.time()
    old, fresh, legacy, fenced = (new_uuid() for _ in range(4))
    await registry.write(mapping_row(old, deleted=True), None, written_at=now - TOMBSTONE_TTL - 1)
    await registry.write(mapping_row(fresh, deleted=True), None, written_at=now)
    await registry.write(mapping_row(legacy, deleted=True), None)  # by an earlier version
    assert await registry.fence(fenced, new_uuid(), now - TOMBSTONE_TTL - 1)
    live = new_uuid()
    await registry.write(mapping_row(live, "g", OTHER_STREAM), None, written_at=now - 1e9)
    async with running_daemon(tmp_path, moto, coordination=coordination(dynalite, table)):

        async def swept() -> bool:
            contents = await registry.read_contents()
            stamped = legacy in contents.rows and contents.rows[legacy].written_at is not None
            return old not in contents.rows and fenced not in contents.fences and stamped

        await wait_for(swept, 15, interval=0.2, message="the old tombstone removed")
        contents = await registry.read_contents()
        assert sorted(contents.rows) == sorted([fresh, legacy, live])
        assert contents.rows[legacy].version == 1  # stamped in place: nobody applies it again


@pytest.mark.anyio
async def test_a_shared_duplicate_of_a_running_mapping_is_logged_not_fatal(
    tmp_path: Path,
    moto: str,
    dynalite: str,  # noqa: F811
    table: str,
    stores: list[DynamoDBLeaseStore],
    stream_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="kinesis_esm")
    registry = MappingRegistry(stores[0])
    async with kinesis_client(moto) as kinesis:
        arn = await create_stream(kinesis, stream_name, 1)
        async with running_daemon(tmp_path, moto, coordination=coordination(dynalite, table)) as a:
            client = lambda_client(a.url)
            fields = {"FunctionName": "f", "EventSourceArn": arn, "StartingPosition": "LATEST"}
            running = (await call(client.create_event_source_mapping, **fields))["UUID"]
            # a row no claim guarded (a worker of an earlier version wrote it)
            duplicate = new_uuid()
            await registry.write(mapping_row(duplicate, "f", arn), None)

            async def both_listed() -> dict[str, Any] | None:
                answer = await anyio.to_thread.run_sync(client.list_event_source_mappings)
                found = {m["UUID"]: m for m in answer["EventSourceMappings"]}
                return found if duplicate in found else None

            found = await wait_for(both_listed, 15, interval=0.2, message="the duplicate listed")
            assert found[duplicate]["LastProcessingResult"].startswith("PROBLEM: ")
            assert running in found
            assert duplicate_message(arn, "f", running) in found[duplicate]["LastProcessingResult"]
            logged = [r.getMessage() for r in caplog.records if r.name.startswith("kinesis_esm")]
            assert any(
                f"mapping {duplicate} from the fleet's registry has the function and stream of "
                f"mapping {running}" in line
                for line in logged
            ), logged
