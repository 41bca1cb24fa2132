"""Models for the scenario tests (app label ``tests``).

``PageTree`` is django-tools' ``LocalSyncCache`` example, as written there:
the URL cache is cleared in ``save()``. ``SiteSetting`` is the other way of
wiring a cache: ``syncache.clear_on_change`` clears it when a transaction
that changed a row commits, so its ``save()`` does nothing special.

The cache ids are taken here for the whole test suite (module-level
instances, one per process): other tests must not create a ``LocalSyncCache``
with id ``"PageTree_absolute_url"`` or ``"site_settings"`` unless they swap
``LocalSyncCache.CACHES`` for a fresh registry.
"""

from __future__ import annotations

from typing import Any

from django.db import models

import syncache
from syncache import LocalSyncCache
from syncache.conf import get_config

#: The ``SYNCACHE["KEY_PREFIX"]`` in force when this module was imported.
#: The model caches' generation keys are made with it once and for all; a
#: later ``override_settings(SYNCACHE=...)`` (which the backend fixtures make
#: for every test) does not change them. A test in which this process and
#: others clear the same model cache must run every process with this prefix
#: (see ``tests/scenarios/test_transactions.py``).
MODEL_CACHES_KEY_PREFIX = get_config().key_prefix


class PageTree(models.Model):
    """django-tools' example, as written there."""

    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE)
    slug = models.SlugField()

    _url_cache = LocalSyncCache(id="PageTree_absolute_url")

    class Meta:
        app_label = "tests"

    def get_absolute_url(self) -> str:
        if self.pk in self._url_cache:
            return self._url_cache[self.pk]  # type: ignore[no-any-return]
        url = (self.parent.get_absolute_url() if self.parent else "/") + self.slug + "/"
        self._url_cache[self.pk] = url
        return url

    def save(self, *args: Any, **kwargs: Any) -> None:
        self._url_cache.clear()
        return super().save(*args, **kwargs)


#: name -> value of every ``SiteSetting`` this process has read.
site_settings = syncache.clear_on_change(
    LocalSyncCache("site_settings"), "tests.SiteSetting"
)


class SiteSetting(models.Model):
    """A setting whose cache is cleared by ``clear_on_change`` on commit."""

    name = models.CharField(max_length=100, unique=True)
    value = models.CharField(max_length=200)

    class Meta:
        app_label = "tests"


def get_setting(name: str) -> str | None:
    """Return the value of setting ``name`` (None when there is no such row),
    from this process's ``site_settings`` cache when it has it."""
    if name in site_settings:
        return site_settings[name]  # type: ignore[no-any-return]
    value: str | None = (
        SiteSetting.objects.filter(name=name).values_list("value", flat=True).first()
    )
    site_settings[name] = value
    return value
