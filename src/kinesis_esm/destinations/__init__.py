"""On-failure destinations: where Lambda's report of a discarded batch goes.

``open_destination(target)`` picks the implementation from the configured string: an SQS queue,
SNS topic or S3 bucket ARN, or a ``file://`` path (JSON lines, the embedded default).
"""

from __future__ import annotations

from ._aws import S3Destination, SNSDestination, SQSDestination
from ._file import FileDestination
from ._protocol import Destination, DestinationError, FailureReport

__all__ = (
    "Destination",
    "DestinationError",
    "FailureReport",
    "FileDestination",
    "S3Destination",
    "SNSDestination",
    "SQSDestination",
    "open_destination",
)


def open_destination(
    target: str, *, region: str | None = None, call_timeout: float = 10.0
) -> Destination:
    """The destination for ``target``; ``region`` is used for S3 (its ARN names none).

    Nothing is contacted here: clients connect on the first delivery.
    """
    if target.startswith("file://"):
        return FileDestination(target)
    service = target.split(":")[2] if target.count(":") >= 5 else ""
    if service == "sqs":
        return SQSDestination(target, call_timeout=call_timeout)
    if service == "sns":
        return SNSDestination(target, call_timeout=call_timeout)
    if service == "s3":
        return S3Destination(target, region=region, call_timeout=call_timeout)
    raise ValueError(f"{target!r} is not an SQS queue, SNS topic or S3 bucket ARN, nor file://")
