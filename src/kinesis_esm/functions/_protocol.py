"""What a mapping needs of a function."""

from __future__ import annotations

from typing import Any, Literal, Protocol

from ._callable import InvokeResult

__all__ = ["Function"]


class Function(Protocol):
    name: str
    arn: str
    timeout: float
    input: Literal["event", "records"]

    async def invoke(self, payload: Any) -> InvokeResult: ...
