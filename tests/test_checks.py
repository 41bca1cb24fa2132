"""Each system check id, triggered and not triggered."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from django.core import checks
from django.test import override_settings

LOCMEM = "django.core.cache.backends.locmem.LocMemCache"
REDIS = "django.core.cache.backends.redis.RedisCache"


@pytest.fixture(autouse=True)
def _no_lock_users() -> Any:
    """Start with no declared lock users: other tests' decorators (which
    stay registered for the process) must not trigger E004 here."""
    from syncache.dogpile import lock_users

    with mock.patch.dict(lock_users, clear=True):
        yield


def _ids(**settings: Any) -> list[str]:
    with override_settings(**settings):
        return sorted(
            message.id
            for message in checks.run_checks(tags=["syncache"])
            if message.id and message.id.startswith("syncache.")
        )


def _caches(backend: str, **extra: Any) -> dict[str, Any]:
    return {"default": {"BACKEND": backend, **extra}}


def test_e001_bad_settings() -> None:
    assert _ids(SYNCACHE={"NOPE": 1}) == ["syncache.E001"]
    assert _ids(SYNCACHE={"FAILURE_POLICY": "x", "LOG_INTERVAL": -1}) == [
        "syncache.E001",
        "syncache.E001",
    ]


def test_e002_unknown_alias() -> None:
    with override_settings(SYNCACHE={"CACHE_ALIAS": "shared"}):
        [message] = [
            m for m in checks.run_checks(tags=["syncache"]) if m.id == "syncache.E002"
        ]
    assert "'shared'" in message.msg
    assert "default" in (message.hint or "")


def test_e003_dummy_cache() -> None:
    ids = _ids(CACHES=_caches("django.core.cache.backends.dummy.DummyCache"))
    assert ids == ["syncache.E003"]


def test_w001_locmem() -> None:
    assert _ids(CACHES=_caches(LOCMEM)) == ["syncache.W001"]


def test_w002_file(tmp_path: Any) -> None:
    backend = "django.core.cache.backends.filebased.FileBasedCache"
    assert _ids(CACHES=_caches(backend, LOCATION=str(tmp_path))) == ["syncache.W002"]


def test_w003_long_django_key_prefix() -> None:
    assert _ids(CACHES=_caches(LOCMEM, KEY_PREFIX="p" * 60)) == [
        "syncache.W001",
        "syncache.W003",
    ]


@pytest.mark.parametrize(
    ("backend", "options", "expected"),
    [
        (REDIS, {}, ["syncache.W004"]),
        (REDIS, {"socket_timeout": 0.5}, []),
        ("django_redis.cache.RedisCache", {}, ["syncache.W004"]),
        ("django_redis.cache.RedisCache", {"SOCKET_TIMEOUT": 0.5}, []),
        ("django.core.cache.backends.memcached.PyMemcacheCache", {}, ["syncache.W004"]),
        (
            "django.core.cache.backends.memcached.PyMemcacheCache",
            {"timeout": 0.5},
            [],
        ),
    ],
)
def test_w004_no_client_timeout(
    backend: str, options: dict[str, Any], expected: list[str]
) -> None:
    caches = _caches(backend, LOCATION="127.0.0.1:1", OPTIONS=options)
    assert _ids(CACHES=caches) == expected


def test_database_cache_is_clean() -> None:
    caches = _caches("django.core.cache.backends.db.DatabaseCache", LOCATION="t")
    assert _ids(CACHES=caches) == []


def test_e004_lock_feature_on_a_cache_without_locks(tmp_path: Any) -> None:
    from unittest import mock

    from syncache import cache_on_arguments
    from syncache.dogpile import lock_users

    file_cache = {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(tmp_path),
    }
    caches = {"default": {"BACKEND": LOCMEM}, "files": file_cache}
    with mock.patch.dict(lock_users, clear=True):
        assert "syncache.E004" not in _ids(CACHES=caches)

        @cache_on_arguments(60, cache_alias="files")
        def report() -> int:
            return 1

        @cache_on_arguments(60, cache_alias="nowhere")
        def other() -> int:
            return 2

        @cache_on_arguments(60)  # the default alias (locmem) can lock
        def fine() -> int:
            return 3

        with override_settings(CACHES=caches):
            errors = [
                m
                for m in checks.run_checks(tags=["syncache"])
                if m.id == "syncache.E004"
            ]
    assert len(errors) == 2
    files, nowhere = sorted(errors, key=lambda m: m.msg)
    assert "'files'" in files.msg and "FileBasedCache" in files.msg
    assert (
        "test_e004_lock_feature_on_a_cache_without_locks.<locals>.report" in files.msg
    )
    assert "'nowhere'" in nowhere.msg and "not in CACHES" in nowhere.msg
    assert "fine" not in files.msg + nowhere.msg
    assert "cache_alias=" in (files.hint or "")


def test_push_mode_is_reported(redis_server: Any) -> None:
    memcached = "django.core.cache.backends.memcached.PyMemcacheCache"
    caches = _caches(memcached, LOCATION="127.0.0.1:1", OPTIONS={"timeout": 0.5})
    assert _ids(CACHES=caches, SYNCACHE={"PUSH": True}) == ["syncache.W006"]
    with_url = {"PUSH": True, "PUSH_URL": redis_server.url}
    assert _ids(CACHES=caches, SYNCACHE=with_url) == ["syncache.I001"]
    redis_cache = _caches(
        REDIS, LOCATION=redis_server.url, OPTIONS={"socket_timeout": 1}
    )
    assert _ids(CACHES=redis_cache, SYNCACHE={"PUSH": True}) == ["syncache.I001"]
    assert _ids(CACHES=redis_cache) == [], "nothing is said while PUSH is off"
    with mock.patch.dict("sys.modules", {"redis": None}):
        assert "syncache.E005" in _ids(CACHES=caches, SYNCACHE=with_url)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PUSH", "yes"),
        ("PUSH_URL", "http://127.0.0.1:6379"),
        ("PUSH_URL", 6379),
        ("PUSH_RECHECK_INTERVAL", 0),
        ("PUSH_RECHECK_INTERVAL", True),
    ],
)
def test_e001_bad_push_settings(key: str, value: Any) -> None:
    assert _ids(SYNCACHE={key: value}) == ["syncache.E001"]
