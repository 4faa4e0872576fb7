"""Parsing the ARNs and names a mapping refers to: Kinesis streams and consumers, functions,
on-failure destinations; and the stable UUID of a (function, stream) pair."""

from __future__ import annotations

import functools
import re
import uuid as _uuid
from typing import NamedTuple

__all__ = ["KinesisArn", "parse_kinesis_arn", "stable_uuid"]

_NAMESPACE = _uuid.UUID("352a92bc-01cf-41f1-a7df-f6077bba81e6")
REGION = r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}"
PARTITION = r"aws(?:-cn|-us-gov)?"
KINESIS_ARN = re.compile(
    rf"arn:(?P<partition>{PARTITION}):kinesis:(?P<region>{REGION}):(?P<account>\d{{12}}):"
    r"stream/(?P<stream>[A-Za-z0-9_.-]{1,128})(?:/consumer/[A-Za-z0-9_.-]{1,128}:\d+)?"
)
DESTINATION = re.compile(
    rf"arn:{PARTITION}:(?:(?:sqs|sns):{REGION}:\d{{12}}:[A-Za-z0-9_-]{{1,256}}(?:\.fifo)?"
    r"|s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])|file://.+"
)
FUNCTION_REF = re.compile(
    rf"(?:arn:aws[a-zA-Z-]*:lambda:)?(?:{REGION}:)?(?:\d{{12}}:)?(?:function:)?"
    r"(?P<name>[a-zA-Z0-9_.-]+)(?::(?:\$LATEST|[a-zA-Z0-9_-]+))?"
)
# The API model's pattern for FunctionName, as AWS quotes it (matching uses FUNCTION_REF).
FUNCTION_NAME_PATTERN = (
    r"(arn:(aws[a-zA-Z-]*)?:lambda:)?((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?"
    r"(\d{12}:)?(function:)?([a-zA-Z0-9-_\.]+)(:(\$LATEST(\.PUBLISHED)?|[a-zA-Z0-9-_]+))?"
)


class KinesisArn(NamedTuple):
    region: str
    account_id: str
    stream_name: str
    stream_arn: str
    consumer_arn: str | None


@functools.lru_cache(maxsize=256)
def parse_kinesis_arn(arn: str) -> KinesisArn | None:
    m = KINESIS_ARN.fullmatch(arn)
    if m is None:
        return None
    partition, region, account, stream = m.group("partition", "region", "account", "stream")
    stream_arn = f"arn:{partition}:kinesis:{region}:{account}:stream/{stream}"
    return KinesisArn(region, account, stream, stream_arn, None if arn == stream_arn else arn)


def stable_uuid(function_name: str, event_source_arn: str) -> str:
    """A uuid5 of the pair over a fixed namespace: the same mapping keeps it across restarts."""
    return str(_uuid.uuid5(_NAMESPACE, f"{function_name}\n{event_source_arn}"))
