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

An environment idle for ``idle_timeout`` s is reclaimed (stopped as at shutdown), the least
recently used first, keeping ``min_environments`` alive (``_reclaim`` decides). One reaper task
per pool, started with the first idle environment and ended by ``aclose()``, sleeps until the
next one can expire (a mapping only invokes and closes its function: no task group to host it).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from ._callable import InvokeResult
from ._reclaim import next_reclaim, reclaimable
from ._sandbox import Environment, EnvironmentUnavailableError, InitError, Invocation

__all__ = [
    "IDLE_TIMEOUT",
    "INIT_BUCKETS",
    "MIN_ENVIRONMENTS",
    "EnvironmentPool",
    "EnvironmentStatistics",
    "SpawnBackoff",
]

STOP_BOUND = 10.0  # seconds to stop all environments, beyond each one's own bounds
IDLE_TIMEOUT = 300.0  # seconds idle before an environment is reclaimed (0: never)
MIN_ENVIRONMENTS = 1  # kept whatever their idle time: a quiet stream pays no init per batch
INIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # upper bounds, seconds


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
    started: int = 0  # environments started (each one's init ran or was tried)
    reclaimed: int = 0  # closed after idle_timeout
    init_buckets: tuple[int, ...] = (0,) * (len(INIT_BUCKETS) + 1)  # per bound, then above


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
        idle_timeout: float = IDLE_TIMEOUT,
        min_environments: int = MIN_ENVIRONMENTS,
    ) -> None:
        if max_environments < 0:
            raise ValueError(
                f"max_environments: {max_environments} is not allowed; use 0 (one environment "
                "per concurrent invocation) or a positive cap"
            )
        if idle_timeout < 0 or min_environments < 0:
            raise ValueError(f"idle_timeout {idle_timeout}, min_environments {min_environments}")
        self._factory = factory
        self.name = name
        self._max = max_environments
        self.log = logger
        self.stop_grace = stop_grace  # the longest an in-flight invocation can still take
        self.backoff = SpawnBackoff()
        self._idle: list[Environment] = []  # the most recently used last
        self._idle_since: list[float] = []  # when each of _idle went idle (monotonic)
        self.idle_timeout = idle_timeout
        self.min_environments = min_environments
        self._reclaimed = 0
        self._reaper: asyncio.Task[None] | None = None
        self._reaper_scope: anyio.CancelScope | None = None  # made on the loop, with the task
        self._reaper_done = anyio.Event()
        self._reaper_wake = anyio.Event()  # set when an environment goes idle
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
        self._init_buckets = [0] * (len(INIT_BUCKETS) + 1)
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
            started=self._numbers,
            reclaimed=self._reclaimed,
            init_buckets=tuple(self._init_buckets),
        )

    async def invoke(self, invocation: Invocation) -> InvokeResult:
        while True:
            if self._closed:
                raise EnvironmentUnavailableError(f"function {self.name!r} is stopping")
            environment = self._take_idle() if self._idle else await self._obtain(invocation)
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
                return self._take_idle()
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
        self._init_buckets[bisect.bisect_left(INIT_BUCKETS, seconds)] += 1
        self._last_init_error = None
        return environment

    def _take_idle(self) -> Environment:
        """The most recently used idle environment; once taken, the reaper cannot pick it."""
        self._idle_since.pop()
        return self._idle.pop()

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
            self._idle_since.append(time.monotonic())
            self._reaper_wake.set()
            if self._reaper is None and self.idle_timeout > 0:
                self._reaper_scope = scope = anyio.CancelScope()
                self._reaper = asyncio.get_running_loop().create_task(self._reap(scope))
        self._notify()

    async def _lose(self, environment: Environment) -> None:
        failure = environment.failure or "crash"  # no failure noted: it ended between calls
        self._count -= 1
        self._lost += 1
        self._failures[failure] += 1
        self.backoff.failed(time.monotonic())
        message = "function %s: environment %d lost (%s); it will be replaced"
        self.log.warning(message, self.name, environment.number, failure)
        await self._discard(environment)
        self._notify()

    async def _discard(self, environment: Environment) -> None:
        self._all.discard(environment)
        with anyio.move_on_after(STOP_BOUND, shield=True):
            await environment.stop()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _reap(self, scope: anyio.CancelScope) -> None:
        """Close environments idle past ``idle_timeout``, until the pool closes."""
        try:
            with scope:
                while not self._closed:
                    self._reaper_wake = anyio.Event()
                    if await self._reclaim_expired():
                        continue
                    due = next_reclaim(
                        self._idle_since,
                        busy=self._busy,
                        timeout=self.idle_timeout,
                        minimum=self.min_environments,
                    )
                    if due is None:  # nothing can expire until an environment goes idle
                        await self._reaper_wake.wait()
                    else:  # one going idle meanwhile expires later: no need to wake for it
                        await anyio.sleep(max(0.0, due - time.monotonic()))
        except Exception:  # a bug here must not go unseen; invocations are unaffected
            self.log.exception("function %s: reclaiming idle environments failed", self.name)
        finally:
            self._reaper_done.set()

    async def _reclaim_expired(self) -> int:
        now = time.monotonic()
        chosen = reclaimable(
            self._idle_since,
            busy=self._busy,
            now=now,
            timeout=self.idle_timeout,
            minimum=self.min_environments,
        )
        if not chosen:
            return 0
        # Taken out of the idle list before any await: no invocation can take them now.
        victims = [(self._idle[i], now - self._idle_since[i]) for i in chosen]
        for i in sorted(chosen, reverse=True):
            del self._idle[i]
            del self._idle_since[i]
        self._count -= len(victims)
        self._notify()  # room under the cap
        for environment, idle in victims:
            if environment.alive:
                self._reclaimed += 1
                message = "function %s: environment %d reclaimed after %.0f s idle"
                self.log.info(message, self.name, environment.number, idle)
            else:  # it ended while idle: lost, as the next invocation would have found it
                self._failures[environment.failure or "crash"] += 1
                self._lost += 1
        async with anyio.create_task_group() as group:
            for environment, _ in victims:
                group.start_soon(self._discard, environment)  # shielded: as at shutdown
        return len(victims)

    async def aclose(self) -> None:
        """Stop taking invocations, let those in flight finish (each is bounded by the function
        timeout), then stop every environment."""
        self._closed = True
        self._notify()
        reaper, self._reaper = self._reaper, None
        if reaper is not None and self._reaper_scope is not None:
            self._reaper_scope.cancel()  # it finishes the stops it began (shielded), then ends
            await self._reaper_done.wait()
        with anyio.move_on_after(self.stop_grace):
            while self._busy or self._starting:
                changed = self._changed
                await changed.wait()
        for environment in list(self._all):
            if environment not in self._idle:
                environment.kill()  # still busy past its bound: end it
        idle, self._idle, self._idle_since = self._idle, [], []
        self._count -= len(idle)
        async with anyio.create_task_group() as group:
            for environment in idle:
                group.start_soon(self._discard, environment)
