"""Import a handler named ``package.module:attribute``, with the working directory on the path.

Only handlers declared in the config file are ever loaded; nothing from API input.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["HandlerLoadError", "find_handler", "load_handler"]


class HandlerLoadError(ImportError):
    pass


def _module_name(spec: str, function_name: str) -> tuple[str, str]:
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise HandlerLoadError(
            f"function {function_name!r}: handler {spec!r} must look like 'package.module:function'"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return module_name, attr_path


def find_handler(spec: str, *, function_name: str) -> None:
    """Check that the handler's module can be found, without importing it (for handlers that
    run in environments of their own, which import it themselves)."""
    module_name, _ = _module_name(spec, function_name)
    try:
        found = importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise HandlerLoadError(
            f"function {function_name!r}: cannot import module {module_name!r}: not found "
            f"(working directory {os.getcwd()})"
        )


def load_handler(spec: str, *, function_name: str) -> Callable[..., Any]:
    module_name, attr_path = _module_name(spec, function_name)
    cwd = os.getcwd()
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise HandlerLoadError(
            f"function {function_name!r}: cannot import module {module_name!r} "
            f"(working directory {cwd}): {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerLoadError(
                f"function {function_name!r}: module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if not callable(target):
        raise HandlerLoadError(f"function {function_name!r}: {spec!r} is not callable")
    return target  # type: ignore[no-any-return]
