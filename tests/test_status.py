"""``kinesis-esm status``: the table from the daemon's /status, in process and as a command."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from rich.console import Console

from kinesis_esm import EventSourceMappingConfig, stable_uuid
from kinesis_esm.cli._status import StatusSource, plain, render, run_status, worker_rows
from kinesis_esm.config import ControlConfig, CoordinationConfig
from tests.support.control import call, lambda_client, running_daemon
from tests.support.dynalite import dynalite, dynalite_server  # noqa: F401 - fixtures
from tests.support.kinesis import create_stream, kinesis_client, put_records, wait_for

KINESIS_ESM = str(Path(sys.executable).parent / "kinesis-esm")


def text(renderable: Any) -> str:
    console = Console(record=True, width=220, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def snapshot(at: float, done: int, invoked: int, state: str = "Enabled") -> dict[str, Any]:
    shard = {
        "shard_id": "shardId-000000000000",
        "state": "polling",
        "lanes": 2,
        "lanes_busy": 1,
        "records_buffered": 7,
        "checkpoint": "49650000000000000000000000000000000000000000000123456789",
        "highest_sequence_read": None,
        "iterator_age_ms": 1500,
        "millis_behind_latest": 0,
        "records_polled": invoked,
        "records_invoked": invoked,
    }
    mapping = {
        "UUID": "0b8d3c7e-1111-4222-8333-944445555666",
        "FunctionName": "f",
        "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:f",
        "EventSourceArn": "arn:aws:kinesis:us-east-1:123456789012:stream/orders",
        "State": state,
        "BatchSize": 100,
        "ParallelizationFactor": 2,
        "LastProcessingResult": "PROBLEM: Function call failed",
        "counters": {
            "succeeded_events": done,
            "invocations": 12,
            "errors": 3,
            "polled_events": 4321,
            "filtered_out_events": 987,
        },
        "shards": [shard],
    }
    return {"time": at, "mappings": [mapping]}


def test_render_shows_mappings_shards_and_rates() -> None:
    shown = text(render(snapshot(102.0, 120, 60), snapshot(100.0, 100, 40)))
    for expected in (
        "0b8d3c7e",
        "orders",
        "Enabled",
        "10.0",  # (120 - 100) records / 2 s
        "PROBLEM: Function call failed",
        "4,321",  # PolledEventCount
        "987",  # FilteredOutEventCount
        "shardId-000000000000",
        "1500 ms",
        "1/2",
        "…000123456789",
    ):
        assert expected in shown, (expected, shown)
    first = text(render(snapshot(100.0, 100, 40)))  # no earlier reading: no rates yet
    assert "10.0" not in first and "-" in first


def test_status_source_from_control_config() -> None:
    control = ControlConfig(host="0.0.0.0", port=9100, auth="bearer", token="t" * 20)
    source = StatusSource.from_control(control)
    assert (source.url, source.token) == ("http://127.0.0.1:9100", "t" * 20)
    assert source.headers(source.url) == {"Authorization": f"Bearer {'t' * 20}"}
    signed = StatusSource(access_key_id="AKID", secret_access_key="secret")
    assert signed.headers("http://127.0.0.1:9001/status")["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKID/"
    )


def test_unreachable_daemon_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = io.StringIO()
    code = run_status(
        StatusSource(f"http://127.0.0.1:{port}"), once=True, console=Console(file=out)
    )
    assert code == 1 and out.getvalue() == ""  # off a terminal, the error goes to stderr
    assert (
        f"kinesis-esm status: cannot read http://127.0.0.1:{port}/status" in capsys.readouterr().err
    )


@dataclass(frozen=True)
class Canned(StatusSource):
    """Readings from a list instead of a daemon; past the end, Ctrl-C."""

    readings: tuple[dict[str, Any], ...] = ()
    calls: list[float] = field(default_factory=list)

    def fetch(self, timeout: float = 5.0) -> dict[str, Any]:
        self.calls.append(timeout)
        if len(self.calls) > len(self.readings):
            raise KeyboardInterrupt
        return self.readings[len(self.calls) - 1]


WIDE = snapshot(100.0, 100, 40)
WIDE["mappings"][0]["EventSourceArn"] += "-with-a-rather-long-stream-name-" + "x" * 60


def test_plain_rows_are_whole_whatever_their_width() -> None:
    text = plain(WIDE)
    lines = text.splitlines()
    assert lines[0] == "# 1970-01-01T00:01:40Z"
    assert lines[1] == "Event source mappings"
    header = lines[2].split()
    assert header[:6] == ["UUID", "Function", "Stream", "State", "Batch", "PF"]
    assert lines[2].rstrip().endswith("Last result")
    row = lines[3]
    assert "orders-with-a-rather-long-stream-name-" + "x" * 60 in row
    assert row.rstrip().endswith("PROBLEM: Function call failed")  # one line, not cut
    assert max(len(line) for line in lines) > 120
    shard_row = next(line for line in lines if "shardId-000000000000" in line)
    assert shard_row.rstrip().endswith(WIDE["mappings"][0]["shards"][0]["checkpoint"])
    assert "…" not in text and "\x1b" not in text


def test_off_a_terminal_once_prints_plain_rows() -> None:
    out = io.StringIO()
    code = run_status(Canned(readings=(WIDE,)), once=True, console=Console(file=out, width=80))
    assert code == 0
    assert out.getvalue() == plain(WIDE) + "\n"


def test_live_mode_into_a_file_writes_every_reading(tmp_path: Path) -> None:
    readings = (snapshot(100.0, 100, 40), snapshot(102.0, 120, 60), snapshot(104.0, 150, 70))
    path = tmp_path / "status.log"
    with path.open("w") as file:
        code = run_status(Canned(readings=readings), interval=0.01, console=Console(file=file))
    assert code == 0  # Ctrl-C after the third reading
    text = path.read_text()
    blocks = text.split("\n\n# ")
    assert len(blocks) == 3, text
    assert text.count("Event source mappings") == 3
    assert " 10.0 " in blocks[1] and " 15.0 " in blocks[2]  # records/s between readings


def test_json_lines_one_per_reading() -> None:
    readings = (snapshot(100.0, 100, 40), snapshot(102.0, 120, 60))
    out = io.StringIO()
    code = run_status(
        Canned(readings=readings), interval=0.01, as_json=True, console=Console(file=out)
    )
    assert code == 0
    assert [json.loads(line) for line in out.getvalue().splitlines()] == list(readings)
    once = io.StringIO()
    run_status(Canned(readings=readings), once=True, as_json=True, console=Console(file=once))
    assert json.loads(once.getvalue()) == readings[0]


def test_on_a_terminal_the_live_table() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    assert run_status(Canned(readings=(WIDE,)), once=True, console=console) == 0
    assert "Event source mappings" in out.getvalue() and "\x1b[" in out.getvalue()


@pytest.mark.anyio
async def test_status_of_a_running_daemon(tmp_path: Path, moto: str) -> None:
    async with kinesis_client(moto) as kinesis:
        arn = await create_stream(kinesis, "orders", 1)
        control = ControlConfig(
            port=0, auth="sigv4", access_key_id="AKIDSTATUS", secret_access_key="status-secret"
        )
        async with running_daemon(tmp_path, moto, control=control) as daemon:
            client = lambda_client(daemon.url, "AKIDSTATUS", "status-secret")
            created = await call(
                client.create_event_source_mapping,
                FunctionName="f",
                EventSourceArn=arn,
                StartingPosition="TRIM_HORIZON",
            )
            await put_records(kinesis, "orders", [("k", b"one"), ("k", b"two")])
            await wait_for(lambda: len(daemon.recorder.sequences()) == 2, 30, message="records")
            source = StatusSource(daemon.url, None, "AKIDSTATUS", "status-secret")
            out = io.StringIO()
            console = Console(file=out, width=220)
            code = await anyio.to_thread.run_sync(
                lambda: run_status(source, once=True, console=console)
            )
            assert code == 0
            shown = out.getvalue()
            assert created["UUID"][:8] in shown and "shardId-000000000000" in shown
            assert "OK" in shown and "Enabled" in shown
            unsigned = await anyio.run_process(
                [KINESIS_ESM, "status", "--url", daemon.url, "--once"], check=False
            )
            assert unsigned.returncode == 1
            assert "MissingAuthenticationTokenException" in unsigned.stderr.decode()


@pytest.mark.anyio
async def test_status_command(tmp_path: Path, moto: str) -> None:
    async with kinesis_client(moto) as kinesis:
        arn = await create_stream(kinesis, "orders", 2)
    control = ControlConfig(port=0, auth="bearer", token="status-token-0123456789")
    declared = EventSourceMappingConfig("f", arn, "TRIM_HORIZON")  # from the config file
    async with running_daemon(tmp_path, moto, control=control, mappings=[declared]) as daemon:
        env = os.environ | {"COLUMNS": "200", "KINESIS_ESM_TOKEN": "status-token-0123456789"}

        async def table() -> str | None:
            result = await anyio.run_process(
                [KINESIS_ESM, "status", "--url", daemon.url, "--once"], env=env, check=False
            )
            assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
            out = result.stdout.decode()
            return out if "Enabled" in out else None

        shown = await wait_for(table, 30, message="status to show the mapping Enabled")
        assert stable_uuid("f", arn)[:8] in shown
        assert "shardId-000000000000" in shown and "shardId-000000000001" in shown
        assert "Stream" in shown and "Last result" in shown  # headers whole, off a terminal
        as_json = await anyio.run_process(
            [KINESIS_ESM, "status", "--url", daemon.url, "--once", "--json"], env=env
        )
        [reading] = [json.loads(line) for line in as_json.stdout.decode().splitlines()]
        assert [m["UUID"] for m in reading["mappings"]] == [stable_uuid("f", arn)]
        assert reading["mappings"][0]["workers"] == []  # not a fleet: no workers
        assert "Workers" not in shown


def test_a_shard_read_by_enhanced_fan_out_shows_its_subscription() -> None:
    reading = snapshot(100.0, 100, 40)
    shard = reading["mappings"][0]["shards"][0]
    shard.update(read_mode="subscribe", subscription_age_s=42.5, resubscriptions=3)
    shown = plain(reading)
    row = next(line for line in shown.splitlines() if "shardId-000000000000" in line)
    assert "EFO 42 s r3" in row, row  # the subscription's age and its resubscriptions
    polled = plain(snapshot(100.0, 100, 40))
    assert " poll " in next(line for line in polled.splitlines() if "shardId-" in line)


def fleet_snapshot() -> dict[str, Any]:
    """A reading of worker w1 of a fleet: w2 live, w3 silent past failover_time."""
    reading = snapshot(100.0, 100, 40)
    reading["mappings"][0]["workers"] = [
        {"worker_id": "w1", "leases": 2, "live": True, "heartbeat": 17, "this_worker": True},
        {"worker_id": "w2", "leases": 1, "live": True, "heartbeat": 9, "this_worker": False},
        {"worker_id": "w3", "leases": 1, "live": False, "heartbeat": None, "this_worker": False},
    ]
    return reading


def test_worker_rows_mark_this_worker_and_the_ones_not_live() -> None:
    assert worker_rows(fleet_snapshot()) == [
        ["0b8d3c7e", "w1 (this)", "yes", "2", "17"],
        ["0b8d3c7e", "w2", "yes", "1", "9"],
        ["0b8d3c7e", "w3", "no", "1", "-"],
    ]
    assert worker_rows(snapshot(100.0, 100, 40)) == []  # not a fleet: no workers
    assert worker_rows({"time": 0.0, "mappings": []}) == []


def test_plain_has_a_workers_table_in_a_fleet_only() -> None:
    lines = plain(fleet_snapshot()).splitlines()
    at = lines.index("Workers")
    assert lines[at - 1] == ""  # a blank line after the shards table
    assert lines[at + 1].split() == ["Mapping", "Worker", "Live", "Leases", "Heartbeat"]
    assert [line.split() for line in lines[at + 2 :]] == [
        ["0b8d3c7e", "w1", "(this)", "yes", "2", "17"],
        ["0b8d3c7e", "w2", "yes", "1", "9"],
        ["0b8d3c7e", "w3", "no", "1", "-"],
    ]
    alone = snapshot(100.0, 100, 40)
    assert "Workers" not in plain(alone).splitlines()
    with_empty = snapshot(100.0, 100, 40)
    with_empty["mappings"][0]["workers"] = []  # what /status answers outside a fleet
    assert plain(with_empty) == plain(alone)


def test_render_has_a_workers_table_in_a_fleet_only() -> None:
    shown = text(render(fleet_snapshot()))
    assert "Workers" in shown and "Heartbeat" in shown
    row = next(line for line in shown.splitlines() if "w1 (this)" in line)
    assert row.split()[-3:] == ["yes", "2", "17"]
    row = next(line for line in shown.splitlines() if " w3 " in line)
    assert row.split()[-3:] == ["no", "1", "-"]
    alone = text(render(snapshot(100.0, 100, 40)))
    assert "Workers" not in alone and "Heartbeat" not in alone


@pytest.mark.anyio
async def test_status_of_a_fleet_worker_lists_the_workers(
    tmp_path: Path,
    moto: str,
    dynalite: str,  # noqa: F811 - the fixture
) -> None:
    async with kinesis_client(moto) as kinesis:
        arn = await create_stream(kinesis, f"fleet-{uuid.uuid4().hex[:8]}", 2)
    coordination = CoordinationConfig(
        backend="dynamodb",
        table=f"status-{uuid.uuid4().hex[:12]}",
        worker_id="w1",
        failover_time=2,
        endpoint_url=dynalite,
        region="us-east-1",
    )
    declared = EventSourceMappingConfig("f", arn, "TRIM_HORIZON")
    async with running_daemon(
        tmp_path, moto, mappings=[declared], coordination=coordination
    ) as daemon:
        source = StatusSource(daemon.url)

        async def both_leases() -> dict[str, Any] | None:
            reading = await anyio.to_thread.run_sync(source.fetch)
            workers = [w for m in reading["mappings"] for w in m["workers"]]
            return reading if [w["leases"] for w in workers] == [2] else None

        reading = await wait_for(both_leases, 30, interval=0.2, message="w1 to hold both shards")
    [worker] = reading["mappings"][0]["workers"]
    assert worker["worker_id"] == "w1" and worker["this_worker"] is True
    assert worker["live"] is True and isinstance(worker["heartbeat"], int)
    lines = plain(reading).splitlines()
    at = lines.index("Workers")
    assert lines[at + 2].split()[:5] == [stable_uuid("f", arn)[:8], "w1", "(this)", "yes", "2"]
