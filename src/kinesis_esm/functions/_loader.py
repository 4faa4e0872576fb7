"""Import a handler named ``package.module:attribute``, with the working directory on the path.

Only handlers declared in the config file are ever loaded; nothing from API input.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["load_handler"]


class HandlerLoadError(ImportError):
    pass


def load_handler(spec: str, *, function_name: str) -> Callable[..., Any]:
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise HandlerLoadError(
            f"function {function_name!r}: handler {spec!r} must look like 'package.module:function'"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
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
