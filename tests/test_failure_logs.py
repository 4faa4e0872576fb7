"""What the log says of a failing handler: the first failure in a row with the handler's
traceback and what happens next (retry, how long, under which limit), then one short line per
retry with its attempt number and back-off. Lines are pinned; an in-memory stream is enough."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from kinesis_esm import (
    Engine,
    EventSourceMappingConfig,
    InvokeResult,
    MemoryCheckpointStore,
    MemoryStream,
    PollSettings,
    RetrySettings,
)
from tests.support.kinesis import wait_for

pytestmark = pytest.mark.anyio

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/failing"
FAST_POLL = PollSettings(base_interval=0.02, min_interval=0.0)
FAST_RETRY = RetrySettings(initial=0.01, maximum=0.04)
PREFIX = r"[0-9a-f-]{36} shardId-000000000000: Function call failed on 3 records \d+\.\.\d+ "
FOREVER = (
    "retrying until it succeeds or the records expire from the stream "
    "(MaximumRetryAttempts -1, MaximumRecordAgeInSeconds -1: forever)"
)


def failing_handler(event: dict[str, Any], context: Any) -> None:
    raise RuntimeError(f"boom on {len(event['Records'])} records")


async def async_failing_handler(event: dict[str, Any], context: Any) -> None:
    raise ValueError("async boom")


async def failure_lines(
    caplog: pytest.LogCaptureFixture,
    handler: Any,
    count: int,
    **settings: Any,
) -> list[str]:
    """Run a mapping whose every invocation fails until ``count`` failure lines are logged."""
    caplog.set_level(logging.WARNING, logger="kinesis_esm")
    stream = MemoryStream(ARN, 1)
    for i in range(3):
        stream.put("key", f"record {i}".encode())
    config = EventSourceMappingConfig("failing", ARN, "TRIM_HORIZON", batch_size=3, **settings)

    def lines() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name in ("kinesis_esm.processing", "kinesis_esm.dropped")
        ]

    async with Engine(
        source=stream,
        checkpoint_store=MemoryCheckpointStore(),
        poll_settings=FAST_POLL,
        retry_settings=FAST_RETRY,
    ) as engine:
        await engine.add_mapping(config, handler)
        await wait_for(lambda: len(lines()) >= count, 20, message=f"{count} failure lines")
    return lines()


def assert_traceback(line: str, frame: str, last: str) -> None:
    text = line[line.index("\nTraceback (most recent call last):\n") :]
    assert f", in {frame}\n" in text, text
    assert text.endswith(f"\n{last}"), text
    assert "anyio" not in text and "_callable.py" not in text, text  # the handler's frames only


async def test_the_first_failure_has_the_traceback_and_says_it_retries_forever(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second, third, *_ = await failure_lines(caplog, failing_handler, 3)
    head, _, _ = first.partition("\n")
    assert re.fullmatch(
        PREFIX + rf"\(Unhandled: RuntimeError: boom on 3 records\); attempt 1 failed, "
        rf"retry in 0\.0\ds, {re.escape(FOREVER)}",
        head,
    ), head
    assert_traceback(first, "failing_handler", "RuntimeError: boom on 3 records")
    assert 'raise RuntimeError(f"boom on {len(event' in first  # the source line
    for number, line in ((2, second), (3, third)):  # short: one line each
        assert "\n" not in line, line
        assert re.fullmatch(
            PREFIX + rf"\(Unhandled: RuntimeError: boom on 3 records\); attempt {number} "
            rf"failed, retry in 0\.0\ds, {re.escape(FOREVER)}",
            line,
        ), line


async def test_retries_left_then_giving_up(caplog: pytest.LogCaptureFixture) -> None:
    lines = await failure_lines(caplog, failing_handler, 4, maximum_retry_attempts=2)
    first, second, last, dropped = lines[:4]
    assert first.split("\n")[0].endswith("2 of 2 retries left (MaximumRetryAttempts)")
    assert "Traceback" in first
    assert re.search(r"; attempt 2 failed, retry in 0\.0\ds, 1 of 2 retries left", second)
    assert last.endswith(
        "(Unhandled: RuntimeError: boom on 3 records); giving up (MaximumRetryAttempts 2)"
    )
    assert "Traceback" not in second + last
    assert "dropped 3 records" in dropped and "RetryAttemptsExhausted" in dropped


async def test_record_age_limit_is_named(caplog: pytest.LogCaptureFixture) -> None:
    [first, *_] = await failure_lines(caplog, failing_handler, 1, maximum_record_age_in_seconds=600)
    assert first.split("\n")[0].endswith(
        "retrying until it succeeds or the records are older than 600s (MaximumRecordAgeInSeconds)"
    )
    caplog.clear()
    [first, *_] = await failure_lines(
        caplog, failing_handler, 1, maximum_retry_attempts=5, maximum_record_age_in_seconds=600
    )
    assert first.split("\n")[0].endswith(
        "5 of 5 retries left (MaximumRetryAttempts), or until the records are older than 600s "
        "(MaximumRecordAgeInSeconds)"
    )


async def test_bisect_says_so(caplog: pytest.LogCaptureFixture) -> None:
    [first, *_] = await failure_lines(
        caplog, failing_handler, 1, bisect_batch_on_function_error=True, maximum_retry_attempts=0
    )
    assert first.split("\n")[0].endswith("; bisecting: the first 1 record at once")
    assert_traceback(first, "failing_handler", "RuntimeError: boom on 3 records")


async def test_an_async_handlers_traceback(caplog: pytest.LogCaptureFixture) -> None:
    [first, *_] = await failure_lines(caplog, async_failing_handler, 1)
    assert "(Unhandled: ValueError: async boom)" in first
    assert_traceback(first, "async_failing_handler", "ValueError: async boom")


class ReportsLambdasErrorDocument:
    """A target that answers as Lambda's Invoke API does: the error document in the payload."""

    name = "failing"
    arn = "arn:aws:lambda:us-east-1:123456789012:function:failing"
    timeout = 3.0
    input = "event"

    def __init__(self) -> None:
        self.invoke_count = 0

    async def invoke(self, payload: Any) -> InvokeResult:
        self.invoke_count += 1
        document = {
            "errorMessage": "bad order",
            "errorType": "KeyError",
            "stackTrace": ['  File "/var/task/app.py", line 7, in handler\n    order["id"]\n'],
        }
        return InvokeResult(
            f"request-{self.invoke_count}", document, "Unhandled", "KeyError: bad order"
        )


async def test_the_traceback_of_another_target_comes_from_its_error_document(
    caplog: pytest.LogCaptureFixture,
) -> None:
    [first, second, *_] = await failure_lines(caplog, ReportsLambdasErrorDocument(), 2)
    assert first.endswith(
        '\nTraceback (most recent call last):\n  File "/var/task/app.py", line 7, in handler\n'
        '    order["id"]\nKeyError: bad order'
    ), first
    assert "Traceback" not in second
