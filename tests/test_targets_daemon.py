"""Remote targets declared in the config file, under `kinesis-esm run` and a real Kinesis API
(moto): an `http` function (a local aiohttp server) gets Lambda's event with the configured
header from the environment, its partial batch responses are honoured, nothing is lost, and the
token never reaches the daemon's log."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support.daemon_process import start_daemon
from tests.support.emulators import free_port
from tests.support.kinesis import (
    KinesisClient,
    create_stream,
    put_records,
    wait_for,
)

pytestmark = pytest.mark.anyio
TOKEN = "s3cr3t-token-value"


class Service:
    """A consumer service behind HTTP: fails each 'bad' record on its first delivery."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.headers: list[str] = []
        self.seen_bad: set[str] = set()
        self.done: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        event = await request.json()
        self.events.append(event)
        self.headers.append(request.headers.get("Authorization", ""))
        failures = []
        for record in event["Records"]:
            key = record["kinesis"]["partitionKey"]
            if key.startswith("bad") and key not in self.seen_bad:
                self.seen_bad.add(key)
                failures.append({"itemIdentifier": record["kinesis"]["sequenceNumber"]})
                break  # Lambda retries from the lowest failed record
            self.done.add(key)
        return web.json_response({"batchItemFailures": failures})


async def test_an_http_target_from_the_config_file(
    moto: str, client: KinesisClient, stream_name: str, tmp_path: Path
) -> None:
    arn = await create_stream(client, stream_name, 1)
    keys = [("bad" if i % 9 == 4 else "ok") + f"-{i}" for i in range(40)]
    await put_records(client, stream_name, [(k, json.dumps({"n": k}).encode()) for k in keys])
    service = Service()
    app = web.Application()
    app.router.add_post("/kinesis", service.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    config = tmp_path / "kinesis-esm.toml"
    config.write_text(
        f"""\
[kinesis]
endpoint_url = "{moto}"
region = "us-east-1"

[state]
path = "{tmp_path / "state.db"}"

[control]
port = 0

[functions.orders-http]
target = "http"
url = "http://127.0.0.1:{port}/kinesis"
timeout = 10
headers = {{ "Authorization" = "env:ORDERS_TOKEN" }}

[[event_source_mappings]]
function_name = "orders-http"
event_source_arn = "{arn}"
starting_position = "TRIM_HORIZON"
batch_size = 10
function_response_types = ["ReportBatchItemFailures"]
"""
    )
    env = {
        **os.environ,
        "ORDERS_TOKEN": f"Bearer {TOKEN}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    out = tmp_path / "daemon.out"
    daemon = start_daemon(config, env, out)
    try:
        await wait_for(lambda: set(keys) <= service.done, 30, message="every record handled")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, out.read_text()[-2000:]
    finally:
        if daemon.poll() is None:
            daemon.kill()
        await runner.cleanup()
    assert service.seen_bad == {k for k in keys if k.startswith("bad")}  # each failed once
    assert set(service.headers) == {f"Bearer {TOKEN}"}
    first = service.events[0]["Records"][0]
    assert first["eventSource"] == "aws:kinesis" and first["eventSourceARN"] == arn
    assert TOKEN not in out.read_text()  # the header's value is never logged
