"""What the two kinds of execution environment share: the invocation handed to one, the
``Environment`` protocol the pool drives, Lambda's error results for crashes, timeouts and
memory, and Lambda's environment variables.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

from .._errors import KinesisESMError
from ._callable import InvokeResult

__all__ = [
    "RESERVED_VARIABLES",
    "Environment",
    "EnvironmentUnavailableError",
    "Failure",
    "InitError",
    "Invocation",
    "decode_response",
    "exit_description",
    "function_error",
    "lambda_environment",
    "lost_result",
    "region_of",
    "trace_id",
]

Failure = Literal["crash", "timeout", "out_of_memory"]

# Lambda refuses these in a function's environment variables (it sets them itself).
RESERVED_VARIABLES = frozenset(
    {
        "_HANDLER",
        "_X_AMZN_TRACE_ID",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API",
        "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR",
    }
)
# The daemon's own environment must not leak these into a function's: they would change how a
# runtime interface client behaves (multi-concurrency, a telemetry fd that is not there).
_NOT_INHERITED = (
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_MAX_CONCURRENCY",
    "AWS_EXECUTION_ENV",
    "_LAMBDA_TELEMETRY_LOG_FD",
    "_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET",
    "_X_AMZN_TRACE_ID",
)


class EnvironmentUnavailableError(KinesisESMError):
    """No invocation was made: the function is stopping (the batch processor retries)."""


@dataclass(frozen=True, slots=True)
class InitError:
    """Why an environment's init failed, in Lambda's terms (``Runtime.ImportModuleError``...)."""

    error_type: str
    message: str
    stack_trace: tuple[str, ...] = ()

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> InitError:
        trace = document.get("stackTrace")
        return cls(
            str(document.get("errorType") or "Runtime.Unknown"),
            str(document.get("errorMessage") or ""),
            tuple(str(line) for line in trace) if isinstance(trace, list) else (),
        )


@dataclass(slots=True)
class Invocation:
    """One invocation, as the environment receives it."""

    request_id: str
    body: bytes  # the event, as JSON
    timeout: float  # seconds from the hand-over to the environment (the deadline is set then)
    invoked_function_arn: str
    trace_id: str
    client_context: Mapping[str, Any] | None = None
    cognito_identity: Mapping[str, Any] | None = None


class Environment(Protocol):
    """One execution environment: init once, then one invocation at a time."""

    number: int
    #: why the environment was lost during its last invocation; None while it is usable
    failure: Failure | None

    @property
    def alive(self) -> bool: ...

    async def start(self) -> InitError | None: ...

    async def invoke(self, invocation: Invocation) -> InvokeResult: ...

    def kill(self) -> None: ...

    async def stop(self) -> None: ...


def trace_id(now: float | None = None) -> str:
    """An X-Ray trace header as Lambda passes it (not sampled: there is no X-Ray daemon)."""
    epoch = int(time.time() if now is None else now)
    root = f"1-{epoch:08x}-{secrets.token_hex(12)}"
    return f"Root={root};Parent={secrets.token_hex(8)};Sampled=0"


def region_of(arn: str) -> str:
    parts = arn.split(":")
    if len(parts) > 3 and parts[0] == "arn" and parts[3]:
        return parts[3]
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def exit_description(returncode: int | None) -> str:
    """How Lambda words a process's end: ``exit status 1``, ``signal: segmentation fault``."""
    if returncode is None:
        return "exit status unknown"
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        name = signal.strsignal(-returncode) or f"signal {-returncode}"
    except ValueError:
        name = f"signal {-returncode}"
    return f"signal: {name.lower()}"


def lost_result(
    request_id: str, failure: Failure, *, returncode: int | None, timeout: float, memory_size: int
) -> InvokeResult:
    """The function error of an invocation whose environment crashed, timed out or ran out of
    memory, with Lambda's error type and message."""
    prefix = f"RequestId: {request_id} Error: "
    if failure == "timeout":
        error_type, message = "Sandbox.Timedout", f"Task timed out after {timeout:.2f} seconds"
    elif failure == "out_of_memory":
        error_type = "Runtime.OutOfMemory"
        message = f"Runtime exited with error: out of memory (memory_size {memory_size} MB)"
    else:
        error_type = "Runtime.ExitError"
        message = f"Runtime exited with error: {exit_description(returncode)}"
    document = {"errorType": error_type, "errorMessage": prefix + message}
    return InvokeResult(
        request_id, payload=document, error_type=error_type, error_message=prefix + message
    )


def function_error(request_id: str, document: Mapping[str, Any]) -> InvokeResult:
    """An error document a runtime reported: the runtime's own errors (``Runtime.*``) keep
    their type; an exception of the handler is ``Unhandled``, as CallableFunction reports it."""
    error_type = str(document.get("errorType") or "")
    message = str(document.get("errorMessage") or "")
    if error_type.startswith(("Runtime.", "Sandbox.", "Function.")):
        return InvokeResult(request_id, dict(document), error_type, message)
    text = f"{error_type}: {message}" if error_type else message
    return InvokeResult(request_id, dict(document), "Unhandled", text)


def decode_response(body: bytes) -> Any:
    """A runtime's response body as the value the batch processor reads: JSON when it is JSON
    (Lambda's event source mapping reads the payload so, whatever its content type), else the
    bytes as they are."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        import json  # NaN and Infinity, which Lambda's Python runtime writes

        try:
            return json.loads(body)
        except ValueError:
            return body


def lambda_environment(
    *,
    function_name: str,
    memory_size: int,
    handler: str,
    region: str,
    log_stream_name: str,
    task_root: str,
    user: Mapping[str, str] | None = None,
    runtime_api: str | None = None,
    execution_env: str | None = None,
) -> dict[str, str]:
    """The environment variables of one execution environment, as Lambda sets them.

    The daemon's environment is inherited (credentials, PATH, PYTHONPATH...), then Lambda's
    defaults that a function may change (TZ), the function's own variables, and last Lambda's
    reserved variables.
    """
    check_user_environment(user or {})
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env["TZ"] = ":UTC"
    env.update(user or {})
    env.update(
        {
            "_HANDLER": handler,
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "AWS_LAMBDA_FUNCTION_NAME": function_name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_size),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": log_stream_name,
            "LAMBDA_TASK_ROOT": task_root,
        }
    )
    if runtime_api is not None:
        env["AWS_LAMBDA_RUNTIME_API"] = runtime_api
    if execution_env is not None:
        env["AWS_EXECUTION_ENV"] = execution_env
    return env


def check_user_environment(user: Mapping[str, str]) -> None:
    """Lambda's check (and message) for a function's environment variables."""
    reserved = sorted(k for k in user if k in RESERVED_VARIABLES)
    if reserved:
        raise ValueError(
            "Lambda was unable to configure your environment variables because the "
            "environment variables you have provided contains reserved keys that are currently "
            f"not supported for modification. Reserved keys used in this request: "
            f"{', '.join(reserved)}"
        )
    for key, value in user.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"environment: {key!r} = {value!r}: names and values are strings")
