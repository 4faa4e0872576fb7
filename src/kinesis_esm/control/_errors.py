"""The control plane's refusal of a request, with Lambda's error code (``_wire`` renders it)."""

from __future__ import annotations

__all__ = ["WireError"]


class WireError(Exception):
    """A request refused before it reaches the runtime: ``code`` is Lambda's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message
