"""Issue 11's scenario: the Kinesis batch handler that aws-lambda-powertools documents (a
module-level ``BatchProcessor(event_type=EventType.KinesisDataStreams)`` with
``process_partial_response``, a module-level ``Logger`` and ``Metrics``), unchanged, under many
concurrent invocations.

In process environments each invocation returns exactly its own failing records, and every log
line and metrics blob carries its own request id. The same module run in threads of one process
(``isolation = "thread"``, today's CallableFunction) shares that module-level state: the last
test demonstrates the wrong answers it gives, which is why "process" is the daemon's default.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from kinesis_esm import CallableFunction, Record, build_event
from kinesis_esm.events import EventSource
from kinesis_esm.functions._environments import ProcessFunction

pytest.importorskip("aws_lambda_powertools")

pytestmark = pytest.mark.anyio

INVOCATIONS = 8
RECORDS = 20
SOURCE = EventSource(
    "arn:aws:kinesis:us-east-1:123456789012:stream/orders",
    "shardId-000000000000",
    "us-east-1",
    "arn:aws:iam::123456789012:role/orders",
)
POWERTOOLS_ENV = {"POWERTOOLS_SERVICE_NAME": "orders", "POWERTOOLS_METRICS_NAMESPACE": "Shop"}

# As the powertools docs show it (batch processing, Kinesis Data Streams), with an I/O wait
HANDLER = """
    import time

    from aws_lambda_powertools import Logger, Metrics
    from aws_lambda_powertools.metrics import MetricUnit
    from aws_lambda_powertools.utilities.batch import (
        BatchProcessor,
        EventType,
        process_partial_response,
    )
    from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import (
        KinesisStreamRecord,
    )
    from aws_lambda_powertools.utilities.typing import LambdaContext

    processor = BatchProcessor(event_type=EventType.KinesisDataStreams)
    logger = Logger()
    metrics = Metrics()


    def record_handler(record: KinesisStreamRecord):
        order = record.kinesis.data_as_json()
        time.sleep(order["io"])  # the database call
        if order["fail"]:
            raise ValueError(f"order {order['id']} is invalid")
        logger.info("processed order", extra={"order_id": order["id"]})
        metrics.add_metric(name="ProcessedOrders", unit=MetricUnit.Count, value=1)


    @logger.inject_lambda_context
    @metrics.log_metrics
    def lambda_handler(event, context: LambdaContext):
        return process_partial_response(
            event=event,
            record_handler=record_handler,
            processor=processor,
            context=context,
        )
"""


def _batch(invocation: int) -> tuple[dict[str, Any], list[str]]:
    """One invocation's event and the sequence numbers of its records that fail."""
    records, failing = [], []
    for j in range(RECORDS):
        sequence = f"4959{invocation:04d}{j:06d}"
        fail = (j * 7 + invocation) % 5 == 0  # a different set for each invocation
        order = {"id": f"{invocation}-{j}", "fail": fail, "io": 0.002 + 0.001 * (j % 3)}
        data = base64.b64encode(json.dumps(order).encode()).decode()
        records.append(Record(sequence, f"key-{j}", data, 1_700_000_000.0 + j))
        if fail:
            failing.append(sequence)
    return build_event(SOURCE, records), failing


async def _run_all(function: Any) -> list[tuple[Any, list[str]]]:
    batches = [_batch(i) for i in range(INVOCATIONS)]
    results: list[Any] = [None] * INVOCATIONS

    async def one(i: int) -> None:
        results[i] = await function.invoke(batches[i][0])

    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            for i in range(INVOCATIONS):
                group.start_soon(one, i)
    return [(results[i], batches[i][1]) for i in range(INVOCATIONS)]


def _failures(result: Any) -> list[str]:
    return [item["itemIdentifier"] for item in result.payload["batchItemFailures"]]


async def test_powertools_batch_handler_in_process_environments_is_right_every_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "orders.py").write_text(textwrap.dedent(HANDLER))
    function = ProcessFunction(
        "orders:lambda_handler",
        name="orders",
        task_root=tmp_path,
        timeout=60,
        memory_size=512,
        max_environments=4,
        environment=POWERTOOLS_ENV,
    )
    caplog.set_level(logging.INFO, logger="kinesis_esm.function.orders")
    try:
        outcomes = await _run_all(function)
        stats = function.statistics()
    finally:
        with anyio.fail_after(30):
            await function.aclose()
    for result, failing in outcomes:
        assert result.ok, result
        assert _failures(result) == failing  # its own failures, exactly, in order
        assert failing  # every invocation has some
    assert stats.environments == 4 and stats.invocations == INVOCATIONS

    # every structured line is stamped with the request id of the invocation that wrote it
    by_request: dict[str, list[dict[str, Any]]] = {}
    for record in caplog.records:
        if record.name != "kinesis_esm.function.orders":
            continue
        tag, _, text = record.getMessage().partition(" ")
        if text.startswith("{"):
            by_request.setdefault(tag, []).append(json.loads(text))
    for result, failing in outcomes:
        lines = by_request[result.request_id]
        logs = [line for line in lines if line.get("message") == "processed order"]
        assert len(logs) == RECORDS - len(failing)
        assert all(line["function_request_id"] == result.request_id for line in logs)
        emf = [line for line in lines if "_aws" in line]
        assert len(emf) == 1  # one metrics blob per invocation, with its own count
        count = emf[0]["ProcessedOrders"]
        assert (sum(count) if isinstance(count, list) else count) == RECORDS - len(failing)


@pytest.fixture
def in_process_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The same handler module imported into this process, as isolation = "thread" does."""
    for key, value in POWERTOOLS_ENV.items():
        monkeypatch.setenv(key, value)
    name = f"orders_threads_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(HANDLER))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


async def test_demonstration_threads_share_the_module_state_and_answer_wrongly(
    in_process_module: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A documented demonstration, not a feature: under isolation = "thread" the invocations
    share the module-level BatchProcessor, so they report each other's failures (or none). On
    Lambda, and with ProcessFunction, this cannot happen. Were it ever to stop happening here
    (powertools made the processor per call), the assertion below would tell us."""
    function = CallableFunction(
        in_process_module.lambda_handler, name="orders", timeout=60, max_threads=64
    )
    outcomes = await _run_all(function)
    capsys.readouterr()  # the Logger's and Metrics' output: not what this test is about
    wrong = [
        (result.request_id, _failures(result) if result.ok else result.error_message, failing)
        for result, failing in outcomes
        if not result.ok or _failures(result) != failing
    ]
    assert wrong, "every invocation got its own failures: threads did not share the processor"
