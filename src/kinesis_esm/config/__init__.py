"""Settings: a mapping's parameters with Lambda's names, ranges, defaults and messages; the
daemon's own settings; the TOML loader. Pure: nothing here does I/O but reading the file."""

from ._daemon import ControlConfig, DaemonConfig, FunctionConfig, KinesisConfig, StateConfig
from ._file import load_config, parse_config
from ._mapping import (
    ConfigError,
    DestinationConfig,
    EventSourceMappingConfig,
    Filter,
    FilterCriteria,
    NotSupportedYetError,
    OnFailure,
    stable_uuid,
    unsupported_features,
)

__all__ = (
    "ConfigError",
    "ControlConfig",
    "DaemonConfig",
    "DestinationConfig",
    "EventSourceMappingConfig",
    "Filter",
    "FilterCriteria",
    "FunctionConfig",
    "KinesisConfig",
    "NotSupportedYetError",
    "OnFailure",
    "StateConfig",
    "load_config",
    "parse_config",
    "stable_uuid",
    "unsupported_features",
)
