"""The functions a daemon may invoke: only those declared in its config file. Resolving a name
or ARN from API input to a declared function, loading its handler once, and building the
``Function`` a mapping invokes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..config import INVALID_PARAMETER_VALUE, DaemonConfig, EventSourceMappingConfig, FunctionConfig
from ..functions import CallableFunction, Function, load_handler
from ._model import RESOURCE_NOT_FOUND, MappingError, function_arn

__all__ = ["DeclaredFunctions"]


class DeclaredFunctions:
    """``handlers`` replace importing the declared handlers (embedding, tests)."""

    def __init__(
        self, config: DaemonConfig, handlers: Mapping[str, Callable[..., Any]] | None = None
    ) -> None:
        self.config = config
        self._handlers: dict[str, Callable[..., Any]] = dict(handlers or {})

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
        """The handler of a declared function, imported once."""
        handler = self._handlers.get(fn.name)
        if handler is None:
            try:
                handler = load_handler(fn.handler, function_name=fn.name)
            except ImportError as exc:
                raise MappingError(INVALID_PARAMETER_VALUE, str(exc)) from None
            self._handlers[fn.name] = handler
        return handler

    def build(self, fn: FunctionConfig, arn: str) -> Function:
        """The function object a mapping invokes."""
        return CallableFunction(
            self.handler(fn),
            name=fn.name,
            timeout=fn.timeout,
            memory_size=fn.memory_size,
            arn=arn,
        )
