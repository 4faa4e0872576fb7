"""A fuzzer against every route of the control plane (issue 12): random bodies, types, nesting,
sizes, methods, headers and paths. Every answer is a 2xx where the request is valid, otherwise
a 4xx in Lambda's error shape; never a 5xx, never a traceback; a refused request costs at most
one log line and creates or changes nothing.

The daemon runs once per module, in a thread of its own (an anyio blocking portal), on an
in-memory stream; requests go out with http.client, which sends any method and header bytes.
``KINESIS_ESM_FUZZ=nightly`` selects the long profile (the default one takes a few seconds per
route).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import string
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kinesis_esm.config import ControlConfig
from tests.support.control import (
    ACCOUNT,
    REGION,
    STREAM_ARN,
    MemoryDaemon,
    memory_config,
    memory_daemon,
)

settings.register_profile(
    "control-fuzz",
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "control-fuzz-nightly",
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PROFILE = settings.get_profile(
    "control-fuzz-nightly" if os.environ.get("KINESIS_ESM_FUZZ") == "nightly" else "control-fuzz"
)

BASE = "/2015-03-31/event-source-mappings"
FUNCTIONS = ("f", "g", "h")
ROUTES = ("create", "list", "get", "update", "delete", "probes", "anywhere")
# loggers whose lines a request can cause (the engine's are about mappings already running)
REQUEST_LOGGERS = ("kinesis_esm.control", "kinesis_esm.runtime", "aiohttp")


@dataclass
class Fuzzed:
    portal: BlockingPortal
    daemon: MemoryDaemon
    host: str
    port: int
    root: Path

    def snapshot(self) -> dict[str, tuple[Any, ...]]:
        """What a request may change, of the mappings not already on their way out."""

        def read() -> dict[str, tuple[Any, ...]]:
            return {
                v.uuid: (v.config, dict(v.extras), v.function_arn)
                for v in self.daemon.runtime.mappings()
                if v.state != "Deleting"
            }

        return self.portal.call(read)

    def uuids(self) -> list[str]:
        return list(self.snapshot())


@contextmanager
def fuzzed_daemon(root: Path, **auth: Any) -> Iterator[Fuzzed]:
    control = ControlConfig(
        port=0,
        max_mappings=6,
        file_destinations_root=str(root),
        allowed_destinations=(f"arn:aws:sqs:{REGION}:{ACCOUNT}:esm-*",),
        **auth,
    )
    config = memory_config(functions=FUNCTIONS, control=control)
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(memory_daemon(config)) as daemon,
    ):
        host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
        yield Fuzzed(portal, daemon, host, int(port), root)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    with fuzzed_daemon(tmp_path_factory.mktemp("fuzz-failures")) as daemon:
        yield daemon


TOKEN_VALUE = "a-fuzzing-bearer-token"
ACCESS_KEY = "AKIDFUZZ"


@pytest.fixture(scope="module")
def fuzzed_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    root = tmp_path_factory.mktemp("fuzz-auth-failures")
    auth = {"auth": "sigv4", "access_key_id": ACCESS_KEY, "secret_access_key": "secret"}
    with fuzzed_daemon(root, token=TOKEN_VALUE, **auth) as daemon:
        yield daemon


# -- what the fuzzer sends ------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.sampled_from(["", "f", "LATEST", "AT_TIMESTAMP", "TRIM_HORIZON", STREAM_ARN, "\ud800"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


@dataclass(frozen=True)
class Deep:
    """JSON text nested ``depth`` deep (objects, arrays or both), spliced in as is: json.dumps
    itself would refuse to write it."""

    depth: int
    kind: str

    def text(self) -> str:
        opening = {"object": ['{"a":'], "array": ["["], "mixed": ['{"a":', "["]}[self.kind]
        closing = {'{"a":': "}", "[": "]"}
        opens = [opening[i % len(opening)] for i in range(self.depth)]
        return "".join(opens) + "1" + "".join(closing[o] for o in reversed(opens))


deep = st.builds(
    Deep, st.integers(min_value=1, max_value=3000), st.sampled_from(["object", "array", "mixed"])
)


def dumps(value: Any) -> bytes:
    """json.dumps, with each Deep in ``value`` written as its text."""
    fragments: list[str] = []

    def placeholder(item: object) -> str:
        assert isinstance(item, Deep)
        fragments.append(item.text())
        return f"@@deep{len(fragments) - 1}@@"

    text = json.dumps(value, default=placeholder)
    for i, fragment in enumerate(fragments):
        text = text.replace(f'"@@deep{i}@@"', fragment)
    return text.encode()


def _destination() -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            "",
            "file:///etc/passwd",
            "file://../../x",
            "file://relative.jsonl",
            f"arn:aws:sqs:{REGION}:{ACCOUNT}:esm-failures",
            f"arn:aws:sqs:{REGION}:999999999999:theirs",
            "arn:aws:s3:::bucket",
            f"arn:aws:sns:{REGION}:{ACCOUNT}:topic",
        ]
    ) | st.text(max_size=400)


def _pattern() -> st.SearchStrategy[Any]:
    return (
        st.sampled_from(['{"data": {"a": [1]}}', "{}", "[]", '{"data": 1}', "not json"])
        | st.integers(min_value=1, max_value=2000).map(lambda n: '{"data":' * n + "1" + "}" * n)
        | st.integers(min_value=1, max_value=2000).map(lambda n: "[" * n)
        | json_values
    )


MEMBERS: dict[str, st.SearchStrategy[Any]] = {
    "FunctionName": st.sampled_from(
        [
            "f",
            "g",
            "h",
            "f:$LATEST",
            "f:q1",
            f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:g",
            "999999999999:function:h",
            "nope",
            "a" * 300,
        ]
    ),
    "EventSourceArn": st.sampled_from([STREAM_ARN, STREAM_ARN + "x", "arn:aws:sqs:x", ""]),
    "StartingPosition": st.sampled_from(["LATEST", "TRIM_HORIZON", "AT_TIMESTAMP", "x"]),
    "StartingPositionTimestamp": st.integers(min_value=-(10**320), max_value=10**320) | st.floats(),
    "BatchSize": st.integers(min_value=-5, max_value=20000),
    "MaximumBatchingWindowInSeconds": st.integers(min_value=-5, max_value=400),
    "ParallelizationFactor": st.integers(min_value=-1, max_value=12),
    "MaximumRetryAttempts": st.integers(min_value=-3, max_value=10**20),
    "MaximumRecordAgeInSeconds": st.integers(min_value=-3, max_value=10**6),
    "BisectBatchOnFunctionError": st.booleans(),
    "Enabled": st.booleans(),
    "TumblingWindowInSeconds": st.integers(min_value=-1, max_value=1000),
    "FunctionResponseTypes": st.lists(st.sampled_from(["ReportBatchItemFailures", "x"])),
    "DestinationConfig": st.fixed_dictionaries(
        {},
        optional={
            "OnFailure": st.fixed_dictionaries({}, optional={"Destination": _destination()}),
            "OnSuccess": json_values,
        },
    ),
    "FilterCriteria": st.fixed_dictionaries(
        {},
        optional={"Filters": st.lists(st.fixed_dictionaries({"Pattern": _pattern()}), max_size=7)},
    ),
    "KMSKeyArn": st.sampled_from(
        ["", "x", f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"]
    )
    | st.text(max_size=50),
    "MetricsConfig": st.fixed_dictionaries(
        {}, optional={"Metrics": st.lists(st.sampled_from(["EventCount", "ErrorCount", "x"]))}
    ),
    "Tags": st.dictionaries(st.text(max_size=140), st.text(max_size=300), max_size=60) | deep,
    "ScalingConfig": json_values,
}


@st.composite
def bodies(draw: st.DrawFn, *, create: bool) -> bytes:
    """Mostly a Lambda request with some members random, wrong or deep; sometimes anything."""
    kind = draw(st.sampled_from(["members", "members", "members", "json", "deep", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return dumps(draw(json_values))
    if kind == "deep":
        return dumps(draw(deep))
    body: dict[str, Any] = {}
    if create:
        body = {"FunctionName": draw(st.sampled_from(FUNCTIONS)), "EventSourceArn": STREAM_ARN}
        body["StartingPosition"] = "LATEST"
    for name in draw(st.lists(st.sampled_from(sorted(MEMBERS)), max_size=4, unique=True)):
        body[name] = draw(MEMBERS[name] if draw(st.integers(0, 3)) else json_values)
    if draw(st.booleans()):
        body[draw(st.text(max_size=20))] = draw(json_values)
    return dumps(body)  # ASCII: lone surrogates go out as \ud800 escapes


_SIGV4 = st.builds(
    lambda key, day, region, service, signed, signature: (
        f"AWS4-HMAC-SHA256 Credential={key}/{day}/{region}/{service}/aws4_request, "
        f"SignedHeaders={signed}, Signature={signature}"
    ).encode("utf-8", "surrogateescape"),
    st.sampled_from([ACCESS_KEY, "AKIDOTHER", ""]) | st.text(max_size=20),
    st.sampled_from(["20240101", ""]) | st.text(max_size=10),
    st.sampled_from([REGION]) | st.text(max_size=10),
    st.sampled_from(["lambda"]) | st.text(max_size=10),
    st.sampled_from(["host;x-amz-date", "host", ""]) | st.text(max_size=20),
    st.text(alphabet="0123456789abcdef", max_size=64) | st.text(max_size=10),
)
# header values as bytes: valid tokens, SigV4-shaped ones, and any bytes but CR and LF
authorizations = (
    st.sampled_from([f"Bearer {TOKEN_VALUE}".encode(), b"Bearer x", b"Bearer ", b"Basic eDp5"])
    | _SIGV4
    | st.binary(max_size=80)
    | st.text(max_size=40).map(lambda t: ("Bearer " + t).encode("utf-8", "surrogateescape"))
).map(lambda value: value.replace(b"\r", b"").replace(b"\n", b""))

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO", "PROPFIND", "TRACE")
TOKEN = st.text(alphabet=string.ascii_letters + "!#$%&'*+-.^_`|~", min_size=1, max_size=12)


@st.composite
def headers(draw: st.DrawFn, fuzzed: Fuzzed, has_body: bool) -> list[tuple[str, bytes]]:
    # mostly what an SDK sends, so that most requests reach the handlers
    host = f"{fuzzed.host}:{fuzzed.port}"
    if draw(st.integers(0, 15)) == 0:
        host = draw(st.sampled_from(["localhost", "evil.example:1", "[::1]", "x" * 300]))
    result = [("Host", host.encode())]
    content_type: str | None = "application/json"
    if draw(st.integers(0, 9)) == 0:
        content_type = draw(
            st.sampled_from(["text/plain", "application/x-amz-json-1.1", "application/JSON; x=1"])
            | st.none()
            | st.text(alphabet=string.printable.strip(), max_size=30)
        )
    if content_type is not None and has_body:
        result.append(("Content-Type", content_type.encode()))
    if draw(st.integers(0, 9)) == 0:
        result.append(("Authorization", draw(authorizations)))
    if draw(st.integers(0, 15)) == 0:
        result.append(("Origin", b"https://evil.example"))
    return result


@st.composite
def requests(draw: st.DrawFn, fuzzed: Fuzzed, route: str) -> tuple[str, str, bytes]:
    # the same draws whatever the daemon holds, so hypothesis can replay an example
    existing, index, text = (
        draw(st.booleans()),
        draw(st.integers(0, 99)),
        draw(st.text(max_size=40)),
    )
    uuids = fuzzed.uuids()
    some_uuid = uuids[index % len(uuids)] if existing and uuids else text
    item = f"{BASE}/{quote(some_uuid, safe='')}"
    if route == "create":
        method, path, body = (
            "POST",
            draw(st.sampled_from([BASE, f"{BASE}/"])),
            draw(bodies(create=True)),
        )
    elif route == "list":
        query = draw(
            st.dictionaries(
                st.sampled_from(["MaxItems", "Marker", "FunctionName", "EventSourceArn", "x"]),
                st.text(max_size=40) | st.integers(-5, 20000).map(str),
                max_size=4,
            )
        )
        path = BASE + ("?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items()))
        method, body = "GET", b""
    elif route in ("get", "update", "delete"):
        method = {"get": "GET", "update": "PUT", "delete": "DELETE"}[route]
        path, body = item, draw(bodies(create=False)) if route == "update" else b""
    elif route == "probes":
        method, body = "GET", b""
        path = draw(st.sampled_from(["/health", "/ready", "/metrics", "/status"]))
    else:
        path = "/" + "/".join(
            quote(part, safe="") for part in draw(st.lists(st.text(max_size=12), max_size=5))
        )
        method, body = "GET", draw(st.binary(max_size=100))
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(METHODS) | TOKEN)
    return method, path, body


# -- the properties ------------------------------------------------------------------------------


def send(
    fuzzed: Fuzzed, method: str, path: str, head: list[tuple[str, bytes]], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(fuzzed.host, fuzzed.port, timeout=20)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in head:
            conn.putheader(name, value)
        if body or method in ("POST", "PUT"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("route", ROUTES)
@PROFILE
@given(data=st.data())
def test_every_answer_is_lambda_shaped(
    fuzzed: Fuzzed, route: str, data: st.DataObject, caplog: pytest.LogCaptureFixture
) -> None:
    check_one_request(fuzzed, route, data, caplog)


@pytest.mark.parametrize("route", ["create", "list", "update", "probes"])
@PROFILE
@given(data=st.data())
def test_every_answer_is_lambda_shaped_with_auth(
    fuzzed_with_auth: Fuzzed, route: str, data: st.DataObject, caplog: pytest.LogCaptureFixture
) -> None:
    """Random Authorization headers (bearer, SigV4-shaped, any bytes) before everything else."""
    check_one_request(fuzzed_with_auth, route, data, caplog, authorization=True)


def check_one_request(
    fuzzed: Fuzzed,
    route: str,
    data: st.DataObject,
    caplog: pytest.LogCaptureFixture,
    *,
    authorization: bool = False,
) -> None:
    caplog.set_level(logging.DEBUG)
    method, path, body = data.draw(requests(fuzzed, route), label="request")
    head = data.draw(headers(fuzzed, bool(body)), label="headers")
    if authorization:
        head = [(n, v) for n, v in head if n != "Authorization"]
        head.append(("Authorization", data.draw(authorizations, label="authorization")))
    before = fuzzed.snapshot()
    caplog.clear()
    status, answer_headers, raw = send(fuzzed, method, path, head, body)
    lines = [r for r in caplog.records if r.name.startswith(REQUEST_LOGGERS)]
    text = raw.decode("utf-8", "replace")
    event(f"{status} {answer_headers.get('x-amzn-errortype', '')}")
    assert status < 500, (status, text)
    assert "Traceback" not in text
    assert not any(name.startswith("access-control-") for name in answer_headers)
    if method == "HEAD":
        return
    if status >= 400:
        assert answer_headers.get("x-amzn-errortype"), (status, text)
        error = json.loads(text)
        assert isinstance(error, dict) and (error.get("message") or error.get("Message")), text
        assert len(lines) <= 1, [r.getMessage()[:200] for r in lines]
        assert fuzzed.snapshot() == before, (method, path, body[:200])
    elif path != "/metrics":
        json.loads(text)
