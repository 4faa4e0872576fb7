"""The child side of an execution environment (``isolation = "process"``).

The daemon starts ``python <this file> --fd N --handler SPEC --memory-size MB``; the process
imports the handler once (init) and then runs one invocation at a time, for as long as the
daemon keeps it. It is started by file path, not with ``-m``, so that it does not import the
kinesis-esm package (0.4 s and 50 MB per environment): it needs the standard library, orjson
when the interpreter has it, and ``_context.py`` next to it.

Frames, both ways, on the socket at fd N: an 8-byte header (two big-endian unsigned 32-bit
lengths), a JSON object (``meta``) and a body of bytes. The daemon sends ``invoke`` frames (the
body is the event as JSON); the worker answers ``ready`` or ``init_error`` once, then ``result``
(the body is the response: JSON, or raw bytes when ``raw``), ``error`` (Lambda's error document
in ``meta``) or ``oom`` per invocation. End of file on the socket means: stop.

Standard output and standard error are the daemon's pipes into its log; both are flushed
before every answer, so the daemon can tag each line with the invocation it belongs to.
"""

from __future__ import annotations

import argparse
import decimal
import faulthandler
import importlib
import importlib.util
import json
import os
import resource
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import asyncio

    from ._context import LambdaContext

try:
    import orjson
except ImportError:  # another interpreter, without orjson: the standard json module
    orjson = None  # type: ignore[assignment]

__all__ = ["HEADER", "MEMORY_HEADROOM_MB", "decode_meta", "encode_frame", "main"]

HEADER = struct.Struct("!II")  # meta length, body length
# Address space allowed beyond memory_size, above what the worker uses before the handler
# import: Python and its allocator reserve address space they never touch (thread stacks of
# 8 MB, malloc arenas of 64 MB), which RLIMIT_AS counts although it is not memory.
MEMORY_HEADROOM_MB = 128
EXIT_OUT_OF_MEMORY = 86  # when even the ``oom`` frame cannot be sent
OOM_FRAME = b""  # built in main(), before any limit applies


def encode_frame(meta: dict[str, Any], body: bytes = b"") -> bytes:
    raw = _dumps(meta)
    return HEADER.pack(len(raw), len(body)) + raw + body


def decode_meta(raw: bytes) -> dict[str, Any]:
    value = _loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"a frame's meta is a {type(value).__name__}, not an object")
    return value


def _dumps(value: Any) -> bytes:
    if orjson is not None:
        return orjson.dumps(value)
    return json.dumps(value, separators=(",", ":")).encode()


def _loads(raw: bytes) -> Any:
    return orjson.loads(raw) if orjson is not None else json.loads(raw)


def _json_default(value: object) -> object:
    if isinstance(value, decimal.Decimal):  # Lambda's Python runtime serializes Decimal
        return float(value) if value % 1 else int(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def marshal_response(value: Any) -> tuple[bytes, bool]:
    """The response body and whether it is raw bytes; TypeError/ValueError when Lambda's Python
    runtime could not serialize it either."""
    if isinstance(value, bytes | bytearray):
        return bytes(value), True
    if orjson is not None:
        try:
            return orjson.dumps(value), False
        except TypeError:
            pass  # int keys, big ints, Decimal: the standard json module takes them
    return json.dumps(value, default=_json_default).encode(), False


class _Fault(Exception):
    """An init failure with Lambda's error type."""

    def __init__(self, error_type: str, message: str, trace: list[str] | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.trace = trace or []


def error_document(exc: BaseException, request_id: str = "") -> dict[str, Any]:
    """Lambda's error document for an exception, without the worker's own frames."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename != __file__ and not frame.filename.startswith("<frozen importlib")
    ]
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "requestId": request_id,
        "stackTrace": traceback.format_list(frames),
    }


def load_handler(spec: str) -> Callable[..., Any]:
    """``package.module:function`` (kinesis-esm) or ``package.module.function`` (Lambda)."""
    if ":" in spec:
        module_name, _, attr_path = spec.partition(":")
    else:
        module_name, _, attr_path = spec.rpartition(".")
    if not module_name or not attr_path:
        message = f"Bad handler '{spec}': not enough values to unpack (expected 2, got 1)"
        raise _Fault("Runtime.MalformedHandlerName", message)
    if module_name.split(".")[0] in sys.builtin_module_names:
        message = f"Cannot use built-in module {module_name} as a handler module"
        raise _Fault("Runtime.BuiltInModuleConflict", message)
    try:
        target: Any = importlib.import_module(module_name.replace("/", "."))
    except ImportError as exc:
        raise _Fault(
            "Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}"
        ) from exc
    except SyntaxError as exc:
        trace = [f'  File "{exc.filename}" Line {exc.lineno}\n    {exc.text}']
        message = f"Syntax error in module '{module_name}': {exc}"
        raise _Fault("Runtime.UserCodeSyntaxError", message, trace) from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            message = f"Handler '{attr_path}' missing on module '{module_name}'"
            raise _Fault("Runtime.HandlerNotFound", message) from None
    if not callable(target):
        message = f"Handler '{attr_path}' on module '{module_name}' is not callable"
        raise _Fault("Runtime.HandlerNotFound", message)
    return target  # type: ignore[no-any-return]


def limit_memory(memory_size_mb: int) -> int | None:
    """Cap the address space at memory_size plus headroom above today's; the cap, or None."""
    if memory_size_mb <= 0 or not sys.platform.startswith("linux"):
        return None  # RLIMIT_AS is not enforced on macOS; other platforms lack it
    with open("/proc/self/statm", "rb") as statm:
        in_use = int(statm.read().split()[0]) * resource.getpagesize()
    cap = in_use + (memory_size_mb + MEMORY_HEADROOM_MB) * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    # the hard limit too: a handler cannot lift it again
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return cap


def _context_class() -> type[LambdaContext]:
    if __package__:
        from ._context import LambdaContext

        return LambdaContext
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_context.py")
    spec = importlib.util.spec_from_file_location("kinesis_esm_lambda_context", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cls: type[LambdaContext] = module.LambdaContext
    return cls


class Worker:
    """One environment's invocation loop."""

    def __init__(self, sock: socket.socket, handler: Callable[..., Any]) -> None:
        self.sock = sock
        self.reader: BinaryIO = sock.makefile("rb")
        self.handler = handler
        self.context_class = _context_class()
        self.loop: asyncio.AbstractEventLoop | None = None  # for async handlers, kept warm
        env = os.environ
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.memory = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
        self.version = env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.log_group = env.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream = env.get("AWS_LAMBDA_LOG_STREAM_NAME")

    def receive(self) -> tuple[dict[str, Any], bytes] | None:
        header = self.reader.read(HEADER.size)
        if len(header) < HEADER.size:
            return None  # the daemon closed the channel: stop
        meta_len, body_len = HEADER.unpack(header)
        meta = decode_meta(self.reader.read(meta_len))
        body = self.reader.read(body_len)
        if len(body) < body_len:
            return None
        return meta, body

    def send(self, meta: dict[str, Any], body: bytes = b"") -> None:
        sys.stdout.flush()  # every line of this invocation is in the pipe before its answer
        sys.stderr.flush()
        self.sock.sendall(encode_frame(meta, body))

    def serve(self) -> int:
        while True:
            message = self.receive()
            if message is None:
                return 0
            meta, body = message
            try:
                self.invoke(meta, body)
            except MemoryError:
                self.out_of_memory()
            except BaseException:
                # sys.exit() or the like ends this environment, as it ends Lambda's runtime:
                # close the channel first, so the daemon learns at once, then exit as asked
                self.sock.close()
                raise

    def invoke(self, meta: dict[str, Any], body: bytes) -> None:
        request_id: str = meta["id"]
        trace_id = meta.get("trace")
        if trace_id:
            os.environ["_X_AMZN_TRACE_ID"] = trace_id
        else:
            os.environ.pop("_X_AMZN_TRACE_ID", None)
        context = self.context_class(
            self.function_name,
            meta.get("arn") or "",
            self.memory,
            0.0,
            request_id,
            function_version=self.version,
            log_group_name=self.log_group,
            log_stream_name=self.log_stream,
            deadline_ms=meta["deadline"],
            client_context=meta.get("client_context"),
            cognito_identity=meta.get("cognito_identity"),
        )
        try:
            value = self.handler(_loads(body), context)
            if hasattr(value, "__await__"):  # an async handler: run on this worker's loop
                value = self._run(value)
        except (MemoryError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            self.send({"t": "error", "error": error_document(exc, request_id)})
            return
        try:
            response, raw = marshal_response(value)
        except (TypeError, ValueError) as exc:
            document = {
                "errorMessage": f"Unable to marshal response: {exc}",
                "errorType": "Runtime.MarshalError",
                "requestId": request_id,
                "stackTrace": [],
            }
            self.send({"t": "error", "error": document})
            return
        self.send({"t": "result", "raw": raw}, response)

    def _run(self, awaitable: Any) -> Any:
        import asyncio  # only for async handlers: a worker starts faster without it

        if self.loop is None:  # one loop for the environment's life: clients made on it stay
            self.loop = asyncio.new_event_loop()

        async def wait() -> Any:
            return await awaitable

        return self.loop.run_until_complete(wait())

    def out_of_memory(self) -> None:
        """The environment ran out of memory: say so if possible, and end it."""
        try:
            self.sock.sendall(OOM_FRAME)
        finally:
            os._exit(EXIT_OUT_OF_MEMORY)


def main(argv: list[str] | None = None) -> int:
    global OOM_FRAME
    parser = argparse.ArgumentParser(prog="kinesis-esm-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--handler", required=True)
    parser.add_argument("--memory-size", type=int, default=0, help="MB; 0: no limit")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    faulthandler.enable()  # a segfault prints the Python stack to stderr, i.e. the log
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]  # started by file path: our own directory is no place for imports
    task_root = os.getcwd()
    if task_root not in sys.path:
        sys.path.insert(0, task_root)
    sock = socket.socket(fileno=args.fd)
    sock.set_inheritable(False)  # a program the handler runs must not hold the channel open
    OOM_FRAME = encode_frame({"t": "oom"})
    try:
        cap = limit_memory(args.memory_size)
        handler = load_handler(args.handler)
        worker = Worker(sock, handler)
    except _Fault as fault:
        document = {
            "errorMessage": fault.message,
            "errorType": fault.error_type,
            "requestId": "",
            "stackTrace": fault.trace,
        }
        _send_init_error(sock, document)
        return 1
    except MemoryError:
        _send_init_error(sock, {"errorMessage": "", "errorType": "Runtime.OutOfMemory"})
        return EXIT_OUT_OF_MEMORY
    except Exception as exc:  # the module raised while it was imported
        _send_init_error(sock, error_document(exc))
        return 1
    worker.send({"t": "ready", "init": time.perf_counter() - started, "address_space": cap})
    return worker.serve()


def _send_init_error(sock: socket.socket, document: dict[str, Any]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    traceback_text = "".join(document.get("stackTrace") or [])
    print(
        f"[ERROR] {document['errorType']}: {document['errorMessage']}\n{traceback_text}".rstrip(),
        file=sys.stderr,
        flush=True,
    )
    sock.sendall(encode_frame({"t": "init_error", "error": document}))


if __name__ == "__main__":
    sys.exit(main())
