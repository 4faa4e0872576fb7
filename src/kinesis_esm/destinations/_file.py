"""The embedded default destination: a local file receiving one JSON object per line.

``file://`` is followed by the path as is: ``file:///var/lib/esm/failures.jsonl`` is absolute,
``file://failures.jsonl`` relative to the working directory. Each line is the S3 form of the
report (Lambda's record plus ``payload``, the invocation event as a string), so a local report
is self-contained. Lines are appended, flushed and fsynced before ``deliver`` returns; missing
parent folders are created.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import anyio.to_thread
import orjson

from ..policy._failures import s3_body
from ._protocol import DestinationError, FailureReport

__all__ = ["FileDestination"]

PREFIX = "file://"


class FileDestination:
    def __init__(self, target: str) -> None:
        if not target.startswith(PREFIX) or len(target) == len(PREFIX):
            raise ValueError(f"{target!r} is not a file:// destination")
        self.target = target
        self.path = Path(target[len(PREFIX) :])
        self._lock = anyio.Lock()

    def _append(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as out:
            out.write(line)
            out.flush()
            os.fsync(out.fileno())

    async def deliver(self, report: FailureReport) -> None:
        line = orjson.dumps(s3_body(report.record, report.event)) + b"\n"
        async with self._lock:
            try:
                await anyio.to_thread.run_sync(self._append, line)
            except OSError as exc:
                raise DestinationError(f"{self.target}: {exc}") from exc

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"FileDestination({self.target!r})"
