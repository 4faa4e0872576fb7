"""Tumbling windows as a user runs them: ``kinesis-esm run`` with ``tumbling_window_in_seconds``
in its config file, killed with -9 mid-window and started again (the state resumes from the
last checkpoint), and the AWS CLI creating a windowed mapping on the daemon's control plane.

The handler module is written into the daemon's working directory; it logs, one ``O_APPEND``
line each, the state every invocation receives and the state it returns, so the lines survive
the kill."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from kinesis_esm import DaemonConfig, FunctionConfig, KinesisConfig, stable_uuid
from kinesis_esm.cli._daemon import run_daemon
from kinesis_esm.config import ControlConfig, StateConfig
from kinesis_esm.policy._windows import WindowSnapshot
from tests.support.control import REGION, aws_cli, aws_cli_env
from tests.support.kinesis import (
    KinesisClient,
    StreamRecord,
    create_stream,
    put_records,
    wait_for,
)

pytestmark = pytest.mark.anyio

CLI = Path(sys.executable).with_name("kinesis-esm")
FUNCTION = "windows"
MODULE = "window_handlers"
LOG_ENV, BLOCK_ENV = "WINDOW_LOG", "WINDOW_BLOCK"

HANDLER = """\
import json, os, time
from pathlib import Path


def _log(entry):
    line = (json.dumps(entry) + "\\n").encode()
    fd = os.open(os.environ["WINDOW_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def handler(event, context):
    # in a worker process of the daemon (Lambda's variables are set) the daemon is the parent
    pid = os.getppid() if "AWS_LAMBDA_FUNCTION_NAME" in os.environ else os.getpid()
    ids = [r["kinesis"]["sequenceNumber"] for r in event["Records"]]
    entry = {
        "pid": pid,
        "window": event["window"]["start"],
        "state": event["state"],
        "ids": ids,
        "final": event["isFinalInvokeForWindow"],
    }
    _log({**entry, "phase": "start"})
    block = Path(os.environ["WINDOW_BLOCK"])
    deadline = time.monotonic() + 60
    while block.exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # held in flight while the test's flag file exists (bounded)
    state = {"ids": [*event["state"].get("ids", []), *ids]}
    _log({**entry, "phase": "done", "out": state})
    return {"state": state}
"""


def config_text(endpoint: str, state: Path, arn: str) -> str:
    return f"""\
[kinesis]
endpoint_url = "{endpoint}"
region = "{REGION}"

[state]
path = "{state}"

[control]
port = 0

[functions.{FUNCTION}]
handler = "{MODULE}:handler"
timeout = 10

[[event_source_mappings]]
function_name = "{FUNCTION}"
event_source_arn = "{arn}"
starting_position = "TRIM_HORIZON"
batch_size = 5
tumbling_window_in_seconds = 900
"""


@dataclass
class Entry:
    pid: int
    phase: str
    window: str
    state: dict[str, Any]
    ids: list[str]
    final: bool
    out: dict[str, Any] | None


@dataclass
class Daemons:
    workdir: Path
    runs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.workdir / "kinesis-esm.toml"

    @property
    def state(self) -> Path:
        return self.workdir / "state.db"

    @property
    def block(self) -> Path:
        return self.workdir / "block"

    def start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(
            {
                LOG_ENV: str(self.workdir / "calls.log"),
                BLOCK_ENV: str(self.block),
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )
        with (self.workdir / f"daemon-{len(self.runs)}.out").open("wb") as out:
            process = subprocess.Popen(
                [str(CLI), "run", "--config", str(self.config)],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.runs.append(process)
        return process

    def output(self) -> str:
        return "\n".join(
            (self.workdir / f"daemon-{i}.out").read_text(errors="replace")
            for i in range(len(self.runs))
        )

    def log(self) -> list[Entry]:
        path = self.workdir / "calls.log"
        if not path.exists():
            return []
        lines = [line for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]
        return [Entry(**{"out": None, **json.loads(line)}) for line in lines]

    def stored(self, uuid: str) -> tuple[str, bytes | None] | None:
        """The shard's checkpoint and window state, as the file holds them."""
        with contextlib.closing(sqlite3.connect(self.state)) as db:
            row = db.execute(
                "SELECT checkpoint, window_state FROM checkpoints WHERE mapping_uuid = ?", (uuid,)
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def kill_all(self) -> None:
        for process in self.runs:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    (tmp_path / f"{MODULE}.py").write_text(HANDLER)
    runs = Daemons(tmp_path)
    yield runs
    runs.kill_all()
    runs.block.unlink(missing_ok=True)


def seqs(records: list[StreamRecord]) -> list[str]:
    return [r.sequence_number for r in records]


async def test_kill_9_mid_window_then_restart_resumes_the_state_of_the_last_checkpoint(
    moto: str, client: KinesisClient, stream_name: str, daemons: Daemons
) -> None:
    arn = await create_stream(client, stream_name, 1)
    uuid = stable_uuid(FUNCTION, arn)
    daemons.config.write_text(config_text(moto, daemons.state, arn))
    run = daemons.start()

    phase1 = await put_records(client, stream_name, [(f"a{i}", b"1") for i in range(10)])

    def checkpointed(sequence: str) -> bool:
        stored = daemons.stored(uuid)
        return stored is not None and stored[0] == sequence

    await wait_for(
        lambda: checkpointed(phase1[-1].sequence_number),
        30,
        message="phase 1 folded and checkpointed",
        ignore=(sqlite3.OperationalError,),  # the daemon may not have created its tables yet
    )
    daemons.block.touch()  # the next invocation is held in flight
    phase2 = await put_records(client, stream_name, [(f"b{i}", b"2") for i in range(5)])

    def in_flight() -> list[Entry]:
        log = daemons.log()
        done = {tuple(e.ids) for e in log if e.pid == run.pid and e.phase == "done"}
        return [e for e in log if e.phase == "start" and tuple(e.ids) not in done]

    held = await wait_for(in_flight, 20, message="a phase-2 invocation in flight")
    run.kill()
    await wait_for(lambda: run.poll() is not None, 10, message="the daemon to die")
    assert run.returncode == -signal.SIGKILL

    stored = daemons.stored(uuid)
    assert stored is not None
    checkpoint, state_bytes = stored
    assert state_bytes is not None
    assert checkpoint == phase1[-1].sequence_number  # the held batch was not checkpointed
    snapshot = WindowSnapshot.from_json(state_bytes)
    before_kill = [e for e in daemons.log() if e.phase == "done"]
    last = before_kill[-1]
    # the stored state is what the last invocation that finished returned (or {} after a final)
    assert json.loads(snapshot.state_json) == ({} if last.final else last.out)

    daemons.block.unlink()
    rerun = daemons.start()
    everything = seqs(phase1 + phase2)

    def folded() -> list[str] | None:
        done = [e for e in daemons.log() if e.phase == "done"]
        closed = [i for e in done if e.final for i in e.state.get("ids", [])]
        open_window = [] if done[-1].final else done[-1].out["ids"]  # type: ignore[index]
        return closed + open_window if closed + open_window == everything else None

    await wait_for(folded, 30, message="every record folded into the state, once")
    rerun.send_signal(signal.SIGTERM)
    await wait_for(lambda: rerun.poll() is not None, 20, message="the daemon to exit")
    assert rerun.returncode == 0, daemons.output()

    log = daemons.log()
    restarted = [e for e in log if e.pid == rerun.pid and e.phase == "start"]
    first = restarted[0]
    assert first.state == json.loads(snapshot.state_json)  # resumed from the checkpoint
    assert first.ids == held[0].ids  # the invocation killed in flight comes again, whole
    if not held[0].final:  # (a final, if a 900 s boundary fell between the phases)
        assert first.ids[0] == next(s for s in everything if int(s) > int(checkpoint))
    # from start to end, each invocation got exactly the state the previous success left
    carried: list[str] = []
    for entry in (e for e in log if e.phase == "done"):
        assert entry.state.get("ids", []) == carried, entry
        carried = [] if entry.final else entry.out["ids"]  # type: ignore[index]
    stored = daemons.stored(uuid)
    assert stored is not None and stored[0] == everything[-1]
    assert stored[1] is not None
    assert json.loads(WindowSnapshot.from_json(stored[1]).state_json)["ids"][-5:] == seqs(phase2)


# the AWS CLI against the daemon's control plane


async def aws(tmp_path: Path, url: str, *args: str) -> tuple[int, Any, str]:
    command = [aws_cli(), "lambda", *args, "--endpoint-url", url, "--output", "json"]
    result = await anyio.run_process(command, env=aws_cli_env(tmp_path), check=False)
    out = result.stdout.decode()
    return result.returncode, json.loads(out) if out.strip() else None, result.stderr.decode()


class WindowRecorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def __call__(self, event: dict[str, Any], context: Any) -> Any:
        self.events.append(event)
        keys = [r["kinesis"]["partitionKey"] for r in event["Records"]]
        return {"state": {"keys": [*event["state"].get("keys", []), *keys]}}


@contextlib.asynccontextmanager
async def daemon_in_process(tmp_path: Path, moto: str, handler: Any) -> AsyncIterator[str]:
    config = DaemonConfig(
        kinesis=KinesisConfig(endpoint_url=moto, region=REGION),
        state=StateConfig(str(tmp_path / "state.db")),
        functions=(FunctionConfig("f", "tests.support.control:Recorder"),),
        control=ControlConfig(port=0),
    )
    shutdown = anyio.Event()
    async with anyio.create_task_group() as tg:
        start = functools.partial(
            run_daemon,
            config,
            handlers={"f": handler},
            shutdown=shutdown,
            handle_signals=False,
            log_interval=0,
        )
        url = await tg.start(start)
        try:
            yield url
        finally:
            shutdown.set()


async def test_aws_cli_creates_a_windowed_mapping_and_the_window_runs(
    tmp_path: Path, moto: str, client: KinesisClient, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 1)
    recorder = WindowRecorder()
    async with daemon_in_process(tmp_path, moto, recorder) as url:
        code, _, err = await aws(
            tmp_path, url, "create-event-source-mapping", "--function-name", "f",
            "--event-source-arn", arn, "--starting-position", "TRIM_HORIZON",
            "--tumbling-window-in-seconds", "60", "--parallelization-factor", "2",
        )  # fmt: skip
        assert code != 0 and "(InvalidParameterValueException)" in err, err
        assert "TumblingWindowInSeconds" in err and "parallelization_factor = 1" in err, err
        code, created, err = await aws(
            tmp_path, url, "create-event-source-mapping", "--function-name", "f",
            "--event-source-arn", arn, "--starting-position", "TRIM_HORIZON",
            "--tumbling-window-in-seconds", "60", "--batch-size", "2",
            "--metrics-config", "Metrics=EventCount",
        )  # fmt: skip
        assert code == 0, err
        assert created["TumblingWindowInSeconds"] == 60
        assert created["MetricsConfig"] == {"Metrics": ["EventCount"]}
        uuid = created["UUID"]
        code, got, err = await aws(tmp_path, url, "get-event-source-mapping", "--uuid", uuid)
        assert code == 0 and got["TumblingWindowInSeconds"] == 60, err
        code, listed, err = await aws(tmp_path, url, "list-event-source-mappings")
        assert code == 0, err
        assert [m["TumblingWindowInSeconds"] for m in listed["EventSourceMappings"]] == [60]

        await put_records(client, stream_name, [(f"k{i}", b"{}") for i in range(3)])
        await wait_for(
            lambda: sum(len(e["Records"]) for e in recorder.events) >= 3, 20, message="records"
        )
        code, updated, err = await aws(
            tmp_path, url, "update-event-source-mapping", "--uuid", uuid,
            "--tumbling-window-in-seconds", "120",
        )  # fmt: skip
        assert code == 0 and updated["TumblingWindowInSeconds"] == 120, err
    first, second = recorder.events[:2]
    assert first["state"] == {} and [r["kinesis"]["partitionKey"] for r in first["Records"]] == [
        "k0",
        "k1",
    ]
    assert second["state"] == {"keys": ["k0", "k1"]}  # carried within the window
    assert second["window"] == first["window"] and second["shardId"] == first["shardId"]
    assert first["eventSourceARN"] == arn and first["isFinalInvokeForWindow"] is False
