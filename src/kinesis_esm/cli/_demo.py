"""``kinesis-esm demo``: the whole thing on an embedded default.

An in-process moto server on 127.0.0.1 plays Kinesis; a producer writes orders continuously; a
mapping with the example handler consumes them with SQLite checkpoints; progress prints every
second; after ``seconds`` (or Ctrl-C) production stops, the consumer drains, and the demo checks
that every record produced was delivered.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from aiobotocore.session import get_session

from ..config import EventSourceMappingConfig, KinesisConfig
from ..engine import Engine
from ..examples import handler as example_handler
from ..functions import CallableFunction
from ..state import SQLiteCheckpointStore
from ._daemon import format_progress

__all__ = ["run_demo"]

STREAM = "demo-orders"
ACCOUNT = "123456789012"  # moto's account id
REGION = "us-east-1"


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Delivered:
    """Wraps the example handler to count what it sees (thread-safe: handlers run in threads)."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.invocations = 0
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        with self._lock:
            self.invocations += 1
            self.ids.update(r["eventID"] for r in event["Records"])
        return example_handler(event, context)


async def _produce(client: Any, rate: int, produced: list[str], stop: anyio.Event) -> None:
    per_tick = max(1, rate // 10)
    n = 0
    while not stop.is_set():
        tick = time.monotonic()
        entries = []
        for _ in range(per_tick):
            n += 1
            body = {"order_id": n, "amount": round(random.uniform(1, 500), 2)}
            entries.append(
                {"Data": json.dumps(body).encode(), "PartitionKey": f"customer-{n % 97}"}
            )
        with anyio.fail_after(10):
            result = await client.put_records(StreamName=STREAM, Records=entries)
        for entry in result["Records"]:
            if "SequenceNumber" in entry:
                produced.append(f"{entry['ShardId']}:{entry['SequenceNumber']}")
        with anyio.move_on_after(max(0.0, 0.1 - (time.monotonic() - tick))):
            await stop.wait()


async def run_demo(
    *,
    seconds: float = 20.0,
    shards: int = 4,
    rate: int = 200,
    print_line: Callable[[str], None] = print,
) -> int:
    print_line("starting an in-process Kinesis emulator (moto) on 127.0.0.1...")
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        print_line("kinesis-esm demo needs moto's server: pip install 'kinesis-esm[demo]'")
        return 2
    # The embedded emulator takes any credentials; never reach for real ones.
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION
    )
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    state_dir = Path(tempfile.mkdtemp(prefix="kinesis-esm-demo-"))
    print_line(f"Kinesis emulator (moto) on {endpoint}; checkpoints in {state_dir}/demo.db")
    delivered = _Delivered()
    produced: list[str] = []
    try:
        session = get_session()
        async with session.create_client(
            "kinesis", region_name=REGION, endpoint_url=endpoint
        ) as client:
            print_line(f"creating stream {STREAM} with {_plural(shards, 'shard')}...")
            await client.create_stream(StreamName=STREAM, ShardCount=shards)
            with anyio.fail_after(30):
                while (await client.describe_stream_summary(StreamName=STREAM))[  # noqa: ASYNC110  # polling the emulator
                    "StreamDescriptionSummary"
                ]["StreamStatus"] != "ACTIVE":
                    await anyio.sleep(0.1)
            arn = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{STREAM}"
            print_line(
                f"stream {STREAM}: {_plural(shards, 'shard')}; producing ~{rate} records/s for "
                f"{seconds:g}s; Ctrl-C stops early"
            )
            config = EventSourceMappingConfig(
                function_name="example",
                event_source_arn=arn,
                starting_position="TRIM_HORIZON",
                batch_size=100,
                maximum_batching_window_in_seconds=1,
            )
            function = CallableFunction(delivered, name="example", timeout=30)
            store = SQLiteCheckpointStore(state_dir / "demo.db")
            stop_producing = anyio.Event()
            async with Engine(
                kinesis=KinesisConfig(endpoint_url=endpoint, region=REGION), checkpoint_store=store
            ) as engine:
                await engine.add_mapping(config, function)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_produce, client, rate, produced, stop_producing)
                    interrupted = await _show_progress(engine, seconds, print_line)
                    stop_producing.set()
                print_line("producer stopped; draining what was produced...")
                await _drain(produced, delivered, 10.0 if interrupted else 30.0)
                print_line(format_progress(engine.statistics(), {}, 0))
            await store.aclose()
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
    missing = set(produced) - delivered.ids
    print_line(
        f"produced {_plural(len(produced), 'record')}; delivered {len(delivered.ids):,} distinct "
        f"in {_plural(delivered.invocations, 'invocation')}; missing {len(missing):,}"
    )
    return 0 if not missing or len(produced) == 0 else 1


async def _drain(produced: list[str], delivered: _Delivered, limit: float) -> None:
    """Wait (bounded) until every produced record was delivered; another Ctrl-C cuts it short."""
    with (
        anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        anyio.move_on_after(limit),
    ):
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                async for _ in signals:
                    tg.cancel_scope.cancel()

            tg.start_soon(watch)
            while not set(produced) <= delivered.ids:  # noqa: ASYNC110  # polling a thread's set
                await anyio.sleep(0.2)
            tg.cancel_scope.cancel()


async def _show_progress(engine: Engine, seconds: float, print_line: Callable[[str], None]) -> bool:
    """Print a progress line a second until ``seconds`` pass; True if interrupted (Ctrl-C)."""
    previous: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    last = time.monotonic()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            interrupted = False

            async def watch() -> None:
                nonlocal interrupted
                async for _ in signals:
                    interrupted = True
                    tg.cancel_scope.cancel()
                    return

            tg.start_soon(watch)
            while time.monotonic() < deadline:
                await anyio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                now = time.monotonic()
                print_line(format_progress(engine.statistics(), previous, now - last))
                last = now
            tg.cancel_scope.cancel()
    if interrupted:
        print_line("interrupted: stopping cleanly")
    return interrupted
