"""Real emulator processes on 127.0.0.1 for the tests and the benchmarks.

Every emulator is a subprocess in its own process group, with its stdout and stderr in a log file
of its own temporary folder. The same object can be started, stopped, killed and restarted; it
keeps its ports, so clients keep their endpoint across restarts. Use them as context managers::

    with KinesisMock() as km:
        ...  # km.endpoint_url

Node emulators run with ``force-loopback.js`` preloaded, so every listener binds 127.0.0.1, and
`start()` checks in /proc/net/tcp that nothing of theirs listens on another address.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Self

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
EMULATORS_DIR = REPO_ROOT / "scripts" / "emulators"
NODE_MODULES = EMULATORS_DIR / "node_modules"
FORCE_LOOPBACK_JS = Path(__file__).resolve().parent / "force-loopback.js"
BOOTSTRAP_HINT = "run `scripts/bootstrap --emulators` from the repository root"

_LISTEN_STATE = "0A"


class EmulatorError(RuntimeError):
    """An emulator is missing, did not start, or listens where it must not."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _decode_proc_address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc/net/tcp* prints the address as 32-bit words in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _listening_sockets(port: int) -> list[tuple[str, int]]:
    """(local address, socket inode) of every listening TCP socket on `port`, from /proc."""
    found: list[tuple[str, int]] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN_STATE:
                continue
            hex_address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port:
                found.append((_decode_proc_address(hex_address), int(fields[9])))
    return found


def listening_addresses(port: int) -> list[str]:
    """Local addresses of every listening TCP socket on `port` (Linux, from /proc/net/tcp*)."""
    return [address for address, _ in _listening_sockets(port)]


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def kinesis_answers(port: int, timeout: float = 1.0) -> bool:
    """True when an HTTP server on 127.0.0.1:`port` answers a Kinesis ListStreams POST at all."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request(
            "POST",
            "/",
            body=b"{}",
            headers={
                "X-Amz-Target": "Kinesis_20131202.ListStreams",
                "Content-Type": "application/x-amz-json-1.1",
            },
        )
        connection.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _require_node_script(script: Path) -> str:
    node = shutil.which("node")
    if node is None:
        raise EmulatorError(f"Node.js (`node`) is not on PATH; install it, then {BOOTSTRAP_HINT}")
    if not script.is_file():
        raise EmulatorError(f"{script} is missing; {BOOTSTRAP_HINT}")
    return node


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _finalize(process_holder: list[subprocess.Popen[bytes]]) -> None:
    """Last-resort cleanup at garbage collection or interpreter exit: kill the process group."""
    for process in process_holder:
        if process.poll() is None:
            _signal_group(process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


class EmulatorProcess:
    """Base class: one server subprocess on fixed 127.0.0.1 ports, restartable."""

    name = "emulator"

    def __init__(self, *, port: int | None = None, startup_timeout: float = 60.0) -> None:
        self._fixed_port = port is not None
        self.port: int = port if port is not None else free_port()
        self.startup_timeout = startup_timeout
        self._tempdir = tempfile.TemporaryDirectory(prefix=f"kinesis-esm-{self.name}-")
        self.workdir = Path(self._tempdir.name)
        self.log_path = self.workdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        # A list the finalizer shares, so it sees the current process without keeping self alive.
        self._processes: list[subprocess.Popen[bytes]] = []
        self._finalizer = weakref.finalize(self, _finalize, self._processes)
        self.last_start_seconds: float | None = None

    # What subclasses provide.

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def ports(self) -> list[int]:
        """Every port the process listens on (checked for loopback-only after start)."""
        return [self.port]

    def is_ready(self) -> bool:
        return kinesis_answers(self.port)

    def _pick_new_ports(self) -> None:
        self.port = free_port()

    # Public API.

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> Self:
        """Start the process and wait (bounded) until it answers HTTP on 127.0.0.1."""
        if self.running:
            return self
        attempts = 1 if self._fixed_port else 3
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
                return self
            except EmulatorError as error:
                port_taken = "EADDRINUSE" in str(error) or "already in use" in str(error)
                if not port_taken or attempt == attempts:
                    raise
                self._pick_new_ports()  # lost a race for the free port: pick others
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, wait up to `timeout`, then SIGKILL it."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout)
        self._reap(process)

    def kill(self) -> None:
        """SIGKILL the process group at once (a crash, as far as the emulator can tell)."""
        process = self._process
        if process is None:
            return
        self._reap(process)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the process and remove its temporary folder (logs, data)."""
        self.stop()
        self._tempdir.cleanup()

    def log_tail(self, max_bytes: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode("utf-8", errors="replace")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.endpoint_url} {state} log={self.log_path}>"

    # Internals.

    def _start_once(self) -> None:
        command = self.command()
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals the whole group
            )
        self._process = process
        self._processes[:] = [process]
        began = time.monotonic()
        deadline = began + self.startup_timeout
        while True:
            if process.poll() is not None:
                self._reap(process)
                raise EmulatorError(
                    f"{self.name} exited with code {process.returncode} before it was ready "
                    f"on {self.endpoint_url}.\ncommand: {' '.join(command)}\n"
                    f"log {self.log_path} ends with:\n{self.log_tail()}"
                )
            if self.is_ready() and self._owns_listener(process):
                break
            if time.monotonic() >= deadline:
                self._reap(process)
                raise EmulatorError(
                    f"{self.name} did not answer on {self.endpoint_url} within "
                    f"{self.startup_timeout:.0f} s.\ncommand: {' '.join(command)}\n"
                    f"log {self.log_path} ends with:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        self.last_start_seconds = time.monotonic() - began
        self._check_loopback_only()

    def _owns_listener(self, process: subprocess.Popen[bytes]) -> bool:
        """Whether the answering listener is this process's, not a stranger's on the same port."""
        if not Path("/proc/net/tcp").exists():
            return True  # not Linux: trust the HTTP answer
        inodes = {inode for _, inode in _listening_sockets(self.port)}
        return bool(inodes & _socket_inodes(process.pid))

    def _check_loopback_only(self) -> None:
        for port in self.ports():
            wrong = [address for address in listening_addresses(port) if address != HOST]
            if wrong:
                self.kill()
                raise EmulatorError(
                    f"{self.name} listened on {wrong} port {port}; only {HOST} is allowed"
                )

    def _reap(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL whatever is left of the process group and wait (bounded) for the leader."""
        _signal_group(process, signal.SIGKILL)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired as error:
            raise EmulatorError(f"{self.name} (pid {process.pid}) survived SIGKILL") from error


class KinesisMock(EmulatorProcess):
    """kinesis-mock (npm `kinesis-local`): the most faithful Kinesis. Slow to fill.

    With ``persist=True`` it saves its state to ``workdir/data`` every `persist_interval_ms` and
    loads it on start, so a test can stop or kill it and restart it keeping the streams. A kill
    loses whatever changed since the last save, so wait longer than the interval before killing.
    """

    name = "kinesis-mock"
    PACKAGE = NODE_MODULES / "kinesis-local"
    DURATION_VARIABLES = (
        "CREATE_STREAM_DURATION",
        "DELETE_STREAM_DURATION",
        "REGISTER_STREAM_CONSUMER_DURATION",
        "DEREGISTER_STREAM_CONSUMER_DURATION",
        "START_STREAM_ENCRYPTION_DURATION",
        "STOP_STREAM_ENCRYPTION_DURATION",
        "MERGE_SHARDS_DURATION",
        "SPLIT_SHARD_DURATION",
        "UPDATE_SHARD_COUNT_DURATION",
        "UPDATE_STREAM_MODE_DURATION",
    )

    def __init__(
        self,
        *,
        port: int | None = None,
        tls_port: int | None = None,
        shard_limit: int = 10_000,
        persist: bool = False,
        persist_interval_ms: int = 200,
        startup_timeout: float = 60.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(port=port, startup_timeout=startup_timeout)
        self.tls_port: int = tls_port if tls_port is not None else free_port()
        self.shard_limit = shard_limit
        self.persist = persist
        self.persist_interval_ms = persist_interval_ms
        self.extra_env = dict(extra_env or {})

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def command(self) -> list[str]:
        main_js = self.PACKAGE / "main.js"
        node = _require_node_script(main_js)
        return [node, "-r", str(FORCE_LOOPBACK_JS), str(main_js)]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env.update({name: "0ms" for name in self.DURATION_VARIABLES})
        env.update(
            {
                "KINESIS_MOCK_PLAIN_PORT": str(self.port),
                "KINESIS_MOCK_TLS_PORT": str(self.tls_port),
                # main.js reads its TLS certificate relative to the working directory by default.
                "KINESIS_MOCK_CERT_PATH": str(self.PACKAGE / "server.json"),
                "SHARD_LIMIT": str(self.shard_limit),
                "ON_DEMAND_STREAM_COUNT_LIMIT": "1000",
                "AWS_REGION": "us-east-1",
                "LOG_LEVEL": "WARN",
                "ROOT_LOG_LEVEL": "ERROR",
                "SHOULD_PERSIST_DATA": "true" if self.persist else "false",
                "LOAD_DATA_IF_EXISTS": "true" if self.persist else "false",
                "PERSIST_PATH": str(self.data_dir),
                "PERSIST_INTERVAL": f"{self.persist_interval_ms}ms",
            }
        )
        env.update(self.extra_env)
        return env

    def ports(self) -> list[int]:
        return [self.port, self.tls_port]

    def _pick_new_ports(self) -> None:
        self.port = free_port()
        self.tls_port = free_port()


class Kinesalite(EmulatorProcess):
    """kinesalite, in memory: fast, for data-plane tests and benchmarks (no ChildShards, no EFO)."""

    name = "kinesalite"
    PACKAGE = NODE_MODULES / "kinesalite"

    def __init__(
        self, *, port: int | None = None, shard_limit: int = 1000, startup_timeout: float = 60.0
    ) -> None:
        super().__init__(port=port, startup_timeout=startup_timeout)
        self.shard_limit = shard_limit

    def command(self) -> list[str]:
        cli_js = self.PACKAGE / "cli.js"
        node = _require_node_script(cli_js)
        # No --path: kinesalite keeps its data in memdown, so leveldown's native build is unused.
        return [
            node,
            "-r",
            str(FORCE_LOOPBACK_JS),
            str(cli_js),
            "--port",
            str(self.port),
            "--createStreamMs",
            "0",
            "--deleteStreamMs",
            "0",
            "--updateStreamMs",
            "0",
            "--shardLimit",
            str(self.shard_limit),
        ]


class MotoServer(EmulatorProcess):
    """moto's server in a subprocess: Kinesis, DynamoDB, SQS, SNS, S3, CloudWatch."""

    name = "moto"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]

    def is_ready(self) -> bool:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=1.0)
        try:
            connection.request("GET", "/moto-api/data.json")
            connection.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def reset(self, timeout: float = 10.0) -> None:
        """Clear every service's state (`POST /moto-api/reset`)."""
        connection = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            connection.request("POST", "/moto-api/reset")
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise EmulatorError(f"moto reset answered {response.status}: {body[:200]!r}")
