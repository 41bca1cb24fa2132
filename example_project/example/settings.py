"""Settings of the syncache example site.

The site runs with no server to install: the data and syncache's
coordination cache are both in one SQLite file (Django's database cache).
``SYNCACHE_DEMO_CACHE`` switches the coordination cache to a server::

    SYNCACHE_DEMO_CACHE=redis://127.0.0.1:6379/0
    SYNCACHE_DEMO_CACHE=memcached://127.0.0.1:11211

``SYNCACHE_DEMO_DATA_DIR`` puts the SQLite file elsewhere than next to
``manage.py`` (the demo uses a fresh temporary directory).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SYNCACHE_DEMO_DATA_DIR") or BASE_DIR)

SECRET_KEY = "syncache-example-not-secret"
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "syncache",
    "pages",
    # The demo (manage.py demo); a site copied from this one leaves it out.
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Early: every LocalSyncCache is checked before any view reads one.
    "syncache.middleware.LocalSyncCacheMiddleware",
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "example.urls"
WSGI_APPLICATION = "example.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {},
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA_DIR / "db.sqlite3",
        # Several server processes share the file: wait for its lock rather
        # than fail at once.
        "OPTIONS": {"timeout": 20},
    },
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

#: The table of the embedded default (``manage.py createcachetable``).
CACHE_TABLE = "syncache_example_cache"


def cache_from_url(url: str) -> dict[str, Any]:
    """Return a ``CACHES`` entry for ``SYNCACHE_DEMO_CACHE``.

    Empty: Django's database cache in the site's own database. Client
    timeouts bound how long a request waits for a server that stopped
    answering (system check ``syncache.W004``); syncache then treats its
    state as expired instead of serving an error page.
    """
    if not url:
        return {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": CACHE_TABLE,
        }
    parts = urlsplit(url)
    if parts.scheme == "redis" and parts.hostname:
        return {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            "OPTIONS": {"socket_timeout": 1.0, "socket_connect_timeout": 1.0},
        }
    if parts.scheme == "memcached" and parts.hostname:
        return {
            "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
            "LOCATION": f"{parts.hostname}:{parts.port or 11211}",
            "OPTIONS": {"timeout": 1.0, "connect_timeout": 1.0, "no_delay": True},
        }
    raise ImproperlyConfigured(
        f"SYNCACHE_DEMO_CACHE={url!r} is not a cache URL this site knows: use "
        f"redis://HOST:PORT/DB or memcached://HOST:PORT, or leave it unset for "
        f"the SQLite database cache."
    )


CACHES = {"default": cache_from_url(os.environ.get("SYNCACHE_DEMO_CACHE", ""))}

# Every key and its default: docs/settings.rst.
SYNCACHE = {"CACHE_ALIAS": "default"}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    # A cache outage is logged by syncache (at most once a minute), and the
    # site goes on from the database.
    "loggers": {"syncache": {"handlers": ["console"], "level": "INFO"}},
}
