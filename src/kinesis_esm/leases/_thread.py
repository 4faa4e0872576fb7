"""Leases on a thread of their own, so renewals keep their cadence however busy the worker is.

A worker that reads as fast as it can keeps its event loop saturated: parsing GetRecords
answers and building events runs for tens of milliseconds at a time, and every await of a
renewal waits behind all of that. With a short failover_time the renewals then arrive late
and a busy worker loses its own leases. So the coordinators of a fleet run on `LeaseThread`,
a thread with an event loop and a store client of its own: the interpreter switches threads
every few milliseconds (`sys.getswitchinterval`), so a renewal waits milliseconds, not the
length of the main loop's queue.

`ThreadedCoordinator` is the main loop's handle on a `LeaseCoordinator` running there:
- reads (`holds`, `held_leases`, `statistics`, `snapshot`, `live_workers`) and
  `report_load` touch the coordinator's state directly: single dict lookups and attribute
  writes, atomic under the GIL;
- a checkpoint that only needs recording (the common case) is recorded in place; one that
  needs a write (SHARD_END, `force`) or finds the lease gone runs on the lease thread;
- the coordinator's calls into the consumer (`on_lease_gained`, `on_lease_lost`,
  `release_requested`) come back to the main loop through one dispatcher task, in order.
Cancelling `run()` cancels the coordinator there and waits for it (bounded): no orphan task.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._contract import CheckpointOutcome, CoordinatorSettings, LeaseConsumer, LeaseStatistics
from ._coordinator import LeaseCoordinator
from ._model import Checkpoint, FleetSnapshot, Lease, LeaseLoad

__all__ = ["LeaseThread", "LeaseThreadStopped", "MainLoopConsumer", "ThreadedCoordinator"]

log = logging.getLogger("kinesis_esm.leases")

T = TypeVar("T")

_CANCEL_WAIT = 10.0  # how long a cancelled caller waits for the lease thread's side to end
_STOP_WAIT = 10.0  # how long closing the thread waits for what still runs there


class LeaseThreadStopped(RuntimeError):
    """The lease thread stopped before the call ended."""


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LeaseThread:
    """A daemon thread running an event loop; coroutines are sent to it with `call`."""

    def __init__(self, name: str = "kinesis-esm-leases") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a LeaseThread can be started once")
        loop, ready = _new_loop(), threading.Event()
        self._loop = loop
        self._thread = threading.Thread(target=self._serve, args=(loop, ready), name=self.name)
        self._thread.daemon = True  # a crash of the daemon must not hang on it
        self._thread.start()
        if not ready.wait(10.0):  # pragma: no cover - a thread that cannot start
            raise RuntimeError("the lease thread did not start")

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=_STOP_WAIT))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    async def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``function(*args)`` on the lease thread and return its result here.

        Cancelling the caller cancels it there, and the caller waits for it to end (bounded)."""
        loop = self._loop
        if loop is None or not self.running:
            raise LeaseThreadStopped("the lease thread is not running")
        result: concurrent.futures.Future[T] = concurrent.futures.Future()
        result.set_running_or_notify_cancel()  # only the task's end settles it
        task: list[asyncio.Task[T]] = []

        def begin() -> None:
            started: asyncio.Task[T] = loop.create_task(_awaited(function, args))
            started.add_done_callback(lambda t: _settle(t, result))
            task.append(started)

        def cancel() -> None:
            if task:
                task[0].cancel()
            elif not result.done():  # never began
                result.set_exception(LeaseThreadStopped("cancelled before it began"))

        loop.call_soon_threadsafe(begin)
        try:
            return await asyncio.wrap_future(result)
        except BaseException:
            if not result.done():
                loop.call_soon_threadsafe(cancel)
                waiter = asyncio.wrap_future(result)
                with anyio.CancelScope(shield=True), anyio.move_on_after(_CANCEL_WAIT):
                    await asyncio.wait([waiter])
                # the outcome is the cancellation's, not the caller's: retrieve it (asyncio
                # reports a future's exception nobody retrieved), or drop a late one
                if waiter.done():
                    waiter.exception()
                else:
                    waiter.cancel()
            raise

    async def aclose(self) -> None:
        """Stop the loop (what still runs there is cancelled) and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(loop.stop)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(thread.join, _STOP_WAIT + 5.0)


async def _awaited(function: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
    return await function(*args)


def _settle(task: asyncio.Task[T], result: concurrent.futures.Future[T]) -> None:
    if result.done():
        return
    if task.cancelled():
        result.set_exception(LeaseThreadStopped("cancelled on the lease thread"))
    elif (error := task.exception()) is not None:
        result.set_exception(error)
    else:
        result.set_result(task.result())


@dataclass(frozen=True, slots=True)
class _Call:
    """A consumer call from the lease thread; `reply` is set when it has returned."""

    method: str
    argument: Any
    reply: concurrent.futures.Future[None] | None = None


class MainLoopConsumer:
    """A `LeaseConsumer` on the lease thread that forwards to the real one on the main loop.

    Calls queue until `ThreadedCoordinator.run` dispatches them, in the order they were made."""

    def __init__(self, consumer: LeaseConsumer) -> None:
        self.consumer = consumer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._send: MemoryObjectSendStream[_Call] | None = None

    def attach(self, loop: asyncio.AbstractEventLoop, send: MemoryObjectSendStream[_Call]) -> None:
        self._loop, self._send = loop, send

    def detach(self) -> None:
        self._send = None

    def _post(self, call: _Call) -> bool:
        loop, send = self._loop, self._send
        if loop is None or send is None:
            return False
        try:
            loop.call_soon_threadsafe(_deliver, send, call)
        except RuntimeError:  # the main loop is closed: nobody is left to tell
            return False
        return True

    def on_lease_gained(self, lease: Lease) -> None:
        if not self._post(_Call("gained", lease)):
            log.warning("lease %s gained after its mapping stopped; it expires", lease.shard_id)

    def on_lease_lost(self, shard_id: str) -> None:
        self._post(_Call("lost", shard_id))

    async def release_requested(self, shard_id: str) -> None:
        reply: concurrent.futures.Future[None] = concurrent.futures.Future()
        reply.set_running_or_notify_cancel()
        if not self._post(_Call("release", shard_id, reply)):
            return
        try:
            await asyncio.wrap_future(reply)
        except BaseException:  # the hand-off's bound: the main side stops waiting too
            self._post(_Call("abandon", shard_id, reply))
            raise


def _deliver(send: MemoryObjectSendStream[_Call], call: _Call) -> None:
    try:
        send.send_nowait(call)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        if call.reply is not None and not call.reply.done():
            call.reply.set_result(None)  # nobody will run it: do not keep the thread waiting


class ThreadedCoordinator:
    """The main loop's side of a `LeaseCoordinator` running on a `LeaseThread`."""

    def __init__(
        self, thread: LeaseThread, coordinator: LeaseCoordinator, consumer: MainLoopConsumer
    ) -> None:
        self.thread = thread
        self.inner = coordinator
        self._consumer = consumer
        self._releases: dict[concurrent.futures.Future[None], anyio.CancelScope] = {}

    @property
    def settings(self) -> CoordinatorSettings:
        return self.inner.settings

    @property
    def worker_id(self) -> str:
        return self.inner.worker_id

    @property
    def mapping_uuid(self) -> str:
        return self.inner.mapping_uuid

    # reads, in place

    def holds(self, shard_id: str) -> bool:
        return self.inner.holds(shard_id)

    def held_leases(self) -> dict[str, Lease]:
        return self.inner.held_leases()

    def report_load(self, shard_id: str, load: LeaseLoad) -> None:
        self.inner.report_load(shard_id, load)

    def statistics(self) -> LeaseStatistics:
        return self.inner.statistics()

    def snapshot(self) -> FleetSnapshot | None:
        return self.inner.snapshot()

    def live_workers(self) -> frozenset[str]:
        return self.inner.live_workers()

    # calls that may write

    async def checkpoint(
        self,
        shard_id: str,
        sequence: str,
        sub_sequence: int = 0,
        *,
        force: bool = False,
        window_state: bytes | None = None,
    ) -> CheckpointOutcome:
        checkpoint = Checkpoint(sequence, sub_sequence, window_state)
        if not force and self.inner.defer_checkpoint(shard_id, checkpoint):
            return CheckpointOutcome.DEFERRED

        async def write() -> CheckpointOutcome:
            return await self.inner.checkpoint(
                shard_id, sequence, sub_sequence, force=force, window_state=window_state
            )

        return await self.thread.call(write)

    async def add_shards(
        self,
        shards: Mapping[str, Sequence[str]],
        checkpoints: Mapping[str, Checkpoint] | None = None,
    ) -> int:
        return await self.thread.call(self.inner.add_shards, shards, checkpoints)

    async def stop(self) -> None:
        await self.thread.call(self.inner.stop)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the coordinator on the lease thread and its consumer calls here, until it
        returns (`stop()`) or this is cancelled (no release, as a crash)."""
        send, receive = anyio.create_memory_object_stream[_Call](math.inf)
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        started.set_running_or_notify_cancel()
        self._consumer.attach(asyncio.get_running_loop(), send)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._dispatch, receive)

                async def coordinate() -> None:
                    try:
                        await self.thread.call(self._run_there, started)
                    finally:
                        send.close()  # the dispatcher delivers what is queued, then ends

                group.start_soon(coordinate)
                await asyncio.wrap_future(started)
                task_status.started()
        finally:
            self._consumer.detach()
            send.close()

    async def _run_there(self, started: concurrent.futures.Future[None]) -> None:
        try:
            async with anyio.create_task_group() as group:
                await group.start(self.inner.run)
                started.set_result(None)
        finally:
            if not started.done():
                started.set_exception(LeaseThreadStopped("the coordinator ended before starting"))

    async def _dispatch(self, receive: MemoryObjectReceiveStream[_Call]) -> None:
        consumer = self._consumer.consumer
        async with receive, anyio.create_task_group() as group:
            async for call in receive:
                if call.method == "gained":
                    consumer.on_lease_gained(call.argument)
                elif call.method == "lost":
                    consumer.on_lease_lost(call.argument)
                elif call.method == "release" and call.reply is not None:
                    scope = anyio.CancelScope()
                    self._releases[call.reply] = scope
                    group.start_soon(self._release, scope, call.argument, call.reply)
                elif call.method == "abandon" and call.reply is not None:
                    abandoned = self._releases.get(call.reply)
                    if abandoned is not None:
                        abandoned.cancel()
            for scope in list(self._releases.values()):  # the coordinator is gone: nobody waits
                scope.cancel()

    async def _release(
        self, scope: anyio.CancelScope, shard_id: str, reply: concurrent.futures.Future[None]
    ) -> None:
        try:
            with scope:
                await self._consumer.consumer.release_requested(shard_id)
        except Exception as error:
            if not reply.done():
                reply.set_exception(error)
        finally:
            self._releases.pop(reply, None)
            if not reply.done():
                reply.set_result(None)
