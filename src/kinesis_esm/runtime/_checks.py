"""Checks a mapping change must pass before the runtime applies it, with Lambda's errors."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..config import (
    INVALID_PARAMETER_VALUE,
    ConfigError,
    EventSourceMappingConfig,
    unsupported_features,
)
from ..engine import SUPPORTED_FEATURES
from ._model import RESOURCE_CONFLICT, MappingError, MappingRecord
from ._references import canonical_arn

__all__ = [
    "check_capacity",
    "check_conflict",
    "check_supported",
    "config_error",
    "duplicate_message",
]

SERVICE_QUOTA_EXCEEDED = "ServiceQuotaExceededException"


def config_error(err: ConfigError) -> MappingError:
    """Lambda's own texts as they are; ours name the parameter (Lambda's spelling) and hint."""
    message = err.message
    if message[:1].isupper() or message.startswith("1 validation error"):
        return MappingError(err.code, message)
    parameter = re.sub(r"(?:^|_|(?<=\.))([a-z])", lambda m: m.group(1).upper(), err.parameter)
    hint = f" ({err.hint})" if err.hint else ""
    return MappingError(err.code, f"{parameter}: {message}{hint}")


def duplicate_message(event_source_arn: str, function_name: str, uuid: str) -> str:
    """Lambda's ResourceConflictException text for a second mapping of one function+stream
    (also the fleet registry's, runtime/_fleet_sync)."""
    return (
        f'The event source arn (" {event_source_arn} ") and function (" {function_name} ") '
        "provided mapping already exists. Please update or delete the existing mapping with "
        f"UUID {uuid}"
    )


def check_conflict(
    mappings: Iterable[MappingRecord], config: EventSourceMappingConfig, arn: str, uuid: str | None
) -> None:
    """Lambda's ResourceConflictException: one mapping per (function, event source). Functions
    are compared canonically: ``rec`` and ``rec:$LATEST`` are one function."""
    wanted = (canonical_arn(arn), config.event_source_arn)
    for other in mappings:
        same = (canonical_arn(other.function_arn), other.config.event_source_arn) == wanted
        if same and other.uuid != uuid and other.pending != "Deleting":
            message = duplicate_message(config.event_source_arn, config.function_name, other.uuid)
            raise MappingError(RESOURCE_CONFLICT, message)


def check_supported(config: EventSourceMappingConfig) -> None:
    try:
        unsupported_features(config, SUPPORTED_FEATURES)
    except ConfigError as err:
        raise MappingError(INVALID_PARAMETER_VALUE, err.message) from None


def check_capacity(mappings: Iterable[MappingRecord], limit: int) -> None:
    """``[control] max_mappings``: Lambda's quota error (402) once the daemon holds that many."""
    held = sum(1 for m in mappings if m.pending != "Deleting")
    if held >= limit:
        message = (
            f"The request would exceed a service quota: this daemon holds {held} event source "
            f"mappings, the most [control] max_mappings ({limit}) allows. Delete one, or raise "
            "max_mappings in the config file."
        )
        raise MappingError(SERVICE_QUOTA_EXCEEDED, message)
