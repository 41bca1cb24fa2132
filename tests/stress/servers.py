"""Servers and cache configurations the stress suite needs beyond the harness.

* :class:`TunedMemcachedServer`: a memcached with extra command-line
  arguments, such as the tiny one that evicts constantly
  (:data:`EVICTING_MEMCACHED_ARGS`).
* :func:`redis_commands_seen`: every command a Redis server ran while a
  block ran, from ``MONITOR``; :func:`memcached_keys`: every key a
  memcached holds.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
from collections.abc import Iterator, Sequence

from tests.harness.servers import (
    LOOPBACK,
    ManagedServer,
    MemcachedServer,
    RedisServer,
)

#: memcached in 1 MB, every item (generation keys included) in one slab
#: class of 2 KB chunks (``-n``): about 500 items in all, so a few hundred
#: writes of other keys evict everything. ``no_lru_maintainer`` restores the
#: plain LRU, in which an item read often is still evicted (it moves to the
#: head at most once a minute): hot generation keys and the epoch go too.
EVICTING_MEMCACHED_ARGS = (
    "-m", "1",
    "-n", "2000",
    "-I", "64k",
    "-o", "slab_chunk_max=32768,no_lru_maintainer",
)  # fmt: skip


class TunedMemcachedServer(MemcachedServer):
    """A memcached started with extra command-line arguments."""

    def __init__(self, extra_args: Sequence[str] = (), port: int | None = None):
        super().__init__(port)
        self.extra_args = tuple(extra_args)

    def command(self, executable: str, port: int) -> list[str]:
        return [*super().command(executable, port), *self.extra_args]

    def stats(self) -> dict[str, str]:
        """The server's ``stats`` (name -> value as text)."""
        return dict(_memcached_lines(self, b"stats", "STAT "))


def _memcached_lines(
    server: ManagedServer, command: bytes, prefix: str
) -> Iterator[tuple[str, str]]:
    assert server.port is not None
    with socket.create_connection((LOOPBACK, server.port), timeout=5) as sock:
        sock.sendall(command + b"\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    for line in data.decode("ascii", "replace").splitlines():
        if line.startswith(prefix):
            name, _, value = line[len(prefix) :].partition(" ")
            yield name, value


def memcached_keys(server: ManagedServer) -> list[str]:
    """Every key a memcached holds (``lru_crawler metadump all``)."""
    from urllib.parse import unquote

    keys = []
    for name, value in _memcached_lines(server, b"lru_crawler metadump all", "key="):
        del value
        keys.append(unquote(name))
    return keys


def pause(server: ManagedServer) -> None:
    """SIGSTOP the server and return once it is stopped.

    A signal is delivered asynchronously: a request sent right after
    ``kill()`` may still be answered. The server is this process's child, so
    ``waitid(WSTOPPED)`` blocks until the kernel has stopped it.
    """
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    os.waitid(os.P_PID, pid, os.WSTOPPED)


def resume(server: ManagedServer) -> None:
    """SIGCONT the server (harmless when it is not stopped)."""
    pid = server.pid
    if pid is not None:
        os.kill(pid, signal.SIGCONT)


_MONITOR_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_MONITOR_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}


def _unescape(arg: bytes) -> bytes:
    """Undo Redis's ``sdscatrepr`` quoting of one MONITOR argument."""
    out = bytearray()
    index = 0
    while index < len(arg):
        char = arg[index : index + 1]
        if char != b"\\":
            out += char
            index += 1
            continue
        code = arg[index + 1 : index + 2]
        if code == b"x":
            out.append(int(arg[index + 2 : index + 4], 16))
            index += 4
        else:
            out += _MONITOR_ESCAPES.get(code, code)
            index += 2
    return bytes(out)


@contextlib.contextmanager
def redis_commands_seen(server: RedisServer) -> Iterator[list[list[bytes]]]:
    """Collect every command the server executed while the block ran
    (``MONITOR``), each as its list of arguments; the list is complete once
    the block has exited.

    The block's end is marked by an ``ECHO`` of a random token sent after
    it, so no command of the block is missed, without any sleep.
    """
    assert server.port is not None
    end = secrets.token_hex(8).encode()
    sock = socket.create_connection((LOOPBACK, server.port), timeout=30)
    reader = sock.makefile("rb")
    sock.sendall(b"MONITOR\r\n")
    if not reader.readline().startswith(b"+OK"):
        raise RuntimeError("MONITOR was refused")
    commands: list[list[bytes]] = []
    try:
        yield commands
        with socket.create_connection((LOOPBACK, server.port), timeout=30) as other:
            other.sendall(b"ECHO " + end + b"\r\n")
            other.recv(1024)
        while True:
            line = reader.readline()
            if not line:
                raise RuntimeError("MONITOR stopped before the end of the block")
            if end in line:
                break
            _, _, rest = line.partition(b"] ")
            commands.append([_unescape(arg) for arg in _MONITOR_ARG.findall(rest)])
    finally:
        reader.close()
        sock.close()


__all__ = [
    "EVICTING_MEMCACHED_ARGS",
    "TunedMemcachedServer",
    "memcached_keys",
    "pause",
    "redis_commands_seen",
    "resume",
]
