"""One environment of ``target = "runtime"``: Lambda's Runtime API on a loopback port of its
own, and the runtime interface client (``command``) that polls it.

The environment's init is done when the runtime first asks for the next invocation; a runtime
that posts ``/init/error`` or exits first has failed its init. Each invocation is handed out on
``GET /2018-06-01/runtime/invocation/next`` with Lambda's headers, and ends with the runtime's
``POST .../invocation/{id}/response`` or ``.../error``, its exit, or the function timeout.

Memory: runtimes in other languages reserve far more address space than they use (V8 reserves
gigabytes), so RLIMIT_AS does not fit here. Instead the runtime process's resident memory is
sampled every 50 ms on Linux and the process is killed above ``memory_size``, which Lambda
reports as ``Runtime.OutOfMemory``. A burst shorter than a sample can pass unseen.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

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

__all__ = ["MAX_RESPONSE_BYTES", "RuntimeEnvironment", "RuntimeSpec"]

PREFIX = "/2018-06-01/runtime"
MAX_RESPONSE_BYTES = 6 * 1024 * 1024  # Lambda's synchronous response limit
STOP_GRACE = 2.0  # seconds from SIGTERM to SIGKILL
EXIT_SETTLE = 0.2  # seconds for a runtime's last request to arrive after its exit is seen
MEMORY_SAMPLE = 0.05  # seconds between two samples of the runtime's resident memory
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True, slots=True)
class RuntimeSpec:
    function_name: str
    command: tuple[str, ...]
    memory_size: int
    enforce_memory: bool
    task_root: str
    environment: Mapping[str, str]  # without AWS_LAMBDA_RUNTIME_API, which is per environment
    init_timeout: float
    logger: logging.Logger


def _error(status: int, error_type: str, message: str) -> web.Response:
    body = orjson.dumps({"errorMessage": message, "errorType": error_type})
    return web.Response(status=status, body=body, content_type="application/json")


_ACCEPTED = orjson.dumps({"status": "OK"})


def _accepted() -> web.Response:
    return web.Response(status=202, body=_ACCEPTED, content_type="application/json")


async def _read_capped(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None when it is over ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class RuntimeEnvironment:
    """One runtime process and the Runtime API it polls."""

    def __init__(self, spec: RuntimeSpec, number: int) -> None:
        self.spec = spec
        self.number = number
        self.failure: Failure | None = None
        self.child: ChildProcess | None = None
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._queue: asyncio.Queue[Invocation] = asyncio.Queue(maxsize=1)
        self._current: Invocation | None = None
        self._outcome: asyncio.Future[InvokeResult | Failure] | None = None
        self._init: asyncio.Future[InitError | None] | None = None
        self._pollers: set[asyncio.Task[Any]] = set()
        self._memory_timer: asyncio.TimerHandle | None = None
        self._out_of_memory = False

    @property
    def alive(self) -> bool:
        return self.failure is None and self.child is not None and not self.child.exited

    # the Runtime API

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_RESPONSE_BYTES + 1)
        app.router.add_get(f"{PREFIX}/invocation/next", self._next)
        app.router.add_post(f"{PREFIX}/invocation/{{id}}/response", self._response)
        app.router.add_post(f"{PREFIX}/invocation/{{id}}/error", self._error)
        app.router.add_post(f"{PREFIX}/init/error", self._init_error)
        return app

    async def _next(self, request: web.Request) -> web.StreamResponse:
        if self._init is not None and not self._init.done():
            self._init.set_result(None)  # the runtime is ready: init is over
        task = asyncio.current_task()
        if task is not None:
            self._pollers.add(task)
        try:
            invocation = await self._queue.get()
        finally:
            self._pollers.discard(task)
        self._current = invocation
        if self.child is not None:  # what the runtime wrote until now was the last one's
            self.child.end_invocation(next_tag=invocation.request_id)
        deadline_ms = int((time.time() + invocation.timeout) * 1000)
        headers = {
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": invocation.invoked_function_arn,
            "Lambda-Runtime-Trace-Id": invocation.trace_id,
        }
        if invocation.client_context is not None:
            headers["Lambda-Runtime-Client-Context"] = orjson.dumps(
                invocation.client_context
            ).decode()
        if invocation.cognito_identity is not None:
            headers["Lambda-Runtime-Cognito-Identity"] = orjson.dumps(
                invocation.cognito_identity
            ).decode()
        return web.Response(body=invocation.body, headers=headers, content_type="application/json")

    def _settle(self, request_id: str) -> asyncio.Future[InvokeResult | Failure] | None:
        current, outcome = self._current, self._outcome
        if current is None or current.request_id != request_id or outcome is None:
            return None
        return outcome if not outcome.done() else None

    async def _response(self, request: web.Request) -> web.StreamResponse:
        request_id = request.match_info["id"]
        outcome = self._settle(request_id)
        if outcome is None:
            return _error(400, "InvalidRequestID", f"Invalid request ID: {request_id!r}")
        body = await _read_capped(request, MAX_RESPONSE_BYTES)
        if body is None:
            message = (
                "Response payload size exceeded maximum allowed payload size "
                f"({MAX_RESPONSE_BYTES} bytes)."
            )
            document = {"errorType": "Function.ResponseSizeTooLarge", "errorMessage": message}
            outcome.set_result(function_error(request_id, document))
            return _error(413, "RequestEntityTooLarge", message)
        outcome.set_result(InvokeResult(request_id, decode_response(body)))
        return _accepted()

    async def _error(self, request: web.Request) -> web.StreamResponse:
        request_id = request.match_info["id"]
        outcome = self._settle(request_id)
        if outcome is None:
            return _error(400, "InvalidRequestID", f"Invalid request ID: {request_id!r}")
        outcome.set_result(function_error(request_id, await self._document(request)))
        return _accepted()

    async def _init_error(self, request: web.Request) -> web.StreamResponse:
        if self._init is None or self._init.done():
            return _error(403, "InvalidStateTransition", "init is over: cannot post an init error")
        self._init.set_result(InitError.from_document(await self._document(request)))
        return _accepted()

    @staticmethod
    async def _document(request: web.Request) -> dict[str, Any]:
        """The error document a runtime posted; its error-type header when the body is none."""
        body = await _read_capped(request, MAX_RESPONSE_BYTES) or b""
        header_type = request.headers.get("Lambda-Runtime-Function-Error-Type") or "Unhandled"
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict):
            text = body.decode("utf-8", "replace")
            return {"errorType": header_type, "errorMessage": text}
        document.setdefault("errorType", header_type)
        return document

    # the environment

    async def start(self) -> InitError | None:
        loop = asyncio.get_running_loop()
        spec = self.spec
        self._init = loop.create_future()
        self._runner = web.AppRunner(
            self._app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))  # loopback only: the Runtime API has no authentication
        self.port = listener.getsockname()[1]
        await web.SockSite(self._runner, listener).start()
        environment = dict(spec.environment, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{self.port}")
        self.child = await ChildProcess.spawn(
            spec.command,
            env=environment,
            cwd=spec.task_root,
            logger=spec.logger,
            number=self.number,
            on_exit=self._exited,
        )
        if spec.enforce_memory and sys.platform.startswith("linux"):
            self._memory_timer = loop.call_later(MEMORY_SAMPLE, self._sample_memory)
        try:
            async with asyncio.timeout(spec.init_timeout):
                error = await asyncio.shield(self._init)
        except TimeoutError:
            self.failure = "timeout"
            return InitError(
                "Sandbox.Timedout", f"Init phase timed out after {spec.init_timeout:.2f} seconds"
            )
        except BaseException:  # cancelled during init
            self.kill()
            raise
        finally:
            self.child.drain()
        if error is not None:
            self.failure = "crash"
        return error

    async def invoke(self, invocation: Invocation) -> InvokeResult:
        child = self.child
        if child is None or not self.alive:
            raise RuntimeError(f"environment {self.number} cannot take an invocation")
        outcome: asyncio.Future[InvokeResult | Failure]
        outcome = self._outcome = asyncio.get_running_loop().create_future()
        started = time.monotonic()
        self._queue.put_nowait(invocation)
        try:
            async with asyncio.timeout(invocation.timeout):
                settled = await outcome
        except TimeoutError:
            self.kill()
            settled = "timeout"
        except BaseException:  # cancelled mid-invocation: the runtime's state is unknown
            self.failure = "crash"
            self.kill()
            raise
        finally:
            self._current = self._outcome = None
            child.drain()  # its output so far; the rest is its until it asks for the next
        if isinstance(settled, InvokeResult):
            settled.duration = time.monotonic() - started
            return settled
        returncode = await child.wait() if settled != "timeout" else None
        self.failure = settled
        result = lost_result(
            invocation.request_id,
            settled,
            returncode=returncode,
            timeout=invocation.timeout,
            memory_size=self.spec.memory_size,
        )
        result.duration = time.monotonic() - started
        return result

    def _exited(self) -> None:
        # a response posted just before the exit may still be on its way: let it land first
        asyncio.get_running_loop().call_later(EXIT_SETTLE, self._lost_process)

    def _lost_process(self) -> None:
        failure: Failure = "out_of_memory" if self._out_of_memory else "crash"
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result(failure)
        if self._init is not None and not self._init.done():
            returncode = self.child.returncode if self.child is not None else None
            if self._out_of_memory:
                error = InitError("Runtime.OutOfMemory", "Runtime exited with error: out of memory")
            else:
                message = f"Runtime exited with error: {exit_description(returncode)}"
                error = InitError("Runtime.ExitError", message)
            self._init.set_result(error)

    def _sample_memory(self) -> None:
        child = self.child
        if child is None or child.exited or child.pid is None:
            return
        try:
            with open(f"/proc/{child.pid}/statm", "rb") as statm:
                resident = int(statm.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            return
        if resident > self.spec.memory_size * 1024 * 1024:
            self._out_of_memory = True
            self.spec.logger.warning(
                "environment %d: %d MB resident is over memory_size %d MB; killed",
                self.number,
                resident >> 20,
                self.spec.memory_size,
            )
            child.kill()
            return
        self._memory_timer = asyncio.get_running_loop().call_later(
            MEMORY_SAMPLE, self._sample_memory
        )

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()

    async def stop(self) -> None:
        if self._memory_timer is not None:
            self._memory_timer.cancel()
        if self.child is not None:
            await self.child.stop(STOP_GRACE, terminate=True)
        for poller in list(self._pollers):
            poller.cancel()
        if self._runner is not None:
            await self._runner.cleanup()


def runtime_command(command: Sequence[str]) -> tuple[str, ...]:
    if not command or not all(isinstance(part, str) and part for part in command):
        raise ValueError(
            f"command: {list(command)!r} must be a non-empty list of non-empty strings, "
            'e.g. ["python", "-m", "awslambdaric", "orders.handler.lambda_handler"]'
        )
    return tuple(command)
