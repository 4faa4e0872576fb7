"""Lambda's wire format for event source mappings (rest-json, botocore's lambda 2015-03-31
model): request bodies to configuration fields, configurations to response bodies, and error
bodies botocore turns into the right exception class.

An error is its code in the ``x-amzn-ErrorType`` header and ``{"Type": "User", "message": ...}``
in the body, with ``message`` or ``Message`` as the model spells it for that exception.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import DestinationConfig, Filter, FilterCriteria, OnFailure
from ..runtime._model import MappingView
from ._bounds import (
    MAX_MARKER_LENGTH,
    check_depth,
    check_kms_key_arn,
    check_strings,
    check_tags,
    check_timestamp,
    marker_parts,
)
from ._errors import WireError

__all__ = [
    "STATUS",
    "WireError",
    "create_fields",
    "decode_marker",
    "encode_marker",
    "error_body",
    "mapping_json",
    "parse_body",
    "update_fields",
]

# HTTP status and the spelling of the message member, per Lambda's model; ValidationException
# and the authentication errors are AWS's generic ones.
STATUS: dict[str, tuple[int, str]] = {
    "InvalidParameterValueException": (400, "message"),
    "InvalidRequestContentException": (400, "message"),
    "ValidationException": (400, "message"),
    "ResourceInUseException": (400, "Message"),
    "ResourceNotFoundException": (404, "Message"),
    "ResourceConflictException": (409, "message"),
    "RequestTooLargeException": (413, "message"),
    "UnsupportedMediaTypeException": (415, "message"),
    "ServiceQuotaExceededException": (402, "Message"),
    "TooManyRequestsException": (429, "message"),
    "ServiceException": (500, "Message"),
    "UnknownOperationException": (404, "message"),
    "MissingAuthenticationTokenException": (403, "message"),
    "IncompleteSignatureException": (403, "message"),
    "InvalidSignatureException": (403, "message"),
    "UnrecognizedClientException": (403, "message"),
    "AccessDeniedException": (403, "Message"),
}
_GENERIC = {"ValidationException", "UnknownOperationException"}

# Lambda's request members for a Kinesis mapping, and our field names.
_FIELDS = {
    "FunctionName": "function_name",
    "EventSourceArn": "event_source_arn",
    "Enabled": "enabled",
    "BatchSize": "batch_size",
    "MaximumBatchingWindowInSeconds": "maximum_batching_window_in_seconds",
    "ParallelizationFactor": "parallelization_factor",
    "StartingPosition": "starting_position",
    "StartingPositionTimestamp": "starting_position_timestamp",
    "MaximumRecordAgeInSeconds": "maximum_record_age_in_seconds",
    "BisectBatchOnFunctionError": "bisect_batch_on_function_error",
    "MaximumRetryAttempts": "maximum_retry_attempts",
    "TumblingWindowInSeconds": "tumbling_window_in_seconds",
    "FunctionResponseTypes": "function_response_types",
    "DestinationConfig": "destination_config",
    "FilterCriteria": "filter_criteria",
}
_CREATE_ONLY = ("EventSourceArn", "StartingPosition", "StartingPositionTimestamp", "Tags")
_EXTRAS = ("KMSKeyArn", "MetricsConfig", "Tags")
_NOT_KINESIS = (
    "ScalingConfig",
    "Topics",
    "Queues",
    "SourceAccessConfigurations",
    "SelfManagedEventSource",
    "AmazonManagedKafkaEventSourceConfig",
    "SelfManagedKafkaEventSourceConfig",
    "DocumentDBEventSourceConfig",
    "ProvisionedPollerConfig",
    "LoggingConfig",
)
_METRICS = ("EventCount", "ErrorCount", "KafkaMetrics")


def error_body(code: str, message: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Status, headers and JSON body of Lambda's answer for error ``code``."""
    status, member = STATUS.get(code, (400, "message"))
    body: dict[str, Any] = {member: message}
    if code not in _GENERIC:
        body["Type"] = "Service" if status >= 500 else "User"
    headers = {"x-amzn-ErrorType": code, "x-amzn-RequestId": str(uuid.uuid4())}
    return status, headers, body


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request's JSON object; an empty body is an empty object. JSON's NaN and Infinity,
    bodies nested deeper than any Lambda request and text that is not UTF-8 are refused."""
    if not raw.strip():
        return {}
    check_depth(raw)
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        detail = str(exc)[:200] if isinstance(exc, ValueError) else "nested too deeply"
        message = f"Could not parse request body into json: {detail}"
        raise WireError("InvalidRequestContentException", message) from None
    if not isinstance(value, dict):
        message = f"Could not parse request body into json: expected an object, got {type(value).__name__}"  # noqa: E501
        raise WireError("InvalidRequestContentException", message)
    check_strings(value)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _invalid(message: str) -> WireError:
    return WireError("InvalidParameterValueException", message)


def _destination(value: object) -> DestinationConfig:
    if not isinstance(value, Mapping):
        raise _invalid("DestinationConfig must be an object")
    if value.get("OnSuccess"):
        message = "Unsupported DestinationConfig parameter for given event source mapping type."
        raise _invalid(message)
    on_failure = value.get("OnFailure") or {}
    if not isinstance(on_failure, Mapping):
        raise _invalid("DestinationConfig.OnFailure must be an object")
    return DestinationConfig(OnFailure(on_failure.get("Destination")))


def _filters(value: object) -> FilterCriteria:
    filters = value.get("Filters") or [] if isinstance(value, Mapping) else None
    if not isinstance(filters, list) or not all(isinstance(f, Mapping) for f in filters):
        raise _invalid('FilterCriteria must be {"Filters": [{"Pattern": "..."}]}')
    return FilterCriteria(tuple(Filter(f.get("Pattern")) for f in filters))


def _extras(body: Mapping[str, Any], allowed: Sequence[str]) -> dict[str, Any]:
    extras = {key: body[key] for key in allowed if body.get(key) is not None}
    metrics = extras.get("MetricsConfig")
    if metrics is not None:
        names = metrics.get("Metrics") if isinstance(metrics, Mapping) else None
        if not isinstance(names, list) or len(names) > 3 or any(n not in _METRICS for n in names):
            message = (
                f"1 validation error detected: Value '{names}' at 'metricsConfig.metrics' failed "
                "to satisfy constraint: Member must satisfy constraint: [Member must satisfy "
                "enum value set: [EventCount, ErrorCount, KafkaMetrics]]"
            )
            raise WireError("ValidationException", message)
    if "KMSKeyArn" in extras:
        check_kms_key_arn(extras["KMSKeyArn"])
    if "Tags" in extras:
        check_tags(extras["Tags"])
    return extras


def _fields(body: Mapping[str, Any], members: Sequence[str]) -> dict[str, Any]:
    for name in _NOT_KINESIS:
        if body.get(name):
            raise _invalid(f"{name} is not valid for Kinesis event sources.")
    fields: dict[str, Any] = {}
    for member in members:
        if member not in body or body[member] is None:
            continue
        value = body[member]
        if member == "DestinationConfig":
            value = _destination(value)
        elif member == "FilterCriteria":
            value = _filters(value)
        elif member == "FunctionResponseTypes" and isinstance(value, list):
            value = tuple(value)
        elif member == "StartingPositionTimestamp":
            value = check_timestamp(value)
        fields[_FIELDS[member]] = value
    return fields


def create_fields(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """CreateEventSourceMapping's body as (EventSourceMappingConfig fields, stored extras)."""
    if not isinstance(body.get("EventSourceArn"), str):
        message = "EventSourceArn is required: the ARN of a Kinesis stream or stream consumer"
        raise _invalid(message)
    fields = _fields(body, list(_FIELDS))
    fields.setdefault("function_name", None)  # Lambda's "Value null at 'functionName'"
    fields.setdefault("starting_position", None)  # and "Value null at 'startingPosition'"
    return fields, _extras(body, _EXTRAS)


def update_fields(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """UpdateEventSourceMapping's body; EventSourceArn and StartingPosition are create-only."""
    for member in _CREATE_ONLY:
        if member in body:
            raise _invalid(f"{member} cannot be updated: it is set when the mapping is created")
    members = [m for m in _FIELDS if m not in _CREATE_ONLY]
    return _fields(body, members), _extras(body, ("KMSKeyArn", "MetricsConfig"))


def mapping_json(view: MappingView) -> dict[str, Any]:
    """EventSourceMappingConfiguration as Lambda returns it for a Kinesis mapping."""
    c = view.config
    body: dict[str, Any] = {
        "UUID": view.uuid,
        "StartingPosition": c.starting_position,
        "BatchSize": c.batch_size,
        "MaximumBatchingWindowInSeconds": c.maximum_batching_window_in_seconds,
        "ParallelizationFactor": c.parallelization_factor,
        "EventSourceArn": c.event_source_arn,
        "FunctionArn": view.function_arn,
        "LastModified": view.last_modified,
        "LastProcessingResult": view.last_processing_result,
        "State": view.state,
        "StateTransitionReason": view.state_transition_reason,
        "DestinationConfig": {
            "OnFailure": {}
            if c.destination_config.on_failure.destination is None
            else {"Destination": c.destination_config.on_failure.destination}
        },
        "MaximumRecordAgeInSeconds": c.maximum_record_age_in_seconds,
        "BisectBatchOnFunctionError": c.bisect_batch_on_function_error,
        "MaximumRetryAttempts": c.maximum_retry_attempts,
        "TumblingWindowInSeconds": c.tumbling_window_in_seconds,
        "FunctionResponseTypes": list(c.function_response_types),
        "EventSourceMappingArn": view.event_source_mapping_arn,
    }
    if c.starting_position_timestamp is not None:
        body["StartingPositionTimestamp"] = c.starting_position_timestamp
    if c.filter_criteria is not None:
        filters = [{"Pattern": f.pattern} for f in c.filter_criteria.filters]
        body["FilterCriteria"] = {"Filters": filters}
    for key in ("KMSKeyArn", "MetricsConfig"):
        if view.extras.get(key):
            body[key] = view.extras[key]
    return body


def encode_marker(view: MappingView) -> str:
    """An opaque Marker: the position after ``view`` in the (created, UUID) order."""
    raw = json.dumps([view.created_at, view.uuid]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_marker(marker: str) -> tuple[float, str]:
    """The position an ``encode_marker`` Marker stands for; anything else is refused."""
    parts = None
    if len(marker) <= MAX_MARKER_LENGTH:
        try:
            raw = base64.urlsafe_b64decode(marker + "=" * (-len(marker) % 4))
            if _nesting_ok(raw):
                parts = marker_parts(json.loads(raw))
        except (binascii.Error, ValueError, TypeError):
            parts = None
    if parts is None:
        shown = marker if len(marker) <= 64 else f"{marker[:64]}..."
        raise _invalid(f"Invalid Marker: {shown}")
    return parts


def _nesting_ok(raw: bytes) -> bool:
    try:
        check_depth(raw)
    except WireError:
        return False
    return True
