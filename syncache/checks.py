"""Django system checks for syncache's configuration.

Every id is stable and documented in ``docs/checks.rst``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string

from syncache.conf import config_problems, get_config
from syncache.keys import DEFAULT_MAX_LENGTH, MEMCACHED_MAX_KEY_LENGTH

#: Room for the suffixes locks add to a key (``!spinlock``, ``!fence``...).
KEY_SUFFIX_ROOM = 10

#: For each backend class path, the OPTIONS keys any one of which bounds how
#: long a request waits for a server that stopped answering.
_TIMEOUT_OPTIONS: dict[str, tuple[str, ...]] = {
    "django.core.cache.backends.redis.RedisCache": ("socket_timeout",),
    "django_redis.cache.RedisCache": ("SOCKET_TIMEOUT",),
    "django.core.cache.backends.memcached.PyMemcacheCache": ("timeout",),
}


def _is_backend(backend: type | None, path: str) -> bool:
    """Whether ``backend`` is the class at ``path`` or a subclass of it."""
    if backend is None:
        return False
    try:
        return issubclass(backend, import_string(path))
    except ImportError:
        return False


def _timeout_options(backend: type | None) -> tuple[str, ...]:
    for path, names in _TIMEOUT_OPTIONS.items():
        if _is_backend(backend, path):
            return names
    return ()


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """E001: ``SYNCACHE`` has unknown keys or values of the wrong type."""
    return [
        checks.Error(problem, hint="See docs/settings.rst.", id="syncache.E001")
        for problem in config_problems(getattr(settings, "SYNCACHE", None))
    ]


def check_middleware(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """W005: LocalSyncCache instances exist but nothing checks them."""
    from syncache.local import LocalSyncCache
    from syncache.middleware import MIDDLEWARE_PATH

    if not len(LocalSyncCache.CACHES) or MIDDLEWARE_PATH in settings.MIDDLEWARE:
        return []
    ids = ", ".join(repr(cache.id) for cache in LocalSyncCache.CACHES)
    return [
        checks.Warning(
            f"LocalSyncCache instances exist ({ids}) but {MIDDLEWARE_PATH} is "
            f"not in MIDDLEWARE: nothing empties them when another process "
            f"clears them, so requests serve stale values.",
            hint=f"Add {MIDDLEWARE_PATH!r} near the top of MIDDLEWARE. Outside "
            f"requests, wrap work in syncache.checked().",
            id="syncache.W005",
        )
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
    try:
        backend: type | None = import_string(config.get("BACKEND", ""))
    except ImportError:
        backend = None  # Django's own cache checks report it.
    messages: list[checks.CheckMessage] = []
    if _is_backend(backend, "django.core.cache.backends.dummy.DummyCache"):
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
    elif _is_backend(backend, "django.core.cache.backends.locmem.LocMemCache"):
        messages.append(
            checks.Warning(
                f"Cache {alias!r} is a LocMemCache: it is private to one "
                f"process, so other processes never see invalidations.",
                hint="Fine for development with one process; use Redis, "
                "memcached or a database cache in production.",
                id="syncache.W001",
            )
        )
    elif _is_backend(backend, "django.core.cache.backends.filebased.FileBasedCache"):
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
    prefix_room = MEMCACHED_MAX_KEY_LENGTH - DEFAULT_MAX_LENGTH - KEY_SUFFIX_ROOM - 4
    if overhead + DEFAULT_MAX_LENGTH + KEY_SUFFIX_ROOM > MEMCACHED_MAX_KEY_LENGTH:
        messages.append(
            checks.Warning(
                f"Cache {alias!r} has a KEY_PREFIX and VERSION that take "
                f"{overhead} characters; syncache's keys may then exceed "
                f"{MEMCACHED_MAX_KEY_LENGTH} bytes, which memcached refuses.",
                hint=f"Keep KEY_PREFIX under {prefix_room} characters.",
                id="syncache.W003",
            )
        )
    timeout_options = _timeout_options(backend)
    options: object = config.get("OPTIONS", {})
    if not isinstance(options, dict):
        options = {}
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


def check_lock_backends(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """E004: a lock feature is declared on a cache that cannot hold a lock."""
    from syncache.dogpile import lock_users
    from syncache.medium import get_medium

    if config_problems(getattr(settings, "SYNCACHE", None)):
        return []
    unable: dict[str, list[str]] = {}
    for what, alias in sorted(lock_users.items()):
        alias = get_config().cache_alias if alias is None else alias
        if alias not in settings.CACHES:
            unable.setdefault(alias, []).append(what)
            continue
        try:
            capabilities = get_medium(alias).capabilities
        except Exception:  # Django's own cache checks report a broken alias.
            continue
        if not (capabilities.atomic_add and capabilities.compare_and_delete):
            unable.setdefault(alias, []).append(what)
    messages: list[checks.CheckMessage] = []
    for alias, users in unable.items():
        config = settings.CACHES.get(alias)
        what = (
            f"is a {config.get('BACKEND')}, which has no atomic add and "
            f"compare-and-delete"
            if config is not None
            else "is not in CACHES"
        )
        messages.append(
            checks.Error(
                f"Cache {alias!r} {what}, so it cannot hold the cross-process "
                f"lock that {', '.join(users)} need(s): they would raise "
                f"LockNotSupported.",
                hint="Give them cache_alias= naming a Redis, memcached or "
                "database cache, or point SYNCACHE['CACHE_ALIAS'] at one.",
                id="syncache.E004",
            )
        )
    return messages


def check_push(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """I001, W006: with ``SYNCACHE["PUSH"]``, which mode the alias runs in."""
    if config_problems(getattr(settings, "SYNCACHE", None)):
        return []
    config = get_config()
    if not config.push or config.cache_alias not in settings.CACHES:
        return []
    from syncache.medium import get_medium

    alias = config.cache_alias
    try:
        medium = get_medium(alias)
    except Exception:  # Django's own cache checks report a broken alias.
        return []
    mode = medium.push_mode
    if mode is None:
        return [
            checks.Warning(
                f"SYNCACHE['PUSH'] is on, but cache {alias!r} "
                f"({settings.CACHES[alias].get('BACKEND')}) is not Redis and "
                f"SYNCACHE['PUSH_URL'] is not set: every process polls the "
                f"cache at each check instead.",
                hint="Set SYNCACHE['PUSH_URL'] to a Redis URL, or use a Redis "
                "cache alias, or turn PUSH off.",
                id="syncache.W006",
            )
        ]
    if mode == "url":
        try:
            import redis  # noqa: F401
        except ImportError:
            return [
                checks.Error(
                    "SYNCACHE['PUSH_URL'] is set but the redis package is not "
                    "installed.",
                    hint="pip install 'syncache[redis]'.",
                    id="syncache.E005",
                )
            ]
    where = "SYNCACHE['PUSH_URL']" if mode == "url" else "the cache's own Redis"
    return [
        checks.Info(
            f"Cache {alias!r} runs in push mode: invalidations arrive over "
            f"{where} on channel {medium.push_channel!r}; checks read the "
            f"cache only when a message came, the subscription is down, or "
            f"the last read is older than {config.push_recheck_interval:g} s.",
            id="syncache.I001",
        )
    ]
