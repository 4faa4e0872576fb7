"""Functions the mappings invoke."""

from ._callable import CallableFunction, InvokeResult
from ._loader import load_handler
from ._protocol import Function

__all__ = ("CallableFunction", "Function", "InvokeResult", "load_handler")
