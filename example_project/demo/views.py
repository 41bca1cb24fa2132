"""What the demo reads and changes, through the site's own code.

Every answer names the process that served it.
"""

from __future__ import annotations

import os

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from pages.models import PageTree, SiteSettings, get_site_settings
from pages.navigation import navigation

#: The page the demo reads; the demo renames its parent (a top-level page).
DEMO_PAGE = "intro"


def pid(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"pid": os.getpid()})


def read(request: HttpRequest) -> JsonResponse:
    """What this process serves: the page's URL (a ``LocalSyncCache``), the
    site name (a ``GenerationSynchronizer``), the navigation (a group)."""
    page = PageTree.objects.select_related("parent").get(slug=DEMO_PAGE)
    url_was_cached = page.pk in PageTree._url_cache
    return JsonResponse(
        {
            "pid": os.getpid(),
            "url": page.get_absolute_url(),
            "site_name": get_site_settings().name,
            "navigation": [link["url"] for link in navigation()],
            "url_was_cached": url_was_cached,
        }
    )


@csrf_exempt
@require_POST
def update(request: HttpRequest) -> JsonResponse:
    """Rename the demo page's parent and the site, in one transaction, the
    way a staff form would: through the models' ``save()``."""
    section = request.POST.get("section", "")
    site_name = request.POST.get("site_name", "")
    if not section or not site_name:
        return JsonResponse(
            {"error": "POST a new 'section' slug and a new 'site_name'."}, status=400
        )
    with transaction.atomic():
        parent = PageTree.objects.get(slug=DEMO_PAGE).parent
        if parent is None:
            return JsonResponse(
                {"error": f"The page {DEMO_PAGE!r} has no parent to rename."},
                status=409,
            )
        parent.slug = section
        parent.save()
        site = SiteSettings.objects.get(pk=1)
        site.name = site_name
        site.save()
    return JsonResponse({"pid": os.getpid()})
