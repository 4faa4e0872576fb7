"""Execution environments with ``isolation = "process"``: worker processes that init once and
run one invocation at a time; crashes, timeouts and memory as function errors with Lambda's
types, the environment replaced; output in the daemon's log; a clean stop.

Every handler is a real module written to a temporary directory and imported by a real worker
process; nothing is mocked.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kinesis_esm.functions._environments import (
    EnvironmentUnavailableError,
    ProcessFunction,
)
from kinesis_esm.functions._pool import SpawnBackoff
from tests.support.environments import Factory
from tests.support.kinesis import wait_for
from tests.support.processes import alive

pytestmark = pytest.mark.anyio

EVENT: dict[str, Any] = {"Records": []}
STREAM_SHAPE = re.compile(r"^\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}$")


async def _invoke_all(function: ProcessFunction, count: int) -> list[Any]:
    results: list[Any] = [None] * count

    async def one(i: int) -> None:
        results[i] = await function.invoke({"Records": [], "n": i})

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for i in range(count):
                group.start_soon(one, i)
    return results


# Isolation


MODULE_STATE = """
    import os, time
    CURRENT = {"request": None}

    def handler(event, context):
        CURRENT["request"] = context.aws_request_id   # module-level state, as powertools keeps
        time.sleep(1.0)                               # others would overwrite it meanwhile
        return {"mine": CURRENT["request"] == context.aws_request_id, "pid": os.getpid(),
                "start": time.time()}
"""


async def test_module_state_is_not_shared_by_concurrent_invocations(make: Factory) -> None:
    function = make(MODULE_STATE)
    started = time.monotonic()
    results = await _invoke_all(function, 4)
    elapsed = time.monotonic() - started
    assert all(r.ok for r in results), results
    assert all(r.payload["mine"] for r in results)
    assert len({r.payload["pid"] for r in results}) == 4  # one environment each (cap 0)
    assert os.getpid() not in {r.payload["pid"] for r in results}
    # they did run at the same time: one after the other, they would start 1 s apart
    starts = sorted(r.payload["start"] for r in results)
    assert starts[-1] - starts[0] < 1.0, starts
    assert elapsed < 10


ONE_AT_A_TIME = """
    import os, time
    IN_FLIGHT = [0]

    def handler(event, context):
        IN_FLIGHT[0] += 1
        seen = IN_FLIGHT[0]
        start = time.time()
        time.sleep(0.1)
        IN_FLIGHT[0] -= 1
        return {"pid": os.getpid(), "in_flight": seen, "start": start, "end": time.time()}
"""


async def test_an_environment_runs_one_invocation_at_a_time(make: Factory) -> None:
    function = make(ONE_AT_A_TIME, max_environments=2)
    results = await _invoke_all(function, 8)
    assert all(r.ok for r in results), results
    pids = {r.payload["pid"] for r in results}
    assert len(pids) == 2  # the cap holds
    assert all(r.payload["in_flight"] == 1 for r in results)
    for pid in pids:  # no two invocations of one environment overlap in time
        spans = sorted(
            (r.payload["start"], r.payload["end"]) for r in results if r.payload["pid"] == pid
        )
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end
    stats = function.statistics()
    assert stats.environments == 2 and stats.busy == 0 and stats.invocations == 8


WARM = """
    import os, time
    INITS = []
    INITS.append(os.getpid())
    time.sleep(0.2)   # a slow import: paid once per environment

    def handler(event, context):
        return {"pid": os.getpid(), "inits": len(INITS)}
"""


async def test_an_environment_is_warm_and_reused_init_once(make: Factory) -> None:
    function = make(WARM)
    with anyio.fail_after(30):
        first = await function.invoke(EVENT)
        later = [await function.invoke(EVENT) for _ in range(5)]
    assert first.ok, first
    assert {r.payload["pid"] for r in later} == {first.payload["pid"]}
    assert all(r.payload["inits"] == 1 for r in later)
    assert max(r.duration for r in later) < 0.2  # no import on the warm path
    stats = function.statistics()
    assert stats.inits == 1 and stats.environments == 1
    assert stats.init_seconds >= 0.2 and stats.last_init_seconds == stats.init_seconds


# Init failures


@pytest.mark.parametrize(
    ("source", "handler", "error_type", "message"),
    [
        ("", "missing_module:handler", "Runtime.ImportModuleError", "Unable to import module"),
        ("def handler(:\n", "app:handler", "Runtime.UserCodeSyntaxError", "Syntax error in"),
        ("x = 1\n", "app:handler", "Runtime.HandlerNotFound", "Handler 'handler' missing"),
        ("x = 1\n", "app", "Runtime.MalformedHandlerName", "Bad handler 'app'"),
        ("raise ValueError('no config')\n", "app:handler", "ValueError", "no config"),
    ],
)
async def test_init_failure_is_a_function_error_with_lambdas_type(
    make: Factory, source: str, handler: str, error_type: str, message: str
) -> None:
    function = make(source, handler)
    with anyio.fail_after(20):
        result = await function.invoke(EVENT)
    assert not result.ok
    assert result.error_type == error_type
    assert message in (result.error_message or "")
    assert result.payload["errorType"] == error_type
    error = function.last_init_error
    assert error is not None and error.error_type == error_type
    stats = function.statistics()
    assert stats.init_errors == 1 and stats.inits == 0 and stats.environments == 0


async def test_init_is_retried_at_the_next_invocation_and_then_succeeds(
    make: Factory, tmp_path: Path
) -> None:
    function = make("import not_there_yet\n\ndef handler(event, context):\n    return 1\n")
    with anyio.fail_after(20):
        failed = await function.invoke(EVENT)
        assert failed.error_type == "Runtime.ImportModuleError"
        (tmp_path / "f0" / "not_there_yet.py").write_text("")  # the fix is deployed
        result = await function.invoke(EVENT)
    assert result.ok, result
    assert result.payload == 1
    assert function.last_init_error is None
    stats = function.statistics()
    assert stats.init_errors == 1 and stats.inits == 1 and stats.replacements == 1


async def test_an_init_over_init_timeout_is_sandbox_timedout(make: Factory) -> None:
    function = make(
        "import time\ntime.sleep(30)\n\ndef handler(event, context):\n    return 1\n",
        init_timeout=0.5,
    )
    with anyio.fail_after(20):
        started = time.monotonic()
        result = await function.invoke(EVENT)
    assert result.error_type == "Sandbox.Timedout"
    assert result.error_message == "Init phase timed out after 0.50 seconds"
    assert time.monotonic() - started < 5
    assert function.statistics().init_errors == 1


# Function errors keep the environment


async def test_a_handler_exception_is_unhandled_and_the_environment_stays(make: Factory) -> None:
    function = make(
        """
        import os
        def handler(event, context):
            if event.get("fail"):
                raise KeyError("missing")
            return os.getpid()
        """
    )
    with anyio.fail_after(20):
        pid = (await function.invoke(EVENT)).payload
        failed = await function.invoke({"fail": True})
        again = await function.invoke(EVENT)
    assert failed.error_type == "Unhandled"
    assert failed.error_message == "KeyError: 'missing'"
    assert failed.payload["errorType"] == "KeyError"
    assert failed.payload["requestId"] == failed.request_id
    assert any("raise KeyError" in line for line in failed.payload["stackTrace"])
    assert not any("_worker.py" in line for line in failed.payload["stackTrace"])
    assert again.payload == pid  # same environment
    assert function.statistics().crashes == 0


async def test_responses_marshal_as_lambdas_python_runtime_does(make: Factory) -> None:
    function = make(
        """
        import decimal
        def handler(event, context):
            kind = event["kind"]
            if kind == "set":
                return {1, 2}
            if kind == "decimal":
                return {"price": decimal.Decimal("1.5"), "count": decimal.Decimal(3), 7: "int key"}
            if kind == "bytes":
                return b'{"batchItemFailures": []}'
            return None
        """
    )
    with anyio.fail_after(20):
        unserializable = await function.invoke({"kind": "set"})
        decimals = await function.invoke({"kind": "decimal"})
        raw = await function.invoke({"kind": "bytes"})
        nothing = await function.invoke({"kind": "none"})
    assert unserializable.error_type == "Runtime.MarshalError"
    assert "Unable to marshal response" in (unserializable.error_message or "")
    assert decimals.ok and decimals.payload == {"price": 1.5, "count": 3, "7": "int key"}
    assert raw.ok and raw.payload == {"batchItemFailures": []}  # read as JSON, as the ESM does
    assert nothing.ok and nothing.payload is None


# Crashes


CRASHES = """
    import ctypes, os, sys, threading, time

    def handler(event, context):
        how = event.get("crash")
        if how == "exit":
            sys.exit(4)                        # an exception that ends the process
        if how == "_exit":
            os._exit(3)
        if how == "segfault":
            ctypes.string_at(0)
        if how == "thread":                    # a thread of the handler ends the process
            threading.Thread(target=os._exit, args=(5,)).start()
            time.sleep(30)
        if how == "wait":                      # to be killed from outside
            with open(event["pid_file"], "w") as f:
                f.write(str(os.getpid()))
            time.sleep(30)
        return os.getpid()
"""


@pytest.mark.parametrize(
    ("crash", "description"),
    [
        ("exit", "exit status 4"),
        ("_exit", "exit status 3"),
        ("segfault", "signal: segmentation fault"),
        ("thread", "exit status 5"),
    ],
)
async def test_a_crash_is_an_exit_error_and_the_environment_is_replaced(
    make: Factory, crash: str, description: str
) -> None:
    function = make(CRASHES)
    with anyio.fail_after(30):
        before = await function.invoke(EVENT)
        crashed = await function.invoke({"crash": crash})
        after = await function.invoke(EVENT)
    assert crashed.error_type == "Runtime.ExitError"
    assert crashed.error_message == (
        f"RequestId: {crashed.request_id} Error: Runtime exited with error: {description}"
    )
    assert after.ok, after
    assert after.payload != before.payload  # a new environment
    assert not alive(before.payload)
    stats = function.statistics()
    assert stats.crashes == 1 and stats.replacements == 1 and stats.inits == 2
    assert stats.environments == 1


async def test_kill_9_from_outside_is_an_exit_error(make: Factory, tmp_path: Path) -> None:
    function = make(CRASHES)
    pid_file = tmp_path / "pid"
    results: list[Any] = []

    async def invoke() -> None:
        results.append(await function.invoke({"crash": "wait", "pid_file": str(pid_file)}))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(invoke)
            await wait_for(lambda: pid_file.exists() and pid_file.read_text(), 20, message="pid")
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        after = await function.invoke(EVENT)
    assert results[0].error_type == "Runtime.ExitError"
    assert results[0].error_message.endswith("Runtime exited with error: signal: killed")
    assert results[0].duration < 20  # noticed at once, not at the timeout
    assert after.ok and after.payload != int(pid_file.read_text())


async def test_an_environment_that_dies_while_idle_is_replaced_without_an_error(
    make: Factory,
) -> None:
    function = make(
        """
        import os, threading, time
        def handler(event, context):
            if event.get("die_later"):
                threading.Thread(target=lambda: (time.sleep(0.2), os._exit(1))).start()
            return os.getpid()
        """
    )
    with anyio.fail_after(30):
        first = await function.invoke({"die_later": True})
        await wait_for(lambda: not alive(first.payload), 10, message="the worker to end")
        second = await function.invoke(EVENT)
    assert first.ok and second.ok, (first, second)
    assert second.payload != first.payload


async def test_replacement_backs_off_while_crashes_follow_one_another(make: Factory) -> None:
    function = make(CRASHES)

    async def timed(event: dict[str, Any]) -> tuple[Any, float]:
        started = time.monotonic()
        result = await function.invoke(event)
        return result, time.monotonic() - started

    with anyio.fail_after(60):
        for _ in range(4):  # each start after a crash waits longer: 0.1, 0.2, 0.4 s
            crashed, _ = await timed({"crash": "_exit"})
            assert crashed.error_type == "Runtime.ExitError"
        ok, after_four = await timed(EVENT)  # waits 0.8 s before it starts; a success resets
        crashed, _ = await timed({"crash": "_exit"})
        assert crashed.error_type == "Runtime.ExitError"
        ok_again, after_reset = await timed(EVENT)  # the base delay again: 0.1 s
    assert ok.ok and ok_again.ok
    assert after_four >= 0.7  # 0.8 s, less the moments between the crash and this call
    assert 0.1 <= after_reset < 0.8
    assert function.statistics().crashes == 5


# Timeouts


async def test_a_timeout_is_sandbox_timedout_and_the_environment_is_replaced(
    make: Factory,
) -> None:
    function = make(
        """
        import os, time
        def handler(event, context):
            if event.get("sleep"):
                time.sleep(event["sleep"])
            return {"pid": os.getpid(), "remaining": context.get_remaining_time_in_millis()}
        """,
        timeout=1,
    )
    with anyio.fail_after(30):
        before = await function.invoke(EVENT)
        timed_out = await function.invoke({"sleep": 30})
        after = await function.invoke(EVENT)
    assert 900 < before.payload["remaining"] <= 1000
    assert timed_out.error_type == "Sandbox.Timedout"
    assert timed_out.error_message == (
        f"RequestId: {timed_out.request_id} Error: Task timed out after 1.00 seconds"
    )
    assert 1.0 <= timed_out.duration < 3
    assert after.ok and after.payload["pid"] != before.payload["pid"]
    await wait_for(lambda: not alive(before.payload["pid"]), 10, message="the killed worker")
    stats = function.statistics()
    assert stats.timeouts == 1 and stats.replacements == 1


async def test_cancelling_an_invocation_ends_its_environment(make: Factory) -> None:
    function = make(
        """
        import os, time
        def handler(event, context):
            time.sleep(event.get("sleep", 0))
            return os.getpid()
        """
    )
    with anyio.fail_after(30):
        pid = (await function.invoke(EVENT)).payload
        with anyio.move_on_after(0.5):
            await function.invoke({"sleep": 30})
        after = await function.invoke(EVENT)
    assert after.ok and after.payload != pid
    await wait_for(lambda: not alive(pid), 10, message="the cancelled worker")


# Memory


MEMORY = """
    def handler(event, context):
        block = bytearray(event["mb"] * 1024 * 1024)   # touched: zero-filled
        return len(block) // (1024 * 1024)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RLIMIT_AS: Linux")
async def test_memory_size_is_enforced_and_reported_as_out_of_memory(make: Factory) -> None:
    function = make(MEMORY, memory_size=128)
    with anyio.fail_after(30):
        within = await function.invoke({"mb": 96})
        over = await function.invoke({"mb": 1024})
        after = await function.invoke({"mb": 8})
    assert within.ok and within.payload == 96  # memory_size is usable
    assert over.error_type == "Runtime.OutOfMemory"
    assert "out of memory (memory_size 128 MB)" in (over.error_message or "")
    assert after.ok
    stats = function.statistics()
    assert stats.out_of_memory == 1 and stats.replacements == 1


async def test_without_enforcement_the_same_allocation_succeeds(make: Factory) -> None:
    function = make(MEMORY, memory_size=128, enforce_memory=False)
    with anyio.fail_after(30):
        result = await function.invoke({"mb": 400})
    assert result.ok and result.payload == 400


# Output


async def test_stdout_and_stderr_go_to_the_log_tagged_with_the_request_id(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    function = make(
        """
        import logging, sys, time
        print("imported")                      # init output

        def handler(event, context):
            rid = context.aws_request_id
            print("out", rid)
            print("err", rid, file=sys.stderr)
            logging.getLogger().warning("logged %s", rid)   # logging's default: stderr
            time.sleep(0.05)
            sys.stdout.write("partial " + rid)              # no newline: still this invocation
            return rid
        """,
        name="printer",
    )
    caplog.set_level(logging.INFO, logger="kinesis_esm.function.printer")
    results = await _invoke_all(function, 3)
    assert all(r.ok for r in results), results
    records = [r for r in caplog.records if r.name == "kinesis_esm.function.printer"]
    tagged = [r for r in records if r.aws_request_id not in ("init", "-")]  # type: ignore[attr-defined]
    for result in results:
        rid = result.request_id
        mine = [r.getMessage() for r in tagged if r.aws_request_id == rid]  # type: ignore[attr-defined]
        assert mine and all(m.startswith(rid + " ") for m in mine)
        bodies = sorted(m[len(rid) + 1 :] for m in mine)
        # logging's last-resort handler writes the bare message to stderr
        assert bodies == sorted([f"out {rid}", f"err {rid}", f"logged {rid}", f"partial {rid}"])
    streams = {r.stream for r in tagged}  # type: ignore[attr-defined]
    assert streams == {"stdout", "stderr"}
    assert any(r.getMessage() == "init imported" for r in records)


# The context and the environment the handler sees


async def test_the_handler_sees_lambdas_context_and_environment_variables(make: Factory) -> None:
    function = make(
        """
        import os
        def handler(event, context):
            context.custom_attribute = "set by a library"   # no __slots__
            return {
                "request": context.aws_request_id,
                "function_name": context.function_name,
                "memory": context.memory_limit_in_mb,
                "version": context.function_version,
                "arn": context.invoked_function_arn,
                "group": context.log_group_name,
                "stream": context.log_stream_name,
                "remaining": context.get_remaining_time_in_millis(),
                "identity": [context.identity.cognito_identity_id,
                             context.identity.cognito_identity_pool_id],
                "client_context": context.client_context,
                "tenant": context.tenant_id,
                "custom": context.custom_attribute,
                "env": {k: v for k, v in os.environ.items()
                        if k.startswith(("AWS_", "_", "LAMBDA_", "TZ", "MY_"))},
                "cwd": os.getcwd(),
            }
        """,
        name="ctx",
        memory_size=256,
        timeout=5,
        arn="arn:aws:lambda:eu-west-1:123456789012:function:ctx",
        environment={"MY_SETTING": "on"},
    )
    with anyio.fail_after(20):
        result = await function.invoke(EVENT)
        second = await function.invoke(EVENT)
    assert result.ok, result
    seen = result.payload
    assert seen["request"] == result.request_id
    assert seen["function_name"] == "ctx"
    assert seen["memory"] == "256"
    assert seen["version"] == "$LATEST"
    assert seen["arn"] == "arn:aws:lambda:eu-west-1:123456789012:function:ctx"
    assert seen["group"] == "/aws/lambda/ctx"
    assert STREAM_SHAPE.match(seen["stream"]), seen["stream"]
    assert second.payload["stream"] == seen["stream"]  # one stream per environment
    assert 4000 < seen["remaining"] <= 5000
    assert seen["identity"] == [None, None]
    assert seen["client_context"] is None and seen["tenant"] is None
    assert seen["custom"] == "set by a library"
    env = seen["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "ctx"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/ctx"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"] == seen["stream"]
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert env["_HANDLER"] == "app:handler"
    assert env["LAMBDA_TASK_ROOT"] == seen["cwd"]
    assert env["AWS_EXECUTION_ENV"].startswith("AWS_Lambda_python3.")
    assert env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"
    assert env["TZ"] == ":UTC"
    assert env["MY_SETTING"] == "on"
    assert env["_X_AMZN_TRACE_ID"].startswith("Root=1-")
    assert "AWS_LAMBDA_RUNTIME_API" not in env


async def test_an_async_handler_runs_on_one_loop_for_the_environments_life(
    make: Factory,
) -> None:
    function = make(
        """
        import asyncio
        LOOPS = []
        async def handler(event, context):
            await asyncio.sleep(0.01)
            LOOPS.append(id(asyncio.get_running_loop()))
            return len(set(LOOPS))
        """
    )
    with anyio.fail_after(20):
        results = [await function.invoke(EVENT) for _ in range(3)]
    assert [r.payload for r in results] == [1, 1, 1]


# Stopping


async def test_a_clean_stop_lets_in_flight_invocations_finish(make: Factory) -> None:
    function = make(
        """
        import os, time
        def handler(event, context):
            time.sleep(event.get("sleep", 0))
            return os.getpid()
        """
    )
    results: list[Any] = []
    with anyio.fail_after(30):
        pids = {r.payload for r in await _invoke_all(function, 2)}  # two warm environments

        async def slow() -> None:
            results.append(await function.invoke({"sleep": 1.0}))

        async with anyio.create_task_group() as group:
            group.start_soon(slow)
            await wait_for(lambda: function.statistics().busy == 1, 10, message="busy")
            closing = time.monotonic()
            await function.aclose()
            closed_after = time.monotonic() - closing
    assert results[0].ok, results[0]  # finished, not killed
    assert 0.5 < closed_after < 10
    stats = function.statistics()
    assert stats.environments == 0 and stats.busy == 0
    for pid in pids:
        await wait_for(lambda pid=pid: not alive(pid), 10, message=f"worker {pid} to end")
    with pytest.raises(EnvironmentUnavailableError):
        await function.invoke(EVENT)


# Bad configuration


def test_bad_settings_name_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Reserved keys used in this request: AWS_REGION"):
        ProcessFunction("app:h", name="f", task_root=tmp_path, environment={"AWS_REGION": "x"})
    with pytest.raises(ValueError, match="memory_size 64 must be between 128 and 10240"):
        ProcessFunction("app:h", name="f", task_root=tmp_path, memory_size=64)
    with pytest.raises(ValueError, match="timeout 0 must be > 0"):
        ProcessFunction("app:h", name="f", task_root=tmp_path, timeout=0)
    with pytest.raises(ValueError, match="max_environments -1"):
        ProcessFunction("app:h", name="f", task_root=tmp_path, max_environments=-1)
    with pytest.raises(ValueError, match="python: '/no/such/python' is not an executable"):
        ProcessFunction("app:h", name="f", task_root=tmp_path, python="/no/such/python")
    with pytest.raises(ValueError, match="isolation 'thread' or 'none'"):
        ProcessFunction("app:h", name="f", task_root=tmp_path, input="records")  # type: ignore[arg-type]


# The replacement back-off (pure)


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 10)), max_size=30))
def test_spawn_backoff_doubles_per_consecutive_failure_to_the_cap_and_resets(
    steps: list[tuple[bool, float]],
) -> None:
    backoff = SpawnBackoff(base=0.1, cap=5.0)
    now, run = 0.0, 0
    for failed, elapsed in steps:
        now += elapsed
        if failed:
            backoff.failed(now)
            run += 1
            assert backoff.wait(now) == pytest.approx(min(5.0, 0.1 * 2 ** (run - 1)))
        else:
            backoff.succeeded()
            run = 0
            assert backoff.wait(now) == 0
        assert 0 <= backoff.wait(now + 1) <= 5.0
    assert backoff.wait(now + 5.0) == 0  # a wait never outlasts the cap
