"""KPL de-aggregation under `kinesis-esm run` and a real Kinesis API (moto): kill -9 in the
middle of an aggregate, then restart. The checkpoint is at a user record inside the aggregate,
so the restart delivers the in-flight user records again and none before the checkpoint."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import textwrap
from pathlib import Path

import pytest
from aws_kinesis_agg.aggregator import RecordAggregator

from tests.support.daemon_process import start_daemon
from tests.support.kinesis import (
    KinesisClient,
    create_stream,
    put_records,
    wait_for,
)

pytestmark = pytest.mark.anyio
REPO_ROOT = Path(__file__).resolve().parents[1]

# Logs every batch's user-record keys with the daemon's pid; holds a batch holding "u10"
# while the flag file exists (bounded).
HANDLER = """
    import json, os, time

    def handler(event, context):
        keys = [r["kinesis"]["partitionKey"] for r in event["Records"]]
        line = json.dumps({"pid": os.getppid(), "keys": keys}) + "\\n"
        fd = os.open(os.environ["KPL_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, line.encode())
        os.close(fd)
        deadline = time.monotonic() + 60
        while "u10" in keys and os.path.exists(os.environ["KPL_BLOCK"]):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
"""


def aggregate(keys: list[str]) -> tuple[str, bytes]:
    aggregator = RecordAggregator()
    for key in keys:
        assert aggregator.add_user_record(key, b"{}", None) is None
    packed = aggregator.clear_and_get()
    assert packed is not None
    outer_key, _, blob = packed.get_contents()
    return outer_key, blob


def batches(log: Path, pid: int) -> list[list[str]]:
    if not log.exists():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]
    return [e["keys"] for e in entries if e["pid"] == pid]


async def test_kill_9_inside_an_aggregate_then_restart_repeats_only_the_in_flight_user_records(
    moto: str, client: KinesisClient, stream_name: str, tmp_path: Path
) -> None:
    arn = await create_stream(client, stream_name, 1)
    await put_records(client, stream_name, [aggregate([f"u{i}" for i in range(30)])])
    (tmp_path / "kpl_handler.py").write_text(textwrap.dedent(HANDLER))
    state, log, block = tmp_path / "state.db", tmp_path / "kpl.log", tmp_path / "block"
    config = tmp_path / "kinesis-esm.toml"
    config.write_text(
        f"""\
[kinesis]
endpoint_url = "{moto}"
region = "us-east-1"

[state]
path = "{state}"

[control]
port = 0

[functions.kpl]
handler = "kpl_handler:handler"
timeout = 30

[[event_source_mappings]]
function_name = "kpl"
event_source_arn = "{arn}"
starting_position = "TRIM_HORIZON"
batch_size = 10
deaggregate = true
"""
    )
    env = {
        **os.environ,
        "KPL_LOG": str(log),
        "KPL_BLOCK": str(block),
        "PYTHONPATH": str(REPO_ROOT),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    block.touch()
    first = start_daemon(config, env, tmp_path / "daemon.out")
    try:

        def checkpoint() -> str | None:
            with sqlite3.connect(state) as db:
                rows = db.execute("SELECT checkpoint FROM checkpoints").fetchall()
            return rows[0][0] if rows else None

        await wait_for(
            lambda: any("u10" in b for b in batches(log, first.pid)), 30, message="u10 in flight"
        )
        await wait_for(
            lambda: (checkpoint() or "").endswith(":9"),
            30,
            message="the checkpoint at user record 9",
            ignore=(sqlite3.OperationalError,),
        )
        first.kill()
        assert first.wait(timeout=10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
    block.unlink()
    second = start_daemon(config, env, tmp_path / "daemon.out")
    try:
        await wait_for(
            lambda: any("u29" in b for b in batches(log, second.pid)), 30, message="the rest"
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        if second.poll() is None:
            second.kill()
    done_before = [k for b in batches(log, first.pid) for k in b if "u10" not in b]
    assert done_before == [f"u{i}" for i in range(10)]
    again = [k for b in batches(log, second.pid) for k in b]
    assert again == [f"u{i}" for i in range(10, 30)]  # nothing before the checkpoint
