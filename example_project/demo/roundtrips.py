"""Count the requests each HTTP request sends to the shared cache.

They are counted where they leave the process, below Django's cache API and
below syncache, so nothing either of them does is missed or guessed:

* Redis: each command or pipeline written to the server, by a redis-py
  connection class (``OPTIONS["connection_class"]``). A pipeline's commands
  travel together and count once.
* memcached: each request written to the server, by a socket that counts
  its ``sendall`` calls (pymemcache's ``socket_module`` option).
* the database cache: each SQL statement naming the cache table, by
  Django's ``connection.execute_wrapper``.

:class:`RoundTripMiddleware` counts for one request and puts the number in
the ``X-Cache-Round-Trips`` response header. It is the outermost
middleware, so syncache's own check at the start of the request is counted.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.db import DatabaseCache
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router
from django.http import HttpRequest, HttpResponse

HEADER = "X-Cache-Round-Trips"

#: The count of the request running in this thread, if it is counted.
_count: ContextVar[list[int] | None] = ContextVar("demo_round_trips", default=None)


def _tick() -> None:
    count = _count.get()
    if count is not None:
        count[0] += 1


class RoundTripMiddleware:
    """Count the round trips to the ``default`` cache during each request."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        count = [0]
        token = _count.set(count)
        try:
            with _database_cache_counted():
                response = self.get_response(request)
        finally:
            _count.reset(token)
        response[HEADER] = str(count[0])
        return response


@contextlib.contextmanager
def _database_cache_counted() -> Iterator[None]:
    cache = caches["default"]
    if not isinstance(cache, DatabaseCache):
        yield
        return
    table = cache.cache_model_class._meta.db_table
    connection = connections[router.db_for_read(cache.cache_model_class)]

    def count_statement(
        execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        if table in sql:
            _tick()
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count_statement):
        yield


def _counting_redis_connection() -> type[Any]:
    from redis.connection import Connection

    class CountingConnection(Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            _tick()
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    return CountingConnection


class _CountingSocket:
    """A socket whose ``sendall`` calls are counted."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def sendall(self, data: bytes, *args: Any) -> None:
        _tick()
        self._sock.sendall(data, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _CountingSocketModule:
    """The ``socket`` module, making counted sockets (for pymemcache)."""

    def socket(self, *args: Any, **kwargs: Any) -> _CountingSocket:
        return _CountingSocket(socket.socket(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)


def counted(config: dict[str, Any]) -> dict[str, Any]:
    """Return the ``CACHES`` entry ``config``, its round trips counted.

    Raises:
        ImproperlyConfigured: a backend this module cannot count.
    """
    backend = config["BACKEND"]
    options = dict(config.get("OPTIONS", {}))
    if backend == "django.core.cache.backends.redis.RedisCache":
        options["connection_class"] = _counting_redis_connection()
    elif backend == "django.core.cache.backends.memcached.PyMemcacheCache":
        options["socket_module"] = _CountingSocketModule()
    elif backend != "django.core.cache.backends.db.DatabaseCache":
        raise ImproperlyConfigured(
            f"The demo counts round trips to Redis, memcached and the database "
            f"cache, not to {backend}."
        )
    return {**config, "OPTIONS": options}
