"""A function's execution environments: warm ones reused, new ones started on demand, lost
ones replaced with back-off, and a clean stop.

Each invocation takes an idle environment (the most recently used, so the warm ones stay warm),
or starts one if the function has fewer than ``max_environments`` (0: no cap, so the count
follows the peak of concurrent invocations, which for a mapping is its lanes: shards x factor,
like Lambda's scaling), or waits for one to come back. An environment serves one invocation at
a time; a lane awaits each invocation, so it never holds two.

An environment that crashed, timed out or ran out of memory is discarded; the next start waits
out a back-off (0.1 s doubling to 5 s) while failures follow one another, reset by the first
invocation that returns from a live environment, so a handler that kills its process on every
batch cannot make the daemon spin.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from ._callable import InvokeResult
from ._sandbox import Environment, EnvironmentUnavailableError, InitError, Invocation

__all__ = ["EnvironmentPool", "EnvironmentStatistics", "SpawnBackoff"]

STOP_BOUND = 10.0  # seconds to stop all environments, beyond each one's own bounds


@dataclass(frozen=True, slots=True)
class EnvironmentStatistics:
    """A function's environments now, and counters since it was created."""

    environments: int  # alive: idle or busy
    busy: int  # running an invocation
    starting: int  # in init
    inits: int  # successful inits
    init_errors: int
    init_seconds: float  # total of the successful inits
    last_init_seconds: float | None
    invocations: int  # handed to an environment
    crashes: int
    timeouts: int
    out_of_memory: int
    replacements: int  # environments started in place of a lost one
    last_init_error: InitError | None  # None once an init succeeds again


class SpawnBackoff:
    """Delay before starting an environment after consecutive failures (pure: time passed in)."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self.not_before = -math.inf

    def failed(self, now: float) -> None:
        self.failures += 1
        delay = min(self.cap, self.base * 2 ** (self.failures - 1))
        self.not_before = now + delay

    def succeeded(self) -> None:
        self.failures = 0
        self.not_before = -math.inf

    def wait(self, now: float) -> float:
        return max(0.0, self.not_before - now)


class EnvironmentPool:
    def __init__(
        self,
        factory: Callable[[int], Environment],
        *,
        name: str,
        max_environments: int,
        logger: logging.Logger,
        stop_grace: float,
    ) -> None:
        if max_environments < 0:
            raise ValueError(
                f"max_environments: {max_environments} is not allowed; use 0 (one environment "
                "per concurrent invocation) or a positive cap"
            )
        self._factory = factory
        self.name = name
        self._max = max_environments
        self.log = logger
        self.stop_grace = stop_grace  # the longest an in-flight invocation can still take
        self.backoff = SpawnBackoff()
        self._idle: list[Environment] = []
        self._all: set[Environment] = set()
        self._count = 0  # alive or starting: what max_environments caps
        self._busy = 0
        self._starting = 0
        self._numbers = 0
        self._lost = 0  # lost environments not replaced yet
        self._changed = anyio.Event()
        self._closed = False
        self._inits = 0
        self._init_errors = 0
        self._init_seconds = 0.0
        self._last_init_seconds: float | None = None
        self._last_init_error: InitError | None = None
        self._invocations = 0
        self._failures = {"crash": 0, "timeout": 0, "out_of_memory": 0}
        self._replacements = 0

    @property
    def max_environments(self) -> int:
        return self._max

    @max_environments.setter
    def max_environments(self, value: int) -> None:
        """The cap can change while running (a mapping's concurrency grows with its shards)."""
        if value < 0:
            raise ValueError(f"max_environments: {value} is not allowed; use 0 or more")
        self._max = value
        self._notify()

    @property
    def last_init_error(self) -> InitError | None:
        return self._last_init_error

    def statistics(self) -> EnvironmentStatistics:
        return EnvironmentStatistics(
            environments=self._count - self._starting,
            busy=self._busy,
            starting=self._starting,
            inits=self._inits,
            init_errors=self._init_errors,
            init_seconds=self._init_seconds,
            last_init_seconds=self._last_init_seconds,
            invocations=self._invocations,
            crashes=self._failures["crash"],
            timeouts=self._failures["timeout"],
            out_of_memory=self._failures["out_of_memory"],
            replacements=self._replacements,
            last_init_error=self._last_init_error,
        )

    async def invoke(self, invocation: Invocation) -> InvokeResult:
        while True:
            if self._closed:
                raise EnvironmentUnavailableError(f"function {self.name!r} is stopping")
            environment = self._idle.pop() if self._idle else await self._obtain(invocation)
            if isinstance(environment, InvokeResult):
                return environment  # its init failed: a function error, as on Lambda
            if environment.alive:
                break
            await self._lose(environment)  # it died while idle (a thread of its own ended it)
        self._busy += 1
        self._invocations += 1
        try:
            result = await environment.invoke(invocation)
        finally:
            self._busy -= 1
            await self._give_back(environment)
        return result

    async def _obtain(self, invocation: Invocation) -> Environment | InvokeResult:
        while True:
            if self._closed:
                raise EnvironmentUnavailableError(f"function {self.name!r} is stopping")
            if self._idle:
                return self._idle.pop()
            if self._max == 0 or self._count < self._max:
                return await self._start(invocation)
            changed = self._changed
            await changed.wait()

    async def _start(self, invocation: Invocation) -> Environment | InvokeResult:
        self._count += 1
        self._starting += 1
        try:
            delay = self.backoff.wait(time.monotonic())
            if delay > 0:
                await anyio.sleep(delay)
                if self._closed:
                    raise EnvironmentUnavailableError(f"function {self.name!r} is stopping")
            self._numbers += 1
            environment = self._factory(self._numbers)
            self._all.add(environment)
            if self._lost > 0:
                self._lost -= 1
                self._replacements += 1
            started = time.monotonic()
            try:
                error = await environment.start()
            except BaseException:
                await self._discard(environment)
                raise
        except BaseException:
            self._count -= 1
            self._notify()
            raise
        finally:
            self._starting -= 1
        if error is not None:
            self._count -= 1
            self._init_errors += 1
            self._last_init_error = error
            self._lost += 1
            self.backoff.failed(time.monotonic())
            self.log.warning(
                "function %s: environment %d failed to init: %s: %s",
                self.name,
                environment.number,
                error.error_type,
                error.message,
            )
            await self._discard(environment)
            self._notify()
            document = {
                "errorType": error.error_type,
                "errorMessage": error.message,
                "stackTrace": list(error.stack_trace),
            }
            return InvokeResult(
                invocation.request_id, document, error.error_type, error.message, 0.0
            )
        seconds = time.monotonic() - started
        self._inits += 1
        self._init_seconds += seconds
        self._last_init_seconds = seconds
        self._last_init_error = None
        return environment

    async def _give_back(self, environment: Environment) -> None:
        if environment.failure is not None or not environment.alive:
            await self._lose(environment)
            return
        self.backoff.succeeded()
        if self._closed or (self._max and self._count > self._max):
            self._count -= 1
            await self._discard(environment)
        else:
            self._idle.append(environment)
        self._notify()

    async def _lose(self, environment: Environment) -> None:
        failure = environment.failure or "crash"  # no failure noted: it ended between calls
        self._count -= 1
        self._lost += 1
        self._failures[failure] += 1
        self.backoff.failed(time.monotonic())
        self.log.warning(
            "function %s: environment %d lost (%s); it will be replaced",
            self.name,
            environment.number,
            failure,
        )
        await self._discard(environment)
        self._notify()

    async def _discard(self, environment: Environment) -> None:
        self._all.discard(environment)
        with anyio.move_on_after(STOP_BOUND, shield=True):
            await environment.stop()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def aclose(self) -> None:
        """Stop taking invocations, let those in flight finish (each is bounded by the function
        timeout), then stop every environment."""
        self._closed = True
        self._notify()
        with anyio.move_on_after(self.stop_grace):
            while self._busy or self._starting:
                changed = self._changed
                await changed.wait()
        for environment in list(self._all):
            if environment not in self._idle:
                environment.kill()  # still busy past its bound: end it
        idle, self._idle = self._idle, []
        self._count -= len(idle)
        async with anyio.create_task_group() as group:
            for environment in idle:
                group.start_soon(self._discard, environment)
