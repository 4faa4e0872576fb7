"""The context object, pinned against the real ``awslambdaric.lambda_context.LambdaContext``
(the class Lambda's Python runtime hands to handlers): the same public attributes, with the same
types and values, the same nested objects, the same ``repr``."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest

from kinesis_esm.functions._context import LambdaContext, log_stream_name

ric = pytest.importorskip("awslambdaric.lambda_context")

STREAM_SHAPE = re.compile(r"^\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}$")
ARN = "arn:aws:lambda:us-east-1:123456789012:function:orders"
CLIENT_CONTEXT = {
    "custom": {"tenant": "a"},
    "env": {"platform": "test"},
    "client": {"installation_id": "i-1", "app_title": "shop", "app_version_code": "7"},
}
COGNITO = {"cognitoIdentityId": "id-1", "cognitoIdentityPoolId": "pool-1"}


def _pair(
    monkeypatch: pytest.MonkeyPatch,
    client_context: dict[str, Any] | None = None,
    cognito_identity: dict[str, Any] | None = None,
) -> tuple[Any, LambdaContext]:
    """The runtime's context and ours, for the same invocation of the same environment."""
    stream = log_stream_name()
    # awslambdaric reads the environment's constants from the variables Lambda sets
    monkeypatch.setenv("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/orders")
    monkeypatch.setenv("AWS_LAMBDA_LOG_STREAM_NAME", stream)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "orders")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
    request_id = str(uuid.uuid4())
    deadline_ms = int(time.time() * 1000) + 3000
    theirs = ric.LambdaContext(
        request_id,
        None if client_context is None else dict(client_context),
        cognito_identity,
        deadline_ms,
        ARN,
        None,
    )
    ours = LambdaContext(
        "orders",
        ARN,
        256,
        3.0,
        request_id,
        log_stream_name=stream,
        deadline_ms=deadline_ms,
        client_context=client_context,
        cognito_identity=cognito_identity,
    )
    return theirs, ours


def _public(obj: Any) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def _shape(value: Any) -> Any:
    """A value's type and content, nested objects by their class name and public fields."""
    if value is None or isinstance(value, str | int | float | dict | list):
        return type(value).__name__, value
    if callable(value):
        return "callable"
    fields = value.__slots__ if hasattr(value, "__slots__") else sorted(vars(value))
    return type(value).__name__, {name: _shape(getattr(value, name)) for name in fields}


@pytest.mark.parametrize(
    ("client_context", "cognito"),
    [(None, None), (CLIENT_CONTEXT, COGNITO)],
    ids=["kinesis-invocation", "with-client-context-and-identity"],
)
def test_the_context_matches_awslambdaric_attribute_by_attribute(
    monkeypatch: pytest.MonkeyPatch,
    client_context: dict[str, Any] | None,
    cognito: dict[str, Any] | None,
) -> None:
    theirs, ours = _pair(monkeypatch, client_context, cognito)
    assert _public(ours) == _public(theirs)
    for name in sorted(_public(theirs)):
        assert _shape(getattr(ours, name)) == _shape(getattr(theirs, name)), name
    assert repr(ours) == repr(theirs)
    assert abs(ours.get_remaining_time_in_millis() - theirs.get_remaining_time_in_millis()) < 50
    assert ours.w3c() == theirs.w3c() == {}


def test_a_kinesis_invocation_has_an_identity_object_and_no_client_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    theirs, ours = _pair(monkeypatch)
    assert ours.client_context is None and theirs.client_context is None
    assert type(ours.identity).__name__ == type(theirs.identity).__name__ == "CognitoIdentity"
    assert ours.identity.cognito_identity_id is None
    assert ours.identity.cognito_identity_pool_id is None
    assert ours.tenant_id is None
    assert isinstance(ours.memory_limit_in_mb, str) and ours.memory_limit_in_mb == "256"


def test_w3c_trace_context_is_taken_out_of_the_client_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w3c = {"traceparent": "00-abc-def-01", "tracestate": "x=1", "baggage": 7, "other": "no"}
    theirs, ours = _pair(monkeypatch, {"custom": None, "w3c": w3c})
    assert ours.w3c() == theirs.w3c() == {"traceparent": "00-abc-def-01", "tracestate": "x=1"}
    assert _shape(ours.client_context) == _shape(theirs.client_context)


def test_log_writes_the_message_to_stdout_without_a_newline_as_the_runtime_does(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    theirs, ours = _pair(monkeypatch)
    theirs.log("from the runtime")
    runtime_output = capsys.readouterr().out
    ours.log("from the runtime")
    assert capsys.readouterr().out == runtime_output == "from the runtime"


def test_handlers_and_libraries_can_set_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    theirs, ours = _pair(monkeypatch)
    theirs.set_by_a_library = True
    ours.set_by_a_library = True  # type: ignore[attr-defined]
    assert ours.set_by_a_library is True  # type: ignore[attr-defined]


def test_the_log_stream_name_has_lambdas_shape() -> None:
    assert STREAM_SHAPE.match(log_stream_name())
    assert log_stream_name(now=0).startswith("1970/01/01/[$LATEST]")
    assert log_stream_name() != log_stream_name()  # one per environment
    context = LambdaContext("f", ARN, 128, 3.0)  # outside an environment: the process's stream
    assert STREAM_SHAPE.match(context.log_stream_name)
    assert LambdaContext("g", ARN, 128, 3.0).log_stream_name == context.log_stream_name


def test_the_historical_signature_still_works() -> None:
    context = LambdaContext("f", ARN, 512, 2.5)
    assert context.function_name == "f"
    assert context.invoked_function_arn == ARN
    assert context.memory_limit_in_mb == "512"
    assert context.function_version == "$LATEST"
    assert context.log_group_name == "/aws/lambda/f"
    assert uuid.UUID(context.aws_request_id)
    assert 2000 < context.get_remaining_time_in_millis() <= 2500
    assert LambdaContext("f", ARN, 128, 1.0, "req-1").aws_request_id == "req-1"
    expired = LambdaContext("f", ARN, 128, 1.0, deadline_ms=int(time.time() * 1000) - 10)
    assert expired.get_remaining_time_in_millis() == 0
