"""Which on-failure destinations a mapping may be given through the API.

On AWS, IAM decides where a mapping may send its failure reports. Here whoever reaches the API
would route stream data anywhere the daemon's credentials can write, or to any file the daemon
can create, so the API may set only:

* a destination the config file names (the operator chose it);
* an SQS, SNS or S3 ARN matching a pattern of ``[control] allowed_destinations`` (``*`` any
  run of characters, ``?`` one, as in IAM);
* a ``file://`` path under ``[control] file_destinations_root``: no ``..`` part, and the path,
  once every symlink in it is followed, still under the root (also resolved).

The config file's own mappings are not checked: the file is the operator's word.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import INVALID_PARAMETER_VALUE, DaemonConfig
from ._model import MappingError

__all__ = ["DestinationPolicy"]

_FILE = "file://"
_PARAMETER = "DestinationConfig.OnFailure.Destination"


def _pattern(glob: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile("".join(parts), re.DOTALL)


def _refused(destination: str, why: str) -> MappingError:
    shown = destination if len(destination) <= 400 else f"{destination[:400]}..."
    return MappingError(INVALID_PARAMETER_VALUE, f"{_PARAMETER}: {shown!r} {why}")


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    named: frozenset[str]  # the config file's destinations
    patterns: tuple[re.Pattern[str], ...]
    root: str | None

    @classmethod
    def of(cls, daemon: DaemonConfig) -> DestinationPolicy:
        named = {m.destination_config.on_failure.destination for m in daemon.event_source_mappings}
        control = daemon.control
        return cls(
            named=frozenset(d for d in named if d),
            patterns=tuple(_pattern(p) for p in control.allowed_destinations),
            root=control.file_destinations_root,
        )

    def check(self, destination: str | None) -> None:
        """Raise Lambda's InvalidParameterValueException unless the API may set it."""
        if not destination or destination in self.named:
            return
        if destination.startswith(_FILE):
            self._check_file(destination)
        elif not any(p.fullmatch(destination) for p in self.patterns):
            raise _refused(
                destination,
                "is not allowed through the API: only the destinations the config file names "
                "and those matching [control] allowed_destinations are",
            )

    def _check_file(self, destination: str) -> None:
        if self.root is None:
            raise _refused(
                destination,
                "is not allowed through the API: file:// destinations come from the config "
                "file, or lie under [control] file_destinations_root (not set)",
            )
        outside = _refused(
            destination, f"is outside [control] file_destinations_root ({self.root})"
        )
        text = destination[len(_FILE) :]
        if not text or not text.isprintable() or ".." in Path(text).parts:
            raise outside
        try:
            root = Path(self.root).resolve()
            literal = Path(os.path.abspath(text))
            resolved = literal.resolve()  # follows every symlink that exists
        except (OSError, ValueError, RuntimeError):  # a NUL, an encoding, a symlink loop
            raise outside from None
        inside = literal.is_relative_to(Path(os.path.abspath(self.root))) or literal.is_relative_to(
            root
        )
        if not inside or not resolved.is_relative_to(root) or resolved == root:
            raise outside
