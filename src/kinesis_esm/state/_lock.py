"""One daemon per state file: an exclusive lock on ``<state file>.lock``.

Two daemons on one SQLite file would both read every shard and overwrite each other's
checkpoints. The lock is ``flock(LOCK_EX | LOCK_NB)`` on a file next to the state file: the OS
drops it when the process exits, however it exits (kill -9 included), so a stale lock file never
blocks a restart. The file holds the holder's pid, for the message; it is never deleted (deleting
it would let a third process lock a new file while the second still holds the old one).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from .._errors import KinesisESMError

__all__ = ["StateFileInUseError", "StateFileLock"]


class StateFileInUseError(KinesisESMError, OSError):
    """Another process holds the state file's lock (an OSError: the CLI reports it in one line)."""


class StateFileLock:
    """``with StateFileLock(path):`` holds the lock of state file ``path`` (":memory:": none)."""

    def __init__(self, state_path: str | os.PathLike[str]) -> None:
        self.state_path = os.fspath(state_path)
        self.path = Path(f"{self.state_path}.lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None or self.state_path == ":memory:":
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise StateFileInUseError(
                f"the state file {self.state_path} is in use by another kinesis-esm daemon{who}: "
                "two daemons on one state file would both read every shard. Stop it, give this "
                "one its own [state] path, or run both as a fleet ([coordination] backend = "
                '"dynamodb", see docs/fleet.md)'
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the lock

    def __enter__(self) -> StateFileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text else None
    return None
