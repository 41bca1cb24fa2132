"""Views for the scenario tests: read and change the cached model data.

Every answer is JSON with the pid of the process that served it, so a test
talking to a multi-worker server knows which worker answered. The reading
views say whether the value came from the process's ``LocalSyncCache``
(``was_cached``) and whether it is there after the request (``cached``).

The changing views take their arguments from POST or GET and are exempt
from CSRF checks.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

import syncache
from tests.models import PageTree, SiteSetting, get_setting, site_settings


def _answer(**data: Any) -> JsonResponse:
    return JsonResponse({"pid": os.getpid(), **data})


def _param(request: HttpRequest, name: str) -> str:
    value = request.POST.get(name, request.GET.get(name))
    if value is None:
        raise ValueError(f"missing parameter {name!r}")
    return value


def pid(request: HttpRequest) -> JsonResponse:
    return _answer()


def page_url(request: HttpRequest, pk: int) -> JsonResponse:
    url_cache = PageTree._url_cache
    was_cached = pk in url_cache
    url = PageTree.objects.get(pk=pk).get_absolute_url()
    return _answer(url=url, was_cached=was_cached, cached=url_cache.get(pk) == url)


@csrf_exempt
def page_set_slug(request: HttpRequest, pk: int) -> JsonResponse:
    """Change a page's slug through ``save()`` (which clears the URL cache)."""
    page = PageTree.objects.get(pk=pk)
    page.slug = _param(request, "slug")
    page.save()
    return _answer(slug=page.slug)


def setting_value(request: HttpRequest, name: str) -> JsonResponse:
    was_cached = name in site_settings
    value = get_setting(name)
    return _answer(value=value, was_cached=was_cached, cached=name in site_settings)


async def setting_value_async(request: HttpRequest, name: str) -> JsonResponse:
    """The async twin of :func:`setting_value`; also names its thread."""
    was_cached = name in site_settings
    value = await sync_to_async(get_setting)(name)
    return _answer(
        value=value,
        was_cached=was_cached,
        cached=name in site_settings,
        thread=threading.get_ident(),
    )


@csrf_exempt
def setting_save(request: HttpRequest, name: str) -> JsonResponse:
    """Change a setting through ``save()``: ``clear_on_change`` invalidates."""
    setting = SiteSetting.objects.get(name=name)
    setting.value = _param(request, "value")
    setting.save()
    return _answer(value=setting.value)


@csrf_exempt
def setting_update(request: HttpRequest, name: str) -> JsonResponse:
    """Change a setting with ``QuerySet.update()``, which sends no signal, in
    a transaction: ``invalidate_on_commit`` invalidates when it commits."""
    value = _param(request, "value")
    with transaction.atomic():
        updated = SiteSetting.objects.filter(name=name).update(value=value)
        syncache.invalidate_on_commit(site_settings)
    return _answer(value=value, updated=updated)
