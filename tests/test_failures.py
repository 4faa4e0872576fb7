"""The pure failure policy: partial responses, retry counting, bisect, record age, reports."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kinesis_esm.events._record import Record
from kinesis_esm.policy._failures import (
    RECORD_AGE_EXCEEDED,
    RETRY_ATTEMPTS_EXHAUSTED,
    BatchPlan,
    Discard,
    expired_prefix,
    failure_report,
    iso_millis,
    parse_batch_response,
    s3_body,
    s3_object_key,
)

SEQS = ["49590338271490256608559692538361571095921575989136588898", "4959033827149025660855969"]


def recs(seqs: list[str]) -> list[Record]:
    return [Record(seq, "key", "", 0.0) for seq in seqs]


# The reference's table (section 3): response -> "success" | "invalid" (complete failure).
RESPONSE_TABLE: list[tuple[str, Any, str]] = [
    ("empty string", "", "success"),
    ("empty list", [], "success"),
    ("null", None, "success"),
    ("empty object", {}, "success"),
    ("empty batchItemFailures", {"batchItemFailures": []}, "success"),
    ("null batchItemFailures", {"batchItemFailures": None}, "success"),
    ("empty itemIdentifier", {"batchItemFailures": [{"itemIdentifier": ""}]}, "invalid"),
    ("null itemIdentifier", {"batchItemFailures": [{"itemIdentifier": None}]}, "invalid"),
    ("wrong key", {"batchItemFailures": [{"foo": 123}]}, "invalid"),
    ("wrong key, null", {"batchItemFailures": [{"foo": None}]}, "invalid"),
    ("unknown identifier", {"batchItemFailures": [{"itemIdentifier": 123}]}, "invalid"),
    ("unknown identifier string", {"batchItemFailures": [{"itemIdentifier": "123"}]}, "invalid"),
]


@pytest.mark.parametrize(("payload", "kind"), [row[1:] for row in RESPONSE_TABLE])
def test_response_table(payload: Any, kind: str) -> None:
    assert parse_batch_response(payload, recs(SEQS)).kind == kind


@pytest.mark.parametrize(
    "payload",
    ["garbage", 42, True, [1], {"batchItemFailures": "x"}, {"batchItemFailures": [None]}],
)
def test_garbage_is_a_complete_failure(payload: Any) -> None:
    verdict = parse_batch_response(payload, recs(SEQS))
    assert verdict.kind == "invalid" and verdict.reason


def test_other_keys_without_failures_are_success() -> None:
    assert parse_batch_response({"statusCode": 200}, recs(SEQS)).ok


def test_integer_identifier_reads_as_its_decimal_string() -> None:
    verdict = parse_batch_response({"batchItemFailures": [{"itemIdentifier": 7}]}, recs(["5", "7"]))
    assert (verdict.kind, verdict.failed_from) == ("partial", 1)


sequence_lists = st.lists(
    st.integers(min_value=0, max_value=10**30), min_size=1, max_size=60, unique=True
).map(lambda xs: [str(x) for x in sorted(xs)])


@given(sequence_lists, st.data())
def test_checkpoint_cut_is_just_before_the_lowest_failed_record(
    seqs: list[str], data: st.DataObject
) -> None:
    failed = data.draw(st.lists(st.sampled_from(range(len(seqs))), min_size=1))
    payload = {"batchItemFailures": [{"itemIdentifier": seqs[i]} for i in failed]}
    verdict = parse_batch_response(payload, recs(seqs))
    assert verdict.kind == "partial"
    assert verdict.failed_from == min(failed)
    # and the plan settles exactly the records before it, counting one retry
    plan = BatchPlan(len(seqs), maximum_retry_attempts=3)
    plan.invoked("r1")
    assert plan.failed(completed=verdict.failed_from, whole=False) == "retry"
    assert plan.done == min(failed)
    current = plan.current
    assert current is not None and (current.start, current.end) == (min(failed), len(seqs))
    assert (current.errors, current.invocations) == (1, 1)


@given(sequence_lists, st.data())
def test_one_bad_item_spoils_the_whole_response(seqs: list[str], data: st.DataObject) -> None:
    good = [{"itemIdentifier": s} for s in data.draw(st.lists(st.sampled_from(seqs)))]
    bad = data.draw(
        st.sampled_from(
            [{"itemIdentifier": ""}, {"itemIdentifier": None}, {"foo": 1}, {"itemIdentifier": "x"}]
        )
    )
    items = data.draw(st.permutations([*good, bad]))
    assert parse_batch_response({"batchItemFailures": items}, recs(seqs)).kind == "invalid"


# retry counting


@given(st.integers(min_value=1, max_value=300), st.integers(min_value=0, max_value=20))
def test_n_retries_mean_n_plus_one_tries(size: int, retries: int) -> None:
    plan = BatchPlan(size, maximum_retry_attempts=retries)
    outcomes = []
    for attempt in range(retries + 1):
        plan.invoked(f"r{attempt}")
        outcomes.append(plan.failed(function_error="Unhandled"))
    assert outcomes[:-1] == ["retry"] * retries
    last = outcomes[-1]
    assert isinstance(last, Discard)
    assert (last.start, last.end, last.condition) == (0, size, RETRY_ATTEMPTS_EXHAUSTED)
    assert last.approximate_invoke_count == retries + 1
    assert (last.request_id, last.function_error) == (f"r{retries}", "Unhandled")
    assert plan.current is None and plan.done == size


@given(st.integers(min_value=1, max_value=50), st.integers(min_value=1, max_value=200))
def test_infinite_retries_never_discard(size: int, attempts: int) -> None:
    plan = BatchPlan(size, maximum_retry_attempts=-1, bisect=False)
    for _ in range(attempts):
        plan.invoked("r")
        assert plan.failed(function_error="Unhandled") == "retry"
    assert plan.done == 0


# whole simulations: a function that fails on poison records


@dataclass
class Outcome:
    invocations: list[range] = field(default_factory=list)
    succeeded: list[range] = field(default_factory=list)
    discards: list[Discard] = field(default_factory=list)


def simulate(size: int, poison: set[int], retries: int, *, bisect: bool, partial: bool) -> Outcome:
    """Drive a plan against a function that fails whenever a poison record is in its batch:
    by raising, or (``partial``) by reporting the poison records as batch item failures."""
    plan = BatchPlan(size, maximum_retry_attempts=retries, bisect=bisect)
    out = Outcome()
    last_done = 0
    for step in range(100_000):
        current = plan.current
        if current is None:
            break
        batch = range(current.start, current.end)
        out.invocations.append(batch)
        plan.invoked(f"req-{step}")
        bad = [i for i in batch if i in poison]
        result: Any = None
        if not bad:
            plan.succeeded()
            out.succeeded.append(batch)
        elif partial:
            result = plan.failed(completed=bad[0] - batch.start, whole=False)
            if bad[0] > batch.start:
                out.succeeded.append(range(batch.start, bad[0]))
        else:
            result = plan.failed(function_error="Unhandled")
        if bad and isinstance(result, Discard):
            out.discards.append(result)
        assert plan.done >= last_done, "the settled prefix never shrinks"
        last_done = plan.done
    else:
        raise AssertionError("the plan did not terminate")
    assert plan.done == size
    return out


def settled_exactly_once(size: int, out: Outcome) -> None:
    covered = sorted(
        [(r.start, r.stop) for r in out.succeeded if len(r)]
        + [(d.start, d.end) for d in out.discards]
    )
    position = 0
    for start, stop in covered:
        assert start == position, f"gap or overlap at {position}: {covered}"
        position = stop
    assert position == size


poison_cases = st.integers(min_value=1, max_value=200).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.sets(st.integers(min_value=0, max_value=n - 1), max_size=4),
        st.integers(min_value=0, max_value=4),
    )
)


@given(poison_cases)
def test_bisect_isolates_each_poison_record(case: tuple[int, set[int], int]) -> None:
    size, poison, retries = case
    out = simulate(size, poison, retries, bisect=True, partial=False)
    settled_exactly_once(size, out)
    assert [(d.start, d.end) for d in out.discards] == [(p, p + 1) for p in sorted(poison)]
    for d in out.discards:
        carried = sum(1 for r in out.invocations if d.start in r)
        assert d.approximate_invoke_count == carried
        # splitting is free: the record alone is tried exactly retries + 1 times
        alone = sum(1 for r in out.invocations if (r.start, r.stop) == (d.start, d.end))
        assert alone == retries + 1
        assert d.function_error == "Unhandled"


@given(poison_cases)
def test_without_bisect_a_poison_record_takes_its_whole_batch(
    case: tuple[int, set[int], int],
) -> None:
    size, poison, retries = case
    assume(poison)
    out = simulate(size, poison, retries, bisect=False, partial=False)
    assert [(d.start, d.end) for d in out.discards] == [(0, size)]
    assert out.discards[0].approximate_invoke_count == retries + 1
    assert len(out.invocations) == retries + 1


@given(poison_cases, st.booleans())
def test_partial_responses_cut_and_carry_the_retry_count(
    case: tuple[int, set[int], int], bisect: bool
) -> None:
    size, poison, retries = case
    out = simulate(size, poison, retries, bisect=bisect, partial=True)
    settled_exactly_once(size, out)
    # a valid partial response never bisects: each discard runs from a poison record to the end
    # of what was left, after retries + 1 invocations that carried it
    position = 0
    for d in out.discards:
        first = min(p for p in poison if p >= position)
        assert (d.start, d.end) == (first, size)
        assert d.approximate_invoke_count == retries + 1
        assert d.function_error is None
        position = d.end
    assert len(out.discards) == (1 if poison else 0)


# record age


@given(
    st.lists(st.floats(min_value=0, max_value=1e6), max_size=50).map(sorted),
    st.floats(min_value=0, max_value=2e6),
    st.integers(min_value=60, max_value=604800),
)
def test_expired_prefix_is_the_leading_run_of_old_records(
    arrivals: list[float], now: float, maximum_age: int
) -> None:
    records = [Record(str(i), "k", "", t) for i, t in enumerate(arrivals)]
    k = expired_prefix(records, now, maximum_age)
    assert all(now - t > maximum_age for t in arrivals[:k])
    assert k == len(arrivals) or now - arrivals[k] <= maximum_age
    assert expired_prefix(records, now, -1) == 0


def test_expiry_keeps_the_counts_of_what_goes_on() -> None:
    plan = BatchPlan(5, maximum_retry_attempts=10)
    first = plan.expire(2)
    assert (first.start, first.end, first.condition) == (0, 2, RECORD_AGE_EXCEEDED)
    assert first.approximate_invoke_count == 1  # never invoked: reported as 1, as on AWS
    for i in range(3):
        plan.invoked(f"r{i}")
        assert plan.failed(function_error="Unhandled") == "retry"
    later = plan.expire(1)
    assert (later.start, later.end, later.approximate_invoke_count) == (2, 3, 3)
    assert later.request_id == "r2" and later.function_error is None
    current = plan.current
    assert current is not None and (current.start, current.errors, current.invocations) == (3, 3, 3)
    assert plan.expire(2).end == 5 and plan.current is None and plan.done == 5


# the report

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.mark.parametrize("condition", [RETRY_ATTEMPTS_EXHAUSTED, RECORD_AGE_EXCEEDED])
def test_report_shape(condition: str) -> None:
    records = [Record("11", "a", "eA==", 1700000000.5), Record("12", "b", "eQ==", 1700000001.25)]
    discard = Discard(0, 2, condition, 3, "req", "Unhandled")
    report = failure_report(
        discard,
        records,
        request_id="req",
        function_arn="arn:aws:lambda:us-east-1:123456789012:function:f",
        shard_id="shardId-000000000000",
        stream_arn="arn:aws:kinesis:us-east-1:123456789012:stream/s",
        now=1700000002.0,
    )
    assert list(report) == [
        "requestContext",
        *(["responseContext"] if condition == RETRY_ATTEMPTS_EXHAUSTED else []),
        "version",
        "timestamp",
        "KinesisBatchInfo",
    ]
    assert report["requestContext"] == {
        "requestId": "req",
        "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:f",
        "condition": condition,
        "approximateInvokeCount": 3,
    }
    if condition == RETRY_ATTEMPTS_EXHAUSTED:
        assert report["responseContext"] == {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        }
    assert report["version"] == "1.0"
    assert report["timestamp"] == "2023-11-14T22:13:22.000Z"
    assert report["KinesisBatchInfo"] == {
        "shardId": "shardId-000000000000",
        "startSequenceNumber": "11",
        "endSequenceNumber": "12",
        "approximateArrivalOfFirstRecord": "2023-11-14T22:13:20.500Z",
        "approximateArrivalOfLastRecord": "2023-11-14T22:13:21.250Z",
        "batchSize": 2,
        "streamArn": "arn:aws:kinesis:us-east-1:123456789012:stream/s",
    }
    body = s3_body(report, {"Records": []})
    assert body["payload"] == '{"Records":[]}' and list(body)[-1] == "payload"


@given(st.floats(min_value=0, max_value=4e9))
def test_iso_millis_format(timestamp: float) -> None:
    assert ISO.fullmatch(iso_millis(timestamp))


def test_s3_key_layout() -> None:
    key = s3_object_key("esm-uuid", "shardId-000000000001", 1700000002.75, "u-1")
    assert key == "aws/lambda/esm-uuid/shardId-000000000001/2023/11/14/2023-11-14T22.13.22-u-1"
