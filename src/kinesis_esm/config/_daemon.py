"""Configuration of the daemon around its mappings: the Kinesis endpoint, the state file, the
declared functions, the control plane, and the whole file (``DaemonConfig``). The TOML reading
is in ``_file``; the mapping settings in ``_mapping``, the error type in ``_errors``."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass

from ._arn import FUNCTION_REF, REGION, stable_uuid
from ._errors import RESOURCE_CONFLICT, ConfigError, _expect, _in_range
from ._functions import FunctionConfig
from ._mapping import EventSourceMappingConfig

__all__ = [
    "CONTROL_AUTH",
    "ControlConfig",
    "DaemonConfig",
    "FunctionConfig",
    "KinesisConfig",
    "StateConfig",
]


@dataclass(frozen=True, slots=True)
class KinesisConfig:
    endpoint_url: str | None = None
    region: str | None = None

    def __post_init__(self) -> None:
        if self.endpoint_url is not None:
            _expect("endpoint_url", self.endpoint_url, (str,), "a string")
            if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", self.endpoint_url):
                message = f"{self.endpoint_url!r} is not an http:// or https:// URL"
                raise ConfigError(message, parameter="endpoint_url")
        if self.region is not None:
            _expect("region", self.region, (str,), "a string")
            if not re.fullmatch(REGION, self.region):
                message = f"{self.region!r} is not an AWS region name"
                raise ConfigError(message, parameter="region", hint="e.g. us-east-1")


@dataclass(frozen=True, slots=True)
class StateConfig:
    path: str = "kinesis-esm.db"

    def __post_init__(self) -> None:
        _expect("path", self.path, (str,), "a string")
        if not self.path:
            raise ConfigError("must not be empty", parameter="path")


CONTROL_AUTH = ("none", "sigv4", "bearer")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """The control plane's listener. Any address but loopback requires ``auth``: SigV4 checked
    against ``access_key_id`` / ``secret_access_key``, or ``Authorization: Bearer <token>``."""

    host: str = "127.0.0.1"
    port: int = 9001  # 0 picks a free port
    auth: str = "none"
    access_key_id: str | None = None
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    token: str | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        _expect("host", self.host, (str,), "a string")
        if not self.host:
            raise ConfigError("must not be empty", parameter="host")
        _in_range("port", self.port, 0, 65535)
        _expect("auth", self.auth, (str,), "a string")
        if self.auth not in CONTROL_AUTH:
            message = f"{self.auth!r} is not one of {', '.join(CONTROL_AUTH)}"
            raise ConfigError(message, parameter="auth")
        for name in ("access_key_id", "secret_access_key", "token"):
            if (value := getattr(self, name)) is not None:
                _expect(name, value, (str,), "a string")
                if not value:
                    raise ConfigError("must not be empty", parameter=name)
        if self.auth == "none" and not _is_loopback(self.host):
            message = f"binding {self.host} (not a loopback address) requires authentication"
            hint = 'set auth = "sigv4" (with access_key_id, secret_access_key) or "bearer" (token)'
            raise ConfigError(message, parameter="auth", hint=hint)
        if self.auth == "sigv4" and not (self.access_key_id and self.secret_access_key):
            message = 'auth = "sigv4" needs access_key_id and secret_access_key'
            raise ConfigError(message, parameter="auth")
        if self.auth == "bearer" and self.token is None:
            raise ConfigError('auth = "bearer" needs token', parameter="auth")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("must be at least 16 characters", parameter="token")


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    kinesis: KinesisConfig = KinesisConfig()
    state: StateConfig = StateConfig()
    functions: tuple[FunctionConfig, ...] = ()
    event_source_mappings: tuple[EventSourceMappingConfig, ...] = ()
    control: ControlConfig = ControlConfig()

    def __post_init__(self) -> None:
        names = [fn.name for fn in self.functions]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(
                    f"function {name!r} is declared twice", parameter=f"functions.{name}"
                )
        seen: dict[tuple[str, str], str] = {}  # (function, event source) -> UUID
        for i, esm in enumerate(self.event_source_mappings):
            parameter = f"event_source_mappings[{i}]"
            if (fn := self.function(esm.function_name)) is None:
                message = f"function {esm.function_name!r} is not declared under [functions]"
                hint = f"declared: {', '.join(sorted(names)) or 'none'}"
                raise ConfigError(message, parameter=f"{parameter}.function_name", hint=hint)
            if (existing := seen.get((fn.name, esm.event_source_arn))) is not None:
                message = (
                    f'The event source arn (" {esm.event_source_arn} ") and function (" '
                    f'{esm.function_name} ") provided mapping already exists. Please update or '
                    f"delete the existing mapping with UUID {existing}"
                )
                raise ConfigError(message, parameter=parameter, code=RESOURCE_CONFLICT)
            uuid = esm.uuid or stable_uuid(esm.function_name, esm.event_source_arn)
            if uuid in seen.values():
                message = f"uuid {uuid} is already used by another mapping"
                raise ConfigError(message, parameter=f"{parameter}.uuid")
            seen[(fn.name, esm.event_source_arn)] = uuid

    def function(self, name_or_arn: str) -> FunctionConfig | None:
        """The declared function a FunctionName refers to: name, ARN or partial ARN, qualifier
        allowed (an ARN's region and account are not compared: functions run here)."""
        m = FUNCTION_REF.fullmatch(name_or_arn)
        name = m["name"] if m else name_or_arn
        return next((fn for fn in self.functions if fn.name == name), None)
