"""Which settings this build implements: the rest are refused clearly, not ignored."""

from __future__ import annotations

import json

from ._errors import NotSupportedYetError
from ._mapping import EventSourceMappingConfig

__all__ = ["unsupported_features"]


def unsupported_features(cfg: EventSourceMappingConfig, supported: frozenset[str]) -> None:
    """Raise NotSupportedYetError naming the first setting that differs from Lambda's default
    and whose feature (its parameter's name) is not in ``supported``."""
    filters = cfg.filter_criteria.filters if cfg.filter_criteria else ()
    settings: dict[str, tuple[object, object]] = {
        "parallelization_factor": (cfg.parallelization_factor, 1),
        "maximum_retry_attempts": (cfg.maximum_retry_attempts, -1),
        "maximum_record_age_in_seconds": (cfg.maximum_record_age_in_seconds, -1),
        "bisect_batch_on_function_error": (cfg.bisect_batch_on_function_error, False),
        "function_response_types": (list(cfg.function_response_types), []),
        "destination_config": (cfg.destination_config.on_failure.destination, None),
        "tumbling_window_in_seconds": (cfg.tumbling_window_in_seconds, 0),
        "filter_criteria": ([f.pattern for f in filters], []),
        "consumer_arn": (cfg.consumer_arn, None),
    }
    for feature, (value, default) in settings.items():
        if value != default and feature not in supported:
            listed = ", ".join(sorted(supported)) or "none yet"
            message = f"{feature} = {json.dumps(value)} is valid but not supported yet by kinesis-esm (supported: {listed})"  # noqa: E501
            raise NotSupportedYetError(message, parameter=feature)
