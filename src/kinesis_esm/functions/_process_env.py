"""The daemon's side of one worker-process environment (``isolation = "process"``).

The worker (``_worker.py``) is a fresh interpreter, not a fork of the daemon: it inherits no
event loop, threads or sockets. It talks over a socket pair in length-prefixed frames (orjson,
never pickle); its stdout and stderr are pipes into the daemon's log. Everything here runs on
the event loop through callbacks (the frame protocol, the exit watcher, the pipe readers): no
task outlives a call.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _worker
from ._callable import InvokeResult
from ._child import ChildProcess
from ._sandbox import (
    Failure,
    InitError,
    Invocation,
    decode_response,
    exit_description,
    function_error,
    lost_result,
)

__all__ = ["ProcessEnvironment", "WorkerSpec"]

WORKER = str(Path(_worker.__file__).resolve())
STOP_GRACE = 2.0  # seconds a worker has to exit after its channel closes, before SIGKILL
EOF_WAIT = 0.2  # seconds from a worker's exit to its channel's end, at most


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What every environment of one function shares."""

    function_name: str
    handler: str
    memory_size: int
    enforce_memory: bool
    python: str
    task_root: str
    environment: Mapping[str, str]  # the whole environment of the worker process
    init_timeout: float
    logger: logging.Logger


class _Ended(Exception):
    """The worker's channel closed or the worker exited."""


class _Channel(asyncio.Protocol):
    def __init__(self, owner: ProcessEnvironment) -> None:
        self.owner = owner
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        header = _worker.HEADER
        while len(buffer) >= header.size:
            meta_len, body_len = header.unpack_from(buffer)
            end = header.size + meta_len + body_len
            if len(buffer) < end:
                return
            meta = _worker.decode_meta(bytes(buffer[header.size : header.size + meta_len]))
            body = bytes(buffer[header.size + meta_len : end])
            del buffer[:end]
            self.owner._frame(meta, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._ended()


class ProcessEnvironment:
    """One warm worker process."""

    def __init__(self, spec: WorkerSpec, number: int) -> None:
        self.spec = spec
        self.number = number
        self.failure: Failure | None = None
        self.address_space: int | None = None  # the worker's RLIMIT_AS, when one is set
        self.child: ChildProcess | None = None
        self._channel: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[dict[str, Any], bytes]] | None = None
        self._closed = False  # the channel is gone: no further invocation

    @property
    def alive(self) -> bool:
        return (
            self.failure is None
            and not self._closed
            and self.child is not None
            and not self.child.exited
        )

    async def start(self) -> InitError | None:
        loop = asyncio.get_running_loop()
        spec = self.spec
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        memory = spec.memory_size if spec.enforce_memory else 0
        command = [spec.python, WORKER, "--fd", str(theirs.fileno())]
        command += ["--handler", spec.handler, "--memory-size", str(memory)]
        try:
            self.child = await ChildProcess.spawn(
                command,
                env=spec.environment,
                cwd=spec.task_root,
                logger=spec.logger,
                number=self.number,
                on_exit=self._exited,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._channel, _ = await loop.create_unix_connection(lambda: _Channel(self), sock=ours)
        try:
            meta, _body = await self._receive(loop.time() + spec.init_timeout)
        except TimeoutError:
            self.kill()
            return InitError(
                "Sandbox.Timedout", f"Init phase timed out after {spec.init_timeout:.2f} seconds"
            )
        except _Ended:
            returncode = await self.child.wait()
            if returncode == _worker.EXIT_OUT_OF_MEMORY:
                return InitError("Runtime.OutOfMemory", "Runtime exited with error: out of memory")
            message = f"Runtime exited with error: {exit_description(returncode)}"
            return InitError("Runtime.ExitError", message)
        except BaseException:  # cancelled during init: no grace for a half-imported worker
            self.kill()
            raise
        finally:
            self.child.end_invocation()
        if meta.get("t") == "init_error":
            self.failure = "crash"  # the worker exits after reporting
            return InitError.from_document(meta.get("error") or {})
        if meta.get("t") != "ready":
            self.kill()
            return InitError("Runtime.InvalidResponse", f"unexpected first frame {meta!r}")
        self.address_space = meta.get("address_space")
        return None

    async def invoke(self, invocation: Invocation) -> InvokeResult:
        channel, child = self._channel, self.child
        if channel is None or child is None or not self.alive:
            raise RuntimeError(f"environment {self.number} cannot take an invocation")
        loop = asyncio.get_running_loop()
        request_id = invocation.request_id
        child.tag(request_id)
        meta: dict[str, Any] = {
            "t": "invoke",
            "id": request_id,
            "deadline": int((time.time() + invocation.timeout) * 1000),
            "arn": invocation.invoked_function_arn,
            "trace": invocation.trace_id,
        }
        if invocation.client_context is not None:
            meta["client_context"] = invocation.client_context
        if invocation.cognito_identity is not None:
            meta["cognito_identity"] = invocation.cognito_identity
        started = time.monotonic()
        try:
            channel.write(_worker.encode_frame(meta, invocation.body))
            answer, body = await self._receive(loop.time() + invocation.timeout)
        except TimeoutError:
            self.kill()
            return self._lost(invocation, "timeout", None, started)
        except _Ended:
            returncode = await child.wait()
            failure: Failure = (
                "out_of_memory" if returncode == _worker.EXIT_OUT_OF_MEMORY else "crash"
            )
            return self._lost(invocation, failure, returncode, started)
        except BaseException:  # cancelled mid-invocation: the environment's state is unknown
            self.failure = "crash"
            self.kill()
            raise
        finally:
            child.end_invocation()
        kind = answer.get("t")
        if kind == "result":
            result = InvokeResult(request_id, decode_response(body))
        elif kind == "error":
            result = function_error(request_id, answer.get("error") or {})
        else:  # "oom": the worker is on its way out; anything else breaks the protocol
            self.kill()
            failure = "out_of_memory" if kind == "oom" else "crash"
            return self._lost(invocation, failure, None, started)
        result.duration = time.monotonic() - started
        return result

    def _lost(
        self, invocation: Invocation, failure: Failure, returncode: int | None, started: float
    ) -> InvokeResult:
        self.failure = failure
        result = lost_result(
            invocation.request_id,
            failure,
            returncode=returncode,
            timeout=invocation.timeout,
            memory_size=self.spec.memory_size,
        )
        result.duration = time.monotonic() - started
        return result

    async def _receive(self, deadline: float) -> tuple[dict[str, Any], bytes]:
        if self._closed or (self.child is not None and self.child.exited):
            raise _Ended
        waiter: asyncio.Future[tuple[dict[str, Any], bytes]]
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout_at(deadline):
                return await waiter
        finally:
            self._waiter = None

    # callbacks from the protocols

    def _frame(self, meta: dict[str, Any], body: bytes) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result((meta, body))
        else:  # a frame nobody asked for: the worker is not following the protocol
            self.spec.logger.warning(
                "environment %d sent an unexpected frame %r; stopping it", self.number, meta
            )
            self.failure = "crash"
            self.kill()

    def _ended(self) -> None:
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(_Ended())

    def _exited(self) -> None:
        # The channel's end of file follows the last frame the worker sent (an init error, an
        # out-of-memory notice), while the exit may be noticed first; a forked grandchild can
        # keep the channel open, though, so the exit ends it too, a moment later.
        asyncio.get_running_loop().call_later(EOF_WAIT, self._ended)

    # stopping

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()

    async def stop(self) -> None:
        """Close the channel (the worker exits on end of file), wait a little, then kill."""
        if self._channel is not None:
            self._channel.close()
        if self.child is not None:
            await self.child.stop(STOP_GRACE, terminate=False)
