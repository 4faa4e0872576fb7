"""What a mapping's FunctionName refers to, resolved once and canonically.

A function declared in the config file lives in the region and account of the stream a mapping
reads (that is the FunctionArn the API answers) and has no versions or aliases, so ``rec``,
``rec:$LATEST``, ``123456789012:function:rec`` and the full ARN are one function: one mapping
per stream, as Lambda's ResourceConflictException says. A reference to another account, region
or partition, or a qualifier other than ``$LATEST``, names a function that does not exist here:
Lambda's ResourceNotFoundException.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import DaemonConfig, EventSourceMappingConfig, FunctionConfig
from ..config._daemon import FunctionRef
from ._model import RESOURCE_NOT_FOUND, MappingError, function_arn

__all__ = ["ResolvedFunction", "canonical_arn", "function_filter", "resolve_function"]

_LATEST = ":$LATEST"


def canonical_arn(arn: str) -> str:
    """A FunctionArn without the ``$LATEST`` qualifier: the identity conflicts compare."""
    return arn[: -len(_LATEST)] if arn.endswith(_LATEST) else arn


@dataclass(frozen=True, slots=True)
class ResolvedFunction:
    config: FunctionConfig
    arn: str  # FunctionArn as Lambda answers it: qualified when the request was


def _not_found(shown: str, why: str) -> MappingError:
    return MappingError(RESOURCE_NOT_FOUND, f"Function not found: {shown} ({why})")


def _undeclared(daemon: DaemonConfig, shown: str) -> MappingError:
    declared = ", ".join(sorted(f.name for f in daemon.functions)) or "none"
    why = f"kinesis-esm runs only functions declared in its config file; declared: {declared}"
    return _not_found(shown, why)


def resolve_function(daemon: DaemonConfig, config: EventSourceMappingConfig) -> ResolvedFunction:
    """The declared function ``config.function_name`` names, and its FunctionArn."""
    ref = FunctionRef.parse(config.function_name)
    region, account = config.region, config.account_id
    if ref is None:  # the configuration's own pattern check lets through only what parses
        raise _undeclared(daemon, function_arn(config, None))
    fn = next((f for f in daemon.functions if f.name == ref.name), None)
    if fn is None:
        raise _undeclared(daemon, function_arn(config, None))
    if (why := ref.problem(region, account)) is not None:
        given = config.function_name
        shown = given if given.startswith("arn:") else ref.arn(region, account)
        raise _not_found(shown, why)
    return ResolvedFunction(fn, ref.arn(region, account))


@dataclass(frozen=True, slots=True)
class FunctionFilter:
    """ListEventSourceMappings' FunctionName: the declared function and the parts it gave."""

    name: str
    ref: FunctionRef

    def matches(self, function: FunctionConfig | None, arn: str) -> bool:
        if function is None or function.name != self.name:
            return False
        # arn:<partition>:lambda:<region>:<account>:function:<name>
        parts = arn.split(":")
        given = {3: self.ref.region, 4: self.ref.account, 1: self.ref.partition}
        return all(value is None or parts[i] == value for i, value in given.items())


def function_filter(daemon: DaemonConfig, function_name: str) -> FunctionFilter:
    """The filter for ``function_name``; Lambda's not-found error for an undeclared function
    or a version or alias (none exists here)."""
    ref = FunctionRef.parse(function_name)
    if ref is None or daemon.function(ref.name) is None:
        raise _undeclared(daemon, function_name[:256])
    if ref.qualifier is not None and ref.qualifier != "$LATEST":
        raise _not_found(function_name, f"qualifier {ref.qualifier!r} does not exist here")
    return FunctionFilter(ref.name, ref)
