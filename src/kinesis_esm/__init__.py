"""kinesis-esm: AWS Lambda's Kinesis event source mapping as an asyncio library and daemon.

Embedding::

    async with kinesis_esm.Engine(kinesis=KinesisConfig(endpoint_url=...)) as engine:
        await engine.add_mapping(EventSourceMappingConfig(...), handler)
"""

from ._errors import FunctionError, KinesisESMError, SourceError
from ._statistics import EngineStatistics, MappingCounters, MappingStatistics, ShardStatistics
from .config import (
    ConfigError,
    DaemonConfig,
    DestinationConfig,
    EventSourceMappingConfig,
    Filter,
    FilterCriteria,
    FunctionConfig,
    KinesisConfig,
    NotSupportedYetError,
    OnFailure,
    StateConfig,
    load_config,
    stable_uuid,
)
from .engine import Engine
from .engine._gc import tune_gc
from .events._lambda import build_event
from .events._record import Record
from .functions import CallableFunction, InvokeResult, LambdaContext
from .pipeline._settings import PollSettings, RetrySettings
from .source import KinesisSource, MemoryStream
from .state import MemoryCheckpointStore, SQLiteCheckpointStore

__version__ = "0.1.0"

__all__ = (
    "CallableFunction",
    "ConfigError",
    "DaemonConfig",
    "DestinationConfig",
    "Engine",
    "EngineStatistics",
    "EventSourceMappingConfig",
    "Filter",
    "FilterCriteria",
    "FunctionConfig",
    "FunctionError",
    "InvokeResult",
    "KinesisConfig",
    "KinesisESMError",
    "KinesisSource",
    "LambdaContext",
    "MappingCounters",
    "MappingStatistics",
    "MemoryCheckpointStore",
    "MemoryStream",
    "NotSupportedYetError",
    "OnFailure",
    "PollSettings",
    "Record",
    "RetrySettings",
    "SQLiteCheckpointStore",
    "ShardStatistics",
    "SourceError",
    "StateConfig",
    "__version__",
    "build_event",
    "load_config",
    "stable_uuid",
    "tune_gc",
)
