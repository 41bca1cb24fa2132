"""What syncache holds in this process, and the invalidations staff can make.

One place gathers the state that ``manage.py syncache status``, the status
page (:mod:`syncache.views`) and the django-debug-toolbar panel
(:mod:`syncache.panels`) show, as JSON-ready dicts:

* every registered ``LocalSyncCache``: its id, the generation stored in the
  shared cache next to the one held here, its length, counters and the
  time since its last check and clear (:func:`local_cache_rows`);
* every other live ``GenerationSynchronizer`` (:func:`synchronizer_rows`);
* the groups of the group-cached views whose version can be enumerated
  (:func:`group_rows`);
* the ``CacheMutex`` locks held by this process (:func:`lock_rows`).

Stored generations are read fresh (bypassing the epoch), one round trip
per cache alias and kind; nothing is written, so a missing generation is
shown as missing rather than created.

The invalidations (:func:`clear_local_caches`, :func:`bump_synchronizer_key`,
:func:`bump_group`) are the ones the command's ``bump`` makes. Each returns
an :class:`Invalidation` per cache alias, whose ``generation`` is None when
the backend failed.

Everything here is blocking I/O on the cache backends: call it from
synchronous code (under ASGI, from a thread: ``sync_to_async``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from syncache import push
from syncache.conf import get_config
from syncache.dogpile import held_mutexes
from syncache.groups import _page_specs
from syncache.local import LocalSyncCache
from syncache.medium import FAILED, Generation, _Failed, get_medium
from syncache.synchronizer import (
    GenerationSynchronizer,
    all_synchronizers,
    fetch_generations,
    is_expired_value,
)

#: The kinds of entry an invalidation can name, and what it does to each.
LOCAL = "local"
SYNCHRONIZER = "synchronizer"
GROUP = "group"
KINDS = (LOCAL, SYNCHRONIZER, GROUP)


def alias_name(alias: str | None) -> str:
    """The cache alias an object synchronizes through (None: the default)."""
    return get_config().cache_alias if alias is None else alias


def generation_status(stored: Any) -> str:
    """``"stored"``, ``"missing"`` (no key) or ``"unreadable"`` (backend error)."""
    if stored is FAILED:
        return "unreadable"
    if stored is None:
        return "missing"
    return "stored"


def generation_state(stored: Any, held: Any) -> str:
    """``"current"``, ``"expired"``, or ``"unsynced"`` (nothing held here)."""
    if held is None:
        return "unsynced"
    return "expired" if is_expired_value(stored, held) else "current"


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def listed_synchronizers() -> list[GenerationSynchronizer]:
    """Every live synchronizer that is not a ``LocalSyncCache``'s own.

    Sorted by alias, then key, so the listing is stable.
    """
    internal_ids = {id(cache.synchronizer) for cache in LocalSyncCache.CACHES}
    syncs = [s for s in all_synchronizers() if id(s) not in internal_ids]
    return sorted(syncs, key=lambda s: (alias_name(s.cache_alias), s.cache_key))


def medium_description(alias: str) -> dict[str, Any]:
    """The backend, medium class and capabilities behind ``alias``."""
    medium = get_medium(alias)
    return {
        "alias": alias,
        "backend": _qualified_name(type(medium.cache)),
        "medium": type(medium).__name__,
        "capabilities": asdict(medium.capabilities),
        "checks": push.describe(alias),
    }


def local_cache_rows() -> list[dict[str, Any]]:
    """One JSON-ready dict per registered ``LocalSyncCache``.

    Built on :meth:`~syncache.local.LocalSyncCache.get_cache_information` (one read per
    alias, bypassing the epoch).
    """
    rows = []
    for info in LocalSyncCache.get_cache_information():
        instance: LocalSyncCache = info["instance"]
        stored = info["generation"]
        state = generation_state(stored, info["sync_gen"])
        rows.append(
            {
                "id": info["id"],
                "cache_key": instance.cache_key,
                "alias": alias_name(instance.cache_alias),
                "generation": None if stored is FAILED else stored,
                "generation_status": generation_status(stored),
                "sync_gen": info["sync_gen"],
                "current": state == "current",
                "state": state,
                "length": info["length"],
                "size": info["size"],
                "request_counter": info["request_counter"],
                "own_clear_counter": info["own_clear_counter"],
                "ext_clear_counter": info["ext_clear_counter"],
                "stale_clear_counter": info["stale_clear_counter"],
                "init_counter": info["init_counter"],
                "last_checked": info["last_checked"],
                "last_cleared": info["last_cleared"],
                "defined_at": instance.defined_at,
            }
        )
    return rows


def synchronizer_rows(syncs: Sequence[GenerationSynchronizer]) -> list[dict[str, Any]]:
    """One JSON-ready dict per synchronizer (one fresh read per alias)."""
    stored_values = fetch_generations(list(syncs), fresh=True) if syncs else []
    rows = []
    for sync, stored in zip(syncs, stored_values, strict=True):
        state = generation_state(stored, sync.sync_gen)
        rows.append(
            {
                "cache_key": sync.cache_key,
                "alias": alias_name(sync.cache_alias),
                "generation": None if stored is FAILED else stored,
                "generation_status": generation_status(stored),
                "sync_gen": sync.sync_gen,
                "current": state == "current",
                "state": state,
            }
        )
    return rows


def status_report() -> dict[str, Any]:
    """Everything ``manage.py syncache status`` shows, as JSON-ready data."""
    config = get_config()
    local = local_cache_rows()
    syncs = synchronizer_rows(listed_synchronizers())
    aliases = dict.fromkeys(
        [config.cache_alias, *(row["alias"] for row in local + syncs)]
    )
    return {
        "cache_alias": config.cache_alias,
        "key_prefix": config.key_prefix,
        "media": [medium_description(alias) for alias in aliases],
        "local_caches": local,
        "synchronizers": syncs,
    }


def _read_versions(keys_by_alias: dict[str, list[str]]) -> dict[tuple[str, str], Any]:
    """The stored values at the keys, one round trip per alias; no writes."""
    found: dict[tuple[str, str], Any] = {}
    for alias, keys in keys_by_alias.items():
        medium = get_medium(alias)
        values = medium.attempt("reading", keys[0], partial(medium.get_many, keys))
        for index, key in enumerate(keys):
            found[alias, key] = FAILED if isinstance(values, _Failed) else values[index]
    return found


def _groups() -> tuple[dict[tuple[str, str], dict[str, Any]], list[dict[str, Any]]]:
    """The enumerable groups by (alias, local key), and the others; no I/O."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    per_keywords: list[dict[str, Any]] = []
    for spec in list(_page_specs.values()):
        alias = alias_name(spec.cache_alias)
        if spec.needs_keywords:
            per_keywords.append(
                {
                    "views": [spec.view_name],
                    "group": _describe_group(spec.group),
                    "alias": alias,
                    "enumerable": False,
                    "local_key": None,
                    "version": None,
                    "version_status": "per keywords",
                }
            )
            continue
        local_key = spec.local_key({})
        row = rows.setdefault(
            (alias, local_key),
            {
                "views": [],
                "group": _describe_group(spec.group),
                "alias": alias,
                "enumerable": True,
                "local_key": local_key,
            },
        )
        row["views"].append(spec.view_name)
    return rows, per_keywords


def group_keys() -> set[tuple[str, str]]:
    """The (alias, local key) of every group :func:`group_rows` lists a
    version for; nothing is read from the cache."""
    return set(_groups()[0])


def group_rows() -> list[dict[str, Any]]:
    """One JSON-ready dict per group of the group-cached views of this process.

    A view cached against a tag, or against every change of some models,
    has one group and so one version, read here (``enumerable`` True). A
    view grouped by its keywords (``cache_page_against_model``, a group
    naming view arguments or a callable) has one version per set of
    keywords, which cannot be listed (``enumerable`` False, no version).
    Views sharing a tag share one row. Only the views whose module was
    imported in this process are known; ``Group`` objects made in code are
    not registered anywhere and are not listed.
    """
    rows, per_keywords = _groups()
    keys_by_alias: dict[str, list[str]] = {}
    for alias, local_key in rows:
        keys_by_alias.setdefault(alias, []).append(local_key)
    versions = _read_versions(keys_by_alias)
    for place, row in rows.items():
        version = versions[place]
        row["version"] = None if version is FAILED else version
        row["version_status"] = generation_status(version)
    ordered = sorted(rows.values(), key=lambda r: (r["alias"], r["views"][0]))
    return ordered + sorted(per_keywords, key=lambda r: (r["alias"], r["views"][0]))


def _describe_group(group: object) -> str:
    if isinstance(group, str):
        return f"tag {group!r}"
    if callable(group):
        return f"callable {getattr(group, '__qualname__', repr(group))}"
    if group is None:
        return "every view keyword"
    if not group:
        return "the whole view"
    if isinstance(group, dict):
        return "keywords " + ", ".join(f"{new}={old}" for new, old in group.items())
    return "keywords " + ", ".join(map(str, group))  # type: ignore[call-overload]


def lock_rows() -> list[dict[str, Any]]:
    """One JSON-ready dict per ``CacheMutex`` held by this process."""
    return [
        {
            "lock_key": held.lock_key,
            "key": repr(held.mutex.key),
            "alias": alias_name(held.cache_alias),
            "owner": held.owner,
            "fencing_token": held.fencing_token,
            "degraded": held.degraded,
            "thread": held.thread,
            "held_for": round(held.held_for, 3),
            "timeout": held.timeout,
        }
        for held in held_mutexes()
    ]


def process_report() -> dict[str, Any]:
    """:func:`status_report` with this process's groups and held locks.

    What the status page and the toolbar panel show, JSON-ready (the
    toolbar stores it as JSON).
    """
    report = status_report()
    report["pid"] = os.getpid()
    report["host"] = socket.gethostname()
    report["groups"] = group_rows()
    report["locks"] = lock_rows()
    known = {medium["alias"] for medium in report["media"]}
    for alias in dict.fromkeys(row["alias"] for row in report["groups"]):
        if alias not in known:
            report["media"].append(medium_description(alias))
    return report


# -- invalidations --------------------------------------------------------------


@dataclass(frozen=True)
class Invalidation:
    """One invalidation made on one cache alias."""

    #: ``"local"``, ``"synchronizer"`` or ``"group"``.
    kind: str
    #: The ``LocalSyncCache`` id, synchronizer key or group's local key.
    name: str
    alias: str
    #: The generation (or version) written; None when the backend failed.
    generation: Generation | None

    @property
    def failed(self) -> bool:
        """Whether the backend failed, so other processes were not told."""
        return self.generation is None

    @property
    def label(self) -> str:
        """``LocalSyncCache 'x'``, ``synchronizer 'k'`` or ``group 'k'``."""
        return f"{_KIND_LABELS[self.kind]} {self.name!r}"

    def describe(self) -> str:
        """``LocalSyncCache 'x' (cache 'default')``, for messages."""
        return f"{self.label} (cache {self.alias!r})"


_KIND_LABELS = {LOCAL: "LocalSyncCache", SYNCHRONIZER: "synchronizer", GROUP: "group"}


def clear_local_caches(instances: Iterable[LocalSyncCache]) -> list[Invalidation]:
    """``clear()`` one of the instances per cache alias.

    Every instance of the id, in every process, is emptied at its next
    check; the one cleared here is emptied at once.
    """
    by_alias: dict[str, LocalSyncCache] = {}
    for instance in instances:
        by_alias.setdefault(alias_name(instance.cache_alias), instance)
    done = []
    for alias, instance in by_alias.items():
        instance.clear()
        done.append(Invalidation(LOCAL, instance.id, alias, instance.sync_gen))
    return done


def bump_synchronizer_key(
    key: str, aliases: Iterable[str | None]
) -> list[Invalidation]:
    """``mark_updated()`` on a new holder of ``key``, once per alias.

    A new holder, not one of the existing ones: ``mark_updated`` makes its
    instance adopt the new generation, which would leave an existing holder
    of this process current without having reloaded its state.
    """
    done = []
    for cache_alias in dict.fromkeys(aliases):
        writer = GenerationSynchronizer(
            key, normalize_cache_key=False, cache_alias=cache_alias, lazy=True
        )
        writer.mark_updated()
        done.append(
            Invalidation(SYNCHRONIZER, key, alias_name(cache_alias), writer.sync_gen)
        )
    return done


def bump_group(local_key: str, alias: str) -> Invalidation:
    """Give a group a version never used before: its entries are invalid.

    The same write as :func:`syncache.groups.bump_local_prefix`, returning
    the version written.
    """
    medium = get_medium(alias)
    version = medium.attempt("bumping", local_key, lambda: medium.bump(local_key))
    return Invalidation(GROUP, local_key, alias, None if version is FAILED else version)
