"""LocalSyncCacheMiddleware: loads under MIDDLEWARE, sync and async."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import iscoroutinefunction
from django.core import checks
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from syncache import GenerationSynchronizer, LocalSyncCache, check_all
from syncache.local import _Registry
from syncache.middleware import MIDDLEWARE_PATH, LocalSyncCacheMiddleware

pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Registry]:
    registry = _Registry()
    monkeypatch.setattr(LocalSyncCache, "CACHES", registry)
    monkeypatch.setattr(LocalSyncCache, "INIT_COUNTER", {})
    yield registry


def _external_clear(cache: LocalSyncCache) -> None:
    GenerationSynchronizer(cache.cache_key, normalize_cache_key=False).mark_updated()


@pytest.mark.parametrize("is_async", [False, True])
def test_loads_under_middleware(settings: Any, is_async: bool) -> None:
    settings.MIDDLEWARE = [MIDDLEWARE_PATH]
    handler = BaseHandler()
    handler.load_middleware(is_async=is_async)
    assert handler._middleware_chain is not None
    assert iscoroutinefunction(handler._middleware_chain) == is_async


def test_sync_request_checks_first() -> None:
    cache = LocalSyncCache(id="sync-mw")
    check_all()
    cache["v"] = "old"
    _external_clear(cache)
    seen: list[dict[str, Any]] = []

    def view(request: HttpRequest) -> HttpResponse:
        seen.append(dict(cache))
        cache["v"] = "new"
        return HttpResponse("ok")

    middleware = LocalSyncCacheMiddleware(view)
    assert not iscoroutinefunction(middleware)
    assert middleware(RequestFactory().get("/")).status_code == 200
    assert seen == [{}]
    check_all()
    assert cache == {"v": "new"}, "a write after the request's check is kept"


def test_async_request_checks_first() -> None:
    cache = LocalSyncCache(id="async-mw")
    check_all()
    cache["v"] = "old"
    _external_clear(cache)
    seen: list[dict[str, Any]] = []

    async def view(request: HttpRequest) -> HttpResponse:
        seen.append(dict(cache))
        cache["v"] = "new"
        return HttpResponse("ok")

    middleware = LocalSyncCacheMiddleware(view)
    assert iscoroutinefunction(middleware)
    response = asyncio.run(middleware(RequestFactory().get("/")))
    assert response.status_code == 200
    assert seen == [{}]
    check_all()
    assert cache == {"v": "new"}, "a write after the request's check is kept"


def test_w005_when_caches_exist_without_the_middleware(settings: Any) -> None:
    settings.MIDDLEWARE = []
    assert not [m for m in checks.run_checks() if m.id == "syncache.W005"]
    cache = LocalSyncCache(id="needs-middleware")  # noqa: F841 - held
    [warning] = [m for m in checks.run_checks() if m.id == "syncache.W005"]
    assert "'needs-middleware'" in warning.msg
    settings.MIDDLEWARE = [MIDDLEWARE_PATH]
    assert not [m for m in checks.run_checks() if m.id == "syncache.W005"]
