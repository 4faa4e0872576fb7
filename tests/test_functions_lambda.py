"""The lambda target: Lambda's Invoke API through aiobotocore.

Two servers stand in for Lambda, both on 127.0.0.1:

* a small aiohttp server that speaks the Invoke API's wire format (POST
  /2015-03-31/functions/{name}/invocations, ``X-Amz-Function-Error``, AWS error bodies with
  ``x-amzn-ErrorType``), for every error and throttling case and the end-to-end mapping;
* moto's server, for what moto can do without Docker: register a function, refuse a missing
  one, and (with ``use_docker`` off) answer with an echo of the event or canned responses. With
  Docker absent and ``use_docker`` on, moto answers an invoke with a ``Handled`` function error
  saying it could not run Docker.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from kinesis_esm import (
    ConfigError,
    Engine,
    EventSourceMappingConfig,
    KinesisConfig,
    PollSettings,
    RetrySettings,
)
from kinesis_esm.functions._lambda import (
    MAX_REQUEST_BYTES,
    InvokeError,
    LambdaInvokeFunction,
    parse_function_name,
)
from kinesis_esm.testing import make_event, make_records, run_handler
from tests.support.destinations import aws_client
from tests.support.emulators import free_port
from tests.support.http_server import Behaviour, LocalServer
from tests.support.kinesis import create_stream, kinesis_client, put_records, wait_for

pytestmark = pytest.mark.anyio

HOST = "127.0.0.1"
ACCOUNT = "123456789012"
ARN = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:orders"
EVENT = make_event(make_records([("k1", b"one"), ("k2", b"two")]))
INVOKE_PREFIX = "/2015-03-31/functions/"


# A local server speaking the Invoke API's wire format


@dataclass(frozen=True)
class InvokeCall:
    function_name: str  # as on the path, URL-decoded
    qualifier: str | None
    invocation_type: str | None
    body: bytes


def returns(value: Any, *, executed_version: str = "$LATEST") -> Behaviour:
    async def behave(request: web.Request, body: bytes) -> web.StreamResponse:
        headers = {"X-Amz-Executed-Version": executed_version, "x-amzn-RequestId": "req-ok"}
        return web.Response(
            body=orjson.dumps(value), headers=headers, content_type="application/json"
        )

    return behave


def function_error(kind: str, error_type: str, message: str) -> Behaviour:
    async def behave(request: web.Request, body: bytes) -> web.StreamResponse:
        payload = {"errorMessage": message, "errorType": error_type, "stackTrace": ["at x"]}
        headers = {"X-Amz-Function-Error": kind, "x-amzn-RequestId": "req-err"}
        return web.Response(
            body=orjson.dumps(payload), headers=headers, content_type="application/json"
        )

    return behave


def aws_error(status: int, code: str, message: str = "injected", **extra: Any) -> Behaviour:
    """An error answer as Lambda's front end sends it: the code in ``x-amzn-ErrorType``."""

    async def behave(request: web.Request, body: bytes) -> web.StreamResponse:
        headers = {
            "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/",
            "x-amzn-RequestId": "r",
        }
        payload = {"Type": "User", "message": message, **extra}
        return web.Response(
            body=orjson.dumps(payload),
            status=status,
            headers=headers,
            content_type="application/json",
        )

    return behave


def proxy_error(status: int) -> Behaviour:
    """A 5xx from something in front of Lambda: HTML, no AWS error code."""

    async def behave(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(
            status=status, text="<html>Gateway Timeout</html>", content_type="text/html"
        )

    return behave


class InvokeServer:
    """Answers each Invoke with the next scripted behaviour (then ``default``), and keeps calls."""

    def __init__(self, default: Behaviour | None = None) -> None:
        self.script: list[Behaviour] = []
        self.default = default or returns(None)
        self.calls: list[InvokeCall] = []
        self.server = LocalServer(self._answer)

    async def _answer(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if request.method != "POST" or not request.path.startswith(INVOKE_PREFIX):
            return web.Response(status=404, text="not the Invoke API")
        name = request.path[len(INVOKE_PREFIX) :].removesuffix("/invocations")
        self.calls.append(
            InvokeCall(
                name,
                request.query.get("Qualifier"),
                request.headers.get("X-Amz-Invocation-Type"),
                body,
            )
        )
        behaviour = self.script.pop(0) if self.script else self.default
        return await behaviour(request, body)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.port}"

    async def __aenter__(self) -> InvokeServer:
        await self.server.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.__aexit__(None, None, None)


@pytest.fixture
async def lambda_server() -> AsyncIterator[InvokeServer]:
    async with InvokeServer() as server:
        yield server


@pytest.fixture
async def function_for() -> AsyncIterator[Callable[..., LambdaInvokeFunction]]:
    made: list[LambdaInvokeFunction] = []

    def build(function_name: str = ARN, **options: Any) -> LambdaInvokeFunction:
        function = LambdaInvokeFunction(function_name, **options)
        made.append(function)
        return function

    yield build
    for function in made:
        await function.aclose()


# function_name: names, ARNs, qualifiers


@pytest.mark.parametrize(
    ("value", "invoke_name", "qualifier", "region"),
    [
        ("orders", "orders", None, None),
        ("orders:live", "orders", "live", None),
        ("orders:$LATEST", "orders", "$LATEST", None),
        (f"{ACCOUNT}:function:orders:7", f"{ACCOUNT}:function:orders", "7", None),
        (ARN, ARN, None, "us-east-1"),
        (f"{ARN}:live", ARN, "live", "us-east-1"),
        (
            "arn:aws-cn:lambda:cn-north-1:123456789012:function:o.r-d_s:v2",
            "arn:aws-cn:lambda:cn-north-1:123456789012:function:o.r-d_s",
            "v2",
            "cn-north-1",
        ),
    ],
)
def test_function_name_forms(
    value: str, invoke_name: str, qualifier: str | None, region: str | None
) -> None:
    parsed = parse_function_name(value)
    assert (parsed.unqualified(), parsed.qualifier, parsed.region) == (
        invoke_name,
        qualifier,
        region,
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "orders:",
        "or ders",
        "orders:live:extra",
        "arn:aws:lambda:us-east-1:12:function:x",
        "a" * 65,
    ],
)
def test_bad_function_names_are_refused_naming_function_name(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        LambdaInvokeFunction(value, region="us-east-1")
    assert caught.value.parameter == "function_name"


names = st.from_regex(r"[a-zA-Z0-9_.-]{1,64}", fullmatch=True)
qualifiers = st.none() | st.just("$LATEST") | st.from_regex(r"[a-zA-Z0-9_-]{1,20}", fullmatch=True)
regions = st.sampled_from(["us-east-1", "eu-west-3", "ap-southeast-2", "us-gov-west-1"])
accounts = st.from_regex(r"[0-9]{12}", fullmatch=True)


@given(names, qualifiers, regions, accounts)
def test_an_arn_comes_apart_into_what_invoke_takes(
    name: str, qualifier: str | None, region: str, account: str
) -> None:
    base = f"arn:aws:lambda:{region}:{account}:function:{name}"
    value = f"{base}:{qualifier}" if qualifier else base
    parsed = parse_function_name(value)
    assert (parsed.unqualified(), parsed.qualifier) == (base, qualifier)
    assert (parsed.name, parsed.region, parsed.account) == (name, region, account)
    function = LambdaInvokeFunction(value)
    assert function.arn == value
    assert function.region == region
    assert function.name == name


def test_the_region_comes_from_the_arn_or_the_standard_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert LambdaInvokeFunction("orders").region == "eu-west-1"
    assert LambdaInvokeFunction(f"{ARN}:live").region == "us-east-1"
    assert LambdaInvokeFunction("orders", region="ap-south-1").region == "ap-south-1"
    with pytest.raises(ConfigError) as caught:
        LambdaInvokeFunction(ARN, region="eu-west-1")
    assert caught.value.parameter == "region"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    with pytest.raises(ConfigError) as caught:
        LambdaInvokeFunction("orders")
    assert caught.value.parameter == "region"


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": 901}, "timeout"),
        ({"call_margin": -1}, "call_margin"),
        ({"endpoint_url": "localhost:9000"}, "endpoint_url"),
        ({"max_connections": 0}, "max_connections"),
    ],
)
def test_bad_settings_name_the_parameter(options: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ConfigError) as caught:
        LambdaInvokeFunction(ARN, **options)
    assert caught.value.parameter == parameter


# Success


async def test_invoke_sends_the_event_and_returns_the_parsed_payload(
    lambda_server: InvokeServer, function_for: Callable[..., LambdaInvokeFunction]
) -> None:
    response = {"batchItemFailures": [{"itemIdentifier": "42"}]}
    lambda_server.default = returns(response)
    function = function_for(f"{ARN}:live", endpoint_url=lambda_server.url)
    result = await function.invoke(EVENT)
    assert result.ok, result
    assert result.payload == response
    assert result.request_id == "req-ok"
    [call] = lambda_server.calls
    assert call == InvokeCall(ARN, "live", "RequestResponse", orjson.dumps(EVENT))
    assert function.arn == f"{ARN}:live"


@pytest.mark.parametrize(("body", "expected"), [(b"", None), (b"null", None), (b"plain", "plain")])
async def test_empty_and_non_json_payloads(
    lambda_server: InvokeServer,
    function_for: Callable[..., LambdaInvokeFunction],
    body: bytes,
    expected: Any,
) -> None:
    async def behave(request: web.Request, _: bytes) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    lambda_server.default = behave
    result = await function_for(endpoint_url=lambda_server.url).invoke(EVENT)
    assert result.ok and result.payload == expected


async def test_the_client_and_its_connection_are_reused_and_aclose_ends_them(
    lambda_server: InvokeServer, function_for: Callable[..., LambdaInvokeFunction]
) -> None:
    function = function_for(endpoint_url=lambda_server.url)
    for _ in range(5):
        assert (await function.invoke(EVENT)).ok
    assert lambda_server.server.connections == 1
    await function.aclose()
    assert (await function.invoke(EVENT)).ok  # a new client after aclose
    assert lambda_server.server.connections == 2


async def test_aws_endpoint_url_lambda_is_honoured(
    lambda_server: InvokeServer,
    function_for: Callable[..., LambdaInvokeFunction],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", lambda_server.url)
    lambda_server.default = returns("from the env endpoint")
    result = await function_for(endpoint_url="").invoke(EVENT)  # "" = not given, as in TOML
    assert result.payload == "from the env endpoint"
    assert len(lambda_server.calls) == 1


# Function errors: counted against retries


@pytest.mark.parametrize("kind", ["Handled", "Unhandled"])
async def test_x_amz_function_error_is_a_function_error_with_its_type_and_message(
    lambda_server: InvokeServer, function_for: Callable[..., LambdaInvokeFunction], kind: str
) -> None:
    lambda_server.default = function_error(kind, "ValueError", "order 7 is malformed")
    result = await function_for(endpoint_url=lambda_server.url).invoke(EVENT)
    assert result.error_type == kind
    assert result.error_message == "ValueError: order 7 is malformed"
    assert result.request_id == "req-err"


async def test_a_lambda_timeout_reads_as_its_error_payload(
    lambda_server: InvokeServer, function_for: Callable[..., LambdaInvokeFunction]
) -> None:
    async def timed_out(request: web.Request, body: bytes) -> web.StreamResponse:
        text = b'{"errorMessage":"2024-01-01T00:00:00Z abc Task timed out after 3.00 seconds"}'
        return web.Response(body=text, headers={"X-Amz-Function-Error": "Unhandled"})

    lambda_server.default = timed_out
    result = await function_for(endpoint_url=lambda_server.url).invoke(EVENT)
    assert result.error_type == "Unhandled"
    assert result.error_message is not None
    assert result.error_message.endswith("Task timed out after 3.00 seconds")


async def test_no_answer_within_timeout_plus_margin_is_a_function_error(
    lambda_server: InvokeServer, function_for: Callable[..., LambdaInvokeFunction]
) -> None:
    async def hangs(request: web.Request, body: bytes) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response()

    lambda_server.default = hangs
    function = function_for(endpoint_url=lambda_server.url, timeout=0.3, call_margin=0.2)
    started = time.monotonic()
    result = await function.invoke(EVENT)
    assert time.monotonic() - started < 2.0
    assert result.error_type == "Unhandled"
    assert result.error_message == "no response from Lambda within 0.50 seconds"
    assert function.enforces_timeout


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_a_5xx_that_is_not_a_lambda_service_error_is_a_function_error(
    lambda_server: InvokeServer, function_for: Callable[..., LambdaInvokeFunction], status: int
) -> None:
    lambda_server.default = proxy_error(status)
    result = await function_for(endpoint_url=lambda_server.url).invoke(EVENT)
    assert result.error_type == "Unhandled"
    assert result.error_message is not None
    assert result.error_message.startswith(f"HTTP {status} from the Lambda endpoint")
    assert len(lambda_server.calls) == 1  # botocore's own retries are off


async def test_a_request_over_6_mb_is_a_function_error_and_is_never_sent(
    lambda_server: InvokeServer, function_for: Callable[..., LambdaInvokeFunction]
) -> None:
    big = make_event(make_records([("k", b"x" * (MAX_REQUEST_BYTES * 3 // 4 + 1000))]))
    assert len(orjson.dumps(big)) > MAX_REQUEST_BYTES
    result = await function_for(endpoint_url=lambda_server.url).invoke(big)
    assert result.error_type == "RequestEntityTooLargeException"
    assert result.error_message is not None
    assert result.error_message.startswith(
        f"Request must be smaller than {MAX_REQUEST_BYTES} bytes for the InvokeFunction operation"
    )
    assert lambda_server.calls == []


async def test_lambda_refusing_the_size_is_a_function_error_too(
    lambda_server: InvokeServer, function_for: Callable[..., LambdaInvokeFunction]
) -> None:
    lambda_server.default = aws_error(413, "RequestEntityTooLargeException", "too big")
    result = await function_for(endpoint_url=lambda_server.url).invoke(EVENT)
    assert (result.error_type, result.error_message) == (
        "RequestEntityTooLargeException",
        "too big",
    )


# Could not invoke: raised, so the processor retries without counting


async def test_throttling_raises_a_throttled_invoke_error_without_botocore_retries(
    lambda_server: InvokeServer, function_for: Callable[..., LambdaInvokeFunction]
) -> None:
    lambda_server.default = aws_error(
        429,
        "TooManyRequestsException",
        "Rate Exceeded.",
        Reason="ConcurrentInvocationLimitExceeded",
    )
    with pytest.raises(InvokeError) as caught:
        await function_for(endpoint_url=lambda_server.url).invoke(EVENT)
    assert caught.value.throttled
    assert (caught.value.code, caught.value.status) == ("TooManyRequestsException", 429)
    assert "Rate Exceeded." in str(caught.value)
    assert len(lambda_server.calls) == 1


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (500, "ServiceException"),
        (502, "ResourceNotReadyException"),
        (502, "EC2ThrottledException"),
        (502, "ENILimitReachedException"),
        (502, "SubnetIPAddressLimitReachedException"),
        (502, "KMSAccessDeniedException"),
        (404, "ResourceNotFoundException"),
        (409, "ResourceConflictException"),
        (403, "AccessDeniedException"),
    ],
)
async def test_lambda_service_errors_raise(
    lambda_server: InvokeServer,
    function_for: Callable[..., LambdaInvokeFunction],
    status: int,
    code: str,
) -> None:
    lambda_server.default = aws_error(status, code)
    with pytest.raises(InvokeError) as caught:
        await function_for(endpoint_url=lambda_server.url).invoke(EVENT)
    assert (caught.value.code, caught.value.status, caught.value.throttled) == (code, status, False)


async def test_an_unreachable_endpoint_raises(
    function_for: Callable[..., LambdaInvokeFunction],
) -> None:
    function = function_for(endpoint_url=f"http://{HOST}:{free_port()}", connect_timeout=1)
    with pytest.raises(InvokeError) as caught:
        await function.invoke(EVENT)
    assert "EndpointConnectionError" in str(caught.value)


async def test_missing_credentials_raise(
    lambda_server: InvokeServer,
    function_for: Callable[..., LambdaInvokeFunction],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    with pytest.raises(InvokeError) as caught:
        await function_for(endpoint_url=lambda_server.url).invoke(EVENT)
    assert "NoCredentialsError" in str(caught.value)
    assert lambda_server.calls == []


# Through the policy layer (kinesis_esm.testing): throttles do not use up retries


async def test_throttles_do_not_consume_retries_but_function_errors_do(
    lambda_server: InvokeServer, function_for: Callable[..., LambdaInvokeFunction]
) -> None:
    throttle = aws_error(429, "TooManyRequestsException", "Rate Exceeded.")
    lambda_server.script = [throttle, throttle, throttle]
    lambda_server.default = returns(None)
    function = function_for(endpoint_url=lambda_server.url)
    records = make_records([("a", b"1"), ("b", b"2")])
    result = await run_handler(function, records, maximum_retry_attempts=0)
    assert len(result.not_invoked) == 3  # three throttles, none counted
    assert [i.ok for i in result.invocations] == [True]
    assert result.failures == ()
    assert result.counters.invocations == 1

    lambda_server.default = function_error("Unhandled", "RuntimeError", "boom")
    result = await run_handler(function, records, maximum_retry_attempts=0)
    assert [i.ok for i in result.invocations] == [False]  # no retry: discarded at once
    [failure] = result.failures
    assert failure.condition == "RetryAttemptsExhausted"
    assert failure.function_error == "Unhandled"
    assert failure.sequence_numbers == tuple(r.sequence_number for r in records)
    assert failure.report["requestContext"]["functionArn"] == ARN


# End to end: a mapping on moto's Kinesis invoking through the target, partial responses


FAST_POLL = PollSettings(base_interval=0.05, min_interval=0.02)
FAST_RETRY = RetrySettings(initial=0.01, maximum=0.05)


class PartialFunction:
    """Like a Lambda function with ReportBatchItemFailures: the first time a batch comes, it
    fails its last record; a batch seen before succeeds. Keeps what succeeded."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, ...]] = set()
        self.done: set[tuple[str, str]] = set()
        self.partial_responses = 0

    async def __call__(self, request: web.Request, body: bytes) -> web.StreamResponse:
        event = orjson.loads(body)
        ids = [tuple(r["eventID"].split(":", 1)) for r in event["Records"]]
        key = tuple(r["eventID"] for r in event["Records"])
        failures = []
        if key not in self.seen:
            self.seen.add(key)
            failures = [{"itemIdentifier": ids[-1][1]}]
            self.partial_responses += 1
            ids = ids[:-1]
        self.done.update(ids)
        return await returns({"batchItemFailures": failures})(request, body)


async def test_a_mapping_on_moto_kinesis_invoking_lambda_loses_nothing(
    moto: str, lambda_server: InvokeServer
) -> None:
    behaviour = PartialFunction()
    throttle = aws_error(429, "TooManyRequestsException", "Rate Exceeded.")
    lambda_server.script = [throttle, throttle]
    lambda_server.default = behaviour
    async with kinesis_client(moto) as kinesis:
        stream_arn = await create_stream(kinesis, "lambda-target", 2)
        written = await put_records(
            kinesis, "lambda-target", [(f"key-{i % 5}", f"order-{i}".encode()) for i in range(120)]
        )
    function = LambdaInvokeFunction(f"{ARN}:live", endpoint_url=lambda_server.url, timeout=5)
    try:
        async with Engine(
            kinesis=KinesisConfig(endpoint_url=moto),
            poll_settings=FAST_POLL,
            retry_settings=FAST_RETRY,
        ) as engine:
            uuid = await engine.add_mapping(
                EventSourceMappingConfig(
                    function_name="orders",
                    event_source_arn=stream_arn,
                    starting_position="TRIM_HORIZON",
                    batch_size=25,
                    function_response_types=("ReportBatchItemFailures",),
                    maximum_retry_attempts=-1,
                ),
                function,
            )
            expected = {(r.shard_id, r.sequence_number) for r in written}
            await wait_for(lambda: expected <= behaviour.done, 60, message="every record done")
            last = {r.shard_id: r.sequence_number for r in written}

            def checkpoints() -> dict[str, str | None]:
                shards = engine.mapping_statistics(uuid).shards
                return {s.shard_id: s.checkpoint for s in shards if s.shard_id in last}

            await wait_for(lambda: checkpoints() == last, 30, message="checkpoints at the end")
            counters = engine.mapping_statistics(uuid).counters
    finally:
        await function.aclose()
    assert behaviour.done == expected
    assert behaviour.partial_responses > 0
    assert counters.dropped_events == 0 and counters.errors == 0
    assert {(c.function_name, c.qualifier) for c in lambda_server.calls} == {(ARN, "live")}


# moto's Lambda: what it can do without Docker


def moto_api(endpoint: str, path: str, body: dict[str, Any]) -> None:
    host, port = endpoint.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        assert response.status in (200, 201), (path, response.status)
    finally:
        connection.close()


@pytest.fixture
def moto_without_docker(moto: str) -> Iterator[str]:
    """moto's Lambda switched to its Docker-free backend (an echo, or canned answers)."""
    moto_api(moto, "/moto-api/config", {"lambda": {"use_docker": False}})
    try:
        yield moto
    finally:
        moto_api(moto, "/moto-api/config", {"lambda": {"use_docker": True}})


def function_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.py", "def handler(event, context):\n    return {}\n")
    return buffer.getvalue()


async def register_function(endpoint: str, name: str) -> str:
    async with aws_client("iam", endpoint) as iam, aws_client("lambda", endpoint) as lam:
        role = await iam.create_role(RoleName=f"{name}-role", AssumeRolePolicyDocument="{}")
        created = await lam.create_function(
            FunctionName=name,
            Runtime="python3.11",
            Role=role["Role"]["Arn"],
            Handler="index.handler",
            Code={"ZipFile": function_zip()},
        )
        await lam.create_alias(FunctionName=name, Name="live", FunctionVersion="$LATEST")
    arn: str = created["FunctionArn"]
    return arn


@pytest.mark.skipif(os.path.exists("/var/run/docker.sock"), reason="Docker is available here")
async def test_moto_registers_functions_but_cannot_run_them_without_docker(
    moto: str, function_for: Callable[..., LambdaInvokeFunction]
) -> None:
    arn = await register_function(moto, "orders")
    assert arn == ARN
    result = await function_for(ARN, endpoint_url=moto).invoke(EVENT)
    assert result.error_type == "Handled"  # moto's answer when it cannot reach Docker
    assert result.error_message is not None and "docker" in result.error_message.lower()
    with pytest.raises(InvokeError) as caught:
        await function_for(f"{ARN}-missing", endpoint_url=moto).invoke(EVENT)
    assert caught.value.code == "ResourceNotFoundException"


async def test_moto_without_docker_echoes_the_event_or_answers_canned_payloads(
    moto_without_docker: str, function_for: Callable[..., LambdaInvokeFunction]
) -> None:
    moto = moto_without_docker
    await register_function(moto, "orders")
    function = function_for(f"{ARN}:live", endpoint_url=moto)
    echoed = await function.invoke(EVENT)
    assert echoed.ok and echoed.payload == EVENT
    partial = {"batchItemFailures": [{"itemIdentifier": "7"}]}
    moto_api(moto, "/moto-api/static/lambda-simple/response", {"results": [json.dumps(partial)]})
    canned = await function.invoke(EVENT)
    assert canned.ok and canned.payload == partial


async def test_a_mapping_on_moto_invoking_moto_lambda_without_docker(
    moto_without_docker: str,
) -> None:
    moto = moto_without_docker
    await register_function(moto, "orders")
    async with kinesis_client(moto) as kinesis:
        stream_arn = await create_stream(kinesis, "moto-lambda", 1)
        written = await put_records(
            kinesis, "moto-lambda", [(f"k{i}", f"v{i}".encode()) for i in range(30)]
        )
    function = LambdaInvokeFunction(ARN, endpoint_url=moto, timeout=5)
    try:
        async with Engine(
            kinesis=KinesisConfig(endpoint_url=moto), poll_settings=FAST_POLL
        ) as engine:
            uuid = await engine.add_mapping(
                EventSourceMappingConfig(
                    function_name="orders",
                    event_source_arn=stream_arn,
                    starting_position="TRIM_HORIZON",
                    batch_size=10,
                    function_response_types=("ReportBatchItemFailures",),
                ),
                function,
            )
            last = written[-1].sequence_number
            await wait_for(
                lambda: [s.checkpoint for s in engine.mapping_statistics(uuid).shards] == [last],
                30,
                message="the checkpoint at the last record",
            )
            counters = engine.mapping_statistics(uuid).counters
    finally:
        await function.aclose()
    # the echoed event has no batchItemFailures: every batch succeeded, once
    assert (counters.invocations, counters.succeeded_events, counters.errors) == (3, 30, 0)
