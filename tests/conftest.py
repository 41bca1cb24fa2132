"""Fixtures for the whole suite: real servers, the backend matrix, workers.

Fixtures
--------
``backend``                 each test runs once per name in BACKEND_NAMES
``shared_backend``          same, without locmem (multi-process tests)
``redis_backend_isolated``  Django RedisCache on a private redis-server that
                            the test may stop; 0.5 s client timeouts
``memcached_backend_isolated``  same for PyMemcacheCache
``redis_server`` / ``memcached_server`` / ``postgres_database``
                            the session's servers (skip when unavailable)
``syncache_backends``       the session registry behind all of the above

Environment
-----------
``SYNCACHE_TEST_REQUIRE=all`` (or ``redis,memcached``): an unavailable
backend fails instead of skipping. ``SYNCACHE_TEST_BACKENDS=redis,sqlite``:
deselect the other backends' parametrizations. ``SYNCACHE_TEST_POSTGRES=
postgresql://user@host:port``: the PostgreSQL server for the ``postgres``
backend. ``SYNCACHE_TEST_REDIS_SERVER`` / ``SYNCACHE_TEST_MEMCACHED``: server
binaries to use instead of PATH. ``SYNCACHE_TEST_START_METHOD=forkserver``:
cheaper workers for local iterations (see ``tests/harness/workers.py``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pytest_django import DjangoDbBlocker

if TYPE_CHECKING:
    from syncache import LocalSyncCache
    from syncache.local import _Registry

from tests.harness.backends import (
    ATOMIC_ADD,
    BACKEND_NAMES,
    CACHE_ALIASES,
    LOCK_CACHE_ALIASES,
    SHARED_BACKEND_NAMES,
    Backend,
    BackendRegistry,
    BackendUnavailable,
    activate_backend,
    cache_config,
    isolated_backend,
    new_key_prefix,
    skip_or_fail,
)
from tests.harness.servers import (
    MemcachedServer,
    PostgresDatabase,
    RedisServer,
    ServerStartError,
)
from tests.harness.workers import has_active_groups, terminate_active_groups

_BACKEND_FIXTURES = ("backend", "shared_backend", "lock_backend", "shared_lock_backend")


@pytest.fixture(scope="session")
def syncache_backends(django_db_blocker: DjangoDbBlocker) -> Iterator[BackendRegistry]:
    """Starts servers on first use and stops them at the end of the run."""
    from django.conf import settings

    registry = BackendRegistry(django_db_blocker, Path(settings.TEST_RUN_DIR))
    yield registry
    registry.close()


@pytest.fixture(scope="session")
def redis_server(syncache_backends: BackendRegistry) -> RedisServer:
    """The session's redis-server (shared by the redis and django_redis
    backends). A test that stops it must restart it, or use
    ``redis_backend_isolated``; the backend fixtures restart it if needed."""
    try:
        return syncache_backends.redis_server()
    except BackendUnavailable as exc:
        reason = str(exc)
    skip_or_fail("redis", reason)


@pytest.fixture(scope="session")
def memcached_server(syncache_backends: BackendRegistry) -> MemcachedServer:
    """The session's memcached."""
    try:
        return syncache_backends.memcached_server()
    except BackendUnavailable as exc:
        reason = str(exc)
    skip_or_fail("memcached", reason)


@pytest.fixture(scope="session")
def postgres_database(syncache_backends: BackendRegistry) -> PostgresDatabase:
    """The run's throwaway PostgreSQL database (the ``cache_pg`` alias)."""
    try:
        return syncache_backends.postgres_database()
    except BackendUnavailable as exc:
        reason = str(exc)
    skip_or_fail("postgres", reason)


def _backend_fixture(name: str, names: Iterable[str], doc: str) -> Any:
    """A fixture that runs a test once per backend in ``names``, as
    ``caches["default"]``, with a SYNCACHE KEY_PREFIX unique to the test."""

    @pytest.fixture(name=name, params=list(names))
    def fixture(
        request: pytest.FixtureRequest,
        syncache_backends: BackendRegistry,
        django_db_blocker: DjangoDbBlocker,
    ) -> Iterator[Backend]:
        with activate_backend(
            request, request.param, syncache_backends, django_db_blocker
        ) as active:
            yield active

    fixture.__doc__ = doc
    return fixture


backend = _backend_fixture("backend", BACKEND_NAMES, "Every backend.")
shared_backend = _backend_fixture(
    "shared_backend", SHARED_BACKEND_NAMES, "The backends other processes can see."
)
lock_backend = _backend_fixture(
    "lock_backend",
    [name for name in BACKEND_NAMES if name in ATOMIC_ADD],
    "The backends that can hold a lock (atomic add).",
)
shared_lock_backend = _backend_fixture(
    "shared_lock_backend",
    [name for name in SHARED_BACKEND_NAMES if name in ATOMIC_ADD],
    "The backends other processes can see that can hold a lock.",
)


@pytest.fixture
def lock_caches(
    syncache_backends: BackendRegistry, django_db_blocker: DjangoDbBlocker
) -> Iterator[tuple[str, ...]]:
    """CACHES with one alias per backend in LOCK_CACHE_ALIASES, on the
    session's servers and database-cache tables, and a KEY_PREFIX unique to
    the test."""
    from django.core.cache import caches
    from django.test import override_settings

    key_prefix = new_key_prefix()
    configs = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    for name in LOCK_CACHE_ALIASES:
        reason = None
        try:
            server, _ = syncache_backends.resources_for(name)
            if server is not None and not server.is_running:
                server.start()  # an earlier test stopped the shared server
        except (BackendUnavailable, ServerStartError) as error:
            reason = str(error)
        if reason is not None:
            skip_or_fail(name, reason)
        configs[name] = cache_config(name, key_prefix=key_prefix, server=server)
    with (
        django_db_blocker.unblock(),
        override_settings(CACHES=configs, SYNCACHE={"KEY_PREFIX": key_prefix}),
    ):
        try:
            yield LOCK_CACHE_ALIASES
        finally:
            for name in LOCK_CACHE_ALIASES:
                with contextlib.suppress(Exception):
                    caches[name].clear()


@pytest.fixture
def redis_backend_isolated() -> Iterator[Backend]:
    """Django's RedisCache on a redis-server of the test's own (``.server``),
    with 0.5 s client timeouts, for tests that stop and restart it."""
    with isolated_backend("redis") as active:
        yield active


@pytest.fixture
def memcached_backend_isolated() -> Iterator[Backend]:
    """PyMemcacheCache on a memcached of the test's own (``.server``), with
    0.5 s client timeouts."""
    with isolated_backend("memcached") as active:
        yield active


@pytest.fixture(autouse=True)
def _terminate_leftover_workers() -> Iterator[None]:
    """Kill workers a test started but never joined (it failed midway), and
    show what they reported: that is often the real cause of the failure."""
    yield
    if not has_active_groups():
        return
    report = terminate_active_groups()
    if report:
        sys.stderr.write(f"\nworkers the test never joined:\n{report}\n")
    warnings.warn(
        "the test never joined its worker processes (they were killed); use "
        "the WorkerGroup as a context manager or join() it"
        + (" (their failures are in the captured stderr)" if report else ""),
        stacklevel=1,
    )


def _backend_param(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    for name in _BACKEND_FIXTURES:
        if name in callspec.params:
            return str(callspec.params[name])
    return None


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Refuse ``django_db(databases=...)`` naming a cache alias, and apply
    ``SYNCACHE_TEST_BACKENDS``."""
    for item in items:
        marker = item.get_closest_marker("django_db")
        databases = marker.kwargs.get("databases") if marker else None
        if databases == "__all__" or (
            databases is not None and CACHE_ALIASES & set(databases)
        ):
            raise pytest.UsageError(
                f"{item.nodeid}: django_db(databases=...) must not include the "
                f"cache aliases {sorted(CACHE_ALIASES)} (or '__all__'): "
                "pytest-django would replace them by test databases that "
                "other processes cannot see. The backend fixtures give access "
                "to them."
            )
    selected = os.environ.get("SYNCACHE_TEST_BACKENDS", "").strip()
    if not selected:
        return
    wanted = {part.strip() for part in selected.split(",") if part.strip()}
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        param = _backend_param(item)
        (dropped if param is not None and param not in wanted else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Registry]:
    """An empty LocalSyncCache registry for the test (as django-tools' setUp):
    the test sees only the instances it creates."""
    from syncache import LocalSyncCache
    from syncache.local import _Registry

    registry = _Registry()
    monkeypatch.setattr(LocalSyncCache, "CACHES", registry)
    monkeypatch.setattr(LocalSyncCache, "INIT_COUNTER", {})
    yield registry


def other_process_clears(cache: LocalSyncCache) -> None:
    """Do to the shared cache what another process's ``cache.clear()`` does."""
    from syncache import GenerationSynchronizer

    GenerationSynchronizer(cache.cache_key, normalize_cache_key=False).mark_updated()


@pytest.fixture
def make_cache() -> Iterator[Callable[..., LocalSyncCache]]:
    """Create LocalSyncCaches (a unique id by default); drop them afterwards."""
    import gc
    import secrets

    from syncache import LocalSyncCache

    made: list[LocalSyncCache] = []

    def make(id: str | None = None, **kwargs: Any) -> LocalSyncCache:
        cache = LocalSyncCache(id or f"cache-{secrets.token_hex(4)}", **kwargs)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        LocalSyncCache.CACHES.remove(cache)
    made.clear()
    gc.collect()
