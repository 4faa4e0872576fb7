"""Configuration of the daemon around its mappings: the Kinesis endpoint, the state file, the
declared functions, the control plane, and the whole file (``DaemonConfig``). The TOML reading
is in ``_file``; the mapping settings in ``_mapping``, the error type in ``_errors``."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass

from ._arn import FUNCTION_REF, REGION, stable_uuid
from ._coordination import CoordinationConfig
from ._errors import RESOURCE_CONFLICT, ConfigError, _expect, _in_range
from ._functions import FunctionConfig
from ._mapping import EventSourceMappingConfig

__all__ = [
    "CONTROL_AUTH",
    "FUNCTION_QUALIFIERS",
    "ControlConfig",
    "DaemonConfig",
    "FunctionConfig",
    "FunctionRef",
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


# FunctionName as Lambda's model spells it: a name, an ARN or a partial ARN, each with an
# optional qualifier (a version or alias). kinesis-esm's functions have no published versions
# and no aliases, so $LATEST (the unpublished code) is the only qualifier that exists.
_FUNCTION_NAME = re.compile(
    rf"(?:arn:(?P<partition>aws[a-zA-Z-]*):lambda:)?(?:(?P<region>{REGION}):)?"
    r"(?:(?P<account>\d{12}):)?(?:function:)?(?P<name>[a-zA-Z0-9_.-]+)"
    r"(?::(?P<qualifier>\$LATEST(?:\.PUBLISHED)?|[a-zA-Z0-9_-]+))?"
)
FUNCTION_QUALIFIERS = ("$LATEST",)


def partition_of(region: str) -> str:
    return "aws-cn" if region.startswith("cn-") else "aws-us-gov" if "-gov-" in region else "aws"


@dataclass(frozen=True, slots=True)
class FunctionRef:
    """The parts of a FunctionName; those it does not spell are None."""

    name: str
    partition: str | None = None
    region: str | None = None
    account: str | None = None
    qualifier: str | None = None

    @classmethod
    def parse(cls, text: str) -> FunctionRef | None:
        m = _FUNCTION_NAME.fullmatch(text)
        if m is None:
            return None
        return cls(m["name"], m["partition"], m["region"], m["account"], m["qualifier"])

    def problem(self, region: str, account: str) -> str | None:
        """Why this names no function of a mapping whose stream is in ``region`` and
        ``account``: a declared function lives there (it is the FunctionArn the API answers)
        and has no versions or aliases. None when it does name one."""
        where = {"partition": partition_of(region), "region": region, "account": account}
        for part, expected in where.items():
            given = getattr(self, part)
            if given is not None and given != expected:
                return (
                    f"its {part} is {given}, but kinesis-esm's functions are in the stream's "
                    f"region and account ({region}, {account})"
                )
        if self.qualifier is not None and self.qualifier not in FUNCTION_QUALIFIERS:
            return (
                f"kinesis-esm's functions have no versions or aliases, so qualifier "
                f"{self.qualifier!r} does not exist (name the function alone, or with :$LATEST)"
            )
        return None

    def arn(self, region: str, account: str) -> str:
        """The FunctionArn Lambda answers, in ``region`` and ``account`` unless the reference
        names its own; qualified when the reference was."""
        region, account = self.region or region, self.account or account
        partition = self.partition or partition_of(region)
        qualifier = f":{self.qualifier}" if self.qualifier else ""
        return f"arn:{partition}:lambda:{region}:{account}:function:{self.name}{qualifier}"


CONTROL_AUTH = ("none", "sigv4", "bearer")
_TOKEN = re.compile(r"[!-~]+")
_HOST_NAME = re.compile(
    r"(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
)
_DESTINATION_PATTERN = re.compile(r"arn:[a-z*?-]+:(?:sqs|sns|s3|\*):[^\s]{0,2040}")


def _string_list(name: str, value: object) -> tuple[str, ...]:
    _expect(name, value, (tuple, list), "an array of strings")
    assert isinstance(value, (tuple, list))
    for item in value:
        _expect(name, item, (str,), "an array of strings")
    if len(value) > 1000:
        raise ConfigError(f"holds {len(value)} entries, at most 1000", parameter=name)
    return tuple(value)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """The control plane's listener. Any address but loopback requires ``auth``: SigV4 checked
    against ``access_key_id`` / ``secret_access_key``, or ``Authorization: Bearer <token>``
    (either may be set on loopback too). The guards of what the API may do are here as well:
    which Host names it answers, which on-failure destinations it may set, how many mappings
    the daemon holds (see docs/control-plane.md, "Safety")."""

    host: str = "127.0.0.1"
    port: int = 9001  # 0 picks a free port
    auth: str = "none"
    access_key_id: str | None = None
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    token: str | None = dataclasses.field(default=None, repr=False)
    # Host header names accepted besides the bound address (DNS rebinding guard); any port
    allowed_hosts: tuple[str, ...] = ()
    # file:// on-failure destinations set through the API must lie under this folder; None:
    # only the config file may name file:// destinations
    file_destinations_root: str | None = None
    # SQS, SNS and S3 destinations the API may set: ARN patterns (* and ? wildcards), besides
    # the destinations the config file names
    allowed_destinations: tuple[str, ...] = ()
    max_mappings: int = 100  # all mappings, the config file's included

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
        if self.token is not None and not _TOKEN.fullmatch(self.token):
            message = "must be printable ASCII without spaces (it is sent in a header)"
            raise ConfigError(message, parameter="token")
        self._check_guards()

    def _check_guards(self) -> None:
        """The API's guards: Host names, destinations it may set, the mapping cap."""
        hosts = _string_list("allowed_hosts", self.allowed_hosts)
        for host in hosts:
            if not _HOST_NAME.fullmatch(host):
                message = f"{host!r} is not a host name or IP address (with an optional :port)"
                raise ConfigError(message, parameter="allowed_hosts")
        object.__setattr__(self, "allowed_hosts", hosts)
        if (root := self.file_destinations_root) is not None:
            _expect("file_destinations_root", root, (str,), "a string (a folder)")
            if not root or "\0" in root:
                message = "must be a folder path"
                raise ConfigError(message, parameter="file_destinations_root")
        patterns = _string_list("allowed_destinations", self.allowed_destinations)
        for pattern in patterns:
            if pattern != "*" and not _DESTINATION_PATTERN.fullmatch(pattern):
                message = f"{pattern!r} is not an SQS, SNS or S3 ARN pattern"
                hint = 'e.g. "arn:aws:sqs:us-east-1:123456789012:esm-*", or "*" for any'
                raise ConfigError(message, parameter="allowed_destinations", hint=hint)
        object.__setattr__(self, "allowed_destinations", patterns)
        _in_range("max_mappings", self.max_mappings, 0, 10000)


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    kinesis: KinesisConfig = KinesisConfig()
    state: StateConfig = StateConfig()
    functions: tuple[FunctionConfig, ...] = ()
    event_source_mappings: tuple[EventSourceMappingConfig, ...] = ()
    control: ControlConfig = ControlConfig()
    coordination: CoordinationConfig = dataclasses.field(default_factory=CoordinationConfig)

    def __post_init__(self) -> None:
        if len(self.event_source_mappings) > self.control.max_mappings:
            message = (
                f"the config file declares {len(self.event_source_mappings)} mappings, more "
                f"than max_mappings = {self.control.max_mappings}"
            )
            raise ConfigError(message, parameter="control.max_mappings")
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
            ref = FunctionRef.parse(esm.function_name)
            if ref is not None and (why := ref.problem(esm.region, esm.account_id)) is not None:
                message = f"function {esm.function_name!r} does not exist: {why}"
                raise ConfigError(message, parameter=f"{parameter}.function_name")
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
