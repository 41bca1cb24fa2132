"""The coordination medium: detection, capabilities, confirmed writes, opaque
generations and memcached's strict client."""

from __future__ import annotations

import datetime as dt
import os
import re
from typing import Any
from unittest import mock

import pytest
from django.core.cache import caches
from django.test import override_settings

from syncache import GenerationSynchronizer
from syncache.medium import (
    DatabaseMedium,
    DjangoRedisMedium,
    FileMedium,
    LocMemMedium,
    MemcachedMedium,
    Opaque,
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


def test_generations_are_read_opaque(shared_backend: Any) -> None:
    """A value syncache did not write, at a key read as a generation, is an
    Opaque (never unpickled), equal to itself; user data named as such is
    decoded as Django's cache would."""
    day = dt.date(2020, 1, 2)  # pickled with a reference to a class
    caches["default"].set("planted", day, None)
    medium = get_medium()
    stored = medium.get("planted")
    assert isinstance(stored, Opaque)
    assert stored == medium.get("planted") and stored != day
    assert re.fullmatch(r"opaque-[0-9a-f]{32}", str(stored)), "fit for a key"
    assert medium.get_epoch_and_many(["planted"])[1] == [stored]
    assert medium.get_many(["planted", "missing"], user_data=()) == [stored, None]
    assert medium.get_many(["planted"], user_data=["planted"]) == [day]
    assert medium.get_many(["planted"]) == [stored], "generations unless told"


@pytest.mark.parametrize("backend", ["memcached"], indirect=True)
def test_memcached_shares_keys_and_values_with_the_alias(backend: Any) -> None:
    """The medium's strict copy of the cache makes the same keys (Django's
    KEY_PREFIX and VERSION included) and values as the alias's cache."""
    config = {**backend.caches["default"], "KEY_PREFIX": "site", "VERSION": 3}
    with override_settings(CACHES={"default": config}):
        medium = get_medium()
        assert medium.cache is not caches["default"]
        medium.set("generation", 5)
        assert caches["default"].get("generation") == 5
        assert caches["default"].get("generation", version=1) is None
        caches["default"].set("value", {"a": [1]})
        assert medium.get_many(["value"]) == [{"a": [1]}]


@pytest.mark.parametrize("backend", ["memcached"], indirect=True)
def test_memcached_default_answer_is_a_failure(backend: Any) -> None:
    """pymemcache's HashClient answers False to incr() while it retries a
    failed server (Django's defaults): a failure, never generation 0."""
    sync = GenerationSynchronizer("k")
    client = type(get_medium().cache._cache)  # type: ignore[attr-defined]
    with mock.patch.object(client, "incr", return_value=False):
        sync.mark_updated()
    assert sync.sync_gen is None, "the bump reports its failure"


@pytest.mark.parametrize("backend", ["memcached"], indirect=True)
def test_memcached_forked_child_has_a_client_of_its_own(backend: Any) -> None:
    medium = get_medium()
    medium.set("k", 1)
    parent = medium.cache
    pid = os.fork()
    if pid == 0:  # the child: its own client, not the parent's socket
        os._exit(0 if medium.cache is not parent and medium.get("k") == 1 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
