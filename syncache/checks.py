"""Django system checks for syncache's configuration.

Every id is stable and documented in ``docs/checks.rst``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks

from syncache.conf import config_problems, get_config
from syncache.keys import DEFAULT_MAX_LENGTH, MEMCACHED_MAX_KEY_LENGTH

_DUMMY = "django.core.cache.backends.dummy.DummyCache"
_LOCMEM = "django.core.cache.backends.locmem.LocMemCache"
_FILE = "django.core.cache.backends.filebased.FileBasedCache"
_DJANGO_REDIS = "django.core.cache.backends.redis.RedisCache"
_PYMEMCACHE = "django.core.cache.backends.memcached.PyMemcacheCache"

#: For each backend, the OPTIONS keys any one of which bounds how long a
#: request waits for a server that stopped answering.
_TIMEOUT_OPTIONS: dict[str, tuple[str, ...]] = {
    _DJANGO_REDIS: ("socket_timeout",),
    "django_redis.cache.RedisCache": ("SOCKET_TIMEOUT",),
    _PYMEMCACHE: ("timeout",),
}


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """E001: ``SYNCACHE`` has unknown keys or values of the wrong type."""
    return [
        checks.Error(problem, hint="See docs/settings.rst.", id="syncache.E001")
        for problem in config_problems(getattr(settings, "SYNCACHE", None))
    ]


def check_cache_backend(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """E002-E003, W001-W004: the cache alias syncache coordinates through."""
    if config_problems(getattr(settings, "SYNCACHE", None)):
        return []
    alias = get_config().cache_alias
    config = settings.CACHES.get(alias)
    if config is None:
        return [
            checks.Error(
                f"SYNCACHE['CACHE_ALIAS'] is {alias!r}, which is not in CACHES.",
                hint=f"Add a {alias!r} cache to CACHES or set CACHE_ALIAS to "
                f"one of: {', '.join(sorted(settings.CACHES)) or '(none)'}.",
                id="syncache.E002",
            )
        ]
    backend = config.get("BACKEND", "")
    messages: list[checks.CheckMessage] = []
    if backend == _DUMMY:
        messages.append(
            checks.Error(
                f"Cache {alias!r} is a DummyCache: it stores nothing, so no "
                f"process ever sees another's changes and every check is "
                f"expired.",
                hint="Point SYNCACHE['CACHE_ALIAS'] at Redis, memcached or a "
                "database cache.",
                id="syncache.E003",
            )
        )
    elif backend == _LOCMEM:
        messages.append(
            checks.Warning(
                f"Cache {alias!r} is a LocMemCache: it is private to one "
                f"process, so other processes never see invalidations.",
                hint="Fine for development with one process; use Redis, "
                "memcached or a database cache in production.",
                id="syncache.W001",
            )
        )
    elif backend == _FILE:
        messages.append(
            checks.Warning(
                f"Cache {alias!r} is a FileBasedCache: it is shared only by the "
                f"processes of one host, and it has no atomic add or increment "
                f"(locks cannot exclude).",
                hint="Use Redis, memcached or a database cache when the site "
                "runs on more than one server.",
                id="syncache.W002",
            )
        )
    overhead = len(f"{config.get('KEY_PREFIX', '')}:{config.get('VERSION', 1)}:")
    if overhead + DEFAULT_MAX_LENGTH > MEMCACHED_MAX_KEY_LENGTH:
        messages.append(
            checks.Warning(
                f"Cache {alias!r} has a KEY_PREFIX and VERSION that take "
                f"{overhead} characters; syncache's keys may then exceed "
                f"{MEMCACHED_MAX_KEY_LENGTH} bytes, which memcached refuses.",
                hint=f"Keep KEY_PREFIX under "
                f"{MEMCACHED_MAX_KEY_LENGTH - DEFAULT_MAX_LENGTH - 4} "
                f"characters.",
                id="syncache.W003",
            )
        )
    timeout_options = _TIMEOUT_OPTIONS.get(backend)
    options = config.get("OPTIONS", {})
    if timeout_options and not any(name in options for name in timeout_options):
        messages.append(
            checks.Warning(
                f"Cache {alias!r} sets no client timeout: if its server stops "
                f"answering, every request waits for the operating system's "
                f"TCP timeout before syncache can treat the state as expired.",
                hint=f"Set OPTIONS[{timeout_options[0]!r}] to a number of "
                f"seconds, for example 0.5.",
                id="syncache.W004",
            )
        )
    return messages
