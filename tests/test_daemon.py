"""The daemon as a user runs it: ``kinesis-esm run --config FILE.toml`` in a subprocess, against
moto, with a handler module in the working directory. SIGTERM is a clean stop (exit 0, final
checkpoints written); kill -9 loses nothing (only in-flight batches come again); bad configs
exit 2 naming the parameter."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kinesis_esm import stable_uuid
from kinesis_esm.cli._main import main as cli_main
from kinesis_esm.engine._engine import SUPPORTED_FEATURES
from tests.support.kinesis import (
    KinesisClient,
    StreamRecord,
    create_stream,
    put_records,
    wait_for,
)
from tests.support.records_log import BLOCK_ENV, LOG_ENV, LogEntry, read_log

REPO_ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("kinesis-esm")
FUNCTION = "logger"
HANDLER_MODULE = "esm_test_handlers"  # written into the daemon's working directory


def ids(records: list[StreamRecord]) -> list[str]:
    return [f"{r.shard_id}:{r.sequence_number}" for r in records]


def config_text(endpoint: str, state: Path, arn: str, **mapping: object) -> str:
    extra = "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in mapping.items())
    return f"""\
[kinesis]
endpoint_url = "{endpoint}"
region = "us-east-1"

[state]
path = "{state}"

[control]
port = 0  # a free port: never collide with another daemon on the machine

[functions.{FUNCTION}]
handler = "{HANDLER_MODULE}:handler"
timeout = 10

[[event_source_mappings]]
function_name = "{FUNCTION}"
event_source_arn = "{arn}"
starting_position = "TRIM_HORIZON"
batch_size = 5
{extra}"""


@dataclass
class DaemonRuns:
    """Runs of `kinesis-esm run` in one working directory, with one log and one flag file."""

    workdir: Path
    config: Path
    runs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.workdir / "records.log"

    @property
    def block_flag(self) -> Path:
        return self.workdir / "block"

    @property
    def state(self) -> Path:
        return self.workdir / "state.db"

    def output_path(self, run: int) -> Path:
        return self.workdir / f"daemon-{run}.out"

    def start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(
            {
                LOG_ENV: str(self.log_path),
                BLOCK_ENV: str(self.block_flag),
                "PYTHONPATH": str(REPO_ROOT),  # the handler module imports tests.support
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )
        with self.output_path(len(self.runs)).open("wb") as out:
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

    def output(self, run: int = -1) -> str:
        index = run if run >= 0 else len(self.runs) + run
        return self.output_path(index).read_text(errors="replace")

    def log(self) -> list[LogEntry]:
        return read_log(self.log_path)

    def checkpoints(self, arn: str) -> dict[str, str]:
        with contextlib.closing(sqlite3.connect(self.state)) as db:
            rows = db.execute(
                "SELECT shard_id, checkpoint FROM checkpoints WHERE mapping_uuid = ?",
                (stable_uuid(FUNCTION, arn),),
            ).fetchall()
        return dict(rows)

    def kill_all(self) -> None:
        for process in self.runs:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonRuns]:
    (tmp_path / f"{HANDLER_MODULE}.py").write_text(
        "from tests.support.records_log import handler\n"
    )
    runs = DaemonRuns(tmp_path, tmp_path / "kinesis-esm.toml")
    yield runs
    runs.kill_all()
    runs.block_flag.unlink(missing_ok=True)


def started(log: list[LogEntry], pid: int) -> set[str]:
    return {i for e in log if e.pid == pid and e.phase == "start" for i in e.ids}


def done(log: list[LogEntry], pid: int | None = None) -> set[str]:
    return {i for e in log if e.phase == "done" and pid in (None, e.pid) for i in e.ids}


def last_per_shard(event_ids: set[str] | list[str]) -> dict[str, str]:
    last: dict[str, str] = {}
    for event_id in event_ids:
        shard, sequence = event_id.split(":")
        if shard not in last or int(sequence) > int(last[shard]):
            last[shard] = sequence
    return last


async def exit_code(process: subprocess.Popen[bytes], timeout: float) -> int:  # noqa: ASYNC109
    await wait_for(lambda: process.poll() is not None, timeout, message="the daemon to exit")
    return process.returncode


@pytest.mark.anyio
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
async def test_sigterm_finishes_in_flight_batches_writes_checkpoints_and_exits_0(
    moto: str,
    client: KinesisClient,
    stream_name: str,
    daemon: DaemonRuns,
    stop_signal: signal.Signals,
) -> None:
    arn = await create_stream(client, stream_name, 2)
    daemon.config.write_text(config_text(moto, daemon.state, arn))
    first = await put_records(client, stream_name, [(f"a-{i}", b"a") for i in range(20)])
    shards = {r.shard_id for r in first}
    daemon.block_flag.touch()  # hold the first batch of each shard in flight
    run = daemon.start()

    def in_flight() -> bool:
        held = started(daemon.log(), run.pid) - done(daemon.log())
        return {i.split(":")[0] for i in held} == shards

    await wait_for(in_flight, 20, message="a batch in flight on every shard")
    # Mid-stream: more records arrive while batches are in flight and others are buffered.
    second = await put_records(client, stream_name, [(f"b-{i}", b"b") for i in range(10)])

    run.send_signal(stop_signal)
    await wait_for(
        lambda: f"{stop_signal.name}: stopping" in daemon.output(), 10, message="the signal taken"
    )
    assert run.poll() is None, "exited without waiting for its in-flight invocations"
    daemon.block_flag.unlink()  # the in-flight invocations can finish now
    assert await exit_code(run, 20) == 0, daemon.output()

    log = daemon.log()
    assert started(log, run.pid) == done(log, run.pid)  # every batch begun was finished
    delivered = done(log, run.pid)
    assert daemon.checkpoints(arn) == last_per_shard(delivered)  # the final checkpoints

    # Started again, it resumes after those checkpoints: the rest, once each.
    rerun = daemon.start()
    everything = set(ids(first + second))
    await wait_for(lambda: everything <= done(daemon.log()), 20, message="the rest")
    rerun.send_signal(stop_signal)
    assert await exit_code(rerun, 20) == 0, daemon.output()
    log = daemon.log()
    again = [i for e in log if e.pid == rerun.pid and e.phase == "start" for i in e.ids]
    assert sorted(again) == sorted(everything - delivered)  # nothing twice, nothing skipped
    assert daemon.checkpoints(arn) == last_per_shard(everything)


@pytest.mark.anyio
async def test_kill_9_mid_batch_then_restart_delivers_everything_and_repeats_only_in_flight(
    moto: str, client: KinesisClient, stream_name: str, daemon: DaemonRuns
) -> None:
    arn = await create_stream(client, stream_name, 2)
    daemon.config.write_text(config_text(moto, daemon.state, arn))
    run = daemon.start()

    # Phase 1: delivered and checkpointed before the crash.
    phase1 = await put_records(client, stream_name, [(f"p1-{i}", b"1") for i in range(10)])
    await wait_for(
        lambda: daemon.checkpoints(arn) == last_per_shard(ids(phase1)),
        20,
        message="phase 1 delivered and checkpointed",
        ignore=(sqlite3.OperationalError,),  # the daemon may not have created its tables yet
    )
    # Phase 2: held in flight when the daemon is killed.
    daemon.block_flag.touch()
    phase2 = await put_records(client, stream_name, [(f"p2-{i}", b"2") for i in range(10)])
    shards = {r.shard_id for r in phase2}

    def held() -> set[str]:
        return started(daemon.log(), run.pid) - done(daemon.log())

    await wait_for(
        lambda: {i.split(":")[0] for i in held()} == shards, 20, message="batches in flight"
    )
    # Phase 3: read, perhaps buffered, never invoked before the crash.
    phase3 = await put_records(client, stream_name, [(f"p3-{i}", b"3") for i in range(10)])
    in_flight = held()

    run.kill()
    assert await exit_code(run, 10) == -signal.SIGKILL
    daemon.block_flag.unlink()
    rerun = daemon.start()
    everything = set(ids(phase1 + phase2 + phase3))
    await wait_for(lambda: everything <= done(daemon.log()), 20, message="every record")
    rerun.send_signal(signal.SIGTERM)
    assert await exit_code(rerun, 20) == 0, daemon.output()

    log = daemon.log()
    first_run = started(log, run.pid)
    second_run = [i for e in log if e.pid == rerun.pid and e.phase == "start" for i in e.ids]
    assert len(second_run) == len(set(second_run))  # nothing twice within the second run
    assert set(ids(phase1)) <= done(log, run.pid)
    assert set(second_run) & first_run == in_flight  # only the in-flight records came again
    assert set(second_run) == everything - done(log, run.pid)
    assert daemon.checkpoints(arn) == last_per_shard(everything)


# Config validation


VALID = config_text(
    "http://127.0.0.1:9", Path("state.db"), "arn:aws:kinesis:us-east-1:123456789012:stream/s"
)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("batch_size = 5", "batch_size = 0"), ["batch_size", "1..10000"]),
        (("batch_size = 5", "batch_size = 10001"), ["batch_size", "1..10000"]),
        (("batch_size = 5", "batch_size = 5.5"), ["batch_size", "must be an integer"]),
        (
            ("batch_size = 5", "maximum_batching_window_in_seconds = 301"),
            ["maximum_batching_window_in_seconds", "0..300"],
        ),
        (("batch_size = 5", "parallelization_factor = 0"), ["parallelization_factor", "1..10"]),
        (
            ("batch_size = 5", "maximum_retry_attempts = -2"),
            ["maximum_retry_attempts", "-1..10000"],
        ),
        (
            ("batch_size = 5", "maximum_record_age_in_seconds = 59"),
            ["maximum_record_age_in_seconds", "-1 (forever) or between 60 and 604800"],
        ),
        (
            ("batch_size = 5", "tumbling_window_in_seconds = 901"),
            ["tumbling_window_in_seconds", "0..900"],
        ),
        (("timeout = 10", "timeout = 0"), ["functions.logger.timeout", "between 1.0 and 900.0"]),
        (("timeout = 10", "timeout = 901"), ["functions.logger.timeout", "between 1.0 and 900.0"]),
        (
            ('starting_position = "TRIM_HORIZON"', 'starting_position = "EARLIEST"'),
            ["starting_position", "LATEST, AT_TIMESTAMP, TRIM_HORIZON"],
        ),
        (
            ("batch_size = 5", "batch_sise = 5"),
            ["unknown key 'batch_sise'", "event_source_mappings[0]", "batch_size"],
        ),
        (("timeout = 10", "timeout = 10\nmemory = 256"), ["unknown key 'memory'", "functions"]),
        (("[state]", "[states]"), ["unknown key 'states'"]),
    ],
    ids=[
        "batch-size-low",
        "batch-size-high",
        "batch-size-float",
        "window",
        "parallelization",
        "retries",
        "record-age",
        "tumbling-window",
        "timeout-low",
        "timeout-high",
        "starting-position",
        "unknown-mapping-key",
        "unknown-function-key",
        "unknown-table",
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_config_errors_exit_2_naming_the_parameter_and_the_allowed_values(
    command: str,
    change: tuple[str, str],
    expected: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old, new = change
    assert old in VALID
    path = tmp_path / "bad.toml"
    path.write_text(VALID.replace(old, new, 1))
    assert cli_main([command, "--config", str(path)]) == 2
    captured = capsys.readouterr()
    message = captured.err
    assert message.startswith(f"kinesis-esm: {path}: "), message
    for text in expected:
        assert text in message, message
    assert captured.out == ""


def test_valid_config_validates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / f"{HANDLER_MODULE}.py").write_text("def handler(event, context):\n    pass\n")
    monkeypatch.chdir(tmp_path)  # validate imports the handler, as run does
    monkeypatch.setattr(sys, "path", list(sys.path))
    path = tmp_path / "good.toml"
    path.write_text(VALID)
    assert cli_main(["validate", "--config", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: OK (1 mapping, 1 function)\n"


def test_validate_names_the_file_and_key_of_a_handler_that_does_not_import(
    tmp_path: Path,
) -> None:
    path = tmp_path / "kinesis-esm.toml"
    path.write_text(VALID.replace(HANDLER_MODULE, "no_such_handler_module"))
    result = run_cli("validate", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stderr.startswith(
        f"kinesis-esm: {path}: functions.{FUNCTION}.handler: cannot import module "
        "'no_such_handler_module'"
    ), result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    return subprocess.run(
        [str(CLI), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("command", ["validate", "run"])
def test_the_installed_command_exits_2_on_a_config_error(command: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(VALID.replace("batch_size = 5", "batch_size = 0"))
    result = run_cli(command, "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2, result
    assert "batch_size" in result.stderr and "1..10000" in result.stderr, result.stderr


def test_run_with_an_unloadable_handler_exits_2_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "kinesis-esm.toml"
    path.write_text(VALID.replace(HANDLER_MODULE, "no_such_handler_module"))
    result = run_cli("run", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2, result
    assert "cannot import module 'no_such_handler_module'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


NOT_YET = [
    f
    for f in (
        "tumbling_window_in_seconds = 60",
        """filter_criteria = { filters = [{ pattern = '{"data": {"kind": ["order"]}}' }] }""",
    )
    if f.split(" ")[0] not in SUPPORTED_FEATURES
]


@pytest.mark.skipif(not NOT_YET, reason="every Lambda parameter is supported now")
@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_setting_not_supported_yet_exits_2_naming_it(command: str, tmp_path: Path) -> None:
    setting = NOT_YET[0]
    (tmp_path / f"{HANDLER_MODULE}.py").write_text("def handler(event, context):\n    pass\n")
    path = tmp_path / "kinesis-esm.toml"
    path.write_text(VALID.replace("batch_size = 5", f"batch_size = 5\n{setting}"))
    result = run_cli(command, "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2, result
    assert setting.split(" ")[0] in result.stderr, result.stderr
    assert "not supported yet" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.anyio
async def test_sigterm_with_a_stuck_handler_stops_within_the_function_timeout(
    moto: str, client: KinesisClient, stream_name: str, daemon: DaemonRuns
) -> None:
    """A handler that never returns cannot hold the stop beyond its timeout: the daemon exits
    0 soon after, without checkpointing the stuck batch, and a restart delivers it again."""
    timeout = 2
    arn = await create_stream(client, stream_name, 1)
    daemon.config.write_text(
        config_text(moto, daemon.state, arn).replace("timeout = 10", f"timeout = {timeout}")
    )
    written = await put_records(client, stream_name, [(f"k-{i}", b"x") for i in range(3)])
    daemon.block_flag.touch()  # and never removed while this run lives
    run = daemon.start()
    await wait_for(lambda: started(daemon.log(), run.pid), 20, message="the stuck batch")

    run.send_signal(signal.SIGTERM)
    began = time.monotonic()
    code = await exit_code(run, timeout + 6)
    stopped_after = time.monotonic() - began
    assert code == 0, daemon.output()
    assert stopped_after < timeout + 5, f"stopped {stopped_after:.1f}s after SIGTERM"
    assert done(daemon.log(), run.pid) == set()
    with contextlib.suppress(sqlite3.OperationalError):
        assert daemon.checkpoints(arn) == {}

    daemon.block_flag.unlink()
    rerun = daemon.start()
    await wait_for(lambda: set(ids(written)) <= done(daemon.log()), 20, message="redelivery")
    rerun.send_signal(signal.SIGTERM)
    assert await exit_code(rerun, 20) == 0, daemon.output()
