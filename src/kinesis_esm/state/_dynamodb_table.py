"""The lease table itself: its key schema, its creation, and DynamoDB's errors as ours.

Hash key ``mappingUuid``, range key ``leaseKey``, both strings, on-demand billing. A table of
that name with any other key schema is refused rather than written into. The error mapping
turns botocore's exceptions into the `LeaseStoreError` family; a failed condition keeps the
row the server sent back, for `Conflict`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from botocore.exceptions import ClientError, NoCredentialsError

from ..leases._store import (
    LeaseStoreError,
    LeaseStoreThrottledError,
    LeaseStoreUnavailableError,
    LeaseTableAccessDeniedError,
)

__all__ = ["ensure_lease_table"]

_THROTTLE_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
_ACCESS_CODES = frozenset(
    {"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException"}
)
_ACTIONS = ", ".join(
    f"dynamodb:{action}"
    for action in [
        "DescribeTable",
        "CreateTable",
        "GetItem",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "Query",
        "BatchWriteItem",
    ]
)
LEASE_TABLE_KEYS = (("mappingUuid", "HASH"), ("leaseKey", "RANGE"))

Call = Callable[..., Awaitable[dict[str, Any]]]
"""``DynamoDBLeaseStore._call``: one operation by its snake_case name, with its timeout."""


async def ensure_lease_table(call: Call, table: str, *, create: bool, ready_timeout: float) -> None:
    """Make sure `table` exists as a lease table (creating it when `create`) and is ACTIVE."""
    try:
        description = await _describe(call, table)
    except LeaseStoreError as error:
        if error.code != "ResourceNotFoundException":
            raise
        if not create:
            raise LeaseStoreError(
                f"the lease table {table!r} does not exist and create_table is off",
                code=error.code,
            ) from error
        description = await _create(call, table)
    keys = tuple((k["AttributeName"], k["KeyType"]) for k in description.get("KeySchema", ()))
    if sorted(keys) != sorted(LEASE_TABLE_KEYS):
        raise LeaseStoreError(
            f"the table {table!r} exists but is not a kinesis-esm lease table: its key "
            f"schema is {keys}, expected mappingUuid (HASH) and leaseKey (RANGE)"
        )
    with anyio.move_on_after(ready_timeout):
        while description.get("TableStatus") != "ACTIVE":
            await anyio.sleep(0.5)
            description = await _describe(call, table)
        return
    raise LeaseStoreUnavailableError(
        f"the lease table {table!r} was not ACTIVE within {ready_timeout} s"
    )


async def _describe(call: Call, table: str) -> dict[str, Any]:
    description: dict[str, Any] = (await call("describe_table", TableName=table))["Table"]
    return description


async def _create(call: Call, table: str) -> dict[str, Any]:
    try:
        answer = await call(
            "create_table",
            TableName=table,
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": name, "KeyType": kind} for name, kind in LEASE_TABLE_KEYS],
            AttributeDefinitions=[
                {"AttributeName": name, "AttributeType": "S"} for name, _ in LEASE_TABLE_KEYS
            ],
        )
    except LeaseStoreError as error:
        if error.code != "ResourceInUseException":  # another worker created it just now
            raise
        return await _describe(call, table)
    description: dict[str, Any] = answer["TableDescription"]
    return description


class _ConditionFailed(LeaseStoreError):
    def __init__(self, message: str, item: dict[str, Any] | None) -> None:
        super().__init__(message, code="ConditionalCheckFailedException")
        self.item = item


def _map_error(exc: BaseException, operation: str, table: str) -> LeaseStoreError:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = f"DynamoDB {operation} on {table!r}: {code}: {error.get('Message', '')}"
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code == "ConditionalCheckFailedException":
            return _ConditionFailed(message, exc.response.get("Item"))
        if code in _THROTTLE_CODES or status == 429:
            return LeaseStoreThrottledError(message, code=code)
        if code in _ACCESS_CODES or status == 403:
            return LeaseTableAccessDeniedError(
                f"{message}. Each worker needs {_ACTIONS} on table/{table} "
                "(docs/leases.md has the IAM policy)",
                code=code,
            )
        if status >= 500 or status == 0:
            return LeaseStoreUnavailableError(message, code=code)
        return LeaseStoreError(message, code=code)
    if isinstance(exc, NoCredentialsError):
        return LeaseTableAccessDeniedError(f"DynamoDB {operation}: no AWS credentials found")
    if isinstance(exc, TimeoutError):
        return LeaseStoreUnavailableError(f"DynamoDB {operation} on {table!r}: timed out")
    return LeaseStoreUnavailableError(
        f"DynamoDB {operation} on {table!r}: {type(exc).__name__}: {exc}"
    )
