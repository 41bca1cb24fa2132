"""Django settings for the syncache test suite.

Everything that has to be shared with other processes (spawned workers, a
WSGI server) is a real file or a real database, never an in-memory one:

- the per-run directory and the throwaway PostgreSQL name are computed once,
  in the first process that imports this module, and exported through the
  environment, so every child process (which imports this module again)
  computes the same values instead of a new temporary directory each;
- the cache aliases ``cache_sqlite`` and ``cache_pg`` are real databases that
  pytest-django never replaces by a test database (see
  ``tests/harness/backends.py``).

``SYNCACHE_TEST_SETTINGS`` (JSON) lets a child process reproduce a test's
overridden settings; ``Backend.env()`` builds it.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from tests.harness.servers import DEFAULT_POSTGRES_URL, POSTGRES_ENV, parse_postgres_url

_RUN_DIR_ENV = "SYNCACHE_TEST_RUN_DIR"
_PG_NAME_ENV = "SYNCACHE_TEST_PG_NAME"
_OVERRIDES_ENV = "SYNCACHE_TEST_SETTINGS"


def _run_dir() -> Path:
    """Return the per-run directory: inherited from the parent process, or
    created here and removed when this process exits (not when a fork of it
    does; children that inherited it leave it alone)."""
    inherited = os.environ.get(_RUN_DIR_ENV)
    if inherited:
        path = Path(inherited)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix="syncache-test-"))
    os.environ[_RUN_DIR_ENV] = str(path)
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return path


def _postgres_name() -> str:
    name = os.environ.get(_PG_NAME_ENV)
    if not name:
        name = f"syncache_test_{os.getpid()}_{secrets.token_hex(4)}"
        os.environ[_PG_NAME_ENV] = name
    return name


TEST_RUN_DIR = _run_dir()
_postgres = parse_postgres_url(os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES_URL)

SECRET_KEY = "syncache-tests-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Tests create users; the default hasher costs ~100 ms per password.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "syncache",
    "tests",
]
# The scenario tests (tests/scenarios/test_server.py...) serve tests.urls
# through this middleware, in-process and in real WSGI/ASGI servers. The
# others are the admin's, for the status page (tests/test_status.py).
MIDDLEWARE: list[str] = [
    "syncache.middleware.LocalSyncCacheMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
STATIC_URL = "/static/"

DATABASES = {
    # pytest-django turns this into the test database TEST NAME; a file, not
    # ":memory:", so spawned workers open the same database.
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(TEST_RUN_DIR / "default.sqlite3"),
        "OPTIONS": {"timeout": 30},
        "TEST": {"NAME": str(TEST_RUN_DIR / "test_default.sqlite3")},
    },
    # DatabaseCache tables whose name ends in "_sqlite" (CacheRouter).
    "cache_sqlite": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(TEST_RUN_DIR / "cache.sqlite3"),
        "OPTIONS": {"timeout": 30},
    },
    # DatabaseCache tables whose name ends in "_pg" (CacheRouter). Created by
    # the postgres_database fixture, dropped at the end of the run.
    "cache_pg": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _postgres_name(),
        "USER": _postgres["USER"],
        "PASSWORD": _postgres["PASSWORD"],
        "HOST": _postgres["HOST"],
        "PORT": _postgres["PORT"],
        "OPTIONS": {"connect_timeout": 5},
    },
}
DATABASE_ROUTERS = ["tests.harness.backends.CacheRouter"]

CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {
        # Django's own chatter (request errors, runserver lines) is noise
        # here. syncache's loggers are left alone: tests assert on them with
        # caplog, which needs them to propagate to the root logger.
        "django": {"handlers": ["null"], "propagate": False},
    },
}

if os.environ.get(_OVERRIDES_ENV):
    # A child process (e.g. a WSGI server) started with Backend.env().
    _overrides = json.loads(os.environ[_OVERRIDES_ENV])
    globals().update({k: v for k, v in _overrides.items() if k.isupper()})
