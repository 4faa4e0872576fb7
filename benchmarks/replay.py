"""A replay Kinesis server: answers from response bodies held in memory, on 127.0.0.1 only.

It speaks the Kinesis JSON protocol (``X-Amz-Target: Kinesis_20131202.<Action>``) for
ListShards, DescribeStream, DescribeStreamSummary, GetShardIterator and GetRecords. Records are
generated once per stream, deterministically, and kept as pre-encoded JSON fragments, so a
GetRecords answer is a byte join: the server costs next to nothing and a benchmark measures the
consumer alone, not an emulator. It runs in its own process (``ReplayServer``), pinned to a core
the consumer does not use when the machine has one to spare.

A stream's shape is in its name: ``replay-s<shards>-b<record bytes>-n<records per shard>``. A
GetRecords answer holds at most ``Limit`` records and at most 10 MiB of data, as on AWS, and
``MillisBehindLatest`` is non-zero while records remain. ``n0`` streams are idle: every
GetRecords answers no records.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import os
import random
import re
import subprocess
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

__all__ = ["ReplayServer", "StreamSpec"]

HOST = "127.0.0.1"
REGION = "us-east-1"
ACCOUNT = "123456789012"
MAX_RESPONSE_DATA = 10 * 1024 * 1024  # GetRecords returns at most 10 MiB of data
MAX_LIMIT = 10_000
_NAME = re.compile(r"replay-s(\d+)-b(\d+)-n(\d+)")
_JSON = "application/x-amz-json-1.1"
_ARRIVAL_BASE = 1_700_000_000.0
_KEPT_STREAMS = 2  # bounds the server's memory: benchmarks use one stream at a time
_KEPT_PAGES = 128  # per shard: two passes over a 500,000-record shard read 10,000 at a time


@dataclass(frozen=True, slots=True)
class StreamSpec:
    shards: int
    record_bytes: int
    records_per_shard: int

    @property
    def name(self) -> str:
        return f"replay-s{self.shards}-b{self.record_bytes}-n{self.records_per_shard}"

    @property
    def arn(self) -> str:
        return f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{self.name}"

    @property
    def total(self) -> int:
        return self.shards * self.records_per_shard

    @classmethod
    def parse(cls, name: str) -> StreamSpec | None:
        m = _NAME.fullmatch(name.rsplit("/", 1)[-1])
        return cls(int(m[1]), int(m[2]), int(m[3])) if m else None


def shard_id(number: int) -> str:
    return f"shardId-{number:012d}"


def sequence_number(shard: int, index: int) -> str:
    return f"49{shard:06d}{index:048d}"  # 56 digits, increasing within a shard, as on AWS


def sequence_index(sequence: str) -> int:
    return int(sequence[8:])


class _Shard:
    """One shard's records as JSON fragments, with the raw data size before each."""

    __slots__ = ("fragments", "offsets", "pages")

    def __init__(self, spec: StreamSpec, number: int) -> None:
        rng = random.Random(f"{spec.name}/{number}")
        self.fragments: list[bytes] = []
        self.offsets = [0]
        self.pages: dict[tuple[int, int], bytes] = {}  # (start, end) -> the records' JSON array
        for i in range(spec.records_per_shard):
            data = rng.randbytes(spec.record_bytes)
            fragment = orjson.dumps(
                {
                    "SequenceNumber": sequence_number(number, i),
                    "ApproximateArrivalTimestamp": round(_ARRIVAL_BASE + i / 1000, 3),
                    "Data": base64.b64encode(data).decode("ascii"),
                    "PartitionKey": f"key-{number}-{rng.randrange(1 << 30):010d}",
                }
            )
            # a copy: orjson's bytes keep their whole output buffer (about 4 KiB each)
            self.fragments.append(bytes(memoryview(fragment)))
            self.offsets.append(self.offsets[-1] + len(data))
        for start in range(0, spec.records_per_shard, MAX_LIMIT):  # the first reader's pages
            self.page(start, self.page_end(start, MAX_LIMIT))

    def page(self, start: int, end: int) -> bytes:
        """The records of a page as a JSON array, joined once and kept."""
        page = self.pages.get((start, end))
        if page is None:
            page = b"[" + b",".join(self.fragments[start:end]) + b"]"
            if len(self.pages) >= _KEPT_PAGES:  # bounded: drop the oldest (dicts keep order)
                del self.pages[next(iter(self.pages))]
            self.pages[(start, end)] = page
        return page

    def page_end(self, start: int, limit: int) -> int:
        """End of the page from ``start``: at most ``limit`` records and 10 MiB of data, and
        no further than the next multiple of ``limit``, so that a reader resuming mid-page (a
        new lease owner, from a checkpoint) is back on the pages kept after one short answer
        (Kinesis may return fewer records than Limit) instead of costing a join per answer."""
        by_size = bisect.bisect_right(self.offsets, self.offsets[start] + MAX_RESPONSE_DATA) - 1
        boundary = (start // limit + 1) * limit
        return max(start + 1, min(by_size, start + limit, boundary, len(self.fragments)))


def encode_iterator(stream: str, shard: int, offset: int) -> str:
    # padded to the length of a real iterator, so requests cost what they cost on AWS
    raw = f"{stream}|{shard}|{offset}|".encode()
    return base64.b64encode(raw.ljust(200, b"=")).decode("ascii")


def decode_iterator(iterator: str) -> tuple[str, int, int]:
    stream, shard, offset, _ = base64.b64decode(iterator).decode().split("|", 3)
    return stream, int(shard), int(offset)


class _Error(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class ReplayApp:
    """The request handler and its streams (built on first use, the last two kept)."""

    def __init__(self) -> None:
        self.streams: OrderedDict[str, list[_Shard]] = OrderedDict()
        self.requests = 0

    def stream(self, params: dict[str, Any]) -> tuple[StreamSpec, list[_Shard]]:
        name = str(params.get("StreamName") or params.get("StreamARN") or "")
        spec = StreamSpec.parse(name)
        if spec is None:
            raise _Error("ResourceNotFoundException", f"Stream {name} not found")
        shards = self.streams.get(spec.name)
        if shards is None:
            while len(self.streams) >= _KEPT_STREAMS:
                self.streams.popitem(last=False)
            shards = [_Shard(spec, i) for i in range(spec.shards)]
            self.streams[spec.name] = shards
        self.streams.move_to_end(spec.name)
        return spec, shards

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        action = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        try:
            params = orjson.loads(await request.read() or b"{}")
            parts = self.dispatch(action, params)
        except _Error as exc:
            error = {"__type": exc.code, "message": exc.message}
            return web.Response(
                status=exc.status, body=orjson.dumps(error), headers={"Content-Type": _JSON}
            )
        if len(parts) == 1:
            return web.Response(body=parts[0], headers={"Content-Type": _JSON})
        # a page is written as it is kept, without joining it into one more copy
        response = web.StreamResponse(headers={"Content-Type": _JSON})
        response.content_length = sum(map(len, parts))
        try:
            await response.prepare(request)
            for part in parts:
                await response.write(part)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away mid-answer (a consumer stopped): nothing to do
        return response

    def dispatch(self, action: str, params: dict[str, Any]) -> list[bytes]:
        if action == "GetRecords":
            return self.get_records(params)
        if action == "GetShardIterator":
            return [self.get_shard_iterator(params)]
        if action in ("ListShards", "DescribeStream", "DescribeStreamSummary"):
            spec, _ = self.stream(params)
            return [self.describe(action, spec)]
        if action == "ListStreams":
            return [orjson.dumps({"StreamNames": list(self.streams), "HasMoreStreams": False})]
        raise _Error("UnknownOperationException", f"{action} is not supported by the replay")

    def describe(self, action: str, spec: StreamSpec) -> bytes:
        step = (1 << 128) // spec.shards
        shards = [
            {
                "ShardId": shard_id(i),
                "HashKeyRange": {
                    "StartingHashKey": str(i * step),
                    "EndingHashKey": str(
                        (1 << 128) - 1 if i == spec.shards - 1 else (i + 1) * step - 1
                    ),
                },
                "SequenceNumberRange": {"StartingSequenceNumber": sequence_number(i, 0)},
            }
            for i in range(spec.shards)
        ]
        if action == "ListShards":
            return orjson.dumps({"Shards": shards})
        summary: dict[str, Any] = {
            "StreamName": spec.name,
            "StreamARN": spec.arn,
            "StreamStatus": "ACTIVE",
            "StreamModeDetails": {"StreamMode": "PROVISIONED"},
            "RetentionPeriodHours": 24,
            "StreamCreationTimestamp": _ARRIVAL_BASE,
            "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
            "EncryptionType": "NONE",
        }
        if action == "DescribeStream":
            desc = dict(summary, Shards=shards, HasMoreShards=False)
            return orjson.dumps({"StreamDescription": desc})
        summary.update(OpenShardCount=spec.shards, ConsumerCount=0)
        return orjson.dumps({"StreamDescriptionSummary": summary})

    def get_shard_iterator(self, params: dict[str, Any]) -> bytes:
        spec, shards = self.stream(params)
        sid = str(params.get("ShardId", ""))
        if not sid.startswith("shardId-") or not 0 <= int(sid[8:]) < spec.shards:
            raise _Error("ResourceNotFoundException", f"Shard {sid} not found")
        number = int(sid[8:])
        count = len(shards[number].fragments)
        kind = params.get("ShardIteratorType")
        if kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
            offset = sequence_index(str(params["StartingSequenceNumber"]))
            offset += kind == "AFTER_SEQUENCE_NUMBER"
        elif kind == "LATEST":
            offset = count
        elif kind == "AT_TIMESTAMP":
            offset = max(0, int((float(params["Timestamp"]) - _ARRIVAL_BASE) * 1000))
        else:
            offset = 0
        iterator = encode_iterator(spec.name, number, min(offset, count))
        return orjson.dumps({"ShardIterator": iterator})

    def get_records(self, params: dict[str, Any]) -> list[bytes]:
        try:
            name, number, offset = decode_iterator(str(params["ShardIterator"]))
        except (KeyError, ValueError) as exc:
            raise _Error("InvalidArgumentException", "Invalid ShardIterator") from exc
        _, shards = self.stream({"StreamName": name})
        shard = shards[number]
        limit = min(MAX_LIMIT, int(params.get("Limit") or MAX_LIMIT))
        end = shard.page_end(offset, limit) if offset < len(shard.fragments) else offset
        behind = 1000 if end < len(shard.fragments) else 0
        iterator = encode_iterator(name, number, end)
        tail = f',"NextShardIterator":"{iterator}","MillisBehindLatest":{behind}}}'
        return [b'{"Records":', shard.page(offset, end), tail.encode()]


async def serve(port: int = 0, ready: asyncio.Future[int] | None = None) -> None:
    """Serve until cancelled; prints ``PORT <n>`` once listening on 127.0.0.1."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    replay = ReplayApp()
    app.router.add_post("/", replay.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1]
    if ready is not None:
        ready.set_result(bound)
    else:
        print(f"PORT {bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


class ReplayServer:
    """The replay server in a child process; ``with ReplayServer() as server: server.url``."""

    def __init__(self, *, cpu: int | None = None, startup_timeout: float = 30.0) -> None:
        self.cpu = cpu
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> ReplayServer:
        root = Path(__file__).resolve().parents[1]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        )
        command = [sys.executable, "-m", "benchmarks.replay"]
        if self.cpu is not None:
            command += ["--cpu", str(self.cpu)]
        self._process = subprocess.Popen(
            command, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        assert self._process.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            line = self._process.stdout.readline().decode()
            if line.startswith("PORT "):
                self.port = int(line.split()[1])
                return self
            if not line and self._process.poll() is not None:
                break
        self.stop()
        raise RuntimeError("the replay server did not start")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replay", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this core")
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.port))


if __name__ == "__main__":
    main()
