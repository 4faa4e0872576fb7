"""The words of a failure log line: which records, the handler's traceback, and what the
failing range meets next in Lambda's parameters (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import EventSourceMappingConfig
from ..events._record import Record
from ..functions import InvokeResult
from ..policy._failures import Pending

__all__ = ["handler_traceback", "retry_policy", "span"]


def retry_policy(cfg: EventSourceMappingConfig, current: Pending | None) -> str:
    """What a failing range meets next, in Lambda's parameters."""
    age = cfg.maximum_record_age_in_seconds
    until_old = f"the records are older than {age}s (MaximumRecordAgeInSeconds)"
    limit = cfg.maximum_retry_attempts
    if limit < 0:
        if age < 0:
            return (
                "retrying until it succeeds or the records expire from the stream "
                "(MaximumRetryAttempts -1, MaximumRecordAgeInSeconds -1: forever)"
            )
        return f"retrying until it succeeds or {until_old}"
    left = limit - (current.errors if current is not None else 0) + 1
    retries = f"{left} of {limit} retries left (MaximumRetryAttempts)"
    return retries if age < 0 else f"{retries}, or until {until_old}"


def span(records: Sequence[Record]) -> str:
    return f"{records[0].record_id}..{records[-1].record_id}"


def handler_traceback(result: InvokeResult) -> str:
    """The handler's traceback, for the log: the frames a callable reported, else those of the
    error document (Lambda's ``stackTrace``) of the other targets; "" without frames."""
    frames = result.stack_trace
    if frames is None and isinstance(result.payload, dict):
        trace = result.payload.get("stackTrace")
        frames = [str(f) for f in trace] if isinstance(trace, list) else None
    if not frames:
        return ""
    body = "".join(frame if frame.endswith("\n") else f"{frame}\n" for frame in frames)
    return f"\nTraceback (most recent call last):\n{body}{result.error_message}"
