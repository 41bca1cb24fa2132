"""Minimal Django settings so autodoc can import syncache.

Used only by the documentation build (``docs/conf.py``); not a settings
module for a site.
"""

SECRET_KEY = "syncache-docs-not-secret"
# The status page's views (syncache.views, syncache.panels) import
# django.contrib.auth, whose models need both apps installed.
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "syncache"]
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}
USE_TZ = True
