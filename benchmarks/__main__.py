"""``python -m benchmarks [NAME] [options]``; no name runs them all (names: ``BENCHMARKS``).

``--quick`` and ``--full`` pass through to each benchmark. Results go to benchmarks/results/.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

BENCHMARKS = (
    "throughput",
    "latency",
    "idle",
    "pipeline",
    "kpl",
    "efo",
    "targets",
    "environments",
    "fleet",
)
_SHARED_FLAGS = {"--quick", "--full"}


def _entry(name: str) -> Callable[..., Any] | None:
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"benchmarks.{name}":
            return None  # not written yet (pipeline is another module's)
        raise
    entry = getattr(module, "main", None)
    return entry if callable(entry) else None


def _call(name: str, argv: list[str]) -> None:
    entry = _entry(name)
    if entry is None:
        print(f"benchmarks: {name}: benchmarks/{name}.py has no main(); skipped", file=sys.stderr)
        return
    accepts = inspect.signature(entry).parameters
    if accepts:
        entry(argv)
    else:
        entry()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if args and args[0] in BENCHMARKS:
        _call(args[0], args[1:])
        return 0
    if args and not args[0].startswith("-"):
        print(f"unknown benchmark {args[0]!r}; choose from {', '.join(BENCHMARKS)}")
        return 2
    shared = [a for a in args if a in _SHARED_FLAGS]
    for name in BENCHMARKS:
        _call(name, shared)
    return 0


if __name__ == "__main__":
    sys.exit(main())
