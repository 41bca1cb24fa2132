"""The status page: syncache's state in the process serving it, for staff.

Mount it under the admin, before the admin's own URLs::

    urlpatterns = [
        path("admin/syncache/", include("syncache.urls")),
        path("admin/", admin.site.urls),
    ]

A GET shows every registered ``LocalSyncCache`` and ``GenerationSynchronizer``
of the process that serves the request, the groups of its group-cached
views and the locks it holds (:func:`syncache.status.process_report`). Each
cache, synchronizer and enumerable group has a button that POSTs back to the
same URL: a ``LocalSyncCache`` is cleared in every process, a synchronizer
or group is given a new generation. The answer to a POST is a redirect back
to the page, with a message saying what was done (post/redirect/get, so a
reload does not invalidate twice).

Access is the admin's: an anonymous visitor is redirected to the admin
login page, an authenticated user who is not active staff gets 403. POSTs
are CSRF-protected whatever ``MIDDLEWARE`` holds.

The views are synchronous: the cache clients are. Under ASGI, Django runs
them in its thread pool, never in the event loop.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.contrib import messages
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect

from syncache.local import LocalSyncCache
from syncache.status import (
    GROUP,
    KINDS,
    LOCAL,
    SYNCHRONIZER,
    Invalidation,
    alias_name,
    bump_group,
    bump_synchronizer_key,
    clear_local_caches,
    group_keys,
    listed_synchronizers,
    process_report,
)

if TYPE_CHECKING:
    # Imported by its full name: the documentation shows the annotations.
    import django.contrib.admin.sites

#: What each kind of entry gets told, after a successful invalidation.
_DONE = {
    LOCAL: (
        "Cleared {what}: new generation {generation}. Every process empties "
        "its copy at its next check."
    ),
    SYNCHRONIZER: (
        "Bumped {what}: new generation {generation}. Every holder, in every "
        "process, is now expired."
    ),
    GROUP: (
        "Bumped {what}: new version {generation}. Its entries are no longer "
        "served, in any process."
    ),
}


def _default_site() -> django.contrib.admin.sites.AdminSite:
    if not apps.is_installed("django.contrib.admin"):
        raise ImproperlyConfigured(
            "The syncache status page is part of the admin: add "
            "'django.contrib.admin' (with 'django.contrib.auth', "
            "'django.contrib.contenttypes', 'django.contrib.sessions' and "
            "'django.contrib.messages') to INSTALLED_APPS."
        )
    from django.contrib import admin

    return admin.site


@method_decorator([never_cache, csrf_protect], name="dispatch")
class StatusView(View):
    """GET: the status page. POST: clear or bump one entry, then redirect.

    Attributes:
        admin_site: The admin site whose login page, header and breadcrumbs
            the page uses; default ``django.contrib.admin.site``. For another
            site: ``StatusView.as_view(admin_site=my_site)``.
        template_name: The page's template; it extends
            ``admin/base_site.html``.
    """

    admin_site: django.contrib.admin.sites.AdminSite | None = None
    template_name = "syncache/status.html"

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        """Let only active staff in; send anonymous visitors to the login."""
        site = self.admin_site or _default_site()
        user = getattr(request, "user", None)
        if user is None:
            raise ImproperlyConfigured(
                "The syncache status page needs request.user: add "
                "'django.contrib.auth.middleware.AuthenticationMiddleware' to "
                "MIDDLEWARE."
            )
        if not user.is_authenticated:
            from django.contrib.auth.views import redirect_to_login

            return redirect_to_login(
                request.get_full_path() if request.method == "GET" else request.path,
                reverse("admin:login", current_app=site.name),
            )
        # The admin site's own rule (active staff by default; stricter on a
        # site that also wants a second factor, a superuser, an address).
        if not (user.is_active and user.is_staff and site.has_permission(request)):
            raise PermissionDenied("The syncache status page is for staff users.")
        request.current_app = site.name
        return super().dispatch(request, *args, **kwargs)

    def get(self, request: HttpRequest) -> HttpResponse:
        """Render the report of this process."""
        site = self.admin_site or _default_site()
        context = {
            **site.each_context(request),
            "title": "syncache status",
            # The tables are wide: the whole width is theirs.
            "is_nav_sidebar_enabled": False,
            "report": process_report(),
        }
        return TemplateResponse(request, self.template_name, context)

    def post(self, request: HttpRequest) -> HttpResponse:
        """Invalidate the entry named by ``kind``, ``name`` and ``alias``."""
        kind = request.POST.get("kind", "")
        name = request.POST.get("name", "")
        alias = request.POST.get("alias", "")
        if kind not in KINDS or not name or not alias:
            return HttpResponseBadRequest(
                f"A syncache status POST needs kind (one of {', '.join(KINDS)}), "
                f"name and alias, as the buttons of the status page send them; "
                f"got kind={kind!r}, name={name!r}, alias={alias!r}.",
                content_type="text/plain",
            )
        done = _invalidate(kind, name, alias)
        if done is None:
            label = Invalidation(kind, name, alias, None).describe()
            messages.error(
                request,
                f"{label} is not registered in process {os.getpid()}, which "
                f"served this request: nothing was invalidated. With several "
                f"worker processes each request may be served by another one; "
                f"reload the page to see what this process holds.",
            )
        for item in done or []:
            if item.failed:
                messages.error(
                    request,
                    f"Could not invalidate {item.describe()}: the cache failed "
                    f"(see the 'syncache' log), so other processes were not "
                    f"told. Try again when the cache is back.",
                )
            else:
                messages.success(
                    request,
                    _DONE[item.kind].format(
                        what=item.describe(), generation=item.generation
                    ),
                )
        return redirect(request.path)


def _invalidate(kind: str, name: str, alias: str) -> list[Invalidation] | None:
    """Invalidate an entry this process knows; None when it knows none.

    Only registered entries can be named, so a POST cannot write to an
    arbitrary key of the cache.
    """
    if kind == LOCAL:
        instances = [
            cache
            for cache in LocalSyncCache.CACHES
            if cache.id == name and alias_name(cache.cache_alias) == alias
        ]
        return clear_local_caches(instances) if instances else None
    if kind == SYNCHRONIZER:
        holders = [
            sync
            for sync in listed_synchronizers()
            if sync.cache_key == name and alias_name(sync.cache_alias) == alias
        ]
        if not holders:
            return None
        return bump_synchronizer_key(name, [holders[0].cache_alias])
    return [bump_group(name, alias)] if (alias, name) in group_keys() else None
