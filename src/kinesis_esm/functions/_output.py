"""An environment's standard output and error, line by line into the daemon's log.

Each line is logged on ``kinesis_esm.function.<name>`` prefixed with the request id of the
invocation in flight (``init`` during init, ``-`` between invocations). The pipes are read by
the event loop as data arrives, and read to the end synchronously when an invocation answers:
the environment flushes its output before it answers, so every line it wrote during the
invocation is tagged with that invocation, none with the next. (A runtime interface client may
still write after it posted its response: its invocation ends only when it asks for the next
one, so its output is switched over then.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

__all__ = ["OutputForwarder", "function_logger"]

MAX_LINE = 64 * 1024  # a longer run of output without a newline is logged in pieces
_READ = 64 * 1024


def function_logger(function_name: str) -> logging.Logger:
    return logging.getLogger(f"kinesis_esm.function.{function_name}")


class OutputForwarder:
    """One pipe from an environment (its read end, owned from here on)."""

    def __init__(self, fd: int, logger: logging.Logger, *, stream: str, environment: int) -> None:
        self.fd: int | None = fd
        self.logger = logger
        self.stream = stream
        self.environment = environment
        self.request_id = "init"
        self._partial = b""
        os.set_blocking(fd, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._read)

    def drain(self) -> None:
        """Log everything written so far (complete lines; a partial one stays for later)."""
        self._read()

    def end_invocation(self, next_tag: str = "-") -> None:
        """The invocation answered: its output is all in the pipe; log it, the last partial
        line too, then tag what follows with ``next_tag`` (default: between invocations)."""
        self._read()
        self._flush_partial()
        self.request_id = next_tag

    def close(self) -> None:
        if self.fd is None:
            return
        self._read()
        self._flush_partial()
        self._loop.remove_reader(self.fd)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None

    def _read(self) -> None:
        fd = self.fd
        if fd is None:
            return
        while True:
            try:
                chunk = os.read(fd, _READ)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            if not chunk:  # every writer is gone
                self._loop.remove_reader(fd)
                self._flush_partial()
                return
            self._lines(chunk)
            if len(chunk) < _READ:
                return

    def _lines(self, chunk: bytes) -> None:
        data = self._partial + chunk if self._partial else chunk
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            self._emit(line)
        while len(self._partial) > MAX_LINE:
            self._emit(self._partial[:MAX_LINE])
            self._partial = self._partial[MAX_LINE:]

    def _flush_partial(self) -> None:
        if self._partial:
            self._emit(self._partial)
            self._partial = b""

    def _emit(self, line: bytes) -> None:
        # Lambda's runtime separates the lines of one error record with \r
        text = line.decode("utf-8", "replace").rstrip("\r").replace("\r", "\n")
        self.logger.info(
            "%s %s",
            self.request_id,
            text,
            extra={
                "aws_request_id": self.request_id,
                "stream": self.stream,
                "environment": self.environment,
            },
        )
