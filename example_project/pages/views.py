"""The site's pages.

Rendered pages are kept in the shared cache, grouped against the models
they show: a committed change to any page or to the site settings
uncaches every page, in every process, with one write.
"""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from pages.models import PageTree, SiteSettings, get_site_settings
from pages.navigation import navigation
from pages.reports import get_report
from syncache import cache_page_against_models


def find_page(path: str) -> PageTree:
    """The page at ``path`` ("docs/intro"), walking down from the top."""
    page: PageTree | None = None
    for slug in path.strip("/").split("/"):
        page = PageTree.objects.filter(parent=page, slug=slug).first()
        if page is None:
            break
    if page is None:
        raise Http404(f"No page at /{path}/")
    return page


@cache_page_against_models(PageTree, SiteSettings, timeout=3600)
def page_detail(request: HttpRequest, path: str = "") -> HttpResponse:
    page = find_page(path) if path else None
    ancestors: list[PageTree] = []
    parent = page.parent if page else None
    while parent is not None:
        ancestors.insert(0, parent)
        parent = parent.parent
    children = PageTree.objects.filter(parent=page)
    return render(
        request,
        "pages/page.html",
        {
            "site": get_site_settings(),
            "navigation": navigation(),
            "page": page,
            "ancestors": ancestors,
            "children": children,
        },
    )


def report(request: HttpRequest) -> JsonResponse:
    return JsonResponse(dict(get_report()))
