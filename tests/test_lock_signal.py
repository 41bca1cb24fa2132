"""The medium's lock primitives added for the spin lock and the dogpile mutex.

``lock_take`` (take and fence in one step, or learn the holder),
``lock_replace`` / ``lock_value``, waiting by signal on Redis
(``lock_wait`` / ``lock_notify``, and ``CacheMutex`` using them), and the
database cache judging lock expiry by the database server's clock. The
clock-skew tests inject the fault by patching ``timezone.now`` in the
acquiring process; everything else talks to the real servers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from django.core.cache import caches
from django.utils import timezone

from syncache import CacheMutex
from syncache import dogpile as dogpile_module
from syncache.medium import (
    LOCK_SIGNAL_RESOLUTION,
    LOCK_SIGNAL_SUFFIX,
    LOCK_SIGNAL_TTL_MS,
    WriteNotConfirmed,
    _BlockingWaiters,
    get_medium,
)

LOCK = "t-lock"
FENCE = "t-fence"
#: A wait that only a wake-up ends early; a broken signal fails the test by
#: its result (after this long), never by a timing threshold.
LONG = 20.0

REDIS = pytest.mark.parametrize(
    "lock_backend", ["redis", "django_redis"], indirect=True
)
DATABASES = pytest.mark.parametrize(
    "lock_backend", ["sqlite", "postgres"], indirect=True
)


def signal_list(medium: Any) -> tuple[Any, str]:
    return medium.client(), medium.full_key(LOCK + LOCK_SIGNAL_SUFFIX)


# -- take, replace, value ------------------------------------------------------------


def test_take_fences_or_reports_the_holder(lock_backend: Any) -> None:
    medium = get_medium()
    assert medium.lock_take(LOCK, "a", 60, fence_key=FENCE) == (True, 1, None)
    assert medium.lock_take(LOCK, "b", 60, fence_key=FENCE) == (False, None, "a")
    assert medium.lock_value(LOCK) == "a"
    assert medium.lock_replace(LOCK, "a", "done,a", 60)
    assert medium.lock_take(LOCK, "c", 60, fence_key=FENCE, over="busy,") == (
        False,
        None,
        "done,a",
    )
    taken = medium.lock_take(LOCK, "c", 60, fence_key=FENCE, over="done,")
    assert taken == (True, 2, None), "a state left to be taken over is taken"
    assert medium.lock_value(LOCK) == "c"
    assert medium.lock_release(LOCK, "c")
    assert medium.lock_take(LOCK, "d", 60) == (True, None, None), "no fence asked"


def test_only_the_holder_replaces_or_releases(lock_backend: Any) -> None:
    medium = get_medium()
    assert medium.lock_acquire(LOCK, "a", 60)
    assert not medium.lock_replace(LOCK, "b", "x", 60)
    assert medium.lock_value(LOCK) == "a"
    assert medium.lock_replace(LOCK, "a", "x", 60)
    assert not medium.lock_release(LOCK, "a")
    assert medium.lock_extend(LOCK, "x", 60)
    assert medium.lock_release(LOCK, "x")
    assert medium.lock_value(LOCK) is None
    assert not medium.lock_held(LOCK)
    assert not medium.lock_replace(LOCK, "x", "y", 60), "nothing left to replace"


@pytest.mark.parametrize(
    "lock_backend", ["locmem", "sqlite", "postgres", "memcached"], indirect=True
)
def test_a_lock_whose_fence_failed_is_released(
    lock_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    medium = get_medium()
    failure = WriteNotConfirmed("the fence vanished")
    monkeypatch.setattr(medium, "lock_fence", mock.Mock(side_effect=failure))
    with pytest.raises(WriteNotConfirmed):
        medium.lock_take(LOCK, "a", 60, fence_key=FENCE)
    assert not medium.lock_held(LOCK)


# -- waiting ------------------------------------------------------------------


def test_only_redis_wakes_waiters(lock_backend: Any) -> None:
    medium = get_medium()
    assert medium.lock_signals == (lock_backend.name in {"redis", "django_redis"})
    if not medium.lock_signals:
        assert medium.lock_acquire(LOCK, "a", 60)
        assert medium.lock_release(LOCK, "a")
        medium.lock_notify(LOCK)
        assert medium.lock_wait(LOCK, 0.01) is False, "it sleeps"


@REDIS
def test_a_release_wakes_a_waiter(lock_backend: Any) -> None:
    medium = get_medium()
    assert medium.lock_acquire(LOCK, "a", 60)
    woken: list[bool] = []
    waiter = threading.Thread(target=lambda: woken.append(medium.lock_wait(LOCK, LONG)))
    waiter.start()
    assert medium.lock_release(LOCK, "a")
    waiter.join()
    assert woken == [True]


@REDIS
def test_a_replace_wakes_a_waiter_only_when_asked(lock_backend: Any) -> None:
    medium = get_medium()
    client, signals = signal_list(medium)
    assert medium.lock_acquire(LOCK, "a", 60)
    assert medium.lock_replace(LOCK, "a", "b", 60)
    assert client.llen(signals) == 0
    assert medium.lock_replace(LOCK, "b", "c", 60, wake=True)
    assert medium.lock_wait(LOCK, LONG) is True


@REDIS
def test_signals_neither_pile_up_nor_linger(lock_backend: Any) -> None:
    medium = get_medium()
    client, signals = signal_list(medium)
    for _ in range(5):
        assert medium.lock_acquire(LOCK, "a", 60)
        assert medium.lock_release(LOCK, "a")
    assert client.llen(signals) == 1
    assert 0 < client.pttl(signals) <= LOCK_SIGNAL_TTL_MS
    # A signal nobody waited for costs one early return, then waits are full.
    assert medium.lock_wait(LOCK, LONG) is True
    assert medium.lock_wait(LOCK, LOCK_SIGNAL_RESOLUTION * 1.5) is False
    medium.lock_notify(LOCK)
    medium.lock_notify(LOCK)
    assert client.llen(signals) == 1
    assert medium.lock_wait(LOCK, LONG) is True


@contextlib.contextmanager
def blpop_timeouts(medium: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    client = medium.client()
    real = client.blpop
    timeouts: list[Any] = []

    def spy(keys: Any, timeout: Any = 0) -> Any:
        timeouts.append(timeout)
        return real(keys, timeout=timeout)

    monkeypatch.setattr(client, "blpop", spy)
    yield timeouts


def test_blocking_stays_under_the_socket_timeout(
    redis_backend_isolated: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The isolated server's client times out after 0.5 s: a BLPOP of that
    long would fail; the wait is cut into pieces that end before 0.25 s."""
    medium = get_medium()
    with blpop_timeouts(medium, monkeypatch) as timeouts:
        assert medium.lock_wait(LOCK, LOCK_SIGNAL_RESOLUTION / 2) is False
        assert timeouts == [], "a short wait is a sleep"
        assert medium.lock_wait(LOCK, 0.7) is False
    assert len(timeouts) >= 2
    assert all(0 < timeout <= 0.25 - LOCK_SIGNAL_RESOLUTION for timeout in timeouts)


@REDIS
def test_waiters_leave_the_pool_connections_to_the_holders(
    lock_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    medium = get_medium()
    pool = medium.client().connection_pool
    monkeypatch.setattr(pool, "max_connections", 1)
    with blpop_timeouts(medium, monkeypatch) as timeouts:
        assert medium.lock_wait(LOCK, LOCK_SIGNAL_RESOLUTION * 1.5) is False
    assert timeouts == [], "no BLPOP may take the only connection: it slept"


def test_waiters_count_per_pool() -> None:
    waiters = _BlockingWaiters()
    pool, other = SimpleNamespace(max_connections=4), SimpleNamespace()
    assert waiters.enter(pool) and waiters.enter(pool)
    assert not waiters.enter(pool), "half of 4 connections are waiting"
    assert waiters.enter(other), "no limit"
    waiters.leave(pool)
    assert waiters.enter(pool)


@REDIS
def test_cache_mutex_waiters_are_woken_by_the_release(
    lock_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After two short polls the waiter waits 30 s (patched from 1 s): only
    the release's wake-up lets it in at once."""
    monkeypatch.setattr(dogpile_module, "SIGNALLED_BACKOFF_CAP", 30.0)
    medium = get_medium()
    real = medium.lock_wait
    blocking = threading.Event()
    long_waits: list[bool] = []

    def spy(key: str, seconds: float) -> bool:
        if seconds < 1:
            return real(key, seconds)
        blocking.set()
        long_waits.append(real(key, seconds))
        return long_waits[-1]

    monkeypatch.setattr(medium, "lock_wait", spy)
    holder = CacheMutex("mutex")
    assert holder.acquire()
    taken: list[bool] = []

    def wait() -> None:
        waiter = CacheMutex("mutex")
        taken.append(waiter.acquire())
        waiter.release()

    thread = threading.Thread(target=wait)
    thread.start()
    assert blocking.wait(LONG)
    holder.release()
    thread.join()
    assert taken == [True]
    assert long_waits == [True]


@REDIS
def test_a_deadline_shorter_than_the_signal_resolution_is_kept(
    lock_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis may end a BLPOP up to LOCK_SIGNAL_RESOLUTION late: a wait
    shorter than that sleeps, so acquire(timeout=...) keeps its deadline."""
    medium = get_medium()
    holder = CacheMutex("deadline")
    assert holder.acquire()
    try:
        with blpop_timeouts(medium, monkeypatch) as timeouts:
            assert not CacheMutex("deadline").acquire(timeout=0.05)
        assert timeouts == []
    finally:
        holder.release()


# -- the database cache's lock clock ------------------------------------------


@contextlib.contextmanager
def client_clock(hours: float) -> Iterator[None]:
    """This process's wall clock runs ``hours`` ahead (negative: behind)."""
    real = timezone.now
    with mock.patch(
        "django.utils.timezone.now",
        side_effect=lambda: real() + dt.timedelta(hours=hours),
    ):
        yield


@DATABASES
def test_a_client_clock_ahead_does_not_take_a_live_lock(lock_backend: Any) -> None:
    medium = get_medium()
    assert medium.lock_acquire(LOCK, "holder", 60)
    with client_clock(+2):
        assert not medium.lock_acquire(LOCK, "skewed", 60)
        assert medium.lock_take(LOCK, "skewed", 60) == (False, None, "holder")
        assert medium.lock_held(LOCK)
        assert medium.lock_value(LOCK) == "holder"
        assert not medium.lock_release(LOCK, "skewed")
    with client_clock(-2):
        assert medium.lock_extend(LOCK, "holder", 60), "still the holder's lock"
        assert medium.lock_replace(LOCK, "holder", "computed", 60)
        assert medium.lock_release(LOCK, "computed")


@DATABASES
def test_a_client_clock_behind_takes_an_expired_lock(lock_backend: Any) -> None:
    medium = get_medium()
    assert medium.lock_acquire(LOCK, "gone", 0.05)
    deadline = time.monotonic() + LONG
    while medium.lock_held(LOCK):  # until the database's clock passes it
        assert time.monotonic() < deadline, "the lock never expired"
    with client_clock(-2):
        assert medium.lock_value(LOCK) is None
        assert medium.lock_acquire(LOCK, "next", 60)
    assert medium.lock_value(LOCK) == "next"


@DATABASES
def test_lock_rows_stay_readable_by_django(lock_backend: Any) -> None:
    medium = get_medium()
    assert medium.lock_acquire(LOCK, "holder", 60)
    cache = caches["default"]
    assert cache.get(LOCK) == "holder"
    assert cache.has_key(LOCK)
    assert medium.lock_replace(LOCK, "holder", "computed,x", 3600)
    assert cache.get(LOCK) == "computed,x"
