"""Lambda's Kinesis event filtering: the documented examples, validation, Kinesis rules, properties.

EventBridge's examples match whole events; a Kinesis filter matches ``data`` (the record's JSON
payload) and the record's metadata. So each EventBridge example runs as Kinesis does it: the
example's pattern under ``data``, the example's event as the record's data.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kinesis_esm import Record
from kinesis_esm.policy._filters import (
    INVALID_PATTERN_MESSAGE,
    MAX_PATTERN_DEPTH,
    MAX_PATTERN_LENGTH,
    PatternError,
    RecordFilter,
    compile_pattern,
)

SEQUENCE = "49590338271490256608559692538361571095921575989136588898"
ARRIVAL = 1545084650.987


def record(data: Any, *, key: str = "1", encryption: str | None = None) -> Record:
    raw = data if isinstance(data, bytes) else (data if isinstance(data, str) else json.dumps(data))
    payload = raw.encode() if isinstance(raw, str) else raw
    return Record.from_bytes(SEQUENCE, key, payload, ARRIVAL, encryption)


def data_matches(pattern: str, event: str) -> bool:
    """An EventBridge example, as a Kinesis filter: the pattern under data, the event as data."""
    return compile_pattern('{"data": ' + pattern + "}").matches(record(event))


# EventBridge's example events (user guide and event-ruler's README), as JSON text so that number
# literals keep their form.
EC2 = """{"version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
  "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
  "account": "111122223333", "time": "2017-12-22T18:43:48Z", "region": "us-west-1",
  "resources": ["arn:aws:ec2:us-west-1:123456789012:instance/i-1234567890abcdef0"],
  "detail": {"instance-id": "i-1234567890abcdef0", "state": "terminated"}}"""
AUTOSCALING = """{"version": "0", "id": "3e3c153a-8339-4e30-8c35-687ebef853fe",
  "detail-type": "EC2 Instance Launch Successful", "source": "aws.autoscaling",
  "account": "123456789012", "time": "2015-11-11T21:31:47Z", "region": "us-east-1",
  "resources": [], "detail": {"eventVersion": "", "responseElements": null}}"""
MACIE = """{"version": "0", "detail-type": "Macie Alert", "source": "aws.macie",
  "resources": ["arn:aws:macie:us-east-1:123456789012:trigger/trigger_id/alert/alert_id",
                "arn:aws:macie:us-east-1:123456789012:trigger/trigger_id"],
  "detail": {"notification-type": "ALERT_CREATED", "tags": ["Custom_Alert", "Insider"],
             "risk-score": 80, "trigger": {"alert-type": "basic", "risk": 8}}}"""
AUTOSCALING_RESOURCES = """{"resources": [
  "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:eb56d16b-bbf0-401d-b893-d5978ed4a025:autoScalingGroupName/ASGTerminate",
  "arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f"]}"""
RULER = """{"version": "0", "id": "ddddd4-aaaa-7777-4444-345dd43cc333",
  "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
  "account": "012345679012", "time": "2017-10-02T16:24:49Z", "region": "us-east-1",
  "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-000000aaaaaa00000"],
  "detail": {"c-count": 5, "d-count": 3, "x-limit": 301.8, "source-ip": "10.0.0.33",
             "instance-id": "i-000000aaaaaa00000", "state": "running"}}"""
STATES = '{"detail": {"state": ["initializing", "running"]}}'
STATES_NESTED_COUNT = '{"detail": {"state": ["initializing", "running"], "c-count": {"c1": 100}}}'
EMPLOYEES = """{"employees": [{"firstName": "John", "lastName": "Doe"},
  {"firstName": "Anna", "lastName": "Smith"}, {"firstName": "Peter", "lastName": "Jones"}]}"""
EMPLOYEES_NESTED = """{"employees": [[{"firstName": "John", "lastName": "Doe"},
  {"firstName": "Anna", "lastName": "Smith"}], [{"firstName": "Peter", "lastName": "Jones"}]]}"""
CW = '{"source": "aws.cloudwatch", "namespace": "AWS/ES"}'
CW_S3 = '{"source": "aws.cloudwatch", "namespace": "AWS/S3"}'
CW_ALARM = '{"namespace": "AWS/EC2", "detail": {"detail-type": "CloudWatch Alarm State Change"}}'
CW_OTHER = '{"namespace": "AWS/EC2", "detail": {"source": "aws.other"}}'
CW_SPACE = '{"source": "aws.cloudwatch", "metricType": "MetricType", "namespace": "AWS/EC2", '
OR_PARALLEL = """{"$or": [{"metricName": ["CPUUtilization", "ReadLatency"]},
  {"namespace": ["AWS/EC2", "AWS/ES"]}], "detail": {"$or": [{"source": ["aws.cloudwatch"]},
  {"detail-type": ["CloudWatch Alarm State Change"]}]}}"""
OR_NESTED = """{"source": ["aws.cloudwatch"], "$or": [
  {"metricName": ["CPUUtilization", "ReadLatency"]},
  {"metricType": ["MetricType"], "namespace": ["AWS/EC2", "AWS/ES"],
   "$or": [{"metricId": [1234]}, {"spaceId": [1000]}]},
  {"scope": ["Service"]}]}"""
COMPLEX = """{"time": [{"prefix": "2017-10-02"}], "detail": {
  "state": [{"anything-but": "initializing"}], "c-count": [{"numeric": [">", 0, "<=", 5]}],
  "d-count": [{"numeric": ["<", 10]}], "x-limit": [{"anything-but": [100, 200, 300]}],
  "source-ip": [{"cidr": "10.0.0.0/8"}]}}"""
RESOURCES = """{"resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f",
  "arn:aws:ec2:us-east-1:111122223333:instance/i-b188560f",
  "arn:aws:ec2:us-east-1:444455556666:instance/i-b188560f"]}"""

# (pattern under data, event as data, matches?)
EVENTBRIDGE_TABLE: list[tuple[str, str, bool]] = [
    # exact values and value lists (eb-event-patterns)
    (
        '{"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"], '
        '"detail": {"state": ["terminated"]}}',
        EC2,
        True,
    ),
    ('{"source": ["aws.ec2", "aws.fargate"]}', EC2, True),
    ('{"source": ["aws.fargate"]}', EC2, False),
    ('{"detail": {"state": ["running"]}}', EC2, False),
    ('{"detail": {"state": ["terminated"]}, "region": ["eu-west-1"]}', EC2, False),
    # null and empty string (eb-event-patterns-null-values)
    (
        '{"source": ["aws.autoscaling"], "detail-type": ["EC2 Instance Launch Successful"], '
        '"detail": {"responseElements": [null]}}',
        AUTOSCALING,
        True,
    ),
    ('{"detail": {"eventVersion": [""]}}', AUTOSCALING, True),
    ('{"detail": {"eventVersion": [null]}}', AUTOSCALING, False),
    ('{"detail": {"responseElements": [""]}}', AUTOSCALING, False),
    ('{"detail": {"notThere": [null]}}', AUTOSCALING, False),
    # numbers and nested objects (Macie example); value lists against event arrays
    (
        '{"source": ["aws.macie"], "detail-type": ["Macie Alert"], '
        '"detail": {"risk-score": [80], "trigger": {"risk": [8]}}}',
        MACIE,
        True,
    ),
    ('{"detail": {"risk-score": [81]}}', MACIE, False),
    ('{"detail": {"tags": ["Insider"]}}', MACIE, True),
    ('{"detail": {"tags": ["Outsider", "Custom_Alert"]}}', MACIE, True),
    ('{"detail": {"tags": ["Outsider"]}}', MACIE, False),
    (RESOURCES, AUTOSCALING_RESOURCES, True),  # the arrays page: the intersection is not empty
    (RESOURCES, EC2, False),
    (
        '{"resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f", "x"]}',
        AUTOSCALING_RESOURCES,
        True,
    ),
    # prefix, suffix, equals-ignore-case, wildcard (event-ruler README, operators page)
    ('{"time": [{"prefix": "2017-10-02"}]}', RULER, True),
    ('{"time": [{"prefix": "2017-10-03"}]}', RULER, False),
    ('{"source": [{"suffix": "ec2"}]}', RULER, True),
    ('{"source": [{"suffix": "EC2"}]}', RULER, False),
    ('{"source": [{"equals-ignore-case": "AWS.EC2"}]}', RULER, True),
    ('{"source": [{"equals-ignore-case": "aws.ec"}]}', RULER, False),
    ('{"source": [{"prefix": {"equals-ignore-case": "AWS."}}]}', RULER, True),
    ('{"source": [{"suffix": {"equals-ignore-case": ".EC2"}}]}', RULER, True),
    ('{"source": [{"suffix": {"equals-ignore-case": ".ec3"}}]}', RULER, False),
    ('{"source": [{"wildcard": "aws.*"}]}', RULER, True),
    ('{"detail-type": [{"wildcard": "EC2*State-change*"}]}', RULER, True),
    ('{"detail-type": [{"wildcard": "EC2*Stopped*"}]}', RULER, False),
    ('{"detail": {"instance-id": [{"wildcard": "i-*0000"}]}}', RULER, True),
    ('{"time": [{"prefix": "2017"}]}', '{"time": 2017}', False),  # prefix: strings only
    # anything-but: values, lists, and with prefix / suffix / equals-ignore-case / wildcard
    ('{"detail": {"state": [{"anything-but": "initializing"}]}}', RULER, True),
    ('{"detail": {"state": [{"anything-but": "running"}]}}', RULER, False),
    ('{"detail": {"state": [{"anything-but": ["stopped", "overloaded"]}]}}', RULER, True),
    ('{"detail": {"state": [{"anything-but": ["stopped", "running"]}]}}', RULER, False),
    ('{"detail": {"x-limit": [{"anything-but": 123}]}}', RULER, True),
    ('{"detail": {"x-limit": [{"anything-but": [100, 200, 300]}]}}', RULER, True),
    ('{"detail": {"c-count": [{"anything-but": 5}]}}', RULER, False),
    ('{"detail": {"missing": [{"anything-but": "x"}]}}', RULER, False),
    ('{"detail": {"state": [{"anything-but": {"prefix": "init"}}]}}', RULER, True),
    ('{"detail": {"state": [{"anything-but": {"prefix": "run"}}]}}', RULER, False),
    ('{"detail": {"instance-id": [{"anything-but": {"suffix": "000"}}]}}', RULER, False),
    ('{"FileName": [{"anything-but": {"suffix": ".png"}}]}', '{"FileName": "a.png"}', False),
    ('{"FileName": [{"anything-but": {"suffix": ".png"}}]}', '{"FileName": "a.jpg"}', True),
    ('{"detail": {"state": [{"anything-but": {"equals-ignore-case": "RUNNING"}}]}}', RULER, False),
    (
        '{"detail": {"state": [{"anything-but": {"equals-ignore-case": ["stopped", "INIT"]}}]}}',
        RULER,
        True,
    ),
    (
        '{"FilePath": [{"anything-but": {"wildcard": "*/lib/*"}}]}',
        '{"FilePath": "/u/lib/a"}',
        False,
    ),
    ('{"FilePath": [{"anything-but": {"wildcard": "*/lib/*"}}]}', '{"FilePath": "/u/bin/a"}', True),
    # numeric comparisons and ranges
    (
        '{"detail": {"c-count": [{"numeric": [">", 0, "<=", 5]}], '
        '"d-count": [{"numeric": ["<", 10]}], "x-limit": [{"numeric": ["=", 3.018e2]}]}}',
        RULER,
        True,
    ),
    ('{"detail": {"c-count": [{"numeric": [">", 5]}]}}', RULER, False),
    ('{"detail": {"c-count": [{"numeric": [">=", 5]}]}}', RULER, True),
    ('{"detail": {"c-count": [{"numeric": ["<", 5]}]}}', RULER, False),
    ('{"detail": {"c-count": [{"numeric": ["<=", 5]}]}}', RULER, True),
    ('{"detail": {"c-count": [{"numeric": [">", 0, "<", 5]}]}}', RULER, False),
    ('{"detail": {"x-limit": [{"numeric": [">=", 301.8, "<", 302]}]}}', RULER, True),
    ('{"detail": {"state": [{"numeric": [">", 0]}]}}', RULER, False),  # numbers only
    # cidr
    ('{"detail": {"source-ip": [{"cidr": "10.0.0.0/24"}]}}', RULER, True),
    ('{"detail": {"source-ip": [{"cidr": "10.0.1.0/24"}]}}', RULER, False),
    ('{"ip": [{"cidr": "2001:db8::/32"}]}', '{"ip": "2001:db8::1"}', True),
    # exists, on leaves only
    ('{"detail": {"c-count": [{"exists": true}]}}', RULER, True),
    ('{"detail": {"c-count": [{"exists": false}]}}', RULER, False),
    ('{"detail": {"c-count": [{"exists": false}]}}', STATES, True),
    ('{"detail": {"c-count": [{"exists": false}]}}', STATES_NESTED_COUNT, True),
    ('{"detail": {"c-count": [{"exists": true}]}}', STATES_NESTED_COUNT, False),
    ('{"detail": {"state": ["initializing", "running"]}}', RULER, True),
    ('{"detail": {"responseElements": [{"exists": true}]}}', AUTOSCALING, True),  # null exists
    (COMPLEX, RULER, True),
    # $or (event-ruler README)
    (
        '{"source": ["aws.cloudwatch"], "$or": [{"metricName": ["CPUUtilization", "ReadLatency"]},'
        ' {"namespace": ["AWS/EC2", "AWS/ES"]}]}',
        CW,
        True,
    ),
    (
        '{"source": ["aws.cloudwatch"], "$or": [{"metricName": ["CPUUtilization", "ReadLatency"]},'
        ' {"namespace": ["AWS/EC2", "AWS/ES"]}]}',
        CW_S3,
        False,
    ),
    (OR_PARALLEL, CW_ALARM, True),
    (OR_PARALLEL, CW_OTHER, False),
    (OR_NESTED, CW_SPACE + '"spaceId": 1000}', True),
    (OR_NESTED, CW_SPACE + '"spaceId": 1001}', False),
    (OR_NESTED, '{"source": "aws.cloudwatch", "scope": "Service"}', True),
    # arrays of objects: one element must match the nested pattern as a whole
    ('{"employees": {"firstName": ["Anna"]}}', EMPLOYEES, True),
    ('{"employees": {"firstName": ["Anna"], "lastName": ["Smith"]}}', EMPLOYEES, True),
    ('{"employees": {"firstName": ["Anna"], "lastName": ["Jones"]}}', EMPLOYEES, False),
    ('{"employees": {"firstName": ["Peter"]}}', EMPLOYEES_NESTED, True),
    # matching is literal: strings exactly, numbers by their JSON text
    ('{"n": [300]}', '{"n": 300}', True),
    ('{"n": [300]}', '{"n": 300.0}', False),
    ('{"n": [300]}', '{"n": 3.0e2}', False),
    ('{"n": [3.0e2]}', '{"n": 3.0e2}', True),
    ('{"n": [{"numeric": ["=", 300]}]}', '{"n": 3.0e2}', True),
    ('{"n": ["300"]}', '{"n": 300}', False),
    ('{"n": [300]}', '{"n": "300"}', False),
    ('{"s": ["Alice"]}', '{"s": "alice"}', False),
    ('{"s": ["caf\\u00e9"]}', '{"s": "caf\\u00e9"}', True),
    ('{"s": ["cafe\\u0301"]}', '{"s": "caf\\u00e9"}', False),  # no normalization
    ('{"flag": [true]}', '{"flag": true}', True),
    ('{"flag": [true]}', '{"flag": "true"}', False),
    ('{"flag": [false, null]}', '{"flag": null}', True),
    # wildcard escapes: \\* is a literal star
    ('{"a": [{"wildcard": "2\\\\*3"}]}', '{"a": "2*3"}', True),
    ('{"a": [{"wildcard": "2\\\\*3"}]}', '{"a": "223"}', False),
    ('{"a": [{"wildcard": "x\\\\\\\\y"}]}', '{"a": "x\\\\y"}', True),
]


@pytest.mark.parametrize(("pattern", "event", "expected"), EVENTBRIDGE_TABLE)
def test_eventbridge_examples(pattern: str, event: str, expected: bool) -> None:
    assert data_matches(pattern, event) is expected


def test_the_table_is_large_and_covers_every_operator() -> None:
    patterns = " ".join(row[0] for row in EVENTBRIDGE_TABLE)
    assert len(EVENTBRIDGE_TABLE) >= 60
    for operator in (
        "prefix",
        "suffix",
        "equals-ignore-case",
        "wildcard",
        "anything-but",
        "numeric",
        "exists",
        "cidr",
        "$or",
        "null",
        '[""]',
    ):
        assert operator in patterns, operator


# Lambda's documented examples (operator table, Kinesis page): full Kinesis patterns.
LAMBDA_TABLE: list[tuple[str, Any, bool]] = [
    ('{"data": {"UserID": [null]}}', {"UserID": None}, True),
    ('{"data": {"LastName": [""]}}', {"LastName": ""}, True),
    ('{"data": {"LastName": [""]}}', {"LastName": None}, False),
    ('{"data": {"Name": ["Alice"]}}', {"Name": "Alice"}, True),
    ('{"data": {"Location": ["New York"], "Day": ["Monday"]}}', {"Location": "New York"}, False),
    (
        '{"data": {"Location": ["New York"], "Day": ["Monday"]}}',
        {"Location": "New York", "Day": "Monday"},
        True,
    ),
    ('{"data": {"PaymentType": ["Credit", "Debit"]}}', {"PaymentType": "Debit"}, True),
    ('{"data": {"PaymentType": ["Credit", "Debit"]}}', {"PaymentType": "Cash"}, False),
    ('{"data": {"Weather": [{"anything-but": ["Raining"]}]}}', {"Weather": "Sunny"}, True),
    ('{"data": {"Weather": [{"anything-but": ["Raining"]}]}}', {"Weather": "Raining"}, False),
    ('{"data": {"Price": [{"numeric": ["=", 100]}]}}', {"Price": 100}, True),
    ('{"data": {"Price": [{"numeric": [">", 10, "<=", 20]}]}}', {"Price": 20}, True),
    ('{"data": {"Price": [{"numeric": [">", 10, "<=", 20]}]}}', {"Price": 10}, False),
    ('{"data": {"ProductName": [{"exists": true}]}}', {"ProductName": "x"}, True),
    ('{"data": {"ProductName": [{"exists": false}]}}', {"ProductName": "x"}, False),
    ('{"data": {"ProductName": [{"exists": false}]}}', {"Other": 1}, True),
    ('{"data": {"Region": [{"prefix": "us-"}]}}', {"Region": "us-east-1"}, True),
    ('{"data": {"Region": [{"prefix": "us-"}]}}', {"Region": "eu-west-1"}, False),
    # the Kinesis page: the order example, and the console's {"a": [1, 2]}
    (
        '{"data": {"order": {"type": ["buy"]}}}',
        {"record": 12345, "order": {"type": "buy", "stock": "ANYCO", "quantity": 1000}},
        True,
    ),
    ('{"data": {"order": {"type": ["buy"]}}}', {"record": 1, "order": {"type": "sell"}}, False),
    ('{"data": {"a": [1, 2]}}', {"a": 2}, True),
    ('{"data": {"a": [1, 2]}}', {"a": 3}, False),
    ('{"data": {"Temperature": [{"numeric": [">", 50, "<=", 60]}]}}', {"Temperature": 55}, True),
    ('{"data": {"Temperature": [{"numeric": [">", 50, "<=", 60]}]}}', {"Temperature": 61}, False),
    # the general page's example: a metadata property and a data property
    (
        '{"partitionKey": ["1"], "data": {"Location": ["Los Angeles"]}}',
        {"Location": "Los Angeles"},
        True,
    ),
    (
        '{"partitionKey": ["2"], "data": {"Location": ["Los Angeles"]}}',
        {"Location": "Los Angeles"},
        False,
    ),
]


@pytest.mark.parametrize(("pattern", "data", "expected"), LAMBDA_TABLE)
def test_lambda_examples(pattern: str, data: Any, expected: bool) -> None:
    assert compile_pattern(pattern).matches(record(data)) is expected


# Kinesis metadata: the fields of the event's kinesis object, as build_event writes them.
METADATA_TABLE: list[tuple[str, dict[str, Any], bool]] = [
    ('{"partitionKey": ["1"]}', {}, True),
    ('{"partitionKey": [{"prefix": "user-"}]}', {"key": "user-42"}, True),
    ('{"partitionKey": [{"anything-but": ["1"]}]}', {}, False),
    ('{"sequenceNumber": ["' + SEQUENCE + '"]}', {}, True),
    ('{"sequenceNumber": [{"numeric": [">", 0]}]}', {}, False),  # a string in the event
    ('{"approximateArrivalTimestamp": [1545084650.987]}', {}, True),
    (
        '{"approximateArrivalTimestamp": [{"numeric": [">=", 1545084650, "<", 1545084651]}]}',
        {},
        True,
    ),
    ('{"approximateArrivalTimestamp": [{"numeric": ["<", 1545084650]}]}', {}, False),
    ('{"kinesisSchemaVersion": ["1.0"]}', {}, True),
    ('{"encryptionType": [{"exists": false}]}', {}, True),
    ('{"encryptionType": ["KMS"]}', {}, False),
    ('{"encryptionType": ["KMS"]}', {"encryption": "KMS"}, True),
    ('{"$or": [{"partitionKey": ["9"]}, {"data": {"x": [1]}}]}', {}, True),
    ('{"$or": [{"partitionKey": ["9"]}, {"data": {"x": [2]}}]}', {}, False),
]


@pytest.mark.parametrize(("pattern", "options", "expected"), METADATA_TABLE)
def test_metadata(pattern: str, options: dict[str, Any], expected: bool) -> None:
    r = record({"x": 1}, key=options.get("key", "1"), encryption=options.get("encryption"))
    assert compile_pattern(pattern).matches(r) is expected


# The reference's section 7 table: what non-JSON data does.
NOT_JSON = [b"plain text", b"\xff\xfe\x00garbage", b'{"a": NaN}', b"", b"[" * 100_000]


@pytest.mark.parametrize("payload", NOT_JSON)
def test_non_json_data_fails_every_filter_with_a_data_clause(payload: bytes) -> None:
    r = record(payload)
    for pattern in (
        '{"data": {"a": [{"exists": false}]}}',  # would match an object without "a"
        '{"partitionKey": ["1"], "data": {"a": [{"exists": false}]}}',
        '{"$or": [{"partitionKey": ["1"]}, {"data": {"a": [1]}}]}',  # the pattern has data
    ):
        assert not compile_pattern(pattern).matches(r)
        assert RecordFilter.compile([pattern]).split([r]) == ([], 1)


@pytest.mark.parametrize("payload", NOT_JSON)
def test_non_json_data_leaves_metadata_filters_alone(payload: bytes) -> None:
    r = record(payload)
    assert compile_pattern('{"partitionKey": ["1"]}').matches(r)
    both = RecordFilter.compile(['{"data": {"a": [1]}}', '{"partitionKey": ["1"]}'])
    assert both.matches(r)
    assert not RecordFilter.compile(['{"partitionKey": ["2"]}']).matches(r)


def test_json_data_that_is_not_an_object() -> None:
    for scalar in ("42", '"text"', "null", "[1, 2]"):
        assert compile_pattern('{"data": {"a": [{"exists": false}]}}').matches(record(scalar))
        assert not compile_pattern('{"data": {"a": [1]}}').matches(record(scalar))
    array_of_objects = '[{"a": 1}, {"a": 2}]'
    assert compile_pattern('{"data": {"a": [2]}}').matches(record(array_of_objects))


def test_deeply_nested_data_is_not_json_and_does_not_crash() -> None:
    deep = b'{"a": ' * 50_000 + b"1" + b"}" * 50_000
    assert not compile_pattern('{"data": {"a": [{"exists": true}]}}').matches(record(deep))
    nested_lists = b'{"a": ' + b"[" * 500 + b"1" + b"]" * 500 + b"}"
    assert compile_pattern('{"data": {"a": [1]}}').matches(record(nested_lists))


class CountingRecord(Record):
    """A Record that counts how often its payload is decoded."""

    def __init__(self, data: bytes) -> None:
        import base64

        super().__init__(SEQUENCE, "1", base64.b64encode(data).decode(), ARRIVAL)
        self.decodes = 0

    @property
    def data(self) -> bytes:
        self.decodes += 1
        return super().data


def test_data_is_decoded_at_most_once_and_only_when_a_pattern_needs_it() -> None:
    five = RecordFilter.compile([f'{{"data": {{"n": [{i}]}}}}' for i in range(5)])
    r = CountingRecord(b'{"n": 9}')
    assert not five.matches(r)
    assert r.decodes == 1
    metadata_only = RecordFilter.compile(['{"partitionKey": ["1"]}', '{"partitionKey": ["2"]}'])
    r = CountingRecord(b'{"n": 9}')
    assert metadata_only.matches(r) and r.decodes == 0
    mixed = RecordFilter.compile(['{"data": {"n": [9]}}', '{"partitionKey": ["1"]}'])
    r = CountingRecord(b'{"n": 9}')
    assert mixed.matches(r) and r.decodes == 0  # the metadata filter matched first


def test_split_keeps_order_and_counts_the_rest() -> None:
    records = [record({"n": i}, key=str(i)) for i in range(10)]
    kept, out = RecordFilter.compile(['{"data": {"n": [{"numeric": [">=", 5]}]}}']).split(records)
    assert [json.loads(r.data)["n"] for r in kept] == [5, 6, 7, 8, 9]
    assert out == 5
    everything = RecordFilter.compile([])
    assert everything.passes_everything
    assert everything.split(records) == (records, 0)


def test_patterns_are_compiled_once() -> None:
    f = RecordFilter.compile(['{"data": {"n": [1]}}'])
    assert len(f.patterns) == 1
    pattern = f.patterns[0]
    assert pattern.uses_data
    assert pattern.text == '{"data": {"n": [1]}}'
    assert not compile_pattern('{"partitionKey": ["1"]}').uses_data


# Validation: what is wrong, and where.
INVALID: list[tuple[str, str, str]] = [
    ("", "not valid JSON", ""),
    ('{"data": {"a": [1]}', "not valid JSON", ""),
    ('{"data": {"a": [NaN]}}', "not valid JSON", ""),
    ("[]", "must be a JSON object", ""),
    ('"text"', "must be a JSON object", ""),
    ("{}", "empty objects are not allowed", ""),
    ('{"data": {}}', "empty objects are not allowed", "data"),
    ('{"data": {"a": []}}', "empty arrays are not allowed", "data.a"),
    ('{"data": {"a": "x"}}', '"a" must be an object or an array', "data.a"),
    ('{"data": {"a": 1}}', '"a" must be an object or an array', "data.a"),
    ('{"data": ["x"]}', "data pattern must be a JSON object", "data"),
    ('{"data": [{"exists": true}]}', "data pattern must be a JSON object", "data"),
    ('{"partitionKey": {"x": ["1"]}}', "partitionKey is a value", "partitionKey"),
    ('{"kinesis": {"data": {"a": [1]}}}', 'unknown key "kinesis"', "kinesis"),
    ('{"eventSource": ["aws:kinesis"]}', 'unknown key "eventSource"', "eventSource"),
    ('{"data": {"a": [[1]]}}', "a match value must be", "data.a[0]"),
    ('{"data": {"a": [{}]}}', "empty object is not a match expression", "data.a[0]"),
    ('{"data": {"a": [{"prefix": 1}]}}', "prefix must be a string", "data.a[0].prefix"),
    ('{"data": {"a": [{"prefix": "x", "suffix": "y"}]}}', "only one key", "data.a[0]"),
    ('{"data": {"a": [{"regex": "x"}]}}', 'unrecognized match type "regex"', "data.a[0].regex"),
    ('{"data": {"a": [{"prefix": {"other": "x"}}]}}', "prefix takes a string", "data.a[0].prefix"),
    (
        '{"data": {"a": [{"prefix": {"equals-ignore-case": 1}}]}}',
        "prefix must be a string",
        "data.a[0].prefix.equals-ignore-case",
    ),
    ('{"data": {"a": [{"equals-ignore-case": ["x"]}]}}', "must be a string", "data.a[0]"),
    ('{"data": {"a": [{"wildcard": "a**b"}]}}', "consecutive wildcard", "data.a[0].wildcard"),
    ('{"data": {"a": [{"wildcard": "a\\\\b"}]}}', "invalid escape", "data.a[0].wildcard"),
    ('{"data": {"a": [{"cidr": "10.0.0.300/8"}]}}', "cidr", "data.a[0].cidr"),
    ('{"data": {"a": [{"exists": "yes"}]}}', "exists must be true or false", "data.a[0].exists"),
    ('{"data": {"a": [{"numeric": ">"}]}}', "numeric must be", "data.a[0].numeric"),
    ('{"data": {"a": [{"numeric": [">"]}]}}', "numeric must be", "data.a[0].numeric"),
    ('{"data": {"a": [{"numeric": ["~", 1]}]}}', "unrecognized numeric operator", "numeric[0]"),
    ('{"data": {"a": [{"numeric": [">", "1"]}]}}', "the value of > must be a number", "numeric[1]"),
    ('{"data": {"a": [{"numeric": ["<", 1, ">", 0]}]}}', "lower bound", "data.a[0].numeric"),
    ('{"data": {"a": [{"numeric": ["=", 1, "<", 2]}]}}', "lower bound", "data.a[0].numeric"),
    ('{"data": {"a": [{"numeric": [">", 5, "<", 1]}]}}', "is not below", "data.a[0].numeric"),
    ('{"data": {"a": [{"numeric": [">", 1e999]}]}}', "out of range", "numeric[1]"),
    ('{"data": {"a": [{"numeric": [">", 1, "<", true]}]}}', "must be a number", "numeric[3]"),
    ('{"data": {"a": [{"anything-but": [1, "a"]}]}}', "only strings or only numbers", "data.a[0]"),
    ('{"data": {"a": [{"anything-but": []}]}}', "non-empty list", "anything-but"),
    ('{"data": {"a": [{"anything-but": null}]}}', "anything-but takes", "anything-but"),
    ('{"data": {"a": [{"anything-but": [true]}]}}', "anything-but takes", "anything-but"),
    ('{"data": {"a": [{"anything-but": {"prefix": ""}}]}}', "must not be empty", "prefix"),
    ('{"data": {"a": [{"anything-but": {"suffix": [""]}}]}}', "must not be empty", "suffix"),
    ('{"data": {"a": [{"anything-but": {"numeric": [">", 1]}}]}}', "unsupported", "numeric"),
    ('{"data": {"a": [{"anything-but": {"prefix": "a", "suffix": "b"}}]}}', "one operator", ""),
    ('{"data": {"a": [{"anything-but": {"prefix": 1}}]}}', "must be a string", "prefix"),
    ('{"data": {"a": [{"anything-but": {"wildcard": ["x**"]}}]}}', "consecutive", "wildcard"),
    ('{"data": {"$or": [{"a": [1]}]}}', "at least two objects", "data.$or"),
    ('{"data": {"$or": {"a": [1]}}}', "at least two objects", "data.$or"),
    ('{"data": {"$or": [{"a": [1]}, "x"]}}', "must be an object", "data.$or[1]"),
    ('{"data": {"$or": [{"a": [1]}, {}]}}', "empty objects", "data.$or[1]"),
    ('{"data": {"$or": [{"numeric": [1]}, {"b": [2]}]}}', "is an operator", "data.$or[0].numeric"),
    ('{"data": {"a": [1], "a": [2]}}', 'duplicate key "a"', ""),
    ('{"data": {"a": [1], "$or": [{"a": [2]}, {"b": [3]}]}}', "already matched", "data.$or[0].a"),
    ('{"$or": [{"data": {"a": [1]}}, {"kinesis": ["x"]}]}', 'unknown key "kinesis"', "$or[1]"),
    ('{"$or": [{"data": ["x"]}, {"partitionKey": ["1"]}]}', "data pattern", "$or[0].data"),
]


@pytest.mark.parametrize(("pattern", "reason", "path"), INVALID)
def test_invalid_patterns_say_what_and_where(pattern: str, reason: str, path: str) -> None:
    with pytest.raises(PatternError) as caught:
        compile_pattern(pattern)
    error = caught.value
    assert reason in error.reason, error
    assert path in error.path, error
    assert isinstance(error, ValueError)


def test_alternatives_may_name_the_same_field() -> None:
    pattern = compile_pattern('{"data": {"$or": [{"a": [1]}, {"a": [2]}]}}')
    assert pattern.matches(record({"a": 2}))
    nested = '{"data": {"$or": [{"a": [1], "$or": [{"b": [1]}, {"b": [2]}]}, {"b": [3]}]}}'
    assert compile_pattern(nested).matches(record({"a": 1, "b": 2}))


def test_the_error_names_the_filter() -> None:
    with pytest.raises(PatternError) as caught:
        RecordFilter.compile(['{"data": {"a": [1]}}', '{"data": {"a": [{"numeric": [">"]}]}}'])
    error = caught.value
    assert error.filter_index == 1
    assert str(error).startswith("Filters[1].Pattern at data.a[0].numeric: numeric must be")
    assert error.api_message.startswith(INVALID_PATTERN_MESSAGE + " Filters[1].Pattern at ")


def test_size_and_depth_are_bounded() -> None:
    too_long = '{"data": {"a": ["' + "x" * MAX_PATTERN_LENGTH + '"]}}'
    with pytest.raises(PatternError, match="characters long; Lambda allows 4096"):
        compile_pattern(too_long)
    inner = MAX_PATTERN_DEPTH - 2  # the outer object and the leaf's array make it 32 deep
    deep_ok = '{"data": ' + '{"a": ' * inner + "[1]" + "}" * inner + "}"
    compile_pattern(deep_ok)
    too_deep = '{"data": ' + '{"a": ' * (inner + 1) + "[1]" + "}" * (inner + 1) + "}"
    assert len(too_deep) < MAX_PATTERN_LENGTH
    with pytest.raises(PatternError, match=f"deeper than {MAX_PATTERN_DEPTH} levels"):
        compile_pattern(too_deep)


@pytest.mark.parametrize("opener", ["[", "{", '{"a":'])
def test_hostile_nesting_is_a_pattern_error_not_a_recursion_error(opener: str) -> None:
    with pytest.raises(PatternError):
        compile_pattern(opener * 5000)
    with pytest.raises(PatternError):  # within the length limit too
        compile_pattern(opener * (MAX_PATTERN_LENGTH // len(opener)))


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    brackets = "[{" * 100 + '\\"'
    pattern = compile_pattern('{"data": {"a": ["' + brackets + '"]}}')
    assert pattern.matches(record({"a": "[{" * 100 + '"'}))


def test_wildcards_are_linear() -> None:
    # a regex translation of this backtracks for a very long time; segment search does not
    pattern = compile_pattern('{"data": {"a": [{"wildcard": "' + "*a" * 30 + '*b"}]}}')
    assert not pattern.matches(record({"a": "a" * 3000}))
    assert pattern.matches(record({"a": "a" * 3000 + "b"}))


# Properties

SCALARS = st.one_of(
    st.text(max_size=8),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.booleans(),
    st.none(),
)
KEYS = st.text(min_size=1, max_size=6).filter(lambda k: k != "$or")
EVENTS = st.recursive(
    st.dictionaries(KEYS, SCALARS | st.lists(SCALARS, min_size=1, max_size=3), max_size=4),
    lambda children: st.dictionaries(KEYS, children, min_size=1, max_size=3),
    max_leaves=12,
)


def leaves(event: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out: list[tuple[tuple[str, ...], Any]] = []
    for key, value in event.items():
        if isinstance(value, dict):
            out.extend(leaves(value, (*path, key)))
        else:
            out.append(((*path, key), value))
    return out


def matcher_for(value: Any, draw: Any) -> Any:
    """A match value or expression that this event value satisfies."""
    scalar = draw(st.sampled_from(value)) if isinstance(value, list) else value
    options: list[Any] = [scalar, {"exists": True}]
    if isinstance(scalar, str):
        cut = draw(st.integers(0, len(scalar)))
        options += [{"prefix": scalar[:cut]}, {"suffix": scalar[cut:]}]
        escaped = scalar.replace("\\", "\\\\").replace("*", "\\*")
        options.append({"wildcard": escaped})
        if scalar.isascii():
            options.append({"equals-ignore-case": scalar.swapcase()})
            options.append({"anything-but": scalar + "x"})
    elif isinstance(scalar, int | float) and not isinstance(scalar, bool):
        options.append({"numeric": ["=", scalar]})
        options.append({"numeric": [">=", scalar]})
        options.append({"numeric": ["<=", scalar]})
    return draw(st.sampled_from(options))


def nest(path: tuple[str, ...], leaf: Any) -> Any:
    out: Any = [leaf]
    for key in reversed(path):
        out = {key: out}
    return out


def merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if key in into and isinstance(into[key], dict) and isinstance(value, dict):
            merge(into[key], value)
        else:
            into[key] = value


@settings(max_examples=300, deadline=None)
@given(event=EVENTS, data=st.data())
def test_a_pattern_built_from_an_events_own_values_matches_it(
    event: dict[str, Any], data: st.DataObject
) -> None:
    paths = leaves(event)
    assume(paths)
    chosen = data.draw(st.lists(st.sampled_from(paths), min_size=1, max_size=4, unique_by=str))
    pattern: dict[str, Any] = {}
    for path, value in chosen:
        merge(pattern, nest(path, matcher_for(value, data.draw)))
    text = json.dumps({"data": pattern})
    assume(len(text) <= MAX_PATTERN_LENGTH)
    assert compile_pattern(text).matches(record(json.dumps(event))), text


@given(
    value=st.one_of(
        st.text(max_size=8), st.integers(), st.floats(allow_nan=False, allow_infinity=False)
    ),
    others=st.lists(st.text(max_size=3), max_size=3),
)
def test_anything_but_never_matches_its_own_value(value: Any, others: list[str]) -> None:
    excluded: list[Any] = [value, *others] if isinstance(value, str) else [value]
    for spec in (value, excluded):
        pattern = compile_pattern(json.dumps({"data": {"k": [{"anything-but": spec}]}}))
        assert not pattern.matches(record(json.dumps({"k": value})))
        assert not pattern.matches(record(json.dumps({"k": [value]})))


SMALL_EVENTS = st.fixed_dictionaries(
    {},
    optional={
        "a": st.sampled_from(["x", "y", "xy", 1, 2.5, None]),
        "b": st.sampled_from(["x", "yx", 3, True]) | st.lists(st.sampled_from(["x", "y"])),
        "c": st.fixed_dictionaries({}, optional={"d": st.sampled_from([1, "x", False])}),
    },
)
SMALL_LEAVES = st.sampled_from(
    [
        ["x"],
        [1, 3],
        [{"prefix": "x"}],
        [{"suffix": "x"}],
        [{"anything-but": "x"}],
        [{"numeric": [">", 1]}],
        [{"exists": False}],
        [{"exists": True}],
        [None, True],
        [{"wildcard": "*y*"}],
        [{"equals-ignore-case": "XY"}],
    ]
)
SMALL_PATTERNS = st.dictionaries(
    st.sampled_from(["a", "b"]), SMALL_LEAVES, min_size=1, max_size=2
) | st.builds(lambda leaf: {"c": {"d": leaf}}, SMALL_LEAVES)


@settings(max_examples=300, deadline=None)
@given(event=SMALL_EVENTS, patterns=st.lists(SMALL_PATTERNS, min_size=2, max_size=4))
def test_or_of_patterns_is_any_of_them(
    event: dict[str, Any], patterns: list[dict[str, Any]]
) -> None:
    r = record(event)
    each = [compile_pattern(json.dumps({"data": p})).matches(r) for p in patterns]
    combined = compile_pattern(json.dumps({"data": {"$or": patterns}})).matches(r)
    top_level = compile_pattern(json.dumps({"$or": [{"data": p} for p in patterns]})).matches(r)
    filters = RecordFilter.compile([json.dumps({"data": p}) for p in patterns]).matches(r)
    assert combined == top_level == filters == any(each)


SPELLINGS = ["300", "300.0", "3.0e2", "3e2", "300.00", "3E2", "300e0"]


@given(pattern_text=st.sampled_from(SPELLINGS), event_text=st.sampled_from(SPELLINGS))
def test_exact_number_matching_is_by_text_and_numeric_by_value(
    pattern_text: str, event_text: str
) -> None:
    r = record('{"n": ' + event_text + "}")
    exact = compile_pattern('{"data": {"n": [' + pattern_text + "]}}")
    assert exact.matches(r) is (pattern_text == event_text)
    numeric = compile_pattern('{"data": {"n": [{"numeric": ["=", ' + pattern_text + "]}]}}")
    assert numeric.matches(r)
    not_it = compile_pattern('{"data": {"n": [{"anything-but": ' + pattern_text + "}]}}")
    assert not_it.matches(r) is (pattern_text != event_text)


def glob_oracle(glob: str, text: str) -> bool:
    """A regex translation of a wildcard: slow in general, fine on tiny strings."""
    regex = "".join(".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", glob))
    return re.fullmatch(regex, text, re.DOTALL) is not None


@settings(max_examples=400)
@given(
    glob=st.text(alphabet="ab*", max_size=7).filter(lambda g: "**" not in g),
    text=st.text(alphabet="ab", max_size=8),
)
def test_wildcard_agrees_with_a_regex_oracle(glob: str, text: str) -> None:
    pattern = compile_pattern(json.dumps({"data": {"k": [{"wildcard": glob}]}}))
    assert pattern.matches(record(json.dumps({"k": text}))) is glob_oracle(glob, text)
