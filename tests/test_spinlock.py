"""syncache.spinlock in one process: dspinlock's API and the fixed semantics.

Every lock test runs on each backend that can hold a lock (``lock_backend``:
locmem, the SQLite and PostgreSQL database caches, Redis, django-redis,
memcached). Expiry and take-over are simulated by deleting the state key,
as an expiry or an eviction would, except in the test of the real expiry.
Cross-process scenarios are in ``tests/scenarios/test_spinlock_processes.py``;
the medium's lock primitives are tested in ``tests/test_lock_signal.py``.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import hashlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import caches
from django.db import models

from syncache import (
    AtomicQueryInvalidStateException,
    DSpinlockBase,
    DSpinlockError,
    FailIfKeyExistsIsEnabled,
    HashDSpinlock,
    InvalidMutexReleaseEncountered,
    InvalidValueEncounteredDuringUnpacking,
    LockError,
    ProvidedObjectIsNotHashable,
    RedisNotInitializedException,
    SpinlockTriesExceeded,
    fenced_update,
)
from syncache.medium import Medium, get_medium
from syncache.spinlock import RedisParameters, stable_hash
from tests.models import SiteSetting

#: Waiters that must not give up while a test holds the lock elsewhere.
PATIENT = {"max_spinlock_tries": 10_000, "spinlock_sleep_thresh": 0.02}
WAIT = 30.0


class FencedRecord(models.Model):
    """A row written under a spin lock, guarded by its fencing token."""

    name = models.CharField(max_length=50)
    fence = models.BigIntegerField(default=0)
    value = models.IntegerField(default=0)

    class Meta:
        app_label = "tests"


def stored(lock: DSpinlockBase) -> Any:
    return get_medium().lock_value(lock.state_key)


def patient(obj: Any, **kwargs: Any) -> HashDSpinlock:
    lock = HashDSpinlock(obj, **kwargs)
    for name, value in PATIENT.items():
        setattr(lock, name, value)
    return lock


@pytest.fixture
def wait_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Record what every ``lock_wait`` of the test's medium returned."""
    medium = get_medium()
    real = medium.lock_wait
    calls: list[bool] = []

    def spy(key: str, seconds: float) -> bool:
        woken = real(key, seconds)
        calls.append(woken)
        return woken

    monkeypatch.setattr(medium, "lock_wait", spy)
    yield calls


# -- the lock -------------------------------------------------------------------


def test_each_acquisition_has_a_larger_fencing_token(lock_backend: Any) -> None:
    tokens = []
    for _ in range(3):
        with HashDSpinlock("report") as lock:
            assert lock.acquired and not lock.degraded
            assert str(stored(lock)).startswith("computing,")
            tokens.append(lock.fencing_token)
        assert not lock.acquired and lock.fencing_token is None
    assert tokens == sorted(set(tokens)) and len(tokens) == 3
    assert all(isinstance(token, int) for token in tokens)
    assert str(stored(lock)).startswith("computed,")


def test_threads_exclude_each_other(lock_backend: Any) -> None:
    inside = threading.Lock()
    overlaps: list[int] = []
    tokens: list[int | None] = []

    def worker() -> None:
        for _ in range(5):
            with patient("shared") as lock:
                if not inside.acquire(blocking=False):
                    overlaps.append(1)
                    continue
                tokens.append(lock.fencing_token)
                inside.release()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []
    assert tokens == sorted(tokens) and len(set(tokens)) == 20


def test_fail_if_key_exists(lock_backend: Any) -> None:
    with HashDSpinlock("job", fail_if_key_exists=True) as lock:
        assert lock.acquired
        with pytest.raises(FailIfKeyExistsIsEnabled, match="computing"):
            HashDSpinlock("job", fail_if_key_exists=True).acquire()
    with pytest.raises(FailIfKeyExistsIsEnabled, match="computed"):
        HashDSpinlock("job", fail_if_key_exists=True).acquire()
    assert HashDSpinlock("job").delete_atomic_query_mutex_state()
    with HashDSpinlock("job", fail_if_key_exists=True) as lock:
        assert lock.acquired


def test_cached_if_computed_returns_at_once(
    lock_backend: Any, wait_calls: list[bool]
) -> None:
    with HashDSpinlock("cached", cached_if_computed=True) as first:
        assert first.acquired, "nothing was computed yet"
    computed = stored(first)
    ran = []
    with HashDSpinlock("cached", cached_if_computed=True) as second:
        ran.append(second.acquired)
        assert second.fencing_token is None
    assert ran == [False], "the body runs, and knows it does not hold the lock"
    assert wait_calls == [], "no wait at all"
    assert stored(second) == computed, "the state is left as it was"
    with HashDSpinlock("cached") as third:
        assert third.acquired, "without cached_if_computed it computes again"


def test_a_waiter_returns_once_its_holder_computed(
    lock_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    medium = get_medium()
    real = medium.lock_wait
    waiting = threading.Event()

    def spy(key: str, seconds: float) -> bool:
        waiting.set()
        return real(key, seconds)

    monkeypatch.setattr(medium, "lock_wait", spy)
    results: list[bool] = []
    holder = HashDSpinlock("slow")
    holder.acquire()
    waiter = threading.Thread(
        target=lambda: results.append(
            patient("slow", cached_if_computed=True).acquire()
        )
    )
    waiter.start()
    assert waiting.wait(WAIT)
    holder.release()
    waiter.join()
    assert results == [False]


@pytest.mark.parametrize("lock_backend", ["redis", "django_redis"], indirect=True)
def test_every_waiter_of_a_computed_state_is_woken(
    lock_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Redis the holder's release wakes one waiter, which wakes the next.
    After two short polls the waiters wait a minute (their threshold): each
    of those waits must have been ended by a wake-up."""
    medium = get_medium()
    real = medium.lock_wait
    blocking = threading.Semaphore(0)
    long_waits: list[bool] = []

    def spy(key: str, seconds: float) -> bool:
        if seconds < 1:
            return real(key, seconds)
        blocking.release()
        result = real(key, seconds)
        long_waits.append(result)
        return result

    monkeypatch.setattr(medium, "lock_wait", spy)
    results: list[bool] = []
    holder = HashDSpinlock("fan-out")
    holder.acquire()

    def wait() -> None:
        lock = HashDSpinlock("fan-out", cached_if_computed=True)
        lock.spinlock_sleep_thresh = 60.0
        results.append(lock.acquire())

    waiters = [threading.Thread(target=wait) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    for _ in waiters:
        assert blocking.acquire(timeout=WAIT)
    holder.release()
    for waiter in waiters:
        waiter.join()
    assert results == [False, False, False]
    assert long_waits == [True, True, True]
    signals = medium.full_key(holder.state_key + "!signal")  # type: ignore[attr-defined]
    assert medium.client().llen(signals) <= 1  # type: ignore[attr-defined]


def test_a_body_that_raises_leaves_nothing_computed(lock_backend: Any) -> None:
    with pytest.raises(ValueError, match="boom"), HashDSpinlock("fails") as lock:
        assert lock.acquired
        raise ValueError("boom")
    assert stored(lock) is None
    with HashDSpinlock("fails", cached_if_computed=True) as again:
        assert again.acquired, "not computed: the next caller computes"


def test_tries_exceeded_against_a_foreign_holder(
    lock_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Impatient(HashDSpinlock):
        max_spinlock_tries = 3
        spinlock_sleep_thresh = 0.01

    medium = get_medium()
    takes = []
    real = medium.lock_take

    def spy(*args: Any, **kwargs: Any) -> Any:
        takes.append(args[0])
        return real(*args, **kwargs)

    with HashDSpinlock("busy") as holder:
        monkeypatch.setattr(medium, "lock_take", spy)
        with pytest.raises(SpinlockTriesExceeded, match="tries limit of 3"):
            Impatient("busy").acquire()
        assert len(takes) >= 3
        assert str(stored(holder)).startswith("computing,"), "still the holder's"
    assert str(stored(holder)).startswith("computed,")


@pytest.mark.parametrize(
    ("write", "error"),
    [
        ("garbage", InvalidValueEncounteredDuringUnpacking),
        ("computing,a,b", InvalidValueEncounteredDuringUnpacking),
        ("frozen,abc", AtomicQueryInvalidStateException),
    ],
)
def test_a_value_no_lock_wrote_is_an_error(
    lock_backend: Any, write: str, error: type[Exception]
) -> None:
    lock = HashDSpinlock("odd")
    assert get_medium().lock_acquire(lock.state_key, write, 60)
    with pytest.raises(error, match="delete_atomic_query_mutex_state"):
        lock.acquire()
    assert lock.delete_atomic_query_mutex_state(), "a value no lock wrote is deleted"
    with lock:
        assert lock.acquired


def test_a_value_stored_through_django_is_an_error(lock_backend: Any) -> None:
    lock = HashDSpinlock("odd")
    caches["default"].set(lock.state_key, 12345)
    with pytest.raises(InvalidValueEncounteredDuringUnpacking, match="12345"):
        lock.acquire()


_unpickled: list[str] = []


def _run_on_unpickle() -> str:
    _unpickled.append("code ran")
    return "computing,planted"


class Planted:
    """A value whose unpickling runs code (what a hostile writer of a
    shared cache could plant)."""

    def __reduce__(self) -> Any:
        return (_run_on_unpickle, ())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_a_planted_pickle_never_runs(backend: Any) -> None:
    lock = HashDSpinlock("planted")
    caches["default"].set(lock.state_key, Planted())
    with pytest.raises(InvalidValueEncounteredDuringUnpacking):
        lock.acquire()
    assert _unpickled == [], "the lock read it without unpickling code"


def test_delete_atomic_query_mutex_state(lock_backend: Any) -> None:
    with HashDSpinlock("state") as lock:
        assert not lock.delete_atomic_query_mutex_state(), "its own lock is kept"
        assert not HashDSpinlock("state").delete_atomic_query_mutex_state()
        assert str(stored(lock)).startswith("computing,")
    assert lock.delete_atomic_query_mutex_state()
    assert stored(lock) is None
    assert not lock.delete_atomic_query_mutex_state()


def test_a_release_after_expiry_spares_the_new_holder(lock_backend: Any) -> None:
    first = HashDSpinlock("lost")
    first.acquire()
    get_medium().delete(first.state_key)  # it expired
    second = HashDSpinlock("lost")
    second.acquire()
    taken = stored(second)
    with pytest.raises(InvalidMutexReleaseEncountered, match="was lost"):
        first.release()
    assert stored(second) == taken
    with pytest.raises(InvalidMutexReleaseEncountered, match="does not hold"):
        HashDSpinlock("lost").release()
    assert stored(second) == taken, "not even deleted by a failed release"
    second.release()
    assert str(stored(second)).startswith("computed,")
    assert second.fencing_token is None


def test_a_body_error_is_not_hidden_by_a_lost_lock(
    lock_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(KeyError), HashDSpinlock("lost-and-failed") as lock:
        get_medium().delete(lock.state_key)
        raise KeyError("body")
    assert "was lost" in caplog.text and "KeyError" in caplog.text


@pytest.mark.parametrize(
    "lock_backend",
    ["locmem", "sqlite", "postgres", "redis", "django_redis"],
    indirect=True,
)
def test_max_block_time_is_the_caches_own_expiry(lock_backend: Any) -> None:
    class Short(HashDSpinlock):
        max_block_time = dt.timedelta(milliseconds=200)

    holder = Short("stuck")
    holder.acquire()
    waiter = patient("stuck")
    assert waiter.acquire(), "taken once the holder's lock expired in the cache"
    assert waiter.fencing_token is not None and holder.fencing_token is not None
    assert waiter.fencing_token > holder.fencing_token
    with pytest.raises(InvalidMutexReleaseEncountered):
        holder.release()
    waiter.release()


def test_a_lock_is_not_reentrant(lock_backend: Any) -> None:
    with (
        HashDSpinlock("once") as lock,
        pytest.raises(AtomicQueryInvalidStateException, match="reentrant"),
    ):
        lock.acquire()


@pytest.mark.parametrize("backend", ["file"], indirect=True)
def test_file_cache_cannot_hold_a_spin_lock(backend: Any) -> None:
    with pytest.raises(RedisNotInitializedException, match="FileBasedCache"):
        HashDSpinlock("x")


# -- keys -------------------------------------------------------------------------


class Colour(enum.Enum):
    RED = 1


class Size(enum.IntEnum):
    ONE = 1


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int
    label: str = dataclasses.field(default="", compare=False)


Pair = collections.namedtuple("Pair", "a b")


def test_the_key_is_dspinlocks_format_with_a_stable_hash() -> None:
    expected = hashlib.sha256(b"s7:example").hexdigest()
    assert HashDSpinlock("example").get_key() == f"dspinlock,{expected}"
    assert stable_hash("example") == expected


@pytest.mark.parametrize(
    "same",
    [
        [1, 1.0, True, decimal.Decimal("1.00"), fractions.Fraction(2, 2), Size.ONE],
        [0.5, decimal.Decimal("0.5"), fractions.Fraction(1, 2)],
        [("a", 1), Pair("a", 1)],
        [frozenset({"a", "b"}), frozenset({"b", "a"})],
        [
            dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc),
            dt.datetime(2024, 1, 1, 13, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        ],
        [Point(1, 2, "a"), Point(1, 2, "b")],
        [float("inf"), decimal.Decimal("Infinity")],
    ],
)
def test_equal_objects_share_a_key(same: list[Any]) -> None:
    assert len({stable_hash(obj) for obj in same}) == 1


def test_different_objects_have_different_keys() -> None:
    objects = [
        None,
        "1",
        1,
        b"1",
        ("a", "b"),
        ("ab",),
        ("a", ("b",)),
        (("a",), "b"),
        frozenset({"a"}),
        Colour.RED,
        dt.date(2024, 1, 1),
        dt.datetime(2024, 1, 1),
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        dt.timedelta(days=1),
        uuid.UUID(int=1),
        SiteSetting(pk=1),
        Point(1, 2),
        "",
        (),
    ]
    assert len({stable_hash(obj) for obj in objects}) == len(objects)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([1, 2], "Hashable"),
        ({"a": 1}, "Hashable"),
        (("a", [1]), "Hashable|same in every process"),
        (object(), "_get_uid"),
        (1 + 2j, "same in every process"),
        (SiteSetting(), "unsaved"),
    ],
)
def test_objects_without_a_stable_key_are_refused(obj: Any, match: str) -> None:
    with pytest.raises(ProvidedObjectIsNotHashable, match=match):
        stable_hash(obj)


def test_hash_lock_refuses_such_objects_at_construction(lock_backend: Any) -> None:
    with pytest.raises(ProvidedObjectIsNotHashable) as error:
        HashDSpinlock(object())
    assert isinstance(error.value, TypeError)


def test_subclasses_choose_their_key(lock_backend: Any) -> None:
    class Prefixed(HashDSpinlock):
        _key_prefix = "reports"
        _key_sep = ":"

    class ById(DSpinlockBase):
        def get_key(self) -> str:
            return f"job-{self._obj.id}"

    class Job:
        id = 7

    assert Prefixed("x").get_key() == f"reports:{stable_hash('x')}"
    with ById(Job()) as lock:
        assert lock.get_key() == "job-7" and lock.acquired


# -- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attribute", "value", "error"),
    [
        ("max_spinlock_tries", 0, ValueError),
        ("max_spinlock_tries", 2.5, ValueError),
        ("spinlock_sleep_thresh", -1, ValueError),
        ("spinlock_sleep_thresh", "fast", ValueError),
        ("max_block_time", 60, TypeError),
        ("expire_at_timedelta", dt.timedelta(0), ValueError),
    ],
)
def test_invalid_class_attributes_are_reported(
    lock_backend: Any, attribute: str, value: Any, error: type[Exception]
) -> None:
    bad = type("Bad", (HashDSpinlock,), {attribute: value})
    with pytest.raises(error, match=attribute):
        bad("x")


def test_a_key_that_is_not_text_is_reported(lock_backend: Any) -> None:
    class Numbered(DSpinlockBase):
        def get_key(self) -> str:
            return 42  # type: ignore[return-value]

    with pytest.raises(TypeError, match="must return a str"):
        Numbered("x").acquire()


def test_every_error_has_one_base_class() -> None:
    for error in (
        AtomicQueryInvalidStateException,
        InvalidMutexReleaseEncountered,
        RedisNotInitializedException,
        SpinlockTriesExceeded,
        InvalidValueEncounteredDuringUnpacking,
        FailIfKeyExistsIsEnabled,
        ProvidedObjectIsNotHashable,
    ):
        assert issubclass(error, DSpinlockError)
        assert issubclass(error, LockError)


# -- dspinlock's sess= and redis_params= --------------------------------------


@pytest.mark.parametrize("lock_backend", ["locmem"], indirect=True)
def test_sess_and_redis_params_keep_the_lock_in_that_redis(
    lock_backend: Any, redis_server: Any
) -> None:
    import redis

    sess = redis.Redis(host="127.0.0.1", port=redis_server.port, db=3)
    params = RedisParameters(redis_host="127.0.0.1", port=redis_server.port, rdb=3)
    try:
        with HashDSpinlock("elsewhere", sess=sess) as lock:
            assert lock.acquired
            raw = sess.get(lock.state_key)
            assert raw is not None and raw.startswith(b"computing,")
            with pytest.raises(FailIfKeyExistsIsEnabled):
                HashDSpinlock(
                    "elsewhere", redis_params=params, fail_if_key_exists=True
                ).acquire()
            assert stored(lock) is None, "nothing in the Django cache"
        with HashDSpinlock("elsewhere", redis_params=params) as again:
            assert again.fencing_token == 2
    finally:
        sess.flushdb()
        sess.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sess": "redis://x"}, RedisNotInitializedException, "redis-py client"),
        ({"sess": object(), "redis_params": RedisParameters()}, ValueError, "not both"),
        (
            {"redis_params": RedisParameters(), "cache_alias": "default"},
            ValueError,
            "two different places",
        ),
        ({"redis_params": {"port": 1}}, TypeError, "RedisParameters"),
    ],
)
def test_bad_connection_arguments(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        HashDSpinlock("x", **kwargs)


# -- outage and fencing -------------------------------------------------------


def test_an_outage_runs_the_body_held_in_this_process(
    redis_backend_isolated: Any,
) -> None:
    import redis

    redis_backend_isolated.server.stop()
    with HashDSpinlock("down") as lock:
        assert lock.acquired and lock.degraded and lock.fencing_token is None
        impatient = HashDSpinlock("down")
        impatient.max_spinlock_tries, impatient.spinlock_sleep_thresh = 1, 0.0
        with pytest.raises(SpinlockTriesExceeded, match="another thread"):
            impatient.acquire()
    with (
        redis_backend_isolated.syncache_settings(FAILURE_POLICY="raise"),
        pytest.raises(redis.exceptions.ConnectionError),
        HashDSpinlock("down"),
    ):
        pass


@pytest.mark.django_db
@pytest.mark.parametrize("lock_backend", ["redis"], indirect=True)
def test_fenced_update_refuses_an_older_holder(lock_backend: Any) -> None:
    row = FencedRecord.objects.create(name="total")
    rows = FencedRecord.objects.filter(pk=row.pk)
    old = HashDSpinlock("total")
    old.acquire()
    get_medium().delete(old.state_key)  # it expired; another holder took it
    with HashDSpinlock("total") as new:
        token = new.fencing_token
        assert fenced_update(rows, token, value=2) == 1
        assert fenced_update(rows, token, value=3) == 1, "again, same holder"
    assert fenced_update(rows, old.fencing_token, value=1) == 0
    row.refresh_from_db()
    assert (row.value, row.fence) == (3, token)
    with pytest.raises(ValueError, match="fencing token"):
        fenced_update(rows, None, value=4)


def test_two_objects_are_two_locks(lock_backend: Any) -> None:
    medium: Medium = get_medium()
    with HashDSpinlock("a") as first, HashDSpinlock("b") as second:
        assert first.acquired and second.acquired
        assert medium.lock_held(first.state_key)
