"""The control plane driven by the AWS CLI installed from PyPI (``.venv/bin/aws lambda ...
--endpoint-url``), and ``kinesis-esm run`` as a real process: its URL log, SIGTERM, and a
restart that keeps the mappings created through the API."""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.text import TextReceiveStream

from kinesis_esm.config import ControlConfig
from tests.support.control import (
    ACCOUNT,
    STREAM_ARN,
    aws_cli,
    aws_cli_env,
    call,
    lambda_client,
    memory_config,
    memory_daemon,
    running_daemon,
)
from tests.support.kinesis import create_stream, kinesis_client, put_records, wait_for

pytestmark = pytest.mark.anyio

KINESIS_ESM = str(Path(sys.executable).parent / "kinesis-esm")


async def aws(
    tmp_path: Path, url: str, *args: str, key: str = "testing", secret: str = "testing"
) -> tuple[int, Any, str]:
    """Run ``aws lambda <args> --endpoint-url url``: (exit code, parsed stdout, stderr)."""
    command = [aws_cli(), "lambda", *args, "--endpoint-url", url, "--output", "json"]
    result = await anyio.run_process(command, env=aws_cli_env(tmp_path, key, secret), check=False)
    out = result.stdout.decode()
    return result.returncode, json.loads(out) if out.strip() else None, result.stderr.decode()


async def aws_ok(tmp_path: Path, url: str, *args: str, **kw: str) -> Any:
    code, out, err = await aws(tmp_path, url, *args, **kw)
    assert code == 0, err
    return out


async def new_stream(endpoint: str, name: str) -> str:
    async with kinesis_client(endpoint) as kinesis:
        return await create_stream(kinesis, name, 1)


async def put(endpoint: str, name: str, start: int, count: int) -> list[str]:
    async with kinesis_client(endpoint) as kinesis:
        records = [(f"k{i}", f"r{i}".encode()) for i in range(start, start + count)]
        return [r.sequence_number for r in await put_records(kinesis, name, records)]


async def test_aws_cli_drives_the_daemon(tmp_path: Path, moto: str) -> None:
    arn = await new_stream(moto, "orders")
    async with running_daemon(tmp_path, moto, functions=("f", "g", "h")) as daemon:
        url = daemon.url
        created = await aws_ok(
            tmp_path, url, "create-event-source-mapping", "--function-name", "f",
            "--event-source-arn", arn, "--starting-position", "LATEST", "--batch-size", "10",
        )  # fmt: skip
        uuid = created["UUID"]
        assert (created["State"], created["BatchSize"], created["StartingPosition"]) == (
            "Creating",
            10,
            "LATEST",
        )
        assert created["FunctionArn"] == f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:f"
        assert created["DestinationConfig"] == {"OnFailure": {}}
        for name in ("g", "h"):
            await aws_ok(
                tmp_path, url, "create-event-source-mapping", "--function-name", name,
                "--event-source-arn", arn, "--starting-position", "TRIM_HORIZON",
            )  # fmt: skip

        async def state() -> str:
            got = await aws_ok(tmp_path, url, "get-event-source-mapping", "--uuid", uuid)
            return str(got["State"])

        await wait_for(lambda: _is(state, "Enabled"), 20, message="Enabled")
        first = await aws_ok(tmp_path, url, "list-event-source-mappings", "--max-items", "2")
        assert len(first["EventSourceMappings"]) == 2 and first["NextToken"]
        rest = await aws_ok(
            tmp_path, url, "list-event-source-mappings", "--max-items", "2",
            "--starting-token", first["NextToken"],
        )  # fmt: skip
        assert len(rest["EventSourceMappings"]) == 1 and "NextToken" not in rest
        everything = await aws_ok(
            tmp_path, url, "list-event-source-mappings", "--page-size", "1"
        )  # the CLI follows NextMarker itself, one mapping per request
        listed = [m["UUID"] for m in everything["EventSourceMappings"]]
        assert listed[0] == uuid and len(set(listed)) == 3
        updated = await aws_ok(
            tmp_path, url, "update-event-source-mapping", "--uuid", uuid, "--batch-size", "20",
            "--maximum-retry-attempts", "3",
        )  # fmt: skip
        assert (updated["State"], updated["BatchSize"], updated["MaximumRetryAttempts"]) == (
            "Updating",
            20,
            3,
        )
        await wait_for(lambda: _is(state, "Enabled"), 20, message="Enabled after update")
        disabled = await aws_ok(
            tmp_path, url, "update-event-source-mapping", "--uuid", uuid, "--no-enabled"
        )
        assert disabled["State"] == "Disabling"
        await wait_for(lambda: _is(state, "Disabled"), 20, message="Disabled")
        enabled = await aws_ok(
            tmp_path, url, "update-event-source-mapping", "--uuid", uuid, "--enabled"
        )
        assert enabled["State"] == "Enabling"
        await wait_for(lambda: _is(state, "Enabled"), 20, message="Enabled again")
        code, _, err = await aws(
            tmp_path, url, "create-event-source-mapping", "--function-name", "f",
            "--event-source-arn", arn, "--starting-position", "LATEST",
        )  # fmt: skip
        assert code != 0 and "(ResourceConflictException)" in err and uuid in err
        code, _, err = await aws(
            tmp_path, url, "create-event-source-mapping", "--function-name", "f",
            "--event-source-arn", arn, "--starting-position", "LATEST",
            "--maximum-record-age-in-seconds", "30",
        )  # fmt: skip
        assert code != 0 and "(InvalidParameterValueException)" in err
        assert "between 60 and 604800" in err
        code, _, err = await aws(
            tmp_path, url, "create-event-source-mapping", "--function-name", "nope",
            "--event-source-arn", arn, "--starting-position", "LATEST",
        )  # fmt: skip
        assert code != 0 and "(ResourceNotFoundException)" in err
        deleted = await aws_ok(tmp_path, url, "delete-event-source-mapping", "--uuid", uuid)
        assert deleted["State"] == "Deleting"

        async def gone() -> bool:
            code, _, err = await aws(tmp_path, url, "get-event-source-mapping", "--uuid", uuid)
            return code != 0 and "(ResourceNotFoundException)" in err

        await wait_for(gone, 20, message="deleted")


async def _is(state: Any, expected: str) -> bool:
    return bool(await state() == expected)


async def test_aws_cli_signs_for_an_authenticated_daemon(tmp_path: Path, moto: str) -> None:
    arn = await new_stream(moto, "orders")
    control = ControlConfig(
        port=0, auth="sigv4", access_key_id="AKIDCONTROL", secret_access_key="control-secret"
    )
    async with running_daemon(tmp_path, moto, control=control) as daemon:
        created = await aws_ok(
            tmp_path, daemon.url, "create-event-source-mapping", "--function-name", "f",
            "--event-source-arn", arn, "--starting-position", "LATEST",
            key="AKIDCONTROL", secret="control-secret",
        )  # fmt: skip
        listed = await aws_ok(
            tmp_path, daemon.url, "list-event-source-mappings", "--event-source-arn", arn,
            key="AKIDCONTROL", secret="control-secret",
        )  # fmt: skip
        assert [m["UUID"] for m in listed["EventSourceMappings"]] == [created["UUID"]]
        code, _, err = await aws(
            tmp_path, daemon.url, "list-event-source-mappings",
            key="AKIDCONTROL", secret="wrong",
        )  # fmt: skip
        assert code != 0 and "(InvalidSignatureException)" in err


class DaemonProcess:
    """``kinesis-esm run --config`` in a subprocess; its log lines are collected as they come."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def pump(self) -> None:
        assert self.process.stderr is not None
        buffer = ""
        async for chunk in TextReceiveStream(self.process.stderr):
            buffer += chunk
            *complete, buffer = buffer.split("\n")
            self.lines.extend(complete)

    async def url(self) -> str:
        def found() -> str | None:
            for line in self.lines:
                if m := re.search(r"control plane listening on (http://\S+)", line):
                    return m.group(1)
            return None

        return await wait_for(found, 30, message="the daemon's URL in its log")

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            return await self.process.wait()


@asynccontextmanager
async def daemon_process(
    command: Sequence[str], cwd: Path, env: dict[str, str]
) -> AsyncIterator[DaemonProcess]:
    async with await anyio.open_process(command, cwd=cwd, env=env) as process:
        daemon = DaemonProcess(process)
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.pump)
            try:
                yield daemon
            finally:
                if process.returncode is None:
                    process.kill()
                    with anyio.move_on_after(10):
                        await process.wait()


HANDLER = """
import os


def handler(event, context):
    with open(os.environ["RECORDS_FILE"], "a") as out:
        for record in event["Records"]:
            out.write(record["kinesis"]["sequenceNumber"] + "\\n")
"""


async def test_restart_keeps_api_created_mappings(tmp_path: Path, moto: str) -> None:
    arn = await new_stream(moto, "orders")
    (tmp_path / "recording_handler.py").write_text(HANDLER)
    records = tmp_path / "records.txt"
    config = tmp_path / "kinesis-esm.toml"
    config.write_text(
        f'[kinesis]\nendpoint_url = "{moto}"\nregion = "us-east-1"\n\n'
        f'[state]\npath = "{tmp_path / "state.db"}"\n\n'
        '[control]\nhost = "127.0.0.1"\nport = 0\n\n'
        '[functions.f]\nhandler = "recording_handler:handler"\n'
    )
    env = aws_cli_env(tmp_path) | {"RECORDS_FILE": str(records)}
    command = [KINESIS_ESM, "run", "--config", str(config), "--log-interval", "0"]

    def seen() -> list[str]:
        return records.read_text().split() if records.exists() else []

    async with daemon_process(command, tmp_path, env) as daemon:
        url = await daemon.url()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        client = lambda_client(url)
        created = await call(
            client.create_event_source_mapping,
            FunctionName="f",
            EventSourceArn=arn,
            StartingPosition="TRIM_HORIZON",
            BatchSize=5,
        )
        first = await put(moto, "orders", 0, 12)
        await wait_for(lambda: seen() == first, 30, message="first records handled")
        assert await daemon.stop() == 0
        assert any("stopped cleanly" in line for line in daemon.lines), daemon.lines
    second = await put(moto, "orders", 12, 6)  # written while the daemon is down
    async with daemon_process(command, tmp_path, env) as daemon:
        client = lambda_client(await daemon.url())
        (mapping,) = (await call(client.list_event_source_mappings))["EventSourceMappings"]
        assert (mapping["UUID"], mapping["BatchSize"]) == (created["UUID"], 5)
        assert mapping["EventSourceMappingArn"] == created["EventSourceMappingArn"]
        await wait_for(lambda: seen() == first + second, 30, message="resumed after checkpoint")
        assert await daemon.stop() == 0


async def test_non_loopback_bind_without_auth_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "open.toml"
    config.write_text('[control]\nhost = "0.0.0.0"\n')
    result = await anyio.run_process(
        [KINESIS_ESM, "validate", "--config", str(config)], check=False
    )
    assert result.returncode == 2
    assert "requires authentication" in result.stderr.decode()
    config.write_text(
        '[control]\nhost = "0.0.0.0"\nauth = "bearer"\ntoken = "a-long-enough-token"\n'
    )
    result = await anyio.run_process(
        [KINESIS_ESM, "validate", "--config", str(config)], check=False
    )
    assert result.returncode == 0, result.stderr.decode()


async def test_aws_cli_meets_the_guards(tmp_path: Path) -> None:
    """The AWS CLI's requests pass the Host and content-type checks, and it shows the new
    refusals as modelled errors: one function however spelled, the mapping cap, destinations."""
    control = ControlConfig(port=0, max_mappings=1)
    async with memory_daemon(memory_config(functions=("f", "g"), control=control)) as daemon:
        url, stream = daemon.url, STREAM_ARN
        await aws_ok(
            tmp_path, url, "create-event-source-mapping", "--function-name", "f",
            "--event-source-arn", stream, "--starting-position", "LATEST",
        )  # fmt: skip
        code, _, err = await aws(
            tmp_path, url, "create-event-source-mapping", "--function-name", "f:$LATEST",
            "--event-source-arn", stream, "--starting-position", "LATEST",
        )  # fmt: skip
        assert code != 0 and "(ResourceConflictException)" in err, err
        code, _, err = await aws(
            tmp_path, url, "create-event-source-mapping", "--function-name", "g",
            "--event-source-arn", stream, "--starting-position", "LATEST",
        )  # fmt: skip
        assert code != 0 and "(ServiceQuotaExceededException)" in err, err
        assert "max_mappings (1)" in err
        (mapping,) = (await aws_ok(tmp_path, url, "list-event-source-mappings"))[
            "EventSourceMappings"
        ]
        await wait_for(
            lambda: daemon.runtime.get(mapping["UUID"]).state == "Enabled", 10, message="Enabled"
        )  # an update of a mapping still being created answers ResourceInUseException
        code, _, err = await aws(
            tmp_path, url, "update-event-source-mapping", "--uuid", mapping["UUID"],
            "--destination-config", '{"OnFailure": {"Destination": "file:///etc/esm"}}',
        )  # fmt: skip
        assert code != 0 and "(InvalidParameterValueException)" in err, err
        assert "file_destinations_root" in err
