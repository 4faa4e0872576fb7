"""Functions that run in execution environments, as on Lambda: each environment is a process
that initialises once and then runs one invocation at a time.

* :class:`ProcessFunction` (``isolation = "process"``): each environment is a Python worker
  process that imports the handler (``package.module:function``) once.
* :class:`RuntimeFunction` (``target = "runtime"``): each environment is ``command``, a runtime
  interface client in any language (``python -m awslambdaric module.function``), driven
  through Lambda's Runtime API on a loopback port of its own.

Both satisfy the ``Function`` protocol and enforce their own timeout (``enforces_timeout``).
A handler's exception is a function error (``Unhandled``); a crash, a timeout or running out
of memory is a function error with Lambda's type (``Runtime.ExitError``, ``Sandbox.Timedout``,
``Runtime.OutOfMemory``), and the environment is replaced; a failed init is a function error
with its type (``Runtime.ImportModuleError``, ...) and shows in ``last_init_error``. Invoking a
function that is stopping raises :class:`EnvironmentUnavailableError` (not invoked).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson

from ._callable import InvokeResult
from ._context import log_stream_name
from ._output import function_logger
from ._pool import IDLE_TIMEOUT, MIN_ENVIRONMENTS, EnvironmentPool, EnvironmentStatistics
from ._process_env import ProcessEnvironment, WorkerSpec
from ._runtime_api import RuntimeEnvironment, RuntimeSpec, runtime_command
from ._sandbox import (
    EnvironmentUnavailableError,
    InitError,
    Invocation,
    lambda_environment,
    region_of,
    trace_id,
)

__all__ = [
    "EnvironmentStatistics",
    "EnvironmentUnavailableError",
    "InitError",
    "ProcessFunction",
    "RuntimeFunction",
]

INIT_TIMEOUT = 10.0  # Lambda's limit for an on-demand environment's init phase
STOP_MARGIN = 5.0  # beyond the function timeout and init, for a clean stop to wait


def _executable(name: str, program: str, task_root: str, setting: str) -> str:
    """``program`` as the environments will run it; a clear error if there is no such one."""
    if os.sep in program:  # a path: relative ones are relative to the task root
        path = os.path.join(task_root, program)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return program
    elif shutil.which(program) is not None:
        return program
    raise ValueError(f"function {name!r}: {setting}: {program!r} is not an executable program")


def _check(
    name: str,
    timeout: float,
    memory_size: int,
    max_environments: int,
    idle_timeout: float,
    min_environments: int,
) -> None:
    if not 0 < timeout <= 900:
        raise ValueError(f"function {name!r}: timeout {timeout} must be > 0 and at most 900 s")
    if not 128 <= memory_size <= 10240:
        raise ValueError(
            f"function {name!r}: memory_size {memory_size} must be between 128 and 10240 MB"
        )
    if max_environments < 0:
        raise ValueError(
            f"function {name!r}: max_environments {max_environments} must be 0 (one per "
            "concurrent invocation: the mapping's concurrency) or more"
        )
    if not 0 <= idle_timeout <= 86400:
        raise ValueError(
            f"function {name!r}: idle_timeout {idle_timeout} must be between 0 (never "
            "reclaim) and 86400 s"
        )
    if min_environments < 0 or 0 < max_environments < min_environments:
        raise ValueError(
            f"function {name!r}: min_environments {min_environments} must be 0 or more, and "
            f"at most max_environments ({max_environments}) when that is set"
        )


class _EnvironmentFunction:
    """The Function protocol over a pool of environments."""

    name: str
    arn: str
    timeout: float
    memory_size: int
    _pool: EnvironmentPool
    _variables: Callable[[str], dict[str, str]]  # a log stream name -> the environment's

    input: Literal["event", "records"] = "event"  # environments take the event
    _closed = False
    enforces_timeout = True  # invoke() never outlives the timeout (plus init, when it starts one)

    def _start_pool(
        self,
        variables: Callable[[str], dict[str, str]],
        name: str,
        max_environments: int,
        logger: logging.Logger,
        init_timeout: float,
    ) -> None:
        variables("check")  # bad variables fail here, not in the first invocation
        self._variables = variables
        self._pool = EnvironmentPool(
            self._environment,
            name=name,
            max_environments=max_environments,
            logger=logger,
            stop_grace=self.timeout + init_timeout + STOP_MARGIN,
            idle_timeout=self._idle_timeout,
            min_environments=self._min_environments,
        )

    def _environment(self, number: int) -> Any:
        raise NotImplementedError

    def _setup(
        self,
        name: str,
        *,
        timeout: float,
        memory_size: int,
        arn: str | None,
        max_environments: int,
        task_root: str | os.PathLike[str] | None,
        idle_timeout: float,
        min_environments: int,
    ) -> tuple[str, logging.Logger]:
        _check(name, timeout, memory_size, max_environments, idle_timeout, min_environments)
        self._idle_timeout = float(idle_timeout)
        self._min_environments = min_environments
        self.name = name
        self.timeout = float(timeout)
        self.memory_size = memory_size
        self.arn = arn or f"arn:aws:lambda:us-east-1:000000000000:function:{name}"
        root = str(Path(task_root or os.getcwd()).resolve())
        if not Path(root).is_dir():
            raise ValueError(f"function {name!r}: task_root {root} is not a directory")
        return root, function_logger(name)

    @property
    def max_environments(self) -> int:
        return self._pool.max_environments

    @max_environments.setter
    def max_environments(self, value: int) -> None:
        self._pool.max_environments = value

    @property
    def idle_timeout(self) -> float:
        """Seconds an environment may stay idle before it is reclaimed (0: never)."""
        return self._pool.idle_timeout

    @property
    def min_environments(self) -> int:
        """Environments kept alive whatever their idle time."""
        return self._pool.min_environments

    @property
    def closed(self) -> bool:
        """aclose() has returned: the environments are stopped and the figures final."""
        return self._closed

    @property
    def last_init_error(self) -> InitError | None:
        """The last failed init's error, until an init succeeds (for LastProcessingResult)."""
        return self._pool.last_init_error

    def statistics(self) -> EnvironmentStatistics:
        return self._pool.statistics()

    async def invoke(
        self,
        payload: Any,
        *,
        client_context: Mapping[str, Any] | None = None,
        cognito_identity: Mapping[str, Any] | None = None,
    ) -> InvokeResult:
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        invocation = Invocation(
            request_id=str(uuid.uuid4()),
            body=body,
            timeout=self.timeout,
            invoked_function_arn=self.arn,
            trace_id=trace_id(),
            client_context=client_context,
            cognito_identity=cognito_identity,
        )
        return await self._pool.invoke(invocation)

    async def aclose(self) -> None:
        """Let in-flight invocations finish (within the timeout), then stop the environments."""
        try:
            await self._pool.aclose()
        finally:
            self._closed = True


class ProcessFunction(_EnvironmentFunction):
    """A Python handler in worker-process environments (``isolation = "process"``).

    ``handler`` is ``package.module:function`` (or Lambda's ``package.module.function``),
    imported in each environment with ``task_root`` (default: the working directory) as the
    working directory and first on ``sys.path``. ``memory_size`` caps each environment's address
    space (RLIMIT_AS, Linux) at its footprint before the import plus memory_size plus
    ``MEMORY_HEADROOM_MB``; ``enforce_memory=False`` turns that off. ``python`` is the
    interpreter of the environments (default: the daemon's). An environment idle for
    ``idle_timeout`` seconds (0: never) is reclaimed, keeping ``min_environments``.
    """

    isolation = "process"

    def __init__(
        self,
        handler: str,
        *,
        name: str,
        timeout: float = 3.0,
        memory_size: int = 128,
        arn: str | None = None,
        max_environments: int = 0,
        environment: Mapping[str, str] | None = None,
        task_root: str | os.PathLike[str] | None = None,
        python: str | None = None,
        enforce_memory: bool = True,
        init_timeout: float = INIT_TIMEOUT,
        input: Literal["event"] = "event",
        idle_timeout: float = IDLE_TIMEOUT,
        min_environments: int = MIN_ENVIRONMENTS,
    ) -> None:
        if input != "event":
            raise ValueError(
                f"function {name!r}: input {input!r}: a process environment receives Lambda's "
                "event; typed records need isolation 'thread' or 'none'"
            )
        if not handler or not isinstance(handler, str):
            raise ValueError(f"function {name!r}: handler must look like 'package.module:function'")
        root, logger = self._setup(
            name,
            timeout=timeout,
            memory_size=memory_size,
            arn=arn,
            max_environments=max_environments,
            task_root=task_root,
            idle_timeout=idle_timeout,
            min_environments=min_environments,
        )
        self.handler = handler
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        base = dict(environment or {})
        self._spec_args: dict[str, Any] = {
            "function_name": name,
            "handler": handler,
            "memory_size": memory_size,
            "enforce_memory": enforce_memory,
            "python": _executable(name, python or sys.executable, root, "python"),
            "task_root": root,
            "init_timeout": init_timeout,
            "logger": logger,
        }
        region = region_of(self.arn)

        def variables(stream: str) -> dict[str, str]:
            return lambda_environment(
                function_name=name,
                memory_size=memory_size,
                handler=handler,
                region=region,
                log_stream_name=stream,
                task_root=root,
                user=base,
                execution_env=f"AWS_Lambda_python{version}",
            )

        self._start_pool(variables, name, max_environments, logger, init_timeout)

    def _environment(self, number: int) -> ProcessEnvironment:
        # one log stream per environment, as on Lambda
        variables = self._variables(log_stream_name())
        return ProcessEnvironment(WorkerSpec(environment=variables, **self._spec_args), number)

    def __repr__(self) -> str:
        return f"ProcessFunction({self.name!r}, {self.handler!r}, timeout={self.timeout})"


class RuntimeFunction(_EnvironmentFunction):
    """A runtime interface client in environments of its own (``target = "runtime"``).

    ``command`` starts one environment, e.g. ``["python", "-m", "awslambdaric", "app.handler"]``
    or ``["npx", "aws-lambda-ric", "index.handler"]``; it finds the Runtime API in
    ``AWS_LAMBDA_RUNTIME_API``. ``handler`` sets ``_HANDLER`` (default: the command's last word).
    ``memory_size`` is enforced by sampling the runtime's resident memory (Linux).
    """

    target = "runtime"

    def __init__(
        self,
        command: Sequence[str],
        *,
        name: str,
        timeout: float = 3.0,
        memory_size: int = 128,
        arn: str | None = None,
        max_environments: int = 0,
        environment: Mapping[str, str] | None = None,
        task_root: str | os.PathLike[str] | None = None,
        handler: str | None = None,
        enforce_memory: bool = True,
        init_timeout: float = INIT_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        min_environments: int = MIN_ENVIRONMENTS,
    ) -> None:
        root, logger = self._setup(
            name,
            timeout=timeout,
            memory_size=memory_size,
            arn=arn,
            max_environments=max_environments,
            task_root=task_root,
            idle_timeout=idle_timeout,
            min_environments=min_environments,
        )
        self.command = runtime_command(command)
        _executable(name, self.command[0], root, "command")
        self._spec_args: dict[str, Any] = {
            "function_name": name,
            "command": self.command,
            "memory_size": memory_size,
            "enforce_memory": enforce_memory,
            "task_root": root,
            "init_timeout": init_timeout,
            "logger": logger,
        }
        region = region_of(self.arn)
        user = dict(environment or {})
        handler_name = handler or self.command[-1]

        def variables(stream: str) -> dict[str, str]:
            return lambda_environment(
                function_name=name,
                memory_size=memory_size,
                handler=handler_name,
                region=region,
                log_stream_name=stream,
                task_root=root,
                user=user,
            )

        self._start_pool(variables, name, max_environments, logger, init_timeout)

    def _environment(self, number: int) -> RuntimeEnvironment:
        variables = self._variables(log_stream_name())
        return RuntimeEnvironment(RuntimeSpec(environment=variables, **self._spec_args), number)

    def __repr__(self) -> str:
        return f"RuntimeFunction({self.name!r}, {list(self.command)!r}, timeout={self.timeout})"
