"""Helpers for control-plane tests: the daemon in process, real Lambda clients pointed at it.

boto3 is synchronous, so its calls run in a worker thread (``call``): the daemon shares the
test's event loop and must keep serving while the client waits.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import boto3
from botocore.config import Config
from prometheus_client.parser import text_string_to_metric_families

from kinesis_esm import (
    DaemonConfig,
    Engine,
    EventSourceMappingConfig,
    FunctionConfig,
    KinesisConfig,
    MemoryStream,
    PollSettings,
)
from kinesis_esm.cli._daemon import run_daemon
from kinesis_esm.config import ControlConfig, CoordinationConfig, StateConfig
from kinesis_esm.control import ControlServer
from kinesis_esm.runtime import Runtime

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
REPO = Path(__file__).resolve().parents[2]


class Recorder:
    """A handler remembering each invocation as (function name, [(sequence, data)])."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[tuple[str, str]]]] = []

    async def __call__(self, event: dict[str, Any], context: Any) -> None:
        records = [(r["kinesis"]["sequenceNumber"], r["kinesis"]["data"]) for r in event["Records"]]
        self.batches.append((context.function_name, records))

    def sequences(self) -> list[str]:
        return [seq for _, batch in self.batches for seq, _ in batch]


@dataclass
class Daemon:
    url: str
    config: DaemonConfig
    recorder: Recorder = field(default_factory=Recorder)


@asynccontextmanager
async def running_daemon(
    state_dir: Path,
    kinesis_endpoint: str | None,
    *,
    functions: Sequence[str] = ("f",),
    control: ControlConfig | None = None,
    mappings: Sequence[EventSourceMappingConfig] = (),
    coordination: CoordinationConfig | None = None,
) -> AsyncIterator[Daemon]:
    """``kinesis-esm run`` in this process, on a free port of 127.0.0.1, stopped cleanly after;
    ``coordination`` makes it a worker of a fleet."""
    config = DaemonConfig(
        kinesis=KinesisConfig(endpoint_url=kinesis_endpoint, region=REGION),
        state=StateConfig(str(state_dir / "state.db")),
        functions=tuple(
            FunctionConfig(name, "tests.support.control:Recorder") for name in functions
        ),
        event_source_mappings=tuple(mappings),
        control=control or ControlConfig(port=0),
        coordination=coordination or CoordinationConfig(),
    )
    recorder = Recorder()
    shutdown = anyio.Event()
    async with anyio.create_task_group() as tg:
        start = functools.partial(
            run_daemon,
            config,
            handlers={name: recorder for name in functions},
            shutdown=shutdown,
            handle_signals=False,
            log_interval=0,
        )
        url = await tg.start(start)
        try:
            yield Daemon(url, config, recorder)
        finally:
            shutdown.set()


STREAM_ARN = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/orders"


@dataclass
class MemoryDaemon:
    """The control plane over a Runtime and an Engine reading an in-memory stream."""

    url: str
    runtime: Runtime
    stream: MemoryStream
    recorder: Recorder


def memory_config(
    *,
    functions: Sequence[str] = ("f",),
    control: ControlConfig | None = None,
    mappings: Sequence[EventSourceMappingConfig] = (),
) -> DaemonConfig:
    return DaemonConfig(
        functions=tuple(
            FunctionConfig(name, "tests.support.control:Recorder") for name in functions
        ),
        event_source_mappings=tuple(mappings),
        control=control or ControlConfig(port=0),
    )


@asynccontextmanager
async def memory_daemon(config: DaemonConfig) -> AsyncIterator[MemoryDaemon]:
    """``config``'s control plane on a free port of 127.0.0.1, its mappings on an in-memory
    stream (``STREAM_ARN``; any other stream answers Lambda's "Stream not found")."""
    stream = MemoryStream(STREAM_ARN)
    recorder = Recorder()

    async def stream_check(mapping: EventSourceMappingConfig) -> bool:
        return mapping.stream_arn == STREAM_ARN

    settings = PollSettings(base_interval=0.02, min_interval=0.01)
    async with Engine(source=stream, poll_settings=settings) as engine:
        runtime = Runtime(
            engine,
            config,
            handlers={fn.name: recorder for fn in config.functions},
            stream_check=stream_check,
            settle_interval=0.02,
        )
        async with ControlServer(runtime, config.control) as server, runtime:
            await runtime.reconcile()
            yield MemoryDaemon(server.url, runtime, stream, recorder)


def lambda_client(url: str, key: str = "testing", secret: str = "testing") -> Any:
    """boto3's own lambda client for the daemon; no retries, so errors show at once."""
    return boto3.client(
        "lambda",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}, read_timeout=30),
    )


async def call(method: Callable[..., Any], **params: Any) -> Any:
    """Run a boto3 call in a worker thread and return its response."""
    return await anyio.to_thread.run_sync(functools.partial(method, **params))


def aws_cli_env(tmp_path: Path, key: str = "testing", secret: str = "testing") -> dict[str, str]:
    """The environment for the AWS CLI: dummy credentials, no user config, no retries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=key,
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_MAX_ATTEMPTS="1",
        AWS_RETRY_MODE="standard",
        AWS_PAGER="",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def aws_cli() -> str:
    return str(REPO / ".venv" / "bin" / "aws")


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _parse_answer(data: bytes) -> RawAnswer | None:
    """The answer in ``data`` once it is complete (by Content-Length), else None."""
    head, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return None
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if len(body) < length:
        return None
    return RawAnswer(int(status_line.split()[1]), headers, body[:length])


async def raw_http(url: str, request: bytes, timeout: float = 10) -> RawAnswer:  # noqa: ASYNC109
    """Send ``request`` as is (any bytes: methods and headers no client would send) to the
    daemon at ``url`` and read one answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    data = b""
    with anyio.fail_after(timeout):
        async with await anyio.connect_tcp(host.strip("[]"), int(port)) as stream:
            await stream.send(request)
            while (answer := _parse_answer(data)) is None:
                try:
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    if answer is None:
        raise AssertionError(f"no complete HTTP answer: {data[:500]!r}")
    return answer


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(text: str) -> Samples:
    """Prometheus text as {(sample name, sorted labels): value}."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples
