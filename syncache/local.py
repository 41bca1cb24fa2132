"""``LocalSyncCache``: a per-process dict that every process clears together.

Compatible with django-tools' ``LocalSyncCache``: a ``dict`` subclass with
an ``id``, a class-wide registry (``CACHES``, ``INIT_COUNTER``),
``check_state()`` called at request start, ``clear()`` that empties the dict
in every process, the counters and the two introspection functions.

Each instance holds a :class:`~syncache.synchronizer.GenerationSynchronizer`
on the key made from its id; instances sharing an id share the key, so they
clear together. Reads are plain ``dict`` reads. Writes are checked against
the stale-write guard below; that costs one context-variable read.

How the stale-write guard works (DESIGN.md promise 3). Every check and
every clear takes a serial number from one process-wide counter. A check
records its serial in the current context (thread, or asyncio task); a
clear records its serial on the instance. A write made in a context whose
last check is older than the instance's last clear may hold a value
computed from data read before that clear, so it marks the instance, and
the next check clears it once more. A value computed from data read before
an invalidation therefore never outlives the next check after it, even when
another thread of the same process cleared the dict in between.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
import pprint
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar, TypeVar

from django.apps import apps
from django.db import transaction

from syncache.conf import get_config
from syncache.keys import make_cache_key
from syncache.medium import FAILED, get_medium
from syncache.push import Callback, Mark, listener_for, run_callbacks
from syncache.synchronizer import (
    GenerationSynchronizer,
    fetch_generations,
    read_generations,
)

F = TypeVar("F", bound=Callable[..., Any])

#: Serials of checks and clears, shared by every thread of the process.
_serials = itertools.count(1)

#: The serial of the latest :func:`check_all` in this context.
_checked_serial: contextvars.ContextVar[int] = contextvars.ContextVar(
    "syncache_checked_serial", default=0
)


def on_commit_once(func: Callable[[], object], using: str | None = None) -> None:
    """Run ``func`` when the transaction on ``using`` commits, once.

    Like ``transaction.on_commit`` (at once outside a transaction, never on
    rollback), but a callback equal to one already waiting for the same
    commit is not added again: a transaction that saves a thousand rows
    invalidates once.
    """
    connection = transaction.get_connection(using)
    if connection.in_atomic_block and any(
        entry[1] == func for entry in connection.run_on_commit
    ):
        return
    transaction.on_commit(func, using=using, robust=True)


class CacheIdError(ValueError, AssertionError):
    """A ``LocalSyncCache`` id is missing, invalid or already taken.

    Also an ``AssertionError``, which django-tools raised for the same
    mistakes, so code written against it keeps working.
    """


@dataclass(frozen=True)
class _Views:
    """The registry prepared for :func:`check_all`, rebuilt on changes."""

    syncs: list[GenerationSynchronizer]
    refs: list[weakref.ref[LocalSyncCache]]
    #: Per cache alias: the keys (one list object, reused on every check)
    #: and the positions of their synchronizers in ``syncs``.
    groups: list[tuple[str | None, list[str], list[int]]]


class _Registry:
    """Every live ``LocalSyncCache``, held weakly, in creation order.

    ``check_all`` reads prepared lists (the synchronizers and weak
    references, rebuilt only when an instance is created or dropped), so a
    check touches no instance that is not expired.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        self._entries: dict[int, tuple[weakref.ref[LocalSyncCache], Any]] = {}
        self._views: _Views | None = None
        self._stale: dict[int, weakref.ref[LocalSyncCache]] = {}
        #: How many times :func:`check_all` checked every instance, and when
        #: it last did (``time.monotonic()``).
        self.check_count = 0
        self.last_check_at: float | None = None
        #: Push mode, per cache alias: the listener's mark taken before the
        #: last read of the generations.
        self.push_marks: dict[str | None, Mark] = {}

    def append(self, cache: LocalSyncCache) -> None:
        number = next(self._numbers)

        def forget(_: object, number: int = number) -> None:
            self._entries.pop(number, None)
            self._stale.pop(number, None)
            self._views = None

        with self._lock:
            cache._registry_number = number
            self._entries[number] = (weakref.ref(cache, forget), cache._sync)
            self._views = None

    def remove(self, cache: LocalSyncCache) -> None:
        with self._lock:
            self._entries.pop(cache._registry_number, None)
            self._stale.pop(cache._registry_number, None)
            self._views = None

    def clear(self) -> None:
        """Forget every instance (they stay usable, but are not checked)."""
        with self._lock:
            self._entries.clear()
            self._stale.clear()
            self._views = None

    def views(self) -> _Views:
        views = self._views
        if views is None:
            with self._lock:
                entries = list(self._entries.values())
                syncs = [sync for _, sync in entries]
                by_alias: dict[str | None, list[int]] = {}
                for index, sync in enumerate(syncs):
                    by_alias.setdefault(sync.cache_alias, []).append(index)
                views = self._views = _Views(
                    syncs=syncs,
                    refs=[ref for ref, _ in entries],
                    groups=[
                        (alias, [syncs[i].cache_key for i in indexes], indexes)
                        for alias, indexes in by_alias.items()
                    ],
                )
        return views

    def mark_stale(self, cache: LocalSyncCache) -> None:
        self._stale[cache._registry_number] = weakref.ref(cache)

    def pop_stale(self) -> list[LocalSyncCache]:
        if not self._stale:
            return []
        with self._lock:
            refs, self._stale = list(self._stale.values()), {}
        return [cache for ref in refs if (cache := ref()) is not None]

    def __iter__(self) -> Iterator[LocalSyncCache]:
        return iter([c for ref in self.views().refs if (c := ref()) is not None])

    def __len__(self) -> int:
        return len(list(iter(self)))

    def __getitem__(self, index: int) -> LocalSyncCache:
        return list(iter(self))[index]

    def __repr__(self) -> str:
        return f"<LocalSyncCache registry: {[c.id for c in self]!r}>"


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _caller() -> str:
    """Where the code that created an instance is, for error messages."""
    for frame in reversed(traceback.extract_stack()):
        if os.path.dirname(os.path.abspath(frame.filename)) != _PACKAGE_DIR:
            return f"{frame.filename}:{frame.lineno}"
    return "(unknown)"


class LocalSyncCache(dict):  # type: ignore[type-arg]
    """A dict in this process that ``clear()`` empties in every process.

    Args:
        id: A non-empty string naming the cache, the same in every process.
        unique_ids: Refuse a second live instance with the same id
            (default). With False, instances may share an id and clear
            together.
        cache_alias: The Django cache to synchronize through; default
            ``SYNCACHE["CACHE_ALIAS"]``.

    Raises:
        CacheIdError: ``id`` is missing, not a non-empty string, or already
            used by a live instance while ``unique_ids`` is True.

    Attributes:
        CACHES: Every live instance of this process (held weakly).
        INIT_COUNTER: How many instances were created per id.
        request_counter: How many checks this instance went through.
        own_clear_counter: How many times ``clear()`` was called on it.
        ext_clear_counter: How many times a check emptied it because
            another instance (in any process) cleared the same id.
        stale_clear_counter: How many times a check emptied it once more
            because of a write made with data from before a clear.
    """

    CACHES: ClassVar[_Registry] = _Registry()
    INIT_COUNTER: ClassVar[dict[str, int]] = {}
    id: str
    defined_at: str

    def __init__(
        self,
        id: str | None = None,
        unique_ids: bool = True,
        *,
        cache_alias: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(id, str) or not id:
            raise CacheIdError(
                f"LocalSyncCache needs an id: a non-empty string that names "
                f"the cache the same way in every process, for example "
                f'LocalSyncCache(id="PageTree_absolute_url"); got {id!r}.'
            )
        defined_at = _caller()
        if unique_ids:
            for other in self.CACHES:
                if other.id == id:
                    raise CacheIdError(
                        f"LocalSyncCache id {id!r} is already used by the "
                        f"instance created at {other.defined_at}. Give this "
                        f"one (at {defined_at}) another id, or pass "
                        f"unique_ids=False to both to share the id and "
                        f"clear together."
                    )
        self.id = id
        self.defined_at = defined_at
        self.cache_alias = cache_alias
        # While Django loads the apps (a cache declared in a model class
        # body) no cache may be touched: the first check reads it instead.
        # The "local" namespace: no collision with the key of a
        # GenerationSynchronizer or of any other feature.
        try:
            key = make_cache_key(id, namespace="local")
        except ValueError as error:
            raise CacheIdError(
                f"LocalSyncCache id {id!r} is unusable: {error}"
            ) from None
        self._sync = GenerationSynchronizer(
            key, normalize_cache_key=False, cache_alias=cache_alias, lazy=True
        )
        if apps.ready:
            self._sync.refresh()
        self._known = self._sync.sync_gen is not None
        self._cleared_serial = 0
        self._registry_number = -1
        self._check_base = self.CACHES.check_count
        self._direct_checks = 0
        self._direct_checked_at: float | None = None
        self.own_clear_counter = 0
        self.ext_clear_counter = 0
        self.stale_clear_counter = 0
        self.last_cleared: float | None = None
        self._callbacks: list[Callback] = []
        self.INIT_COUNTER[id] = self.INIT_COUNTER.get(id, 0) + 1
        self.CACHES.append(self)

    __hash__ = None

    def __repr__(self) -> str:
        return f"<LocalSyncCache {self.id!r} {dict.__repr__(self)}>"

    # -- writes (the stale-write guard) -------------------------------------

    def _guard_write(self) -> None:
        if _checked_serial.get() < self._cleared_serial:
            self.CACHES.mark_stale(self)

    def __setitem__(self, key: Any, value: Any) -> None:
        if _checked_serial.get() < self._cleared_serial:
            self.CACHES.mark_stale(self)
        dict.__setitem__(self, key, value)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._guard_write()
        return dict.setdefault(self, key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._guard_write()
        dict.update(self, *args, **kwargs)

    def __ior__(self, other: Any) -> LocalSyncCache:  # type: ignore[misc]
        self._guard_write()
        dict.update(self, other)
        return self

    # -- state ----------------------------------------------------------------

    @property
    def synchronizer(self) -> GenerationSynchronizer:
        """The synchronizer on this instance's generation key."""
        return self._sync

    @property
    def cache_key(self) -> str:
        """The generation key in the shared cache."""
        return self._sync.cache_key

    @property
    def sync_gen(self) -> Any:
        """The generation this instance's contents belong to."""
        return self._sync.sync_gen

    @property
    def request_counter(self) -> int:
        """How many checks this instance went through."""
        return self.CACHES.check_count - self._check_base + self._direct_checks

    @property
    def last_checked(self) -> float | None:
        """When it was last checked (``time.monotonic()``), None if never."""
        registry = self.CACHES
        by_registry = (
            registry.last_check_at if registry.check_count > self._check_base else None
        )
        moments = [m for m in (by_registry, self._direct_checked_at) if m is not None]
        return max(moments) if moments else None

    def _empty(self, serial: int) -> None:
        dict.clear(self)
        # An older check finishing late must not lower it.
        self._cleared_serial = max(self._cleared_serial, serial)
        self.last_cleared = time.monotonic()

    def _apply(self, stored: Any, serial: int) -> None:
        """Act on the generation a check read (at ``serial``)."""
        if stored is FAILED or stored is None or stored != self._sync.sync_gen:
            if not self._known and not dict.__len__(self) and stored is not FAILED:
                # The first look at the shared generation: nothing to drop.
                self._sync.adopt(stored)
                self._known = self._sync.sync_gen is not None
                return
            self.ext_clear_counter += 1
            self._empty(serial)
            self._sync.adopt(stored)
            self._known = self._sync.sync_gen is not None
            if self._callbacks:
                run_callbacks(self._callbacks, self)

    def _clear_stale(self, serial: int) -> None:
        self.stale_clear_counter += 1
        self._empty(serial)

    def check_state(self) -> None:
        """Empty this dict if another instance cleared its id since.

        One read of the shared cache. The middleware does this for every
        instance at once with :func:`check_all`; call it directly only for
        a cache used outside requests.
        """
        serial = next(_serials)
        self._direct_checks += 1
        medium = get_medium(self.cache_alias)
        stored = medium.attempt(
            "checking", self.cache_key, lambda: medium.get(self.cache_key)
        )
        self._apply(stored, serial)
        if self.CACHES._stale.pop(self._registry_number, None) is not None:
            self._clear_stale(serial)
        self._direct_checked_at = time.monotonic()

    def clear(self, using: str | None = None) -> None:
        """Empty this dict now and in every process, at their next check.

        Inside ``transaction.atomic`` (on database ``using``), the dict is
        emptied and the generation bumped once more when the transaction
        commits: until then, other connections read the old rows and may
        have refilled caches with them.
        """
        self.own_clear_counter += 1
        serial = next(_serials)
        self._empty(serial)
        self._sync.mark_updated()
        self._known = True
        if transaction.get_connection(using).in_atomic_block:
            on_commit_once(self._clear_after_commit, using)
        else:
            # Whatever this context reads from now on is newer than the clear.
            _checked_serial.set(serial)

    def mark_updated(self) -> None:
        """The same as :meth:`clear` (Djblets' name for it)."""
        self.clear()

    def on_invalidate(self, callback: Callback) -> Callback:
        """Call ``callback(cache)`` after a check emptied this dict because
        its id was cleared by another instance or process.

        With push (``SYNCACHE["PUSH"]``) that happens on the listener thread
        as soon as the change arrives, so a process can refill the dict
        eagerly (a registry, a routing table) instead of at its next use;
        without push, at the next check (the middleware's, or
        :func:`check_all`). Not called for this instance's own
        :meth:`clear`. Keep it short; errors are logged, never raised.
        Usable as a decorator.
        """
        self._callbacks.append(callback)
        return callback

    def clear_locally(self) -> None:
        """Empty this process's dict only, without telling other processes.

        Values written afterwards by a request that checked before are
        dropped again at the next check (the stale-write guard). Model
        hooks call this when a row changes, before the shared bump that
        waits for the commit: a read later in the same transaction must not
        keep an uncommitted row cached if the transaction rolls back.
        """
        self._empty(next(_serials))

    def _clear_after_commit(self) -> None:
        self._empty(next(_serials))
        self._sync.mark_updated()

    # -- introspection ----------------------------------------------------------

    @staticmethod
    def get_cache_information() -> list[dict[str, Any]]:
        """Describe every live instance: one dict each (one read per alias).

        Keys: ``instance``, ``id``, ``length``, ``size`` (bytes of the dict
        itself, ``sys.getsizeof``), ``generation`` (in the shared cache:
        None when missing, :data:`~syncache.medium.FAILED` when
        unreadable), ``sync_gen`` (held here), ``cleared`` (``clear()``
        was called here), the counters, ``init_counter``, and
        ``last_checked`` / ``last_cleared`` as seconds ago (None when
        never).
        """
        instances = list(LocalSyncCache.CACHES)
        stored = fetch_generations([i._sync for i in instances], fresh=True)
        now = time.monotonic()

        def ago(moment: float | None) -> float | None:
            return None if moment is None else round(now - moment, 3)

        return [
            {
                "instance": instance,
                "id": instance.id,
                "length": len(instance),
                "size": sys.getsizeof(instance),
                "generation": generation,
                "sync_gen": instance.sync_gen,
                "cleared": instance.own_clear_counter > 0,
                "request_counter": instance.request_counter,
                "own_clear_counter": instance.own_clear_counter,
                "ext_clear_counter": instance.ext_clear_counter,
                "stale_clear_counter": instance.stale_clear_counter,
                "init_counter": LocalSyncCache.INIT_COUNTER.get(instance.id, 0),
                "last_checked": ago(instance.last_checked),
                "last_cleared": ago(instance.last_cleared),
            }
            for instance, generation in zip(instances, stored, strict=True)
        ]

    @staticmethod
    def pformat_cache_information() -> str:
        """:meth:`get_cache_information` as text, as django-tools printed it."""
        lines = []
        for item in LocalSyncCache.get_cache_information():
            lines.append(" -" * 40)
            for key, value in item.items():
                shown = value if key == "id" else pprint.saferepr(value)
                lines.append(f"{key:>22}: {shown}")
        return "\n".join(lines)


def _registry_lock_after_fork() -> None:
    # The push listener thread may have held it at fork.
    LocalSyncCache.CACHES._lock = threading.Lock()


os.register_at_fork(after_in_child=_registry_lock_after_fork)

_sync_gen = attrgetter("sync_gen")

_last_check = (float("-inf"), 0)


def check_all(*, force: bool = False) -> None:
    """Check every registered ``LocalSyncCache``: one round trip per alias.

    Empties the instances whose id was cleared elsewhere and those marked
    by the stale-write guard. With ``SYNCACHE["CHECK_INTERVAL"]`` above 0,
    a call within that many seconds of the previous one in this process
    does nothing (unless ``force``): fewer reads, staler data.
    """
    global _last_check
    interval = get_config().check_interval
    if interval and not force:
        checked_at, serial = _last_check
        if time.monotonic() - checked_at < interval:
            _checked_serial.set(serial)
            return
    serial = next(_serials)
    registry = LocalSyncCache.CACHES
    views = registry.views()
    for alias, keys, indexes in views.groups:
        listener = listener_for(alias)
        if listener is not None:
            last = registry.push_marks.get(alias)
            if not force and last is not None and listener.quiet(last):
                continue  # push mode: nothing changed, no round trip
            mark = listener.mark()
        stored = read_generations(get_medium(alias), keys)
        syncs = (
            views.syncs if len(views.groups) == 1 else [views.syncs[i] for i in indexes]
        )
        held = list(map(_sync_gen, syncs))
        # The common case, nothing changed, in one C-level comparison.
        if stored != held or None in stored:
            for position, (value, sync) in enumerate(zip(stored, syncs, strict=True)):
                if value is None or value is FAILED or value != sync.sync_gen:
                    cache = views.refs[indexes[position]]()
                    if cache is not None:
                        cache._apply(value, serial)
        if listener is not None:
            # Only once what was read is applied may other checks skip.
            if any(value is FAILED for value in stored):
                registry.push_marks.pop(alias, None)
            else:
                registry.push_marks[alias] = mark
    registry.check_count += 1
    for cache in registry.pop_stale():
        cache._clear_stale(serial)
    now = registry.last_check_at = time.monotonic()
    _last_check = (now, serial)
    _checked_serial.set(serial)


class checked(contextlib.ContextDecorator):
    """Check every ``LocalSyncCache`` on entry: for code outside requests.

    Use it around a management command's work or a task::

        with syncache.checked():
            ...

        @syncache.checked()
        def my_task(): ...

    For Celery, connect :func:`check_all` to ``task_prerun`` instead::

        from celery.signals import task_prerun
        task_prerun.connect(lambda **kwargs: syncache.check_all(), weak=False)
    """

    def __enter__(self) -> checked:
        check_all(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def caches_by_id(ids: Iterable[str]) -> dict[str, list[LocalSyncCache]]:
    """Return the live instances for each id (for the management command)."""
    wanted = set(ids)
    found: dict[str, list[LocalSyncCache]] = {}
    for cache in LocalSyncCache.CACHES:
        if cache.id in wanted:
            found.setdefault(cache.id, []).append(cache)
    return found
