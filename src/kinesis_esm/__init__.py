"""kinesis-esm: AWS Lambda's Kinesis event source mapping as an asyncio library and daemon.

Embedding::

    async with kinesis_esm.Engine(kinesis=KinesisConfig(endpoint_url=...)) as engine:
        await engine.add_mapping(EventSourceMappingConfig(...), handler)
"""

from ._config import (
    ConfigError,
    DestinationConfig,
    EventSourceMappingConfig,
    Filter,
    FilterCriteria,
    NotSupportedYetError,
    OnFailure,
    stable_uuid,
)
from ._config_daemon import DaemonConfig, FunctionConfig, KinesisConfig, StateConfig
from ._config_file import load_config
from ._engine import Engine
from ._errors import FunctionError, KinesisESMError, SourceError
from ._events import LambdaContext, build_event
from ._gc import tune_gc
from ._records import Record
from ._settings import PollSettings, RetrySettings
from ._statistics import EngineStatistics, MappingCounters, MappingStatistics, ShardStatistics
from .functions import CallableFunction, InvokeResult
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
