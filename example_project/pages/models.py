"""The site's data: a tree of pages and one row of site settings.

Each server process keeps two things in memory, and syncache keeps them
right when another process changes the data:

* page URLs, in a ``LocalSyncCache`` that ``PageTree.save()`` clears in
  every process (the middleware checks it at the start of each request);
* the site settings, loaded once and reloaded when a
  ``GenerationSynchronizer`` says another process saved them.
"""

from __future__ import annotations

from typing import Any

from django.db import models, transaction

from syncache import GenerationSynchronizer, LocalSyncCache


class PageTree(models.Model):
    """A page; its URL is made of its ancestors' slugs."""

    parent = models.ForeignKey(
        "self", null=True, blank=True, related_name="children", on_delete=models.CASCADE
    )
    slug = models.SlugField()
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)

    #: pk -> URL, in this process. A URL depends on every ancestor's slug,
    #: so any save clears all of them.
    _url_cache = LocalSyncCache(id="PageTree_absolute_url")

    class Meta:
        ordering = ("pk",)

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        url: str | None = self._url_cache.get(self.pk)
        if url is None:
            prefix = self.parent.get_absolute_url() if self.parent else "/"
            url = self._url_cache[self.pk] = prefix + self.slug + "/"
        return url

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Every process drops its URLs; inside a transaction, again when it
        # commits (other processes may have read the old rows meanwhile).
        self._url_cache.clear()
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        self._url_cache.clear()
        return super().delete(*args, **kwargs)


class SiteSettings(models.Model):
    """The site's settings: one row, edited by staff, read by every page."""

    name = models.CharField(max_length=100)
    tagline = models.CharField(max_length=200, blank=True)

    class Meta:
        verbose_name_plural = "site settings"

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.pk = 1  # a singleton
        super().save(*args, **kwargs)
        # Other processes reload once the new row is visible to them.
        transaction.on_commit(_site_settings_changed)


#: The generation of the site settings in the shared cache. ``lazy``: no
#: cache is touched while Django loads the apps; the first check loads.
_site_settings_sync = GenerationSynchronizer("site-settings", lazy=True)
_site_settings: SiteSettings | None = None


def get_site_settings() -> SiteSettings:
    """Return the site settings, from memory unless another process changed
    them (one small read of the shared cache)."""
    global _site_settings
    current = _site_settings
    if current is None or _site_settings_sync.is_expired():
        # Adopt the generation *before* reading the row: a change committed
        # during the read leaves this process expired instead of holding
        # the old row under the new generation.
        _site_settings_sync.refresh()
        current = _site_settings = SiteSettings.objects.get_or_create(
            pk=1, defaults={"name": "syncache example"}
        )[0]
    return current


def _site_settings_changed() -> None:
    global _site_settings
    _site_settings = None  # this process reloads at its next read
    _site_settings_sync.mark_updated()  # and every other one too
