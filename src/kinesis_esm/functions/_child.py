"""One environment's process: started fresh (never a fork of the daemon), its stdout and stderr
forwarded to the log, its exit noticed through a callback, and stopped within bounds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

from ._output import OutputForwarder

__all__ = ["ChildProcess"]

EXIT_WAIT = 2.0  # seconds to wait for an exit status before SIGKILL, and again after it


class _ExitWatch(asyncio.SubprocessProtocol):
    def __init__(self, on_exit: Callable[[], None]) -> None:
        self.on_exit = on_exit

    def process_exited(self) -> None:
        self.on_exit()


# An environment must not outlive its daemon: after a kill -9 of the daemon, a worker left
# running would finish its batch behind the restarted daemon's back. On Linux the child asks
# for SIGKILL when its parent dies (PR_SET_PDEATHSIG survives the exec), then checks that the
# parent did not die already, and execs the command. Elsewhere the command runs as it is.
_GUARD = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _guarded(command: Sequence[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, "-I", "-S", "-c", _GUARD, str(os.getpid()), *command]


class ChildProcess:
    def __init__(self) -> None:
        self._transport: asyncio.SubprocessTransport | None = None
        self._outputs: list[OutputForwarder] = []
        self._exit: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._on_exit: Callable[[], None] = lambda: None

    @classmethod
    async def spawn(
        cls,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        logger: logging.Logger,
        number: int,
        on_exit: Callable[[], None],
        pass_fds: Sequence[int] = (),
    ) -> ChildProcess:
        child = cls()
        child._on_exit = on_exit
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
                child._outputs.append(
                    OutputForwarder(fd, logger, stream=stream, environment=number)
                )
            child._transport, _ = await loop.subprocess_exec(
                lambda: _ExitWatch(child._exited),
                *_guarded(command),
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                pass_fds=tuple(pass_fds),
                env=dict(env),
                cwd=cwd,
                start_new_session=True,  # the terminal's Ctrl-C is the daemon's to handle
            )
        except BaseException:
            child.close_outputs()
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        return child

    @property
    def pid(self) -> int | None:
        return self._transport.get_pid() if self._transport is not None else None

    @property
    def exited(self) -> bool:
        return self._exit.done()

    @property
    def returncode(self) -> int | None:
        return self._exit.result() if self._exit.done() else None

    def _exited(self) -> None:
        if not self._exit.done() and self._transport is not None:
            self._exit.set_result(self._transport.get_returncode())
        self._on_exit()

    def tag(self, request_id: str) -> None:
        """Output from now on belongs to this invocation."""
        for output in self._outputs:
            output.request_id = request_id

    def end_invocation(self, next_tag: str = "-") -> None:
        """Log all output written so far under the current tag, then switch to ``next_tag``."""
        for output in self._outputs:
            output.end_invocation(next_tag)

    def drain(self) -> None:
        """Log the complete lines written so far, keeping the tag."""
        for output in self._outputs:
            output.drain()

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        if self._transport is not None and not self._exit.done():
            with contextlib.suppress(ProcessLookupError):
                self._transport.send_signal(signum)

    async def wait(self, within: float = EXIT_WAIT) -> int | None:
        """The exit status, waiting at most ``within`` seconds; then SIGKILL and a last wait."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                return await asyncio.shield(self._exit)
        self.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_WAIT):
                return await asyncio.shield(self._exit)
        return None

    async def stop(self, grace: float, *, terminate: bool) -> None:
        """End the process (SIGTERM first if ``terminate``; else it is expected to exit on its
        own), SIGKILL after ``grace``, and release its pipes."""
        if terminate:
            self.terminate()
        await self.wait(grace)
        if self._transport is not None:
            self._transport.close()
        self.close_outputs()

    def close_outputs(self) -> None:
        for output in self._outputs:
            output.close()
        self._outputs.clear()
