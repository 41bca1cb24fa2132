"""syncache.dogpile in one process: Lock, NameRegistry, ReadWriteMutex, and
CacheMutex / get_or_create on every backend.

The first tests are ports of dogpile.cache's own ``tests/test_lock.py``
(same scenarios and accounting, times scaled down by ``SCALE``), with
``time.monotonic`` for ``time.time``. Cross-process scenarios are in
``tests/scenarios/test_dogpile_processes.py``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

from syncache import (
    CacheMutex,
    Lock,
    LockError,
    LockNotOwned,
    LockNotSupported,
    NameRegistry,
    NeedRegenerationException,
    ReadWriteMutex,
    UnpicklableValue,
    cache_on_arguments,
    get_or_create,
)
from syncache.dogpile import early_expiry, invalidate

#: dogpile's scenarios take 4-55 s each; the same ratios at a tenth of that
#: (and "return while in progress" with 10 usages per thread instead of 50).
SCALE = 0.1


# -- dogpile's ConcurrencyTest --------------------------------------------------


def _test_multi(
    num_threads: int,
    expiretime: float,
    creation_time: float,
    num_usages: int,
    usage_time: float,
    delay_time: float,
    cache_expire_time: str | None = None,
) -> None:
    """dogpile's ``_test_multi`` scenario, with load-proof accounting.

    dogpile asserts wall-clock bounds (total run time, callers that waited
    more than 10 ms), which fail on a loaded machine. The same properties
    are checked here by counting instead: never two creators at once; a
    caller blocks on the mutex only when there is no value (at the start,
    or after an unsafe cache dropped it), never while a stale value can be
    returned; at most one creation per expiry window of the measured run,
    plus the first; every value returned is one the creator made.
    """
    expiretime *= SCALE
    creation_time *= SCALE
    usage_time *= SCALE
    delay_time *= SCALE
    unsafe_cache = False
    cache_expire: float | None = None
    if cache_expire_time == "unsafe":
        unsafe_cache = True
        cache_expire = expiretime * 0.8
    elif cache_expire_time == "safe":
        cache_expire = (expiretime + creation_time) * 1.1
    effective_expiretime = min(cache_expire or expiretime, expiretime)
    assertion_lock = threading.Lock()
    the_resource: list[float] = []
    failures: list[str] = []

    class CountingMutex:
        """A threading.Lock that counts blocking acquisitions."""

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.blocking = 0

        def acquire(self, wait: bool = True) -> bool:
            if wait:
                self.blocking += 1
            return self.lock.acquire(wait)

        def release(self) -> None:
            self.lock.release()

    mutex = CountingMutex()

    def create_resource() -> tuple[float, float]:
        assert assertion_lock.acquire(False), "two creators at once"
        try:
            time.sleep(creation_time)
            the_resource.append(time.monotonic())
            return the_resource[-1], time.monotonic()
        finally:
            assertion_lock.release()

    def get_value() -> tuple[float, float]:
        if not the_resource:
            raise NeedRegenerationException()
        if cache_expire is not None and time.monotonic() - the_resource[-1] > (
            cache_expire
        ):
            assert cache_expire < expiretime, "a safe cache expired a value"
            raise NeedRegenerationException()
        return the_resource[-1], the_resource[-1]

    def use_dogpile() -> None:
        try:
            for _ in range(num_usages):
                with Lock(mutex, create_resource, get_value, expiretime) as value:
                    assert value in the_resource, "a value the creator made"
                    time.sleep(usage_time)
                time.sleep(delay_time)
        except Exception as error:
            failures.append(repr(error))

    started_at = time.monotonic()
    threads = [threading.Thread(target=use_dogpile) for _ in range(num_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run_time = time.monotonic() - started_at

    max_generations = math.ceil(run_time / effective_expiretime) + 1
    assert failures == []
    assert len(the_resource) <= max_generations
    if unsafe_cache:
        assert mutex.blocking <= len(the_resource) * num_threads
    else:
        assert mutex.blocking <= num_threads, "blocked only while no value"


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((10, 2, 0.5, 50, 0.05, 0.1), id="quick"),
        pytest.param((10, 5, 2, 50, 0.1, 0.1), id="slow"),
        pytest.param((10, 5, 2, 10, 1, 0.1), id="return_while_in_progress"),
        pytest.param((10, 2, 2.5, 50, 0.05, 0.1), id="long_create"),
        pytest.param((10, 1, 0.6, 100, 0.05, 0.1, "unsafe"), id="unsafe_cache"),
        pytest.param((10, 2, 0.5, 50, 0.05, 0.1, "safe"), id="safe_cache_quick"),
        pytest.param((10, 5, 2, 50, 0.1, 0.1, "safe"), id="safe_cache_slow"),
    ],
)
def test_concurrency(args: tuple[Any, ...]) -> None:
    _test_multi(*args)


def test_no_double_get_on_expired() -> None:
    """dogpile's RaceConditionTests: an expired value and a free mutex call
    value_and_created_fn once, then the creator."""
    mutex = threading.Lock()
    value_and_created_fn = mock.Mock(return_value=("the value", 10))
    with (
        mock.patch("syncache.dogpile.time.monotonic", return_value=22),
        Lock(
            mutex, lambda: ("the value", 22), value_and_created_fn, 10
        ) as entered_value,
    ):
        assert entered_value == "the value"
    assert value_and_created_fn.call_count == 1
    assert not mutex.locked()


# -- Lock semantics ---------------------------------------------------------------


class RecordingMutex:
    def __init__(self, free: bool = True) -> None:
        self.free = free
        self.calls: list[str] = []

    def acquire(self, wait: bool = True) -> bool:
        self.calls.append(f"acquire({wait})")
        return self.free

    def release(self) -> None:
        self.calls.append("release")


def _creator(value: Any) -> Any:
    return mock.Mock(return_value=(value, time.monotonic()))


def test_fresh_value_never_touches_the_mutex() -> None:
    mutex = RecordingMutex()
    creator = _creator("new")
    with Lock(mutex, creator, lambda: ("old", time.monotonic()), 60) as value:
        assert value == "old"
    assert mutex.calls == [] and not creator.called


def test_stale_value_and_busy_mutex_returns_the_stale_value() -> None:
    mutex = RecordingMutex(free=False)
    creator = _creator("new")
    with Lock(mutex, creator, lambda: ("old", time.monotonic() - 61), 60) as value:
        assert value == "old"
    assert mutex.calls == ["acquire(False)"] and not creator.called


def test_stale_value_and_free_mutex_regenerates() -> None:
    mutex = RecordingMutex()
    with Lock(mutex, _creator("new"), lambda: ("old", -math.inf), 60) as value:
        assert value == "new"
    assert mutex.calls == ["acquire(False)", "release"]


def test_no_value_blocks_then_rechecks() -> None:
    mutex = RecordingMutex()
    creator = _creator("new")
    answers = iter([NeedRegenerationException(), ("made meanwhile", math.inf)])

    def value_and_created() -> tuple[str, float]:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with Lock(mutex, creator, value_and_created, 60) as value:
        assert value == "made meanwhile"
    assert mutex.calls == ["acquire(True)", "release"] and not creator.called


@pytest.mark.parametrize("expiretime", [None, -1, -0.5])
def test_none_and_negative_expiretime_never_expire(expiretime: float | None) -> None:
    mutex = RecordingMutex()
    with Lock(mutex, _creator("new"), lambda: ("old", -1e12), expiretime) as value:
        assert value == "old"
    assert mutex.calls == []


def test_zero_expiretime_is_always_stale() -> None:
    created = time.monotonic()
    with (
        mock.patch("syncache.dogpile.time.monotonic", return_value=created + 1e-6),
        Lock(RecordingMutex(), _creator("new"), lambda: ("old", created), 0) as value,
    ):
        assert value == "new"


def test_creator_error_releases_the_mutex() -> None:
    mutex = threading.Lock()

    def failing() -> tuple[str, float]:
        raise ZeroDivisionError

    def missing() -> tuple[str, float]:
        raise NeedRegenerationException

    with pytest.raises(ZeroDivisionError), Lock(mutex, failing, missing, 60):
        pass
    assert not mutex.locked()


def test_async_creator_gets_the_mutex_and_stale_value_returns_at_once() -> None:
    """dogpile's async-creator scenario: the stale value is returned while a
    thread regenerates; it releases the mutex; others meanwhile see it busy."""
    mutex = threading.Lock()
    store = {"value": "old", "created": -math.inf}
    go = threading.Event()
    threads: list[threading.Thread] = []

    def value_and_created() -> tuple[str, float]:
        return str(store["value"]), float(store["created"])

    def async_creator(held: Any) -> None:
        def run() -> None:
            try:
                go.wait(5)
                store.update(value="new", created=time.monotonic())
            finally:
                held.release()

        threads.append(threading.Thread(target=run))
        threads[-1].start()

    creator = _creator("sync")
    with Lock(mutex, creator, value_and_created, 60, async_creator) as value:
        assert value == "old"
    assert mutex.locked(), "the async creator owns the mutex"
    with Lock(mutex, creator, value_and_created, 60, async_creator) as value:
        assert value == "old", "busy: the stale value at once"
    assert len(threads) == 1
    go.set()
    threads[0].join()
    assert not mutex.locked() and not creator.called
    with Lock(mutex, creator, value_and_created, 60, async_creator) as value:
        assert value == "new"


# -- NameRegistry and ReadWriteMutex ---------------------------------------------


class Thing:
    def __init__(self, identifier: str) -> None:
        self.identifier = identifier


def test_name_registry_one_object_per_identifier_across_threads() -> None:
    """dogpile's NameRegistryTest: many threads, few identifiers, one object
    per identifier while referenced."""
    created: list[str] = []
    creating = threading.Lock()

    def create(identifier: str) -> Thing:
        with creating:
            created.append(identifier)
        time.sleep(0.001)
        return Thing(identifier)

    registry: NameRegistry[Thing] = NameRegistry(create)
    barrier = threading.Barrier(20)
    seen: list[Thing] = []

    def worker(index: int) -> None:
        barrier.wait()
        for round_ in range(20):
            seen.append(registry.get(f"id{(index + round_) % 3}"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(created) == ["id0", "id1", "id2"]
    assert len({id(thing) for thing in seen}) == 3
    assert all(registry.get(t.identifier) is t for t in seen)


def test_name_registry_forgets_unreferenced_objects() -> None:
    registry: NameRegistry[Thing] = NameRegistry(
        lambda identifier, suffix="": Thing(identifier + suffix)
    )
    first = registry.get("a", suffix="!")
    assert first.identifier == "a!" and registry.get("a") is first
    del first
    gc.collect()
    second = registry.get("a")
    assert second.identifier == "a"


def test_read_write_mutex() -> None:
    rw = ReadWriteMutex()
    assert rw.acquire_read_lock() and rw.acquire_read_lock(wait=False)
    assert not rw.acquire_write_lock(wait=False), "readers in progress"
    got_write = threading.Event()

    def writer() -> None:
        rw.acquire_write_lock()
        got_write.set()
        rw.release_write_lock()

    thread = threading.Thread(target=writer)
    thread.start()
    assert not got_write.wait(0.05), "the writer waits for the readers"
    rw.release_read_lock()
    rw.release_read_lock()
    thread.join(5)
    assert got_write.is_set()
    assert rw.acquire_write_lock(wait=False)
    assert not rw.acquire_read_lock(wait=False), "a writer holds it"
    rw.release_write_lock()


def test_read_write_mutex_wrong_release_raises() -> None:
    rw = ReadWriteMutex()
    with pytest.raises(LockError):
        rw.release_read_lock()
    with pytest.raises(LockError):
        rw.release_write_lock()
    rw.acquire_write_lock()
    errors: list[BaseException] = []

    def other_thread_releases() -> None:
        try:
            rw.release_write_lock()
        except LockError as error:
            errors.append(error)

    thread = threading.Thread(target=other_thread_releases)
    thread.start()
    thread.join()
    assert len(errors) == 1
    rw.release_write_lock()


# -- CacheMutex on every backend -------------------------------------------------


@pytest.mark.parametrize("backend", ["file"], indirect=True)
def test_file_cache_refuses_locks(backend: Any) -> None:
    """No atomic add: locks are refused, naming the backend."""
    with pytest.raises(LockNotSupported, match="file"):
        CacheMutex("m").acquire()
    with pytest.raises(LockNotSupported, match="FileBasedCache"):
        get_or_create("k", lambda: 1, 60)


def _wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.02)


def test_cache_mutex_excludes_and_only_the_owner_releases(
    lock_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = CacheMutex("m", timeout=0.5), CacheMutex("m", timeout=0.5)
    assert not first.locked()
    assert first.acquire(wait=False)
    assert first.fencing_token is not None
    fence = first.fencing_token
    assert first.locked() and second.locked()
    assert not second.acquire(wait=False)
    started = time.monotonic()
    assert not second.acquire(timeout=0.1), "a total deadline"
    assert 0.1 <= time.monotonic() - started < 1.0
    with pytest.raises(LockNotOwned):
        second.release()
    with pytest.raises(LockNotOwned):
        second.extend()
    assert first.extend()
    # The lock expires (the holder "crashed"); someone else takes it over.
    _wait_until(lambda: not second.locked())
    assert second.acquire(wait=False)
    assert second.fencing_token is not None and second.fencing_token > fence
    with caplog.at_level(logging.WARNING, logger="syncache"):
        assert not first.extend(), "lost: another process holds it"
        assert not first.release(), "lost: reported, and the other's lock kept"
    assert sum("was lost" in r.getMessage() for r in caplog.records) == 2
    assert second.locked()
    assert second.release()
    assert not second.locked()


def test_cache_mutex_excludes_threads_with_their_own_instances(
    lock_backend: Any,
) -> None:
    inside = threading.Lock()
    overlaps: list[int] = []
    fences: list[int] = []

    def worker(index: int) -> None:
        mutex = CacheMutex("shared", timeout=10)
        for _ in range(4):
            assert mutex.acquire(timeout=20)
            if not inside.acquire(False):
                overlaps.append(index)
            else:
                time.sleep(0.002)
                inside.release()
            assert mutex.fencing_token is not None
            fences.append(mutex.fencing_token)
            assert mutex.release()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []
    assert fences == sorted(fences) and len(set(fences)) == 24


def test_expired_lock_is_taken_over_by_exactly_one(lock_backend: Any) -> None:
    """Many takers of one expired lock: one wins. (Django's DatabaseCache.add
    takes an expired row over with a plain UPDATE, so two would win.)"""
    backend = lock_backend
    from syncache.medium import get_medium

    medium = get_medium()
    for round_ in range(5):
        key = f"expired-{round_}"
        backend.cache.set(key, "crashed holder", timeout=-1)
        barrier = threading.Barrier(8)
        won: list[int] = []

        def take(
            index: int, key: str = key, barrier: Any = barrier, won: list[int] = won
        ) -> None:
            barrier.wait()
            if medium.lock_acquire(key, f"token-{index}", 30):
                won.append(index)

        threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1
        assert not medium.lock_release(key, "token-x"), "not the owner"
        assert medium.lock_release(key, f"token-{won[0]}")


def test_cache_mutex_refuses_non_positive_timeouts() -> None:
    with pytest.raises(ValueError, match="> 0"):
        CacheMutex("m", timeout=0)


# -- get_or_create on every backend ----------------------------------------------


class Counter:
    def __init__(self, *values: Any) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.values[min(self.calls, len(self.values)) - 1]


def test_get_or_create_creates_once_then_serves(lock_backend: Any) -> None:
    creator = Counter({"v": 1}, {"v": 2})
    assert get_or_create("k", creator, 60) == {"v": 1}
    assert get_or_create("k", creator, 60) == {"v": 1}
    assert creator.calls == 1
    invalidate("k")
    assert get_or_create("k", creator, 60) == {"v": 2}, "stale, lock free: recreated"
    assert creator.calls == 2
    assert get_or_create(("k", "other"), Counter(None), None) is None, "None stored"


def test_stale_value_is_served_while_another_holds_the_lock(lock_backend: Any) -> None:
    get_or_create("k", Counter("old"), 60)
    invalidate("k")
    holder = CacheMutex("k", timeout=30, namespace="dogpile")
    assert holder.acquire(wait=False)
    creator = Counter("new")
    assert get_or_create("k", creator, 60) == "old"
    assert creator.calls == 0
    holder.release()
    assert get_or_create("k", creator, 60) == "new"


def test_the_winner_rechecks_under_the_lock(lock_backend: Any) -> None:
    """Stale when read, fresh once the lock is won (another process just
    stored it): the creator is not called again."""
    get_or_create("k", Counter("old"), 60)
    invalidate("k")
    from syncache import dogpile

    real_read = dogpile._read
    reads = [0]

    def read_then_someone_refreshes(*args: Any) -> Any:
        reads[0] += 1
        result = real_read(*args)
        if reads[0] == 1:
            invalidate("k", hard=True)
            get_or_create("k", Counter("theirs"), 60)
        return result

    creator = Counter("mine")
    with mock.patch.object(dogpile, "_read", read_then_someone_refreshes):
        assert get_or_create("k", creator, 60) == "theirs"
    assert creator.calls == 0


def test_creator_error_stores_nothing_and_frees_the_lock(lock_backend: Any) -> None:

    def failing() -> Any:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        get_or_create("k", failing, 60)
    assert not CacheMutex("k", namespace="dogpile").locked()
    assert get_or_create("k", Counter("ok"), 60) == "ok"


def test_unpicklable_value_is_a_clear_error(lock_backend: Any) -> None:
    with pytest.raises(UnpicklableValue, match="'the-key'"):
        get_or_create("the-key", lambda: threading.Lock(), 60)
    assert not CacheMutex("the-key", namespace="dogpile").locked()


def test_decorator(lock_backend: Any) -> None:
    calls: list[tuple[int, int]] = []

    @cache_on_arguments(60)
    def add(a: int, b: int = 0) -> int:
        calls.append((a, b))
        return a + b

    assert add(1, b=2) == 3 and add(1, b=2) == 3 and add(2) == 2
    assert calls == [(1, 2), (2, 0)]
    add.invalidate(1, b=2)  # type: ignore[attr-defined]
    assert add(1, b=2) == 3
    assert calls == [(1, 2), (2, 0), (1, 2)]


# -- early recomputation (XFetch) -----------------------------------------------


def test_early_expiry_is_xfetchs_gap() -> None:
    assert early_expiry(0.5, 0.0) == 0.0, "beta 0: off"
    assert early_expiry(0.0, 1.0) == 0.0, "an instant creator: nothing early"
    assert early_expiry(0.5, 2.0, draw=3.0) == pytest.approx(3.0)
    draws = [early_expiry(0.1, 1.0) for _ in range(2000)]
    assert min(draws) >= 0
    # Exponential with mean duration * beta (0.1): the sample mean is within
    # 0.08-0.12 with overwhelming probability (sd of the mean ~0.0022).
    assert 0.08 < sum(draws) / len(draws) < 0.12


def _slow_creator(value: Any) -> Any:
    def creator() -> Any:
        began = time.monotonic()
        while time.monotonic() == began:  # a measurable duration, however small
            pass
        return value

    return creator


def test_beta_recomputes_before_expiretime(lock_backend: Any) -> None:
    # A gap of (duration * 1e12 * draw) seconds exceeds the 600 s freshness
    # unless the draw is below ~1e-9: the value is stored already stale, and
    # the next caller (lock free) recomputes it while 600 s have not passed.
    assert get_or_create("x", _slow_creator("v1"), 600, beta=1e12) == "v1"
    assert get_or_create("x", _slow_creator("v2"), 600, beta=1e12) == "v2"
    # Without beta the same value stays fresh.
    assert get_or_create("y", _slow_creator("v1"), 600) == "v1"
    assert get_or_create("y", _slow_creator("v2"), 600) == "v1"


def test_early_stale_value_is_still_served_to_others(lock_backend: Any) -> None:
    get_or_create("x", _slow_creator("old"), 600, beta=1e12)
    holder = CacheMutex("x", timeout=30, namespace="dogpile")
    assert holder.acquire(wait=False)
    try:
        assert get_or_create("x", _slow_creator("new"), 600, beta=1e12) == "old"
    finally:
        holder.release()


@pytest.mark.parametrize("beta", [-1, math.inf, math.nan, "1"])
def test_bad_beta_is_a_clear_error(beta: Any) -> None:
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        get_or_create("k", _creator(1), 60, beta=beta)
    with pytest.raises(ValueError, match="beta must be"):
        cache_on_arguments(60, beta=beta)


# -- outage ------------------------------------------------------------------------


@contextlib.contextmanager
def _stopped(server: Any) -> Iterator[None]:
    server.stop()
    try:
        yield
    finally:
        server.restart()


def test_outage_runs_the_creator_in_process(
    redis_backend_isolated: Any, caplog: pytest.LogCaptureFixture
) -> None:
    assert get_or_create("k", Counter("cached"), 60) == "cached"
    creator = Counter("computed")
    with (
        _stopped(redis_backend_isolated.server),
        caplog.at_level(logging.ERROR, logger="syncache"),
    ):
        assert get_or_create("k", creator, 60) == "computed"
        assert get_or_create("k", creator, 60) == "computed"
        mutex = CacheMutex("m")
        assert mutex.acquire() and mutex.degraded
        assert not mutex.acquire(wait=False), "still excludes in this process"
        assert mutex.release()
    assert creator.calls == 2
    assert [r.levelno for r in caplog.records] == [logging.ERROR], "logged once"
    # The restarted server is empty: created once more, then cached again.
    assert get_or_create("k", creator, 60) == "computed"
    assert get_or_create("k", creator, 60) == "computed"
    assert creator.calls == 3


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_a_database_cache_lock_inside_its_transaction_is_refused(
    backend: Any,
) -> None:
    from django.db import transaction

    from syncache import HashDSpinlock, LockInTransaction

    assert backend.database is not None
    mutex = CacheMutex("in-transaction")
    with transaction.atomic(using=backend.database):
        with pytest.raises(LockInTransaction, match=r"before transaction\.atomic"):
            mutex.acquire()
        with pytest.raises(LockInTransaction), HashDSpinlock("in-transaction"):
            pass
    assert not mutex.locked()
    assert mutex.acquire(wait=False), "outside the transaction it works"
    mutex.release()


def _refuse_to_load() -> None:
    raise RuntimeError("this value cannot be loaded any more")


class _Unloadable:
    """Pickles fine; unpickling fails (as a class renamed since it was
    stored does)."""

    def __reduce__(self) -> Any:
        return (_refuse_to_load, ())


def test_an_undecodable_value_is_replaced(lock_backend: Any) -> None:
    from django.core.cache import caches

    from syncache import dogpile

    get_or_create("k", Counter("old"), None)
    caches["default"].set(dogpile._ValueKeys.of("k").value, _Unloadable(), None)
    creator = Counter("new")
    assert get_or_create("k", creator, None) == "new"
    assert get_or_create("k", creator, None) == "new"
    assert creator.calls == 1, "stored over the value that could not be read"


def test_a_value_stale_from_the_start_is_not_made_fresh_by_an_old_marker(
    lock_backend: Any,
) -> None:
    assert get_or_create("x", _slow_creator("v1"), 600) == "v1"
    invalidate("x")
    # beta: XFetch's gap eats the 600 s, so v2 is stored stale at once.
    assert get_or_create("x", _slow_creator("v2"), 600, beta=1e12) == "v2"
    assert get_or_create("x", _slow_creator("v3"), 600, beta=1e12) == "v3"
