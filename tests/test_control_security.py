"""The control plane against hostile clients and web pages (issue 12): what a browser could be
made to send is refused, destinations set through the API are confined, a function is one
function however it is spelled, the mapping count is capped, and inputs that used to crash a
handler get Lambda's 4xx with nothing registered. The daemon runs in process on an in-memory
stream; boto3's own client checks that the errors are the modelled exceptions."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kinesis_esm import (
    DaemonConfig,
    Engine,
    EventSourceMappingConfig,
    MemoryStream,
    SQLiteCheckpointStore,
)
from kinesis_esm.config import ConfigError, ControlConfig, DestinationConfig, OnFailure
from kinesis_esm.control._guard import HostPolicy
from kinesis_esm.runtime import Runtime
from kinesis_esm.state._mappings import MappingStore
from tests.support.control import (
    ACCOUNT,
    REGION,
    STREAM_ARN,
    MemoryDaemon,
    Recorder,
    call,
    lambda_client,
    memory_config,
    memory_daemon,
    raw_http,
)
from tests.support.kinesis import wait_for

pytestmark = pytest.mark.anyio

BASE = "/2015-03-31/event-source-mappings"
JSON = {"Content-Type": "application/json"}
CREATE = {"FunctionName": "f", "EventSourceArn": STREAM_ARN, "StartingPosition": "LATEST"}
FUNCTION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:f"


def assert_lambda_error(status: int, headers: Any, text: str, code: str) -> dict[str, Any]:
    """A 4xx in Lambda's shape: the code in x-amzn-ErrorType, a message, no traceback."""
    assert 400 <= status < 500, (status, text)
    assert headers["x-amzn-ErrorType"] == code, text
    assert "Traceback" not in text
    body: dict[str, Any] = json.loads(text)
    assert body.get("message") or body.get("Message"), body
    assert not any(name.lower().startswith("access-control-") for name in headers), headers
    return body


async def request(daemon: MemoryDaemon, method: str, path: str, **kw: Any) -> tuple[int, Any, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, daemon.url + path, **kw) as response,
    ):
        return response.status, response.headers, await response.text()


def listed(daemon: MemoryDaemon) -> list[tuple[str, str]]:
    return [(v.uuid, v.function_arn) for v in daemon.runtime.mappings()]


# -- a web page cannot drive the API -------------------------------------------------------------


async def test_cross_origin_simple_posts_are_refused() -> None:
    async with memory_daemon(memory_config()) as daemon:
        body = json.dumps(CREATE)
        for content_type in (
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; b=x",
        ):
            status, headers, text = await request(
                daemon, "POST", BASE, data=body, headers={"Content-Type": content_type}
            )
            assert status == 415, (content_type, text)
            assert_lambda_error(status, headers, text, "UnsupportedMediaTypeException")
        # a body with no type at all (fetch() of a Blob) is no better
        answer = await raw_http(
            daemon.url,
            f"POST {BASE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n{body}".encode(),
        )
        assert answer.status == 415, answer
        # Origin: a browser's request, even one with the JSON type after a preflight
        status, headers, text = await request(
            daemon, "POST", BASE, data=body, headers=JSON | {"Origin": "https://evil.example"}
        )
        assert_lambda_error(status, headers, text, "AccessDeniedException")
        assert listed(daemon) == []
        # what the SDKs send still works
        status, _, text = await request(daemon, "POST", BASE, data=body, headers=JSON)
        assert status == 202, text


async def test_dns_rebinding_host_is_refused() -> None:
    async with memory_daemon(memory_config()) as daemon:
        port = daemon.url.rsplit(":", 1)[1]
        for host in (f"evil.example:{port}", "evil.example", "127.0.0.1.nip.io", "[::1"):
            for method, path, data in (("GET", "/status", None), ("POST", BASE, CREATE)):
                status, headers, text = await request(
                    daemon, method, path, json=data, headers={"Host": host}
                )
                assert status == 403, (host, text)
                assert_lambda_error(status, headers, text, "AccessDeniedException")
        assert listed(daemon) == []
        for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "[::1]:9", "LOCALHOST"):
            status, _, text = await request(daemon, "GET", "/status", headers={"Host": host})
            assert status == 200, (host, text)
    allowed = memory_config(control=ControlConfig(port=0, allowed_hosts=("esm.internal",)))
    async with memory_daemon(allowed) as daemon:
        status, _, _ = await request(daemon, "GET", "/status", headers={"Host": "esm.internal:1"})
        assert status == 200


def test_host_policy_per_bound_address() -> None:
    loopback = HostPolicy.of(ControlConfig())
    assert loopback.allows("127.0.0.1:9001") and loopback.allows("127.0.0.2")
    assert loopback.allows("localhost.") and not loopback.allows("10.0.0.1")
    assert not loopback.allows("attacker.example") and not loopback.allows("caf\u00e9:1")
    token = "a-long-enough-token"
    wildcard = HostPolicy.of(ControlConfig(host="0.0.0.0", auth="bearer", token=token))
    assert wildcard.allows("10.1.2.3:9001") and wildcard.allows("[fe80::1]:9001")
    assert wildcard.allows("localhost") and not wildcard.allows("esm.example")
    named = HostPolicy.of(
        ControlConfig(host="10.0.0.5", auth="bearer", token=token, allowed_hosts=("ESM.example",))
    )
    assert named.allows("10.0.0.5:1") and named.allows("esm.example:9001")
    assert not named.allows("10.0.0.6") and not named.allows("localhost")


async def test_cors_preflight_is_not_answered() -> None:
    async with memory_daemon(memory_config()) as daemon:
        preflight = {
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        }
        for path in (BASE, f"{BASE}/", "/status", "/metrics"):
            status, headers, text = await request(daemon, "OPTIONS", path, headers=preflight)
            assert_lambda_error(status, headers, text, "AccessDeniedException")
            status, headers, text = await request(daemon, "OPTIONS", path)  # no Origin either
            assert_lambda_error(status, headers, text, "UnknownOperationException")


async def test_requests_that_are_not_http_get_lambdas_shape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with memory_daemon(memory_config()) as daemon:
        caplog.clear()
        cases = [
            (b"FOO /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "UnknownOperationException"),
            (b"G@T / HTTP/1.1\r\n\r\n", "UnknownOperationException"),
            (
                b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n",
                "InvalidRequestContentException",
            ),
            (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", "InvalidRequestContentException"),
            (
                f"POST {BASE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".encode(),
                "InvalidRequestContentException",
            ),
        ]
        for raw, code in cases:
            answer = await raw_http(daemon.url, raw)
            text = answer.body.decode()
            assert_lambda_error(answer.status, _Headers(answer.headers), text, code)
        noisy = [r for r in caplog.records if r.levelno >= logging.INFO]
        assert len(noisy) <= len(cases), [r.getMessage() for r in noisy]
        assert not any(r.exc_info for r in noisy)
        assert listed(daemon) == []


class _Headers(dict[str, str]):
    """Case-insensitive lookup over raw_http's lower-case header names."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())


async def test_non_ascii_authorization_is_refused_before_any_credential_check() -> None:
    control = ControlConfig(
        port=0,
        auth="sigv4",
        access_key_id="AKIDTEST",
        secret_access_key="secret",
        token="a-bearer-token-of-length",
    )
    async with memory_daemon(memory_config(control=control)) as daemon:
        for value in (b"Bearer \xff\xfe\xfd", b"AWS4-HMAC-SHA256 Credential=\xc3\xa9/x"):
            answer = await raw_http(
                daemon.url,
                b"GET "
                + BASE.encode()
                + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
                + value
                + b"\r\nConnection: close\r\n\r\n",
            )
            assert_lambda_error(
                answer.status,
                _Headers(answer.headers),
                answer.body.decode(),
                "IncompleteSignatureException",
            )


async def test_bearer_token_on_loopback() -> None:
    token = "a-token-for-a-shared-host"
    control = ControlConfig(port=0, auth="bearer", token=token)
    async with memory_daemon(memory_config(control=control)) as daemon:
        status, headers, text = await request(daemon, "POST", BASE, json=CREATE)
        assert_lambda_error(status, headers, text, "MissingAuthenticationTokenException")
        status, headers, text = await request(daemon, "GET", "/status")
        assert status == 403
        auth = {"Authorization": f"Bearer {token}"}
        status, _, text = await request(daemon, "POST", BASE, json=CREATE, headers=auth)
        assert status == 202, text
        status, _, _ = await request(daemon, "GET", "/health")  # probes stay open
        assert status == 200


# -- destinations through the API ----------------------------------------------------------------


def relative_to_cwd(path: Path) -> str:
    return os.path.relpath(path)


def with_destination(destination: str) -> dict[str, Any]:
    return CREATE | {"DestinationConfig": {"OnFailure": {"Destination": destination}}}


async def test_file_destinations_only_under_the_root(tmp_path: Path) -> None:
    async with memory_daemon(memory_config()) as daemon:  # no root: none through the API
        client = lambda_client(daemon.url)
        with pytest.raises(client.exceptions.InvalidParameterValueException) as refused:
            await call(client.create_event_source_mapping, **with_destination("file:///tmp/x"))
        assert "file_destinations_root" in refused.value.response["Error"]["Message"]
        assert listed(daemon) == []
    root = tmp_path / "failures"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "out").symlink_to(outside)
    (root / "passwd").symlink_to("/etc/passwd")
    control = ControlConfig(port=0, file_destinations_root=str(root))
    async with memory_daemon(memory_config(control=control)) as daemon:
        client = lambda_client(daemon.url)
        relative_out = relative_to_cwd(tmp_path / "x.jsonl")
        for destination in (
            "file:///etc/cron.d/esm",
            f"file://{root}/../elsewhere/x.jsonl",
            f"file://{root}/sub/../../x.jsonl",
            f"file://{root}/out/x.jsonl",  # a symlink out of the root
            f"file://{root}/passwd",
            f"file://{root}",  # the folder itself
            f"file://{relative_out}",
            f"file://{root}/a\u0000b",
        ):
            with pytest.raises(client.exceptions.InvalidParameterValueException) as refused:
                await call(client.create_event_source_mapping, **with_destination(destination))
            message = refused.value.response["Error"]["Message"]
            assert message.startswith("DestinationConfig.OnFailure.Destination"), message
        assert listed(daemon) == []
        inside = f"file://{root}/sub/orders.jsonl"
        created = await call(client.create_event_source_mapping, **with_destination(inside))
        assert created["DestinationConfig"] == {"OnFailure": {"Destination": inside}}
        with pytest.raises(client.exceptions.InvalidParameterValueException):
            await call(
                client.update_event_source_mapping,
                UUID=created["UUID"],
                BatchSize=5,
                DestinationConfig={"OnFailure": {"Destination": "file:///etc/x"}},
            )
        got = await call(client.get_event_source_mapping, UUID=created["UUID"])
        assert (got["BatchSize"], got["DestinationConfig"]["OnFailure"]["Destination"]) == (
            100,
            inside,
        )  # the refused update changed nothing


async def test_aws_destinations_only_when_allowed() -> None:
    named = f"arn:aws:sqs:{REGION}:{ACCOUNT}:named-by-the-file"
    declared = EventSourceMappingConfig(
        "g", STREAM_ARN, "LATEST", destination_config=DestinationConfig(OnFailure(named))
    )
    control = ControlConfig(port=0, allowed_destinations=(f"arn:aws:sns:{REGION}:{ACCOUNT}:esm-*",))
    config = memory_config(functions=("f", "g", "h", "k"), control=control, mappings=(declared,))
    async with memory_daemon(config) as daemon:
        client = lambda_client(daemon.url)
        for destination in (
            f"arn:aws:sqs:{REGION}:999999999999:attacker-queue",
            f"arn:aws:sns:{REGION}:{ACCOUNT}:other-topic",
            "arn:aws:s3:::someone-elses-bucket",
        ):
            with pytest.raises(client.exceptions.InvalidParameterValueException) as refused:
                await call(client.create_event_source_mapping, **with_destination(destination))
            assert "allowed_destinations" in refused.value.response["Error"]["Message"]
        assert len(listed(daemon)) == 1  # the config file's
        allowed = f"arn:aws:sns:{REGION}:{ACCOUNT}:esm-failures"
        await call(client.create_event_source_mapping, **with_destination(allowed))
        again = with_destination(named) | {"FunctionName": "h"}  # named by the file: fine
        await call(client.create_event_source_mapping, **again)
        assert len(listed(daemon)) == 3


# -- one function, however it is spelled ---------------------------------------------------------


async def test_duplicates_through_other_spellings_conflict() -> None:
    async with memory_daemon(memory_config(functions=("f", "g"))) as daemon:
        client = lambda_client(daemon.url)
        first = await call(client.create_event_source_mapping, **CREATE)
        for spelling in (
            "f:$LATEST",
            FUNCTION_ARN,
            f"{FUNCTION_ARN}:$LATEST",
            f"{ACCOUNT}:function:f",
            f"{ACCOUNT}:function:f:$LATEST",
        ):
            with pytest.raises(client.exceptions.ResourceConflictException) as conflict:
                await call(
                    client.create_event_source_mapping, **(CREATE | {"FunctionName": spelling})
                )
            assert first["UUID"] in conflict.value.response["Error"]["Message"]
        for spelling, part in (
            ("f:q1", "qualifier 'q1'"),
            ("f:1", "qualifier '1'"),
            (FUNCTION_ARN.replace(ACCOUNT, "999999999999"), "account"),
            (FUNCTION_ARN.replace(REGION, "eu-west-1"), "region"),
            ("999999999999:function:f", "account"),
        ):
            with pytest.raises(client.exceptions.ResourceNotFoundException) as missing:
                await call(
                    client.create_event_source_mapping, **(CREATE | {"FunctionName": spelling})
                )
            message = missing.value.response["Error"]["Message"]
            assert message.startswith("Function not found: ") and part in message, message
        assert [uuid for uuid, _ in listed(daemon)] == [first["UUID"]]
        qualified = await call(
            client.create_event_source_mapping, **(CREATE | {"FunctionName": "g:$LATEST"})
        )
        assert qualified["FunctionArn"] == FUNCTION_ARN[:-1] + "g:$LATEST"
        await wait_for(
            lambda: daemon.runtime.get(qualified["UUID"]).state == "Enabled", 10, message="Enabled"
        )
        with pytest.raises(client.exceptions.ResourceConflictException):  # moving onto f
            await call(client.update_event_source_mapping, UUID=qualified["UUID"], FunctionName="f")
        by_arn = await call(client.list_event_source_mappings, FunctionName=f"{FUNCTION_ARN}")
        assert [m["UUID"] for m in by_arn["EventSourceMappings"]] == [first["UUID"]]
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            await call(client.list_event_source_mappings, FunctionName="f:q1")


def test_config_file_mappings_name_existing_functions() -> None:
    for name in ("f:live", FUNCTION_ARN.replace(ACCOUNT, "999999999999")):
        with pytest.raises(ConfigError, match="does not exist"):
            memory_config(mappings=(EventSourceMappingConfig(name, STREAM_ARN, "LATEST"),))
    memory_config(mappings=(EventSourceMappingConfig("f:$LATEST", STREAM_ARN, "LATEST"),))


async def test_mapping_cap() -> None:
    control = ControlConfig(port=0, max_mappings=2)
    async with memory_daemon(memory_config(functions=("f", "g", "h"), control=control)) as daemon:
        client = lambda_client(daemon.url)
        await call(client.create_event_source_mapping, **CREATE)
        second = await call(client.create_event_source_mapping, **(CREATE | {"FunctionName": "g"}))
        with pytest.raises(client.exceptions.ServiceQuotaExceededException) as capped:
            await call(client.create_event_source_mapping, **(CREATE | {"FunctionName": "h"}))
        assert capped.value.response["ResponseMetadata"]["HTTPStatusCode"] == 402
        assert "max_mappings (2)" in capped.value.response["Error"]["Message"]
        assert len(listed(daemon)) == 2
        await wait_for(
            lambda: daemon.runtime.get(second["UUID"]).state == "Enabled", 10, message="Enabled"
        )
        await call(client.delete_event_source_mapping, UUID=second["UUID"])
        await call(client.create_event_source_mapping, **(CREATE | {"FunctionName": "h"}))
    declared = tuple(
        EventSourceMappingConfig(name, STREAM_ARN, "LATEST") for name in ("f", "g", "h")
    )
    with pytest.raises(ConfigError, match="max_mappings"):
        memory_config(functions=("f", "g", "h"), control=control, mappings=declared)


# -- inputs that crashed a handler: 4xx, nothing registered --------------------------------------


def deep_object(depth: int) -> str:
    return '{"a":' * depth + '"x"' + "}" * depth


async def test_former_500s_are_4xx_and_register_nothing(caplog: pytest.LogCaptureFixture) -> None:
    timestamp = json.dumps(CREATE | {"StartingPosition": "AT_TIMESTAMP"})[:-1]
    pattern = '{"data": ' + deep_object(400) + "}"
    deep_marker = base64.urlsafe_b64encode(b"[" * 300 + b"]" * 300).decode().rstrip("=")
    long_marker = base64.urlsafe_b64encode(b"[" * 600 + b"]" * 600).decode().rstrip("=")
    cases: list[tuple[str, str, bytes, str]] = [
        (
            "POST",
            BASE,
            f'{timestamp}, "StartingPositionTimestamp": 1{"0" * 309}}}'.encode(),
            "InvalidParameterValueException",
        ),
        (
            "POST",
            BASE,
            f'{timestamp}, "StartingPositionTimestamp": 1e400}}'.encode(),
            "InvalidParameterValueException",
        ),
        (
            "POST",
            BASE,
            f'{timestamp}, "StartingPositionTimestamp": NaN}}'.encode(),
            "InvalidRequestContentException",
        ),
        (
            "POST",
            BASE,
            json.dumps(CREATE | {"FilterCriteria": {"Filters": [{"Pattern": pattern}]}}).encode(),
            "InvalidParameterValueException",
        ),
        (
            "POST",
            BASE,
            json.dumps(CREATE)[:-1].encode() + b', "Tags": ' + deep_object(980).encode() + b"}",
            "InvalidRequestContentException",
        ),
        (
            "POST",
            BASE,
            json.dumps(CREATE | {"Tags": {"k": {"a": "b"}}}).encode(),
            "InvalidParameterValueException",
        ),
        (
            "POST",
            BASE,
            json.dumps(CREATE | {"Tags": {"k\ud800": "v"}}).encode(),
            "InvalidRequestContentException",
        ),
        (
            "POST",
            BASE,
            json.dumps(CREATE | {"Tags": {f"k{i}": "v" for i in range(51)}}).encode(),
            "InvalidParameterValueException",
        ),
        (
            "POST",
            BASE,
            json.dumps(CREATE | {"KMSKeyArn": "any string"}).encode(),
            "InvalidParameterValueException",
        ),
        (
            "POST",
            BASE,
            json.dumps(with_destination("file://x\udc80")).encode(),
            "InvalidRequestContentException",
        ),
        ("GET", f"{BASE}?Marker={deep_marker}", b"", "InvalidParameterValueException"),
        ("GET", f"{BASE}?Marker={long_marker}", b"", "InvalidParameterValueException"),
        ("GET", f"{BASE}?Marker=WzEsIFsyXV0", b"", "InvalidParameterValueException"),  # [1, [2]]
    ]
    async with memory_daemon(memory_config()) as daemon:
        caplog.clear()
        for method, path, data, code in cases:
            status, headers, text = await request(daemon, method, path, data=data, headers=JSON)
            assert_lambda_error(status, headers, text, code)
            assert listed(daemon) == [], (path, data[:80])
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        # nothing was left behind: the same mapping is created at once, then tagged properly
        kms = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        good = CREATE | {"Tags": {"team": "orders", "cost center": "42"}, "KMSKeyArn": kms}
        status, _, text = await request(daemon, "POST", BASE, json=good)
        assert status == 202, text
        assert json.loads(text)["KMSKeyArn"] == kms


@asynccontextmanager
async def runtime_on(config: DaemonConfig, db: Path) -> AsyncIterator[Runtime]:
    """A Runtime whose mappings persist in ``db``, reconciled, on an in-memory stream."""
    checkpoints = SQLiteCheckpointStore(str(db))
    try:
        async with Engine(source=MemoryStream(STREAM_ARN), checkpoint_store=checkpoints) as eng:
            store = MappingStore(checkpoints.connection)
            handlers = {fn.name: Recorder() for fn in config.functions}
            async with Runtime(eng, config, store=store, handlers=handlers) as runtime:
                await runtime.reconcile()
                yield runtime
    finally:
        await checkpoints.aclose()


async def test_stored_mapping_whose_destination_is_no_longer_allowed_is_not_started(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.db"
    queue = f"arn:aws:sqs:{REGION}:{ACCOUNT}:esm-failures"
    allowing = memory_config(control=ControlConfig(port=0, allowed_destinations=("*",)))
    fields = {"function_name": "f", "event_source_arn": STREAM_ARN, "starting_position": "LATEST"}
    destination = DestinationConfig(OnFailure(queue))
    async with runtime_on(allowing, db) as runtime:
        created = await runtime.create(fields | {"destination_config": destination})
    async with runtime_on(memory_config(), db) as runtime:  # the allow-list is gone
        view = runtime.get(created.uuid)
        assert view.state == "Disabled"
        assert view.last_processing_result.startswith("PROBLEM: ")
        assert "allowed_destinations" in view.last_processing_result
