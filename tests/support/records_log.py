"""A Lambda handler for daemon tests, and the reader of what it logs.

The handler appends one JSON line per invocation when it starts and one when it is done, to the
file named by ``$RECORDS_LOG``. While the file named by ``$RECORDS_BLOCK`` exists it holds the
batch in flight, between the two lines (bounded, so a forgotten flag cannot hang a test run).
Lines are single ``O_APPEND`` writes, so they survive a kill -9 of the daemon and never mix.

A test writes a module into its working directory that re-exports :func:`handler`, and names
that module in the config file, as a user would.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BLOCK_ENV", "LOG_ENV", "LogEntry", "handler", "read_log"]

LOG_ENV = "RECORDS_LOG"
BLOCK_ENV = "RECORDS_BLOCK"
MAX_BLOCK_SECONDS = 60.0


def _daemon_pid() -> int:
    """The pid of the daemon that invoked: in an execution environment (a worker process of
    the daemon, which sets Lambda's variables) the parent's, else this process's own."""
    return os.getppid() if "AWS_LAMBDA_FUNCTION_NAME" in os.environ else os.getpid()


@dataclass(frozen=True)
class LogEntry:
    pid: int  # the daemon's
    phase: str  # "start" | "done"
    request_id: str
    ids: tuple[str, ...]  # the batch's eventIDs, shardId:sequenceNumber


def _append(entry: dict[str, Any]) -> None:
    line = (json.dumps(entry) + "\n").encode()
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def handler(event: dict[str, Any], context: Any) -> None:
    entry = {
        "pid": _daemon_pid(),
        "request_id": context.aws_request_id,
        "ids": [r["eventID"] for r in event["Records"]],
    }
    _append({**entry, "phase": "start"})
    block = os.environ.get(BLOCK_ENV)
    if block:
        deadline = time.monotonic() + MAX_BLOCK_SECONDS
        while Path(block).exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # the handler waits on the test's flag file, bounded
    _append({**entry, "phase": "done"})


def read_log(path: Path) -> list[LogEntry]:
    """Every complete line of the log, in order (a missing file is an empty log)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # a line being written right now
        raw = json.loads(line)
        entries.append(LogEntry(raw["pid"], raw["phase"], raw["request_id"], tuple(raw["ids"])))
    return entries
