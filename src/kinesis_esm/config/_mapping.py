"""Configuration: frozen, validated settings with Lambda's names, ranges, defaults and messages.

Every value object validates itself in ``__post_init__``, so a configuration built in code meets
the same rules as one read from TOML (``parse_config`` / ``load_config``, in ``_config_file``).
Errors are :class:`ConfigError`: ``parameter`` (dotted path), ``code``, ``message`` (Lambda's text
where one is known) and ``hint`` (the allowed values, in our words).

Where the messages come from. Recorded against real AWS (LocalStack snapshot tests,
terraform-provider-aws #16113):

* ``1 validation error detected: Value null at 'startingPosition' failed to satisfy constraint:
  Member must not be null.`` (InvalidParameterValueException)
* ``1 validation error detected: Value '<v>' at 'startingPosition' failed to satisfy constraint:
  Member must satisfy enum value set: [LATEST, AT_TIMESTAMP, TRIM_HORIZON]`` (ValidationException)
* ``Timestamp only valid with StartingPosition AT_TIMESTAMP``
* ``MaximumRecordAgeInSeconds must be either -1 (forever) or between 60 and 604800 (inclusive)``
* ``Unsupported DestinationConfig parameter for given event source mapping type.`` (OnSuccess)
* ``The event source arn (" <arn> ") and function (" <name> ") provided mapping already exists.
  Please update or delete the existing mapping with UUID <uuid>`` (ResourceConflictException)

Lambda's words from documentation or third parties, not a recording: ``Invalid filter pattern
definition.`` (DOC, LocalStack) and ``Need to specify a timestamp`` (AT_TIMESTAMP without one,
quoted in awsdocs/aws-cloudformation-user-guide#334).

AWS's standard constraint format, rendered by us from the API model's ranges and lengths (the
format is AWS's; that Lambda answers each parameter with exactly this text is unconfirmed):
``1 validation error detected: Value '<v>' at '<member>' failed to satisfy constraint: Member must
have value less than or equal to <max>`` (and ``greater than or equal to``, ``length``, ``enum
value set``, ``regular expression pattern``, ``must not be null``), code ValidationException.

Our own wording (code InvalidParameterValueException): wrong types, malformed event source ARNs,
timestamps in the future or negative, more than 5 filters, destination kinds,
``max_buffered_records``, ``uuid``, the ``[functions]``, ``[kinesis]``, ``[state]`` and
``[control]`` tables, unknown keys and undeclared functions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import time
import uuid as _uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "ConfigError",
    "DestinationConfig",
    "EventSourceMappingConfig",
    "Filter",
    "FilterCriteria",
    "NotSupportedYetError",
    "OnFailure",
    "stable_uuid",
    "unsupported_features",
]

INVALID_PARAMETER_VALUE = "InvalidParameterValueException"
VALIDATION = "ValidationException"
RESOURCE_CONFLICT = "ResourceConflictException"
STARTING_POSITIONS = ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP")
FUNCTION_RESPONSE_TYPES = ("ReportBatchItemFailures",)
MAX_FILTERS = 5  # Lambda's default quota (raisable to 10 on AWS)
MAX_PATTERN_LENGTH = 4096
MAX_DESTINATION_LENGTH = 350
# Lambda's range for each integer parameter of a Kinesis mapping (API model, DOC).
RANGES = {
    "batch_size": (1, 10000),
    "maximum_batching_window_in_seconds": (0, 300),
    "parallelization_factor": (1, 10),
    "maximum_retry_attempts": (-1, 10000),
    "maximum_record_age_in_seconds": (-1, 604800),
    "tumbling_window_in_seconds": (0, 900),
}
_NAMESPACE = _uuid.UUID("352a92bc-01cf-41f1-a7df-f6077bba81e6")
_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}"
_PARTITION = r"aws(?:-cn|-us-gov)?"
_KINESIS_ARN = re.compile(
    rf"arn:(?P<partition>{_PARTITION}):kinesis:(?P<region>{_REGION}):(?P<account>\d{{12}}):"
    r"stream/(?P<stream>[A-Za-z0-9_.-]{1,128})(?:/consumer/[A-Za-z0-9_.-]{1,128}:\d+)?"
)
_DESTINATION = re.compile(
    rf"arn:{_PARTITION}:(?:(?:sqs|sns):{_REGION}:\d{{12}}:[A-Za-z0-9_-]{{1,256}}(?:\.fifo)?"
    r"|s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])|file://.+"
)
_FUNCTION_REF = re.compile(
    rf"(?:arn:aws[a-zA-Z-]*:lambda:)?(?:{_REGION}:)?(?:\d{{12}}:)?(?:function:)?"
    r"(?P<name>[a-zA-Z0-9_.-]+)(?::(?:\$LATEST|[a-zA-Z0-9_-]+))?"
)
# The API model's pattern for FunctionName, as AWS quotes it (matching uses _FUNCTION_REF).
_FUNCTION_NAME_PATTERN = (
    r"(arn:(aws[a-zA-Z-]*)?:lambda:)?((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?"
    r"(\d{12}:)?(function:)?([a-zA-Z0-9-_\.]+)(:(\$LATEST(\.PUBLISHED)?|[a-zA-Z0-9-_]+))?"
)
_TOML_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string", dict: "table"}


class ConfigError(ValueError):
    """A configuration value Lambda (or kinesis-esm) would reject."""

    def __init__(
        self,
        message: str,
        *,
        parameter: str,
        code: str = INVALID_PARAMETER_VALUE,
        hint: str | None = None,
        source: str | None = None,
    ) -> None:
        self.message, self.parameter, self.code = message, parameter, code
        self.hint, self.source = hint, source
        ValueError.__init__(self, str(self))

    def __str__(self) -> str:
        text = ": ".join(part for part in (self.source, self.parameter, self.message) if part)
        return f"{text} ({self.hint})" if self.hint else text

    def under(self, prefix: str, *, source: str | None = None) -> ConfigError:
        """The same error with ``parameter`` placed under ``prefix`` (the enclosing table)."""
        parameter = ".".join(part for part in (prefix, self.parameter) if part)
        return type(self)(
            self.message,
            parameter=parameter,
            code=self.code,
            hint=self.hint,
            source=source or self.source,
        )


class NotSupportedYetError(ConfigError):
    """A valid Lambda setting whose feature kinesis-esm does not implement yet."""


def _constraint(
    parameter: str, value: str, member: str, rule: str, hint: str | None = None
) -> ConfigError:
    """AWS's ValidationException for a modelled constraint; ``value`` as AWS shows it."""
    message = f"1 validation error detected: Value {value} at '{member}' failed to satisfy constraint: {rule}"  # noqa: E501
    return ConfigError(message, parameter=parameter, code=VALIDATION, hint=hint)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _type_name(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "array"
    return _TOML_TYPES.get(type(value), type(value).__name__)


def _expect(name: str, value: object, kinds: tuple[type, ...], expected: str) -> None:
    """Strict types: a bool is not an integer and a float is not an integer."""
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        shown = f" {json.dumps(value)}" if isinstance(value, (bool, int, float, str)) else ""
        raise ConfigError(f"must be {expected}, got {_type_name(value)}{shown}", parameter=name)


def _in_range(name: str, value: object, lo: int | float, hi: int | float, member: str = "") -> None:
    """``member``: Lambda's name, for AWS's constraint message; else our own wording."""
    integral = isinstance(lo, int)
    _expect(
        name, value, (int,) if integral else (int, float), "an integer" if integral else "a number"
    )
    assert isinstance(value, (int, float))
    if lo <= value <= hi:
        return
    if not member:
        raise ConfigError(f"must be between {lo} and {hi}, got {value}", parameter=name)
    bound = f"greater than or equal to {lo}" if value < lo else f"less than or equal to {hi}"
    rule = f"Member must have value {bound}"
    raise _constraint(name, f"'{value}'", member, rule, f"allowed: {lo}..{hi}")


class _KinesisArn(NamedTuple):
    region: str
    account_id: str
    stream_name: str
    stream_arn: str
    consumer_arn: str | None


@functools.lru_cache(maxsize=256)
def _parse_kinesis_arn(arn: str) -> _KinesisArn | None:
    m = _KINESIS_ARN.fullmatch(arn)
    if m is None:
        return None
    partition, region, account, stream = m.group("partition", "region", "account", "stream")
    stream_arn = f"arn:{partition}:kinesis:{region}:{account}:stream/{stream}"
    return _KinesisArn(region, account, stream, stream_arn, None if arn == stream_arn else arn)


@dataclass(frozen=True, slots=True)
class OnFailure:
    destination: str | None = None


@dataclass(frozen=True, slots=True)
class DestinationConfig:
    on_failure: OnFailure = OnFailure()


@dataclass(frozen=True, slots=True)
class Filter:
    pattern: str


@dataclass(frozen=True, slots=True)
class FilterCriteria:
    filters: tuple[Filter, ...] = ()


def _pattern_problem(node: object, path: str) -> str | None:
    """Why an EventBridge-style pattern is malformed (shape only: operators are the filter's)."""
    if isinstance(node, list):
        return None if node else f"{path} is an empty array"
    if not isinstance(node, dict) or not node:
        return f"{path} must be a non-empty object or an array of match values"
    if path == "pattern" and "data" in node and not isinstance(node["data"], dict):
        return "the data clause must be a JSON object (Kinesis data is matched as JSON)"
    problems = (_pattern_problem(child, f"{path}.{key}") for key, child in node.items())
    return next((why for why in problems if why), None)


def _check_filter(index: int, flt: object) -> None:
    name = f"filter_criteria.filters[{index}].pattern"
    if not isinstance(flt, Filter):
        raise ConfigError(f"must be a Filter, got {_type_name(flt)}", parameter=name[:-8])
    _expect(name, flt.pattern, (str,), "a string holding a JSON object")
    if len(flt.pattern) > MAX_PATTERN_LENGTH:
        member = f"filterCriteria.filters.{index + 1}.member.pattern"
        rule = f"Member must have length less than or equal to {MAX_PATTERN_LENGTH}"
        raise _constraint(name, f"'{flt.pattern}'", member, rule, f"at most {MAX_PATTERN_LENGTH}")
    try:
        pattern = json.loads(flt.pattern)
        why = _pattern_problem(pattern, "pattern") if isinstance(pattern, dict) else None
        why = why or (None if isinstance(pattern, dict) else "a pattern must be a JSON object")
    except ValueError as exc:
        why = f"not JSON: {exc}"
    if why is not None:
        raise ConfigError("Invalid filter pattern definition.", parameter=name, hint=why)


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
    uuid: str | None = None  # assigned by the runtime (see stable_uuid)

    def __post_init__(self) -> None:
        self._check_function_and_arn()
        for name, (lo, hi) in RANGES.items():
            _in_range(name, getattr(self, name), lo, hi, _camel(name))
        if 0 <= self.maximum_record_age_in_seconds < 60:
            message = "MaximumRecordAgeInSeconds must be either -1 (forever) or between 60 and 604800 (inclusive)"  # noqa: E501
            raise ConfigError(message, parameter="maximum_record_age_in_seconds")
        for flag in ("enabled", "bisect_batch_on_function_error"):
            _expect(flag, getattr(self, flag), (bool,), "a boolean")
        self._check_starting_position()
        self._check_response_types()
        self._check_destination()
        self._check_filters()
        if self.on_failure_delivery not in ("retry", "drop"):
            raise ConfigError(
                f"on_failure_delivery must be 'retry' or 'drop', got {self.on_failure_delivery!r}",
                parameter="on_failure_delivery",
            )
        if (limit := self.max_buffered_records) is not None:
            _expect("max_buffered_records", limit, (int,), "an integer")
            if limit < self.batch_size:
                message = f"must be at least batch_size ({self.batch_size}), got {limit}"
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
        if _FUNCTION_REF.fullmatch(name) is None:
            rule = f"Member must satisfy regular expression pattern: {_FUNCTION_NAME_PATTERN}"
            raise _constraint("function_name", f"'{name}'", "functionName", rule)
        arn = self.event_source_arn
        _expect("event_source_arn", arn, (str,), "a string")
        if _parse_kinesis_arn(arn) is None:
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
        if not math.isfinite(ts) or ts < 0:
            raise ConfigError(f"must be a Unix time in seconds, got {ts}", parameter=name)
        if ts > time.time():
            raise ConfigError(
                f"{ts} is in the future", parameter=name, hint="must not be after now"
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
        elif len(dest) > MAX_DESTINATION_LENGTH:
            rule = f"Member must have length less than or equal to {MAX_DESTINATION_LENGTH}"
            raise _constraint(name, f"'{dest}'", "destinationConfig.onFailure.destination", rule)
        elif _DESTINATION.fullmatch(dest) is None:
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
            _check_filter(index, flt)
        if not criteria.filters:  # Lambda: an empty FilterCriteria removes the filters
            object.__setattr__(self, "filter_criteria", None)

    def replace(self, **changes: Any) -> EventSourceMappingConfig:
        """A copy with ``changes`` applied, validated again."""
        return dataclasses.replace(self, **changes)

    @property
    def _arn(self) -> _KinesisArn:
        parsed = _parse_kinesis_arn(self.event_source_arn)
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


def stable_uuid(function_name: str, event_source_arn: str) -> str:
    """A uuid5 of the pair over a fixed namespace: the same mapping keeps it across restarts."""
    return str(_uuid.uuid5(_NAMESPACE, f"{function_name}\n{event_source_arn}"))


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
