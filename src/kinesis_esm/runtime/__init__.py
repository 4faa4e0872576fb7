"""The mapping lifecycle over the engine: Lambda's states, live changes, persistence and
reconcile with the config file. The control plane drives it; it knows nothing of HTTP."""

from ._model import MappingError, MappingStatus, MappingView
from ._runtime import Runtime

__all__ = ("MappingError", "MappingStatus", "MappingView", "Runtime")
