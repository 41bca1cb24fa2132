"""The backend matrix: a backend name becomes a Django ``CACHES`` configuration
on a real server or database, applied for the duration of one test.

The fixtures in ``tests/conftest.py`` are thin wrappers around
:class:`BackendRegistry` (session: starts servers once, remembers failures)
and :func:`activate_backend` (per test).

Why the database caches bypass pytest-django's test databases: syncache's
whole point is other processes seeing a change. pytest-django's test
database for a non-transactional test lives inside a transaction no other
process can see, so the cache aliases ``cache_sqlite`` and ``cache_pg`` are
real databases, reached by unblocking database access for the test (and, if
the test also uses ``db``, by lifting Django's per-alias "queries are not
allowed" guard for that one alias).

This module is imported by Django in every worker (``CacheRouter``), so it
imports neither pytest nor database drivers at module level.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from tests.harness.servers import (
    ManagedServer,
    MemcachedServer,
    PostgresDatabase,
    RedisServer,
    ServerStartError,
)
from tests.harness.workers import PROJECT_ROOT, current_settings_overrides

if TYPE_CHECKING:
    import pytest
    from django.core.cache.backends.base import BaseCache
    from django.db.models import Model
    from django.test import override_settings
    from pytest_django import DjangoDbBlocker

#: Every backend the ``backend`` fixture runs a test on.
BACKEND_NAMES = (
    "locmem",
    "file",
    "sqlite",
    "postgres",
    "redis",
    "django_redis",
    "memcached",
)
#: Backends other processes can see: ``shared_backend`` runs on these.
#: (locmem lives in one process: it is not a skipped case, it is absent.)
SHARED_BACKEND_NAMES = tuple(name for name in BACKEND_NAMES if name != "locmem")
ATOMIC_INCR = frozenset({"locmem", "redis", "django_redis", "memcached"})
ATOMIC_ADD = frozenset(BACKEND_NAMES) - {"file"}
#: The lock backends that multi-process lock tests use all at once, one
#: cache alias each (the ``lock_caches`` fixture): one of every kind of lock
#: primitive (Lua, cas, conditional SQL on SQLite and PostgreSQL).
LOCK_CACHE_ALIASES = ("redis", "memcached", "sqlite", "postgres")

#: DatabaseCache table suffix -> database alias (see CacheRouter).
CACHE_TABLE_ALIASES = {"_pg": "cache_pg", "_sqlite": "cache_sqlite"}
CACHE_ALIASES = frozenset(CACHE_TABLE_ALIASES.values())
DATABASE_CACHE_TABLES = {
    "sqlite": ("cache_sqlite", "syncache_cache_sqlite"),
    "postgres": ("cache_pg", "syncache_cache_pg"),
}
#: Client timeouts on the shared servers: a wedged server fails the test
#: instead of hanging the run.
NETWORK_TIMEOUT = 5.0
#: Client timeouts on the isolated servers, which tests stop on purpose.
OUTAGE_TIMEOUT = 0.5

REQUIRE_ENV = "SYNCACHE_TEST_REQUIRE"

ServerT = TypeVar("ServerT", bound=ManagedServer)


class BackendUnavailable(Exception):
    """A backend cannot be used on this machine; the message says why."""


def is_required(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``SYNCACHE_TEST_REQUIRE`` ("all" or "a,b,c") names ``name``."""
    raw = (os.environ if environ is None else environ).get(REQUIRE_ENV, "")
    wanted = {part.strip() for part in raw.split(",") if part.strip()}
    return "all" in wanted or name in wanted


def skip_or_fail(name: str, reason: str) -> NoReturn:
    """Skip the test, or fail it when CI requires the backend: a CI machine
    that silently lost its Redis must not report green."""
    import pytest

    if is_required(name):
        pytest.fail(
            f"{name} backend unavailable but required by {REQUIRE_ENV}: {reason}",
            pytrace=False,
        )
    pytest.skip(f"{name} backend unavailable: {reason}")


def new_key_prefix() -> str:
    """A SYNCACHE KEY_PREFIX unique to one test: keys of earlier tests, or of
    a killed worker, can never be mistaken for this test's."""
    return "t" + secrets.token_hex(4)


@dataclass
class Backend:
    """One cache backend as configured for the running test.

    ``settings_overrides`` is live: it snapshots the settings in effect when
    read (see :func:`tests.harness.workers.current_settings_overrides`), so a
    ``settings`` fixture change made after this backend was set up still
    reaches the workers.
    """

    name: str
    #: The CACHES dict in effect: {"default": {...}}.
    caches: dict[str, dict[str, Any]]
    #: SYNCACHE["KEY_PREFIX"] in effect, unique to the test.
    key_prefix: str
    #: incr() is atomic (locmem, redis, django_redis, memcached).
    atomic_incr: bool
    #: add() is atomic (all but file).
    atomic_add: bool
    #: Other processes see the values (all but locmem).
    cross_process: bool
    #: The server behind redis/django_redis/memcached (stop/restart it).
    server: ManagedServer | None = None
    #: The database alias behind sqlite/postgres.
    database: str | None = None

    @property
    def settings_overrides(self) -> dict[str, Any]:
        """Everything a spawned worker needs to reproduce this configuration:
        CACHES, DATABASES (with the test database names), SYNCACHE and every
        other setting that differs from ``tests.settings``."""
        return current_settings_overrides()

    @property
    def cache(self) -> BaseCache:
        """``caches["default"]`` (this thread's instance)."""
        from django.core.cache import caches

        return caches["default"]

    def syncache_settings(self, **options: Any) -> override_settings:
        """``override_settings(SYNCACHE=...)`` that keeps this test's
        KEY_PREFIX (a bare ``SYNCACHE={...}`` override would drop it and fall
        back to the shared default prefix)."""
        from django.test import override_settings

        return override_settings(SYNCACHE={"KEY_PREFIX": self.key_prefix, **options})

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a non-multiprocessing child (a WSGI server...):
        ``tests.settings`` applies ``SYNCACHE_TEST_SETTINGS`` on import."""
        env = dict(os.environ if base is None else base)
        env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
        paths = [PROJECT_ROOT, *filter(None, [env.get("PYTHONPATH")])]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        try:
            env["SYNCACHE_TEST_SETTINGS"] = json.dumps(self.settings_overrides)
        except TypeError as exc:
            raise TypeError(
                f"the settings overrides are not JSON-serialisable, so they "
                f"cannot travel in the environment; use run_in_processes: {exc}"
            ) from exc
        return env


class CacheRouter:
    """Route Django's DatabaseCache model to the cache databases by table name.

    DatabaseCache builds a model with app_label ``django_cache`` and
    ``db_table`` = LOCATION; tables ending in ``_pg`` live in ``cache_pg``,
    in ``_sqlite`` in ``cache_sqlite``, others in ``default``. The cache
    aliases hold nothing else.
    """

    @staticmethod
    def alias_for_table(table: str) -> str:
        for suffix, alias in CACHE_TABLE_ALIASES.items():
            if table.endswith(suffix):
                return alias
        return "default"

    def _alias_for(self, model: type[Model] | None) -> str | None:
        if model is None or model._meta.app_label != "django_cache":
            return None
        return self.alias_for_table(model._meta.db_table)

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        return self._alias_for(model)

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        return self._alias_for(model)

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        if app_label == "django_cache":
            # createcachetable asks this with the cache model as a hint: the
            # table goes only to the alias its name routes to.
            target = self._alias_for(hints.get("model"))
            return None if target is None else db == target
        if db in CACHE_ALIASES:
            return False
        return None


def cache_config(
    name: str,
    *,
    key_prefix: str,
    server: ManagedServer | None = None,
    file_dir: Path | None = None,
    timeout: float = NETWORK_TIMEOUT,
) -> dict[str, Any]:
    """Return the CACHES["default"] entry for backend ``name``."""
    if name == "locmem":
        # A LOCATION of its own: a fresh, empty store per test.
        return {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"syncache-{key_prefix}",
        }
    if name == "file":
        assert file_dir is not None
        return {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(file_dir),
        }
    if name in DATABASE_CACHE_TABLES:
        return {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": DATABASE_CACHE_TABLES[name][1],
        }
    if name == "redis":
        assert isinstance(server, RedisServer)
        return {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": server.url_for_db(0),
            "OPTIONS": {"socket_connect_timeout": timeout, "socket_timeout": timeout},
        }
    if name == "django_redis":
        assert isinstance(server, RedisServer)
        return {
            "BACKEND": "django_redis.cache.RedisCache",
            # Another logical database than "redis": clearing one at the end
            # of a test leaves the other alone.
            "LOCATION": server.url_for_db(1),
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": timeout, "SOCKET_TIMEOUT": timeout},
        }
    if name == "memcached":
        assert isinstance(server, MemcachedServer)
        return {
            "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
            "LOCATION": server.location,
            "OPTIONS": {"connect_timeout": timeout, "timeout": timeout},
        }
    raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKEND_NAMES)}")


class BackendRegistry:
    """Session-wide owner of the servers and database-cache tables.

    Each resource is started at most once per session, on first use; a
    failure is remembered and re-raised as :class:`BackendUnavailable` for
    every later test instead of being retried (a missing binary stays
    missing, and retrying a 15 s start timeout per test would be slow).
    """

    def __init__(self, db_blocker: DjangoDbBlocker, run_dir: Path) -> None:
        self._db_blocker = db_blocker
        self.run_dir = run_dir
        self._resources: dict[str, Any] = {}
        self._errors: dict[str, BaseException] = {}

    def _once(self, key: str, factory: Any) -> Any:
        if key in self._resources:
            return self._resources[key]
        if key in self._errors:
            error = self._errors[key]
            raise BackendUnavailable(_reason(error)) from error
        try:
            resource = factory()
        except Exception as exc:
            self._errors[key] = exc
            raise BackendUnavailable(_reason(exc)) from exc
        self._resources[key] = resource
        return resource

    def redis_server(self) -> RedisServer:
        """The session's redis-server, started on first use."""
        server: RedisServer = self._once("redis", lambda: _started(RedisServer()))
        return server

    def memcached_server(self) -> MemcachedServer:
        """The session's memcached, started on first use."""
        server: MemcachedServer = self._once(
            "memcached", lambda: _started(MemcachedServer())
        )
        return server

    def postgres_database(self) -> PostgresDatabase:
        """The run's throwaway PostgreSQL database, created on first use."""

        def create() -> PostgresDatabase:
            from django.conf import settings

            return PostgresDatabase.from_settings(
                settings.DATABASES["cache_pg"]
            ).create()

        database: PostgresDatabase = self._once("postgres", create)
        return database

    def database_cache_table(self, name: str) -> str:
        """Create the DatabaseCache table of backend ``name``; return its alias."""
        alias, table = DATABASE_CACHE_TABLES[name]
        if name == "postgres":
            self.postgres_database()

        def create() -> str:
            from django.core.management import call_command
            from django.test import override_settings

            config = cache_config(name, key_prefix="setup")
            # The first test to use the table may run inside pytest-django's
            # TestCase, whose guard forbids this alias: lift it here too.
            with (
                self._db_blocker.unblock(),
                _allow_queries(alias),
                override_settings(CACHES={"default": config}),
            ):
                call_command("createcachetable", database=alias, verbosity=0)
            return table

        self._once(f"table:{name}", create)
        return alias

    def resources_for(self, name: str) -> tuple[ManagedServer | None, str | None]:
        """Start what backend ``name`` needs; return (server, database alias).

        Raises :class:`BackendUnavailable`.
        """
        if name in {"redis", "django_redis"}:
            return self.redis_server(), None
        if name == "memcached":
            return self.memcached_server(), None
        if name in DATABASE_CACHE_TABLES:
            return None, self.database_cache_table(name)
        if name in {"locmem", "file"}:
            return None, None
        raise ValueError(f"unknown backend {name!r}")

    def close(self) -> None:
        """Stop the servers and drop the PostgreSQL database."""
        for key in ("redis", "memcached"):
            server = self._resources.pop(key, None)
            if server is not None:
                server.close()
        database = self._resources.pop("postgres", None)
        if database is not None:
            from django.db import connections

            # Our own connection first; WITH (FORCE) takes care of others.
            connections["cache_pg"].close()
            database.drop()


def _started(server: ServerT) -> ServerT:
    """Start ``server``; on failure remove its directory before re-raising."""
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ServerStartError | BackendUnavailable):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def _allow_queries(alias: str) -> Iterator[None]:
    """Lift Django's "queries to 'alias' are not allowed" guard for ``alias``.

    A test using pytest-django's ``db`` / ``transactional_db`` runs inside a
    TestCase whose ``databases`` is only "default"; Django then replaces the
    other aliases' connect/cursor methods with ``_DatabaseFailure`` objects.
    Listing the cache alias in ``databases`` instead would make pytest-django
    build a test database for it (and wrap it in a transaction), hiding it
    from the workers.
    """
    from django.db import connections

    try:
        from django.test.testcases import _DatabaseFailure
    except ImportError:  # pragma: no cover - a future Django
        yield
        return
    connection = connections[alias]
    lifted: dict[str, Any] = {}
    for name in ("connect", "temporary_connection", "cursor", "chunked_cursor"):
        method = connection.__dict__.get(name)
        if isinstance(method, _DatabaseFailure):
            lifted[name] = method
            setattr(connection, name, method.wrapped)
    try:
        yield
    finally:
        for name, failure in lifted.items():
            setattr(connection, name, failure)


def _clear_quietly() -> None:
    """Empty the test's cache so the next test starts from an empty store and
    FileBasedCache/DatabaseCache never cull because of earlier tests' keys."""
    from django.core.cache import caches

    with contextlib.suppress(Exception):  # a test may have stopped the server
        caches["default"].clear()


@contextlib.contextmanager
def activate_backend(
    request: pytest.FixtureRequest,
    name: str,
    registry: BackendRegistry,
    db_blocker: DjangoDbBlocker,
) -> Iterator[Backend]:
    """Configure backend ``name`` as the default cache for one test.

    Skips (or fails, see :func:`skip_or_fail`) when it cannot be started.
    """
    from django.test import override_settings

    reason: str | None
    try:
        server, alias = registry.resources_for(name)
        if server is not None and not server.is_running:
            server.start()  # an earlier test stopped the shared server
    except (BackendUnavailable, ServerStartError) as exc:
        reason = str(exc)
    else:
        reason = None
    if reason is not None:
        # Outside the except block: the report shows the reason, not a chain.
        skip_or_fail(name, reason)
    if alias is not None and (
        "_django_db_helper" in request.fixturenames
        or request.node.get_closest_marker("django_db") is not None
    ):
        # Make pytest-django set its TestCase up before we lift its guard
        # (fixture order otherwise follows the argument order).
        request.getfixturevalue("_django_db_helper")
    key_prefix = new_key_prefix()
    file_dir = registry.run_dir / "file-cache" / key_prefix
    caches_setting = {
        "default": cache_config(
            name, key_prefix=key_prefix, server=server, file_dir=file_dir
        )
    }
    with contextlib.ExitStack() as stack:
        if alias is not None:
            stack.enter_context(db_blocker.unblock())
            stack.enter_context(_allow_queries(alias))
        stack.enter_context(
            override_settings(
                CACHES=caches_setting, SYNCACHE={"KEY_PREFIX": key_prefix}
            )
        )
        stack.callback(_clear_quietly)
        yield Backend(
            name=name,
            caches=caches_setting,
            key_prefix=key_prefix,
            atomic_incr=name in ATOMIC_INCR,
            atomic_add=name in ATOMIC_ADD,
            cross_process=name != "locmem",
            server=server,
            database=alias,
        )


@contextlib.contextmanager
def isolated_backend(
    name: str,
    *,
    options: dict[str, Any] | None = None,
    server: ManagedServer | None = None,
    aliases: Sequence[str] = ("default",),
) -> Iterator[Backend]:
    """Backend ``name`` (redis or memcached) on a server of its own, with
    short client timeouts, for a test that stops the server (outage and
    recovery): every cache alias in ``aliases``, with client ``options``
    merged over the harness's, and a KEY_PREFIX unique to the test. The
    server (default: a new one) is stopped at the end."""
    from django.test import override_settings

    if server is None:
        if name == "redis":
            server = RedisServer()
        elif name == "memcached":
            server = MemcachedServer()
        else:
            raise ValueError(f"no isolated variant of backend {name!r}")
    try:
        server.start()
    except ServerStartError as exc:
        reason: str | None = str(exc)
    else:
        reason = None
    if reason is not None:
        server.close()
        skip_or_fail(name, reason)
    key_prefix = new_key_prefix()
    config = cache_config(
        name, key_prefix=key_prefix, server=server, timeout=OUTAGE_TIMEOUT
    )
    config["OPTIONS"] = {**config.get("OPTIONS", {}), **(options or {})}
    caches_setting = {alias: dict(config) for alias in aliases}
    try:
        with override_settings(
            CACHES=caches_setting, SYNCACHE={"KEY_PREFIX": key_prefix}
        ):
            yield Backend(
                name=name,
                caches=caches_setting,
                key_prefix=key_prefix,
                atomic_incr=name in ATOMIC_INCR,
                atomic_add=name in ATOMIC_ADD,
                cross_process=True,
                server=server,
            )
    finally:
        server.close()


__all__ = [
    "ATOMIC_ADD",
    "ATOMIC_INCR",
    "BACKEND_NAMES",
    "CACHE_ALIASES",
    "SHARED_BACKEND_NAMES",
    "Backend",
    "BackendRegistry",
    "BackendUnavailable",
    "CacheRouter",
    "activate_backend",
    "cache_config",
    "is_required",
    "isolated_backend",
    "skip_or_fail",
]
