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
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.to_thread
import orjson

from ..events._lambda import LambdaContext

__all__ = ["CallableFunction", "InvokeResult"]

HandlerInput = Literal["event", "records"]


@dataclass(slots=True)
class InvokeResult:
    """The outcome of one invocation, shaped like Lambda's Invoke response."""

    request_id: str
    payload: Any = None
    error_type: str | None = None  # set on a function error: "Unhandled", "Runtime.MarshalError"
    error_message: str | None = None
    duration: float = 0.0

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
        try:
            # asyncio's own timeout: a third of anyio.fail_after's cost, paid once per batch
            async with asyncio.timeout(self.timeout):
                if self._is_async:
                    value = await self.handler(payload, context)
                else:
                    value = await anyio.to_thread.run_sync(
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
        except (SystemExit, KeyboardInterrupt) as exc:
            # a handler calling sys.exit() ends Lambda's runtime, not the daemon
            result.error_type = "Runtime.ExitError"
            result.error_message = f"{type(exc).__name__}: {exc}"
        else:
            marshal_error = _marshal_error(value)
            if marshal_error is not None:  # Lambda fails a response it cannot serialize
                result.error_type = "Runtime.MarshalError"
                result.error_message = f"Unable to marshal response: {marshal_error}"
            result.payload = value
        result.duration = time.monotonic() - started
        return result

    def __repr__(self) -> str:
        return f"CallableFunction({self.name!r}, timeout={self.timeout})"
