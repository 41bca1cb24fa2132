"""The ``SYNCACHE`` settings dict, merged over documented defaults.

Read settings through :func:`get_config`; it is cached, and a
``setting_changed`` receiver resets it so ``override_settings(SYNCACHE=...)``
works in tests.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

#: Every key ``SYNCACHE`` accepts, with its default. Documented in
#: ``docs/settings.rst``; keep the two in step.
DEFAULTS: dict[str, Any] = {
    # The Django cache alias used as the coordination medium.
    "CACHE_ALIAS": "default",
    # Prepended to every key syncache writes, so its keys never collide with
    # the site's own.
    "KEY_PREFIX": "syncache",
    # "expire": a backend error is logged and treated as "expired".
    # "raise": the error propagates (useful in tests and while debugging).
    "FAILURE_POLICY": "expire",
    # Seconds between two log records about failures of the same alias.
    "LOG_INTERVAL": 60.0,
    # Seconds between two request-start checks in one process; 0 checks at
    # every request. Above 0, a change can go unseen for that long.
    "CHECK_INTERVAL": 0.0,
    # How many times a bump is retried when a backend dropped the write
    # (Django's DatabaseCache swallows database errors in set()).
    "WRITE_RETRIES": 8,
    # Push invalidations over Redis pub/sub: every bump publishes its key and
    # a listener thread in each process clears what it names, so the
    # request-start check costs no round trip while the subscription is
    # healthy. Needs a Redis cache alias, or PUSH_URL.
    "PUSH": False,
    # A Redis URL for the pub/sub channel when the cache alias is not Redis
    # (or another Redis should carry it); None: the cache alias's own Redis.
    "PUSH_URL": None,
    # Seconds after which a holder reads the shared cache again even when no
    # message came: the bound on the damage of a lost message.
    "PUSH_RECHECK_INTERVAL": 5.0,
}

FAILURE_POLICIES = ("expire", "raise")

#: The longest KEY_PREFIX accepted. It keeps room under memcached's 250-byte
#: limit for Django's own prefix and version and for the key itself.
MAX_KEY_PREFIX_LENGTH = 40


@dataclass(frozen=True)
class Config:
    """The effective ``SYNCACHE`` settings."""

    cache_alias: str
    key_prefix: str
    failure_policy: str
    log_interval: float
    check_interval: float
    write_retries: int
    push: bool
    push_url: str | None
    push_recheck_interval: float


class ImproperlyConfiguredSyncache(Exception):
    """``SYNCACHE`` holds a value syncache cannot use."""


def config_problems(raw: object) -> list[str]:
    """Return a message for each problem in a raw ``SYNCACHE`` value.

    Used by :func:`get_config` and by the system checks, so both report the
    same thing.
    """
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        return [f"SYNCACHE must be a dict, not {type(raw).__name__}."]
    problems = [
        f"SYNCACHE has an unknown key {key!r}; the known keys are "
        f"{', '.join(sorted(DEFAULTS))}."
        for key in raw
        if key not in DEFAULTS
    ]
    merged = {**DEFAULTS, **{k: v for k, v in raw.items() if k in DEFAULTS}}
    alias = merged["CACHE_ALIAS"]
    if not isinstance(alias, str) or not alias:
        problems.append(
            f"SYNCACHE['CACHE_ALIAS'] must be the name of a cache in CACHES, "
            f"not {alias!r}."
        )
    prefix = merged["KEY_PREFIX"]
    if (
        not isinstance(prefix, str)
        or not prefix
        or len(prefix.encode()) > MAX_KEY_PREFIX_LENGTH
        or any(ord(c) <= 32 or ord(c) >= 127 for c in prefix)
    ):
        problems.append(
            f"SYNCACHE['KEY_PREFIX'] must be a non-empty string of at most "
            f"{MAX_KEY_PREFIX_LENGTH} printable ASCII characters without "
            f"spaces, not {prefix!r}."
        )
    if merged["FAILURE_POLICY"] not in FAILURE_POLICIES:
        problems.append(
            f"SYNCACHE['FAILURE_POLICY'] must be one of "
            f"{', '.join(map(repr, FAILURE_POLICIES))}, "
            f"not {merged['FAILURE_POLICY']!r}."
        )
    for name in ("LOG_INTERVAL", "CHECK_INTERVAL"):
        interval = merged[name]
        if (
            isinstance(interval, bool)
            or not isinstance(interval, (int, float))
            or interval < 0
        ):
            problems.append(
                f"SYNCACHE[{name!r}] must be a number of seconds >= 0, "
                f"not {interval!r}."
            )
    if not isinstance(merged["PUSH"], bool):
        problems.append(
            f"SYNCACHE['PUSH'] must be True or False, not {merged['PUSH']!r}."
        )
    url = merged["PUSH_URL"]
    if url is not None and not (
        isinstance(url, str) and url.startswith(("redis://", "rediss://", "unix://"))
    ):
        problems.append(
            f"SYNCACHE['PUSH_URL'] must be None or a Redis URL (redis://, "
            f"rediss:// or unix://), not {url!r}."
        )
    recheck = merged["PUSH_RECHECK_INTERVAL"]
    if (
        isinstance(recheck, bool)
        or not isinstance(recheck, (int, float))
        or not (0 < recheck < float("inf"))
    ):
        problems.append(
            f"SYNCACHE['PUSH_RECHECK_INTERVAL'] must be a number of seconds "
            f"> 0, not {recheck!r}."
        )
    retries = merged["WRITE_RETRIES"]
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        problems.append(
            f"SYNCACHE['WRITE_RETRIES'] must be an integer >= 0, not {retries!r}."
        )
    return problems


@functools.cache
def get_config() -> Config:
    """Return the effective settings.

    Raises:
        ImproperlyConfiguredSyncache: ``SYNCACHE`` is invalid. The system
            check ``syncache.E001`` reports the same problems at startup.
    """
    raw = getattr(settings, "SYNCACHE", None)
    problems = config_problems(raw)
    if problems:
        raise ImproperlyConfiguredSyncache(" ".join(problems))
    merged = {**DEFAULTS, **(raw or {})}
    return Config(
        cache_alias=merged["CACHE_ALIAS"],
        key_prefix=merged["KEY_PREFIX"],
        failure_policy=merged["FAILURE_POLICY"],
        log_interval=float(merged["LOG_INTERVAL"]),
        check_interval=float(merged["CHECK_INTERVAL"]),
        write_retries=merged["WRITE_RETRIES"],
        push=merged["PUSH"],
        push_url=merged["PUSH_URL"],
        push_recheck_interval=float(merged["PUSH_RECHECK_INTERVAL"]),
    )


@receiver(setting_changed)
def _reset_config(*, setting: str, **kwargs: object) -> None:
    if setting in ("SYNCACHE", "CACHES"):
        get_config.cache_clear()
