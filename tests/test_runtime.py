"""The runtime's lifecycle over a real Engine on an in-memory stream: Lambda's states, live
updates that keep checkpoints, persistence and reconcile with the config file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from kinesis_esm import (
    DaemonConfig,
    Engine,
    EventSourceMappingConfig,
    FunctionConfig,
    MemoryStream,
    PollSettings,
    SQLiteCheckpointStore,
    stable_uuid,
)
from kinesis_esm.runtime._runtime import MappingError, Runtime
from kinesis_esm.state._mappings import MappingStore, config_from_dict, config_to_dict
from tests.support.kinesis import wait_for

pytestmark = pytest.mark.anyio

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
FAST = PollSettings(base_interval=0.02, min_interval=0.01)


class Recorder:
    """A handler that remembers (function name, sequence numbers) per invocation."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[str]]] = []

    async def __call__(self, event: dict[str, Any], context: Any) -> None:
        sequences = [r["kinesis"]["sequenceNumber"] for r in event["Records"]]
        self.batches.append((context.function_name, sequences))

    def sequences(self, function: str = "f") -> list[str]:
        return [s for name, batch in self.batches if name == function for s in batch]


def config(*mappings: EventSourceMappingConfig) -> DaemonConfig:
    functions = tuple(FunctionConfig(n, "tests.test_runtime:Recorder") for n in ("f", "g", "h"))
    return DaemonConfig(functions=functions, event_source_mappings=mappings)


def fields(**overrides: Any) -> dict[str, Any]:
    return {"function_name": "f", "event_source_arn": ARN, "starting_position": "TRIM_HORIZON"} | (
        overrides
    )


@asynccontextmanager
async def running(
    cfg: DaemonConfig, stream: MemoryStream, recorder: Recorder, db: Path | None = None
) -> AsyncIterator[Runtime]:
    checkpoints = SQLiteCheckpointStore(db or ":memory:")
    try:
        async with Engine(source=stream, checkpoint_store=checkpoints, poll_settings=FAST) as eng:
            store = MappingStore(checkpoints.connection)
            handlers = {"f": recorder, "g": recorder, "h": recorder}
            async with Runtime(
                eng, cfg, store=store, handlers=handlers, settle_interval=0.01
            ) as runtime:
                await runtime.reconcile()
                yield runtime
    finally:
        await checkpoints.aclose()


async def settled(runtime: Runtime, uuid: str, state: str) -> None:
    await wait_for(lambda: runtime.get(uuid).state == state, 5, message=f"{uuid} {state}")


def put(stream: MemoryStream, n: int, start: int = 0) -> list[str]:
    return [stream.put(f"k{i}", f"r{i}".encode())[1] for i in range(start, start + n)]


async def test_create_answers_creating_then_settles_enabled() -> None:
    stream, recorder = MemoryStream(ARN), Recorder()
    async with running(config(), stream, recorder) as runtime:
        view = await runtime.create(fields())
        assert (view.state, view.state_transition_reason) == ("Creating", "User action")
        assert view.last_processing_result == "No records processed"
        assert view.function_arn == "arn:aws:lambda:us-east-1:123456789012:function:f"
        assert view.event_source_mapping_arn == (
            f"arn:aws:lambda:us-east-1:123456789012:event-source-mapping:{view.uuid}"
        )
        created = view.last_modified
        await settled(runtime, view.uuid, "Enabled")
        assert runtime.get(view.uuid).last_modified >= created
        expected = put(stream, 3)
        await wait_for(lambda: recorder.sequences() == expected, 5, message="records")
        await wait_for(lambda: runtime.get(view.uuid).last_processing_result == "OK", 5)


async def test_create_disabled_answers_disabled_and_does_not_poll() -> None:
    stream, recorder = MemoryStream(ARN), Recorder()
    async with running(config(), stream, recorder) as runtime:
        view = await runtime.create(fields(enabled=False))
        assert view.state == "Disabled"
        assert runtime.get(view.uuid).state == "Disabled"
        assert stream.get_records_calls == 0


async def test_validation_conflict_and_unknown_function() -> None:
    async with running(config(), MemoryStream(ARN), Recorder()) as runtime:
        with pytest.raises(MappingError) as info:
            await runtime.create(fields(maximum_record_age_in_seconds=30))
        assert info.value.code == "InvalidParameterValueException"
        assert info.value.message == (
            "MaximumRecordAgeInSeconds must be either -1 (forever) or between 60 and 604800 "
            "(inclusive)"
        )
        with pytest.raises(MappingError) as info:
            await runtime.create(fields(starting_position=None))
        assert info.value.code == "InvalidParameterValueException"
        assert "Value null at 'startingPosition'" in info.value.message
        first = await runtime.create(fields())
        with pytest.raises(MappingError) as info:
            await runtime.create(fields(batch_size=5))
        assert info.value.code == "ResourceConflictException"
        assert info.value.message == (
            f'The event source arn (" {ARN} ") and function (" f ") provided mapping already '
            f"exists. Please update or delete the existing mapping with UUID {first.uuid}"
        )
        other = await runtime.create(fields(function_name="g"))  # another function: fine
        assert other.uuid != first.uuid
        with pytest.raises(MappingError) as info:
            await runtime.create(fields(function_name="nope"))
        assert info.value.code == "ResourceNotFoundException"
        assert info.value.message.startswith(
            "Function not found: arn:aws:lambda:us-east-1:123456789012:function:nope"
        )
        with pytest.raises(MappingError) as info:
            runtime.get("00000000-0000-0000-0000-000000000000")
        assert info.value.code == "ResourceNotFoundException"


async def test_update_is_live_and_keeps_the_checkpoint() -> None:
    stream, recorder = MemoryStream(ARN), Recorder()
    async with running(config(), stream, recorder) as runtime:
        view = await runtime.create(fields(batch_size=1))
        first = put(stream, 4)
        await wait_for(lambda: recorder.sequences() == first, 5, message="first records")
        assert all(len(batch) == 1 for _, batch in recorder.batches)
        updated = await runtime.update(view.uuid, {"batch_size": 100})
        assert updated.state == "Updating" and updated.config.batch_size == 100
        await settled(runtime, view.uuid, "Enabled")
        recorder.batches.clear()
        second = put(stream, 30, start=4)
        await wait_for(lambda: recorder.sequences() == second, 5, message="second records")
        assert max(len(batch) for _, batch in recorder.batches) > 1
        status = runtime.statuses()[0]
        assert status.counters["polled_events"] == 34  # totals over both runners
        assert status.invocations.count == status.counters["invocations"]
        assert runtime.get(view.uuid).last_processing_result == "OK"


async def test_disable_then_enable_resumes_after_the_checkpoint() -> None:
    stream, recorder = MemoryStream(ARN), Recorder()
    async with running(config(), stream, recorder) as runtime:
        view = await runtime.create(fields())
        first = put(stream, 5)
        await wait_for(lambda: recorder.sequences() == first, 5, message="first records")
        assert (await runtime.update(view.uuid, {"enabled": False})).state == "Disabling"
        await settled(runtime, view.uuid, "Disabled")
        calls = stream.get_records_calls
        second = put(stream, 5, start=5)
        assert (await runtime.update(view.uuid, {"enabled": True})).state == "Enabling"
        await settled(runtime, view.uuid, "Enabled")
        await wait_for(lambda: recorder.sequences() == first + second, 5, message="resumed")
        assert stream.get_records_calls > calls


async def test_busy_mapping_answers_resource_in_use() -> None:
    stream, recorder = MemoryStream(ARN), Recorder()
    async with running(config(), stream, recorder) as runtime:
        view = await runtime.create(fields())
        with pytest.raises(MappingError) as info:  # the create is still being applied
            await runtime.update(view.uuid, {"batch_size": 7})
        assert info.value.code == "ResourceInUseException"
        await settled(runtime, view.uuid, "Enabled")
        await runtime.update(view.uuid, {"batch_size": 7})  # applying now, in the background
        with pytest.raises(MappingError) as info:
            await runtime.update(view.uuid, {"batch_size": 8})
        assert info.value.code == "ResourceInUseException"
        with pytest.raises(MappingError) as info:
            await runtime.delete(view.uuid)
        assert info.value.code == "ResourceInUseException"
        await settled(runtime, view.uuid, "Enabled")
        assert (await runtime.update(view.uuid, {"batch_size": 8})).config.batch_size == 8


async def test_delete_removes_the_mapping_and_its_checkpoints(tmp_path: Path) -> None:
    stream, recorder = MemoryStream(ARN), Recorder()
    async with running(config(), stream, recorder, tmp_path / "state.db") as runtime:
        view = await runtime.create(fields())
        records = put(stream, 3)
        await wait_for(lambda: recorder.sequences() == records, 5, message="records")
        assert (await runtime.delete(view.uuid)).state == "Deleting"
        await wait_for(lambda: not runtime.mappings(), 5, message="deleted")
        assert await runtime.engine.store.get_checkpoints(view.uuid) == {}
        assert runtime.store.load() == []
        again = await runtime.create(fields())  # the pair is free again
        await settled(runtime, again.uuid, "Enabled")


async def test_api_mappings_survive_a_restart(tmp_path: Path) -> None:
    db, stream, recorder = tmp_path / "state.db", MemoryStream(ARN), Recorder()
    async with running(config(), stream, recorder, db) as runtime:
        view = await runtime.create(fields(batch_size=3))
        first = put(stream, 4)
        await wait_for(lambda: recorder.sequences() == first, 5, message="first records")
        await runtime.update(view.uuid, {"batch_size": 2})
        await settled(runtime, view.uuid, "Enabled")
    second = put(stream, 3, start=4)
    async with running(config(), stream, recorder, db) as runtime:
        (restored,) = runtime.mappings()
        assert (restored.uuid, restored.config.batch_size) == (view.uuid, 2)
        assert restored.created_at == view.created_at
        await wait_for(lambda: recorder.sequences() == first + second, 5, message="resumed")


async def test_reconcile_config_file_mappings(tmp_path: Path) -> None:
    db, stream, recorder = tmp_path / "state.db", MemoryStream(ARN), Recorder()
    declared = EventSourceMappingConfig("f", ARN, "TRIM_HORIZON", batch_size=10)
    uuid = stable_uuid("f", ARN)
    async with running(config(declared), stream, recorder, db) as runtime:
        await settled(runtime, uuid, "Enabled")
        await runtime.update(uuid, {"batch_size": 20})  # an API change to a file mapping
        await settled(runtime, uuid, "Enabled")
    async with running(config(declared), stream, recorder, db) as runtime:
        assert runtime.get(uuid).config.batch_size == 20  # kept: the declaration is unchanged
    changed = declared.replace(batch_size=30)
    async with running(config(changed), stream, recorder, db) as runtime:
        assert runtime.get(uuid).config.batch_size == 30  # the file changed: it wins
        await settled(runtime, uuid, "Enabled")
        await runtime.delete(uuid)
        await wait_for(lambda: not runtime.mappings(), 5, message="deleted")
    async with running(config(changed), stream, recorder, db) as runtime:
        assert runtime.mappings() == []  # deleted through the API: stays deleted
    async with running(config(), stream, recorder, db) as runtime:
        assert runtime.mappings() == [] and runtime.store.load() == []  # gone from the file


async def test_stored_mapping_whose_function_is_gone_is_shown_not_run(tmp_path: Path) -> None:
    db, stream, recorder = tmp_path / "state.db", MemoryStream(ARN), Recorder()
    async with running(config(), stream, recorder, db) as runtime:
        view = await runtime.create(fields(function_name="h"))
    only_f_g = DaemonConfig(
        functions=(FunctionConfig("f", "m:f"), FunctionConfig("g", "m:g")),
    )
    async with running(only_f_g, stream, recorder, db) as runtime:
        shown = runtime.get(view.uuid)
        assert shown.state == "Disabled"
        assert shown.last_processing_result.startswith("PROBLEM: Function not found")
        with pytest.raises(MappingError) as info:
            await runtime.update(view.uuid, {"enabled": True})
        assert info.value.code == "ResourceNotFoundException"
        moved = await runtime.update(view.uuid, {"function_name": "g"})
        assert moved.function_arn.endswith(":function:g")
        await settled(runtime, view.uuid, "Enabled")


def test_stored_config_round_trips() -> None:
    from kinesis_esm import DestinationConfig, Filter, FilterCriteria, OnFailure

    cfg = EventSourceMappingConfig(
        "f",
        ARN,
        "AT_TIMESTAMP",
        starting_position_timestamp=1_700_000_000.5,
        function_response_types=("ReportBatchItemFailures",),
        destination_config=DestinationConfig(OnFailure("arn:aws:sqs:us-east-1:123456789012:dlq")),
        filter_criteria=FilterCriteria((Filter('{"data": {"a": [1]}}'),)),
        uuid="5b4c8a6e-3f0a-4b8e-9a4e-0a4b5c6d7e8f",
    )
    assert config_from_dict(config_to_dict(cfg)) == cfg


async def test_cloudwatch_emf_documents_count_the_interval() -> None:
    from kinesis_esm.control._emf import NAMESPACE, emf_records

    stream, recorder = MemoryStream(ARN), Recorder()
    async with running(config(), stream, recorder) as runtime:
        view = await runtime.create(fields())
        await settled(runtime, view.uuid, "Enabled")
        _, totals = emf_records(runtime.statuses(), {})
        records = put(stream, 6)
        await wait_for(lambda: recorder.sequences() == records, 5, message="records")
        (document,), totals = emf_records(runtime.statuses(), totals, now=1_700_000_000.0)
        directive = document["_aws"]["CloudWatchMetrics"][0]
        assert document["_aws"]["Timestamp"] == 1_700_000_000_000
        assert directive["Namespace"] == NAMESPACE
        assert directive["Dimensions"] == [["EventSourceMappingUUID", "FunctionName"]]
        units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
        assert units["IteratorAge"] == units["Duration"] == "Milliseconds"
        assert units["PolledEventCount"] == "Count"
        assert (document["EventSourceMappingUUID"], document["FunctionName"]) == (view.uuid, "f")
        assert document["PolledEventCount"] == document["InvokedEventCount"] == 6
        assert document["Invocations"] >= 1 and document["Errors"] == 0
        (quiet,), totals = emf_records(runtime.statuses(), totals)
        assert quiet["PolledEventCount"] == 0 and "IteratorAge" not in quiet
        await runtime.update(view.uuid, {"enabled": False})
        await settled(runtime, view.uuid, "Disabled")
        assert emf_records(runtime.statuses(), totals)[0] == []  # like Lambda: not while disabled
