"""The control plane's HTTP server (aiohttp): Lambda's five event source mapping operations,
``/health``, ``/ready``, ``/metrics`` (Prometheus) and ``/status`` (JSON for ``kinesis-esm
status``), on one port.

Every failure answers in Lambda's error shape, never a traceback: malformed JSON, oversized
bodies, unknown routes and methods, requests that are not HTTP, and unexpected errors (the last
are logged here). Before any of that, ``_guard`` refuses what a web page could have sent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .. import __version__
from ..config import ControlConfig
from ..runtime._runtime import MappingError, Runtime
from ._auth import Authenticator, AuthError, Request
from ._guard import HostPolicy, check_request
from ._http import LambdaShapedRunner, error_response
from ._metrics import registry_for
from ._wire import (
    WireError,
    create_fields,
    decode_marker,
    encode_marker,
    error_body,
    mapping_json,
    parse_body,
    update_fields,
)

__all__ = ["MAX_BODY_BYTES", "ControlServer", "create_app"]

log = logging.getLogger("kinesis_esm.control")

MAX_BODY_BYTES = 256 * 1024
BASE = "/2015-03-31/event-source-mappings"
DEFAULT_PAGE = 100
_OPEN_PATHS = ("/health", "/ready")  # liveness probes need no credentials
_RUNTIME = web.AppKey("runtime", Runtime)
_AUTH = web.AppKey("auth", Authenticator)
_HOSTS = web.AppKey("hosts", HostPolicy)
_REGISTRY = web.AppKey("registry", CollectorRegistry)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(code: str, message: str) -> web.Response:
    return error_response(*error_body(code, message))


async def _body(request: web.Request) -> bytes:
    """The request body, at most MAX_BODY_BYTES (read once, then cached by aiohttp)."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise WireError("RequestTooLargeException", _too_large())
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise WireError("RequestTooLargeException", _too_large()) from None
    except HttpProcessingError:  # a broken chunked encoding, a body shorter than announced
        message = "Could not read the request body: it is not valid HTTP"
        raise WireError("InvalidRequestContentException", message) from None


def _too_large() -> str:
    return f"Request must be smaller than {MAX_BODY_BYTES} bytes for this operation"


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (MappingError, WireError, AuthError) as err:
        return _error(err.code, err.message)
    except web.HTTPException as exc:  # aiohttp's own: no route, wrong method
        if exc.status == 413:
            return _error("RequestTooLargeException", _too_large())
        message = f"{request.method} {request.path[:200]}: {exc.reason}"
        return _error("UnknownOperationException", message)
    except RecursionError:  # a safety net: bodies and patterns are depth-bounded before use
        log.error("control plane: %s %s: input nested too deeply", request.method, request.path)
        return _error("InvalidRequestContentException", "The request is nested too deeply")
    except Exception:
        log.exception("control plane: %s %s failed", request.method, request.path)
        return _error("ServiceException", "An internal error occurred (see the daemon's log)")


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    hosts = request.headers.getall("Host", [])
    if len(hosts) > 1:
        raise WireError("InvalidRequestContentException", "A request has one Host header")
    origins = request.headers.getall("Origin", [])
    check_request(
        request.app[_HOSTS],
        request.method,
        hosts[0] if hosts else None,
        origins[0] if origins else None,
        request.headers.get("Content-Type"),
        request.body_exists,
    )
    return await handler(request)


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth = request.app.get(_AUTH)
    if auth is not None and request.path not in _OPEN_PATHS:
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        url = request.rel_url
        auth.check(
            Request(
                request.method, url.raw_path, url.raw_query_string, headers, await _body(request)
            )
        )
    return await handler(request)


async def _create(request: web.Request) -> web.Response:
    fields, extras = create_fields(parse_body(await _body(request)))
    view = await request.app[_RUNTIME].create(fields, extras)
    return _json(mapping_json(view), 202)


async def _list(request: web.Request) -> web.Response:
    query = request.query
    raw_items = query.get("MaxItems")
    page = DEFAULT_PAGE
    if raw_items is not None:
        try:
            page = int(raw_items)
        except ValueError:
            raise WireError(
                "InvalidParameterValueException", f"MaxItems must be an integer, got {raw_items!r}"
            ) from None
        if not 1 <= page <= 10000:
            bound = "greater than or equal to 1" if page < 1 else "less than or equal to 10000"
            message = f"1 validation error detected: Value '{page}' at 'maxItems' failed to satisfy constraint: Member must have value {bound}"  # noqa: E501
            raise WireError("ValidationException", message)
    for name, member, longest in (
        ("FunctionName", "functionName", 256),
        ("EventSourceArn", "eventSourceArn", 1024),
    ):
        if len(query.get(name, "")) > longest:
            message = f"1 validation error detected: Value at '{member}' failed to satisfy constraint: Member must have length less than or equal to {longest}"  # noqa: E501
            raise WireError("ValidationException", message)
    views = request.app[_RUNTIME].mappings(
        event_source_arn=query.get("EventSourceArn") or None,
        function_name=query.get("FunctionName") or None,
    )
    if marker := query.get("Marker"):
        after = decode_marker(marker)
        views = [v for v in views if (v.created_at, v.uuid) > after]
    body: dict[str, Any] = {"EventSourceMappings": [mapping_json(v) for v in views[:page]]}
    if len(views) > page:
        body["NextMarker"] = encode_marker(views[page - 1])
    return _json(body)


async def _get(request: web.Request) -> web.Response:
    return _json(mapping_json(request.app[_RUNTIME].get(request.match_info["uuid"])))


async def _update(request: web.Request) -> web.Response:
    fields, extras = update_fields(parse_body(await _body(request)))
    view = await request.app[_RUNTIME].update(request.match_info["uuid"], fields, extras)
    return _json(mapping_json(view), 202)


async def _delete(request: web.Request) -> web.Response:
    view = await request.app[_RUNTIME].delete(request.match_info["uuid"])
    return _json(mapping_json(view), 202)


async def _health(request: web.Request) -> web.Response:
    return _json({"status": "ok", "version": __version__})


async def _ready(request: web.Request) -> web.Response:
    runtime = request.app[_RUNTIME]
    states: dict[str, int] = {}
    for view in runtime.mappings():
        states[view.state] = states.get(view.state, 0) + 1
    ready = runtime.reconciled
    return _json({"ready": ready, "mappings": states}, 200 if ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    registry = request.app[_REGISTRY]
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def _status(request: web.Request) -> web.Response:
    mappings = []
    for status in request.app[_RUNTIME].statuses():
        view = status.view
        invocations = status.invocations
        mappings.append(
            {
                **mapping_json(view),
                "FunctionName": view.config.function_name,
                "counters": dict(status.counters),
                "invocations": {
                    "count": invocations.count,
                    "errors": invocations.errors,
                    "duration_sum": invocations.duration_sum,
                },
                "shards": [dataclasses.asdict(s) for s in status.shards],
                "workers": [dataclasses.asdict(w) for w in status.workers],  # [] outside a fleet
            }
        )
    return _json({"version": __version__, "time": time.time(), "mappings": mappings})


def create_app(runtime: Runtime, control: ControlConfig | None = None) -> web.Application:
    control = control or ControlConfig()
    app = web.Application(
        middlewares=[_errors, _guard, _authenticate], client_max_size=MAX_BODY_BYTES
    )
    app[_RUNTIME] = runtime
    app[_HOSTS] = HostPolicy.of(control)
    app[_REGISTRY] = registry_for(runtime.statuses, runtime.functions.environment_statistics)
    if control.auth != "none":
        app[_AUTH] = Authenticator(
            access_key_id=control.access_key_id,
            secret_access_key=control.secret_access_key,
            token=control.token,
        )
    for path in (BASE, f"{BASE}/"):
        app.router.add_post(path, _create)
        app.router.add_get(path, _list)
    item = f"{BASE}/{{uuid}}"
    app.router.add_get(item, _get)
    app.router.add_put(item, _update)
    app.router.add_delete(item, _delete)
    app.router.add_get("/health", _health)
    app.router.add_get("/ready", _ready)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/status", _status)
    return app


class ControlServer:
    """Serves ``create_app`` on ``control.host``/``control.port`` inside ``async with``;
    ``url`` is where it listens (the actual port when ``port = 0``)."""

    def __init__(self, runtime: Runtime, control: ControlConfig) -> None:
        self.control = control
        self.app = create_app(runtime, control)
        self._runner = LambdaShapedRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=5
        )
        self.url = ""

    async def __aenter__(self) -> ControlServer:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.control.host, self.control.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            where = f"{self.control.host}:{self.control.port}"
            raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror}") from exc
        except BaseException:
            await self._runner.cleanup()
            raise
        port = self._runner.addresses[0][1]
        host = self.control.host
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._runner.cleanup()
