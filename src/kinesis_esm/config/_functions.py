"""A declared function: what a mapping may invoke, and how it runs (``[functions.<name>]``).

Targets: ``local`` (the default: a Python handler ``package.module:function`` that the daemon
runs, in worker processes or threads, see ``isolation``), ``runtime`` (any command speaking
Lambda's Runtime API, such as ``python -m awslambdaric``), ``lambda`` (a real function, through
Lambda's Invoke API) and ``http`` (an endpoint that takes the event as a JSON POST). Each target
takes only its own keys; a key of another target is refused by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError, _expect, _in_range, _number

__all__ = ["FUNCTION_TARGETS", "ISOLATIONS", "FunctionConfig"]

FUNCTION_TARGETS = ("local", "runtime", "lambda", "http")
# process: each environment a worker process, one invocation at a time (Lambda's model);
# thread: sync handlers in threads of the daemon, sharing module state; none: an async handler
# awaited on the daemon's event loop
ISOLATIONS = ("process", "thread", "none")
_HANDLER = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_ROLE = re.compile(r"arn:aws[a-zA-Z-]*:iam::\d{12}:role/[\w+=,.@/-]+")
# Keys that only some targets take (the others are common to all).
_TARGET_KEYS = {
    "handler": ("local", "runtime"),
    "isolation": ("local",),
    "max_environments": ("local", "runtime"),
    "idle_timeout": ("local", "runtime"),
    "min_environments": ("local", "runtime"),
    "command": ("runtime",),
    "function_name": ("lambda",),
    "endpoint_url": ("lambda",),
    "url": ("http",),
    "headers": ("http",),
}
_UNSET: dict[str, Any] = {
    "handler": None,
    "isolation": None,
    "max_environments": None,
    "idle_timeout": None,
    "min_environments": None,
    "command": (),
    "function_name": None,
    "endpoint_url": None,
    "url": None,
    "headers": (),
}


@dataclass(frozen=True, slots=True)
class FunctionConfig:
    name: str
    handler: str | None = None
    timeout: float = 3
    memory_size: int = 128
    role: str | None = None
    target: str = "local"
    isolation: str | None = None  # local target; None: "process"
    max_environments: int | None = None  # local and runtime; None or 0: one per lane in flight
    idle_timeout: float | None = None  # local and runtime; None: 300 s; 0: never reclaim
    min_environments: int | None = None  # local and runtime; None: 1 kept whatever its idle
    command: tuple[str, ...] = ()  # runtime target
    function_name: str | None = None  # lambda target: a name, ARN, or ARN with qualifier
    endpoint_url: str | None = None  # lambda target; AWS_ENDPOINT_URL_LAMBDA also works
    url: str | None = None  # http target
    headers: tuple[tuple[str, str], ...] = ()  # http target; "env:NAME" reads the environment

    def __post_init__(self) -> None:
        _expect("name", self.name, (str,), "a string")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.name):
            message = f"{self.name!r} is not a function name"
            hint = "1 to 64 letters, digits, hyphens or underscores"
            raise ConfigError(message, parameter="name", hint=hint)
        _expect("target", self.target, (str,), "a string")
        if self.target not in FUNCTION_TARGETS:
            message = f"{self.target!r} is not a function target"
            raise ConfigError(message, parameter="target", hint=f"one of {FUNCTION_TARGETS}")
        for key, targets in _TARGET_KEYS.items():
            if self.target not in targets and getattr(self, key) != _UNSET[key]:
                message = f"is not a setting of target {self.target!r}"
                hint = f"only of target {' or '.join(repr(t) for t in targets)}"
                raise ConfigError(message, parameter=key, hint=hint)
        _in_range("timeout", self.timeout, 1.0, 900.0)
        object.__setattr__(self, "timeout", float(self.timeout))
        _in_range("memory_size", self.memory_size, 128, 10240)
        if self.role is not None:
            _expect("role", self.role, (str,), "a string")
            if _ROLE.fullmatch(self.role) is None:
                message = f"{self.role!r} is not an IAM role ARN"
                raise ConfigError(
                    message, parameter="role", hint="arn:aws:iam::<account>:role/<name>"
                )
        getattr(self, f"_check_{self.target}")()

    def _check_handler(self, *, required: bool) -> None:
        if self.handler is None:
            if required:
                raise ConfigError('is required: "package.module:attribute"', parameter="handler")
            return
        _expect("handler", self.handler, (str,), 'a string "package.module:attribute"')
        if _HANDLER.fullmatch(self.handler) is None:
            message = f"{self.handler!r} is not of the form package.module:attribute"
            raise ConfigError(message, parameter="handler")

    def _check_environments(self) -> None:
        if self.max_environments is not None:
            _in_range("max_environments", self.max_environments, 0, 1000)
        if self.idle_timeout is not None:
            _expect("idle_timeout", self.idle_timeout, (int, float), "a number of seconds")
            if self.idle_timeout != 0 and not 10 <= self.idle_timeout <= 86400:
                shown = _number(self.idle_timeout)
                message = f"must be 0 (never reclaim) or between 10 and 86400, got {shown}"
                raise ConfigError(message, parameter="idle_timeout", hint="seconds")
            object.__setattr__(self, "idle_timeout", float(self.idle_timeout))
        if self.min_environments is not None:
            _in_range("min_environments", self.min_environments, 0, 1000)
            cap = self.max_environments or 0
            if 0 < cap < self.min_environments:
                message = f"must be at most max_environments ({cap}), got {self.min_environments}"
                raise ConfigError(message, parameter="min_environments")

    def _check_local(self) -> None:
        self._check_handler(required=True)
        if self.isolation is not None:
            _expect("isolation", self.isolation, (str,), "a string")
            if self.isolation not in ISOLATIONS:
                message = f"{self.isolation!r} is not an isolation"
                raise ConfigError(message, parameter="isolation", hint=f"one of {ISOLATIONS}")
        self._check_environments()

    def _check_runtime(self) -> None:
        command = self.command
        _expect("command", command, (tuple, list), 'an array such as ["python", "-m", ...]')
        if not command or not all(isinstance(part, str) and part for part in command):
            message = "must be a non-empty array of non-empty strings"
            raise ConfigError(message, parameter="command", hint='["python", "-m", "awslambdaric"]')
        object.__setattr__(self, "command", tuple(command))
        if self.handler is not None:
            _expect("handler", self.handler, (str,), "a string")
        self._check_environments()

    def _check_lambda(self) -> None:
        if self.function_name is None:
            message = "is required: a function name, ARN, or ARN with qualifier"
            raise ConfigError(message, parameter="function_name")
        _expect("function_name", self.function_name, (str,), "a string")
        if not 1 <= len(self.function_name) <= 256:
            raise ConfigError("must be 1 to 256 characters", parameter="function_name")
        if self.endpoint_url is not None:
            _expect("endpoint_url", self.endpoint_url, (str,), "a string")
            if self.endpoint_url and not re.fullmatch(
                r"https?://[^\s/]+(/\S*)?", self.endpoint_url
            ):
                message = f"{self.endpoint_url!r} is not an http:// or https:// URL"
                raise ConfigError(message, parameter="endpoint_url")

    def _check_http(self) -> None:
        if self.url is None:
            raise ConfigError("is required: an http:// or https:// URL", parameter="url")
        _expect("url", self.url, (str,), "a string")
        if not re.fullmatch(r"https?://[^\s/?#]+(?:[/?#]\S*)?", self.url):
            raise ConfigError(f"{self.url!r} is not an http:// or https:// URL", parameter="url")
        headers: Any = self.headers
        if isinstance(headers, Mapping):
            headers = tuple(headers.items())
        _expect("headers", headers, (tuple, list), 'a table such as { "Authorization" = "..." }')
        for key, value in headers:
            _expect(f"headers.{key}", value, (str,), 'a string, or "env:NAME"')
        object.__setattr__(self, "headers", tuple((str(k), v) for k, v in headers))

    @property
    def effective_isolation(self) -> str:
        return self.isolation or "process"

    def arn(self, region: str, account_id: str) -> str:
        partition = (
            "aws-cn" if region.startswith("cn-") else "aws-us-gov" if "-gov-" in region else "aws"
        )
        return f"arn:{partition}:lambda:{region}:{account_id}:function:{self.name}"
