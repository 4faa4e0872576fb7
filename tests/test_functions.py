"""Python callables as Lambda functions: threads for sync handlers, the timeout, function errors,
return values Lambda cannot serialize, and clear handler loading errors."""

from __future__ import annotations

import decimal
import sys
import textwrap
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from kinesis_esm import (
    CallableFunction,
    Engine,
    EventSourceMappingConfig,
    InvokeResult,
    LambdaContext,
    MemoryCheckpointStore,
    MemoryStream,
    RetrySettings,
)
from kinesis_esm.functions import load_handler
from tests.support.kinesis import wait_for

STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/functions"
EVENT: dict[str, Any] = {"Records": []}

pytestmark = pytest.mark.anyio


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown: frees any handler thread a test left blocked (timeouts abandon them)."""
    event = threading.Event()
    yield event
    event.set()


# Threads and the event loop


async def test_sync_handler_runs_in_a_worker_thread_and_never_blocks_the_loop() -> None:
    loop_thread = threading.get_ident()
    started = threading.Event()
    loop_turned = threading.Event()  # only the event loop sets it, while the handler runs
    seen: dict[str, Any] = {}

    def handler(event: dict[str, Any], context: LambdaContext) -> str:
        seen["thread"] = threading.get_ident()
        started.set()
        # If this ran on the event loop, the loop could not set the flag: the wait would fail.
        seen["loop_turned"] = loop_turned.wait(timeout=5)
        return "done"

    function = CallableFunction(handler, name="sync", timeout=10)
    results: list[InvokeResult] = []

    async def invoke() -> None:
        results.append(await function.invoke(EVENT))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(invoke)
            await wait_for(started.is_set, 5, message="the handler to start")
            loop_turned.set()

    assert seen["thread"] != loop_thread
    assert seen["loop_turned"] is True
    assert results[0].ok, results[0]
    assert results[0].payload == "done"


async def test_sync_handlers_run_concurrently() -> None:
    """Four invocations at once meet at a barrier: only possible if each has its own thread."""
    barrier = threading.Barrier(4, timeout=5)

    def handler(event: dict[str, Any], context: LambdaContext) -> int:
        return barrier.wait()

    function = CallableFunction(handler, name="sync", timeout=10)
    results: list[InvokeResult] = []

    async def invoke() -> None:
        results.append(await function.invoke(EVENT))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(invoke)
    assert all(r.ok for r in results), results
    assert sorted(r.payload for r in results) == [0, 1, 2, 3]


class AsyncCallable:
    def __init__(self) -> None:
        self.threads: list[int] = []

    async def __call__(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        self.threads.append(threading.get_ident())
        await anyio.lowlevel.checkpoint()
        return {"seen": len(event["Records"]), "function": context.function_name}


async def test_async_handler_is_awaited_on_the_loop() -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    async def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        threads.append(threading.get_ident())
        await anyio.lowlevel.checkpoint()  # really a coroutine: it suspends
        return {"records": len(event["Records"]), "request": context.aws_request_id}

    result = await CallableFunction(handler, name="async-fn").invoke({"Records": [1, 2]})
    assert result.ok, result
    assert result.payload == {"records": 2, "request": result.request_id}
    assert threads == [loop_thread]

    obj = AsyncCallable()  # an object with an async __call__ is an async handler too
    result = await CallableFunction(obj, name="async-obj").invoke({"Records": [1]})
    assert result.ok, result
    assert result.payload == {"seen": 1, "function": "async-obj"}
    assert obj.threads == [loop_thread]


async def test_sync_wrapper_returning_a_coroutine_is_awaited() -> None:
    async def inner(event: dict[str, Any]) -> str:
        await anyio.lowlevel.checkpoint()
        return "from the coroutine"

    def wrapper(event: dict[str, Any], context: LambdaContext) -> Awaitable[str]:
        return inner(event)

    result = await CallableFunction(wrapper, name="wrapped").invoke(EVENT)
    assert result.ok, result
    assert result.payload == "from the coroutine"


# The timeout


async def test_sync_handler_timeout_is_enforced_and_is_a_function_error(
    release: threading.Event,
) -> None:
    finished = threading.Event()

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        release.wait(timeout=30)  # far beyond the function's timeout
        finished.set()

    function = CallableFunction(handler, name="slow", timeout=0.3)
    with anyio.fail_after(5):
        result = await function.invoke(EVENT)
    assert not result.ok
    assert result.error_type == "Unhandled"
    assert result.error_message == "Task timed out after 0.30 seconds"
    assert 0.3 <= result.duration < 1.5  # answered at the timeout, not when the thread ends
    assert not finished.is_set()  # the thread was abandoned, still blocked

    release.set()  # the abandoned thread ends in the background, harmlessly
    await wait_for(finished.is_set, 5, message="the abandoned handler thread to finish")


async def test_async_handler_timeout_cancels_it_and_is_a_function_error() -> None:
    cancelled = anyio.Event()

    async def handler(event: dict[str, Any], context: LambdaContext) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    function = CallableFunction(handler, name="stuck", timeout=0.3)
    with anyio.fail_after(5):
        result = await function.invoke(EVENT)
    assert not result.ok
    assert result.error_type == "Unhandled"
    assert result.error_message == "Task timed out after 0.30 seconds"
    assert 0.3 <= result.duration < 1.5
    assert cancelled.is_set()  # cancelled, not left running


async def test_context_deadline_is_the_function_timeout() -> None:
    remaining: list[int] = []

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        remaining.append(context.get_remaining_time_in_millis())

    await CallableFunction(handler, name="f", timeout=2.5).invoke(EVENT)
    assert 2000 < remaining[0] <= 2500


# Function errors


async def test_exception_is_a_function_error_with_type_and_message() -> None:
    def sync_handler(event: dict[str, Any], context: LambdaContext) -> None:
        raise KeyError("customer_id")

    async def async_handler(event: dict[str, Any], context: LambdaContext) -> None:
        raise RuntimeError("downstream unavailable")

    result = await CallableFunction(sync_handler, name="f").invoke(EVENT)
    assert (result.ok, result.error_type) == (False, "Unhandled")
    assert result.error_message == "KeyError: 'customer_id'"

    result = await CallableFunction(async_handler, name="f").invoke(EVENT)
    assert (result.ok, result.error_type) == (False, "Unhandled")
    assert result.error_message == "RuntimeError: downstream unavailable"


class Opaque:
    pass


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, Opaque(), {"nested": [frozenset({"x"})]}, {("a", "b"): 1}],
    ids=["object", "set", "instance", "nested-frozenset", "tuple-key"],
)
async def test_return_value_lambda_cannot_serialize_is_a_function_error(value: object) -> None:
    function = CallableFunction(lambda event, context: value, name="f")
    result = await function.invoke(EVENT)
    assert not result.ok
    assert result.error_type == "Runtime.MarshalError"
    assert result.error_message is not None
    assert result.error_message.startswith("Unable to marshal response")


@pytest.mark.parametrize(
    "value",
    [
        None,
        "text",
        {"batchItemFailures": []},
        ("a", 1),
        [1.5, True, None],
        pytest.param({"total": decimal.Decimal("12.50")}, id="decimal"),
        pytest.param({1: "int key"}, id="int-key"),
        pytest.param(2**70, id="big-int"),
        pytest.param(b"raw bytes", id="bytes"),
    ],
)
async def test_return_value_lambda_serializes_is_a_success(value: object) -> None:
    result = await CallableFunction(lambda event, context: value, name="f").invoke(EVENT)
    assert result.ok, result
    assert result.payload == value


def _sys_exit(event: dict[str, Any], context: LambdaContext) -> None:
    sys.exit(3)


async def _async_sys_exit(event: dict[str, Any], context: LambdaContext) -> None:
    sys.exit(3)


@pytest.mark.parametrize("handler", [_sys_exit, _async_sys_exit], ids=["sync", "async"])
def test_handler_calling_sys_exit_is_a_function_error(
    handler: Callable[[dict[str, Any], LambdaContext], Any],
) -> None:
    function = CallableFunction(handler, name="exits")
    try:  # a fresh event loop of its own: an escaping SystemExit must not take pytest's down
        result = anyio.run(function.invoke, EVENT)
    except SystemExit as exc:
        pytest.fail(f"the handler's SystemExit escaped the invocation: {exc!r}")
    assert not result.ok


async def test_engine_retries_a_timed_out_batch_as_a_function_error(
    release: threading.Event,
) -> None:
    """Through the engine: a timeout is not a success, is counted, and the batch is retried."""
    stream = MemoryStream(STREAM_ARN, shard_count=1)
    stream.put("k", b"payload")
    attempts: list[list[str]] = []

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        attempts.append([r["eventID"] for r in event["Records"]])
        if len(attempts) == 1:
            release.wait(timeout=30)  # the first attempt outlives the timeout

    store = MemoryCheckpointStore()
    config = EventSourceMappingConfig(
        function_name="f", event_source_arn=STREAM_ARN, starting_position="TRIM_HORIZON"
    )
    async with Engine(
        source=stream,
        checkpoint_store=store,
        retry_settings=RetrySettings(initial=0.05, maximum=0.1),
    ) as engine:
        uuid_ = await engine.add_mapping(config, handler, function_timeout=0.3)

        def succeeded() -> bool:
            return engine.statistics().mapping(uuid_).counters.succeeded_events == 1

        await wait_for(succeeded, 5, message="the retried batch to succeed")
        counters = engine.statistics().mapping(uuid_).counters
    assert counters.errors == 1
    assert counters.invocations == 2
    assert attempts[0] == attempts[1]  # the same batch again
    assert store.checkpoints[uuid_] == {stream.shard_ids[0]: attempts[0][0].split(":")[1]}


# Loading handlers named in a config file


@pytest.fixture
def in_tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tmp_path as the working directory; sys.path and sys.modules restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _module(directory: Path, source: str) -> str:
    """Write a uniquely named module into `directory`; return its name."""
    name = f"handler_{uuid.uuid4().hex[:12]}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def test_handler_loads_from_the_working_directory(in_tmp_cwd: Path) -> None:
    name = _module(
        in_tmp_cwd,
        """
        def handler(event, context):
            return "top"

        class Service:
            @staticmethod
            def handle(event, context):
                return "nested"
        """,
    )
    package = in_tmp_cwd / f"pkg_{name}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("def handler(event, context):\n    return 'package'\n")

    assert load_handler(f"{name}:handler", function_name="f")(None, None) == "top"
    assert load_handler(f"{name}:Service.handle", function_name="f")(None, None) == "nested"
    loaded = load_handler(f"pkg_{name}.mod:handler", function_name="f")
    assert loaded(None, None) == "package"


@pytest.mark.parametrize("spec", ["no_colon", ":handler", "module:", ""])
def test_malformed_handler_spec_is_a_clear_error(spec: str, in_tmp_cwd: Path) -> None:
    with pytest.raises(ImportError) as err:
        load_handler(spec, function_name="orders")
    message = str(err.value)
    assert "'orders'" in message
    assert f"{spec!r}" in message
    assert "package.module:function" in message


def test_missing_module_names_the_module_and_the_working_directory(in_tmp_cwd: Path) -> None:
    with pytest.raises(ImportError) as err:
        load_handler("no_such_module_here:handler", function_name="orders")
    message = str(err.value)
    assert "'orders'" in message
    assert "cannot import module 'no_such_module_here'" in message
    assert str(in_tmp_cwd) in message
    assert "ModuleNotFoundError" in message


def test_module_that_fails_to_import_shows_the_cause(in_tmp_cwd: Path) -> None:
    broken = _module(in_tmp_cwd, "RATE = 1 / 0\n")
    with pytest.raises(ImportError, match=rf"cannot import module '{broken}'.*ZeroDivisionError"):
        load_handler(f"{broken}:handler", function_name="orders")
    syntax = _module(in_tmp_cwd, "def handler(event, context)\n    pass\n")
    with pytest.raises(ImportError, match=rf"cannot import module '{syntax}'.*SyntaxError"):
        load_handler(f"{syntax}:handler", function_name="orders")


def test_missing_or_uncallable_attribute_is_a_clear_error(in_tmp_cwd: Path) -> None:
    name = _module(in_tmp_cwd, "NOT_A_FUNCTION = 42\n")
    with pytest.raises(ImportError, match=rf"module '{name}' has no attribute 'handlr'"):
        load_handler(f"{name}:handlr", function_name="orders")
    with pytest.raises(ImportError, match=rf"'{name}:NOT_A_FUNCTION' is not callable"):
        load_handler(f"{name}:NOT_A_FUNCTION", function_name="orders")
