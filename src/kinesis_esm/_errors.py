"""The exception hierarchy. Transport errors are mapped into these at the source seam, so the
poller's policy never looks at botocore error codes."""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "ExpiredIteratorError",
    "FunctionError",
    "KinesisESMError",
    "SourceError",
    "StreamNotFoundError",
    "ThrottledError",
    "TransientSourceError",
    "TrimmedPositionError",
]


class KinesisESMError(Exception):
    """Base class of every error kinesis-esm raises on purpose."""


class SourceError(KinesisESMError):
    """A Kinesis call failed."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransientSourceError(SourceError):
    """Worth retrying as is: a timeout, a reset connection, a 5xx."""


class ThrottledError(TransientSourceError):
    """ProvisionedThroughputExceededException or LimitExceededException."""


class ExpiredIteratorError(SourceError):
    """The shard iterator is older than five minutes: take a new one."""


class TrimmedPositionError(SourceError):
    """The requested position is no longer in the stream (retention trimmed it)."""


class StreamNotFoundError(SourceError):
    """ResourceNotFoundException: the stream or shard does not exist (any more)."""


class AccessDeniedError(SourceError):
    """The credentials lack a permission the mapping needs."""


class FunctionError(KinesisESMError):
    """The function raised, timed out or returned something Lambda would reject."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
