"""The configuration layer: Lambda's names, ranges, defaults and messages; the TOML contract."""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kinesis_esm.config import (
    ConfigError,
    ControlConfig,
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
    parse_config,
    stable_uuid,
    unsupported_features,
)

STREAM = "arn:aws:kinesis:us-east-1:000000000000:stream/orders"
CONSUMER = f"{STREAM}/consumer/esm-consumer:1700000000"
IPVE, VE = "InvalidParameterValueException", "ValidationException"

# Lambda's ranges, written out again here rather than imported, so a slip in either shows.
RANGES = {
    "batch_size": (1, 10000, "batchSize"),
    "maximum_batching_window_in_seconds": (0, 300, "maximumBatchingWindowInSeconds"),
    "parallelization_factor": (1, 10, "parallelizationFactor"),
    "maximum_retry_attempts": (-1, 10000, "maximumRetryAttempts"),
    "maximum_record_age_in_seconds": (-1, 604800, "maximumRecordAgeInSeconds"),
    "tumbling_window_in_seconds": (0, 900, "tumblingWindowInSeconds"),
}
AGE_MESSAGE = (
    "MaximumRecordAgeInSeconds must be either -1 (forever) or between 60 and 604800 (inclusive)"
)

FULL_TOML = """\
[kinesis]
endpoint_url = "http://127.0.0.1:4567"
region = "us-east-1"

[state]
path = "kinesis-esm.db"

[control]
host = "127.0.0.1"
port = 9001

[functions.my-function]
handler = "my_package.my_module:handler"
timeout = 30

[[event_source_mappings]]
function_name = "my-function"
event_source_arn = "arn:aws:kinesis:us-east-1:000000000000:stream/orders"
starting_position = "TRIM_HORIZON"
# starting_position_timestamp = 1541139109
batch_size = 100
maximum_batching_window_in_seconds = 0
enabled = true
parallelization_factor = 1
maximum_retry_attempts = -1
maximum_record_age_in_seconds = -1
bisect_batch_on_function_error = false
function_response_types = ["ReportBatchItemFailures"]
tumbling_window_in_seconds = 0
[event_source_mappings.destination_config.on_failure]
destination = "arn:aws:sqs:us-east-1:000000000000:dlq"
[[event_source_mappings.filter_criteria.filters]]
pattern = '{"data": {"kind": ["order"]}}'
"""


def esm(**changes: Any) -> EventSourceMappingConfig:
    fields: dict[str, Any] = {
        "function_name": "my-function",
        "event_source_arn": STREAM,
        "starting_position": "TRIM_HORIZON",
    }
    return EventSourceMappingConfig(**(fields | changes))


def rejects(parameter: str, code: str = IPVE, **changes: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        esm(**changes)
    assert info.value.parameter == parameter, str(info.value)
    assert info.value.code == code, str(info.value)
    return info.value


def data(**mapping: Any) -> dict[str, Any]:
    """A minimal valid TOML document as data, with ``mapping`` merged into its one mapping."""
    base = {"function_name": "f", "event_source_arn": STREAM, "starting_position": "LATEST"}
    return {
        "functions": {"f": {"handler": "pkg.mod:handler"}},
        "event_source_mappings": [base | mapping],
    }


def parse_rejects(doc: dict[str, Any], parameter: str, code: str = IPVE) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, source="test.toml")
    assert info.value.parameter == parameter, str(info.value)
    assert info.value.code == code, str(info.value)
    assert str(info.value).startswith(f"test.toml: {parameter}: ")
    return info.value


# -- defaults and ranges ------------------------------------------------------------------------


def test_defaults_are_lambdas_recorded_create_response() -> None:
    # Reference section 1.3: AWS's Create response, Kinesis mapping given only StartingPosition.
    cfg = esm(starting_position="LATEST")
    recorded = {
        "batch_size": 100,
        "bisect_batch_on_function_error": False,
        "function_response_types": (),
        "maximum_batching_window_in_seconds": 0,
        "maximum_record_age_in_seconds": -1,
        "maximum_retry_attempts": -1,
        "parallelization_factor": 1,
        "tumbling_window_in_seconds": 0,
        "enabled": True,
    }
    assert {name: getattr(cfg, name) for name in recorded} == recorded
    assert cfg.destination_config == DestinationConfig(OnFailure(None))  # {"OnFailure": {}}
    assert cfg.filter_criteria is None and cfg.starting_position_timestamp is None
    assert cfg.max_buffered_records is None and cfg.uuid is None
    assert cfg.buffered_records_limit == 4 * 100 * 1


@pytest.mark.parametrize("name", RANGES)
def test_range_edges_are_accepted(name: str) -> None:
    lo, hi, _ = RANGES[name]
    for value in (lo, hi) if name != "maximum_record_age_in_seconds" else (-1, 60, hi):
        assert getattr(esm(**{name: value}), name) == value


@pytest.mark.parametrize("name", RANGES)
def test_range_edges_are_rejected_with_aws_constraint_message(name: str) -> None:
    lo, hi, member = RANGES[name]
    low = rejects(name, VE, **{name: lo - 1})
    assert low.message == (
        f"1 validation error detected: Value '{lo - 1}' at '{member}' failed to satisfy "
        f"constraint: Member must have value greater than or equal to {lo}"
    )
    high = rejects(name, VE, **{name: hi + 1})
    assert high.message == (
        f"1 validation error detected: Value '{hi + 1}' at '{member}' failed to satisfy "
        f"constraint: Member must have value less than or equal to {hi}"
    )
    assert f"{lo}..{hi}" in str(high)  # the allowed range is named


def test_batch_size_message_is_lambdas() -> None:
    err = rejects("batch_size", VE, batch_size=10001)
    assert str(err).startswith(
        "batch_size: 1 validation error detected: Value '10001' at 'batchSize' failed to satisfy "
        "constraint: Member must have value less than or equal to 10000"
    )


@pytest.mark.parametrize("age", [0, 1, 30, 59])
def test_record_age_between_0_and_59_is_lambdas_invalid_parameter(age: int) -> None:
    err = rejects("maximum_record_age_in_seconds", maximum_record_age_in_seconds=age)
    assert (err.message, err.hint) == (AGE_MESSAGE, None)


def test_max_buffered_records_edges() -> None:
    assert esm(batch_size=10, max_buffered_records=10).buffered_records_limit == 10
    assert esm(batch_size=10, parallelization_factor=3).buffered_records_limit == 120
    rejects("max_buffered_records", batch_size=10, max_buffered_records=9)
    rejects("max_buffered_records", max_buffered_records=True)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"timeout": 1}, None),
        ({"timeout": 900}, None),
        ({"timeout": 0.5}, "timeout"),
        ({"timeout": 900.5}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"memory_size": 128}, None),
        ({"memory_size": 10240}, None),
        ({"memory_size": 127}, "memory_size"),
        ({"memory_size": 10241}, "memory_size"),
        ({"memory_size": 256.0}, "memory_size"),
        ({"handler": "no_colon"}, "handler"),
        ({"handler": "pkg.mod:"}, "handler"),
        ({"name": "has space"}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"role": "arn:aws:iam::000000000000:role/service-role/esm"}, None),
        ({"role": "not-a-role"}, "role"),
    ],
)
def test_function_config_ranges(kwargs: dict[str, Any], parameter: str | None) -> None:
    fields: dict[str, Any] = {"name": "fn", "handler": "pkg.mod:Handler.handle"} | kwargs
    if parameter is None:
        fn = FunctionConfig(**fields)
        assert isinstance(fn.timeout, float)
    else:
        with pytest.raises(ConfigError) as info:
            FunctionConfig(**fields)
        assert info.value.parameter == parameter


def test_function_config_defaults_and_arn() -> None:
    fn = FunctionConfig("fn", "pkg.mod:handler")
    assert (fn.timeout, fn.memory_size, fn.role) == (3.0, 128, None)
    assert (
        fn.arn("us-east-1", "000000000000") == "arn:aws:lambda:us-east-1:000000000000:function:fn"
    )
    assert fn.arn("cn-north-1", "000000000000").startswith("arn:aws-cn:lambda:")


@pytest.mark.parametrize(("port", "ok"), [(0, True), (65535, True), (-1, False), (65536, False)])
def test_control_port_edges(port: int, ok: bool) -> None:
    if ok:
        assert ControlConfig(port=port).port == port
    else:
        with pytest.raises(ConfigError, match="port"):
            ControlConfig(port=port)


def test_small_tables_defaults_and_checks() -> None:
    assert (ControlConfig().host, ControlConfig().port, StateConfig().path) == (
        "127.0.0.1",
        9001,
        "kinesis-esm.db",
    )
    assert KinesisConfig() == KinesisConfig(None, None)
    for bad in ({"endpoint_url": "127.0.0.1:4567"}, {"region": "nowhere"}):
        with pytest.raises(ConfigError) as info:
            KinesisConfig(**bad)
        assert info.value.parameter == next(iter(bad))
    with pytest.raises(ConfigError):
        StateConfig("")


# -- starting position --------------------------------------------------------------------------


def test_missing_starting_position_is_lambdas_message() -> None:
    err = rejects("starting_position", IPVE, starting_position=None)
    assert err.message == (
        "1 validation error detected: Value null at 'startingPosition' failed to satisfy "
        "constraint: Member must not be null."
    )


def test_bad_starting_position_is_lambdas_enum_message() -> None:
    err = rejects("starting_position", VE, starting_position="0")
    assert err.message == (
        "1 validation error detected: Value '0' at 'startingPosition' failed to satisfy "
        "constraint: Member must satisfy enum value set: [LATEST, AT_TIMESTAMP, TRIM_HORIZON]"
    )


def test_at_timestamp() -> None:
    past = time.time() - 3600
    cfg = esm(starting_position="AT_TIMESTAMP", starting_position_timestamp=int(past))
    assert cfg.starting_position_timestamp == float(int(past))
    assert isinstance(cfg.starting_position_timestamp, float)
    missing = rejects("starting_position_timestamp", starting_position="AT_TIMESTAMP")
    assert missing.message == "Need to specify a timestamp"
    future = time.time() + 3600
    err = rejects(
        "starting_position_timestamp",
        starting_position="AT_TIMESTAMP",
        starting_position_timestamp=future,
    )
    assert "future" in err.message
    for bad in (-1, float("nan"), True, "2024-01-01"):
        rejects(
            "starting_position_timestamp",
            starting_position="AT_TIMESTAMP",
            starting_position_timestamp=bad,
        )


@pytest.mark.parametrize("position", ["LATEST", "TRIM_HORIZON"])
def test_timestamp_without_at_timestamp_is_lambdas_message(position: str) -> None:
    err = rejects(
        "starting_position_timestamp", starting_position=position, starting_position_timestamp=1
    )
    assert err.message == "Timestamp only valid with StartingPosition AT_TIMESTAMP"


# -- types --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*RANGES, "max_buffered_records"])
@pytest.mark.parametrize("value", [True, False, "100", 100.0, None])
def test_integers_must_be_real_integers(name: str, value: object) -> None:
    if value is None and name == "max_buffered_records":
        return  # None is that parameter's default
    changes: dict[str, Any] = {name: value}
    assert "integer" in rejects(name, **changes).message


@pytest.mark.parametrize("name", ["enabled", "bisect_batch_on_function_error"])
@pytest.mark.parametrize("value", [1, 0, "true", None])
def test_booleans_must_be_real_booleans(name: str, value: object) -> None:
    changes: dict[str, Any] = {name: value}
    assert "boolean" in rejects(name, **changes).message


def test_strings_must_be_strings() -> None:
    rejects("event_source_arn", event_source_arn=42)
    rejects("function_name", function_name=["f"])
    rejects("uuid", uuid=123)
    rejects("uuid", uuid="not-a-uuid")
    assert esm(uuid=str(uuid.UUID(int=7))).uuid == str(uuid.UUID(int=7))


# -- function response types, destination, filters ---------------------------------------------


def test_function_response_types() -> None:
    assert esm(function_response_types=["ReportBatchItemFailures"]).function_response_types == (
        "ReportBatchItemFailures",
    )
    two = rejects(
        "function_response_types", VE, function_response_types=("ReportBatchItemFailures",) * 2
    )
    assert "Member must have length less than or equal to 1" in two.message
    bad = rejects("function_response_types", VE, function_response_types=("Nope",))
    assert "enum value set: [ReportBatchItemFailures]" in bad.message
    rejects("function_response_types", function_response_types="ReportBatchItemFailures")
    rejects("function_response_types", function_response_types=(1,))


@pytest.mark.parametrize(
    "destination",
    [
        "arn:aws:sqs:us-east-1:000000000000:dlq",
        "arn:aws:sqs:us-east-1:000000000000:dlq.fifo",
        "arn:aws:sns:eu-west-1:000000000000:failures",
        "arn:aws:s3:::my-failure-bucket",
        "file:///var/lib/kinesis-esm/failures.jsonl",
    ],
)
def test_destinations_accepted(destination: str) -> None:
    cfg = esm(destination_config=DestinationConfig(OnFailure(destination)))
    assert cfg.destination_config.on_failure.destination == destination


@pytest.mark.parametrize(
    "destination",
    ["arn:aws:lambda:us-east-1:000000000000:function:f", "sqs://dlq", "file://", STREAM, 7],
)
def test_destinations_rejected(destination: object) -> None:
    rejects(
        "destination_config.on_failure.destination",
        destination_config=DestinationConfig(OnFailure(destination)),  # type: ignore[arg-type]
    )


def test_destination_edges() -> None:
    # Lambda: an empty Destination removes the destination.
    assert esm(destination_config=DestinationConfig(OnFailure(""))).destination_config == (
        DestinationConfig()
    )
    long = "arn:aws:sqs:us-east-1:000000000000:" + "q" * 320
    err = rejects(
        "destination_config.on_failure.destination",
        VE,
        destination_config=DestinationConfig(OnFailure(long)),
    )
    assert "Member must have length less than or equal to 350" in err.message


def filters(*patterns: str) -> FilterCriteria:
    return FilterCriteria(tuple(Filter(p) for p in patterns))


def test_filters_accepted_and_emptiness_normalised() -> None:
    five = filters(*[json.dumps({"data": {"n": [i]}}) for i in range(5)])
    assert esm(filter_criteria=five).filter_criteria == five
    meta = filters('{"partitionKey": ["a"], "data": {"kind": [{"prefix": "ord"}]}}')
    assert esm(filter_criteria=meta).filter_criteria == meta
    assert esm(filter_criteria=FilterCriteria()).filter_criteria is None


def test_too_many_filters() -> None:
    six = filters(*['{"data": {"n": [1]}}'] * 6)
    assert "at most 5" in rejects("filter_criteria.filters", filter_criteria=six).message


@pytest.mark.parametrize(
    "pattern",
    [
        "not json",
        "[1, 2]",
        '"data"',
        '{"data": "plain"}',
        '{"data": ["plain"]}',
        "{}",
        '{"a": []}',
        '{"data": {"n": [{"numeric": ["<"]}]}}',  # the matcher's compiler decides, not a shape
        '{"data": {"n": [{"no-such-operator": 1}]}}',
        '{"partitionKey": [{"prefix": 5}]}',
    ],
)
def test_invalid_filter_pattern_is_lambdas_message(pattern: str) -> None:
    err = rejects("filter_criteria.filters[0].pattern", filter_criteria=filters(pattern))
    assert err.message == "Invalid filter pattern definition."


def test_filter_pattern_length_edges() -> None:
    head, tail = '{"data": {"k": ["', '"]}}'
    exactly = head + "x" * (4096 - len(head) - len(tail)) + tail
    assert len(exactly) == 4096
    esm(filter_criteria=filters(exactly))
    too_long = exactly.replace("x", "xx", 1)
    err = rejects("filter_criteria.filters[0].pattern", VE, filter_criteria=filters(too_long))
    assert "at 'filterCriteria.filters.1.member.pattern'" in err.message
    assert "Member must have length less than or equal to 4096" in err.message


# -- ARNs, names, replace ----------------------------------------------------------------------


def test_stream_arn_properties() -> None:
    cfg = esm()
    assert (cfg.stream_arn, cfg.consumer_arn) == (STREAM, None)
    assert (cfg.region, cfg.account_id, cfg.stream_name) == ("us-east-1", "000000000000", "orders")
    efo = esm(event_source_arn=CONSUMER)
    assert (efo.stream_arn, efo.consumer_arn, efo.stream_name) == (STREAM, CONSUMER, "orders")
    cn = esm(event_source_arn="arn:aws-cn:kinesis:cn-north-1:123456789012:stream/a.b_c-d")
    assert (cn.region, cn.account_id, cn.stream_name) == ("cn-north-1", "123456789012", "a.b_c-d")
    gov = esm(event_source_arn="arn:aws-us-gov:kinesis:us-gov-west-1:123456789012:stream/s")
    assert gov.region == "us-gov-west-1"


@pytest.mark.parametrize(
    "arn",
    [
        "orders",
        "arn:aws:kinesis:us-east-1:000000000000:orders",
        "arn:aws:kinesis:us-east-1:0000:stream/orders",
        "arn:aws:kinesis:us-east-1:000000000000:stream/",
        "arn:aws:kinesis:us-east-1:000000000000:stream/orders/consumer/c",
        "arn:aws:firehose:us-east-1:000000000000:deliverystream/orders",
        "arn:aws:dynamodb:us-east-1:000000000000:table/t/stream/2024-01-01T00:00:00.000",
    ],
)
def test_bad_event_source_arns(arn: str) -> None:
    err = rejects("event_source_arn", event_source_arn=arn)
    assert "Kinesis" in err.message and "stream/<name>" in str(err)


def test_sqs_arn_named_as_such() -> None:
    err = rejects("event_source_arn", event_source_arn="arn:aws:sqs:us-east-1:000000000000:q")
    assert "is a sqs ARN" in err.message


@pytest.mark.parametrize(
    "name",
    [
        "my-function",
        "my-function:prod",
        "my-function:$LATEST",
        "000000000000:function:my-function",
        "arn:aws:lambda:us-east-1:000000000000:function:my-function",
        "arn:aws:lambda:us-east-1:000000000000:function:my-function:7",
    ],
)
def test_function_name_forms(name: str) -> None:
    assert esm(function_name=name).function_name == name


def test_function_name_rejected() -> None:
    assert "regular expression" in rejects("function_name", VE, function_name="a b").message
    assert "greater than or equal to 1" in rejects("function_name", VE, function_name="").message
    assert (
        "less than or equal to 256" in rejects("function_name", VE, function_name="f" * 257).message
    )


def test_replace_revalidates_and_objects_are_frozen() -> None:
    cfg = esm()
    assert cfg.replace(batch_size=7).batch_size == 7
    assert cfg.batch_size == 100
    with pytest.raises(ConfigError) as info:
        cfg.replace(batch_size=0)
    assert info.value.parameter == "batch_size"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch_size = 5  # type: ignore[misc]
    assert hash(cfg) == hash(esm())


# -- stable_uuid, unsupported_features ----------------------------------------------------------


def test_stable_uuid() -> None:
    first = stable_uuid("my-function", STREAM)
    assert first == stable_uuid("my-function", STREAM)
    assert uuid.UUID(first).version == 5
    others = {
        stable_uuid("other", STREAM),
        stable_uuid("my-function", STREAM.replace("orders", "payments")),
        stable_uuid("my-function", CONSUMER),
        stable_uuid("my-functio", "n\n" + STREAM),
    }
    assert first not in others and len(others) == 4


NON_DEFAULTS: dict[str, dict[str, Any]] = {
    "parallelization_factor": {"parallelization_factor": 4},
    "maximum_retry_attempts": {"maximum_retry_attempts": 0},
    "maximum_record_age_in_seconds": {"maximum_record_age_in_seconds": 60},
    "bisect_batch_on_function_error": {"bisect_batch_on_function_error": True},
    "function_response_types": {"function_response_types": ("ReportBatchItemFailures",)},
    "destination_config": {
        "destination_config": DestinationConfig(OnFailure("arn:aws:sqs:us-east-1:000000000000:d"))
    },
    "tumbling_window_in_seconds": {"tumbling_window_in_seconds": 30},
    "filter_criteria": {"filter_criteria": filters('{"data": {"k": ["v"]}}')},
    "consumer_arn": {"event_source_arn": CONSUMER},
}


def test_defaults_need_no_feature() -> None:
    unsupported_features(esm(), frozenset())
    unsupported_features(esm(filter_criteria=FilterCriteria()), frozenset())
    unsupported_features(esm(destination_config=DestinationConfig(OnFailure(""))), frozenset())


@pytest.mark.parametrize("feature", NON_DEFAULTS)
def test_unsupported_features_names_the_parameter(feature: str) -> None:
    cfg = esm(**NON_DEFAULTS[feature])
    supported = frozenset({"some_other_feature"})
    with pytest.raises(NotSupportedYetError) as info:
        unsupported_features(cfg, supported)
    err = info.value
    assert isinstance(err, ConfigError) and isinstance(err, ValueError)
    assert (err.parameter, err.code) == (feature, IPVE)
    assert err.message.startswith(f"{feature} = ")
    assert "is valid but not supported yet by kinesis-esm (supported: some_other_feature)" in (
        err.message
    )
    unsupported_features(cfg, frozenset({feature}))


def test_unsupported_features_message_and_order() -> None:
    # (a tumbling window with a parallelization factor is refused by the config itself)
    cfg = esm(parallelization_factor=4, bisect_batch_on_function_error=True)
    with pytest.raises(NotSupportedYetError) as info:
        unsupported_features(cfg, frozenset({"filter_criteria", "destination_config"}))
    assert info.value.message == (
        "parallelization_factor = 4 is valid but not supported yet by kinesis-esm "
        "(supported: destination_config, filter_criteria)"
    )
    with pytest.raises(NotSupportedYetError, match="bisect_batch_on_function_error = true"):
        unsupported_features(cfg, frozenset({"parallelization_factor"}))


def test_a_tumbling_window_needs_parallelization_factor_1() -> None:
    with pytest.raises(ConfigError) as info:
        esm(parallelization_factor=4, tumbling_window_in_seconds=30)
    err = info.value
    assert err.parameter == "tumbling_window_in_seconds" and err.code == IPVE
    assert err.message == "a tumbling window (30 s) needs parallelization_factor = 1, got 4"
    assert err.hint is not None and "parallelization_factor = 1" in err.hint
    assert esm(parallelization_factor=4).parallelization_factor == 4
    assert esm(tumbling_window_in_seconds=900).tumbling_window_in_seconds == 900


# -- DaemonConfig -------------------------------------------------------------------------------


def test_daemon_config_resolves_functions_by_name_or_arn() -> None:
    fn = FunctionConfig("my-function", "pkg.mod:handler")
    cfg = DaemonConfig(functions=(fn, FunctionConfig("other", "pkg.mod:other")))
    arn = "arn:aws:lambda:us-east-1:000000000000:function:my-function"
    for ref in (
        "my-function",
        "my-function:live",
        arn,
        f"{arn}:3",
        "000000000000:function:my-function",
    ):
        assert cfg.function(ref) is fn, ref
    assert cfg.function("missing") is None
    assert cfg.function(arn.replace("my-function", "missing")) is None


def test_daemon_config_checks_references_and_duplicates() -> None:
    fn = FunctionConfig("my-function", "pkg.mod:handler")
    with pytest.raises(ConfigError) as info:
        DaemonConfig(functions=(fn,), event_source_mappings=(esm(function_name="nope"),))
    assert info.value.parameter == "event_source_mappings[0].function_name"
    assert "declared: my-function" in str(info.value)
    with pytest.raises(ConfigError) as info:
        DaemonConfig(functions=(fn, fn))
    assert "declared twice" in info.value.message
    arn = "arn:aws:lambda:us-east-1:000000000000:function:my-function"
    with pytest.raises(ConfigError) as info:
        DaemonConfig(functions=(fn,), event_source_mappings=(esm(), esm(function_name=arn)))
    assert info.value.code == "ResourceConflictException"
    assert info.value.parameter == "event_source_mappings[1]"
    assert info.value.message == (
        f'The event source arn (" {STREAM} ") and function (" {arn} ") provided mapping already '
        "exists. Please update or delete the existing mapping with UUID "
        f"{stable_uuid('my-function', STREAM)}"
    )
    # Several mappings may read one stream, and one function may read several streams.
    other = FunctionConfig("other", "pkg.mod:other")
    DaemonConfig(
        functions=(fn, other),
        event_source_mappings=(
            esm(),
            esm(function_name="other"),
            esm(event_source_arn=CONSUMER),
        ),
    )


def test_duplicate_reports_the_existing_uuid_when_set() -> None:
    fn = FunctionConfig("my-function", "pkg.mod:handler")
    pinned = str(uuid.UUID(int=1))
    with pytest.raises(ConfigError, match=f"existing mapping with UUID {pinned}"):
        DaemonConfig(functions=(fn,), event_source_mappings=(esm(uuid=pinned), esm()))
    same = esm()
    with pytest.raises(ConfigError, match="provided mapping already exists"):
        DaemonConfig(functions=(fn,), event_source_mappings=(same, same))
    with pytest.raises(ConfigError) as info:
        DaemonConfig(
            functions=(fn,),
            event_source_mappings=(esm(uuid=pinned), esm(event_source_arn=CONSUMER, uuid=pinned)),
        )
    assert info.value.parameter == "event_source_mappings[1].uuid"


# -- TOML ---------------------------------------------------------------------------------------


def test_full_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "kinesis-esm.toml"
    path.write_text(FULL_TOML, encoding="utf-8")
    cfg = load_config(path)
    assert cfg.kinesis == KinesisConfig("http://127.0.0.1:4567", "us-east-1")
    assert cfg.state == StateConfig("kinesis-esm.db")
    assert cfg.control == ControlConfig("127.0.0.1", 9001)
    assert cfg.functions == (FunctionConfig("my-function", "my_package.my_module:handler", 30.0),)
    assert cfg.event_source_mappings == (
        EventSourceMappingConfig(
            function_name="my-function",
            event_source_arn=STREAM,
            starting_position="TRIM_HORIZON",
            function_response_types=("ReportBatchItemFailures",),
            destination_config=DestinationConfig(
                OnFailure("arn:aws:sqs:us-east-1:000000000000:dlq")
            ),
            filter_criteria=filters('{"data": {"kind": ["order"]}}'),
        ),
    )
    assert cfg.function("my-function") is cfg.functions[0]
    assert load_config(str(path)) == cfg


def test_minimal_document_and_defaults() -> None:
    assert parse_config({}) == DaemonConfig()
    cfg = parse_config(data())
    assert cfg.kinesis == KinesisConfig() and cfg.control == ControlConfig()
    assert cfg.event_source_mappings[0] == EventSourceMappingConfig("f", STREAM, "LATEST")


def test_toml_conveniences() -> None:
    cfg = parse_config(
        data(
            starting_position="AT_TIMESTAMP",
            starting_position_timestamp=tomllib.loads("t = 2020-01-01T00:00:00Z")["t"],
            filter_criteria={"filters": [{"pattern": {"data": {"kind": ["order"]}}}]},
        )
    )
    esm_cfg = cfg.event_source_mappings[0]
    assert esm_cfg.starting_position_timestamp == 1577836800.0
    assert esm_cfg.filter_criteria == filters('{"data": {"kind": ["order"]}}')


def test_naive_datetime_rejected() -> None:
    naive = datetime.datetime(2020, 1, 1)
    doc = data(starting_position="AT_TIMESTAMP", starting_position_timestamp=naive)
    parse_rejects(doc, "event_source_mappings[0].starting_position_timestamp")


@pytest.mark.parametrize(
    ("doc", "parameter", "suggestion"),
    [
        ({"kinesis_endpoint": "x"}, "kinesis_endpoint", "kinesis"),
        ({"event_source_mapping": []}, "event_source_mapping", "event_source_mappings"),
        ({"kinesis": {"endpoint": "x"}}, "kinesis.endpoint", "endpoint_url"),
        ({"control": {"prot": 1}}, "control.prot", "port"),
        ({"state": {"file": "x"}}, "state.file", None),
        ({"functions": {"f": {"handler": "a:b", "timout": 3}}}, "functions.f.timout", "timeout"),
        (data(batchsize=10), "event_source_mappings[0].batchsize", "batch_size"),
        (data(BatchSize=10), "event_source_mappings[0].BatchSize", "batch_size"),
        (
            data(ParallelizationFactor=2),
            "event_source_mappings[0].ParallelizationFactor",
            "parallelization_factor",
        ),
        (
            data(destination_config={"onfailure": {}}),
            "event_source_mappings[0].destination_config.onfailure",
            "on_failure",
        ),
        (
            data(destination_config={"on_failure": {"destination": "", "arn": "x"}}),
            "event_source_mappings[0].destination_config.on_failure.arn",
            None,
        ),
        (
            data(filter_criteria={"filter": []}),
            "event_source_mappings[0].filter_criteria.filter",
            "filters",
        ),
        (
            data(filter_criteria={"filters": [{"patern": "{}"}]}),
            "event_source_mappings[0].filter_criteria.filters[0].patern",
            "pattern",
        ),
    ],
)
def test_unknown_keys(doc: dict[str, Any], parameter: str, suggestion: str | None) -> None:
    err = parse_rejects(doc, parameter)
    table, _, key = parameter.rpartition(".")
    where = f"in table {table}" if table else "at the top level"
    assert err.message == f"unknown key '{key}' {where}"
    if suggestion is not None:
        assert err.hint == f"did you mean '{suggestion}'?"
    else:
        assert err.hint is not None and err.hint.startswith("valid keys: ")


def test_unknown_key_names_its_table() -> None:
    err = parse_rejects(data(batchsize=1), "event_source_mappings[0].batchsize")
    assert "in table event_source_mappings[0]" in err.message
    top = parse_rejects({"nope": 1}, "nope")
    assert top.message == "unknown key 'nope' at the top level"


@pytest.mark.parametrize("key", ["on_success", "OnSuccess"])
def test_on_success_is_lambdas_message(key: str) -> None:
    doc = data(destination_config={key: {"destination": "arn:aws:sqs:us-east-1:000000000000:q"}})
    err = parse_rejects(doc, f"event_source_mappings[0].destination_config.{key}")
    assert (
        err.message
        == "Unsupported DestinationConfig parameter for given event source mapping type."
    )


@pytest.mark.parametrize(
    ("mapping", "parameter", "expected"),
    [
        ({"batch_size": True}, "batch_size", "integer"),
        ({"batch_size": "100"}, "batch_size", "integer"),
        ({"batch_size": 100.0}, "batch_size", "integer"),
        ({"enabled": "yes"}, "enabled", "boolean"),
        ({"enabled": 1}, "enabled", "boolean"),
        ({"bisect_batch_on_function_error": 0}, "bisect_batch_on_function_error", "boolean"),
        (
            {"function_response_types": "ReportBatchItemFailures"},
            "function_response_types",
            "array",
        ),
        ({"event_source_arn": 5}, "event_source_arn", "string"),
        (
            {"destination_config": "arn:aws:sqs:us-east-1:000000000000:q"},
            "destination_config",
            "table",
        ),
        (
            {"destination_config": {"on_failure": {"destination": 1}}},
            "destination_config.on_failure.destination",
            "string",
        ),
        ({"filter_criteria": {"filters": {"pattern": "{}"}}}, "filter_criteria.filters", "array"),
        (
            {"filter_criteria": {"filters": [{"pattern": 5}]}},
            "filter_criteria.filters[0].pattern",
            "string",
        ),
    ],
)
def test_wrong_types_name_parameter_and_type(
    mapping: dict[str, Any], parameter: str, expected: str
) -> None:
    err = parse_rejects(data(**mapping), f"event_source_mappings[0].{parameter}")
    assert expected in err.message


def test_wrong_types_in_other_tables() -> None:
    assert "integer" in parse_rejects({"control": {"port": "9001"}}, "control.port").message
    assert "table" in parse_rejects({"control": 9001}, "control").message
    assert (
        "array of tables"
        in parse_rejects(
            {"event_source_mappings": {"function_name": "f"}}, "event_source_mappings"
        ).message
    )
    assert "table" in parse_rejects({"functions": []}, "functions").message
    assert (
        "number"
        in parse_rejects(
            {"functions": {"f": {"handler": "a:b", "timeout": "3"}}}, "functions.f.timeout"
        ).message
    )
    parse_rejects({"functions": {"f": {}}}, "functions.f.handler")


def test_range_errors_through_toml_name_the_mapping() -> None:
    err = parse_rejects(data(batch_size=0), "event_source_mappings[0].batch_size", VE)
    assert "at 'batchSize'" in err.message
    doc = data()
    doc["event_source_mappings"].append(dict(doc["event_source_mappings"][0], batch_size=10001))
    doc["event_source_mappings"][1]["event_source_arn"] = CONSUMER
    parse_rejects(doc, "event_source_mappings[1].batch_size", VE)


def test_required_mapping_keys() -> None:
    doc = data()
    del doc["event_source_mappings"][0]["starting_position"]
    err = parse_rejects(doc, "event_source_mappings[0].starting_position")
    assert "Value null at 'startingPosition'" in err.message
    del doc["event_source_mappings"][0]["function_name"]
    err = parse_rejects(doc, "event_source_mappings[0].function_name", VE)
    assert "Value null at 'functionName'" in err.message
    del doc["event_source_mappings"][0]["event_source_arn"]
    parse_rejects(doc, "event_source_mappings[0].event_source_arn")


def test_undeclared_function() -> None:
    err = parse_rejects(data(function_name="ghost"), "event_source_mappings[0].function_name")
    assert "'ghost' is not declared under [functions]" in err.message


def test_duplicate_pair_in_toml() -> None:
    doc = data()
    doc["event_source_mappings"].append(dict(doc["event_source_mappings"][0], batch_size=5))
    err = parse_rejects(doc, "event_source_mappings[1]", "ResourceConflictException")
    assert err.message.startswith(f'The event source arn (" {STREAM} ") and function (" f ")')
    assert err.message.endswith(f"existing mapping with UUID {stable_uuid('f', STREAM)}")


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[kinesis]\nregion = "us-east-1"\nendpoint_url = \n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "line 3" in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.source == f"{path}:3"


def test_semantic_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(FULL_TOML.replace("batch_size = 100", "batch_size = 0"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: event_source_mappings[0].batch_size: ")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'a = "\xff"\n')
    with pytest.raises(ConfigError):
        load_config(binary)


# -- properties ---------------------------------------------------------------------------------


def in_range(name: str) -> st.SearchStrategy[int]:
    lo, hi, _ = RANGES[name]
    if name == "maximum_record_age_in_seconds":
        return st.one_of(st.just(-1), st.integers(60, hi))
    return st.integers(lo, hi)


def one_lane_with_windows(values: dict[str, int]) -> dict[str, int]:
    # a tumbling window needs parallelization_factor 1 (test_a_tumbling_window_needs_...)
    if values["tumbling_window_in_seconds"]:
        return {**values, "parallelization_factor": 1}
    return values


@given(
    st.fixed_dictionaries({name: in_range(name) for name in RANGES}).map(one_lane_with_windows),
    st.booleans(),
)
def test_any_in_range_values_construct(values: dict[str, int], enabled: bool) -> None:
    cfg = esm(enabled=enabled, **values)
    assert all(getattr(cfg, name) == value for name, value in values.items())
    assert cfg.replace() == cfg


@st.composite
def out_of_range(draw: st.DrawFn) -> tuple[str, int]:
    name = draw(st.sampled_from(sorted(RANGES)))
    lo, hi, _ = RANGES[name]
    below, above = st.integers(max_value=lo - 1), st.integers(min_value=hi + 1)
    if name == "maximum_record_age_in_seconds":
        return name, draw(st.one_of(below, above, st.integers(0, 59)))
    return name, draw(st.one_of(below, above))


@given(out_of_range())
def test_any_out_of_range_value_raises_naming_the_parameter(case: tuple[str, int]) -> None:
    name, value = case
    with pytest.raises(ConfigError) as info:
        esm(**{name: value})
    assert info.value.parameter == name
    assert name in str(info.value)


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_stable_uuid_is_a_function_of_the_pair(function_name: str, arn: str) -> None:
    assert stable_uuid(function_name, arn) == stable_uuid(function_name, arn)
    assert uuid.UUID(stable_uuid(function_name, arn)).version == 5
