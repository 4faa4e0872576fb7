"""Python callables as Lambda functions: ``handler(event, context)``, sync or async.

A sync handler runs in a worker thread, so it never blocks the event loop. The timeout is
enforced: an async handler is cancelled; a sync handler's thread cannot be killed, so it is
abandoned (it finishes in the background) and the invocation counts as timed out.
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.to_thread
import orjson

from .._events import LambdaContext

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

    async def invoke(self, payload: Any) -> InvokeResult:
        request_id = str(uuid.uuid4())
        context = LambdaContext(self.name, self.arn, self.memory_size, self.timeout, request_id)
        started = time.monotonic()
        result = InvokeResult(request_id)
        try:
            with anyio.fail_after(self.timeout):
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
        else:
            if value is not None:
                try:  # Lambda fails a response it cannot serialize
                    orjson.dumps(value)
                except TypeError as exc:
                    result.error_type = "Runtime.MarshalError"
                    result.error_message = f"Unable to marshal response: {exc}"
            result.payload = value
        result.duration = time.monotonic() - started
        return result

    def __repr__(self) -> str:
        return f"CallableFunction({self.name!r}, timeout={self.timeout})"
