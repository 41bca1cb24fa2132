"""LocalSyncCache: django-tools' scenarios, ids, registry, the stale-write
guard (promise 3) and clearing inside transactions (promise 4)."""

from __future__ import annotations

import gc
import threading
from typing import Any
from unittest import mock

import pytest
from django.core.cache import caches
from django.db import transaction

import syncache
import syncache.middleware
from syncache import LocalSyncCache, check_all
from syncache.local import CacheIdError, _Registry
from syncache.medium import get_medium
from tests.conftest import other_process_clears

pytestmark = pytest.mark.usefixtures("backend", "fresh_registry")


# -- django-tools' scenarios ---------------------------------------------------


def test_basic_external_clear() -> None:
    c = LocalSyncCache(id="test1")
    c["key1"] = "value1"
    assert c == {"key1": "value1"}
    other_process_clears(c)
    c.check_state()
    assert c == {}
    assert c.ext_clear_counter == 1
    assert len(LocalSyncCache.get_cache_information()) == 1


def test_unique_id() -> None:
    c1 = LocalSyncCache(id="test1")  # noqa: F841 - held: a dropped one frees its id
    with pytest.raises(AssertionError, match="'test1' is already used"):
        LocalSyncCache(id="test1")


def test_duplicate_id_names_where_the_first_was_defined() -> None:
    first = LocalSyncCache(id="dup")  # the line the message must name
    with pytest.raises(CacheIdError) as raised:
        LocalSyncCache(id="dup")
    assert first.defined_at.startswith(__file__)
    assert first.defined_at in str(raised.value)
    assert "unique_ids=False" in str(raised.value)


@pytest.mark.parametrize("bad", [None, "", 42, b"id", ("a",)])
def test_id_must_be_a_non_empty_string(bad: Any) -> None:
    with pytest.raises(CacheIdError, match="needs an id"):
        LocalSyncCache(id=bad)


def test_empty_pformat_cache_information() -> None:
    assert LocalSyncCache.pformat_cache_information() == ""


def test_pformat_cache_information() -> None:
    c = LocalSyncCache(id="FooBar")  # noqa: F841 - held: dropped ones are forgotten
    text = LocalSyncCache.pformat_cache_information()
    assert "id: FooBar" in text
    assert "instance: <LocalSyncCache 'FooBar' {}>" in text
    assert "cleared: False" in text


def test_two_instances_sharing_an_id_clear_together() -> None:
    assert len(LocalSyncCache.CACHES) == 0
    c1 = LocalSyncCache(id="test1")
    c2 = LocalSyncCache(id="test1", unique_ids=False)
    assert len(LocalSyncCache.CACHES) == 2
    c1["c1"] = "foo"
    c2["c2"] = "bar"
    c1.check_state()
    c2.check_state()
    assert c1 == {"c1": "foo"}
    assert c2 == {"c2": "bar"}
    c1.clear()
    assert c1 == {}
    c2.check_state()
    assert c2 == {}
    assert len(LocalSyncCache.get_cache_information()) == 2


def test_middleware_sequence_with_three_caches() -> None:
    middleware = syncache.middleware.LocalSyncCacheMiddleware()
    c1 = LocalSyncCache(id="mw1")
    c2 = LocalSyncCache(id="mw1", unique_ids=False)
    c3 = LocalSyncCache(id="mw2")
    assert len(LocalSyncCache.CACHES) == 3
    c1["c1"] = "foo"
    c2["c2"] = "bar"
    c3["foo"] = "bar"
    middleware.process_request(None)
    assert (c1, c2, c3) == ({"c1": "foo"}, {"c2": "bar"}, {"foo": "bar"})
    c1.clear()
    assert c1 == {}
    middleware.process_request(None)
    assert c2 == {}
    assert c3 == {"foo": "bar"}, "other ids are not affected"
    c1["c1"] = "foo2"
    c2["c2"] = "bar2"
    middleware.process_request(None)
    assert (c1, c2, c3) == ({"c1": "foo2"}, {"c2": "bar2"}, {"foo": "bar"})
    c2.clear()
    assert c2 == {}
    middleware.process_request(None)
    assert c1 == {}
    for item in LocalSyncCache.get_cache_information():
        instance = item["instance"]
        assert instance.request_counter == 4
        if instance.id == "mw2":
            assert (instance.own_clear_counter, instance.ext_clear_counter) == (0, 0)
            assert instance == {"foo": "bar"}
        else:
            assert (instance.own_clear_counter, instance.ext_clear_counter) == (1, 1)
            assert instance == {}


# -- registry and introspection ---------------------------------------------------


def test_dropped_instances_do_not_leak(fresh_registry: _Registry) -> None:
    kept = LocalSyncCache(id="kept")
    for i in range(50):
        LocalSyncCache(id=f"dropped-{i}")
    gc.collect()
    assert list(LocalSyncCache.CACHES) == [kept]
    assert len(fresh_registry.views().syncs) == 1
    LocalSyncCache(id="dropped-0")  # the id is free again


def test_cache_information_fields() -> None:
    c = LocalSyncCache(id="info")
    c["a"] = 1
    check_all()
    [info] = LocalSyncCache.get_cache_information()
    assert info["id"] == "info"
    assert info["length"] == 1
    assert info["size"] > 0
    assert info["generation"] == info["sync_gen"] == c.sync_gen
    assert info["cleared"] is False
    assert info["request_counter"] == 1
    assert info["init_counter"] == 1
    assert info["last_checked"] is not None and info["last_checked"] >= 0
    assert info["last_cleared"] is None
    c.clear()
    [info] = LocalSyncCache.get_cache_information()
    assert info["cleared"] is True
    assert info["last_cleared"] is not None


def test_reads_are_plain_dict_reads() -> None:
    for name in ("__getitem__", "get", "__contains__", "__len__", "__iter__"):
        assert name not in vars(LocalSyncCache), f"{name} must stay dict's"


# -- checking --------------------------------------------------------------------


def test_check_all_is_one_round_trip_per_alias() -> None:
    cs = [LocalSyncCache(id=f"c{i}") for i in range(30)]
    for c in cs:
        c["v"] = 1
    medium = get_medium()
    check_all()
    with (
        mock.patch.object(medium, "get", wraps=medium.get) as get,
        mock.patch.object(medium, "get_many", wraps=medium.get_many) as get_many,
    ):
        check_all()
        assert get.call_count + get_many.call_count == 1
        other_process_clears(cs[7])
        get.reset_mock()
        get_many.reset_mock()
        check_all()
        assert get.call_count == 1 and get_many.call_count == 1, "epoch, then all"
    assert [bool(c) for c in cs] == [i != 7 for i in range(30)]


def test_missing_generation_empties_every_instance() -> None:
    c = LocalSyncCache(id="m")
    check_all()
    c["v"] = 1
    caches["default"].clear()
    check_all()
    assert c == {}


def test_backend_failure_empties_and_recovers() -> None:
    c = LocalSyncCache(id="f")
    check_all()
    c["v"] = 1
    medium = get_medium()
    down = ConnectionError("down")
    with (
        mock.patch.object(medium, "get", side_effect=down),
        mock.patch.object(medium, "get_many", side_effect=down),
    ):
        check_all()
        assert c == {}, "an unreadable generation is expired"
        c["v"] = 2
        check_all()
        assert c == {}
    check_all()
    c["v"] = 3
    check_all()
    assert c == {"v": 3}


def test_check_interval(backend: Any) -> None:
    c = LocalSyncCache(id="interval")
    with backend.syncache_settings(CHECK_INTERVAL=3600):
        check_all(force=True)
        c["v"] = 1
        other_process_clears(c)
        check_all()
        assert c == {"v": 1}, "within the interval nothing is read"
        check_all(force=True)
        assert c == {}


def test_checked_context_manager_and_decorator() -> None:
    c = LocalSyncCache(id="checked")
    check_all()
    c["v"] = 1
    other_process_clears(c)
    with syncache.checked():
        assert c == {}
    c["v"] = 2
    other_process_clears(c)

    @syncache.checked()
    def task() -> dict[str, int]:
        return dict(c)

    assert task() == {}


def test_declared_while_apps_load_does_not_touch_the_cache() -> None:
    medium = get_medium()
    with (
        mock.patch("django.apps.apps.ready", False),
        mock.patch.object(medium, "seed", side_effect=AssertionError("touched")),
        mock.patch.object(medium, "get", side_effect=AssertionError("touched")),
    ):
        c = LocalSyncCache(id="early")
    assert c.sync_gen is None
    check_all()
    assert c.sync_gen is not None
    assert c.ext_clear_counter == 0, "the first look is not an external clear"


# -- promise 3: the stale-write guard --------------------------------------------


def _stale_write_scenario(clear_in_b: Any) -> LocalSyncCache:
    """Thread A checks, reads the old data, and writes after thread B cleared.

    Ordering by events only: A has read -> B clears -> A writes -> B checks.
    """
    cache = LocalSyncCache(id="guard")
    database = {"url": "/old/"}
    check_all()
    a_has_read = threading.Event()
    b_has_cleared = threading.Event()
    errors: list[BaseException] = []

    def request_a() -> None:
        try:
            check_all()
            value = database["url"]  # read before the change
            a_has_read.set()
            assert b_has_cleared.wait(10)
            cache["url"] = value  # written after the clear
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    thread = threading.Thread(target=request_a)
    thread.start()
    assert a_has_read.wait(10)
    database["url"] = "/new/"
    clear_in_b(cache)
    b_has_cleared.set()
    thread.join(10)
    assert not errors
    assert cache == {"url": "/old/"}, "the stale value was written"
    return cache


def test_stale_write_after_own_clear_does_not_survive_the_next_check() -> None:
    cache = _stale_write_scenario(lambda cache: cache.clear())
    check_all()
    assert cache == {}
    assert cache.stale_clear_counter == 1


def test_stale_write_after_external_clear_does_not_survive_the_next_check() -> None:
    def external(cache: LocalSyncCache) -> None:
        other_process_clears(cache)
        check_all()  # thread B's request notices it and empties the dict

    cache = _stale_write_scenario(external)
    check_all()
    assert cache == {}


def test_write_after_a_later_check_is_kept() -> None:
    cache = LocalSyncCache(id="fresh")
    check_all()
    cache.clear()
    done = threading.Event()

    def request() -> None:
        check_all()
        cache["url"] = "/new/"
        done.set()

    thread = threading.Thread(target=request)
    thread.start()
    assert done.wait(10)
    thread.join()
    check_all()
    assert cache == {"url": "/new/"}
    assert cache.stale_clear_counter == 0


@pytest.mark.parametrize("method", ["setitem", "setdefault", "update", "ior"])
def test_every_write_method_is_guarded(method: str) -> None:
    cache = _stale_write_scenario(lambda cache: cache.clear())
    dict.clear(cache)
    cache.CACHES.pop_stale()
    cache.clear()
    check_all()
    writes = {
        "setitem": lambda: cache.__setitem__("k", 1),
        "setdefault": lambda: cache.setdefault("k", 1),
        "update": lambda: cache.update(k=1),
        "ior": lambda: cache.__ior__({"k": 1}),
    }
    ready = threading.Event()
    proceed = threading.Event()

    def request() -> None:
        check_all()
        ready.set()
        assert proceed.wait(10)
        writes[method]()

    thread = threading.Thread(target=request)
    thread.start()
    assert ready.wait(10)
    cache.clear()
    proceed.set()
    thread.join()
    assert cache == {"k": 1}
    check_all()
    assert cache == {}


# -- promise 4: clear inside a transaction ---------------------------------------


@pytest.mark.django_db(transaction=True)
def test_clear_in_a_transaction_clears_again_on_commit() -> None:
    cache = LocalSyncCache(id="tx")
    other = LocalSyncCache(id="tx", unique_ids=False)
    check_all()
    with transaction.atomic():
        cache.clear()
        cache.clear()
        after_first_clear = cache.sync_gen
        cache["v"] = "refilled from old rows"
        other["v"] = "refilled from old rows"
        check_all()
    assert cache == {}, "emptied again on commit"
    assert cache.sync_gen != after_first_clear, "bumped again on commit"
    check_all()
    assert other == {}


@pytest.mark.django_db(transaction=True)
def test_clear_in_a_rolled_back_transaction_bumps_nothing_more() -> None:
    cache = LocalSyncCache(id="rollback")
    check_all()
    with pytest.raises(RuntimeError), transaction.atomic():
        cache.clear()
        generation = cache.sync_gen
        raise RuntimeError
    assert cache.sync_gen == generation
