"""Settings: a mapping's parameters with Lambda's names, ranges, defaults and messages; the
daemon's own settings; the TOML loader. Pure: nothing here does I/O but reading the file."""

from ._arn import stable_uuid
from ._coordination import CoordinationConfig
from ._criteria import Filter, FilterCriteria
from ._daemon import ControlConfig, DaemonConfig, FunctionConfig, KinesisConfig, StateConfig
from ._errors import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_CONFLICT,
    VALIDATION,
    ConfigError,
    NotSupportedYetError,
)
from ._features import unsupported_features
from ._file import load_config, parse_config
from ._mapping import DestinationConfig, EventSourceMappingConfig, OnFailure

__all__ = (
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_CONFLICT",
    "VALIDATION",
    "ConfigError",
    "ControlConfig",
    "CoordinationConfig",
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
