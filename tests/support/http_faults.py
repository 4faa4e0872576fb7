"""An HTTP-level fault injector for the Kinesis JSON API: a small aiohttp reverse proxy.

It listens on 127.0.0.1 and forwards every request to an emulator, unless its ``rule`` says to
answer a call with an AWS error instead (e.g. a 400 ProvisionedThroughputExceededException).
It also attributes every GetRecords call to its shard, by following iterators: the ShardId of a
GetShardIterator request owns the iterator it returns, and a GetRecords iterator owns the
NextShardIterator it returns. So a test can count GetRecords calls per shard per second as
Kinesis would.

    async with KinesisFaultInjector(emulator_url, rule=throttle_calls({2, 3})) as injector:
        ...  # point the consumer at injector.endpoint_url
"""

from __future__ import annotations

import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import orjson
from aiohttp import ClientSession, ClientTimeout, web

__all__ = [
    "Call",
    "Fault",
    "KinesisFaultInjector",
    "Rule",
    "combine",
    "fault_fraction",
    "max_calls_in_window",
    "nth_calls",
]

HOST = "127.0.0.1"
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
THROTTLED = "ProvisionedThroughputExceededException"
LIMIT_EXCEEDED = "LimitExceededException"


@dataclass(frozen=True, slots=True)
class Fault:
    """An error answer: HTTP status and the AWS error code (``__type``)."""

    code: str
    status: int = 400
    message: str = "injected by the test"


@dataclass(frozen=True, slots=True)
class Call:
    """One request the injector saw."""

    operation: str  # "GetRecords", "GetShardIterator", "ListShards", ...
    shard_id: str | None  # for GetRecords and GetShardIterator, when known
    number: int  # per (operation, shard): 1 for the first such call
    at: float  # time.monotonic() on arrival
    fault: Fault | None  # what was injected, or None when forwarded


# rule(operation, shard_id, number) -> a Fault to answer with, or None to forward
Rule = Callable[[str, str | None, int], Fault | None]


def nth_calls(
    numbers: set[int] | Callable[[int], bool],
    fault: Fault = Fault(THROTTLED),
    *,
    operation: str = "GetRecords",
    shards: set[str] | None = None,
) -> Rule:
    """Fault the chosen calls (numbered from 1 per shard) of one operation."""
    pick = numbers.__contains__ if isinstance(numbers, set) else numbers

    def rule(op: str, shard_id: str | None, number: int) -> Fault | None:
        if op != operation or (shards is not None and shard_id not in shards):
            return None
        return fault if pick(number) else None

    return rule


def fault_fraction(
    fraction: float,
    fault: Fault = Fault(THROTTLED),
    *,
    operation: str = "GetRecords",
    seed: int = 0,
    limit: int | None = None,
) -> Rule:
    """Fault a random ``fraction`` of one operation's calls, at most ``limit`` of them."""
    rng = random.Random(seed)
    injected = 0

    def rule(op: str, shard_id: str | None, number: int) -> Fault | None:
        nonlocal injected
        if op != operation or (limit is not None and injected >= limit):
            return None
        if rng.random() < fraction:
            injected += 1
            return fault
        return None

    return rule


def combine(*rules: Rule) -> Rule:
    """The first rule that faults a call decides."""

    def rule(op: str, shard_id: str | None, number: int) -> Fault | None:
        for r in rules:
            fault = r(op, shard_id, number)
            if fault is not None:
                return fault
        return None

    return rule


def max_calls_in_window(times: list[float], window: float = 1.0) -> int:
    """The most calls in any half-open window [t, t + window) that starts at a call."""
    ordered = sorted(times)
    best = 0
    end = 0
    for start_index, start in enumerate(ordered):
        end = max(end, start_index)
        while end < len(ordered) and ordered[end] < start + window:
            end += 1
        best = max(best, end - start_index)
    return best


class KinesisFaultInjector:
    """Reverse proxy to ``upstream`` (an emulator's URL), faulting calls its ``rule`` picks."""

    def __init__(self, upstream: str, *, rule: Rule | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.rule: Rule | None = rule
        self.calls: list[Call] = []
        self.port = 0
        self._iterator_shard: dict[str, str] = {}
        self._numbers: dict[tuple[str, str | None], int] = {}
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def __aenter__(self) -> Self:
        self._session = ClientSession(auto_decompress=False, timeout=ClientTimeout(total=60))
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, 0))  # loopback only
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # queries

    def calls_of(self, operation: str, shard_id: str | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.operation == operation and (shard_id is None or c.shard_id == shard_id)
        ]

    def injected(self, operation: str | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.fault is not None and (operation is None or c.operation == operation)
        ]

    def shards_seen(self) -> set[str]:
        return {c.shard_id for c in self.calls_of("GetRecords") if c.shard_id is not None}

    # proxying

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        operation = target.rpartition(".")[2]
        params: dict[str, Any] = {}
        if body:
            try:
                loaded = orjson.loads(body)
                params = loaded if isinstance(loaded, dict) else {}
            except orjson.JSONDecodeError:
                params = {}
        shard_id: str | None = None
        if operation == "GetShardIterator":
            shard_id = params.get("ShardId")
        elif operation == "GetRecords":
            shard_id = self._iterator_shard.get(str(params.get("ShardIterator")))
        key = (operation, shard_id)
        number = self._numbers[key] = self._numbers.get(key, 0) + 1
        fault = self.rule(operation, shard_id, number) if self.rule is not None else None
        self.calls.append(Call(operation, shard_id, number, arrived, fault))
        if fault is not None:
            return web.Response(
                status=fault.status,
                body=orjson.dumps({"__type": fault.code, "message": fault.message}),
                headers={
                    "Content-Type": "application/x-amz-json-1.1",
                    "x-amzn-RequestId": str(uuid.uuid4()),
                },
            )
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as upstream:
            payload = await upstream.read()
            status = upstream.status
            response_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
            }
        if status == 200 and shard_id is not None:
            self._follow_iterators(operation, shard_id, payload)
        return web.Response(status=status, body=payload, headers=response_headers)

    def _follow_iterators(self, operation: str, shard_id: str, payload: bytes) -> None:
        try:
            result = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        field = "ShardIterator" if operation == "GetShardIterator" else "NextShardIterator"
        iterator = result.get(field) if isinstance(result, dict) else None
        if iterator:
            self._iterator_shard[str(iterator)] = shard_id
