"""GenerationSynchronizer: Djblets' scenarios, on every backend."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from django.core.cache import caches

from syncache import GenerationSynchronizer, expired_many, fetch_generations
from syncache.keys import make_cache_key
from syncache.medium import FAILED, get_medium

pytestmark = pytest.mark.usefixtures("backend")


def _stored(sync: GenerationSynchronizer) -> Any:
    return caches["default"].get(sync.cache_key)


def test_initial_state() -> None:
    sync = GenerationSynchronizer("test-synchronizer")
    assert sync.sync_gen is not None
    assert _stored(sync) == sync.sync_gen


def test_two_holders_share_the_generation() -> None:
    first = GenerationSynchronizer("shared")
    second = GenerationSynchronizer("shared")
    assert first.sync_gen == second.sync_gen


def test_is_expired_when_expired_by_direct_write() -> None:
    sync = GenerationSynchronizer("test-synchronizer")
    caches["default"].set(sync.cache_key, sync.sync_gen + 1)
    assert sync.is_expired()


def test_is_expired_after_another_holders_bump() -> None:
    mine = GenerationSynchronizer("k")
    theirs = GenerationSynchronizer("k")
    theirs.mark_updated()
    assert mine.is_expired()
    assert not theirs.is_expired(), "the writer is not expired by its own bump"


def test_is_expired_when_not_expired() -> None:
    sync = GenerationSynchronizer("test-synchronizer")
    assert not sync.is_expired()


def test_is_expired_with_exception_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    sync = GenerationSynchronizer("test-synchronizer")
    medium = get_medium()
    with (
        mock.patch.object(medium, "get", side_effect=ConnectionError("Oh no")),
        caplog.at_level(logging.ERROR, logger="syncache"),
    ):
        assert sync.is_expired()
        assert sync.is_expired()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "a second failure within LOG_INTERVAL is not logged"
    assert (
        errors[0]
        .getMessage()
        .startswith(
            f"Unexpected error checking for expiration in cached synchronization "
            f'state key "{sync.cache_key}"'
        )
    )
    assert "Is the cache server down? Error = Oh no" in errors[0].getMessage()
    assert errors[0].exc_info is not None


def test_recovery_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    sync = GenerationSynchronizer("k")
    medium = get_medium()
    with mock.patch.object(medium, "get", side_effect=ConnectionError("down")):
        assert sync.is_expired()
    with caplog.at_level(logging.INFO, logger="syncache"):
        assert not sync.is_expired()
    assert "answering again after 1 failed" in caplog.text


def test_failure_policy_raise(backend: Any) -> None:
    sync = GenerationSynchronizer("k")
    with (
        backend.syncache_settings(FAILURE_POLICY="raise"),
        mock.patch.object(get_medium(), "get", side_effect=ConnectionError("down")),
        pytest.raises(ConnectionError),
    ):
        sync.is_expired()


def test_failed_writes_leave_the_writer_expired() -> None:
    sync = GenerationSynchronizer("k")
    medium = get_medium()
    with mock.patch.object(medium, "bump", side_effect=ConnectionError("down")):
        sync.mark_updated()
    assert sync.sync_gen is None
    assert sync.is_expired()
    with mock.patch.object(medium, "seed", side_effect=ConnectionError("down")):
        sync.refresh()
    assert sync.sync_gen is None
    sync.refresh()
    assert not sync.is_expired()


def test_refresh() -> None:
    sync = GenerationSynchronizer("test-synchronizer")
    new_sync_gen = sync.sync_gen + 1
    caches["default"].set(sync.cache_key, new_sync_gen)
    sync.refresh()
    assert sync.sync_gen == new_sync_gen


def test_clear() -> None:
    sync = GenerationSynchronizer("test-synchronizer")
    other = GenerationSynchronizer("test-synchronizer")
    sync.clear()
    assert _stored(sync) is None
    assert sync.is_expired()
    assert other.is_expired()


def test_mark_updated(backend: Any) -> None:
    sync = GenerationSynchronizer("test-synchronizer")
    sync_gen = sync.sync_gen
    sync.mark_updated()
    if backend.atomic_incr:
        assert sync.sync_gen == sync_gen + 1
    else:
        assert sync.sync_gen != sync_gen
    assert _stored(sync) == sync.sync_gen


def test_bumps_never_repeat() -> None:
    sync = GenerationSynchronizer("k")
    seen = {sync.sync_gen}
    for _ in range(50):
        sync.mark_updated()
        seen.add(sync.sync_gen)
    assert len(seen) == 51


def test_sequence_keys() -> None:
    sync = GenerationSynchronizer(["user", "42", "profile"])
    assert sync.cache_key == make_cache_key(["user", "42", "profile"])
    assert sync.cache_key == "syncache:user:42:profile".replace(
        "syncache", sync.cache_key.split(":")[0]
    )


def test_missing_key_is_expired_and_reseeded_with_a_new_value() -> None:
    sync = GenerationSynchronizer("k")
    old = sync.sync_gen
    caches["default"].delete(sync.cache_key)
    assert sync.is_expired()
    assert expired_many([sync]) == [True] or fetch_generations([sync]) == [old]
    sync.refresh()
    assert sync.sync_gen not in (None, old)
    assert _stored(sync) == sync.sync_gen
    assert not sync.is_expired()


def test_unnormalized_key_is_used_as_given() -> None:
    sync = GenerationSynchronizer("raw-key", normalize_cache_key=False)
    assert sync.cache_key == "raw-key"
    assert caches["default"].get("raw-key") == sync.sync_gen


@pytest.mark.parametrize("key", [("a", "b"), ["a"], 42])
def test_unnormalized_key_must_be_a_string(key: Any) -> None:
    with pytest.raises(ValueError, match="must be a string when normalize_cache_key"):
        GenerationSynchronizer(key, normalize_cache_key=False)


@pytest.mark.parametrize("key", ["has space", "x" * 300, "ctrl\x01"])
def test_unnormalized_key_must_be_storable(key: str) -> None:
    with pytest.raises(ValueError, match="normalize_cache_key=True"):
        GenerationSynchronizer(key, normalize_cache_key=False)


# -- batched checks -------------------------------------------------------


@contextlib.contextmanager
def _count_reads() -> Iterator[list[str]]:
    """Record each read the medium sends to the backend, by primitive."""
    medium = get_medium()
    calls: list[str] = []

    def spy(name: str) -> Any:
        original = getattr(medium, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return original(*args, **kwargs)

        return mock.patch.object(medium, name, counted)

    with spy("get"), spy("get_many"):
        yield calls


@pytest.mark.parametrize("count", [1, 10, 100])
def test_expired_many_is_one_round_trip(backend: Any, count: int) -> None:
    syncs = [GenerationSynchronizer(f"k{i}") for i in range(count)]
    writer = GenerationSynchronizer("k3")
    if not backend.atomic_add:
        # Without an atomic add, the check that creates the epoch cannot
        # know whether a bump came in between: it keeps no snapshot.
        with _count_reads() as calls:
            assert expired_many(syncs) == [False] * count
        assert calls == ["get_many"]
    with _count_reads() as calls:
        assert expired_many(syncs) == [False] * count
    assert calls == ["get_many"], "the first check reads everything at once"
    with _count_reads() as calls:
        assert expired_many(syncs) == [False] * count
    assert calls == ["get"], "the steady state reads only the epoch"
    writer.mark_updated()
    with _count_reads() as calls:
        expired = expired_many(syncs)
    assert calls == ["get", "get_many"]
    assert expired == [i == 3 for i in range(count)]


def test_expired_many_sees_clear_and_flush() -> None:
    syncs = [GenerationSynchronizer(f"k{i}") for i in range(5)]
    assert expired_many(syncs) == [False] * 5
    syncs[2].clear()
    assert expired_many(syncs) == [i == 2 for i in range(5)]
    caches["default"].clear()
    assert expired_many(syncs) == [True] * 5


def test_expired_many_with_failure_is_all_expired() -> None:
    syncs = [GenerationSynchronizer(f"k{i}") for i in range(3)]
    expired_many(syncs)
    medium = get_medium()
    down = ConnectionError("down")
    with (
        mock.patch.object(medium, "get", side_effect=down),
        mock.patch.object(medium, "get_many", side_effect=down),
    ):
        assert expired_many(syncs) == [True] * 3
        assert fetch_generations(syncs) == [FAILED] * 3
    assert expired_many(syncs) == [False] * 3


def test_expired_many_adopt_closes_the_reload_window() -> None:
    reader = GenerationSynchronizer("k")
    writer = GenerationSynchronizer("k")
    writer.mark_updated()
    [seen] = fetch_generations([reader])
    writer.mark_updated()  # a change made while the reader reloads
    reader.adopt(seen)
    assert reader.is_expired(), "the change made during the reload is not lost"
