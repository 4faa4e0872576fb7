"""``target = "runtime"``: kinesis-esm serves Lambda's Runtime API and drives a runtime interface
client through it: Python's ``awslambdaric`` from PyPI (the real one, as Lambda's Python images
run it), and a minimal hand-written runtime for the API's own answers.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from kinesis_esm.functions._environments import EnvironmentUnavailableError, RuntimeFunction
from tests.support.kinesis import wait_for
from tests.support.processes import alive

pytest.importorskip("awslambdaric")

pytestmark = pytest.mark.anyio

EVENT: dict[str, Any] = {"Records": [{"kinesis": {"data": "aGVsbG8="}}]}
STREAM_SHAPE = re.compile(r"^\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}$")

Factory = Callable[..., RuntimeFunction]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Factory]:
    """``make(source, handler="app.handler", command=None, **options)``: a RuntimeFunction
    running ``python -m awslambdaric <handler>`` over a module ``app`` with ``source``."""
    created: list[RuntimeFunction] = []

    def factory(
        source: str,
        handler: str = "app.handler",
        command: list[str] | None = None,
        files: dict[str, str] | None = None,
        **options: Any,
    ) -> RuntimeFunction:
        root = tmp_path / f"f{len(created)}"
        root.mkdir()
        (root / "app.py").write_text(textwrap.dedent(source))
        for name, text in (files or {}).items():
            (root / name).write_text(textwrap.dedent(text))
        options.setdefault("timeout", 10)
        name = options.pop("name", f"rt{len(created)}")
        function = RuntimeFunction(
            command or [sys.executable, "-m", "awslambdaric", handler],
            name=name,
            task_root=root,
            **options,
        )
        created.append(function)
        return function

    yield factory
    with anyio.fail_after(30):
        for function in created:
            await function.aclose()


HANDLER = """
    import os, time, ctypes

    def handler(event, context):
        how = event.get("do")
        if how == "raise":
            raise ValueError("bad record")
        if how == "exit":
            os._exit(7)
        if how == "segfault":
            ctypes.string_at(0)
        if how == "sleep":
            time.sleep(event["seconds"])
        if how == "allocate":
            block = bytearray(event["mb"] * 1024 * 1024)
            time.sleep(2)   # held: the runtime's resident memory is sampled every 50 ms
            return len(block)
        return {
            "event": event,
            "pid": os.getpid(),
            "request": context.aws_request_id,
            "arn": context.invoked_function_arn,
            "remaining": context.get_remaining_time_in_millis(),
            "function_name": context.function_name,
            "memory": context.memory_limit_in_mb,
            "version": context.function_version,
            "group": context.log_group_name,
            "stream": context.log_stream_name,
            "identity": [context.identity.cognito_identity_id,
                         context.identity.cognito_identity_pool_id],
            "custom": context.client_context.custom if context.client_context else None,
            "env": {k: v for k, v in os.environ.items()
                    if k.startswith(("AWS_", "_", "LAMBDA_", "TZ", "MY_"))},
            "cwd": os.getcwd(),
        }
"""


async def test_success_with_lambdas_headers_context_and_environment(make: Factory) -> None:
    function = make(
        HANDLER,
        name="orders",
        memory_size=512,
        timeout=6,
        arn="arn:aws:lambda:eu-central-1:123456789012:function:orders",
        environment={"MY_SETTING": "42"},
    )
    with anyio.fail_after(30):
        result = await function.invoke(EVENT)
        second = await function.invoke(
            EVENT,
            client_context={"custom": {"tenant": "a"}},
            cognito_identity={"cognitoIdentityId": "id-1", "cognitoIdentityPoolId": "pool-1"},
        )
    assert result.ok, result
    seen = result.payload
    assert seen["event"] == EVENT
    assert seen["request"] == result.request_id  # Lambda-Runtime-Aws-Request-Id
    assert seen["arn"] == "arn:aws:lambda:eu-central-1:123456789012:function:orders"
    assert 5000 < seen["remaining"] <= 6000  # Lambda-Runtime-Deadline-Ms
    assert seen["function_name"] == "orders" and seen["memory"] == "512"
    assert seen["version"] == "$LATEST" and seen["group"] == "/aws/lambda/orders"
    assert STREAM_SHAPE.match(seen["stream"]), seen["stream"]
    assert seen["identity"] == [None, None]
    env = seen["env"]
    assert re.fullmatch(
        r"Root=1-[0-9a-f]{8}-[0-9a-f]{24};Parent=[0-9a-f]{16};Sampled=0", env["_X_AMZN_TRACE_ID"]
    )  # Lambda-Runtime-Trace-Id
    assert re.fullmatch(r"127\.0\.0\.1:\d+", env["AWS_LAMBDA_RUNTIME_API"])
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "orders"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "512"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/orders"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"] == seen["stream"]
    assert env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-central-1"
    assert env["_HANDLER"] == "app.handler"
    assert env["LAMBDA_TASK_ROOT"] == seen["cwd"]
    assert env["TZ"] == ":UTC" and env["MY_SETTING"] == "42"
    assert "AWS_LAMBDA_MAX_CONCURRENCY" not in env  # else awslambdaric goes multi-concurrent
    # warm: the same runtime process; the optional headers reach the context
    assert second.ok and second.payload["pid"] == seen["pid"]
    assert second.payload["custom"] == {"tenant": "a"}
    assert second.payload["identity"] == ["id-1", "pool-1"]
    assert second.payload["env"]["_X_AMZN_TRACE_ID"] != env["_X_AMZN_TRACE_ID"]
    stats = function.statistics()
    assert stats.inits == 1 and stats.invocations == 2 and stats.environments == 1


async def test_a_handler_error_has_lambdas_error_document(make: Factory) -> None:
    function = make(HANDLER)
    with anyio.fail_after(30):
        failed = await function.invoke({"do": "raise"})
        after = await function.invoke(EVENT)
    assert failed.error_type == "Unhandled"
    assert failed.error_message == "ValueError: bad record"
    document = failed.payload
    assert document["errorType"] == "ValueError"
    assert document["errorMessage"] == "bad record"
    assert document["requestId"] == failed.request_id
    assert any('raise ValueError("bad record")' in line for line in document["stackTrace"])
    assert after.ok  # the runtime survives a handler error
    assert function.statistics().crashes == 0


@pytest.mark.parametrize(
    ("source", "handler", "error_type", "message"),
    [
        ("x = 1\n", "missing.handler", "Runtime.ImportModuleError", "Unable to import module"),
        ("x = 1\n", "app.handler", "Runtime.HandlerNotFound", "Handler 'handler' missing"),
        ("raise RuntimeError('no config')\n", "app.handler", "RuntimeError", "no config"),
    ],
)
async def test_an_init_error_is_posted_and_reported(
    make: Factory, source: str, handler: str, error_type: str, message: str
) -> None:
    function = make(source, handler)
    with anyio.fail_after(30):
        result = await function.invoke(EVENT)
    assert result.error_type == error_type
    assert message in (result.error_message or "")
    error = function.last_init_error
    assert error is not None and error.error_type == error_type
    assert function.statistics().init_errors == 1


async def test_a_runtime_that_exits_before_polling_fails_its_init(make: Factory) -> None:
    function = make("", command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    with anyio.fail_after(20):
        result = await function.invoke(EVENT)
    assert result.error_type == "Runtime.ExitError"
    assert result.error_message == "Runtime exited with error: exit status 3"


async def test_a_runtime_that_never_polls_times_out_its_init(make: Factory) -> None:
    function = make(
        "", command=[sys.executable, "-c", "import time; time.sleep(30)"], init_timeout=0.5
    )
    with anyio.fail_after(20):
        started = time.monotonic()
        result = await function.invoke(EVENT)
    assert result.error_type == "Sandbox.Timedout"
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("do", "description"),
    [("exit", "exit status 7"), ("segfault", "signal: segmentation fault")],
)
async def test_a_runtime_crash_is_an_exit_error_and_it_is_replaced(
    make: Factory, do: str, description: str
) -> None:
    function = make(HANDLER)
    with anyio.fail_after(30):
        before = await function.invoke(EVENT)
        crashed = await function.invoke({"do": do})
        after = await function.invoke(EVENT)
    assert crashed.error_type == "Runtime.ExitError"
    assert crashed.error_message == (
        f"RequestId: {crashed.request_id} Error: Runtime exited with error: {description}"
    )
    assert after.ok and after.payload["pid"] != before.payload["pid"]
    stats = function.statistics()
    assert stats.crashes == 1 and stats.replacements == 1


async def test_a_timeout_is_sandbox_timedout_and_the_runtime_is_replaced(make: Factory) -> None:
    function = make(HANDLER, timeout=1)
    with anyio.fail_after(30):
        before = await function.invoke(EVENT)
        timed_out = await function.invoke({"do": "sleep", "seconds": 30})
        after = await function.invoke(EVENT)
    assert timed_out.error_type == "Sandbox.Timedout"
    assert timed_out.error_message == (
        f"RequestId: {timed_out.request_id} Error: Task timed out after 1.00 seconds"
    )
    assert 1.0 <= timed_out.duration < 3
    assert after.ok and after.payload["pid"] != before.payload["pid"]
    await wait_for(lambda: not alive(before.payload["pid"]), 10, message="the killed runtime")
    assert function.statistics().timeouts == 1


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="memory sampling: Linux")
async def test_memory_over_memory_size_is_out_of_memory(make: Factory) -> None:
    function = make(HANDLER, memory_size=128)
    with anyio.fail_after(30):
        within = await function.invoke({"do": "allocate", "mb": 32})
        over = await function.invoke({"do": "allocate", "mb": 400})
        after = await function.invoke(EVENT)
    assert within.ok and within.payload == 32 * 1024 * 1024
    assert over.error_type == "Runtime.OutOfMemory"
    assert after.ok
    assert function.statistics().out_of_memory == 1


async def test_two_environments_have_their_own_api_and_one_invocation_each(
    make: Factory,
) -> None:
    function = make(HANDLER, max_environments=2)
    results: list[Any] = []

    async def one(i: int) -> None:
        results.append(await function.invoke({"do": "sleep", "seconds": 0.3, "n": i}))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for i in range(4):
                group.start_soon(one, i)
        runtimes = [await function.invoke(EVENT), await function.invoke(EVENT)]
    assert all(r.ok for r in results), results
    assert function.statistics().environments == 2
    assert function.statistics().invocations == 6
    assert len({r.payload["env"]["AWS_LAMBDA_RUNTIME_API"] for r in runtimes}) == 1  # LIFO


async def test_a_clean_stop_lets_the_in_flight_invocation_finish(make: Factory) -> None:
    function = make(HANDLER)
    results: list[Any] = []
    with anyio.fail_after(30):
        pid = (await function.invoke(EVENT)).payload["pid"]

        async def slow() -> None:
            results.append(await function.invoke({"do": "sleep", "seconds": 1.0}))

        async with anyio.create_task_group() as group:
            group.start_soon(slow)
            await wait_for(lambda: function.statistics().busy == 1, 10, message="busy")
            await function.aclose()
    assert results[0].ok, results[0]
    await wait_for(lambda: not alive(pid), 10, message="the runtime to end")
    with pytest.raises(EnvironmentUnavailableError):
        await function.invoke(EVENT)


# The API's own answers, seen by a minimal custom runtime (urllib, as Lambda's tutorial's curl)

PROBE_RUNTIME = """
    import json, os, sys, urllib.error, urllib.request
    API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"

    def call(method, path, body=None):
        request = urllib.request.Request(API + path, data=body, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    while True:
        status, headers, body = call("GET", "/invocation/next")
        request_id = headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(body)
        answers = {
            "next": [status, {k: v for k, v in headers.items() if k.startswith("Lambda-")}],
            "wrong_id": call("POST", "/invocation/not-this-one/response", b"{}")[::2],
            "late_init_error": call("POST", "/init/error", b"{}")[::2],
        }
        if event.get("big"):
            too_big = b"x" * (6 * 1024 * 1024 + 1)
            call("POST", f"/invocation/{request_id}/response", too_big)
            continue
        if event.get("error"):
            call("POST", f"/invocation/{request_id}/error", b"not json")
            continue
        payload = json.dumps({"answers": answers}, default=lambda b: b.decode()).encode()
        accepted = call("POST", f"/invocation/{request_id}/response", payload)
        print("response accepted", accepted[0], accepted[2].decode(), flush=True)
"""


async def test_the_runtime_api_answers_as_lambdas(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    function = make(
        "",
        command=[sys.executable, "probe_runtime.py"],
        files={"probe_runtime.py": PROBE_RUNTIME},
        name="probe",
        timeout=5,
    )
    caplog.set_level("INFO", logger="kinesis_esm.function.probe")
    with anyio.fail_after(30):
        result = await function.invoke({"plain": True})
        too_big = await function.invoke({"big": True})
        not_json = await function.invoke({"error": True})
    assert result.ok, result
    answers = result.payload["answers"]
    status, headers = answers["next"]
    assert status == 200
    assert headers["Lambda-Runtime-Aws-Request-Id"] == result.request_id
    deadline = int(headers["Lambda-Runtime-Deadline-Ms"])
    assert 0 < deadline - time.time() * 1000 <= 5000
    assert headers["Lambda-Runtime-Invoked-Function-Arn"].endswith(":function:probe")
    assert headers["Lambda-Runtime-Trace-Id"].startswith("Root=1-")
    assert "Lambda-Runtime-Client-Context" not in headers  # a Kinesis invocation has none
    assert "Lambda-Runtime-Cognito-Identity" not in headers
    code, body = answers["wrong_id"]
    assert code == 400 and json.loads(body)["errorType"] == "InvalidRequestID"
    code, body = answers["late_init_error"]
    assert code == 403 and json.loads(body)["errorType"] == "InvalidStateTransition"
    accepted = [r.getMessage() for r in caplog.records if "response accepted" in r.getMessage()]
    assert accepted == [f'{result.request_id} response accepted 202 {{"status":"OK"}}']
    assert too_big.error_type == "Function.ResponseSizeTooLarge"
    assert not_json.error_type == "Unhandled"
    assert not_json.payload == {"errorType": "Unhandled", "errorMessage": "not json"}


def test_a_command_must_be_a_list_of_words(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="command: \\[\\] must be a non-empty list"):
        RuntimeFunction([], name="f", task_root=tmp_path)
    with pytest.raises(ValueError, match="command: 'no-such-runtime' is not an executable"):
        RuntimeFunction(["no-such-runtime", "app.handler"], name="f", task_root=tmp_path)
    with pytest.raises(ValueError, match="Reserved keys used in this request: _HANDLER"):
        RuntimeFunction(["python3"], name="f", task_root=tmp_path, environment={"_HANDLER": "y"})


NODE_RIC = os.environ.get(
    "KINESIS_ESM_NODE_RIC"
)  # e.g. .../node_modules/aws-lambda-ric/bin/index.mjs


@pytest.mark.skipif(
    not NODE_RIC, reason="set KINESIS_ESM_NODE_RIC to aws-lambda-ric's bin/index.mjs"
)
async def test_nodes_runtime_interface_client_runs_unchanged(make: Factory) -> None:
    assert NODE_RIC is not None
    function = make(
        "",
        command=["node", NODE_RIC, "index.handler"],
        files={
            "index.mjs": """
                export const handler = async (event, context) => {
                  console.log("records", event.Records.length);
                  if (event.fail) throw new Error("node failure");
                  return { request: context.awsRequestId, name: context.functionName };
                };
            """
        },
        name="node-fn",
        memory_size=256,
    )
    with anyio.fail_after(30):
        result = await function.invoke(EVENT)
        failed = await function.invoke({"Records": [], "fail": True})
    assert result.ok, result
    assert result.payload == {"request": result.request_id, "name": "node-fn"}
    assert failed.error_type == "Unhandled" and failed.error_message == "Error: node failure"
