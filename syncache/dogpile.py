"""One creator per expiry: dogpile's lock, across processes.

A value that is expensive to compute expires, and many requests want it at
once. With :class:`Lock`, exactly one of them recomputes it while the others
return the previous value at once; only when there is no value at all do
they wait, and then for the one creator rather than computing it each.

The names and semantics are dogpile.cache's (``dogpile.Lock``,
``dogpile.NeedRegenerationException``, ``dogpile.util.NameRegistry``,
``dogpile.util.ReadWriteMutex``), so switching is an import change, with
two deliberate differences:

* ``expiretime=None`` and any negative ``expiretime`` both mean "never
  expires". (dogpile documents ``-1`` as "never expires" in its regions but
  its ``Lock`` compares ``now - created > -1``: always expired.)
* creation times are ``time.monotonic()`` readings, not ``time.time()``:
  the wall clock jumps (NTP, manual changes) and differs between servers.

Across processes, :class:`CacheMutex` is a lock on the Django cache, and
:func:`get_or_create` (or the :func:`cache_on_arguments` decorator) wires
both together: the value lives in the cache with a separate "fresh" marker
key that expires after ``expiretime``, so freshness is decided by the
cache's own expiry and no timestamp is ever compared between processes.
Invalidations write fresh random tokens that the creator read before it
ran and stored with its value, so a value computed before an
invalidation is never taken for one computed after it.
DESIGN.md promises 3 (no stale write after an invalidation), 7 (locks
exclude) and 8 (one creator per expiry).
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import pickle
import random
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from syncache.conf import get_config
from syncache.keys import KeyInput, make_cache_key
from syncache.medium import FAILED, Medium, _Failed, get_medium, new_generation

logger = logging.getLogger("syncache")

T = TypeVar("T")
V = TypeVar("V")

#: Seconds a :class:`CacheMutex` lasts when its holder never releases it.
DEFAULT_LOCK_TIMEOUT = 30.0
#: Seconds :func:`get_or_create` keeps a value after it stopped being fresh,
#: to serve it while one process recomputes it.
DEFAULT_STALE_TTL = 300.0
#: The longest lock timeout (30 days). Longer leases are never meant, and
#: memcached cannot store them reliably: Django sends a timeout over 30 days
#: as a Unix time, which memcached reads as a signed 32-bit number (2038).
MAX_LOCK_TIMEOUT = 30 * 24 * 3600.0
#: The key namespace of :func:`get_or_create` (see
#: :func:`syncache.keys.make_cache_key`): its keys never collide with a
#: synchronizer's, a group's or a spin lock's of the same name.
NAMESPACE = "dogpile"

#: Suffixes of the keys derived from a user key. ``!`` never appears in a key
#: made by :func:`syncache.keys.make_cache_key`, so none can collide with
#: another user key.
LOCK_SUFFIX = "!lock"
FENCE_SUFFIX = "!fence"
FRESH_SUFFIX = "!fresh"
#: Tokens of a :func:`get_or_create` value: every invalidation writes a new
#: one at ``GEN_SUFFIX``, a hard one also at ``HARD_SUFFIX``.
GEN_SUFFIX = "!gen"
HARD_SUFFIX = "!hard"

#: Exponential backoff of a waiting :class:`CacheMutex`: first and longest
#: pause, in seconds, each with up to half of it as random jitter.
BACKOFF_START = 0.002
BACKOFF_CAP = 0.1


class NeedRegenerationException(Exception):
    """Raised by a ``value_and_created_fn``: there is no value yet."""


class LockError(Exception):
    """Base class of the lock errors of this module."""


class LockNotSupported(LockError, NotImplementedError):
    """The cache backend cannot hold a cross-process lock (file, dummy)."""


class LockNotOwned(LockError):
    """A lock was released or extended by someone who does not hold it."""


class UnpicklableValue(LockError, TypeError):
    """A created value cannot be stored in the cache; the message names the key."""


class Mutex(Protocol):
    """What :class:`Lock` needs of a mutex (``threading.Lock`` fits)."""

    def acquire(self, wait: bool = ...) -> bool: ...

    def release(self) -> Any: ...


class Lock(Generic[V]):
    """Dogpile lock: one creator regenerates, the others use what there is.

    On entering, ``value_and_created_fn()`` returns ``(value,
    createdtime)``, or raises :class:`NeedRegenerationException` when there
    is no value. Then:

    * the value is fresh: it is returned; the mutex is never touched;
    * the value is stale and the mutex is busy (someone else is creating):
      the stale value is returned at once;
    * the value is stale and this caller wins the mutex: it runs
      ``creator()`` and returns the new value; with an ``async_creator``
      it instead calls ``async_creator(mutex)``, which now owns the mutex
      and must release it, and returns the stale value at once;
    * there is no value: the caller blocks on the mutex, then asks
      ``value_and_created_fn()`` again, and runs the creator only if there
      is still no fresh value (another caller may have just made it).

    The mutex is released whatever the creator does; an exception from the
    creator reaches the caller that ran it.

    Args:
        mutex: Any object with ``acquire(wait=True) -> bool`` and
            ``release()``: a ``threading.Lock``, a :class:`CacheMutex`...
        creator: Returns ``(value, createdtime)``.
        value_and_created_fn: Returns ``(value, createdtime)`` or raises
            :class:`NeedRegenerationException`.
        expiretime: Seconds a value stays fresh after ``createdtime``.
            ``None`` or a negative number: never expires (only a missing
            value is created). ``0``: always stale.
        async_creator: Called with the mutex instead of ``creator`` when a
            stale value exists; it must release the mutex when done.

    ``createdtime`` is a ``time.monotonic()`` reading of this process
    (``math.inf``: fresh for ever; ``-math.inf``: stale).
    """

    def __init__(
        self,
        mutex: Mutex,
        creator: Callable[[], tuple[V, float]],
        value_and_created_fn: Callable[[], tuple[V, float]],
        expiretime: float | None,
        async_creator: Callable[[Mutex], object] | None = None,
    ) -> None:
        self.mutex = mutex
        self.creator = creator
        self.value_and_created_fn = value_and_created_fn
        self.expiretime = expiretime
        self.async_creator = async_creator

    def __enter__(self) -> V:
        return self._enter()

    def __exit__(self, *exc_info: object) -> None:
        return None

    def _is_expired(self, createdtime: float) -> bool:
        if self.expiretime is None or self.expiretime < 0:
            return False
        return time.monotonic() - createdtime > self.expiretime

    def _enter(self) -> V:
        try:
            value, createdtime = self.value_and_created_fn()
        except NeedRegenerationException:
            if not self.mutex.acquire(True):
                raise LockError(f"Could not acquire {self.mutex!r}.") from None
            return self._create_holding_mutex(None)
        if not self._is_expired(createdtime):
            return value
        if not self.mutex.acquire(False):
            return value
        return self._create_holding_mutex((value,))

    def _create_holding_mutex(self, stale: tuple[V] | None) -> V:
        handed_off = False
        try:
            if stale is None:
                try:
                    value, createdtime = self.value_and_created_fn()
                except NeedRegenerationException:
                    pass
                else:
                    if not self._is_expired(createdtime):
                        return value
                    stale = (value,)
            if stale is not None and self.async_creator is not None:
                self.async_creator(self.mutex)
                handed_off = True
                return stale[0]
            created, _ = self.creator()
            return created
        finally:
            if not handed_off:
                self.mutex.release()


class NameRegistry(Generic[T]):
    """One object per identifier, for as long as someone holds it.

    ``get(identifier, *args, **kwargs)`` returns the object already made
    for ``identifier`` if it is still strongly referenced somewhere, else
    ``creator(identifier, *args, **kwargs)``. Thread-safe: concurrent
    callers with one identifier get one object. The objects must support
    weak references.
    """

    def __init__(self, creator: Callable[..., T]) -> None:
        self.creator = creator
        self._values: weakref.WeakValueDictionary[Hashable, Any] = (
            weakref.WeakValueDictionary()
        )
        self._mutex = threading.RLock()

    def get(self, identifier: Hashable, *args: Any, **kwargs: Any) -> T:
        """Return the object for ``identifier``, creating it if needed."""
        value: T | None = self._values.get(identifier)
        if value is not None:
            return value
        with self._mutex:
            value = self._values.get(identifier)
            if value is None:
                value = self.creator(identifier, *args, **kwargs)
                self._values[identifier] = value
            return value


class ReadWriteMutex:
    """Many readers or one writer, in one process.

    A writer waits for the readers in progress and blocks new ones;
    releasing a lock one does not hold raises :class:`LockError`.
    """

    def __init__(self) -> None:
        self._readers = 0
        self._writer: threading.Thread | None = None
        self._condition = threading.Condition(threading.Lock())

    def acquire_read_lock(self, wait: bool = True) -> bool:
        """Take a read lock; with ``wait=False`` give up if a writer has it."""
        with self._condition:
            while self._writer is not None:
                if not wait:
                    return False
                self._condition.wait()
            self._readers += 1
            return True

    def release_read_lock(self) -> None:
        """Release a read lock."""
        with self._condition:
            if self._readers == 0:
                raise LockError("release_read_lock() without a read lock held.")
            self._readers -= 1
            if self._readers == 0:
                self._condition.notify_all()

    def acquire_write_lock(self, wait: bool = True) -> bool:
        """Take the write lock; with ``wait=False`` give up if anyone holds
        a lock."""
        with self._condition:
            while self._writer is not None:
                if not wait:
                    return False
                self._condition.wait()
            if self._readers and not wait:
                return False
            self._writer = threading.current_thread()
            while self._readers:
                self._condition.wait()
            return True

    def release_write_lock(self) -> None:
        """Release the write lock, from the thread that took it."""
        with self._condition:
            if self._writer is not threading.current_thread():
                raise LockError(
                    "release_write_lock() by a thread that does not hold it."
                )
            self._writer = None
            self._condition.notify_all()


#: The longest pause of a waiting :class:`CacheMutex` where a release wakes
#: waiters at once (Redis): it only bounds how late an expired lock is seen.
SIGNALLED_BACKOFF_CAP = 1.0
#: Where a release wakes waiters, the short polls before waiting for it.
SHORT_POLLS = 2


def backoff_cap(medium: Medium) -> float:
    """The longest pause between two tries of a waiting :class:`CacheMutex`."""
    return SIGNALLED_BACKOFF_CAP if medium.lock_signals else BACKOFF_CAP


def backoff_pause(medium: Medium, tries: int, cap: float) -> float:
    """Seconds a waiter pauses after its ``tries``-th failed try (1, 2...).

    Exponential from :data:`BACKOFF_START`, with up to half of it off at
    random (waiters that started together do not retry together), at most
    ``cap``. Where a release wakes a waiter at once (Redis), a few short
    polls catch a lock held for a moment, then the waiter waits the whole
    ``cap``: the release ends that wait, so a long one costs nothing.
    """
    if medium.lock_signals and tries > SHORT_POLLS:
        return cap
    delay = BACKOFF_START * 2.0 ** min(tries - 1, 30)
    return min(delay / 2 + random.uniform(0, delay / 2), cap)


def wait_for_release(medium: Medium, lock_key: str, seconds: float) -> bool:
    """Wait at most ``seconds`` for the lock at ``lock_key`` to be released.

    On Redis the release wakes one waiter at once; elsewhere this sleeps
    (:meth:`~syncache.medium.Medium.lock_wait`). A backend error is logged
    and ends the wait: the next try meets the same outage and handles it.

    Returns:
        Whether a release woke this waiter before ``seconds`` had passed.
    """
    woken = medium.attempt(
        "waiting for lock",
        lock_key,
        functools.partial(medium.lock_wait, lock_key, max(0.0, seconds)),
    )
    if isinstance(woken, _Failed):
        # Never a hot loop: without a signal, pause as other backends do.
        time.sleep(max(0.0, seconds))
        return False
    return woken is True


def check_lock_timeout(what: str, seconds: object) -> float:
    """Return ``seconds`` as a float if it is a lock lifetime every backend
    can store: more than 0, at most :data:`MAX_LOCK_TIMEOUT`.

    Raises:
        ValueError: it is not (``what`` names it in the message).
    """
    value = (
        float(seconds)
        if isinstance(seconds, numbers.Real) and not isinstance(seconds, bool)
        else math.nan
    )
    if not 0 < value <= MAX_LOCK_TIMEOUT:
        raise ValueError(
            f"{what} must be a number of seconds > 0 and at most "
            f"{MAX_LOCK_TIMEOUT:.0f} (30 days), not {seconds!r}."
        )
    return value


class CacheMutex:
    """A mutex shared by every process that uses the same Django cache.

    Acquiring stores a random owner token at the lock key with an atomic
    ``add`` and an expiry of ``timeout`` seconds, so a holder that crashed
    blocks the others for at most that long. Releasing and extending
    compare the token and act in one atomic step (a Lua script on Redis,
    ``gets``/``cas`` on memcached, a conditional statement on the database
    cache), so only the owner can. Each acquisition also increments a
    fencing counter, available as :attr:`fencing_token`: it increases with
    every acquisition, so a resource can refuse a holder whose lock has
    since expired and been taken over (unless the cache evicted the
    counter, which memcached may).

    Threads of one process first take an in-process lock of the instance,
    so only one of them contends on the cache. Any thread may release (an
    ``async_creator`` does). One holder at a time per instance: it is not
    reentrant.

    Losing the lock (it expired while held, and perhaps another process
    took it) is reported by :meth:`release` and :meth:`extend`: they log a
    warning and return False.

    When the cache backend fails, :meth:`acquire` returns True holding the
    in-process lock only (:attr:`degraded` is then True): an outage is not
    an error (DESIGN.md promise 5). With ``SYNCACHE["FAILURE_POLICY"] =
    "raise"`` the error propagates instead.

    Args:
        key: Any key :func:`~syncache.keys.make_cache_key` accepts.
        timeout: Seconds the lock lasts unless released or extended, at
            most :data:`MAX_LOCK_TIMEOUT` (30 days). On memcached and the
            database cache, whole seconds plus one.
        cache_alias: Default: ``SYNCACHE["CACHE_ALIAS"]``.
        namespace: The key namespace (see
            :func:`~syncache.keys.make_cache_key`); :func:`get_or_create`
            locks in ``"dogpile"``. Default: none, as before.

    Raises:
        ValueError: ``timeout`` is not a number of seconds in (0, 30 days].
        LockNotSupported: (from :meth:`acquire`) the backend has no atomic
            ``add`` and compare-and-delete (file cache, unknown backends).
    """

    def __init__(
        self,
        key: KeyInput,
        timeout: float = DEFAULT_LOCK_TIMEOUT,
        *,
        cache_alias: str | None = None,
        namespace: str | None = None,
    ) -> None:
        base = make_cache_key(key, namespace=namespace)
        self.key = key
        self.lock_key = base + LOCK_SUFFIX
        self.fence_key = base + FENCE_SUFFIX
        self.timeout = check_lock_timeout("A lock timeout", timeout)
        self.cache_alias = cache_alias
        #: The fencing token of the current acquisition (None when not held,
        #: when degraded, or when the counter could not be written).
        self.fencing_token: int | None = None
        #: Held in this process only: the backend failed at acquisition.
        self.degraded = False
        self._local = threading.Lock()
        self._token: str | None = None
        self._orphan: str | None = None
        self._acquired_at = 0.0

    def __repr__(self) -> str:
        return f"<CacheMutex {self.lock_key!r} timeout={self.timeout:g}>"

    def __enter__(self) -> CacheMutex:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _medium(self) -> Medium:
        medium = get_medium(self.cache_alias)
        capabilities = medium.capabilities
        if not (capabilities.atomic_add and capabilities.compare_and_delete):
            cache = medium.cache
            raise LockNotSupported(
                f"CacheMutex({self.key!r}) needs an atomic add and a "
                f"compare-and-delete, which cache {medium.alias!r} "
                f"({type(cache).__module__}.{type(cache).__name__}) does not "
                f"have. Use Redis, memcached or the database cache."
            )
        return medium

    def acquire(self, wait: bool = True, timeout: float | None = None) -> bool:
        """Take the lock.

        Args:
            wait: Wait while another holder has it; False: try once.
            timeout: With ``wait``, give up after this many seconds in all
                (monotonic clock); None waits as long as it takes (at most
                the holder's lock timeout, then the lock expires).

        Returns:
            Whether the lock is now held.
        """
        medium = self._medium()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._acquire_local(wait, deadline):
            return False
        try:
            taken = self._acquire_shared(medium, wait, deadline)
        except BaseException:
            self._local.release()
            raise
        if not taken:
            self._local.release()
        return taken

    def _acquire_local(self, wait: bool, deadline: float | None) -> bool:
        if not wait:
            return self._local.acquire(False)
        if deadline is None:
            return self._local.acquire()
        return self._local.acquire(timeout=max(0.0, deadline - time.monotonic()))

    def _acquire_shared(
        self, medium: Medium, wait: bool, deadline: float | None
    ) -> bool:
        token = secrets.token_hex(16)
        tries = 0
        while True:
            # Take and fence in one step (one round trip on Redis).
            taken = medium.attempt(
                "acquiring lock",
                self.lock_key,
                lambda: medium.lock_take(
                    self.lock_key, token, self.timeout, fence_key=self.fence_key
                ),
            )
            if isinstance(taken, _Failed):
                # The take may have reached the cache with its reply lost:
                # release() deletes that lock too, if it is there.
                self._orphan = token
                self._hold(None, None)
                return True
            if taken.taken:
                self._hold(token, taken.fence)
                return True
            now = time.monotonic()
            if not wait or (deadline is not None and now >= deadline):
                return False
            tries += 1
            pause = backoff_pause(medium, tries, backoff_cap(medium))
            wait_for_release(
                medium,
                self.lock_key,
                pause if deadline is None else min(pause, deadline - now),
            )

    def _hold(self, token: str | None, fence: int | None) -> None:
        self._token = token
        self.degraded = token is None
        self.fencing_token = fence
        self._acquired_at = time.monotonic()
        _held.add(self)

    def _check_held(self, action: str) -> str | None:
        if self._token is None and not self.degraded:
            raise LockNotOwned(f"{action} of {self!r}, which is not held.")
        return self._token

    def _report_lost(self, action: str) -> None:
        logger.warning(
            "Lock %r was lost before %s, %.3f s after it was acquired (its "
            "timeout is %g s): another process may have taken it. Raise the "
            "lock timeout, or extend() the lock while working.",
            self.lock_key,
            action,
            time.monotonic() - self._acquired_at,
            self.timeout,
        )

    def release(self) -> bool:
        """Release the lock.

        Returns:
            True, or False when the lock had been lost (a warning is
            logged) or the backend failed (it expires by itself).

        Raises:
            LockNotOwned: the lock is not held through this instance.
        """
        token = self._check_held("release()")
        try:
            if token is None:
                orphan, self._orphan = self._orphan, None
                if orphan is not None:  # best effort: the backend may be back
                    medium = get_medium(self.cache_alias)
                    medium.attempt(
                        "releasing lock",
                        self.lock_key,
                        functools.partial(medium.lock_release, self.lock_key, orphan),
                    )
                return True
            medium = get_medium(self.cache_alias)
            released = medium.attempt(
                "releasing lock",
                self.lock_key,
                lambda: medium.lock_release(self.lock_key, token),
            )
            if released is FAILED:
                return False
            if not released:
                self._report_lost("release")
            return bool(released)
        finally:
            _held.discard(self)
            self._token = None
            self.degraded = False
            self.fencing_token = None
            self._local.release()

    def extend(self, timeout: float | None = None) -> bool:
        """Make the lock last ``timeout`` (default: its timeout) more seconds.

        Returns:
            True, or False when the lock had been lost (a warning is
            logged) or the backend failed.

        Raises:
            ValueError: ``timeout`` is not in (0, 30 days].
            LockNotOwned: the lock is not held through this instance.
        """
        if timeout is not None:
            check_lock_timeout("extend()'s timeout", timeout)
        token = self._check_held("extend()")
        if token is None:
            return True
        medium = get_medium(self.cache_alias)
        extended = medium.attempt(
            "extending lock",
            self.lock_key,
            lambda: medium.lock_extend(
                self.lock_key, token, self.timeout if timeout is None else timeout
            ),
        )
        if extended is FAILED:
            return False
        if not extended:
            self._report_lost("extend")
        return bool(extended)

    def locked(self) -> bool:
        """Whether any process holds the lock (this one, if the backend fails)."""
        medium = self._medium()
        held = medium.attempt(
            "checking lock", self.lock_key, lambda: medium.lock_held(self.lock_key)
        )
        return self._local.locked() if held is FAILED else bool(held)


@dataclass(frozen=True)
class HeldMutex:
    """A :class:`CacheMutex` held in this process, as :func:`held_mutexes` saw it."""

    mutex: CacheMutex
    #: The key of the lock in the cache.
    lock_key: str
    cache_alias: str | None
    #: The random owner token stored at the lock key; None when degraded.
    owner: str | None
    #: The fencing token of this acquisition (None: degraded, or not written).
    fencing_token: int | None
    #: Held in this process only: the backend failed at acquisition.
    degraded: bool
    #: The name of the thread that acquired it.
    thread: str
    #: Seconds since it was acquired (this process's monotonic clock).
    held_for: float
    #: The lock's timeout in seconds (an ``extend()`` restarts it).
    timeout: float


class _HeldMutexes:
    """The held :class:`CacheMutex` objects of this process, held weakly.

    A mutex is added when an acquisition succeeds, after its state is set,
    and removed first thing when it is released, before its state is reset;
    both under one lock, so a snapshot never sees half of either.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: weakref.WeakKeyDictionary[CacheMutex, str] = (
            weakref.WeakKeyDictionary()
        )

    def add(self, mutex: CacheMutex) -> None:
        with self._lock:
            self._held[mutex] = threading.current_thread().name

    def discard(self, mutex: CacheMutex) -> None:
        with self._lock:
            self._held.pop(mutex, None)

    def snapshot(self) -> list[HeldMutex]:
        now = time.monotonic()
        with self._lock:
            held = [
                HeldMutex(
                    mutex=mutex,
                    lock_key=mutex.lock_key,
                    cache_alias=mutex.cache_alias,
                    owner=mutex._token,
                    fencing_token=mutex.fencing_token,
                    degraded=mutex.degraded,
                    thread=thread,
                    held_for=now - mutex._acquired_at,
                    timeout=mutex.timeout,
                )
                for mutex, thread in list(self._held.items())
            ]
        return sorted(held, key=lambda h: (h.lock_key, h.thread))


_held = _HeldMutexes()


def held_mutexes() -> list[HeldMutex]:
    """Every :class:`CacheMutex` this process holds now, sorted by lock key.

    For the status page: what is held here, by which thread, with which
    owner and fencing tokens. Locks held by other processes are not listed
    (:meth:`CacheMutex.locked` tells whether anyone holds a given lock).
    """
    return _held.snapshot()


_mutexes: NameRegistry[CacheMutex] = NameRegistry(
    lambda identifier, key, timeout, alias: CacheMutex(
        key, timeout, cache_alias=alias, namespace=NAMESPACE
    )
)


@dataclass(frozen=True)
class _ValueKeys:
    """The keys of one :func:`get_or_create` value, read in one round trip.

    ``value`` holds ``(value, gen, hard)``: the tokens at ``gen`` and
    ``hard`` that the creator read *before* it ran. Every invalidation
    writes a new token at ``gen``, a hard one also at ``hard``; the value
    is usable (stale at least) while its ``hard`` token is the current one,
    and fresh while its ``gen`` token is too and the ``fresh`` marker has
    not expired. A creator that read the source before an invalidation
    read the old tokens before it too, so its value, however late it is
    stored, is never taken for a newer one. Tokens never repeat (random
    62-bit values), and a missing token matches no value.
    """

    value: str
    fresh: str
    gen: str
    hard: str

    @classmethod
    def of(cls, key: KeyInput) -> _ValueKeys:
        base = make_cache_key(key, namespace=NAMESPACE)
        return cls(base, base + FRESH_SUFFIX, base + GEN_SUFFIX, base + HARD_SUFFIX)

    @property
    def all(self) -> list[str]:
        return [self.value, self.fresh, self.gen, self.hard]


def _fetch(medium: Medium, keys: _ValueKeys) -> list[Any] | _Failed:
    return medium.attempt(
        "reading",
        keys.value,
        lambda: medium.get_many(keys.all, user_data=(keys.value,)),
    )


def _fetch_tokens(medium: Medium, keys: _ValueKeys) -> list[Any] | _Failed:
    """``[None, None, gen, hard]``: the tokens without the value."""
    found = medium.attempt(
        "reading", keys.gen, lambda: medium.get_many([keys.gen, keys.hard])
    )
    return found if isinstance(found, _Failed) else [None, None, *found]


def _judge(found: list[Any]) -> tuple[Any, float]:
    """``(value, createdtime)`` from what :func:`_fetch` read, or raise
    :class:`NeedRegenerationException` when there is no usable value."""
    stored, fresh, gen, hard = found
    if not (isinstance(stored, tuple) and len(stored) == 3):
        raise NeedRegenerationException
    value, value_gen, value_hard = stored
    if hard is None or value_hard != hard:
        raise NeedRegenerationException  # hard-invalidated since it was made
    is_fresh = fresh is not None and gen is not None and value_gen == gen
    return value, (math.inf if is_fresh else -math.inf)


def _read(medium: Medium, keys: _ValueKeys) -> tuple[Any, float]:
    found = _fetch(medium, keys)
    if not isinstance(found, list):
        raise NeedRegenerationException  # the backend failed: create it here
    return _judge(found)


def _tokens(
    medium: Medium, keys: _ValueKeys, found: list[Any]
) -> tuple[Any, Any] | None:
    """The ``(gen, hard)`` tokens a creator stores with its value, seeding
    the missing ones (with ``add``); None when the backend failed."""
    tokens = []
    for key, token in ((keys.gen, found[2]), (keys.hard, found[3])):
        if token is None:
            token = medium.attempt(
                "seeding", key, functools.partial(medium.seed, key, missing=True)
            )
            if isinstance(token, _Failed):
                return None
        tokens.append(token)
    return tokens[0], tokens[1]


def early_expiry(duration: float, beta: float, draw: float | None = None) -> float:
    """Seconds to take off a value's freshness: XFetch's early recomputation.

    XFetch (Vattani, Chierichetti and Lowenstein, "Optimal probabilistic
    cache stampede prevention", VLDB 2015) recomputes a value before it
    expires, the more likely the closer the expiry and the longer the value
    took to compute: ``duration * beta * -ln(U)`` seconds early, with ``U``
    uniform in (0, 1]. XFetch draws at every read and compares with the
    expiry time; here the draw is made once, when the value is stored, and
    shortens the fresh marker's timeout instead. The recomputation then
    starts at the same random point, with no timestamp read or compared and
    no extra round trip.

    Args:
        duration: Seconds the creator took (monotonic clock).
        beta: XFetch's parameter; 0 turns early recomputation off, 1 is the
            paper's default, more recomputes earlier.
        draw: ``-ln(U)``, an exponential variate; default: a fresh one.
    """
    if beta <= 0 or duration <= 0:
        return 0.0
    return duration * beta * (random.expovariate(1.0) if draw is None else draw)


def _store(
    medium: Medium,
    key: KeyInput,
    keys: _ValueKeys,
    value: Any,
    tokens: tuple[Any, Any],
    expiretime: float | None,
    stale_ttl: float,
    early: float = 0.0,
) -> None:
    value_key = keys.value
    wrapped = (value, *tokens)
    try:
        pickle.dumps(wrapped, pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        raise UnpicklableValue(
            f"The value created for key {key!r} ({type(value).__name__}) cannot "
            f"be pickled, so it cannot be stored in cache {medium.alias!r}: "
            f"{error}"
        ) from error
    if expiretime is None or expiretime < 0:
        value_timeout: float | None = None
        fresh_timeout: float | None = None
    else:
        value_timeout = expiretime + stale_ttl
        fresh_timeout = max(0.0, expiretime - early)
    # The value first: a reader that sees the new marker sees the new value.
    medium.attempt(
        "storing",
        value_key,
        lambda: medium.set_with_timeout(value_key, wrapped, value_timeout),
    )
    fresh_key = keys.fresh
    if fresh_timeout is None or fresh_timeout > 0:
        medium.attempt(
            "storing",
            fresh_key,
            lambda: medium.set_with_timeout(fresh_key, 1, fresh_timeout),
        )
    else:
        # Stale from the start (XFetch's gap ate all of expiretime): an
        # older marker must not make it fresh.
        medium.attempt("storing", fresh_key, lambda: medium.delete(fresh_key))


def _check_beta(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and 0 <= beta < math.inf):
        raise ValueError(
            f"beta must be a finite number >= 0 (0 turns early recomputation "
            f"off, 1 is XFetch's usual value), not {beta!r}."
        )


#: Where lock features were declared at import time, for the system check
#: that their cache can hold a lock (syncache.E004): what -> cache alias
#: (None: ``SYNCACHE["CACHE_ALIAS"]``).
lock_users: dict[str, str | None] = {}


def get_or_create(
    key: KeyInput,
    creator: Callable[[], T],
    expiretime: float | None,
    *,
    stale_ttl: float = DEFAULT_STALE_TTL,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    beta: float = 0.0,
    cache_alias: str | None = None,
) -> T:
    """Return the cached value of ``key``, with one creator per expiry.

    Stale-while-revalidate across processes: when the value is stale, one
    caller (in all processes) runs ``creator()`` under a
    :class:`CacheMutex` while the others return the stale value at once;
    when there is none, the others wait for it. The winner re-reads the
    value under the lock, so a value another process just stored is not
    created again.

    Freshness is kept by the cache itself: the value is stored for
    ``expiretime + stale_ttl`` seconds, and a marker key for
    ``expiretime`` seconds; a missing marker means stale. The value also
    carries the invalidation tokens its creator read before it ran (see
    :func:`invalidate`): a creator still running when the value is
    invalidated stores a value that is stale (or, after a hard
    invalidation, unusable) from the start, never one served as fresh.

    Args:
        key: Any key :func:`~syncache.keys.make_cache_key` accepts.
        creator: Computes the value; it must be picklable.
        expiretime: Seconds the value is fresh. ``None`` or negative: never
            stale (kept until evicted or invalidated). ``0``: always stale.
            Memcached rounds timeouts down to whole seconds.
        stale_ttl: Seconds a stale value is still served while one caller
            recomputes it; after that it is gone and callers wait.
        lock_timeout: Seconds a creator may hold the lock; a creator that
            takes longer loses it (a warning is logged) and another may
            start. The late creator's value is returned to its caller but
            not stored, so it cannot overwrite the newer value of the
            process that took over.
        beta: Recompute early (XFetch, see :func:`early_expiry`): each
            stored value stops being fresh ``duration * beta * -ln(U)``
            seconds before ``expiretime``, where ``duration`` is how long
            the creator took. 0 (the default) turns it off; 1 is XFetch's
            usual choice.
        cache_alias: Default: ``SYNCACHE["CACHE_ALIAS"]``.

    Returns:
        The value.

    Raises:
        ValueError: ``key`` or ``lock_timeout`` is not valid.
        UnpicklableValue: the created value cannot be stored.
        LockNotSupported: the backend cannot hold a lock (file cache).
        Exception: whatever ``creator`` raised, in the caller that ran it;
            nothing is stored then.

    If the cache backend fails, the creator runs in this process under an
    in-process lock, and its value is returned (the failure is logged).
    """
    _check_beta(beta)
    alias = get_config().cache_alias if cache_alias is None else cache_alias
    medium = get_medium(alias)
    keys = _ValueKeys.of(key)
    mutex = _mutexes.get((alias, keys.value, lock_timeout), key, lock_timeout, alias)
    mutex._medium()  # LockNotSupported now, not only once the value is stale

    def read() -> tuple[T, float]:
        return _read(medium, keys)

    def create() -> tuple[T, float]:
        # The tokens are read before the creator reads the source (see
        # _ValueKeys), under the lock, with the value: one round trip.
        found = _fetch(medium, keys)
        if isinstance(found, list):
            try:
                value, createdtime = _judge(found)
            except NeedRegenerationException:
                pass
            else:
                if createdtime == math.inf:
                    return value, createdtime
        else:
            # What failed may be the value alone (a pickle of a class since
            # renamed): with the tokens, read opaque, a new value replaces it.
            found = _fetch_tokens(medium, keys)
        tokens = _tokens(medium, keys, found) if isinstance(found, list) else None
        started = time.monotonic()
        value = creator()
        early = early_expiry(time.monotonic() - started, beta)
        # Not stored when the backend failed (the tokens are unknown), nor
        # when the lock expired while creating (extend() logged it): another
        # process may have stored a newer value then; keep that one.
        if tokens is not None and mutex.extend():
            _store(medium, key, keys, value, tokens, expiretime, stale_ttl, early)
        return value, math.inf

    with Lock(mutex, create, read, 0) as value:
        return value


def invalidate(
    key: KeyInput, *, hard: bool = False, cache_alias: str | None = None
) -> None:
    """Make the value of :func:`get_or_create` ``key`` stale everywhere.

    Once it returns, no caller in any process gets the value as fresh
    again, including a value whose creator is still running (it read the
    source before this call, perhaps): the next caller to take the lock
    recomputes it. Unless the backend failed: the failure is logged (with
    ``FAILURE_POLICY = "raise"``, raised), and the old value may be fresh
    again once the backend is back.

    Args:
        key: The key given to :func:`get_or_create`.
        hard: The value is not served at all any more, so callers wait for
            the new one instead of being served the stale one meanwhile;
            it is also deleted.
        cache_alias: Default: ``SYNCACHE["CACHE_ALIAS"]``.
    """
    medium = get_medium(cache_alias)
    keys = _ValueKeys.of(key)
    for target in [keys.gen, keys.hard] if hard else [keys.gen]:
        medium.attempt(
            "invalidating",
            target,
            functools.partial(medium.set, target, new_generation()),
        )
    if hard:
        medium.attempt(
            "invalidating", keys.value, functools.partial(medium.delete, keys.value)
        )


def cache_on_arguments(
    expiretime: float | None,
    *,
    namespace: str | None = None,
    stale_ttl: float = DEFAULT_STALE_TTL,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    beta: float = 0.0,
    cache_alias: str | None = None,
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a function so its results go through :func:`get_or_create`.

    The key is ``namespace`` (default: the function's module and qualified
    name) followed by ``str()`` of each argument, so arguments need a
    ``str()`` that is the same in every process. The wrapper has an
    ``invalidate(*args, hard=False, **kwargs)`` attribute.
    """

    _check_beta(beta)

    def decorator(function: Callable[..., T]) -> Callable[..., T]:
        prefix = namespace or f"{function.__module__}.{function.__qualname__}"
        lock_users[f"@cache_on_arguments on {prefix}"] = cache_alias

        def key_for(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
            return [
                prefix,
                *map(str, args),
                *(f"{name}={kwargs[name]}" for name in sorted(kwargs)),
            ]

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            return get_or_create(
                key_for(args, kwargs),
                lambda: function(*args, **kwargs),
                expiretime,
                stale_ttl=stale_ttl,
                lock_timeout=lock_timeout,
                beta=beta,
                cache_alias=cache_alias,
            )

        def invalidate_call(*args: Any, hard: bool = False, **kwargs: Any) -> None:
            invalidate(key_for(args, kwargs), hard=hard, cache_alias=cache_alias)

        wrapper.invalidate = invalidate_call  # type: ignore[attr-defined]
        return wrapper

    return decorator


__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_STALE_TTL",
    "MAX_LOCK_TIMEOUT",
    "NAMESPACE",
    "CacheMutex",
    "HeldMutex",
    "Lock",
    "LockError",
    "LockNotOwned",
    "LockNotSupported",
    "Mutex",
    "NameRegistry",
    "NeedRegenerationException",
    "ReadWriteMutex",
    "UnpicklableValue",
    "cache_on_arguments",
    "check_lock_timeout",
    "early_expiry",
    "get_or_create",
    "held_mutexes",
    "invalidate",
    "lock_users",
]
