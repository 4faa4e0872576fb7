"""The http target against a local aiohttp server on 127.0.0.1: the answer as the function's
result, every failure as a function error, pooled keep-alive connections, TLS verification,
header values from the environment, and a mapping on moto's Kinesis that loses nothing through
transient 500s and partial batch responses."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from aiohttp import web

from kinesis_esm import (
    ConfigError,
    Engine,
    EventSourceMappingConfig,
    KinesisConfig,
    PollSettings,
    RetrySettings,
)
from kinesis_esm.functions._http import HttpFunction
from kinesis_esm.testing import make_event, make_records
from tests.support.emulators import free_port
from tests.support.http_server import HOST, Behaviour, LocalServer, json_answer
from tests.support.kinesis import create_stream, kinesis_client, put_records, wait_for

pytestmark = pytest.mark.anyio

EVENT = make_event(make_records([("k1", b"one"), ("k2", {"n": 2})]))


def answer(value: Any, status: int = 200) -> Behaviour:
    async def behave(request: web.Request, body: bytes) -> web.StreamResponse:
        return await json_answer(value, status)

    return behave


def raw_answer(body: bytes, status: int = 200, content_type: str = "text/plain") -> Behaviour:
    async def behave(request: web.Request, _: bytes) -> web.StreamResponse:
        return web.Response(body=body, status=status, content_type=content_type)

    return behave


def slow(seconds: float, then: Behaviour) -> Behaviour:
    async def behave(request: web.Request, body: bytes) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return await then(request, body)

    return behave


async def close_before_answering(request: web.Request, body: bytes) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.abort()  # the connection drops after the request arrived, unanswered
    return web.Response()


async def close_mid_answer(request: web.Request, body: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Length": "1000"})
    response.content_type = "application/json"
    await response.prepare(request)
    await response.write(b'{"batchItemFailures": [')  # 23 of the 1000 bytes promised
    assert request.transport is not None
    request.transport.abort()
    return response


@pytest.fixture
async def function_for() -> AsyncIterator[Callable[..., HttpFunction]]:
    """Builds HttpFunctions and closes them all at teardown."""
    made: list[HttpFunction] = []

    def build(url: str, **options: Any) -> HttpFunction:
        options.setdefault("name", "orders-http")
        options.setdefault("timeout", 5)
        function = HttpFunction(url, **options)
        made.append(function)
        return function

    yield build
    for function in made:
        await function.aclose()


# The answer is the function's return value


async def test_2xx_json_body_is_the_return_value_and_the_event_is_posted_as_json(
    function_for: Callable[..., HttpFunction],
) -> None:
    response = {"batchItemFailures": [{"itemIdentifier": "123"}], "state": {"count": 2}}
    async with LocalServer(answer(response)) as server:
        function = function_for(server.url)
        result = await function.invoke(EVENT)
    assert result.ok, result
    assert result.payload == response
    [seen] = server.seen
    assert seen.path == "/invoke"
    assert orjson.loads(seen.body) == EVENT
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Lambda-Runtime-Aws-Request-Id"] == result.request_id
    assert seen.headers["Lambda-Runtime-Invoked-Function-Arn"] == function.arn
    deadline_ms = int(seen.headers["Lambda-Runtime-Deadline-Ms"])
    assert 0 < deadline_ms - time.time() * 1000 <= 5000


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b"", None),
        (204, b"", None),
        (200, b"null", None),
        (202, b'"done"', "done"),
        (200, b"not json at all", "not json at all"),
        (201, b"[1, 2]", [1, 2]),
    ],
)
async def test_other_2xx_bodies(
    function_for: Callable[..., HttpFunction], status: int, body: bytes, expected: Any
) -> None:
    async with LocalServer(raw_answer(body, status)) as server:
        result = await function_for(server.url).invoke(EVENT)
    assert result.ok, result
    assert result.payload == expected


@pytest.mark.parametrize("status", [500, 502, 503, 404, 400, 429, 301])
async def test_non_2xx_is_an_unhandled_function_error_naming_the_status(
    function_for: Callable[..., HttpFunction], status: int
) -> None:
    async def behave(request: web.Request, body: bytes) -> web.StreamResponse:
        headers = {"Location": "/elsewhere"} if status == 301 else {}
        return web.Response(status=status, text="backend says no", headers=headers)

    async with LocalServer(behave) as server:
        result = await function_for(server.url).invoke(EVENT)
    assert result.error_type == "Unhandled"
    assert result.error_message == f"HTTP {status} from POST {server.url}: backend says no"
    assert len(server.seen) == 1  # a redirect is not followed


async def test_a_connection_refused_is_a_function_error(
    function_for: Callable[..., HttpFunction],
) -> None:
    url = f"http://{HOST}:{free_port()}/invoke"  # nothing listens there
    result = await function_for(url).invoke(EVENT)
    assert result.error_type == "Unhandled"
    assert result.error_message is not None
    assert result.error_message.startswith(f"POST {url} failed: ClientConnectorError")


@pytest.mark.parametrize("behaviour", [close_before_answering, close_mid_answer])
async def test_a_reset_connection_is_a_function_error_and_the_next_call_reconnects(
    function_for: Callable[..., HttpFunction], behaviour: Behaviour
) -> None:
    async with LocalServer(behaviour) as server:
        function = function_for(server.url)
        result = await function.invoke(EVENT)
        assert result.error_type == "Unhandled"
        assert result.error_message is not None
        assert result.error_message.startswith(f"POST {server.url} failed: ")
        server.behaviour = answer({"batchItemFailures": []})
        again = await function.invoke(EVENT)
    assert again.ok, again
    assert again.payload == {"batchItemFailures": []}
    assert server.connections == 2


async def test_no_answer_within_the_timeout_is_a_timed_out_function_error(
    function_for: Callable[..., HttpFunction],
) -> None:
    async with LocalServer(slow(30, answer({}))) as server:
        function = function_for(server.url, timeout=0.3)
        started = time.monotonic()
        result = await function.invoke(EVENT)
        elapsed = time.monotonic() - started
    assert result.error_type == "Unhandled"
    assert result.error_message == (
        f"Task timed out after 0.30 seconds: no complete answer from POST {server.url}"
    )
    assert 0.3 <= elapsed < 2.0


async def test_a_slow_server_within_the_timeout_succeeds_and_calls_run_side_by_side(
    function_for: Callable[..., HttpFunction],
) -> None:
    async with LocalServer(slow(0.4, answer({"ok": True}))) as server:
        function = function_for(server.url, timeout=5)
        results: list[Any] = []

        async def call() -> None:
            results.append(await function.invoke(EVENT))

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(call)
        elapsed = time.monotonic() - started
    assert [r.payload for r in results] == [{"ok": True}] * 4
    assert elapsed < 1.2  # four 0.4 s answers at once, not one after another
    assert server.connections == 4


async def test_connections_are_kept_alive_between_invocations(
    function_for: Callable[..., HttpFunction],
) -> None:
    async with LocalServer(answer(None)) as server:
        function = function_for(server.url)
        for _ in range(5):
            assert (await function.invoke(EVENT)).ok
    assert len(server.seen) == 5
    assert server.connections == 1


async def test_an_answer_over_the_limit_is_a_function_error(
    function_for: Callable[..., HttpFunction],
) -> None:
    async with LocalServer(raw_answer(b"x" * 2000)) as server:
        result = await function_for(server.url, max_response_bytes=1000).invoke(EVENT)
    assert result.error_type == "Unhandled"
    assert result.error_message is not None
    assert result.error_message.startswith("Function.ResponseSizeTooLarge")


# Header values from the environment, never shown


async def test_env_headers_are_read_at_construction_and_never_shown(
    function_for: Callable[..., HttpFunction], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "Bearer s3cr3t-t0ken-value"
    monkeypatch.setenv("ORDERS_TOKEN", secret)
    async with LocalServer(answer({})) as server:
        function = function_for(
            server.url, headers={"Authorization": "env:ORDERS_TOKEN", "X-Team": "orders"}
        )
        monkeypatch.setenv("ORDERS_TOKEN", "changed later")  # read once, at construction
        result = await function.invoke(EVENT)
    assert result.ok, result
    assert server.seen[0].headers["Authorization"] == secret
    assert server.seen[0].headers["X-Team"] == "orders"
    assert secret not in repr(function)
    assert "Authorization" in repr(function)
    assert secret not in str(vars(function).get("url"))


def test_a_missing_env_variable_names_the_header_and_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ORDERS_TOKEN_MISSING", raising=False)
    with pytest.raises(ConfigError) as caught:
        HttpFunction(
            "https://orders.internal/kinesis",
            name="orders-http",
            headers={"Authorization": "env:ORDERS_TOKEN_MISSING"},
        )
    assert caught.value.parameter == "headers.Authorization"
    assert "'Authorization'" in str(caught.value)
    assert "'ORDERS_TOKEN_MISSING'" in str(caught.value)


def test_a_line_break_in_a_header_value_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        HttpFunction("http://x.test/", name="f", headers={"X-Key": "abc\r\nInjected: yes"})
    assert caught.value.parameter == "headers.X-Key"
    assert "abc" not in str(caught.value)


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"url": "ftp://x.test/"}, "url"),
        ({"url": "orders.internal/kinesis"}, "url"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 901}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"headers": {"Bad Header": "x"}}, "headers"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file"),
        ({"ca_file": "/nonexistent/ca.pem", "verify_tls": False}, "ca_file"),
    ],
)
def test_bad_settings_name_the_parameter(options: dict[str, Any], parameter: str) -> None:
    options = {"url": "https://orders.internal/kinesis", "name": "f", **options}
    with pytest.raises(ConfigError) as caught:
        HttpFunction(**options)
    assert caught.value.parameter == parameter


def test_credentials_and_query_in_the_url_are_kept_out_of_messages() -> None:
    function = HttpFunction("https://user:pw@orders.internal/kinesis?key=k3y", name="f")
    assert function.url == "https://orders.internal/kinesis"
    assert "pw" not in repr(function) and "k3y" not in repr(function)


# TLS


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself; returns (certificate, key) PEM paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kinesis-esm test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_verifies_certificates_by_default(
    function_for: Callable[..., HttpFunction], tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with LocalServer(answer({"secure": True}), ssl_context=context) as server:
        refused = await function_for(server.url).invoke(EVENT)
        trusted = await function_for(server.url, ca_file=str(cert)).invoke(EVENT)
        unverified = await function_for(server.url, verify_tls=False).invoke(EVENT)
    assert refused.error_type == "Unhandled"
    assert refused.error_message is not None and "certificate" in refused.error_message.lower()
    assert trusted.ok and trusted.payload == {"secure": True}
    assert unverified.ok and unverified.payload == {"secure": True}
    assert len(server.seen) == 2  # the refused call never got past the handshake


# End to end: a mapping on moto's Kinesis, through transient 500s and partial responses


FAST_POLL = PollSettings(base_interval=0.05, min_interval=0.02)
FAST_RETRY = RetrySettings(initial=0.01, maximum=0.05)


class FlakyService:
    """Answers the first three requests with 500; then fails the middle record of each batch
    the first time that batch is seen (a partial response), and succeeds on the rest."""

    def __init__(self) -> None:
        self.requests = 0
        self.batches_seen: set[tuple[str, ...]] = set()
        self.done: set[tuple[str, str]] = set()  # (shard id, sequence number) that succeeded

    async def __call__(self, request: web.Request, body: bytes) -> web.StreamResponse:
        self.requests += 1
        if self.requests <= 3:
            return web.Response(status=500, text="warming up")
        event = orjson.loads(body)
        ids = [tuple(r["eventID"].split(":", 1)) for r in event["Records"]]
        key = tuple(r["eventID"] for r in event["Records"])
        if key not in self.batches_seen and len(ids) > 1:
            self.batches_seen.add(key)
            cut = len(ids) // 2
            self.done.update(ids[:cut])
            return await json_answer({"batchItemFailures": [{"itemIdentifier": ids[cut][1]}]})
        self.done.update(ids)
        return await json_answer({"batchItemFailures": []})


async def test_a_mapping_loses_nothing_through_500s_and_partial_responses(moto: str) -> None:
    service = FlakyService()
    async with kinesis_client(moto) as kinesis, LocalServer(service) as server:
        arn = await create_stream(kinesis, "http-target", 2)
        written = await put_records(
            kinesis, "http-target", [(f"key-{i % 7}", f"order-{i}".encode()) for i in range(150)]
        )
        function = HttpFunction(server.url, name="orders-http", timeout=5)
        try:
            async with Engine(
                kinesis=KinesisConfig(endpoint_url=moto),
                poll_settings=FAST_POLL,
                retry_settings=FAST_RETRY,
            ) as engine:
                uuid = await engine.add_mapping(
                    EventSourceMappingConfig(
                        function_name="orders-http",
                        event_source_arn=arn,
                        starting_position="TRIM_HORIZON",
                        batch_size=20,
                        function_response_types=("ReportBatchItemFailures",),
                        maximum_retry_attempts=-1,
                    ),
                    function,
                )
                expected = {(r.shard_id, r.sequence_number) for r in written}
                await wait_for(
                    lambda: expected <= service.done, 60, message="every record to succeed"
                )
                last = {r.shard_id: r.sequence_number for r in written}
                await wait_for(
                    lambda: (
                        {
                            s.shard_id: s.checkpoint
                            for s in engine.mapping_statistics(uuid).shards
                            if s.shard_id in last
                        }
                        == last
                    ),
                    30,
                    message="checkpoints at the last record of each shard",
                )
                counters = engine.mapping_statistics(uuid).counters
        finally:
            await function.aclose()
    assert service.done == expected
    assert counters.dropped_events == 0 and counters.on_failure_delivered_events == 0
    assert counters.errors >= 3  # the three 500s were function errors, retried
    assert len(service.batches_seen) > 0  # partial responses happened along the way
