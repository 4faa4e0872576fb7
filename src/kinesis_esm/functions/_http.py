"""A function behind HTTP: each batch's Lambda event is POSTed as JSON to one URL.

The answer decides, as a Lambda function's return value would:

* a 2xx answer succeeds; its body is the function's return value: JSON when it parses (so
  ``batchItemFailures`` and a tumbling window's ``state`` work), ``None`` when empty, else the
  text as it came (which a ``ReportBatchItemFailures`` mapping reads as an invalid response);
* any other status (redirects are not followed), a connection error (refused, reset, TLS) or
  no complete answer within ``timeout`` is a function error (``Unhandled``), counted against
  MaximumRetryAttempts like an exception in a Lambda handler; the message says which.

Requests carry Lambda's runtime headers (``Lambda-Runtime-Aws-Request-Id``,
``Lambda-Runtime-Deadline-Ms``, ``Lambda-Runtime-Invoked-Function-Arn``), so a service can log
the request id and see its deadline. Header values from the configuration (``"env:NAME"``
reads the environment once, at construction) are never logged nor shown in ``repr``.

One aiohttp session per function object keeps connections alive between invocations; its
idle connections are closed after ``keepalive_timeout`` seconds, shorter than common servers'
idle timeouts (uvicorn's 5 s), so a request rarely meets a connection the server just closed.
https verifies certificates against the system's store, or ``ca_file``.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from ..config import ConfigError
from ._callable import InvokeResult

__all__ = ["MAX_RESPONSE_BYTES", "HttpFunction"]

MAX_RESPONSE_BYTES = 6 * 1024 * 1024  # Lambda's synchronous response limit
_ENV_PREFIX = "env:"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)
_BODY_EXCERPT = 200


def resolve_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Header values as sent: ``"env:NAME"`` is replaced by the variable's value."""
    resolved: dict[str, str] = {}
    for header, value in (headers or {}).items():
        parameter = f"headers.{header}"
        if not isinstance(header, str) or not _TOKEN.fullmatch(header):
            raise ConfigError(f"{header!r} is not an HTTP header name", parameter="headers")
        if not isinstance(value, str):
            raise ConfigError("the value must be a string", parameter=parameter)
        if value.startswith(_ENV_PREFIX):
            variable = value[len(_ENV_PREFIX) :]
            if not variable:
                raise ConfigError(
                    "'env:' must be followed by an environment variable's name",
                    parameter=parameter,
                )
            found = os.environ.get(variable)
            if found is None:
                raise ConfigError(
                    f"header {header!r} reads the environment variable {variable!r}, "
                    "which is not set",
                    parameter=parameter,
                )
            value = found
        if "\r" in value or "\n" in value:  # never echo the value: it may be a secret
            raise ConfigError("the value contains a line break", parameter=parameter)
        resolved[header] = value
    return resolved


def _display_url(url: str) -> str:
    """The URL for messages and repr, without credentials or query string."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


class ResponseTooLarge(Exception):
    pass


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise ResponseTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class HttpFunction:
    """POSTs each batch's Lambda event to ``url``; the answer is the function's result."""

    input: Literal["event", "records"] = "event"  # a remote function takes the event

    def __init__(
        self,
        url: str,
        *,
        name: str,
        timeout: float = 3.0,
        headers: Mapping[str, str] | None = None,
        arn: str | None = None,
        verify_tls: bool = True,
        ca_file: str | None = None,
        keepalive_timeout: float = 4.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/?#]+(?:[/?#]\S*)?", url):
            raise ConfigError(f"{url!r} is not an http:// or https:// URL", parameter="url")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= 900
        ):
            raise ConfigError(
                f"{timeout!r} is not a number of seconds above 0 and at most 900",
                parameter="timeout",
            )
        if ca_file is not None and not verify_tls:
            raise ConfigError("ca_file needs verify_tls = true", parameter="ca_file")
        self._url = url
        self.url = _display_url(url)
        self.name = name
        self.timeout = float(timeout)
        self.arn = arn or f"arn:aws:lambda:us-east-1:000000000000:function:{name}"
        self.enforces_timeout = True  # invoke() never outlives ``timeout``
        self._headers = {"Content-Type": "application/json", **resolve_headers(headers)}
        self._ssl: ssl.SSLContext | bool = True
        if not verify_tls:
            self._ssl = False
        elif ca_file is not None:
            try:
                self._ssl = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load {ca_file!r}: {exc}", parameter="ca_file") from exc
        self._keepalive_timeout = keepalive_timeout
        self._max_response_bytes = max_response_bytes
        self._session: aiohttp.ClientSession | None = None

    @property
    def header_names(self) -> list[str]:
        return list(self._headers)

    def _get_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=0,  # lanes bound the concurrency; a pool wait would eat the timeout
                keepalive_timeout=self._keepalive_timeout,
                ssl=self._ssl,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),  # the deadline is invoke()'s
                skip_auto_headers=("User-Agent",),
            )
            self._session = session
        return session

    async def invoke(self, payload: Any) -> InvokeResult:
        request_id = str(uuid.uuid4())
        started = time.monotonic()
        result = InvokeResult(request_id)
        body = orjson.dumps(payload)
        headers = {
            **self._headers,
            "Lambda-Runtime-Aws-Request-Id": request_id,
            "Lambda-Runtime-Deadline-Ms": str(int((time.time() + self.timeout) * 1000)),
            "Lambda-Runtime-Invoked-Function-Arn": self.arn,
        }
        session = self._get_session()
        try:
            async with asyncio.timeout(self.timeout):
                async with session.post(
                    self._url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
                    raw = await _read_capped(response, self._max_response_bytes)
        except TimeoutError:
            result.error_type = "Unhandled"
            result.error_message = (
                f"Task timed out after {self.timeout:.2f} seconds: no complete answer from "
                f"POST {self.url}"
            )
        except ResponseTooLarge:
            result.error_type = "Unhandled"
            result.error_message = (
                f"Function.ResponseSizeTooLarge: the answer of POST {self.url} exceeds "
                f"{self._max_response_bytes} bytes"
            )
        except (aiohttp.ClientError, OSError) as exc:
            result.error_type = "Unhandled"
            result.error_message = f"POST {self.url} failed: {type(exc).__name__}: {exc}"
        else:
            value = _parse_body(raw)
            if 200 <= status < 300:
                result.payload = value
            else:
                excerpt = raw[:_BODY_EXCERPT].decode("utf-8", "replace")
                result.error_type = "Unhandled"
                message = f"HTTP {status} from POST {self.url}"
                result.error_message = f"{message}: {excerpt}" if excerpt else message
                result.payload = value
        result.duration = time.monotonic() - started
        return result

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def __repr__(self) -> str:
        return (
            f"HttpFunction({self.name!r}, url={self.url!r}, timeout={self.timeout}, "
            f"headers={self.header_names!r})"
        )
