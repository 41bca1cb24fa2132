"""LocalSyncCacheMiddleware: loads under MIDDLEWARE, sync and async."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import iscoroutinefunction
from django.core import checks
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from syncache import LocalSyncCache, check_all
from syncache.middleware import MIDDLEWARE_PATH, LocalSyncCacheMiddleware
from tests.conftest import other_process_clears

pytestmark = pytest.mark.usefixtures("backend", "fresh_registry")


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
    other_process_clears(cache)
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
    other_process_clears(cache)
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
