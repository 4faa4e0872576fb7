"""Issue 11's scenario through `kinesis-esm run` and a real Kinesis API (moto): the handler that
aws-lambda-powertools documents (module-level BatchProcessor, Logger, Metrics), unchanged and
with no isolation setting, on 2 shards at parallelization factor 4. Every record is processed,
every failure is reported by the invocation it belongs to (a failure reported by the wrong
invocation would be checkpointed past and never processed), and every log line carries the
request id of the invocation that wrote it."""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
from pathlib import Path

import pytest

from tests.support.daemon_process import start_daemon
from tests.support.kinesis import (
    KinesisClient,
    create_stream,
    put_records,
    wait_for,
)

pytest.importorskip("aws_lambda_powertools")
pytestmark = pytest.mark.anyio

ORDERS = 160

# The powertools documentation's Kinesis batch handler, with a database call (an I/O wait) and
# a first attempt that fails for some orders (a marker file makes the retry succeed).
HANDLER = """
    import os
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
    MARKS = os.environ["ORDER_MARKS"]


    def record_handler(record: KinesisStreamRecord):
        order = record.kinesis.data_as_json()
        time.sleep(0.002)  # the database call
        if order["fail"]:
            try:  # fails on its first attempt only
                os.close(os.open(os.path.join(MARKS, order["id"]), os.O_CREAT | os.O_EXCL))
                raise ValueError(f"order {order['id']} is invalid this time")
            except FileExistsError:
                pass
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


def processed(output: str) -> list[tuple[str, str, str]]:
    """(request id the daemon tagged the line with, request id in the line, order id)."""
    found = []
    for line in output.splitlines():
        match = re.search(r"kinesis_esm\.function\.orders: (\S+) (\{.*\})$", line)
        if not match or '"processed order"' not in match.group(2):
            continue
        entry = json.loads(match.group(2))
        found.append((match.group(1), entry["function_request_id"], entry["order_id"]))
    return found


async def test_the_documented_powertools_handler_runs_unchanged_at_two_shards_and_factor_4(
    moto: str, client: KinesisClient, stream_name: str, tmp_path: Path
) -> None:
    arn = await create_stream(client, stream_name, 2)
    (tmp_path / "orders_handler.py").write_text(textwrap.dedent(HANDLER))
    marks = tmp_path / "marks"
    marks.mkdir()
    config = tmp_path / "kinesis-esm.toml"
    config.write_text(
        f"""\
[kinesis]
endpoint_url = "{moto}"
region = "us-east-1"

[state]
path = "{tmp_path / "state.db"}"

[control]
port = 0

[functions.orders]
handler = "orders_handler:lambda_handler"
timeout = 30

[[event_source_mappings]]
function_name = "orders"
event_source_arn = "{arn}"
starting_position = "TRIM_HORIZON"
batch_size = 10
parallelization_factor = 4
function_response_types = ["ReportBatchItemFailures"]
"""
    )
    orders = [
        (f"key-{i % 13}", json.dumps({"id": f"o{i}", "fail": i % 7 == 0}).encode())
        for i in range(ORDERS)
    ]
    await put_records(client, stream_name, orders)
    env = {
        **os.environ,
        "ORDER_MARKS": str(marks),
        "POWERTOOLS_SERVICE_NAME": "orders",
        "POWERTOOLS_METRICS_NAMESPACE": "Shop",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    out_path = tmp_path / "daemon.out"
    run = start_daemon(config, env, out_path)
    try:
        wanted = {f"o{i}" for i in range(ORDERS)}
        await wait_for(
            lambda: wanted <= {order for _, _, order in processed(out_path.read_text())},
            90,
            message="every order processed",
        )
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 0, out_path.read_text()[-3000:]
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=10)
    lines = processed(out_path.read_text())
    assert {order for _, _, order in lines} == wanted  # nothing lost
    failing = {f"o{i}" for i in range(ORDERS) if i % 7 == 0}
    assert {p.name for p in marks.iterdir()} == failing  # each failed once, then was retried
    assert all(tagged == stamped for tagged, stamped, _ in lines)  # the right request id
    assert len({tagged for tagged, _, _ in lines}) > 8  # many invocations, not one
