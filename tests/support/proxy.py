"""A TCP fault-injection proxy on 127.0.0.1 for fault tests.

`FaultProxy` runs in a running anyio (asyncio) event loop as an async context manager;
`ThreadedProxy` runs one in a background thread, with the same controls as plain methods, for
sync tests and benchmark scripts.

Modes (for connections accepted from then on):
- ``pass``: forward to the target;
- ``stall``: accept and hold, forwarding nothing. Established connections also stop forwarding
  until the mode changes; what they sent meanwhile is delivered afterwards;
- ``refuse``: the listener is closed, so connects fail with ECONNREFUSED;
- ``reset``: accept, then abort at once with a TCP RST.

`reset_connections()` aborts every current connection with a RST; `outage()` does that and
refuses (or another mode) for a while.
"""

from __future__ import annotations

import socket
import struct
from contextlib import ExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskGroup, TaskStatus
from anyio.from_thread import BlockingPortal, start_blocking_portal

Mode = Literal["pass", "stall", "refuse", "reset"]
MODES: tuple[Mode, ...] = ("pass", "stall", "refuse", "reset")
HOST = "127.0.0.1"


def _arm_rst(stream: SocketStream | None) -> None:
    """SO_LINGER 0: closing the socket then sends a RST instead of a FIN."""
    if stream is None:
        return
    try:
        sock = stream.extra(SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (OSError, anyio.TypedAttributeLookupError):
        pass


@dataclass(eq=False)
class _Connection:
    client: SocketStream
    upstream: SocketStream | None = None
    reset: bool = False
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    closed: anyio.Event = field(default_factory=anyio.Event)

    def abort(self) -> None:
        self.reset = True
        self.scope.cancel()


class FaultProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port`, with injectable faults."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        port: int = 0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = port  # 0: the OS picks one when the listener first opens
        self.connect_timeout = connect_timeout
        self.connections = 0  # connections accepted since the start
        self._mode: Mode = "pass"
        # Events are made in __aenter__, inside the event loop that uses them.
        self._mode_changed: anyio.Event
        self._listener_closed: anyio.Event
        self._active: set[_Connection] = set()
        self._task_group: TaskGroup | None = None
        self._listener_scope: anyio.CancelScope | None = None

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def active_connections(self) -> int:
        return len(self._active)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def __aenter__(self) -> Self:
        self._mode_changed = anyio.Event()
        self._listener_closed = anyio.Event()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        await self._task_group.start(self._listen)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, traceback)

    async def set_mode(self, mode: Mode) -> None:
        """Switch mode; on return, the listener is already closed (refuse) or open (otherwise)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        previous, self._mode = self._mode, mode
        changed, self._mode_changed = self._mode_changed, anyio.Event()
        changed.set()
        if mode == "refuse" and previous != "refuse" and self._listener_scope is not None:
            self._listener_scope.cancel()
            with anyio.fail_after(5):
                await self._listener_closed.wait()
        elif previous == "refuse" and mode != "refuse":
            assert self._task_group is not None
            await self._task_group.start(self._listen)

    async def reset_connections(self) -> int:
        """Abort every current connection with a RST; returns how many there were."""
        connections = list(self._active)
        for connection in connections:
            connection.abort()
        with anyio.fail_after(5):
            for connection in connections:
                await connection.closed.wait()
        return len(connections)

    async def outage(self, seconds: float, mode: Mode = "refuse") -> None:
        """Reset every connection and stay in `mode` for `seconds`, then restore the mode."""
        previous = self._mode
        await self.set_mode(mode)
        await self.reset_connections()
        try:
            await anyio.sleep(seconds)
        finally:
            with anyio.CancelScope(shield=True):
                await self.set_mode(previous)

    # Internals.

    async def _listen(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host=HOST, local_port=self.port)
        self.port = listener.extra(SocketAttribute.local_port)
        self._listener_closed = anyio.Event()
        assert self._task_group is not None
        try:
            with anyio.CancelScope() as scope:
                self._listener_scope = scope
                async with listener:
                    task_status.started()
                    await listener.serve(self._handle, task_group=self._task_group)
        finally:
            self._listener_scope = None
            self._listener_closed.set()

    async def _wait_while_stalled(self) -> None:
        while self._mode == "stall":
            await self._mode_changed.wait()

    async def _handle(self, client: SocketStream) -> None:
        self.connections += 1
        connection = _Connection(client)
        self._active.add(connection)
        try:
            with connection.scope:
                await self._forward(connection)
        finally:
            self._active.discard(connection)
            if connection.reset:
                _arm_rst(connection.client)
                _arm_rst(connection.upstream)
            with anyio.CancelScope(shield=True):
                await client.aclose()
                if connection.upstream is not None:
                    await connection.upstream.aclose()
            connection.closed.set()

    async def _forward(self, connection: _Connection) -> None:
        await self._wait_while_stalled()
        if self._mode != "pass":  # reset, or refuse that began while this one was held
            connection.reset = True
            return
        # Connect upstream only once the client has said something: a reset of an upstream
        # connection that never carried a request was seen to stop kinesis-mock listening.
        try:
            first = await connection.client.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return
        await self._wait_while_stalled()
        if self._mode != "pass":
            connection.reset = True
            return
        try:
            with anyio.fail_after(self.connect_timeout):
                connection.upstream = await anyio.connect_tcp(self.target_host, self.target_port)
            await connection.upstream.send(first)
        except (OSError, TimeoutError, anyio.BrokenResourceError):
            connection.reset = True  # the target is down: the client sees a reset
            return
        async with anyio.create_task_group() as pumps:
            pumps.start_soon(self._pump, connection, connection.client, connection.upstream)
            pumps.start_soon(self._pump, connection, connection.upstream, connection.client)

    async def _pump(
        self, connection: _Connection, source: SocketStream, sink: SocketStream
    ) -> None:
        """Copy source to sink until EOF (passed on as a half-close) or an error (abort both)."""
        try:
            async for chunk in source:  # ends with the connection; the proxy's scope bounds it
                await self._wait_while_stalled()
                await sink.send(chunk)
            await sink.send_eof()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            connection.abort()


class ThreadedProxy:
    """A `FaultProxy` on its own event loop in a background thread, for synchronous callers."""

    def __init__(
        self, target_host: str, target_port: int, *, port: int = 0, connect_timeout: float = 5.0
    ) -> None:
        self._proxy = FaultProxy(
            target_host, target_port, port=port, connect_timeout=connect_timeout
        )
        self._stack: ExitStack | None = None
        self._portal: BlockingPortal | None = None

    def start(self) -> Self:
        if self._stack is not None:
            return self
        stack = ExitStack()
        try:
            self._portal = stack.enter_context(start_blocking_portal(backend="asyncio"))
            stack.enter_context(self._portal.wrap_async_context_manager(self._proxy))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def stop(self) -> None:
        stack, self._stack, self._portal = self._stack, None, None
        if stack is not None:
            stack.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._proxy.port

    @property
    def endpoint_url(self) -> str:
        return self._proxy.endpoint_url

    @property
    def mode(self) -> Mode:
        return self._proxy.mode

    @property
    def connections(self) -> int:
        return self._proxy.connections

    @property
    def active_connections(self) -> int:
        return self._proxy.active_connections

    def _require_portal(self) -> BlockingPortal:
        if self._portal is None:
            raise RuntimeError("ThreadedProxy is not started")
        return self._portal

    def set_mode(self, mode: Mode) -> None:
        self._require_portal().call(self._proxy.set_mode, mode)

    def reset_connections(self) -> int:
        return self._require_portal().call(self._proxy.reset_connections)

    def outage(self, seconds: float, mode: Mode = "refuse") -> None:
        """Blocks the calling thread for `seconds` while the proxy is out."""
        self._require_portal().call(self._proxy.outage, seconds, mode)
