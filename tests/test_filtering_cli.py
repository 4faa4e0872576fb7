"""FilterCriteria through the AWS CLI (from PyPI) against the daemon's control plane and a real
Kinesis API (moto): `create-event-source-mapping --filter-criteria` is applied (only matching
records reach the function), shown by get, and a malformed pattern gets Lambda's error with
nothing registered."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.support.kinesis import create_stream, kinesis_client, put_records, wait_for
from tests.test_control_cli import aws, aws_ok, running_daemon

pytestmark = pytest.mark.anyio


async def test_filter_criteria_through_the_aws_cli(tmp_path: Path, moto: str) -> None:
    async with kinesis_client(moto) as kinesis:
        arn = await create_stream(kinesis, "orders", 1)
        kinds = ["order" if i % 4 == 0 else "ping" for i in range(40)]
        written = await put_records(
            kinesis,
            "orders",
            [(f"k{i}", json.dumps({"kind": k}).encode()) for i, k in enumerate(kinds)],
        )
    wanted = [w.sequence_number for w, k in zip(written, kinds, strict=True) if k == "order"]
    malformed = '{"data": {"kind": [{"numeric": ["<"]}]}}'  # an operator without its operand
    criteria = json.dumps({"Filters": [{"Pattern": json.dumps({"data": {"kind": ["order"]}})}]})
    async with running_daemon(tmp_path, moto) as daemon:
        url = daemon.url
        code, _, err = await aws(
            tmp_path, url, "create-event-source-mapping", "--function-name", "f",
            "--event-source-arn", arn, "--starting-position", "TRIM_HORIZON",
            "--filter-criteria", json.dumps({"Filters": [{"Pattern": malformed}]}),
        )  # fmt: skip
        assert code != 0 and "(InvalidParameterValueException)" in err, err
        assert "Invalid filter pattern definition." in err
        listed = await aws_ok(tmp_path, url, "list-event-source-mappings")
        assert listed["EventSourceMappings"] == []  # nothing half-applied

        created = await aws_ok(
            tmp_path, url, "create-event-source-mapping", "--function-name", "f",
            "--event-source-arn", arn, "--starting-position", "TRIM_HORIZON",
            "--filter-criteria", criteria,
        )  # fmt: skip
        assert created["FilterCriteria"] == json.loads(criteria)
        got = await aws_ok(tmp_path, url, "get-event-source-mapping", "--uuid", created["UUID"])
        assert got["FilterCriteria"] == json.loads(criteria)
        await wait_for(
            lambda: set(wanted) <= set(daemon.recorder.sequences()),
            30,
            message="the matching records delivered",
        )
        seen = [
            json.loads(base64.b64decode(data))["kind"]
            for _, batch in daemon.recorder.batches
            for _, data in batch
        ]
    assert daemon.recorder.sequences() == wanted  # the matching ones, once each, in order
    assert set(seen) == {"order"}
