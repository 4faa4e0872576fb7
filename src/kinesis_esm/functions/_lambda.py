"""A function on AWS Lambda, called through Lambda's Invoke API (RequestResponse).

The two failure classes of Lambda's event source mapping (reference section 4.1) map onto the
``Function`` protocol like this:

* **Function errors** come back as an ``InvokeResult`` with ``error_type`` set, so they count
  against MaximumRetryAttempts, bisect and reach the on-failure destination: an
  ``X-Amz-Function-Error`` answer (``Handled`` or ``Unhandled``, the message taken from the error
  payload's ``errorType`` and ``errorMessage``); no answer within the function's timeout plus
  ``call_margin``; a 5xx that is not one of Lambda's own service errors (a proxy's 502/503/504);
  and a request over Lambda's 6 MB synchronous payload limit (``RequestEntityTooLargeException``,
  checked before sending: it can never succeed, and as a function error it is retried a bounded
  number of times, bisected, and reported, instead of stalling the shard until the records
  expire).
* **Could not invoke**: everything else raises :class:`InvokeError`, which the batch processor
  retries with back-off without counting a retry, as Lambda's ESM does: throttling (429
  ``TooManyRequestsException``), Lambda's service errors (``ServiceException``,
  ``ResourceNotReadyException``, the EC2, ENI, subnet and KMS errors, ...), a missing function
  or permission, an unreachable endpoint, missing credentials.

botocore's own retries are off (one attempt per invoke): the processor's back-off is the only
retry loop, so every attempt is logged and bounded by the deadline here.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any, Literal

import anyio
import orjson
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

from .._errors import KinesisESMError
from ..config import ConfigError
from ._callable import InvokeResult

__all__ = ["MAX_REQUEST_BYTES", "InvokeError", "LambdaInvokeFunction", "parse_function_name"]

# Lambda's synchronous invocation request limit; Lambda's own message when it is exceeded.
MAX_REQUEST_BYTES = 6 * 1024 * 1024
TOO_LARGE = "RequestEntityTooLargeException"
_TOO_LARGE_CODES = frozenset(
    {TOO_LARGE, "RequestTooLargeException", "SerializedRequestEntityTooLargeException"}
)
_THROTTLE_CODES = frozenset({"TooManyRequestsException", "ThrottlingException"})
_MESSAGE_LIMIT = 1000  # characters of an error payload kept in a message

_NAME = r"[a-zA-Z0-9_.-]+"
_QUALIFIER = r"\$LATEST(?:\.PUBLISHED)?|[a-zA-Z0-9_-]{1,128}"
_FULL_ARN = re.compile(
    rf"arn:(?P<partition>aws[a-zA-Z-]*):lambda:(?P<region>[a-z0-9-]+):(?P<account>\d{{12}}):"
    rf"function:(?P<name>{_NAME})(?::(?P<qualifier>{_QUALIFIER}))?"
)
_PARTIAL = re.compile(
    rf"(?:(?P<account>\d{{12}}):function:)?(?P<name>{_NAME})(?::(?P<qualifier>{_QUALIFIER}))?"
)


class InvokeError(KinesisESMError):
    """The function was not invoked: Lambda refused the call or could not be reached.

    The batch processor retries these with back-off, without counting a retry.
    """

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status

    @property
    def throttled(self) -> bool:
        return self.code in _THROTTLE_CODES or self.status == 429


class FunctionName:
    """``function_name`` taken apart: what Invoke's FunctionName and Qualifier get."""

    __slots__ = ("account", "name", "partition", "qualifier", "region")

    def __init__(
        self,
        name: str,
        qualifier: str | None,
        region: str | None,
        account: str | None,
        partition: str = "aws",
    ) -> None:
        self.name = name
        self.qualifier = qualifier
        self.region = region
        self.account = account
        self.partition = partition

    def unqualified(self) -> str:
        """The FunctionName parameter: the ARN when one was given (its account matters)."""
        if self.region is not None:
            return f"arn:{self.partition}:lambda:{self.region}:{self.account}:function:{self.name}"
        if self.account is not None:
            return f"{self.account}:function:{self.name}"
        return self.name


def parse_function_name(value: str) -> FunctionName:
    """A name, a partial ARN (``account:function:name``) or an ARN, each with an optional
    ``:qualifier`` (version or alias). Raises ConfigError naming ``function_name``."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{value!r} is not a function name or ARN", parameter="function_name")
    match = _FULL_ARN.fullmatch(value)
    if match is not None:
        parsed = FunctionName(
            match["name"],
            match["qualifier"],
            match["region"],
            match["account"],
            match["partition"],
        )
    else:
        match = _PARTIAL.fullmatch(value)
        if match is None:
            raise ConfigError(
                f"{value!r} is not a function name or ARN",
                parameter="function_name",
                hint="my-function, my-function:alias, "
                "or arn:aws:lambda:<region>:<account>:function:my-function[:alias]",
            )
        parsed = FunctionName(match["name"], match["qualifier"], None, match["account"])
    if len(parsed.name) > 64:
        raise ConfigError(
            f"function name {parsed.name!r} is longer than 64 characters",
            parameter="function_name",
        )
    return parsed


def _parse_payload(raw: bytes) -> Any:
    """The function's return value: JSON, None when empty, else the text as it came."""
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


def _error_message(payload: Any) -> str:
    """``errorType: errorMessage`` from Lambda's error payload, or the payload as text."""
    if isinstance(payload, dict):
        error_type, message = payload.get("errorType"), payload.get("errorMessage")
        if error_type is not None or message is not None:
            text = f"{error_type or 'Error'}: {message if message is not None else ''}"
            return text[:_MESSAGE_LIMIT]
    text = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    return text[:_MESSAGE_LIMIT]


class LambdaInvokeFunction:
    """A Lambda function invoked through Lambda's Invoke API, synchronously.

    ``function_name`` is a name, ARN, or either with ``:qualifier``. The region is ``region``,
    else the ARN's, else the standard chain's (``AWS_DEFAULT_REGION``, the config file). The
    endpoint is ``endpoint_url``, else ``AWS_ENDPOINT_URL_LAMBDA`` or ``AWS_ENDPOINT_URL`` (botocore
    reads them), else AWS's. Credentials come from the standard chain. ``timeout`` is the
    function's configured timeout; a call gets ``timeout + call_margin`` seconds in all.

    One aiobotocore client serves every invocation, created on the first; ``aclose()`` closes it.
    """

    input: Literal["event", "records"] = "event"  # a remote function takes the event

    def __init__(
        self,
        function_name: str,
        *,
        name: str | None = None,
        timeout: float = 3.0,
        endpoint_url: str | None = None,
        region: str | None = None,
        arn: str | None = None,
        call_margin: float = 5.0,
        connect_timeout: float = 5.0,
        max_connections: int = 100,
        session: AioSession | None = None,
    ) -> None:
        parsed = parse_function_name(function_name)
        _positive("timeout", timeout, 900.0)
        _positive("call_margin", call_margin, 900.0)
        _positive("connect_timeout", connect_timeout, 900.0)
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigError(
                f"{max_connections!r} is not a positive integer", parameter="max_connections"
            )
        if endpoint_url and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", endpoint_url):
            raise ConfigError(
                f"{endpoint_url!r} is not an http:// or https:// URL", parameter="endpoint_url"
            )
        self._session = session or get_session()
        if region and parsed.region and region != parsed.region:
            raise ConfigError(
                f"region {region!r} differs from the function ARN's region {parsed.region!r}",
                parameter="region",
            )
        resolved = region or parsed.region or self._session.get_config_variable("region")
        if not resolved:
            raise ConfigError(
                f"no region for function {function_name!r}",
                parameter="region",
                hint="give a function ARN, region, or set AWS_DEFAULT_REGION",
            )
        self.region: str = resolved
        self.function_name = function_name
        self.name = name or parsed.name
        self.timeout = float(timeout)
        self.call_margin = float(call_margin)
        self.endpoint_url = endpoint_url or None
        self.enforces_timeout = True  # invoke() returns within timeout + call_margin
        self._function_name = parsed.unqualified()
        self._qualifier = parsed.qualifier
        account = parsed.account or "000000000000"  # unknown for a bare name
        suffix = f":{parsed.qualifier}" if parsed.qualifier else ""
        self.arn = arn or (
            f"arn:{parsed.partition}:lambda:{self.region}:{account}:function:{parsed.name}{suffix}"
        )
        self._config = AioConfig(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=self.timeout + self.call_margin,
            max_pool_connections=max_connections,
        )
        self._client: Any = None
        self._service_errors: frozenset[str] = frozenset()
        self._stack: AsyncExitStack | None = None
        self._lock = anyio.Lock()

    @property
    def qualifier(self) -> str | None:
        return self._qualifier

    async def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                stack = AsyncExitStack()
                client = await stack.enter_async_context(
                    self._session.create_client(
                        "lambda",
                        region_name=self.region,
                        endpoint_url=self.endpoint_url,
                        config=self._config,
                    )
                )
                shapes = client.meta.service_model.operation_model("Invoke").error_shapes
                # Lambda's own 5xx errors (ServiceException, EC2/ENI/KMS, ResourceNotReady):
                # the function did not run; any other 5xx is a function error
                self._service_errors = frozenset(
                    s.name
                    for s in shapes
                    if s.metadata.get("error", {}).get("httpStatusCode", 0) >= 500
                )
                self._stack, self._client = stack, client
        return self._client

    async def invoke(self, payload: Any) -> InvokeResult:
        started = time.monotonic()
        body = orjson.dumps(payload)
        if len(body) > MAX_REQUEST_BYTES:
            message = (
                f"Request must be smaller than {MAX_REQUEST_BYTES} bytes for the InvokeFunction "
                f"operation (this one is {len(body)} bytes)"
            )
            return _failed(str(uuid.uuid4()), TOO_LARGE, message, started)
        client = await self._get_client()
        params: dict[str, Any] = {
            "FunctionName": self._function_name,
            "InvocationType": "RequestResponse",
            "Payload": body,
        }
        if self._qualifier:
            params["Qualifier"] = self._qualifier
        deadline = self.timeout + self.call_margin
        try:
            async with asyncio.timeout(deadline):
                response = await client.invoke(**params)
                async with response["Payload"] as stream:
                    raw: bytes = await stream.read()
        except (TimeoutError, ReadTimeoutError):
            # the request went out: the function may have run, so this is a function error
            message = f"no response from Lambda within {deadline:.2f} seconds"
            return _failed(str(uuid.uuid4()), "Unhandled", message, started)
        except ClientError as exc:
            return self._client_error(exc, started)
        except BotoCoreError as exc:  # unreachable endpoint, credentials, a closed connection
            raise InvokeError(
                f"cannot invoke {self._function_name}: {type(exc).__name__}: {exc}"
            ) from exc
        request_id = response.get("ResponseMetadata", {}).get("RequestId") or str(uuid.uuid4())
        value = _parse_payload(raw)
        result = InvokeResult(request_id, payload=value, duration=time.monotonic() - started)
        function_error = response.get("FunctionError")
        if function_error:
            result.error_type = function_error
            result.error_message = _error_message(value)
        return result

    def _client_error(self, exc: ClientError, started: float) -> InvokeResult:
        error = exc.response.get("Error", {})
        metadata = exc.response.get("ResponseMetadata", {})
        code = str(error.get("Code", ""))
        status = int(metadata.get("HTTPStatusCode", 0))
        message = str(error.get("Message", "")) or str(exc)
        request_id = metadata.get("RequestId") or str(uuid.uuid4())
        if code in _TOO_LARGE_CODES or status == 413:
            return _failed(request_id, TOO_LARGE, message, started)
        if status >= 500 and code not in self._service_errors:
            text = f"HTTP {status} from the Lambda endpoint ({code}: {message})"
            return _failed(request_id, "Unhandled", text[:_MESSAGE_LIMIT], started)
        raise InvokeError(
            f"Lambda refused to invoke {self._function_name}: {code} (HTTP {status}): {message}",
            code=code,
            status=status,
        ) from exc

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def __repr__(self) -> str:
        return (
            f"LambdaInvokeFunction({self.name!r}, function_name={self.function_name!r}, "
            f"region={self.region!r}, timeout={self.timeout})"
        )


def _failed(request_id: str, error_type: str, message: str, started: float) -> InvokeResult:
    return InvokeResult(
        request_id,
        error_type=error_type,
        error_message=message,
        duration=time.monotonic() - started,
    )


def _positive(parameter: str, value: float, maximum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= maximum:
        raise ConfigError(
            f"{value!r} is not a number of seconds above 0 and at most {maximum:g}",
            parameter=parameter,
        )
