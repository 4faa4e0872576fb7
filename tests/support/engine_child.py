"""A handler for the daemon in crash tests: it records every record it is handed.

``kinesis-esm run`` loads it as ``tests.support.engine_child:handler`` (the working directory is
on the path). Each invocation appends one JSON line per record to the file named by
``KINESIS_ESM_TEST_OUT``, in one ``write`` per batch (so the file is current whenever the process
is killed), then sleeps a random time from ``KINESIS_ESM_TEST_SLEEP`` ("low,high" seconds) so a
kill lands while batches are in flight. Lines: ``{"shard", "seq", "key", "request"}``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import anyio
import orjson

OUT_VARIABLE = "KINESIS_ESM_TEST_OUT"
SLEEP_VARIABLE = "KINESIS_ESM_TEST_SLEEP"

_fd: int | None = None


def _out() -> int:
    global _fd
    if _fd is None:
        _fd = os.open(os.environ[OUT_VARIABLE], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    return _fd


async def handler(event: dict[str, Any], context: Any) -> None:
    request = context.aws_request_id
    lines = b"".join(
        orjson.dumps(
            {
                "shard": r["eventID"].split(":", 1)[0],
                "seq": r["kinesis"]["sequenceNumber"],
                "key": r["kinesis"]["partitionKey"],
                "request": request,
            }
        )
        + b"\n"
        for r in event["Records"]
    )
    os.write(_out(), lines)  # one unbuffered write per batch: nothing waits in user space
    low, high = (float(x) for x in os.environ.get(SLEEP_VARIABLE, "0,0").split(","))
    await anyio.sleep(random.uniform(low, high))


def read_deliveries(path: Path) -> list[dict[str, str]]:
    """The lines written so far; a last line cut short by a kill is left out."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    return [orjson.loads(line) for line in complete.splitlines()]
