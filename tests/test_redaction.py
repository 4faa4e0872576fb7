"""Credentials never reach the logs, even when an endpoint echoes the request in its error.

``redact`` on the spellings an echo takes (headers, JSON, Python reprs, query strings, text cut
short); then a daemon against a fake Kinesis on 127.0.0.1 whose 500s echo every request header,
with a session token set: neither the token nor the signature appears in any log line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kinesis_esm import EventSourceMappingConfig
from kinesis_esm._redact import REDACTED, RedactingFilter, install_redaction, redact
from tests.support.control import running_daemon
from tests.support.kinesis import wait_for

TOKEN = "FwoGZXIvYXdzEJr//////////wEaDHsessiontoken+with/slashes=="
SIGNATURE = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
AUTHORIZATION = (
    "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLEKEY12/20240101/us-east-1/kinesis/aws4_request, "
    f"SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature={SIGNATURE}"
)
SECRETS = (TOKEN, SIGNATURE, "AKIAEXAMPLEKEY12")


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: {AUTHORIZATION}\r\nX-Amz-Security-Token: {TOKEN}\r\nHost: x",
        json.dumps({"Authorization": AUTHORIZATION, "X-Amz-Security-Token": TOKEN}),
        json.dumps({"message": json.dumps({"authorization": AUTHORIZATION, "x": TOKEN[:3]})}),
        repr({"Authorization": AUTHORIZATION, "X-Amz-Security-Token": TOKEN.encode()}),
        f"<CIMultiDictProxy('Authorization': '{AUTHORIZATION}', 'X-Amz-Security-Token': "
        f"'{TOKEN}')>",
        f"https://bucket.s3.amazonaws.com/key?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential=AKIAEXAMPLEKEY12%2F20240101&X-Amz-Signature={SIGNATURE}"
        f"&X-Amz-Security-Token={TOKEN}&x-id=GetObject",
        f'GetRecords: InternalFailure: {{"X-Amz-Security-Token": "{TOKEN}", "Authori',  # cut
        f"{{'Signature': '{SIGNATURE}', 'Credential': 'AKIAEXAMPLEKEY12/20240101', 'token'",
        f"x-amz-security-token:{TOKEN}\nx-amz-date:20240101T000000Z",  # a canonical request
    ],
    ids=[
        "headers",
        "json",
        "json-in-json",
        "python-repr-bytes",
        "aiohttp-headers",
        "presigned-url",
        "cut-short",
        "quoted-parts",
        "canonical-request",
    ],
)
def test_redact_every_spelling(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_SESSION_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)  # the patterns alone, not the known values
    cleaned = redact(text)
    for secret in SECRETS:
        assert secret not in cleaned, cleaned
    assert REDACTED in cleaned


def test_redact_keeps_what_is_not_a_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    for text in (
        "GetRecords: ProvisionedThroughputExceededException: Rate exceeded for shard",
        "The request signature we calculated does not match the signature you provided.",
        "SignedHeaders=host;x-amz-date, X-Amz-Date: 20240101T000000Z",
    ):
        assert redact(text) == text
    shown = redact(f"Authorization: Bearer {TOKEN}; retrying in 0.2s")
    assert shown == f"Authorization: Bearer {REDACTED}; retrying in 0.2s"


def test_redact_removes_the_environments_secrets_however_quoted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")  # too short to look for
    assert (
        redact(f"the body said <{TOKEN}> and testing") == f"the body said <{REDACTED}> and testing"
    )


def test_the_filter_redacts_message_arguments_and_tracebacks() -> None:
    logger = logging.getLogger("tests.redaction.filter")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise RuntimeError(f"echo: X-Amz-Security-Token: {TOKEN}")
        except RuntimeError as exc:
            logger.exception("call failed: %s", exc)
    finally:
        logger.removeHandler(handler)
    [record] = records
    assert TOKEN not in record.getMessage() and REDACTED in record.getMessage()
    assert record.exc_text is not None and TOKEN not in record.exc_text
    assert "RuntimeError: echo: X-Amz-Security-Token: <redacted>" in record.exc_text
    assert TOKEN not in logging.Formatter().format(record)


def test_install_redaction_covers_child_loggers_created_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    install_redaction()
    install_redaction()  # idempotent
    caplog.set_level(logging.INFO, logger="kinesis_esm")
    logging.getLogger("kinesis_esm.a.logger.made.after.install").warning(
        "endpoint said %s", {"Authorization": AUTHORIZATION}
    )
    assert SIGNATURE not in caplog.text and "AKIAEXAMPLEKEY12" not in caplog.text
    assert f"'Authorization': '{REDACTED}'" in caplog.text


# A daemon against a Kinesis that echoes the request's headers in its 500s


class EchoingKinesis:
    """Kinesis's JSON protocol on 127.0.0.1: one shard, and every ``failing`` operation a 500
    whose message quotes the request's headers."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.seen: list[dict[str, str]] = []
        self.calls: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        operation = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        self.calls.append(operation)
        headers = dict(request.headers)
        self.seen.append({name.lower(): value for name, value in headers.items()})
        if operation in self.failing:
            body = {"__type": "InternalFailure", "message": f"request headers: {headers}"}
            return self.json(body, status=500)
        if operation == "ListShards":
            shard = {
                "ShardId": "shardId-000000000000",
                "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": str(2**128 - 1)},
                "SequenceNumberRange": {"StartingSequenceNumber": "1"},
            }
            return self.json({"Shards": [shard]})
        if operation == "GetShardIterator":
            return self.json({"ShardIterator": "iterator-1"})
        if operation == "GetRecords":
            return self.json({"Records": [], "NextShardIterator": "iterator-1"})
        return self.json({"__type": "UnknownOperationException", "message": operation}, 400)

    @staticmethod
    def json(body: Any, status: int = 200) -> web.Response:
        return web.Response(
            body=json.dumps(body).encode(),
            status=status,
            content_type="application/x-amz-json-1.1",
        )


@pytest.fixture
async def echoing_kinesis() -> AsyncIterator[tuple[str, EchoingKinesis]]:
    server = EchoingKinesis(set())
    app = web.Application()
    app.router.add_post("/", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        await runner.cleanup()


@pytest.mark.anyio
@pytest.mark.parametrize("failing", ["GetRecords", "ListShards"])
async def test_a_daemon_logs_no_token_or_signature_from_an_echoing_endpoint(
    failing: str,
    echoing_kinesis: tuple[str, EchoingKinesis],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint, server = echoing_kinesis
    server.failing = {failing}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY12")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-key-of-the-echo-test")
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    caplog.set_level(logging.INFO)
    arn = "arn:aws:kinesis:us-east-1:123456789012:stream/echo"
    mapping = EventSourceMappingConfig("f", arn, "TRIM_HORIZON")
    async with running_daemon(tmp_path, endpoint, mappings=[mapping]):

        def failures_logged() -> bool:
            return sum("InternalFailure" in r.getMessage() for r in caplog.records) >= 2

        await wait_for(failures_logged, 30, message=f"{failing} failures in the log")

    echoed = [h for h, op in zip(server.seen, server.calls, strict=True) if op == failing]
    assert echoed, server.calls
    sent = echoed[0]
    assert sent.get("x-amz-security-token") == TOKEN  # what the endpoint echoed back
    signature = re.search(r"Signature=([0-9a-f]{64})", sent["authorization"])
    assert signature is not None, sent["authorization"]
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "request headers:" in logged  # the echo was logged, with its credentials taken out
    assert REDACTED in logged
    for secret in (TOKEN, signature[1], "AKIAEXAMPLEKEY12/"):
        assert secret not in logged, f"{secret[:12]}... in the log"
