"""Python callables as Lambda functions: ``handler(event, context)``, sync or async.

A sync handler runs in a worker thread, so it never blocks the event loop. The timeout is
enforced: an async handler is cancelled; a sync handler's thread cannot be killed, so it is
abandoned (it finishes in the background) and the invocation counts as timed out.
"""

from __future__ import annotations

import asyncio
import decimal
import inspect
import json
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.to_thread
import orjson

from ._context import LambdaContext

__all__ = [
    "CallableFunction",
    "InvokeResult",
    "abandoned_handlers_deadline",
    "overdue_handler_threads",
]

HandlerInput = Literal["event", "records"]
MAX_STACK_FRAMES = 50  # the innermost frames of a handler's traceback are kept


@dataclass(slots=True)
class InvokeResult:
    """The outcome of one invocation, shaped like Lambda's Invoke response."""

    request_id: str
    payload: Any = None
    error_type: str | None = None  # set on a function error: "Unhandled", "Runtime.MarshalError"
    error_message: str | None = None
    duration: float = 0.0
    # the handler's frames on an exception, as Lambda's ``stackTrace`` (traceback.format_list)
    stack_trace: list[str] | None = None

    @property
    def ok(self) -> bool:
        return self.error_type is None


def _json_default(value: object) -> object:
    if isinstance(value, decimal.Decimal):  # Lambda's Python runtime serializes Decimal
        return float(value) if value % 1 else int(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _marshal_error(value: object) -> str | None:
    """None when Lambda's Python runtime could serialize ``value`` as the response."""
    if value is None or isinstance(value, bytes | bytearray | str):
        return None  # bytes go back raw
    try:
        orjson.dumps(value)  # the fast common case
        return None
    except TypeError:
        pass
    try:  # the runtime uses the standard json module: int keys, big ints, Decimal are fine
        json.dumps(value, default=_json_default)
        return None
    except (TypeError, ValueError) as exc:
        return str(exc)


def _handler_frames(exc: BaseException) -> list[str]:
    """The traceback's frames from the handler's own on: the leading frames of this module,
    anyio, asyncio and the worker thread are the invocation's plumbing, not the handler's."""
    frames = traceback.extract_tb(exc.__traceback__)
    start = 0
    while start < len(frames) and _is_plumbing(frames[start].filename):
        start += 1
    return traceback.format_list(frames[start:][-MAX_STACK_FRAMES:])


def _is_plumbing(filename: str) -> bool:
    return filename == __file__ or any(part in filename for part in _PLUMBING)


_PLUMBING = ("/anyio/", "/asyncio/", "/concurrent/futures/", "/threading.py")


class _ThreadCall:
    """A sync handler's call in a worker thread: whether it began and whether it returned."""

    __slots__ = ("deadline", "finished", "started")

    def __init__(self) -> None:
        self.started = self.finished = False
        self.deadline = 0.0  # time.monotonic() when its timeout passes

    def run(self, handler: Callable[..., Any], payload: Any, context: LambdaContext) -> Any:
        self.started = True
        try:
            return handler(payload, context)
        finally:
            self.finished = True


# Calls whose invocation ended (timed out or cancelled) while the handler still ran in its
# thread, which nobody can kill; kept until they return.
_abandoned: set[_ThreadCall] = set()
_abandoned_lock = threading.Lock()


def _running_abandoned() -> list[_ThreadCall]:
    with _abandoned_lock:
        _abandoned.difference_update([call for call in _abandoned if call.finished])
        return list(_abandoned)


def overdue_handler_threads(at: float | None = None) -> int:
    """How many sync handlers still run in their threads past their timeout (at ``at``, a
    ``time.monotonic()``; default now): the threads an exiting daemon would wait for."""
    at = time.monotonic() if at is None else at
    return sum(1 for call in _running_abandoned() if call.deadline <= at)


def abandoned_handlers_deadline() -> float | None:
    """When (``time.monotonic()``) every handler still running after its invocation ended will
    be past its timeout; None when there is none."""
    return max((call.deadline for call in _running_abandoned()), default=None)


class CallableFunction:
    """A Python callable declared as a function."""

    def __init__(
        self,
        handler: Callable[[Any, LambdaContext], Any],
        *,
        name: str,
        timeout: float = 3.0,
        memory_size: int = 128,
        arn: str | None = None,
        input: HandlerInput = "event",
        max_threads: int = 64,
    ) -> None:
        self.handler = handler
        self.name = name
        self.timeout = float(timeout)
        self.memory_size = memory_size
        self.arn = arn or f"arn:aws:lambda:us-east-1:000000000000:function:{name}"
        self.input: HandlerInput = input
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004  # async callable objects
        )
        self._threads = anyio.CapacityLimiter(max_threads)
        self.enforces_timeout = True  # invoke() never outlives ``timeout``

    async def invoke(self, payload: Any) -> InvokeResult:
        request_id = str(uuid.uuid4())
        context = LambdaContext(self.name, self.arn, self.memory_size, self.timeout, request_id)
        started = time.monotonic()
        result = InvokeResult(request_id)
        call: _ThreadCall | None = None
        try:
            # asyncio's own timeout: a third of anyio.fail_after's cost, paid once per batch
            async with asyncio.timeout(self.timeout):
                if self._is_async:
                    value = await self.handler(payload, context)
                else:
                    call = _ThreadCall()
                    value = await anyio.to_thread.run_sync(
                        call.run,
                        self.handler,
                        payload,
                        context,
                        limiter=self._threads,
                        abandon_on_cancel=True,
                    )
                if inspect.isawaitable(value):  # a sync wrapper around a coroutine
                    value = await value
        except TimeoutError:
            result.error_type = "Unhandled"
            result.error_message = f"Task timed out after {self.timeout:.2f} seconds"
        except Exception as exc:
            result.error_type = "Unhandled"
            result.error_message = f"{type(exc).__name__}: {exc}"
            result.stack_trace = _handler_frames(exc)
        except (SystemExit, KeyboardInterrupt) as exc:
            # a handler calling sys.exit() ends Lambda's runtime, not the daemon
            result.error_type = "Runtime.ExitError"
            result.error_message = f"{type(exc).__name__}: {exc}"
            result.stack_trace = _handler_frames(exc)
        else:
            marshal_error = _marshal_error(value)
            if marshal_error is not None:  # Lambda fails a response it cannot serialize
                result.error_type = "Runtime.MarshalError"
                result.error_message = f"Unable to marshal response: {marshal_error}"
            result.payload = value
        finally:
            if call is not None and call.started and not call.finished:  # timed out, cancelled
                call.deadline = started + self.timeout
                with _abandoned_lock:
                    _abandoned.add(call)
        result.duration = time.monotonic() - started
        return result

    def __repr__(self) -> str:
        return f"CallableFunction({self.name!r}, timeout={self.timeout})"
