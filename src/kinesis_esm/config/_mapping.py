"""A mapping's settings: frozen, validated, with Lambda's names, ranges, defaults and messages.

Every value object validates itself in ``__post_init__``, so a configuration built in code meets
the same rules as one read from TOML (``parse_config`` / ``load_config``, in ``_file``). Where
each error message comes from is in ``_errors``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import uuid as _uuid
from dataclasses import dataclass
from typing import Any

from ._arn import DESTINATION, FUNCTION_NAME_PATTERN, FUNCTION_REF, KinesisArn, parse_kinesis_arn
from ._criteria import MAX_FILTERS, FilterCriteria, check_filter
from ._errors import ConfigError, _camel, _constraint, _expect, _in_range, _number

__all__ = [
    "DestinationConfig",
    "EventSourceMappingConfig",
    "OnFailure",
]

STARTING_POSITIONS = ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP")
FUNCTION_RESPONSE_TYPES = ("ReportBatchItemFailures",)
MAXDESTINATION_LENGTH = 350
# Lambda's range for each integer parameter of a Kinesis mapping (API model, DOC).
RANGES = {
    "batch_size": (1, 10000),
    "maximum_batching_window_in_seconds": (0, 300),
    "parallelization_factor": (1, 10),
    "maximum_retry_attempts": (-1, 10000),
    "maximum_record_age_in_seconds": (-1, 604800),
    "tumbling_window_in_seconds": (0, 900),
}


@dataclass(frozen=True, slots=True)
class OnFailure:
    destination: str | None = None


@dataclass(frozen=True, slots=True)
class DestinationConfig:
    on_failure: OnFailure = OnFailure()


@dataclass(frozen=True, slots=True)
class EventSourceMappingConfig:
    """One Kinesis event source mapping: Lambda's parameters, defaults and ranges."""

    function_name: str
    event_source_arn: str
    starting_position: str | None
    starting_position_timestamp: float | None = None
    batch_size: int = 100
    maximum_batching_window_in_seconds: int = 0
    enabled: bool = True
    parallelization_factor: int = 1
    maximum_retry_attempts: int = -1
    maximum_record_age_in_seconds: int = -1
    bisect_batch_on_function_error: bool = False
    function_response_types: tuple[str, ...] = ()
    destination_config: DestinationConfig = DestinationConfig()
    tumbling_window_in_seconds: int = 0
    filter_criteria: FilterCriteria | None = None
    max_buffered_records: int | None = None  # kinesis-esm: per-shard buffer bound
    # kinesis-esm: when the on-failure destination cannot take a report, "retry" waits and
    # retries (nothing lost); "drop" is Lambda's behaviour (count and go on)
    on_failure_delivery: str = "retry"
    # kinesis-esm: split KPL aggregates into their user records, each its own event record
    deaggregate: bool = False
    # kinesis-esm: read through this enhanced fan-out consumer of the stream, registered if
    # missing (with a stream ARN; a consumer ARN as event_source_arn names one directly)
    register_consumer: str | None = None
    uuid: str | None = None  # assigned by the runtime (see stable_uuid)

    def __post_init__(self) -> None:
        self._check_function_and_arn()
        for name, (lo, hi) in RANGES.items():
            _in_range(name, getattr(self, name), lo, hi, _camel(name))
        if 0 <= self.maximum_record_age_in_seconds < 60:
            message = "MaximumRecordAgeInSeconds must be either -1 (forever) or between 60 and 604800 (inclusive)"  # noqa: E501
            raise ConfigError(message, parameter="maximum_record_age_in_seconds")
        for flag in ("enabled", "bisect_batch_on_function_error", "deaggregate"):
            _expect(flag, getattr(self, flag), (bool,), "a boolean")
        self._check_starting_position()
        self._check_response_types()
        self._check_destination()
        self._check_filters()
        self._check_register_consumer()
        self._check_window()
        if self.on_failure_delivery not in ("retry", "drop"):
            raise ConfigError(
                f"on_failure_delivery must be 'retry' or 'drop', got {self.on_failure_delivery!r}",
                parameter="on_failure_delivery",
            )
        if (limit := self.max_buffered_records) is not None:
            _expect("max_buffered_records", limit, (int,), "an integer")
            if limit < self.batch_size:
                message = f"must be at least batch_size ({self.batch_size}), got {_number(limit)}"
                raise ConfigError(message, parameter="max_buffered_records")
        if self.uuid is not None:
            _expect("uuid", self.uuid, (str,), "a string")
            try:
                _uuid.UUID(self.uuid)
            except ValueError:
                raise ConfigError(f"{self.uuid!r} is not a UUID", parameter="uuid") from None

    def _check_function_and_arn(self) -> None:
        name = self.function_name
        if name is None:
            raise _constraint("function_name", "null", "functionName", "Member must not be null")
        _expect("function_name", name, (str,), "a string")
        if not 1 <= len(name) <= 256:
            rule = "less than or equal to 256" if name else "greater than or equal to 1"
            raise _constraint(
                "function_name", f"'{name}'", "functionName", f"Member must have length {rule}"
            )
        if FUNCTION_REF.fullmatch(name) is None:
            rule = f"Member must satisfy regular expression pattern: {FUNCTION_NAME_PATTERN}"
            raise _constraint("function_name", f"'{name}'", "functionName", rule)
        arn = self.event_source_arn
        _expect("event_source_arn", arn, (str,), "a string")
        if parse_kinesis_arn(arn) is None:
            parts = arn.split(":")
            service = parts[2] if len(parts) > 5 and parts[0] == "arn" else "kinesis"
            what = "a Kinesis stream or stream consumer ARN"
            raise ConfigError(
                f"{arn!r} is a {service} ARN, not {what}: kinesis-esm reads Kinesis data streams"
                if service != "kinesis"
                else f"{arn!r} is not {what}",
                parameter="event_source_arn",
                hint="expected arn:aws:kinesis:<region>:<12-digit account>:stream/<name>, or "
                "that followed by /consumer/<name>:<epoch> for enhanced fan-out",
            )

    def _check_register_consumer(self) -> None:
        name = self.register_consumer
        if name is None:
            return
        _expect("register_consumer", name, (str,), "a string")
        if not re.fullmatch(r"[a-zA-Z0-9_.-]{1,128}", name):
            message = f"{name!r} is not a stream consumer name"
            hint = "1 to 128 letters, digits, '_', '.' or '-'"
            raise ConfigError(message, parameter="register_consumer", hint=hint)
        if self.consumer_arn is not None:
            message = "names a consumer to register, but event_source_arn already is a consumer"
            raise ConfigError(message, parameter="register_consumer", hint="give one of the two")

    def _check_window(self) -> None:
        # A window's state is one per shard: batches of one window in parallel lanes would each
        # start from a state the others have not updated yet. The reference cannot say whether
        # Lambda allows it (section 1.2), so kinesis-esm refuses the combination.
        window, factor = self.tumbling_window_in_seconds, self.parallelization_factor
        if window > 0 and factor > 1:
            message = (
                f"a tumbling window ({window} s) needs parallelization_factor = 1, got {factor}"
            )
            hint = (
                "window state is per shard; set parallelization_factor = 1, or "
                "tumbling_window_in_seconds = 0 to turn windows off"
            )
            raise ConfigError(message, parameter="tumbling_window_in_seconds", hint=hint)

    def _check_starting_position(self) -> None:
        pos, ts, name = (
            self.starting_position,
            self.starting_position_timestamp,
            "starting_position",
        )
        if pos is None:
            message = "1 validation error detected: Value null at 'startingPosition' failed to satisfy constraint: Member must not be null."  # noqa: E501
            raise ConfigError(
                message, parameter=name, hint=f"one of {', '.join(STARTING_POSITIONS)}"
            )
        if pos not in STARTING_POSITIONS:
            rule = "Member must satisfy enum value set: [LATEST, AT_TIMESTAMP, TRIM_HORIZON]"
            raise _constraint(name, f"'{pos}'", "startingPosition", rule)
        name = "starting_position_timestamp"
        if ts is None:
            if pos == "AT_TIMESTAMP":
                raise ConfigError(
                    "Need to specify a timestamp", parameter=name, hint="required with AT_TIMESTAMP"
                )
            return
        _expect(name, ts, (int, float), "a number (Unix seconds)")
        if pos != "AT_TIMESTAMP":
            raise ConfigError(
                "Timestamp only valid with StartingPosition AT_TIMESTAMP", parameter=name
            )
        # an int may be too large for a float: compare it as it is, never convert it first
        if ts < 0 or (isinstance(ts, float) and not math.isfinite(ts)):
            message = f"must be a Unix time in seconds, got {_number(ts)}"
            raise ConfigError(message, parameter=name)
        if ts > time.time():
            raise ConfigError(
                f"{_number(ts)} is in the future", parameter=name, hint="must not be after now"
            )
        object.__setattr__(self, name, float(ts))

    def _check_response_types(self) -> None:
        name, types = "function_response_types", self.function_response_types
        _expect(name, types, (tuple, list), 'an array such as ["ReportBatchItemFailures"]')
        for item in types:
            _expect(name, item, (str,), "an array of strings")
        shown = f"'[{', '.join(types)}]'"
        if len(types) > 1:
            rule = "Member must have length less than or equal to 1"
            raise _constraint(name, shown, "functionResponseTypes", rule)
        if any(item not in FUNCTION_RESPONSE_TYPES for item in types):
            rule = "Member must satisfy constraint: [Member must satisfy enum value set: [ReportBatchItemFailures]]"  # noqa: E501
            raise _constraint(name, shown, "functionResponseTypes", rule)
        object.__setattr__(self, name, tuple(types))

    def _check_destination(self) -> None:
        config, name = self.destination_config, "destination_config.on_failure.destination"
        if not isinstance(config, DestinationConfig) or not isinstance(
            config.on_failure, OnFailure
        ):
            message = "must be DestinationConfig(on_failure=OnFailure(destination=...))"
            raise ConfigError(message, parameter="destination_config")
        if (dest := config.on_failure.destination) is None:
            return
        _expect(name, dest, (str,), "a string")
        if dest == "":  # Lambda: an empty Destination removes the destination
            object.__setattr__(self, "destination_config", DestinationConfig())
        elif len(dest) > MAXDESTINATION_LENGTH:
            rule = f"Member must have length less than or equal to {MAXDESTINATION_LENGTH}"
            raise _constraint(name, f"'{dest}'", "destinationConfig.onFailure.destination", rule)
        elif DESTINATION.fullmatch(dest) is None:
            message = f"{dest!r} is not an SQS queue, SNS topic or S3 bucket ARN"
            hint = "or a file:// path, kinesis-esm's local destination"
            raise ConfigError(message, parameter=name, hint=hint)

    def _check_filters(self) -> None:
        if (criteria := self.filter_criteria) is None:
            return
        if not isinstance(criteria, FilterCriteria) or not isinstance(criteria.filters, tuple):
            message = "must be FilterCriteria(filters=(Filter(pattern=...), ...))"
            raise ConfigError(message, parameter="filter_criteria")
        if len(criteria.filters) > MAX_FILTERS:
            message = f"holds {len(criteria.filters)} filters; Lambda allows at most {MAX_FILTERS}"
            raise ConfigError(message, parameter="filter_criteria.filters")
        for index, flt in enumerate(criteria.filters):
            check_filter(index, flt)
        if not criteria.filters:  # Lambda: an empty FilterCriteria removes the filters
            object.__setattr__(self, "filter_criteria", None)

    def replace(self, **changes: Any) -> EventSourceMappingConfig:
        """A copy with ``changes`` applied, validated again."""
        return dataclasses.replace(self, **changes)

    @property
    def _arn(self) -> KinesisArn:
        parsed = parse_kinesis_arn(self.event_source_arn)
        assert parsed is not None  # validated in __post_init__
        return parsed

    @property
    def stream_arn(self) -> str:
        """The stream's ARN, also when ``event_source_arn`` names an enhanced fan-out consumer."""
        return self._arn.stream_arn

    @property
    def consumer_arn(self) -> str | None:
        """The enhanced fan-out consumer's ARN, or None when the mapping polls GetRecords."""
        return self._arn.consumer_arn

    @property
    def region(self) -> str:
        return self._arn.region

    @property
    def account_id(self) -> str:
        return self._arn.account_id

    @property
    def stream_name(self) -> str:
        return self._arn.stream_name

    @property
    def buffered_records_limit(self) -> int:
        """``max_buffered_records``, or its default 4 x batch_size x parallelization_factor."""
        default = 4 * self.batch_size * self.parallelization_factor
        return default if self.max_buffered_records is None else self.max_buffered_records
