"""``GenerationSynchronizer``: a generation id shared through the cache.

Compatible with Djblets' ``djblets.cache.synchronizer.GenerationSynchronizer``
(same constructor, attributes and methods), with its defects fixed:

* a bump writes a value never written before (an atomic ``incr`` from a
  random 62-bit seed, or a fresh random value where ``incr`` is not
  atomic); Djblets seeds from the wall clock, so two processes can seed the
  same value and a get-then-set increment can go back and forth;
* expiry is ``stored != held``; no clock is read anywhere;
* a missing key is expired for every holder and is re-seeded with ``add``;
* a backend error makes :meth:`~GenerationSynchronizer.is_expired` return
  True (Djblets returns False: stale data served during an outage).

Checking many synchronizers costs one round trip per cache alias
(:func:`fetch_generations`), and usually a single small read of a
per-alias epoch (see the backends page of the documentation).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.core.cache.backends.base import memcache_key_warnings

from syncache.conf import get_config
from syncache.keys import KeyInput, make_cache_key
from syncache.medium import FAILED, Generation, Medium, _Failed, get_medium
from syncache.push import Callback, Mark, listener_for, run_callbacks


class GenerationSynchronizer:
    """Keep a generation id in step across processes and servers.

    Create it with a stable key. A process that changed the shared state
    calls :meth:`mark_updated`; every other holder then finds
    :meth:`is_expired` True, recomputes its state, and calls
    :meth:`refresh`.

    Attributes:
        cache_key (str): The key of the generation in the cache (before
            Django adds its ``KEY_PREFIX`` and version).
        sync_gen: The generation this instance last fetched or wrote; None
            when unknown (the backend failed), which counts as expired.
        cache_alias (str | None): The cache alias, or None for
            ``SYNCACHE["CACHE_ALIAS"]``.
    """

    def __init__(
        self,
        cache_key: KeyInput,
        normalize_cache_key: bool = True,
        *,
        cache_alias: str | None = None,
        lazy: bool = False,
    ) -> None:
        """Create the synchronizer and fetch (or create) the generation.

        Args:
            cache_key: The key; a string or a sequence of strings.
            normalize_cache_key: Pass the key through
                :func:`syncache.keys.make_cache_key`, which namespaces it
                and makes it valid on every backend. With False the key is
                used as given and must already be such a key.
            cache_alias: The Django cache alias to synchronize through.
            lazy: Do not read the generation now; :attr:`sync_gen` stays
                None (expired) until :meth:`refresh` or :meth:`adopt`. For
                objects made while Django loads the apps, when no cache
                should be touched yet.

        Raises:
            ValueError: ``normalize_cache_key`` is False and ``cache_key`` is
                not a string that every backend can store.
        """
        if normalize_cache_key:
            cache_key = make_cache_key(cache_key)
        elif not isinstance(cache_key, str):
            raise ValueError(
                f"cache_key must be a string when normalize_cache_key=False, "
                f"not {type(cache_key).__name__}; pass normalize_cache_key="
                f"True to build a key from a sequence."
            )
        else:
            problems = list(memcache_key_warnings(cache_key))
            if problems:
                raise ValueError(
                    f"{' '.join(problems)} Pass normalize_cache_key=True to "
                    f"have syncache make a valid key from it."
                )
        self.cache_key: str = cache_key
        self.cache_alias = cache_alias
        self.sync_gen: Generation | None = None
        # Push mode: the listener's mark taken before the read that
        # established sync_gen (None: read again at the next check).
        # With the generation that read established: the mark vouches for
        # that generation only (another thread may adopt another meanwhile).
        self._push_mark: tuple[Mark, Generation | None] | None = None
        self._callbacks: list[Callback] = []
        self._notified: Generation | None = None
        _registry.add(self)
        if not lazy:
            self.refresh()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} key={self.cache_key!r} sync_gen={self.sync_gen!r}>"
        )

    @property
    def medium(self) -> Medium:
        """The coordination medium for this synchronizer's cache alias."""
        return get_medium(self.cache_alias)

    def is_expired(self) -> bool:
        """Return whether another process changed the state (one read).

        Returns:
            True when the stored generation differs from :attr:`sync_gen`,
            is missing, or cannot be read; False when this instance holds
            the latest generation.
        """
        listener = listener_for(self.cache_alias)
        mark: Mark | None = None
        if listener is not None:
            last = self._push_mark
            if (
                last is not None
                and last[1] == self.sync_gen
                and listener.quiet(last[0], self.cache_key)
            ):
                return False  # push mode: nothing changed, no round trip
            mark = listener.mark()
        medium = self.medium
        stored = medium.attempt(
            "checking for expiration in",
            self.cache_key,
            lambda: medium.get(self.cache_key),
        )
        held = self.sync_gen
        expired = is_expired_value(stored, held)
        self._push_mark = None if mark is None or expired else (mark, held)
        return expired

    def refresh(self) -> None:
        """Adopt the stored generation, creating it if it is missing.

        Call it after reloading the state. A backend error leaves
        :attr:`sync_gen` None (unknown), so the next check is expired.
        """
        self._seed(missing=False)

    def _seed(self, *, missing: bool) -> None:
        mark = self._mark()
        medium = self.medium
        stored = medium.attempt(
            "refreshing",
            self.cache_key,
            lambda: medium.seed(self.cache_key, missing=missing),
        )
        self._adopt_read(stored, mark)

    def _adopt_read(self, stored: Generation | _Failed, mark: Mark | None) -> None:
        """Adopt a generation just read or written, with the mark taken
        before that read or write."""
        if isinstance(stored, _Failed):
            self.sync_gen = None
            self._push_mark = None
        else:
            self.sync_gen = stored
            self._push_mark = None if mark is None else (mark, stored)

    def adopt(self, generation: Generation | None) -> None:
        """Adopt a generation read earlier (by :func:`fetch_generations`).

        Adopting the value read *before* reloading the state, rather than
        re-reading after, closes the window in which a bump made during the
        reload would be adopted with stale data. A missing generation is
        seeded, as in :meth:`refresh`.
        """
        if generation is FAILED:
            self.sync_gen = None
        elif generation is None:
            self._seed(missing=True)
            return
        else:
            self.sync_gen = generation
        # Read at an unknown moment: in push mode, read again next time.
        self._push_mark = None

    def clear(self) -> None:
        """Delete the stored generation: every holder becomes expired."""
        self._push_mark = None
        medium = self.medium
        medium.attempt(
            "clearing", self.cache_key, lambda: medium.invalidate(self.cache_key)
        )

    def mark_updated(self) -> None:
        """Record a change: every other holder becomes expired.

        This instance adopts the new generation, so it is not expired by its
        own change. On a backend error the change cannot be recorded; it is
        logged, and this instance's :attr:`sync_gen` becomes None.
        """
        mark = self._mark()
        medium = self.medium
        stored = medium.attempt(
            "marking as updated",
            self.cache_key,
            lambda: medium.bump(self.cache_key),
        )
        self._adopt_read(stored, mark)

    def _mark(self) -> Mark | None:
        listener = listener_for(self.cache_alias)
        return None if listener is None else listener.mark()

    def on_invalidate(self, callback: Callback) -> Callback:
        """Call ``callback(synchronizer)`` when another process changes it.

        In push mode (``SYNCACHE["PUSH"]``) the listener thread calls it as
        soon as a change of this key reaches the process, once per new
        generation, so a process can reload its state eagerly instead of
        at its next :meth:`is_expired`; the callback typically reloads and
        calls :meth:`refresh`. Without push nothing calls it: polling has
        no moment to call it from. Keep it short (it runs on the listener
        thread); errors are logged, never raised. Usable as a decorator.
        """
        self._callbacks.append(callback)
        return callback


#: Every live synchronizer of this process, for ``manage.py syncache``.
_registry: weakref.WeakSet[GenerationSynchronizer] = weakref.WeakSet()


def all_synchronizers() -> list[GenerationSynchronizer]:
    """Return every live synchronizer of this process."""
    return list(_registry)


def notify_expired(alias: str, keys: set[str] | None) -> None:
    """Call the ``on_invalidate`` callbacks of the expired synchronizers of
    cache ``alias`` (those with a key in ``keys``; None: all of them).

    Each is called once per stored generation: one read for all of them.
    """
    default = get_config().cache_alias
    syncs = [
        sync
        for sync in list(_registry)
        if sync._callbacks
        and (sync.cache_alias or default) == alias
        and (keys is None or sync.cache_key in keys)
    ]
    if not syncs:
        return
    for sync, stored in zip(syncs, fetch_generations(syncs, fresh=True), strict=True):
        if stored is FAILED or not is_expired_value(stored, sync.sync_gen):
            continue
        if stored is not None and stored == sync._notified:
            continue
        sync._notified = stored
        run_callbacks(sync._callbacks, sync)


def is_expired_value(stored: object, held: object) -> bool:
    """Return whether a holder of ``held`` is expired, given ``stored``."""
    return stored is None or stored is FAILED or stored != held


@dataclass(frozen=True)
class _Snapshot:
    """Generations read together, after the epoch they were read under.

    A writer bumps a generation and then writes a fresh epoch; a reader
    reads the epoch and then the generations. So while the epoch reads the
    same as in the snapshot, no bump has finished since the snapshot's
    generations were read, and they are still current: the check costs one
    small read whatever the number of synchronizers. A missing epoch is
    never trusted.
    """

    epoch: Generation
    values: dict[str, Generation | None]
    #: The key list of the latest read, and its values in that order: a
    #: caller that passes the same list object again gets them at once.
    keys: Sequence[str] = ()
    ordered: list[Generation | None] = dataclasses.field(default_factory=list)


class _Snapshots:
    """The latest snapshot per medium, shared by the threads of a process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_medium: dict[int, tuple[Medium, _Snapshot]] = {}

    def get(self, medium: Medium) -> _Snapshot | None:
        entry = self._by_medium.get(id(medium))
        return entry[1] if entry is not None and entry[0] is medium else None

    def put(self, medium: Medium, snapshot: _Snapshot) -> None:
        with self._lock:
            self._by_medium[id(medium)] = (medium, snapshot)

    def forget(self, medium: Medium) -> None:
        with self._lock:
            self._by_medium.pop(id(medium), None)


_snapshots = _Snapshots()


def _snapshot_lock_after_fork() -> None:
    # The push listener thread may have held it at fork.
    _snapshots._lock = threading.Lock()


os.register_at_fork(after_in_child=_snapshot_lock_after_fork)


def read_generations(
    medium: Medium, keys: Sequence[str], fresh: bool = False
) -> list[Generation | None]:
    """Read the generations at ``keys`` through one medium: one round trip.

    The steady state reads the epoch only. Passing the same ``keys`` list
    object on every call (as :func:`syncache.check_all` does) makes that
    path independent of the number of keys; the returned list may then be
    shared with the next call, so do not modify it.
    """
    if fresh:
        values = medium.attempt("reading", keys[0], lambda: medium.get_many(keys))
        return [FAILED] * len(keys) if isinstance(values, _Failed) else values
    snapshot = _snapshots.get(medium)
    if snapshot is not None:
        epoch = medium.attempt(
            "checking the epoch of",
            medium.epoch_key,
            lambda: medium.get(medium.epoch_key),
        )
        if epoch is FAILED:
            _snapshots.forget(medium)
            return [FAILED] * len(keys)
        if epoch is not None and epoch == snapshot.epoch:
            if keys is snapshot.keys:
                return snapshot.ordered
            if snapshot.values.keys() >= set(keys):
                ordered = list(map(snapshot.values.__getitem__, keys))
                _snapshots.put(
                    medium, dataclasses.replace(snapshot, keys=keys, ordered=ordered)
                )
                return ordered
    read = medium.attempt(
        "checking for expiration in",
        keys[0],
        lambda: medium.get_epoch_and_many(keys),
    )
    if isinstance(read, _Failed):
        _snapshots.forget(medium)
        return [FAILED] * len(keys)
    epoch, values = read
    if epoch is None:
        # Missing (never written, evicted or flushed): create it, so the next
        # check can take the cheap path.
        epoch = medium.attempt("seeding", medium.epoch_key, lambda: medium.seed_epoch())
        snapshot = None
    if epoch is None or epoch is FAILED or None in values:
        # A missing generation is about to be re-seeded with add, which
        # does not move the epoch: a snapshot holding None would outlive it.
        _snapshots.forget(medium)
    else:
        merged = dict(zip(keys, values, strict=True))
        if snapshot is not None and snapshot.epoch == epoch:
            merged = {**snapshot.values, **merged}
        _snapshots.put(medium, _Snapshot(epoch, merged, keys, values))
    return values


def fetch_generations(
    synchronizers: Iterable[GenerationSynchronizer], *, fresh: bool = False
) -> list[Generation | None]:
    """Read the stored generation of every synchronizer.

    One round trip per cache alias whatever the number of synchronizers,
    and in the steady state that round trip reads a single small key.

    Generations changed only by writing the key directly (not through
    syncache) are seen by :meth:`GenerationSynchronizer.is_expired` at
    once, but here only after the next change made through syncache.

    Args:
        synchronizers: The synchronizers to read for.
        fresh: Read every key itself, bypassing the epoch: for reports that
            must show what is stored, including direct writes.

    Returns:
        The stored generations in the order given; None where a key is
        missing, :data:`~syncache.medium.FAILED` where the backend failed.
    """
    syncs = synchronizers if isinstance(synchronizers, list) else list(synchronizers)
    by_alias: dict[str | None, list[int]] = {}
    for index, sync in enumerate(syncs):
        by_alias.setdefault(sync.cache_alias, []).append(index)
    if len(by_alias) == 1:
        [alias] = by_alias
        keys = [sync.cache_key for sync in syncs]
        return list(read_generations(get_medium(alias), keys, fresh))
    result: list[Generation | None] = [None] * len(syncs)
    for alias, indexes in by_alias.items():
        keys = [syncs[index].cache_key for index in indexes]
        values = read_generations(get_medium(alias), keys, fresh)
        for index, value in zip(indexes, values, strict=True):
            result[index] = value
    return result


def expired_many(synchronizers: Iterable[GenerationSynchronizer]) -> list[bool]:
    """Return, for each synchronizer, whether it is expired (batched).

    See :func:`fetch_generations` for the cost.
    """
    syncs = synchronizers if isinstance(synchronizers, list) else list(synchronizers)
    return [
        stored is None or stored is FAILED or stored != sync.sync_gen
        for sync, stored in zip(syncs, fetch_generations(syncs), strict=True)
    ]
