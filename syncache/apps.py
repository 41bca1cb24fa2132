"""The syncache AppConfig: registers system checks."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class SyncacheConfig(AppConfig):
    name = "syncache"
    verbose_name = "syncache"

    def ready(self) -> None:
        from syncache import checks as syncache_checks

        checks.register(syncache_checks.check_settings, "syncache")
        checks.register(syncache_checks.check_cache_backend, "syncache", "caches")
        checks.register(syncache_checks.check_middleware, "syncache")
        checks.register(syncache_checks.check_lock_backends, "syncache", "caches")
        checks.register(syncache_checks.check_push, "syncache", "caches")
