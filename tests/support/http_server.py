"""A local aiohttp server on 127.0.0.1 that answers every request with a swappable behaviour:
the other side of the http and lambda function targets' tests."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import anyio
import orjson
from aiohttp import web

from tests.support.emulators import free_port

__all__ = ["HOST", "Behaviour", "LocalServer", "Seen", "json_answer"]

HOST = "127.0.0.1"

Behaviour = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    """One request as the server received it."""

    path: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int]


async def json_answer(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json")


@dataclass
class LocalServer:
    """An aiohttp server on 127.0.0.1 whose ``behaviour`` answers every POST.

    ``behaviour(request, body)`` can be swapped between invocations; every request is kept in
    ``seen`` (headers, body, the client's address, so connections can be counted).
    """

    behaviour: Behaviour
    ssl_context: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{HOST}:{self.port}/invoke"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append(Seen(request.path, dict(request.headers), body, tuple(peer or ("", 0))))
        return await self.behaviour(request, body)

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        self.port = self.port or free_port()
        site = web.TCPSite(self._runner, HOST, self.port, ssl_context=self.ssl_context)
        await site.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            with anyio.CancelScope(shield=True):
                await self._runner.cleanup()

    @property
    def connections(self) -> int:
        return len({s.peer for s in self.seen})
