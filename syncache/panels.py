"""A django-debug-toolbar panel: the status page's report, for every request.

Add it to the toolbar's panels::

    DEBUG_TOOLBAR_PANELS = [
        *debug_toolbar.settings.PANELS_DEFAULTS,
        "syncache.panels.SyncachePanel",
    ]

The panel shows what :mod:`syncache.views` shows (the process's
``LocalSyncCache`` instances, synchronizers, groups and held locks), as
they are when the view has returned, and links to the status page for the
buttons when ``syncache.urls`` is mounted. The toolbar renders a panel
after the request, without its CSRF token, so the panel itself has none.

This module imports without django-debug-toolbar installed (documentation
builds, ``import syncache.panels`` in settings checks); the panel can only
be instantiated with it.

Under ASGI the report is gathered in a thread (``sync_to_async``): the
cache clients are blocking, and a database cache may not be used from the
event loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.core.cache import InvalidCacheBackendError
from django.core.exceptions import ImproperlyConfigured
from django.urls import NoReverseMatch, reverse

from syncache.status import process_report

if TYPE_CHECKING:
    from debug_toolbar.panels import Panel
else:
    try:
        from debug_toolbar.panels import Panel
    except ImportError:

        class Panel:
            """Stands in for the toolbar's base class when it is missing."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                raise ImproperlyConfigured(
                    "syncache.panels.SyncachePanel is a django-debug-toolbar "
                    "panel: pip install django-debug-toolbar, or remove it "
                    "from DEBUG_TOOLBAR_PANELS."
                )


class SyncachePanel(Panel):
    """The syncache status of the process that served the request."""

    is_async = True
    title = "syncache"
    template = "syncache/panel.html"

    @property
    def nav_subtitle(self) -> str:
        """``"3 caches, 1 lock held"``."""
        stats = self.get_stats()  # type: ignore[no-untyped-call]
        report = stats.get("report")
        if not report:
            return ""
        caches = len(report["local_caches"])
        locks = len(report["locks"])
        return (
            f"{caches} cache{'s' * (caches != 1)}, "
            f"{locks} lock{'s' * (locks != 1)} held"
        )

    def process_request(self, request: Any) -> Any:
        """Run the view, then record the report (in a thread under ASGI)."""
        response = self.get_response(request)
        if inspect.isawaitable(response):
            return self._record_after(response)
        self._record()
        return response

    async def _record_after(self, response: Awaitable[Any]) -> Any:
        result = await response
        await sync_to_async(self._record)()
        return result

    def _record(self) -> None:
        try:
            report: dict[str, Any] | None = process_report()
            error = None
        except InvalidCacheBackendError as exc:
            report, error = None, f"A cache alias is not configured: {exc}"
        try:
            status_url: str | None = reverse("syncache:status")
        except NoReverseMatch:
            status_url = None
        stats = {"report": report, "error": error, "status_url": status_url}
        self.record_stats(stats)  # type: ignore[no-untyped-call]
