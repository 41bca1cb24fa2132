"""The request-start check, as sync and async middleware.

Add ``"syncache.middleware.LocalSyncCacheMiddleware"`` to ``MIDDLEWARE``,
early (before any middleware that reads a ``LocalSyncCache``). Each request
then starts with :func:`syncache.check_all`: one round trip per cache
alias, whatever the number of caches.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async

from syncache.local import check_all

MIDDLEWARE_PATH = "syncache.middleware.LocalSyncCacheMiddleware"


class LocalSyncCacheMiddleware:
    """Check every ``LocalSyncCache`` at the start of each request.

    Sync and async capable: under ASGI the check runs in Django's sync
    thread (the cache clients are synchronous), and the view then runs
    with the check's result in its context.

    django-tools' ``process_request(request)`` is kept for code that calls
    it directly.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any] | None = None) -> None:
        self.get_response = get_response
        self.async_mode = get_response is not None and iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        check_all()
        assert self.get_response is not None
        return self.get_response(request)

    async def __acall__(self, request: Any) -> Any:
        await sync_to_async(check_all)()
        assert self.get_response is not None
        response: Awaitable[Any] = self.get_response(request)
        return await response

    def process_request(self, request: Any) -> None:
        """django-tools' entry point: check every cache."""
        check_all()
