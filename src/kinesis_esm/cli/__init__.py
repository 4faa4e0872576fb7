"""The command-line entry points: ``kinesis-esm run``, ``validate``, ``demo``, ``status``."""

from ._main import main

__all__ = ("main",)
