"""The functions a daemon may invoke: only those declared in its config file. Resolving a name
or ARN from API input to a declared function, loading its handler once, and building the
``Function`` a mapping invokes; the figures of the execution environments built (/metrics)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from ..config import (
    INVALID_PARAMETER_VALUE,
    ConfigError,
    DaemonConfig,
    EventSourceMappingConfig,
    FunctionConfig,
)
from ..functions import (
    CallableFunction,
    EnvironmentStatistics,
    Function,
    HttpFunction,
    LambdaInvokeFunction,
    ProcessFunction,
    RuntimeFunction,
    load_handler,
)
from ..functions._loader import find_handler
from ._model import RESOURCE_NOT_FOUND, MappingError, function_arn

__all__ = ["DeclaredFunctions"]

_LATEST = ("last_init_seconds", "last_init_error")


def _combined(a: EnvironmentStatistics, b: EnvironmentStatistics) -> EnvironmentStatistics:
    """Two pools' figures as one function's; the last init is ``b``'s when it has one."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(EnvironmentStatistics):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in _LATEST:
            values[f.name] = x if y is None else y
        elif isinstance(x, tuple):  # histogram buckets
            values[f.name] = tuple(i + j for i, j in zip(x, y, strict=True))
        else:
            values[f.name] = x + y
    return EnvironmentStatistics(**values)


class DeclaredFunctions:
    """``handlers`` replace importing the declared handlers (embedding, tests)."""

    def __init__(
        self, config: DaemonConfig, handlers: Mapping[str, Callable[..., Any]] | None = None
    ) -> None:
        self.config = config
        self._handlers: dict[str, Callable[..., Any]] = dict(handlers or {})
        self._environments: list[ProcessFunction | RuntimeFunction] = []  # built, not closed
        self._retired: dict[str, EnvironmentStatistics] = {}  # totals of the closed ones

    def environment_statistics(self) -> dict[str, EnvironmentStatistics]:
        """Per declared function, the figures of its execution environments over all its
        mappings (each has a pool of its own). A closed pool's counters stay in the totals, so
        they never go back when a mapping restarts. Cheap: counters, read when called."""
        self._retire()
        totals = dict(self._retired)
        for function in self._environments:
            stats = function.statistics()
            known = totals.get(function.name)
            totals[function.name] = stats if known is None else _combined(known, stats)
        return totals

    def _retire(self) -> None:
        for function in [f for f in self._environments if f.closed]:
            self._environments.remove(function)
            final = dataclasses.replace(function.statistics(), environments=0, busy=0, starting=0)
            known = self._retired.get(function.name)
            self._retired[function.name] = final if known is None else _combined(known, final)

    def declared(self, name: str, config: EventSourceMappingConfig | None) -> FunctionConfig:
        """The declared function ``name`` (a name or ARN) refers to; Lambda's not-found error."""
        fn = self.config.function(name)
        if fn is None:
            shown = name if config is None else function_arn(config, None)
            declared = ", ".join(sorted(f.name for f in self.config.functions)) or "none"
            message = (
                f"Function not found: {shown} (kinesis-esm runs only functions declared in its "
                f"config file; declared: {declared})"
            )
            raise MappingError(RESOURCE_NOT_FOUND, message)
        return fn

    def handler(self, fn: FunctionConfig) -> Callable[..., Any]:
        """The handler of a declared local function, imported once into the daemon."""
        handler = self._handlers.get(fn.name)
        if handler is None:
            assert fn.handler is not None  # the config requires it for the local target
            try:
                handler = load_handler(fn.handler, function_name=fn.name)
            except ImportError as exc:
                raise MappingError(INVALID_PARAMETER_VALUE, str(exc)) from None
            self._handlers[fn.name] = handler
        return handler

    def _in_daemon(self, fn: FunctionConfig) -> bool:
        """A handler given as an object, or isolation thread / none: runs in the daemon."""
        return fn.name in self._handlers or fn.effective_isolation != "process"

    def check(self, fn: FunctionConfig) -> None:
        """Refuse a function that cannot run, before a mapping is registered for it."""
        if fn.target != "local" or self._in_daemon(fn):
            if fn.target == "local":
                self.handler(fn)
            else:
                try:
                    self._build(fn, fn.arn("us-east-1", "000000000000"))  # nothing opens yet
                except ConfigError as err:
                    raise MappingError(INVALID_PARAMETER_VALUE, str(err)) from None
            return
        # process isolation: the environments import the handler; the daemon only finds it
        assert fn.handler is not None
        try:
            find_handler(fn.handler, function_name=fn.name)
        except ImportError as exc:
            raise MappingError(INVALID_PARAMETER_VALUE, str(exc)) from None

    def build(self, fn: FunctionConfig, arn: str) -> Function:
        """The function object a mapping invokes (the mapping closes it when it stops)."""
        function = self._build(fn, arn)
        if isinstance(function, (ProcessFunction, RuntimeFunction)):
            self._retire()
            self._environments.append(function)
        return function

    def _build(self, fn: FunctionConfig, arn: str) -> Function:
        if fn.target == "lambda":
            assert fn.function_name is not None
            return LambdaInvokeFunction(
                fn.function_name, name=fn.name, timeout=fn.timeout, endpoint_url=fn.endpoint_url
            )
        if fn.target == "http":
            assert fn.url is not None
            return HttpFunction(
                fn.url, name=fn.name, timeout=fn.timeout, headers=dict(fn.headers), arn=arn
            )
        environments = fn.max_environments or 0
        reclaim: dict[str, Any] = {}  # unset: the functions' defaults
        if fn.idle_timeout is not None:
            reclaim["idle_timeout"] = fn.idle_timeout
        if fn.min_environments is not None:
            reclaim["min_environments"] = fn.min_environments
        if fn.target == "runtime":
            return RuntimeFunction(
                fn.command,
                name=fn.name,
                timeout=fn.timeout,
                memory_size=fn.memory_size,
                arn=arn,
                max_environments=environments,
                handler=fn.handler,
                **reclaim,
            )
        if self._in_daemon(fn):
            return CallableFunction(
                self.handler(fn),
                name=fn.name,
                timeout=fn.timeout,
                memory_size=fn.memory_size,
                arn=arn,
            )
        assert fn.handler is not None
        return ProcessFunction(
            fn.handler,
            name=fn.name,
            timeout=fn.timeout,
            memory_size=fn.memory_size,
            arn=arn,
            max_environments=environments,
            **reclaim,
        )
