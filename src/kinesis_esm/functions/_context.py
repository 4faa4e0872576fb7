"""The ``context`` object handlers receive, attribute for attribute as Lambda's Python runtime
(``awslambdaric.lambda_context.LambdaContext``) builds it.

Standard library only: the worker process of an execution environment loads this file on its
own, without importing the rest of kinesis-esm. No ``__slots__``: handlers and libraries set
attributes on the context (as they may on Lambda).
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = [
    "Client",
    "ClientContext",
    "CognitoIdentity",
    "LambdaContext",
    "log_stream_name",
]

# The W3C trace-context fields the runtime surfaces through ``context.w3c()``.
W3C_FIELDS = ("traceparent", "tracestate", "baggage")


def log_stream_name(version: str = "$LATEST", now: float | None = None) -> str:
    """A log stream name in Lambda's shape: ``2026/12/04/[$LATEST]<32 hex digits>``.

    Lambda names one stream per execution environment, dated (UTC) when the environment starts.
    """
    day = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.UTC)
    return f"{day:%Y/%m/%d}/[{version}]{uuid.uuid4().hex}"


# Contexts built outside an execution environment (the thread and async models) share the
# daemon process, so they share one stream name, as the invocations of one environment do.
_PROCESS_LOG_STREAM = log_stream_name()


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(
        self, cognito_identity_id: str | None = None, cognito_identity_pool_id: str | None = None
    ) -> None:
        self.cognito_identity_id = cognito_identity_id
        self.cognito_identity_pool_id = cognito_identity_pool_id

    def __repr__(self) -> str:
        return (
            f"CognitoIdentity([cognito_identity_id={self.cognito_identity_id},"
            f"cognito_identity_pool_id={self.cognito_identity_pool_id}])"
        )


class Client:
    __slots__ = (
        "app_package_name",
        "app_title",
        "app_version_code",
        "app_version_name",
        "installation_id",
    )

    def __init__(self, fields: Mapping[str, Any]) -> None:
        for name in self.__slots__:
            setattr(self, name, fields.get(name))

    # the runtime's field order, for the same repr
    _FIELDS = (
        "installation_id",
        "app_title",
        "app_version_name",
        "app_version_code",
        "app_package_name",
    )

    def __repr__(self) -> str:
        inner = ",".join(f"{name}={getattr(self, name)}" for name in self._FIELDS)
        return f"Client([{inner}])"


class ClientContext:
    __slots__ = ("client", "custom", "env")

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self.custom: Any = fields.get("custom")
        self.env: Any = fields.get("env")
        client = fields.get("client")
        self.client: Client | None = Client(client) if isinstance(client, Mapping) else None

    def __repr__(self) -> str:
        return f"ClientContext([custom={self.custom},env={self.env},client={self.client}])"


class LambdaContext:
    """What Lambda handlers read from ``context``.

    The first five parameters are kinesis-esm's historical signature; the rest are optional and
    default to what Lambda gives a Kinesis event source mapping's invocation (no client context,
    an identity whose two fields are None, no tenant). ``deadline_ms`` (epoch milliseconds, as
    the Runtime API's ``Lambda-Runtime-Deadline-Ms``) overrides ``timeout`` when given.
    """

    def __init__(
        self,
        function_name: str,
        invoked_function_arn: str,
        memory_limit_in_mb: int | str,
        timeout: float,
        aws_request_id: str | None = None,
        *,
        function_version: str = "$LATEST",
        log_group_name: str | None = None,
        log_stream_name: str | None = None,
        deadline_ms: int | None = None,
        client_context: Mapping[str, Any] | None = None,
        cognito_identity: Mapping[str, Any] | None = None,
        tenant_id: str | None = None,
    ) -> None:
        self.aws_request_id = aws_request_id or str(uuid.uuid4())
        self.log_group_name = log_group_name or f"/aws/lambda/{function_name}"
        self.log_stream_name = log_stream_name or _PROCESS_LOG_STREAM
        self.function_name = function_name
        # a string, as in Lambda's Python runtime (it reads an environment variable)
        self.memory_limit_in_mb = str(memory_limit_in_mb)
        self.function_version = function_version
        self.invoked_function_arn = invoked_function_arn
        self.tenant_id = tenant_id
        if client_context is None:  # a Kinesis invocation's (once per batch: keep it cheap)
            self._w3c_fields: dict[str, str] = {}
            self.client_context: ClientContext | None = None
        else:
            fields = dict(client_context)
            w3c = fields.pop("w3c", None)
            self._w3c_fields = (
                {k: v for k in W3C_FIELDS if isinstance(v := w3c.get(k), str)}
                if isinstance(w3c, Mapping)
                else {}
            )
            self.client_context = ClientContext(fields)
        if cognito_identity is None:
            self.identity = CognitoIdentity()
        else:
            self.identity = CognitoIdentity(
                cognito_identity.get("cognitoIdentityId"),
                cognito_identity.get("cognitoIdentityPoolId"),
            )
        if deadline_ms is None:
            self._deadline = time.monotonic() + timeout
        else:  # measured on the monotonic clock from here on: immune to wall-clock steps
            self._deadline = time.monotonic() + (deadline_ms / 1000 - time.time())

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def w3c(self) -> dict[str, str]:
        """The W3C trace context of the invocation (empty: Kinesis invocations carry none)."""
        return dict(self._w3c_fields)

    def log(self, msg: object) -> None:
        """Write ``msg`` to the function's log, as the runtime does: no newline is added."""
        for handler in logging.getLogger().handlers:
            sink = getattr(handler, "log_sink", None)
            if sink is not None:  # the runtime's own log sink, where one is installed
                sink.log(str(msg))
                return
        sys.stdout.write(str(msg))

    def __repr__(self) -> str:
        return (
            "LambdaContext(["
            f"aws_request_id={self.aws_request_id},"
            f"log_group_name={self.log_group_name},"
            f"log_stream_name={self.log_stream_name},"
            f"function_name={self.function_name},"
            f"memory_limit_in_mb={self.memory_limit_in_mb},"
            f"function_version={self.function_version},"
            f"invoked_function_arn={self.invoked_function_arn},"
            f"client_context={self.client_context},"
            f"identity={self.identity},"
            f"tenant_id={self.tenant_id}"
            "])"
        )
