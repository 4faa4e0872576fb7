"""The daemon's Lambda API driven by boto3's own ``lambda`` client (a client we did not write),
with real Kinesis underneath (moto server): shapes, codes, states, live changes, metrics."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kinesis_esm.config import ControlConfig
from kinesis_esm.control import MAX_BODY_BYTES
from tests.support.control import ACCOUNT, call, lambda_client, running_daemon, scrape
from tests.support.kinesis import create_stream, kinesis_client, put_records, wait_for

pytestmark = pytest.mark.anyio

BASE = "/2015-03-31/event-source-mappings"
# AWS-recorded Create response for a Kinesis mapping with only StartingPosition=LATEST
# (reference section 1.3).
AWS_RECORDED_DEFAULTS = {
    "BatchSize": 100,
    "BisectBatchOnFunctionError": False,
    "DestinationConfig": {"OnFailure": {}},
    "FunctionResponseTypes": [],
    "LastProcessingResult": "No records processed",
    "MaximumBatchingWindowInSeconds": 0,
    "MaximumRecordAgeInSeconds": -1,
    "MaximumRetryAttempts": -1,
    "ParallelizationFactor": 1,
    "State": "Creating",
    "StateTransitionReason": "User action",
    "TumblingWindowInSeconds": 0,
}


def body(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


async def new_stream(endpoint: str, name: str, shards: int = 1) -> str:
    async with kinesis_client(endpoint) as kinesis:
        return await create_stream(kinesis, name, shards)


async def put(endpoint: str, name: str, start: int, count: int) -> list[str]:
    async with kinesis_client(endpoint) as kinesis:
        written = await put_records(
            kinesis,
            name,
            [(f"key-{i}", f"record-{i}".encode()) for i in range(start, start + count)],
        )
    return [r.sequence_number for r in written]


async def state_of(client: Any, uuid: str) -> str:
    return str((await call(client.get_event_source_mapping, UUID=uuid))["State"])


async def wait_state(client: Any, uuid: str, state: str, seconds: float = 15) -> None:
    async def reached() -> bool:
        return await state_of(client, uuid) == state

    await wait_for(reached, seconds, interval=0.1, message=f"mapping {uuid} to be {state}")


async def test_create_answers_lambdas_defaults_and_settles(tmp_path: Path, moto: str) -> None:
    arn = await new_stream(moto, "orders")
    async with running_daemon(tmp_path, moto) as daemon:
        client = lambda_client(daemon.url)
        before = datetime.datetime.now(datetime.UTC)
        response = await call(
            client.create_event_source_mapping,
            FunctionName="f",
            EventSourceArn=arn,
            StartingPosition="LATEST",
        )
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
        created = body(response)
        uuid = created["UUID"]
        assert {k: created[k] for k in AWS_RECORDED_DEFAULTS} == AWS_RECORDED_DEFAULTS
        assert created["StartingPosition"] == "LATEST"
        assert created["EventSourceArn"] == arn
        assert created["FunctionArn"] == f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:f"
        assert created["EventSourceMappingArn"] == (
            f"arn:aws:lambda:us-east-1:{ACCOUNT}:event-source-mapping:{uuid}"
        )
        assert before - datetime.timedelta(seconds=1) <= created["LastModified"]
        expected_keys = {
            *AWS_RECORDED_DEFAULTS,
            "UUID",
            "StartingPosition",
            "EventSourceArn",
            "FunctionArn",
            "EventSourceMappingArn",
            "LastModified",
        }
        assert set(created) == expected_keys
        await wait_state(client, uuid, "Enabled")
        got = await call(client.get_event_source_mapping, UUID=uuid)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert body(got) | {"State": "Creating", "LastModified": None} == created | {
            "LastModified": None
        }
        async with (  # the wire: epoch seconds, PascalCase
            aiohttp.ClientSession() as http,
            http.get(f"{daemon.url}{BASE}/{uuid}") as raw,
        ):
            wire = await raw.json()
        assert isinstance(wire["LastModified"], float)
        assert abs(wire["LastModified"] - time.time()) < 60


async def test_list_paginates_with_marker_and_filters(tmp_path: Path, moto: str) -> None:
    orders, audit = await new_stream(moto, "orders"), await new_stream(moto, "audit")
    functions = ("f0", "f1", "f2", "f3", "f4")
    async with running_daemon(tmp_path, moto, functions=functions) as daemon:
        client = lambda_client(daemon.url)
        uuids = []
        for name in functions:
            created = await call(
                client.create_event_source_mapping,
                FunctionName=name,
                EventSourceArn=orders,
                StartingPosition="TRIM_HORIZON",
            )
            uuids.append(created["UUID"])
        other = await call(
            client.create_event_source_mapping,
            FunctionName="arn:aws:lambda:us-east-1:123456789012:function:f0",
            EventSourceArn=audit,
            StartingPosition="LATEST",
        )
        page = await call(client.list_event_source_mappings, MaxItems=2)
        assert [m["UUID"] for m in page["EventSourceMappings"]] == uuids[:2]
        seen, marker = [], page["NextMarker"]
        seen += [m["UUID"] for m in page["EventSourceMappings"]]
        while marker:
            page = await call(client.list_event_source_mappings, MaxItems=2, Marker=marker)
            seen += [m["UUID"] for m in page["EventSourceMappings"]]
            marker = page.get("NextMarker")
        assert seen == [*uuids, other["UUID"]]
        paginator = client.get_paginator("list_event_source_mappings")
        pages = await call(
            lambda **kw: list(paginator.paginate(**kw)), PaginationConfig={"PageSize": 4}
        )
        assert [len(p["EventSourceMappings"]) for p in pages] == [4, 2]
        by_stream = await call(client.list_event_source_mappings, EventSourceArn=audit)
        assert [m["UUID"] for m in by_stream["EventSourceMappings"]] == [other["UUID"]]
        assert "NextMarker" not in by_stream
        by_function = await call(client.list_event_source_mappings, FunctionName="f0")
        assert {m["UUID"] for m in by_function["EventSourceMappings"]} == {
            uuids[0],
            other["UUID"],
        }


async def test_errors_have_lambdas_codes_shapes_and_messages(tmp_path: Path, moto: str) -> None:
    arn = await new_stream(moto, "orders")
    async with running_daemon(tmp_path, moto) as daemon:
        client = lambda_client(daemon.url)
        first = await call(
            client.create_event_source_mapping,
            FunctionName="f",
            EventSourceArn=arn,
            StartingPosition="LATEST",
        )
        with pytest.raises(client.exceptions.ResourceConflictException) as conflict:
            await call(
                client.create_event_source_mapping,
                FunctionName="f",
                EventSourceArn=arn,
                StartingPosition="TRIM_HORIZON",
            )
        error = conflict.value.response
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 409
        assert error["Type"] == "User"
        assert error["Error"]["Message"] == (
            f'The event source arn (" {arn} ") and function (" f ") provided mapping already '
            f"exists. Please update or delete the existing mapping with UUID {first['UUID']}"
        )
        with pytest.raises(client.exceptions.InvalidParameterValueException) as bad_age:
            await call(
                client.create_event_source_mapping,
                FunctionName="f",
                EventSourceArn=arn,
                StartingPosition="LATEST",
                MaximumRecordAgeInSeconds=30,
            )
        assert bad_age.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert bad_age.value.response["Error"]["Message"] == (
            "MaximumRecordAgeInSeconds must be either -1 (forever) or between 60 and 604800 "
            "(inclusive)"
        )
        with pytest.raises(client.exceptions.ResourceNotFoundException) as unknown:
            await call(
                client.create_event_source_mapping,
                FunctionName="nope",
                EventSourceArn=arn,
                StartingPosition="LATEST",
            )
        assert unknown.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert unknown.value.response["Error"]["Message"].startswith(
            f"Function not found: arn:aws:lambda:us-east-1:{ACCOUNT}:function:nope"
        )
        with pytest.raises(client.exceptions.InvalidParameterValueException) as missing:
            await call(client.create_event_source_mapping, FunctionName="f", EventSourceArn=arn)
        assert missing.value.response["Error"]["Message"] == (
            "1 validation error detected: Value null at 'startingPosition' failed to satisfy "
            "constraint: Member must not be null."
        )
        with pytest.raises(client.exceptions.ClientError) as enum:
            await call(
                client.create_event_source_mapping,
                FunctionName="g" * 3,
                EventSourceArn=arn,
                StartingPosition="0",
            )
        assert enum.value.response["Error"]["Code"] == "ValidationException"
        assert (
            "Member must satisfy enum value set: [LATEST, AT_TIMESTAMP, TRIM_HORIZON]"
            in (enum.value.response["Error"]["Message"])
        )
        with pytest.raises(client.exceptions.InvalidParameterValueException) as no_stream:
            await call(
                client.create_event_source_mapping,
                FunctionName="f",
                EventSourceArn=arn.replace("orders", "missing"),
                StartingPosition="LATEST",
            )
        assert no_stream.value.response["Error"]["Message"] == (
            f"Stream not found: {arn.replace('orders', 'missing')}"
        )
        with pytest.raises(client.exceptions.ResourceNotFoundException) as gone:
            await call(client.get_event_source_mapping, UUID="7d8e6b0c-0000-4000-8000-000000000000")
        assert (
            gone.value.response["Error"]["Message"] == "The resource you requested does not exist."
        )
        async with aiohttp.ClientSession() as http:
            await raw_errors(http, daemon.url, first["UUID"])


async def raw_errors(http: aiohttp.ClientSession, url: str, uuid: str) -> None:
    """Bodies no SDK would send still get Lambda's error shape, never a traceback."""
    cases = [
        ("POST", BASE, b'{"FunctionName": "f", ', 400, "InvalidRequestContentException"),
        ("POST", f"{BASE}/", b"[1, 2]", 400, "InvalidRequestContentException"),
        ("POST", BASE, b"[" * 100_000, 400, "InvalidRequestContentException"),
        ("POST", BASE, b" " * (MAX_BODY_BYTES + 1), 413, "RequestTooLargeException"),
        ("POST", BASE, json.dumps({"FunctionName": "f"}).encode(), 400, None),
        ("PUT", f"{BASE}/{uuid}", b'{"StartingPosition": "LATEST"}', 400, None),
        ("PUT", f"{BASE}/{uuid}", b'{"EventSourceArn": "x"}', 400, None),
        ("PUT", f"{BASE}/{uuid}", b'{"BatchSize": "ten"}', 400, None),
        ("GET", "/2015-03-31/functions", b"", 404, "UnknownOperationException"),
        ("PATCH", f"{BASE}/{uuid}", b"", 404, "UnknownOperationException"),
        ("GET", f"{BASE}?MaxItems=0", b"", 400, "ValidationException"),
        ("GET", f"{BASE}?Marker=%%%", b"", 400, "InvalidParameterValueException"),
    ]
    json_type = {"Content-Type": "application/json"}
    for method, path, data, status, code in cases:
        async with http.request(method, url + path, data=data, headers=json_type) as response:
            text = await response.text()
            assert response.status == status, (method, path, text)
            answer = json.loads(text)
            assert code is None or response.headers["x-amzn-ErrorType"] == code, (path, text)
            assert "message" in answer or "Message" in answer
            assert "Traceback" not in text


async def test_update_disable_enable_delete_states(tmp_path: Path, moto: str) -> None:
    arn = await new_stream(moto, "orders")
    root = tmp_path / "failures"
    destination = f"file://{root / 'orders.jsonl'}"
    control = ControlConfig(port=0, file_destinations_root=str(root))
    async with running_daemon(tmp_path, moto, functions=("f", "g"), control=control) as daemon:
        client = lambda_client(daemon.url)
        uuid = await create_enabled(client, arn)
        updated = await call(
            client.update_event_source_mapping,
            UUID=uuid,
            BatchSize=7,
            MaximumBatchingWindowInSeconds=1,
            DestinationConfig={"OnFailure": {"Destination": destination}},
        )
        assert updated["ResponseMetadata"]["HTTPStatusCode"] == 202
        assert (updated["State"], updated["BatchSize"]) == ("Updating", 7)
        await wait_state(client, uuid, "Enabled")
        got = await call(client.get_event_source_mapping, UUID=uuid)
        assert (got["BatchSize"], got["MaximumBatchingWindowInSeconds"]) == (7, 1)
        assert got["DestinationConfig"] == {"OnFailure": {"Destination": destination}}
        assert got["LastModified"] >= updated["LastModified"]
        assert got["StartingPosition"] == "TRIM_HORIZON"
        disabled = await call(client.update_event_source_mapping, UUID=uuid, Enabled=False)
        assert disabled["State"] == "Disabling"
        await wait_state(client, uuid, "Disabled")
        enabled = await call(client.update_event_source_mapping, UUID=uuid, Enabled=True)
        assert enabled["State"] == "Enabling"
        await wait_state(client, uuid, "Enabled")
        moved = await call(client.update_event_source_mapping, UUID=uuid, FunctionName="g")
        assert moved["FunctionArn"].endswith(":function:g")
        await wait_state(client, uuid, "Enabled")
        deleted = await call(client.delete_event_source_mapping, UUID=uuid)
        assert (deleted["ResponseMetadata"]["HTTPStatusCode"], deleted["State"]) == (
            202,
            "Deleting",
        )

        async def gone() -> bool:
            try:
                await call(client.get_event_source_mapping, UUID=uuid)
            except client.exceptions.ResourceNotFoundException:
                return True
            return False

        await wait_for(gone, 15, message="the mapping to be deleted")
        listed = await call(client.list_event_source_mappings)
        assert listed["EventSourceMappings"] == []


async def test_live_batch_size_update_shows_in_next_invocations(tmp_path: Path, moto: str) -> None:
    arn = await new_stream(moto, "orders")
    async with running_daemon(tmp_path, moto) as daemon:
        client, recorder = lambda_client(daemon.url), daemon.recorder
        uuid = (
            await call(
                client.create_event_source_mapping,
                FunctionName="f",
                EventSourceArn=arn,
                StartingPosition="TRIM_HORIZON",
                BatchSize=1,
            )
        )["UUID"]
        first = await put(moto, "orders", 0, 4)
        await wait_for(lambda: recorder.sequences() == first, 30, message="first records")
        assert [len(batch) for _, batch in recorder.batches] == [1, 1, 1, 1]
        await call(client.update_event_source_mapping, UUID=uuid, BatchSize=50)
        await wait_state(client, uuid, "Enabled")
        recorder.batches.clear()
        second = await put(moto, "orders", 4, 40)
        await wait_for(lambda: recorder.sequences() == second, 30, message="second records")
        sizes = [len(batch) for _, batch in recorder.batches]
        assert max(sizes) > 1 and all(size <= 50 for size in sizes), sizes


async def test_disable_then_enable_resumes_after_the_checkpoint(tmp_path: Path, moto: str) -> None:
    arn = await new_stream(moto, "orders")
    async with running_daemon(tmp_path, moto) as daemon:
        client, recorder = lambda_client(daemon.url), daemon.recorder
        uuid = (
            await call(
                client.create_event_source_mapping,
                FunctionName="f",
                EventSourceArn=arn,
                StartingPosition="TRIM_HORIZON",
            )
        )["UUID"]
        first = await put(moto, "orders", 0, 10)
        await wait_for(lambda: recorder.sequences() == first, 30, message="first records")
        await call(client.update_event_source_mapping, UUID=uuid, Enabled=False)
        await wait_state(client, uuid, "Disabled")
        second = await put(moto, "orders", 10, 10)  # written while disabled
        await call(client.update_event_source_mapping, UUID=uuid, Enabled=True)
        await wait_state(client, uuid, "Enabled")
        await wait_for(lambda: recorder.sequences() == first + second, 30, message="resumed")
        got = await call(client.get_event_source_mapping, UUID=uuid)
        assert got["LastProcessingResult"] == "OK"


async def create_enabled(client: Any, arn: str) -> str:
    """Create a TRIM_HORIZON mapping of function "f" and wait until it is Enabled."""
    response = await call(
        client.create_event_source_mapping,
        FunctionName="f",
        EventSourceArn=arn,
        StartingPosition="TRIM_HORIZON",
    )
    uuid = str(response["UUID"])
    await wait_state(client, uuid, "Enabled")
    return uuid


def value(samples: dict[tuple[str, Any], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_metrics_values_move(tmp_path: Path, moto: str) -> None:
    arn = await new_stream(moto, "orders", shards=2)
    async with running_daemon(tmp_path, moto) as daemon, aiohttp.ClientSession() as http:
        client = lambda_client(daemon.url)
        uuid = await create_enabled(client, arn)

        async def metrics() -> dict[tuple[str, Any], float]:
            async with http.get(f"{daemon.url}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                return scrape(await response.text())

        labels = {"uuid": uuid, "function_name": "f"}
        before = await metrics()
        assert value(before, "kinesis_esm_polled_events_total", **labels) == 0
        assert value(before, "kinesis_esm_mapping_enabled", **labels) == 1
        assert value(before, "kinesis_esm_invocation_duration_seconds_count", **labels) == 0
        await put(moto, "orders", 0, 25)

        async def moved() -> dict[tuple[str, Any], float] | None:
            now = await metrics()
            invoked = value(now, "kinesis_esm_invoked_events_total", **labels)
            return now if invoked == 25 else None

        after = await wait_for(moved, 30, message="metrics to count 25 records")
        assert value(after, "kinesis_esm_polled_events_total", **labels) == 25
        assert (value(after, "kinesis_esm_invocations_total", **labels) or 0) >= 1
        assert value(after, "kinesis_esm_errors_total", **labels) == 0
        count = value(after, "kinesis_esm_invocation_duration_seconds_count", **labels)
        assert count == value(after, "kinesis_esm_invocations_total", **labels)
        shard_ids = {
            dict(key[1])["shard_id"]
            for key in after
            if key[0] == "kinesis_esm_iterator_age_milliseconds"
        }
        assert shard_ids and all(s.startswith("shardId-") for s in shard_ids)
        polled = sum(
            v for (name, _), v in after.items() if name == "kinesis_esm_shard_records_polled_total"
        )
        assert polled == 25
        assert (
            value(
                after, "kinesis_esm_mapping_info", **labels, event_source_arn=arn, state="Enabled"
            )
            == 1
        )


async def test_health_ready_and_status(tmp_path: Path, moto: str) -> None:
    arn = await new_stream(moto, "orders")
    async with running_daemon(tmp_path, moto) as daemon, aiohttp.ClientSession() as http:
        client = lambda_client(daemon.url)
        uuid = await create_enabled(client, arn)
        async with http.get(f"{daemon.url}/health") as health:
            assert health.status == 200 and (await health.json())["status"] == "ok"
        async with http.get(f"{daemon.url}/ready") as ready:
            assert ready.status == 200
            assert await ready.json() == {"ready": True, "mappings": {"Enabled": 1}}
        async with http.get(f"{daemon.url}/status") as status:
            (mapping,) = (await status.json())["mappings"]
        assert (mapping["UUID"], mapping["State"]) == (uuid, "Enabled")
        assert [s["shard_id"] for s in mapping["shards"]] == ["shardId-000000000000"]


async def test_sigv4_and_bearer_auth(tmp_path: Path, moto: str) -> None:
    arn = await new_stream(moto, "orders")
    control = ControlConfig(
        port=0,
        auth="sigv4",
        access_key_id="AKIDKINESISESM",
        secret_access_key="s3cret/key+value",
        token="a-bearer-token-for-prometheus",
    )
    async with running_daemon(tmp_path, moto, control=control) as daemon:
        client = lambda_client(daemon.url, "AKIDKINESISESM", "s3cret/key+value")
        created = await call(
            client.create_event_source_mapping,
            FunctionName="f",
            EventSourceArn=arn,
            StartingPosition="LATEST",
        )
        listed = await call(client.list_event_source_mappings, EventSourceArn=arn, MaxItems=5)
        assert [m["UUID"] for m in listed["EventSourceMappings"]] == [created["UUID"]]
        wrong_secret = lambda_client(daemon.url, "AKIDKINESISESM", "not-the-secret")
        with pytest.raises(wrong_secret.exceptions.ClientError) as denied:
            await call(wrong_secret.list_event_source_mappings)
        assert denied.value.response["Error"]["Code"] == "InvalidSignatureException"
        assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        wrong_key = lambda_client(daemon.url, "AKIDSOMEONEELSE", "s3cret/key+value")
        with pytest.raises(wrong_key.exceptions.ClientError) as unknown:
            await call(wrong_key.get_event_source_mapping, UUID=created["UUID"])
        assert unknown.value.response["Error"]["Code"] == "UnrecognizedClientException"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{daemon.url}/metrics") as anonymous:
                assert anonymous.status == 403
                assert (
                    anonymous.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
                )
            bearer = {"Authorization": "Bearer a-bearer-token-for-prometheus"}
            async with http.get(f"{daemon.url}/metrics", headers=bearer) as scraped:
                assert scraped.status == 200
            async with http.get(
                f"{daemon.url}/metrics", headers={"Authorization": "Bearer x"}
            ) as bad:
                assert bad.status == 403
            async with http.get(f"{daemon.url}/health") as health:  # probes need no credentials
                assert health.status == 200
