"""`kinesis-esm run` as a subprocess of a test: its own session (so a test can signal it alone),
no standard input, its output appended to a file."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["CLI", "start_daemon"]

CLI = Path(sys.executable).with_name("kinesis-esm")


def start_daemon(config: Path, env: Mapping[str, str], out: Path) -> subprocess.Popen[bytes]:
    """Start ``kinesis-esm run --config config`` in the config file's folder."""
    with out.open("ab") as sink:
        return subprocess.Popen(
            [str(CLI), "run", "--config", str(config)],
            cwd=config.parent,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
