"""aiohttp plumbing: a runner whose answers to requests that are not valid HTTP (an unknown
method, a malformed request line or header) have Lambda's error shape like every other answer,
and cost one short log line instead of aiohttp's plain text and logged traceback.

aiohttp answers those from ``RequestHandler.handle_error`` before any middleware runs, so the
runner hands out a request handler that overrides it (tests/test_control_security.py pins the
behaviour, so an aiohttp upgrade that moves it fails loudly).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong

from ._wire import error_body

__all__ = ["LambdaShapedRunner", "error_response"]

log = logging.getLogger("kinesis_esm.control")


def error_response(status: int, headers: dict[str, str], body: dict[str, Any]) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _reason(exc: BaseException | None) -> tuple[str, str]:
    """Lambda's code and our words for a request aiohttp could not parse."""
    if isinstance(exc, BadHttpMethod):
        return "UnknownOperationException", "the HTTP method is not one this API knows"
    if isinstance(exc, LineTooLong):
        return "InvalidRequestContentException", "a request line or header is too long"
    if isinstance(exc, HttpProcessingError):
        return "InvalidRequestContentException", "the request is not valid HTTP"
    return "ServiceException", "An internal error occurred (see the daemon's log)"


class _LambdaRequestHandler(web.RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: a response is under way, drop it
            raise ConnectionError("a response is already being sent")
        code, text = _reason(exc)
        if code == "ServiceException":
            log.error("control plane: request from %s failed", request.remote, exc_info=exc)
        else:
            log.debug("control plane: refused a request from %s: %s", request.remote, text)
        response = error_response(*error_body(code, f"Invalid request: {text}"))
        response.force_close()
        return response


class _LambdaServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        kwargs: dict[str, Any] = self._kwargs
        return _LambdaRequestHandler(self, loop=self._loop, **kwargs)


class LambdaShapedRunner(web.AppRunner):
    """``web.AppRunner`` whose malformed-request answers are Lambda-shaped (see above)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _LambdaServer
        return server
