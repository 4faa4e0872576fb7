"""Functions the mappings invoke, all behind the ``Function`` protocol: Python callables in the
daemon (``CallableFunction``), worker-process environments (``ProcessFunction``), any runtime
speaking Lambda's Runtime API (``RuntimeFunction``), real Lambda functions
(``LambdaInvokeFunction``) and HTTP endpoints (``HttpFunction``)."""

from ._callable import CallableFunction, InvokeResult
from ._context import LambdaContext
from ._environments import EnvironmentStatistics, InitError, ProcessFunction, RuntimeFunction
from ._http import HttpFunction
from ._lambda import InvokeError, LambdaInvokeFunction
from ._loader import load_handler
from ._protocol import Function

__all__ = (
    "CallableFunction",
    "EnvironmentStatistics",
    "Function",
    "HttpFunction",
    "InitError",
    "InvokeError",
    "InvokeResult",
    "LambdaContext",
    "LambdaInvokeFunction",
    "ProcessFunction",
    "RuntimeFunction",
    "load_handler",
)
