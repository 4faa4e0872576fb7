"""Process execution environments over handler modules written to temporary folders."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from kinesis_esm.functions._environments import ProcessFunction

__all__ = ["Factory", "make"]

Factory = Callable[..., ProcessFunction]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Factory]:
    """``make(source, handler="app:handler", **options)``: a ProcessFunction over a module
    ``app`` with ``source``, in a directory of its own; closed at teardown."""
    created: list[ProcessFunction] = []

    def factory(source: str, handler: str = "app:handler", **options: Any) -> ProcessFunction:
        root = tmp_path / f"f{len(created)}"
        root.mkdir()
        (root / "app.py").write_text(textwrap.dedent(source))
        options.setdefault("timeout", 10)
        name = options.pop("name", f"fn{len(created)}")
        function = ProcessFunction(handler, name=name, task_root=root, **options)
        created.append(function)
        return function

    yield factory
    with anyio.fail_after(30):
        for function in created:
            await function.aclose()
