"""Minimal Django settings so autodoc can import syncache.

Used only by the documentation build (``docs/conf.py``); not a settings
module for a site.
"""

SECRET_KEY = "syncache-docs-not-secret"
INSTALLED_APPS = ["syncache"]
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}
USE_TZ = True
