"""The coordination medium: detection, capabilities and confirmed writes."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from django.core.cache import caches

from syncache import GenerationSynchronizer
from syncache.medium import (
    DatabaseMedium,
    DjangoRedisMedium,
    FileMedium,
    LocMemMedium,
    MemcachedMedium,
    RedisMedium,
    WriteNotConfirmed,
    get_medium,
)

EXPECTED = {
    "locmem": LocMemMedium,
    "file": FileMedium,
    "sqlite": DatabaseMedium,
    "postgres": DatabaseMedium,
    "redis": RedisMedium,
    "django_redis": DjangoRedisMedium,
    "memcached": MemcachedMedium,
}


def test_detects_the_backend(backend: Any) -> None:
    medium = get_medium()
    assert type(medium) is EXPECTED[backend.name]
    assert medium.capabilities.atomic_incr == backend.atomic_incr
    assert medium.capabilities.atomic_add == backend.atomic_add
    assert medium.capabilities.cross_process == backend.cross_process


def test_primitives_round_trip(backend: Any) -> None:
    medium = get_medium()
    assert medium.get("a") is None
    assert medium.add("a", 1)
    assert not medium.add("a", 2) or not backend.atomic_add
    medium.set("b", 7)
    assert medium.get_many(["a", "missing", "b"]) == [1, None, 7]
    assert caches["default"].get("b") == 7, "readable through Django's API"
    medium.delete("b")
    assert medium.get("b") is None


def test_bump_seeds_a_missing_key_at_random(backend: Any) -> None:
    medium = get_medium()
    first = medium.bump("fresh")
    medium.delete("fresh")
    second = medium.bump("fresh")
    assert first != second
    assert abs(first - second) > 1000, "seeded at random, not from 0 or 1"


def test_medium_follows_settings(backend: Any) -> None:
    medium = get_medium()
    with backend.syncache_settings(KEY_PREFIX="elsewhere"):
        assert get_medium() is not medium
        assert get_medium().epoch_key.startswith("elsewhere")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_database_write_dropped_by_django_is_retried(backend: Any) -> None:
    sync = GenerationSynchronizer("k")
    cache = caches["default"]
    real = cache._base_set  # type: ignore[attr-defined]
    outcomes = iter([False, False])

    def flaky(*args: Any, **kwargs: Any) -> bool:
        return next(outcomes, None) is not False and real(*args, **kwargs)

    with mock.patch.object(cache, "_base_set", flaky):
        sync.mark_updated()
    assert sync.sync_gen is not None
    assert cache.get(sync.cache_key) == sync.sync_gen


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_database_write_never_confirmed_is_an_error(backend: Any) -> None:
    sync = GenerationSynchronizer("k")
    cache = caches["default"]
    with (
        backend.syncache_settings(WRITE_RETRIES=2, FAILURE_POLICY="raise"),
        mock.patch.object(cache, "_base_set", return_value=False) as base_set,
        pytest.raises(WriteNotConfirmed, match="refused the write"),
    ):
        sync.mark_updated()
    assert base_set.call_count == 3
