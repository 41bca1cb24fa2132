"""Push invalidation over Redis pub/sub (syncache.push).

Every test talks to a real Redis (the cache's own, or the one PUSH_URL
names for a memcached cache), and the changes come from real other
processes. Round trips are counted by the Redis server itself (``INFO
commandstats`` after ``CONFIG RESETSTAT``), not by wrapping syncache's
code. Waiting is on events set by ``on_invalidate`` callbacks or by the
listener itself, never on sleeps.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

from syncache import GenerationSynchronizer, LocalSyncCache, check_all
from syncache.local import _Registry
from syncache.medium import get_medium
from syncache.push import Listener, listener_for, listeners
from tests.harness.backends import Backend
from tests.harness.workers import run_in_processes, start_processes

WAIT = 20.0

#: The cache backends push runs on: Redis itself, and memcached with the
#: messages carried by PUSH_URL.
PUSH_BACKENDS = ["redis", "django_redis", "memcached"]

on_push_backends = pytest.mark.parametrize("backend", PUSH_BACKENDS, indirect=True)


class Push:
    """The backend in push mode, the raw client of the Redis carrying the
    messages, and this process's listener (already trusted)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.client = get_medium().push_client()
        listener = listener_for(None)
        assert listener is not None
        assert listener.wait_trusted(WAIT), "the subscription was confirmed"
        self.listener = listener

    def reads(self) -> int:
        """Reads the server executed since the last :meth:`reset`."""
        stats = self.client.info("commandstats")
        return sum(
            stats.get(f"cmdstat_{name}", {}).get("calls", 0)
            for name in ("get", "mget", "exists")
        )

    def reset(self) -> None:
        self.client.config_resetstat()

    def counts_reads(self) -> bool:
        """Whether the cache's reads reach this Redis (not with memcached)."""
        return self.backend.name != "memcached"


@pytest.fixture
def push(
    backend: Backend, redis_server: Any, fresh_registry: _Registry
) -> Iterator[Push]:
    options: dict[str, Any] = {"PUSH": True, "PUSH_RECHECK_INTERVAL": 60}
    if backend.name == "memcached":
        options["PUSH_URL"] = redis_server.url
    with backend.syncache_settings(**options):
        yield Push(backend)
    assert listeners() == [], "leaving the settings stopped the listener"


def clear_elsewhere(index: int, cache_id: str) -> None:
    """In another process: what a save there does."""
    LocalSyncCache(cache_id).clear()


def bump_elsewhere(index: int, key: str) -> None:
    GenerationSynchronizer(key).mark_updated()


def _callback_event(target: Any) -> threading.Event:
    event = threading.Event()
    target.on_invalidate(lambda _: event.set())
    return event


# -- zero round trips, immediate propagation ------------------------------------


@on_push_backends
def test_a_clear_elsewhere_empties_the_cache_without_any_request(push: Push) -> None:
    cache = LocalSyncCache("urls")
    check_all()
    cache["page"] = "/a/"
    emptied = _callback_event(cache)
    run_in_processes(
        clear_elsewhere, 1, "urls", settings_overrides=push.backend.settings_overrides
    )
    assert emptied.wait(WAIT), "the listener emptied it: nobody called check_all"
    assert "page" not in cache
    assert cache.ext_clear_counter == 1


@on_push_backends
def test_the_request_check_costs_no_round_trip_while_quiet(push: Push) -> None:
    caches = [LocalSyncCache(f"c{i}") for i in range(20)]
    check_all()  # the first check after the subscription reads once
    push.reset()
    for _ in range(100):
        check_all()
    if push.counts_reads():
        assert push.reads() == 0
    # A change elsewhere: emptied by the listener, then quiet again.
    emptied = _callback_event(caches[7])
    caches[7]["k"] = 1
    run_in_processes(
        clear_elsewhere, 1, "c7", settings_overrides=push.backend.settings_overrides
    )
    assert emptied.wait(WAIT)
    check_all()
    push.reset()
    check_all()
    if push.counts_reads():
        assert push.reads() == 0


@on_push_backends
def test_synchronizer_is_expired_without_round_trips_and_its_callback(
    push: Push,
) -> None:
    sync = GenerationSynchronizer("site-settings")
    assert not sync.is_expired()
    push.reset()
    assert not any(sync.is_expired() for _ in range(50))
    if push.counts_reads():
        assert push.reads() == 0
    called = _callback_event(sync)
    run_in_processes(
        bump_elsewhere,
        1,
        "site-settings",
        settings_overrides=push.backend.settings_overrides,
    )
    assert called.wait(WAIT), "the listener called on_invalidate"
    assert sync.is_expired()
    sync.refresh()
    assert not sync.is_expired()


@on_push_backends
def test_own_changes_are_seen_at_once_in_this_process(push: Push) -> None:
    """No waiting for this process's own message: the bump marks the
    listener before it returns."""
    first, second = GenerationSynchronizer("k"), GenerationSynchronizer("k")
    assert not second.is_expired()
    first.mark_updated()
    assert second.is_expired()
    a = LocalSyncCache("shared", unique_ids=False)
    b = LocalSyncCache("shared", unique_ids=False)
    check_all()
    b["x"] = 1
    a.clear()
    check_all()
    assert "x" not in b
    first.clear()
    assert first.is_expired(), "clear() expires the synchronizer itself too"


# -- never weaker than polling ---------------------------------------------------


@on_push_backends
def test_a_dropped_subscription_falls_back_to_polling_and_resumes(
    push: Push,
) -> None:
    """Kill the listener's connection and hold its reconnection: a change
    made meanwhile is seen by polling; once reconnected, every holder
    reads once more, then push takes over again."""
    cache = LocalSyncCache("urls")
    check_all()
    sync = GenerationSynchronizer("menus")
    assert not sync.is_expired()
    lost, allow = threading.Event(), threading.Event()
    real_trust = Listener._trust
    real_distrust = Listener._distrust

    def distrust(self: Listener) -> None:
        real_distrust(self)
        if self is push.listener:  # not a stopping listener of an earlier test
            lost.set()

    def held_trust(self: Listener) -> None:
        # Whether redis-py reconnected by itself or the listener did, trust
        # comes back through here.
        assert allow.wait(WAIT), "the test never let the listener reconnect"
        real_trust(self)

    with (
        mock.patch.object(Listener, "_distrust", distrust),
        mock.patch.object(Listener, "_trust", held_trust),
    ):
        push.client.client_kill_filter(_type="pubsub")
        assert lost.wait(WAIT), "the listener noticed"
        assert push.listener.trusted_from is None
        cache["page"] = "/old/"
        run_in_processes(
            clear_elsewhere,
            1,
            "urls",
            settings_overrides=push.backend.settings_overrides,
        )
        run_in_processes(
            bump_elsewhere,
            1,
            "menus",
            settings_overrides=push.backend.settings_overrides,
        )
        push.reset()
        check_all()
        assert "page" not in cache, "seen by polling while push is down"
        assert sync.is_expired(), "seen by polling while push is down"
        if push.counts_reads():
            assert push.reads() >= 1
        allow.set()
        assert push.listener.wait_trusted(WAIT)
    # Push has taken over again. Messages published during the hold may
    # still be on their way (redis-py may have re-subscribed by itself): a
    # change made now arrives after them, so once it has, nothing is pending.
    sentinel = GenerationSynchronizer("sentinel")
    arrived = _callback_event(sentinel)
    run_in_processes(
        bump_elsewhere,
        1,
        "sentinel",
        settings_overrides=push.backend.settings_overrides,
    )
    assert arrived.wait(WAIT)
    sync.refresh()
    push.reset()
    check_all()
    check_all()
    assert not sync.is_expired()
    if push.counts_reads():
        assert push.reads() == 0


def test_redis_restart_loses_nothing(
    redis_backend_isolated: Backend, fresh_registry: _Registry
) -> None:
    """The cache's Redis goes away and comes back empty: every check in
    between is expired (polling, failing), and push resumes afterwards."""
    backend = redis_backend_isolated
    with backend.syncache_settings(PUSH=True, PUSH_RECHECK_INTERVAL=60):
        listener = listener_for(None)
        assert listener is not None and listener.wait_trusted(WAIT)
        cache = LocalSyncCache("urls-restart")
        check_all()
        cache["page"] = "/a/"
        assert backend.server is not None
        backend.server.stop()
        try:
            check_all()
            assert "page" not in cache, "an outage is expired, never stale"
            cache["page"] = "/b/"
        finally:
            backend.server.restart()
        assert listener.wait_trusted(WAIT), "push resumed after the restart"
        check_all()
        assert "page" not in cache, "the generation vanished with the restart"
        cache["page"] = "/c/"
        emptied = _callback_event(cache)
        run_in_processes(
            clear_elsewhere,
            1,
            "urls-restart",
            settings_overrides=backend.settings_overrides,
        )
        assert emptied.wait(WAIT)


# -- fork, threads ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads
def test_a_forked_child_starts_its_own_listener(push: Push) -> None:
    cache = LocalSyncCache("forked")
    check_all()
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            inherited = listeners()
            emptied = _callback_event(cache)
            check_all()
            own = listener_for(None)
            assert own is not None and own.wait_trusted(WAIT)
            os.write(ready_w, b"1")
            ok = emptied.wait(WAIT)
            result = f"{len(inherited)} {own is not push.listener} {ok}"
            os.write(done_w, result.encode())
            code = 0
        finally:
            os._exit(code)
    try:
        assert os.read(ready_r, 1) == b"1"
        run_in_processes(
            clear_elsewhere,
            1,
            "forked",
            settings_overrides=push.backend.settings_overrides,
        )
        answer = os.read(done_r, 100).decode()
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == "0 True True", (
        "the child dropped the parent's listener, started its own and got the "
        "invalidation"
    )


def clear_many(index: int, cache_id: str, truth_key: str, rounds: int) -> None:
    """Write version n of the data, then clear, ``rounds`` times."""
    from django.core.cache import cache

    local = LocalSyncCache(cache_id)
    for version in range(1, rounds + 1):
        cache.set(truth_key, version, None)
        local.clear()


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_the_listener_and_request_threads_together(push: Push) -> None:
    """Request threads check, read the data and fill the cache while the
    listener empties it on every change from another process: nothing
    raises, and once the changes stop, a check leaves no old version."""
    from django.core.cache import cache as shared

    truth = f"{push.backend.key_prefix}-truth"
    local = LocalSyncCache("versions")
    stop = threading.Event()
    errors: list[BaseException] = []

    def request_thread() -> None:
        try:
            while not stop.is_set():
                check_all()
                version = local.get("v")
                if version is None:
                    local["v"] = shared.get(truth, 0)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=request_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        workers = start_processes(
            clear_many,
            1,
            "versions",
            truth,
            200,
            settings_overrides=push.backend.settings_overrides,
        )
        workers.join()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert push.listener._thread.is_alive() and push.listener.trusted_from
    check_all(force=True)
    assert local.get("v", 200) == 200


@on_push_backends
def test_status_reports_say_how_checks_run(push: Push) -> None:
    from syncache.status import medium_description

    assert medium_description("default")["checks"].startswith("push via ")
    assert "subscribed; " in medium_description("default")["checks"]


def test_status_reports_polling(backend: Backend) -> None:
    from syncache.status import medium_description

    assert medium_description("default")["checks"].startswith("polling")
    with backend.syncache_settings(PUSH=True):
        described = medium_description("default")["checks"]
    if backend.name in ("redis", "django_redis"):
        assert described.endswith("no listener yet in this process (polling)")
    else:
        assert described.startswith("polling"), "nothing can carry messages"
