"""Bad input: Hypothesis fuzzing of every public entry point that takes user
data, against real backends (memcached is the strictest about keys).

Each call must either work end to end on the backend (the keys it makes are
stored, read and deleted there) or raise one of the exceptions its
documentation names. ``FAILURE_POLICY`` is ``"raise"`` and Django's
``CacheKeyWarning`` is an error, so a backend protocol error or a key that
memcached would refuse cannot hide behind syncache's "treat it as expired".
Every key made is recorded with the input it was made from: two inputs the
documentation calls different must never share a key.
"""

from __future__ import annotations

import decimal
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.cache.backends.base import CacheKeyWarning
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncache import (
    CacheIdError,
    CacheMutex,
    DSpinlockBase,
    GenerationSynchronizer,
    Group,
    GroupKeyError,
    HashDSpinlock,
    LocalSyncCache,
    LockNotSupported,
    ProvidedObjectIsNotHashable,
    UnpicklableValue,
    fenced_update,
    get_or_create,
    make_cache_key,
)
from syncache.dogpile import (
    FENCE_SUFFIX,
    FRESH_SUFFIX,
    GEN_SUFFIX,
    HARD_SUFFIX,
    LOCK_SUFFIX,
    MAX_LOCK_TIMEOUT,
    invalidate,
)
from syncache.dogpile import NAMESPACE as DOGPILE
from syncache.groups import get_local_key, normalize_value
from syncache.medium import get_medium
from tests.harness.backends import Backend
from tests.stress.report import Figure, record
from tests.stress.sizes import FULL, FUZZ_EXAMPLES

#: memcached first: it refuses the most keys.
BACKENDS = ("memcached", "redis", "sqlite", "file") if FULL else ("memcached", "redis")

FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Text of every kind: control characters, spaces, the separators syncache
#: uses (":", "!", "#", "%"), long strings. (Lone surrogates are left out:
#: they have a test of their own, below.)
characters = st.characters(exclude_categories=["Cs"])
text = st.one_of(
    st.text(characters),
    st.text(alphabet=st.sampled_from(":!#%, \r\n\x00é\u2028"), max_size=12),
    st.text(characters, min_size=200, max_size=400),
)
keys = st.one_of(text, st.lists(text, min_size=1, max_size=4))
not_keys = st.one_of(
    st.none(),
    st.integers(),
    st.binary(),
    st.just([]),
    st.lists(st.integers(), min_size=1),
    st.tuples(text, st.integers()),
)


@pytest.fixture
def strict(backend: Backend, fresh_registry: Any) -> Iterator[Backend]:
    """A backend with FAILURE_POLICY "raise" and CacheKeyWarning as error.

    The database and file caches keep 300 entries by default and cull the
    rest: values would vanish between two calls of one example. Culling is
    the model's business (tests/stress/test_stateful.py), not the fuzzer's.
    """
    from django.test import override_settings

    caches_setting = {
        alias: {
            **config,
            "OPTIONS": {**config.get("OPTIONS", {}), "MAX_ENTRIES": 10**6},
        }
        if backend.name in ("sqlite", "file", "postgres")
        else config
        for alias, config in backend.caches.items()
    }
    with (
        override_settings(CACHES=caches_setting),
        backend.syncache_settings(FAILURE_POLICY="raise"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("error", CacheKeyWarning)
        yield backend


#: Every fuzz test runs once per backend in BACKENDS.
on_backends = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


class Keys:
    """Every key made, with the input (made canonical) it came from."""

    def __init__(self) -> None:
        self.owner: dict[str, Any] = {}
        self.calls = 0

    def add(self, key: str, source: Any) -> None:
        previous = self.owner.setdefault(key, source)
        assert previous == source, f"{source!r} and {previous!r} share key {key!r}"


def documented(
    call: Callable[[], Any], *allowed: type[BaseException]
) -> tuple[bool, Any]:
    """Run ``call``; return (True, result), or (False, exc) for an allowed
    exception. Anything else propagates and fails the test."""
    try:
        return True, call()
    except allowed as exc:
        return False, exc


def round_trip(keys: list[str]) -> None:
    """Store, read back and delete ``keys`` on the backend itself."""
    medium = get_medium()
    for key in keys:
        medium.set(key, 1)
        assert medium.get(key) == 1, f"{key!r} was not stored"
        medium.delete(key)


def is_key(key: Any) -> bool:
    """Whether make_cache_key documents ``key`` as valid."""
    if isinstance(key, str):
        return True
    return (
        isinstance(key, list | tuple)
        and bool(key)
        and all(isinstance(part, str) for part in key)
    )


def _canonical_key(key: Any) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else tuple(key)


def _record(strict: Backend, entry: str, keys: Keys) -> None:
    record(
        Figure(
            scenario=f"fuzz: {entry}",
            backend=strict.name,
            operations=keys.calls,
            stale_reads=0,
            faults="-",
            exceptions=0,
            recovery="-",
            notes=f"{len(keys.owner):,} distinct keys, no collision",
        )
    )


# -- keys, ids, synchronizers --------------------------------------------------


@on_backends
def test_make_cache_key(strict: Backend) -> None:
    made = Keys()

    @FUZZ
    @given(st.one_of(keys, not_keys))
    def fuzz(key: Any) -> None:
        made.calls += 1
        ok, result = documented(lambda: make_cache_key(key), TypeError, ValueError)
        if ok:
            made.add(result, _canonical_key(key))
            round_trip([result])
        else:
            assert not is_key(key), f"{key!r} is a valid key: {result!r}"

    fuzz()
    _record(strict, "make_cache_key", made)


@on_backends
def test_local_sync_cache_ids(strict: Backend) -> None:
    from syncache import check_all

    made = Keys()

    @FUZZ
    @given(st.one_of(text, not_keys))
    def fuzz(cache_id: Any) -> None:
        made.calls += 1
        ok, cache = documented(
            lambda: LocalSyncCache(cache_id, unique_ids=False), CacheIdError
        )
        if not ok:
            assert not (isinstance(cache_id, str) and cache_id)
            return
        made.add(cache.cache_key, ("local", cache_id))
        cache["value"] = 1
        cache.clear()
        check_all()
        cache.check_state()
        assert "value" not in cache
        twin_ok, _ = documented(lambda: LocalSyncCache(cache_id), CacheIdError)
        assert not twin_ok, "a second live instance with the same id was accepted"

    fuzz()
    _record(strict, "LocalSyncCache ids", made)


@on_backends
def test_generation_synchronizer_keys(strict: Backend) -> None:
    made = Keys()

    @FUZZ
    @given(st.one_of(keys, not_keys), st.booleans())
    def fuzz(key: Any, normalize: bool) -> None:
        made.calls += 1
        ok, sync = documented(
            lambda: GenerationSynchronizer(key, normalize_cache_key=normalize),
            TypeError,
            ValueError,
        )
        if not ok:
            assert not (normalize and is_key(key)), f"{key!r}: {sync!r}"
            return
        if normalize:  # a raw key is the user's own: sharing it is the point
            made.add(sync.cache_key, _canonical_key(key))
        watcher = GenerationSynchronizer(sync.cache_key, normalize_cache_key=False)
        sync.mark_updated()
        assert watcher.is_expired()
        watcher.refresh()
        assert not watcher.is_expired()
        sync.clear()
        assert watcher.is_expired()

    fuzz()
    _record(strict, "GenerationSynchronizer keys", made)


# -- groups ----------------------------------------------------------------------

group_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    text,
    st.uuids(),
    st.decimals(allow_nan=False),
    st.dates(),
    st.datetimes(timezones=st.none() | st.timezones()),
    # Not accepted (documented TypeError):
    st.floats(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(text, st.integers(), max_size=2),
    st.binary(max_size=4),
)
mappings = st.dictionaries(text, group_values, max_size=4)


def _normalized(name: str, mapping: dict[str, Any]) -> tuple[Any, ...]:
    return (name, tuple(sorted((k, normalize_value(k, v)) for k, v in mapping.items())))


@on_backends
def test_group_mappings(strict: Backend) -> None:
    made = Keys()

    @FUZZ
    @given(text, mappings)
    def fuzz(name: str, mapping: dict[str, Any]) -> None:
        made.calls += 1
        ok, group = documented(lambda: Group(name, **mapping), TypeError, ValueError)
        if not ok:
            with pytest.raises((TypeError, ValueError)):
                _normalized(name, mapping)
            return
        made.add(group.local_key, _normalized(name, mapping))
        entry = f"entry-{made.calls}"  # the group may come again: a new entry
        assert group.get_or_set(entry, lambda: "one") == "one"
        assert group.get(entry) == "one"
        group.bump()
        assert group.get(entry) is None
        assert group.get_or_set(entry, "two") == "two"

    fuzz()
    _record(strict, "Group mappings", made)


group_specs = st.one_of(
    st.none(),
    text,
    st.lists(text, max_size=3),
    st.dictionaries(text, text, max_size=3),
    st.integers(),
    st.binary(),
)


@on_backends
def test_group_definitions(strict: Backend) -> None:
    """Group definitions over view keywords (``get_local_key``)."""
    made = Keys()

    @FUZZ
    @given(group_specs, st.dictionaries(text, group_values, max_size=3))
    def fuzz(spec: Any, view_keywords: dict[str, Any]) -> None:
        made.calls += 1
        ok, local_key = documented(
            lambda: get_local_key(spec, view_keywords, view_name="fuzzed"),
            GroupKeyError,
            TypeError,
            ValueError,
        )
        if ok:
            round_trip([local_key])

    fuzz()
    _record(strict, "group definitions", made)


# -- get_or_create, locks ----------------------------------------------------------

values = st.one_of(
    st.integers(),
    text,
    st.lists(st.integers(), max_size=3),
    st.just(lambda: None),  # not picklable: UnpicklableValue
)


@on_backends
def test_get_or_create_keys(strict: Backend) -> None:
    made = Keys()
    stored: dict[tuple[str, ...], Any] = {}

    @FUZZ
    @given(st.one_of(keys, not_keys), values)
    def fuzz(key: Any, value: Any) -> None:
        made.calls += 1
        ok, result = documented(
            lambda: get_or_create(key, lambda: value, None),
            TypeError,
            ValueError,
            UnpicklableValue,
            LockNotSupported,
        )
        if not ok:
            if isinstance(result, LockNotSupported):
                assert not strict.atomic_add
            return
        canonical = _canonical_key(key)
        value_key = make_cache_key(key, namespace=DOGPILE)
        suffixes = (
            "",
            FRESH_SUFFIX,
            GEN_SUFFIX,
            HARD_SUFFIX,
            LOCK_SUFFIX,
            FENCE_SUFFIX,
        )
        for suffix in suffixes:
            made.add(value_key + suffix, ("dogpile", canonical, suffix))
        first = stored.setdefault(canonical, result)
        assert get_or_create(key, lambda: "other", None) == first

    fuzz()
    _record(strict, "get_or_create keys", made)


lock_objects = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.decimals(allow_nan=False),
        text,
        st.binary(max_size=8),
        st.dates(),
        st.datetimes(timezones=st.none() | st.timezones()),
        st.timedeltas(),
        st.uuids(),
    ),
    lambda inner: st.one_of(st.tuples(inner, inner), st.frozensets(inner, max_size=3)),
    max_leaves=6,
)
unhashable = st.one_of(
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.integers(), st.integers(), max_size=2),
    st.sets(st.integers(), max_size=2),
    st.builds(object),
    st.just(float("nan")),
    st.just(decimal.Decimal("NaN")),
)


@on_backends
def test_lock_keys_and_timeouts(strict: Backend) -> None:
    made = Keys()

    @FUZZ
    @given(
        st.one_of(keys, not_keys),
        # From 50 ms (a lease shorter than the round trips that take a lock
        # may never be taken: see docs/reliability.rst) to 3 years; infinite
        # timeouts and timeouts past 2038 have a test of their own, below.
        # Zero and negative ones must be refused.
        st.one_of(
            st.floats(min_value=0.05, max_value=10**8),
            st.floats(max_value=0),
            st.integers(-5, 10**8),
        ),
    )
    def fuzz(key: Any, timeout: float) -> None:
        made.calls += 1
        ok, mutex = documented(
            lambda: CacheMutex(key, timeout=timeout), TypeError, ValueError
        )
        if not ok:
            return
        made.add(mutex.lock_key, ("lock", _canonical_key(key)))
        # A deadline: a lock an earlier example failed to release must fail
        # this one, not hang it.
        taken, held = documented(lambda: mutex.acquire(timeout=10), LockNotSupported)
        if not taken:
            assert not strict.atomic_add
            return
        assert held and mutex.fencing_token is not None and not mutex.degraded
        # A short lease may run out before the release (documented: False).
        assert mutex.release() or timeout < 5

    fuzz()
    _record(strict, "CacheMutex keys, timeouts", made)


@on_backends
def test_spin_lock_objects(strict: Backend) -> None:
    from syncache import RedisNotInitializedException

    made = Keys()
    seen: list[tuple[Any, str]] = []

    @FUZZ
    @given(st.one_of(lock_objects, unhashable))
    def fuzz(obj: Any) -> None:
        made.calls += 1
        ok, lock = documented(
            lambda: HashDSpinlock(obj),
            ProvidedObjectIsNotHashable,
            RedisNotInitializedException,
        )
        if not ok:
            return
        key = lock.state_key
        # Objects that compare equal share a lock (1, 1.0, True...), and
        # only they do. (NaN is not equal to itself, yet one lock.)
        for other, other_key in seen:
            if other_key == key:
                assert other == obj or other != other, (
                    f"{obj!r} and {other!r} share the lock key {key!r}"
                )
            else:
                assert other != obj, f"{obj!r} == {other!r}, but two locks"
        seen.append((obj, key))
        made.owner[key] = obj
        with lock:
            assert lock.acquired and lock.fencing_token is not None

    fuzz()
    _record(strict, "HashDSpinlock objects", made)


@on_backends
def test_fenced_update_tokens(strict: Backend) -> None:
    from tests.models import SiteSetting

    calls = Keys()

    @FUZZ
    @given(st.one_of(st.none(), st.booleans(), text, st.floats(), st.integers()))
    def fuzz(token: Any) -> None:
        calls.calls += 1
        ok, result = documented(
            lambda: fenced_update(SiteSetting.objects.none(), token, fence_field="id"),
            ValueError,
        )
        assert ok == (isinstance(token, int) and not isinstance(token, bool))
        if ok:
            assert result == 0

    fuzz()
    _record(strict, "fenced_update tokens", calls)


# -- bad input the fuzzing found ---------------------------------------------


@pytest.mark.parametrize("backend", ["locmem"], indirect=True)
def test_lone_surrogates_get_a_documented_error(
    backend: Backend, fresh_registry: Any
) -> None:
    """Text decoded with errors="surrogateescape" has no UTF-8 encoding: the
    error names it and says what to do, as the documented ValueError."""
    with pytest.raises(CacheIdError, match="lone surrogate") as raised:
        LocalSyncCache("bad \ud800 id", unique_ids=False)
    assert not isinstance(raised.value, UnicodeError)
    with pytest.raises(ValueError, match="surrogateescape") as raised:
        make_cache_key(["fine", "bad \udcff key"])
    assert not isinstance(raised.value, UnicodeError)


@pytest.mark.parametrize("lock_backend", ["redis", "memcached"], indirect=True)
@pytest.mark.parametrize(
    "timeout",
    [math.inf, math.nan, 3e9, MAX_LOCK_TIMEOUT + 1, -1, 0, True, "60"],
    ids=[
        "inf",
        "nan",
        "95-years",
        "30-days-and-1-s",
        "negative",
        "zero",
        "bool",
        "text",
    ],
)
def test_absurd_lock_timeouts_are_refused(lock_backend: Backend, timeout: Any) -> None:
    """Before the fix, inf passed the constructor and failed in the backend
    call (taken for an outage: held in this process only), and on memcached
    a lease ending after 2038 was stored already expired."""
    with pytest.raises(ValueError, match="at most 2592000"):
        CacheMutex("absurd", timeout=timeout)
    mutex = CacheMutex("absurd", timeout=60)
    assert mutex.acquire(wait=False)
    try:
        with pytest.raises(ValueError, match="extend"):
            mutex.extend(timeout)
    finally:
        assert mutex.release()


@pytest.mark.parametrize("lock_backend", ["redis", "memcached"], indirect=True)
def test_the_longest_lock_timeout_holds(lock_backend: Backend) -> None:
    first = CacheMutex("long", timeout=MAX_LOCK_TIMEOUT)
    assert first.acquire(wait=False)
    second = CacheMutex("long", timeout=60)
    assert not second.acquire(wait=False), "two holders at once"
    assert first.extend()
    assert first.release()


@pytest.mark.parametrize("lock_backend", ["redis"], indirect=True)
def test_a_signalling_nan_is_not_hashable(lock_backend: Backend) -> None:
    with pytest.raises(ProvidedObjectIsNotHashable):
        HashDSpinlock(decimal.Decimal("sNaN"))


# -- keys of different features -------------------------------------------------------


def test_fuzz_helpers_see_a_collision() -> None:
    """The collision record itself fails on two sources for one key."""
    made = Keys()
    made.add("k", ("a",))
    made.add("k", ("a",))
    with pytest.raises(AssertionError, match="share key"):
        made.add("k", ("b",))


class _Named(DSpinlockBase):
    def get_key(self) -> str:
        return "settings"


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_features_never_share_a_key(backend: Backend, fresh_registry: Any) -> None:
    """Every feature used under one name writes keys of its own: before the
    fix, get_or_create("settings") overwrote GenerationSynchronizer
    ("settings")'s generation and the next mark_updated() was lost."""
    medium = get_medium()
    client = medium.client()
    epoch = medium.full_key(medium.epoch_key).encode()
    before: dict[bytes, bytes] = {}

    def touched() -> set[bytes]:
        """Keys created or changed since the last call (the per-alias epoch,
        which every bump moves by design, left out)."""
        now = {
            key: client.dump(key)
            for key in client.scan_iter(match=f"*{backend.key_prefix}*")
        }
        changed = {key for key, value in now.items() if before.get(key) != value}
        before.clear()
        before.update(now)
        return changed - {epoch}

    writer = GenerationSynchronizer("settings")
    holder = GenerationSynchronizer("settings")
    writer.mark_updated()
    holder.refresh()
    uses: dict[str, Callable[[], object]] = {
        "GenerationSynchronizer": writer.mark_updated,
        "LocalSyncCache": lambda: LocalSyncCache("settings").clear(),
        "get_or_create": lambda: get_or_create("settings", lambda: {"x": 1}, 60),
        "Group": lambda: Group("settings").get_or_set("settings", lambda: 1),
        "CacheMutex": lambda: CacheMutex("settings").acquire(),
        "spin lock": lambda: _Named(None).acquire(),
    }
    owners: dict[bytes, str] = {}
    touched()
    for name, use in uses.items():
        use()
        keys = touched()
        assert keys, f"{name} wrote no key"
        for key in keys:
            assert owners.setdefault(key, name) == name, (
                f"{name} and {owners[key]} share the key {key!r}"
            )
    holder.refresh()
    invalidate("settings")
    get_or_create("settings", lambda: {"x": 2}, 60)
    writer.mark_updated()
    assert holder.is_expired(), "the change was lost"
