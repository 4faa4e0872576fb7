"""Running mappings: the engine (many mappings in one process, ``async with``) and the mapping
runner (shard discovery, parent before child, start positions)."""

from ._engine import SUPPORTED_FEATURES, Engine
from ._gc import tune_gc
from ._mapping import MappingRunner

__all__ = ("SUPPORTED_FEATURES", "Engine", "MappingRunner", "tune_gc")
