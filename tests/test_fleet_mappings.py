"""Mappings shared by a fleet: two in-process daemons (Runtime + Engine + control plane) with
leases and the mapping registry in dynalite, Kinesis from moto, driven through boto3's own
lambda client. A change through either worker's REST API reaches the other within a bound;
the registry's conditional writes settle two workers changing one mapping at once.
"""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from botocore.exceptions import ClientError

from kinesis_esm.config import ConfigError, CoordinationConfig, EventSourceMappingConfig
from kinesis_esm.runtime._fleet_sync import FleetMappingSync
from kinesis_esm.runtime._model import RESOURCE_IN_USE, MappingError
from kinesis_esm.state._dynamodb import DynamoDBLeaseStore
from kinesis_esm.state._mappings import StoredMapping
from kinesis_esm.state._registry import MappingRegistry, RegistryConflict
from tests.support.control import Daemon, call, lambda_client, running_daemon
from tests.support.dynalite import dynalite, dynalite_server  # noqa: F401 - fixtures
from tests.support.fleet_engines import fleet_coordination
from tests.support.kinesis import create_stream, kinesis_client, put_records, wait_for

pytestmark = pytest.mark.anyio
SYNC_INTERVAL = 0.5
BOUND = 15.0  # seconds a change may take to reach the other worker (interval + a restart)


@pytest.fixture
def table() -> str:
    return f"fleet-mappings-{uuid.uuid4().hex[:12]}"


def coordination(dynamodb: str, table: str, worker: str) -> CoordinationConfig:
    return fleet_coordination(
        dynamodb, table, worker, failover_time=3, mapping_sync_interval=SYNC_INTERVAL
    )


@asynccontextmanager
async def two_workers(
    tmp_path: Path,
    kinesis: str,
    dynamodb: str,
    table: str,
    mappings: tuple[EventSourceMappingConfig, ...] = (),
) -> AsyncIterator[tuple[Daemon, Daemon]]:
    async with AsyncExitStack() as stack:
        workers = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            daemon = await stack.enter_async_context(
                running_daemon(
                    tmp_path / name,
                    kinesis,
                    mappings=mappings,
                    coordination=coordination(dynamodb, table, name),
                )
            )
            workers.append(daemon)
        yield workers[0], workers[1]


def listed(client: Any) -> dict[str, dict[str, Any]]:
    answer = client.list_event_source_mappings()
    return {m["UUID"]: m for m in answer["EventSourceMappings"]}


async def list_of(client: Any) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = await anyio.to_thread.run_sync(listed, client)
    return result


async def settled(client: Any, uid: str) -> None:
    """Wait (bounded) until the worker behind ``client`` has finished applying the mapping's
    last change: as on Lambda, a change to a mapping still Creating or Updating is refused
    with ResourceInUseException, so a client waits for Enabled or Disabled first."""

    async def done() -> bool:
        mapping = (await list_of(client)).get(uid)
        return mapping is not None and mapping["State"] in ("Enabled", "Disabled")

    await wait_for(done, BOUND, interval=0.2, message=f"mapping {uid} settled")


def comparable(mapping: dict[str, Any]) -> dict[str, Any]:
    """A listed mapping without what each worker stamps on its own (state, times, results)."""
    volatile = {"State", "LastModified", "LastProcessingResult", "StateTransitionReason"}
    return {k: v for k, v in mapping.items() if k not in volatile}


async def test_create_update_delete_through_either_worker_reach_the_other(
    tmp_path: Path,
    moto: str,
    dynalite: str,  # noqa: F811 - the fixture
    table: str,
    stream_name: str,
) -> None:
    async with kinesis_client(moto) as kinesis:
        arn = await create_stream(kinesis, stream_name, 2)
        async with two_workers(tmp_path, moto, dynalite, table) as (a, b):
            client_a, client_b = lambda_client(a.url), lambda_client(b.url)
            created = await call(
                client_a.create_event_source_mapping,
                FunctionName="f",
                EventSourceArn=arn,
                StartingPosition="TRIM_HORIZON",
                BatchSize=10,
            )
            uid = created["UUID"]

            async def on_b() -> dict[str, Any] | None:
                return (await list_of(client_b)).get(uid)

            seen = await wait_for(on_b, BOUND, interval=0.2, message="the mapping on worker b")
            assert seen["BatchSize"] == 10
            assert seen["EventSourceArn"] == arn
            lists = [await list_of(client_a), await list_of(client_b)]
            assert [sorted(x) for x in lists] == [[uid], [uid]]
            assert comparable(lists[0][uid]) == comparable(lists[1][uid])

            # records flow once: each shard is leased to one worker
            records = [(f"k{i}", f"record {i}".encode()) for i in range(60)]
            written = await put_records(kinesis, stream_name, records)
            # moto numbers each shard's records from 1: a record is its (sequence, data)
            expected = {(r.sequence_number, base64.b64encode(r.data).decode()) for r in written}

            def deliveries() -> list[tuple[str, str]]:
                return [r for d in (a, b) for _, batch in d.recorder.batches for r in batch]

            await wait_for(
                lambda: set(deliveries()) >= expected, 30, message="every record delivered"
            )
            assert set(deliveries()) == expected
            counts = Counter(deliveries())
            assert [s for s, n in counts.items() if n > 1] == []

            # an update on b reaches a, same UUID
            await settled(client_b, uid)
            await call(client_b.update_event_source_mapping, UUID=uid, BatchSize=7)

            async def batch_size_on_a() -> bool:
                mapping = (await list_of(client_a)).get(uid)
                return mapping is not None and mapping["BatchSize"] == 7

            await wait_for(batch_size_on_a, BOUND, interval=0.2, message="BatchSize 7 on a")
            got = await call(client_a.get_event_source_mapping, UUID=uid)
            assert (got["UUID"], got["BatchSize"]) == (uid, 7)

            # disabling on a reaches b
            await settled(client_a, uid)
            await call(client_a.update_event_source_mapping, UUID=uid, Enabled=False)

            async def disabled_on_b() -> bool:
                mapping = (await list_of(client_b)).get(uid)
                return mapping is not None and mapping["State"] == "Disabled"

            await wait_for(disabled_on_b, BOUND, interval=0.2, message="Disabled on b")

            # a delete on a: gone on b
            await settled(client_a, uid)
            await call(client_a.delete_event_source_mapping, UUID=uid)

            async def gone_on_b() -> bool:
                return uid not in await list_of(client_b)

            await wait_for(gone_on_b, BOUND, interval=0.2, message="the mapping gone from b")
            with pytest.raises(ClientError) as error:
                await call(client_b.get_event_source_mapping, UUID=uid)
            assert error.value.response["Error"]["Code"] == "ResourceNotFoundException"

            async def gone_on_a() -> bool:
                return uid not in await list_of(client_a)

            await wait_for(gone_on_a, BOUND, interval=0.2, message="the mapping gone from a")


async def test_an_api_change_of_a_config_file_mapping_reaches_every_worker_declaring_it(
    tmp_path: Path,
    moto: str,
    dynalite: str,  # noqa: F811 - the fixture
    table: str,
    stream_name: str,
) -> None:
    async with kinesis_client(moto) as kinesis:
        arn = await create_stream(kinesis, stream_name, 1)
        declared = EventSourceMappingConfig(
            function_name="f", event_source_arn=arn, starting_position="TRIM_HORIZON"
        )
        async with two_workers(tmp_path, moto, dynalite, table, (declared,)) as (a, b):
            client_a, client_b = lambda_client(a.url), lambda_client(b.url)
            uids = [sorted(await list_of(c)) for c in (client_a, client_b)]
            assert len(uids[0]) == 1 and uids[0] == uids[1]  # stable_uuid: the same on both
            uid = uids[0][0]
            await settled(client_a, uid)
            await call(client_a.update_event_source_mapping, UUID=uid, BatchSize=25)

            async def batch_size_on_b() -> bool:
                mapping = (await list_of(client_b)).get(uid)
                return mapping is not None and mapping["BatchSize"] == 25

            await wait_for(batch_size_on_b, BOUND, interval=0.2, message="BatchSize 25 on b")
            await settled(client_b, uid)
            await call(client_b.delete_event_source_mapping, UUID=uid)

            async def gone_on_a() -> bool:
                return uid not in await list_of(client_a)

            await wait_for(gone_on_a, BOUND, interval=0.2, message="the mapping gone from a")


def stored(uid: str, batch_size: int) -> StoredMapping:
    config = {"function_name": "f", "batch_size": batch_size}
    return StoredMapping(uid, "api", config, None, {}, 1.0, 2.0)


async def test_of_two_workers_writing_over_the_same_version_exactly_one_wins(
    dynalite: str,  # noqa: F811
    table: str,
) -> None:
    store = DynamoDBLeaseStore(table, endpoint_url=dynalite, region="us-east-1", call_timeout=5)
    async with store:
        registry = MappingRegistry(store)
        uid = str(uuid.uuid4())
        assert await registry.write(stored(uid, 10), None) == 1
        with pytest.raises(RegistryConflict):
            await registry.write(stored(uid, 11), None)  # a second create of one UUID
        outcomes: list[int | str] = []

        async def update(size: int) -> None:
            try:
                outcomes.append(await registry.write(stored(uid, size), 1))
            except RegistryConflict:
                outcomes.append("conflict")

        async with anyio.create_task_group() as tg:
            for size in range(20, 28):
                tg.start_soon(update, size)
        assert sorted(map(str, outcomes)) == ["2"] + ["conflict"] * 7
        rows = await registry.read_all()
        assert rows[uid].version == 2
        assert rows[uid].mapping.config["batch_size"] in range(20, 28)

        # through the runtime's hook: the loser gets Lambda's ResourceInUseException
        x, y = FleetMappingSync(registry), FleetMappingSync(registry)
        x.applied[uid] = y.applied[uid] = 2
        await x.publish(stored(uid, 30))
        with pytest.raises(MappingError) as error:
            await y.publish(stored(uid, 31))
        assert error.value.code == RESOURCE_IN_USE
        y.applied[uid] = (await registry.read_all())[uid].version  # what its next poll applies
        await y.publish(stored(uid, 31))  # the retry succeeds
        assert (await registry.read_all())[uid].mapping.config["batch_size"] == 31


async def test_a_registry_that_cannot_be_written_is_a_service_exception() -> None:
    store = DynamoDBLeaseStore("t-closed", endpoint_url="http://127.0.0.1:9", region="us-east-1")
    sync = FleetMappingSync(MappingRegistry(store))
    with pytest.raises(MappingError) as error:
        await sync.publish(stored(str(uuid.uuid4()), 5))  # a closed store: LeaseStoreError
    assert error.value.code == "ServiceException"
    assert sync.applied == {}


def test_the_sync_interval_is_bounded() -> None:
    with pytest.raises(ConfigError, match="mapping_sync_interval"):
        CoordinationConfig(backend="dynamodb", mapping_sync_interval=0)
    with pytest.raises(ConfigError, match="mapping_sync_interval"):
        CoordinationConfig(backend="dynamodb", mapping_sync_interval=61)
    assert CoordinationConfig().mapping_sync_interval == 2


async def test_a_worker_that_joins_later_runs_the_mappings_the_fleet_already_has(
    tmp_path: Path,
    moto: str,
    dynalite: str,  # noqa: F811 - the fixture
    table: str,
    stream_name: str,
) -> None:
    async with kinesis_client(moto) as kinesis:
        arn = await create_stream(kinesis, stream_name, 1)
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        worker_a = coordination(dynalite, table, "a")
        async with running_daemon(tmp_path / "a", moto, coordination=worker_a) as a:
            client_a = lambda_client(a.url)
            created = await call(
                client_a.create_event_source_mapping,
                FunctionName="f",
                EventSourceArn=arn,
                StartingPosition="LATEST",
                BatchSize=3,
                MetricsConfig={"Metrics": ["EventCount"]},
            )
            worker_b = coordination(dynalite, table, "b")
            async with running_daemon(tmp_path / "b", moto, coordination=worker_b) as b:
                client_b = lambda_client(b.url)

                async def on_b() -> dict[str, Any] | None:
                    return (await list_of(client_b)).get(created["UUID"])

                seen = await wait_for(on_b, BOUND, interval=0.2, message="the mapping on b")
                assert (seen["BatchSize"], seen["StartingPosition"]) == (3, "LATEST")
                assert seen["MetricsConfig"] == {"Metrics": ["EventCount"]}  # an extra, kept
                assert comparable(seen) == comparable((await list_of(client_a))[created["UUID"]])


async def test_a_restarted_worker_applies_what_it_missed_and_shares_what_it_had_alone(
    tmp_path: Path,
    moto: str,
    dynalite: str,  # noqa: F811 - the fixture
    table: str,
    stream_name: str,
) -> None:
    async with kinesis_client(moto) as kinesis:
        arn = await create_stream(kinesis, stream_name, 1)
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        mapping = {"FunctionName": "f", "EventSourceArn": arn, "StartingPosition": "LATEST"}
        # b alone, before any fleet: a mapping in its state file only
        async with running_daemon(tmp_path / "b", moto) as b:
            alone = await call(lambda_client(b.url).create_event_source_mapping, **mapping)
        worker_a, worker_b = (coordination(dynalite, table, w) for w in ("a", "b"))
        async with running_daemon(tmp_path / "a", moto, coordination=worker_a) as a:
            client_a = lambda_client(a.url)
            async with running_daemon(tmp_path / "b", moto, coordination=worker_b) as b:

                async def shared_with_a() -> bool:
                    return alone["UUID"] in await list_of(client_a)

                await wait_for(shared_with_a, BOUND, interval=0.2, message="b's mapping on a")
            # b is stopped: a deletes it, then b starts again from its state file
            await call(client_a.delete_event_source_mapping, UUID=alone["UUID"])

            async def gone_on_a() -> bool:  # Deleting until its runner has stopped
                return alone["UUID"] not in await list_of(client_a)

            await wait_for(gone_on_a, BOUND, interval=0.2, message="the delete on a")
            async with running_daemon(tmp_path / "b", moto, coordination=worker_b) as b:
                client_b = lambda_client(b.url)

                async def deleted_on_b() -> bool:
                    return alone["UUID"] not in await list_of(client_b)

                await wait_for(deleted_on_b, BOUND, interval=0.2, message="the delete on b")


RACE_ROUNDS = 20
RACE_TIME = 150.0  # seconds all rounds may take together


async def create_at_once(clients: list[Any], fields: dict[str, Any]) -> list[Any]:
    """Each client's CreateEventSourceMapping, started together: its answer or ClientError."""
    outcomes: list[Any] = [None] * len(clients)

    async def create(index: int) -> None:
        try:
            outcomes[index] = await call(clients[index].create_event_source_mapping, **fields)
        except ClientError as error:
            outcomes[index] = error

    async with anyio.create_task_group() as tg:
        for index in range(len(clients)):
            tg.start_soon(create, index)
    return outcomes


async def uuids_on(clients: list[Any]) -> list[list[str]]:
    return [sorted(await list_of(c)) for c in clients]


async def test_two_workers_creating_one_function_and_stream_at_once_end_with_one_mapping(
    tmp_path: Path,
    moto: str,
    dynalite: str,  # noqa: F811 - the fixture
    table: str,
    stream_name: str,
) -> None:
    """Each worker's own duplicate check passes (neither has the other's mapping yet); the
    registry's claim lets exactly one create through, as Lambda does."""
    async with kinesis_client(moto) as kinesis:
        arn = await create_stream(kinesis, stream_name, 1)
        async with two_workers(tmp_path, moto, dynalite, table) as (a, b):
            clients = [lambda_client(a.url), lambda_client(b.url)]
            fields = {"FunctionName": "f", "EventSourceArn": arn, "StartingPosition": "LATEST"}
            with anyio.fail_after(RACE_TIME):
                for round_ in range(RACE_ROUNDS):
                    outcomes = await create_at_once(clients, fields)
                    won = [i for i, o in enumerate(outcomes) if not isinstance(o, ClientError)]
                    assert len(won) == 1, (round_, outcomes)
                    winner = won[0]
                    uid = outcomes[winner]["UUID"]
                    error = outcomes[1 - winner].response["Error"]
                    assert error["Code"] == "ResourceConflictException"
                    assert error["Message"].endswith(f"existing mapping with UUID {uid}")
                    expected = [[uid], [uid]]
                    await wait_for(
                        partial(lists_are, clients, expected), BOUND, interval=0.2,
                        message="one mapping on both",
                    )  # fmt: skip
                    lists = [await list_of(c) for c in clients]
                    assert comparable(lists[0][uid]) == comparable(lists[1][uid])
                    result = lists[1 - winner][uid]["LastProcessingResult"]
                    assert not result.startswith("PROBLEM"), result
                    # deleted through the worker that lost; the next round creates it again
                    other = clients[1 - winner]
                    await settled(other, uid)
                    await call(other.delete_event_source_mapping, UUID=uid)
                    await wait_for(
                        partial(lists_are, clients, [[], []]), BOUND, interval=0.2,
                        message="deleted from both",
                    )  # fmt: skip


async def lists_are(clients: list[Any], expected: list[list[str]]) -> bool:
    return await uuids_on(clients) == expected


async def test_a_mapping_deleted_on_one_worker_is_created_again_on_the_other(
    tmp_path: Path,
    moto: str,
    dynalite: str,  # noqa: F811 - the fixture
    table: str,
    stream_name: str,
) -> None:
    async with kinesis_client(moto) as kinesis:
        arn = await create_stream(kinesis, stream_name, 1)
        async with two_workers(tmp_path, moto, dynalite, table) as (a, b):
            client_a, client_b = lambda_client(a.url), lambda_client(b.url)
            fields = {"FunctionName": "f", "EventSourceArn": arn, "StartingPosition": "LATEST"}
            first = (await call(client_a.create_event_source_mapping, **fields))["UUID"]

            async def on_b() -> bool:
                return first in await list_of(client_b)

            await wait_for(on_b, BOUND, interval=0.2, message="the mapping on b")
            with pytest.raises(ClientError) as refused:  # b's own check, as on Lambda
                await call(client_b.create_event_source_mapping, **fields)
            assert refused.value.response["Error"]["Code"] == "ResourceConflictException"
            await settled(client_a, first)
            await call(client_a.delete_event_source_mapping, UUID=first)

            async def gone_from_b() -> bool:
                return first not in await list_of(client_b)

            await wait_for(gone_from_b, BOUND, interval=0.2, message="the delete on b")
            second = (await call(client_b.create_event_source_mapping, **fields))["UUID"]
            assert second != first

            async def only_second_on_a() -> bool:
                return sorted(await list_of(client_a)) == [second]

            await wait_for(only_second_on_a, BOUND, interval=0.2, message="the new one on a")
