"""The coordination medium: one Django cache alias and what it can do.

This is the only module that talks to a Django cache object. Like Django's
own ``BaseCache``, :class:`Medium` has a few small primitives (``get``,
``get_many``, ``add``, ``set``, ``delete``) and builds the generation
operations (:meth:`Medium.seed`, :meth:`Medium.bump`) from them; a subclass
per backend overrides only what that backend does better:

* :class:`AtomicMedium` (locmem, memcached): ``incr`` is atomic, so a bump
  increments from a random 62-bit seed.
* :class:`MemcachedMedium`: a copy of the alias's ``PyMemcacheCache`` whose
  pymemcache client raises on every failure, where Django's defaults answer
  defaults for a while and then give a server up for a minute.
* :class:`DatabaseMedium`: Django's ``DatabaseCache`` silently drops a write
  the database refused (a busy SQLite file), so every write is confirmed
  and retried.
* :class:`RedisMedium` / :class:`DjangoRedisMedium`: the raw redis-py client,
  one ``MGET`` for many keys, a bump in one ``MULTI`` round trip.
* the generic :class:`Medium` (file cache and unknown backends): ``incr`` is
  get-then-set, so a bump writes a fresh random value instead.

Either way every bump writes a value never written before, so holders only
ever compare with ``!=`` and no clock is involved.

Generations are read as opaque values wherever the medium reads the
backend's bytes (Redis, memcached, database, file): what syncache writes is
decoded, anything else is an :class:`Opaque` compared by its bytes, never
unpickled. A value planted at a generation key is then one more generation,
not code that runs in every process that checks it.

Failures are handled in one place, :meth:`Medium.attempt`: the error is
logged (at most once per ``LOG_INTERVAL`` per alias) and the caller gets
:data:`FAILED`, which every caller treats as "expired".
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import io
import logging
import math
import os
import pickle
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeVar

from django.core.cache import caches
from django.core.cache.backends.base import BaseCache, InvalidCacheKey
from django.core.signals import setting_changed
from django.dispatch import receiver

from syncache.conf import get_config

logger = logging.getLogger("syncache")

T = TypeVar("T")

#: A generation value: an int for everything syncache writes, but whatever a
#: user stored in the key is compared as it is.
Generation = Any


class _Failed:
    """The type of :data:`FAILED`."""

    _instance: _Failed | None = None

    def __new__(cls) -> _Failed:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "FAILED"

    def __bool__(self) -> bool:
        return False


#: The result of :meth:`Medium.attempt` when the backend failed. It means
#: "unknown", which every caller treats as expired.
FAILED: Final = _Failed()


class WriteNotConfirmed(Exception):
    """The backend accepted a write but did not store it, even after retries."""


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data (strings, numbers, tuples...) and refuses any
    class or function reference: what a lock reads back from a shared cache
    must never run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


class Opaque:
    """A stored value syncache did not write, read where a generation (an
    epoch, a group version, a lock token) was expected.

    It is never decoded: two are equal when their bytes are, so it works as
    one more generation (a holder of another one is expired). Its ``str()``
    is a digest, safe in a cache key and the same in every process.
    """

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __str__(self) -> str:
        return "opaque-" + hashlib.sha256(self.raw).hexdigest()[:32]

    def __repr__(self) -> str:
        return f"<Opaque {len(self.raw)} bytes {str(self)[7:19]}>"


def _plain_or_opaque(data: bytes) -> Any:
    """Unpickle ``data`` if it is plain data (what Django's pickling cache
    backends store for the integers syncache writes); anything that names a
    class or function is an :class:`Opaque`, and nothing in it is loaded."""
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except Exception:
        return Opaque(data)


class LockInTransaction(RuntimeError):
    """A database-cache lock was asked for inside a transaction on the
    cache's own database, where other processes could not see it (and
    PostgreSQL would make them wait without a deadline). A usage error: the
    failure policy never turns it into "expired"."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, as far as syncache's promises go."""

    #: ``add`` stores only when the key is absent, atomically.
    atomic_add: bool
    #: ``incr`` is one atomic operation (not Django's get-then-set).
    atomic_incr: bool
    #: The owner can delete a key only if it still holds its value.
    compare_and_delete: bool
    #: The backend can push messages to other processes.
    pubsub: bool
    #: Other processes on the same host see the same data.
    cross_process: bool
    #: Processes on other hosts see the same data.
    cross_host: bool


def new_generation() -> int:
    """Return a random 62-bit generation: never equal to an earlier one.

    62 bits leave room for ``incr`` under a signed 64-bit limit (Redis).
    """
    return secrets.randbits(62)


#: Suffix of the per-alias epoch key. ``!`` never appears in a key made by
#: :func:`syncache.keys.make_cache_key`, so no user key can collide with it.
EPOCH_SUFFIX = "!epoch"


class Medium:
    """One Django cache alias as a coordination medium.

    The generic implementation uses only Django's cache API and assumes
    nothing is atomic. Keys passed in are syncache keys; Django adds its own
    ``KEY_PREFIX`` and version as usual.
    """

    capabilities = Capabilities(
        atomic_add=False,
        atomic_incr=False,
        compare_and_delete=False,
        pubsub=False,
        cross_process=True,
        cross_host=True,
    )

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.epoch_key = get_config().key_prefix + EPOCH_SUFFIX
        self._log_lock = threading.Lock()
        self._next_log_at = 0.0
        self._failures = 0
        self._suppressed = 0
        self._failure_logged = False
        self._push_channel: str | None = None
        self._push_client: Any = None
        #: Called with each key this process bumped or invalidated, after
        #: the change is stored (the push listener marks it at once, so this
        #: process never waits for its own message).
        self.on_publish: Callable[[str], object] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} alias={self.alias!r}>"

    @property
    def cache(self) -> BaseCache:
        """The Django cache object; ``caches`` keeps one per thread."""
        return caches[self.alias]

    # -- primitives -----------------------------------------------------

    def get(self, key: str) -> Generation | None:
        """Return the generation stored at ``key``, or None when it is missing.

        Generations, epochs, group versions and fencing counters are read
        opaque: an integer (what syncache writes) or plain data is decoded,
        anything else is an :class:`Opaque`, never unpickled. The generic
        medium reads through Django's API, which unpickles every value.
        """
        return self.cache.get(key)

    def get_many(
        self, keys: Sequence[str], *, user_data: Collection[str] = ()
    ) -> list[Any]:
        """Return what is stored at ``keys``, in order, None where missing.

        The keys are read in order, in one round trip where the backend has
        a multi-get.

        Args:
            user_data: The keys among ``keys`` that hold user data (a
                ``get_or_create()`` value, a group entry, a page's header
                list): decoded as Django's cache decodes them, unpickled.
                The others are generations, read opaque as by :meth:`get`.
        """
        found = self.cache.get_many(keys)
        return [found.get(key) for key in keys]

    def add(self, key: str, value: Generation) -> bool:
        """Store ``value`` at ``key`` if it is absent; never expires."""
        return bool(self.cache.add(key, value, timeout=None))

    def set(self, key: str, value: Generation) -> None:
        """Store ``value`` at ``key``; never expires."""
        self.cache.set(key, value, timeout=None)

    def delete(self, key: str) -> None:
        """Delete ``key``."""
        self.cache.delete(key)

    def set_with_timeout(self, key: str, value: Any, timeout: float | None) -> None:
        """Store ``value`` at ``key`` for ``timeout`` seconds (None: forever)."""
        self.cache.set(key, value, timeout=timeout)

    # -- locks ----------------------------------------------------------------
    #
    # A lock is a key holding its owner's random token, with an expiry so a
    # crashed owner never blocks the others forever. Acquiring is an atomic
    # add; releasing, extending and replacing compare the token and act in
    # one atomic step, so only the owner can. Backends without both raise
    # NotImplementedError (the generic and file media).
    #
    # Waiting: a waiter calls lock_wait() between two tries. On Redis a
    # release pushes one signal on a short list next to the lock (kept at
    # most one item long, expiring after LOCK_SIGNAL_TTL_MS) and lock_wait()
    # blocks on it with BLPOP, so one waiter wakes as soon as the lock is
    # free. Elsewhere lock_wait() sleeps. A signal nobody was waiting for
    # only makes the next waiter try once more.

    #: A release wakes a waiter at once: :meth:`lock_wait` blocks on a
    #: signal instead of sleeping, so waiters can afford long pauses.
    lock_signals = False

    def _no_locks(self) -> NotImplementedError:
        return NotImplementedError(
            f"Cache {self.alias!r} ({type(self.cache).__module__}."
            f"{type(self.cache).__name__}) cannot hold a cross-process lock: "
            f"it has no atomic add and compare-and-delete. Use Redis, "
            f"memcached or the database cache."
        )

    def lock_acquire(self, key: str, token: str, timeout: float) -> bool:
        """Store ``token`` at ``key`` for ``timeout`` seconds if it is absent.

        Returns:
            Whether the lock was taken. It lasts at least ``timeout`` seconds
            (backends with whole-second expiry round up, plus one second).
        """
        raise self._no_locks()

    def lock_release(self, key: str, token: str) -> bool:
        """Delete ``key`` if it still holds ``token``; return whether it did."""
        raise self._no_locks()

    def lock_extend(self, key: str, token: str, timeout: float) -> bool:
        """Make the lock at ``key`` last ``timeout`` more seconds if it still
        holds ``token``; return whether it did."""
        raise self._no_locks()

    def lock_replace(
        self, key: str, expected: str, value: str, timeout: float, *, wake: bool = False
    ) -> bool:
        """Store ``value`` at ``key`` for ``timeout`` seconds if the lock
        still holds ``expected``, in one atomic step; return whether it did.

        It hands a lock over (``expected`` is the old holder's token) or
        changes what its holder stores. ``wake=True`` means the lock is
        free afterwards for the waiters, as after :meth:`lock_release`:
        one waiter is woken where the backend can signal.
        """
        raise self._no_locks()

    def lock_value(self, key: str) -> Any:
        """Return what the lock at ``key`` holds (its holder's token), or
        None when nobody holds it."""
        return self.cache.get(key)

    def lock_take(
        self,
        key: str,
        token: str,
        timeout: float,
        *,
        fence_key: str | None = None,
        over: str | None = None,
    ) -> LockTake:
        """Take the lock at ``key`` for ``token``, and fence it.

        The lock is taken when nobody holds it, or when it holds a value
        that starts with ``over`` (a state its holder left for anyone to
        take over); then the counter at ``fence_key`` is incremented. The
        generic implementation is :meth:`lock_acquire`, then
        :meth:`lock_value` and :meth:`lock_replace` when that failed, then
        :meth:`lock_fence` (a lock whose fence could not be written is
        released again); Redis does it all in one script.

        Returns:
            ``(taken, fence, found)``: the fencing token when taken and
            ``fence_key`` was given; what the lock held when not taken
            (None if it was released meanwhile: try again).
        """
        if not self.lock_acquire(key, token, timeout):
            found = self.lock_value(key)
            if not (
                over
                and isinstance(found, str)
                and found.startswith(over)
                and self.lock_replace(key, found, token, timeout)
            ):
                return LockTake(False, None, found)
        if fence_key is None:
            return LockTake(True, None, None)
        try:
            fence = self.lock_fence(fence_key)
        except BaseException:
            # The fence's error is the one to report.
            with contextlib.suppress(Exception):
                self.lock_release(key, token)
            raise
        # A pause between the add and the fence longer than the lease lets
        # another process take the lock and a smaller token meanwhile: this
        # token is only good if the lock is still ours after fencing.
        if not self.lock_extend(key, token, timeout):
            return LockTake(False, None, None)
        return LockTake(True, fence, None)

    def lock_held(self, key: str) -> bool:
        """Whether anyone holds the lock at ``key``."""
        return bool(self.cache.has_key(key))

    def lock_fence(self, key: str) -> int:
        """Increment the fencing counter at ``key``; return the new value.

        Called by a lock's holder only, so the generic get-then-set cannot
        race with another increment. The counter never expires; a backend
        that evicts it (memcached LRU) restarts it at 1.
        """
        current = self.get(key)
        value = (current if isinstance(current, int) else 0) + 1
        self.set(key, value)
        return value

    def lock_wait(self, key: str, seconds: float) -> bool:
        """Wait at most ``seconds`` for the lock at ``key`` to be released.

        Returns:
            True when a release woke this waiter early (try again at once),
            False once ``seconds`` have passed. Backends that cannot signal
            (all but Redis) just sleep and return False.
        """
        if seconds > 0:
            time.sleep(seconds)
        return False

    def lock_notify(self, key: str) -> None:
        """Wake one waiter of the lock at ``key``, where the backend can.

        A waiter that was woken but leaves without the lock calls this, so
        the wake-up it used reaches the next waiter.
        """

    # -- generations ------------------------------------------------------

    def seed(self, key: str, *, missing: bool = False) -> Generation:
        """Return the generation at ``key``, creating it when missing.

        A missing key is created with ``add`` (never get-then-set), so
        concurrent seeders agree on one value where ``add`` is atomic.
        ``missing``: the caller just read the key and found nothing, so the
        first read (one round trip when the key exists) is skipped.

        Raises:
            WriteNotConfirmed: the key kept vanishing (evicted as fast as it
                was written, or the backend drops writes).
        """
        if not missing:
            current = self.get(key)  # usually there: one round trip
            if current is not None:
                return current
        for _ in range(get_config().write_retries + 1):
            value = new_generation()
            if self.add(key, value):
                return value
            current = self.get(key)
            if current is not None:
                return current
        raise WriteNotConfirmed(
            f"Could not create the generation key {key!r} in cache "
            f"{self.alias!r}: it disappeared after every write."
        )

    def bump(self, key: str) -> Generation:
        """Write a generation never written before to ``key``; return it.

        The epoch is moved after the generation, so a batched reader that
        sees the old epoch re-reads the generations next time. In push mode
        the key is then published to every process's listener.
        """
        value = self._bump(key)
        self._announce(key)
        return value

    def invalidate(self, key: str) -> None:
        """Delete the generation at ``key``, move the epoch, publish."""
        self._invalidate(key)
        self._announce(key)

    def _bump(self, key: str) -> Generation:
        value = new_generation()
        self.set(key, value)
        self.touch_epoch()
        return value

    def _invalidate(self, key: str) -> None:
        self.delete(key)
        self.touch_epoch()

    # -- push (Redis pub/sub, see syncache.push) ----------------------------

    @property
    def push_mode(self) -> str | None:
        """How bumps are pushed: ``"inline"`` (published in the bump's own
        Redis transaction), ``"url"`` (published to ``SYNCACHE["PUSH_URL"]``
        after the bump), or None (push is off, or this backend cannot push:
        processes poll)."""
        config = get_config()
        if not config.push:
            return None
        if config.push_url is not None:
            return "url"
        return "inline" if self.capabilities.pubsub else None

    @property
    def push_channel(self) -> str:
        """The pub/sub channel of this alias: its epoch key as Django stores
        it, so sites sharing a Redis server with other prefixes never mix."""
        channel = self._push_channel
        if channel is None:
            channel = self._push_channel = f"{self.cache.make_key(self.epoch_key)}!push"
        return channel

    def push_client(self) -> Any:
        """The redis-py client that publishes and subscribes.

        Raises:
            NotImplementedError: push is off or impossible for this alias.
        """
        mode = self.push_mode
        if mode == "url":
            client = self._push_client
            if client is None:
                import redis

                url = get_config().push_url
                assert url is not None  # push_mode is "url"
                # Bounded waits, as the system checks ask of cache clients.
                client = self._push_client = redis.Redis.from_url(
                    url, socket_timeout=5, socket_connect_timeout=5
                )
            return client
        if mode == "inline":
            return self.client()
        raise NotImplementedError(
            f"Cache {self.alias!r} does not push: SYNCACHE['PUSH'] is off, or "
            f"the cache is not Redis and SYNCACHE['PUSH_URL'] is not set."
        )

    def client(self) -> Any:
        """The redis-py client of a Redis cache (Redis media only)."""
        raise NotImplementedError(f"Cache {self.alias!r} is not a Redis cache.")

    def _announce(self, key: str) -> None:
        """Tell this process's listener, and publish unless done inline."""
        hook = self.on_publish
        if hook is not None:
            hook(key)
        if self.push_mode == "url":
            self._publish_when_visible(key)

    def _publish_when_visible(self, key: str) -> None:
        """Publish ``key`` to ``PUSH_URL`` once other processes can read the
        change (at once, except on the database cache: see its override)."""
        try:
            self.push_client().publish(self.push_channel, key)
        except Exception as error:  # the change itself is stored
            self._log_failure("publishing", key, error)

    def touch_epoch(self) -> None:
        """Write a fresh epoch for this alias and key prefix."""
        self.set(self.epoch_key, new_generation())

    def seed_epoch(self) -> Generation | None:
        """Create the missing epoch; return it if this call surely did.

        A reader that found the epoch missing may trust the generations it
        read with it only if its own ``add`` then created the epoch: a bump
        finishing in between would have written the epoch first. Without an
        atomic ``add`` that cannot be known, so None is returned.
        """
        value = new_generation()
        if self.capabilities.atomic_add:
            return value if self.add(self.epoch_key, value) else None
        self.set(self.epoch_key, value)
        return None

    def get_epoch_and_many(
        self, keys: Sequence[str]
    ) -> tuple[Generation | None, list[Generation | None]]:
        """Read the epoch, then ``keys``, in one round trip where possible.

        The epoch is read first: a writer bumps a generation before the
        epoch, so an epoch seen unchanged later proves that no bump finished
        since these generations were read.
        """
        values = self.get_many([self.epoch_key, *keys], user_data=())
        return values[0], values[1:]

    def _after_fork(self) -> None:
        """Reset what a forked child must not share with its parent."""
        # Another thread (the push listener) may have held it at fork: the
        # child's copy would stay locked for ever.
        self._log_lock = threading.Lock()

    # -- failure policy -----------------------------------------------------

    def attempt(self, action: str, key: str, operation: Callable[[], T]) -> T | _Failed:
        """Run ``operation``; on a backend error, log it and return FAILED.

        This is syncache's one failure policy. With
        ``SYNCACHE["FAILURE_POLICY"] = "raise"`` the error propagates
        instead. Invalid keys always raise: they are a programming error,
        not an outage.

        Args:
            action: What was being done, for the log ("checking", ...).
            key: The key involved, for the log.
            operation: The backend call.
        """
        try:
            result = operation()
        except (InvalidCacheKey, LockInTransaction):
            raise
        except Exception as error:
            if get_config().failure_policy == "raise":
                raise
            self._log_failure(action, key, error)
            return FAILED
        if self._failures:
            self._log_recovery()
        return result

    def _log_failure(self, action: str, key: str, error: Exception) -> None:
        with self._log_lock:
            self._failures += 1
            now = time.monotonic()
            if now < self._next_log_at:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._next_log_at = now + get_config().log_interval
            self._failure_logged = True
        logger.error(
            'Unexpected error %s cached synchronization state key "%s" in '
            "cache %r; treating it as expired. Is the cache server down? "
            "Error = %s%s",
            action,
            key,
            self.alias,
            error,
            f" ({suppressed} similar errors not logged)" if suppressed else "",
            exc_info=error,
        )

    def _log_recovery(self) -> None:
        # The interval is not reset: a backend that flaps (a client that
        # answers defaults between errors) must not log on every request.
        with self._log_lock:
            failures, self._failures = self._failures, 0
            logged, self._failure_logged = self._failure_logged, False
        if logged:
            # INFO, not WARNING: a client that answers defaults while its
            # server is down looks like a recovery too.
            logger.info(
                "Cache %r is answering again after %d failed operations.",
                self.alias,
                failures,
            )


class AtomicMedium(Medium):
    """A backend whose ``add`` and ``incr`` are atomic (locmem, memcached)."""

    capabilities = Capabilities(
        atomic_add=True,
        atomic_incr=True,
        compare_and_delete=False,
        pubsub=False,
        cross_process=True,
        cross_host=True,
    )

    def incr(self, key: str) -> int:
        """Increment ``key`` atomically; ValueError when it is missing.

        Raises:
            TypeError: the client answered something else than an integer
                (pymemcache's ``False`` when it gave its server up): an
                error, never generation 0.
        """
        value = self.cache.incr(key)
        if type(value) is not int:
            raise TypeError(
                f"Cache {self.alias!r} answered {value!r} to incr({key!r}) "
                f"instead of the new value: taken as a failure."
            )
        return value

    def lock_acquire(self, key: str, token: str, timeout: float) -> bool:
        return bool(self.cache.add(key, token, timeout=timeout))

    def lock_fence(self, key: str) -> int:
        for _ in range(get_config().write_retries + 1):
            try:
                return self.incr(key)
            except ValueError:
                if self.add(key, 1):
                    return 1
        raise WriteNotConfirmed(
            f"Could not increment the fencing counter {key!r} in cache "
            f"{self.alias!r}: it disappeared after every write."
        )

    def _bump(self, key: str) -> Generation:
        """Increment the generation; a missing key is seeded at random."""
        for _ in range(get_config().write_retries + 1):
            try:
                value = self.incr(key)
            except ValueError:
                seed = new_generation()
                if not self.add(key, seed):
                    continue
                value = seed
            self.touch_epoch()
            return value
        raise WriteNotConfirmed(
            f"Could not bump the generation key {key!r} in cache "
            f"{self.alias!r}: it disappeared after every write."
        )


class LocMemMedium(AtomicMedium):
    """``LocMemCache``: atomic, but visible to this process only."""

    capabilities = Capabilities(
        atomic_add=True,
        atomic_incr=True,
        compare_and_delete=True,
        pubsub=False,
        cross_process=False,
        cross_host=False,
    )

    def _owned(self, cache: Any, full_key: str, token: str) -> bool:
        # Under the cache's own lock: LocMemCache pickles every value.
        if full_key not in cache._cache or cache._has_expired(full_key):
            return False
        return bool(pickle.loads(cache._cache[full_key]) == token)

    def lock_release(self, key: str, token: str) -> bool:
        cache: Any = self.cache
        full_key = cache.make_and_validate_key(key)
        with cache._lock:
            if not self._owned(cache, full_key, token):
                return False
            cache._delete(full_key)
            return True

    def lock_extend(self, key: str, token: str, timeout: float) -> bool:
        cache: Any = self.cache
        full_key = cache.make_and_validate_key(key)
        with cache._lock:
            if not self._owned(cache, full_key, token):
                return False
            cache._expire_info[full_key] = cache.get_backend_timeout(timeout)
            return True

    def lock_replace(
        self, key: str, expected: str, value: str, timeout: float, *, wake: bool = False
    ) -> bool:
        cache: Any = self.cache
        full_key = cache.make_and_validate_key(key)
        with cache._lock:
            if not self._owned(cache, full_key, expected):
                return False
            cache._cache[full_key] = pickle.dumps(value, cache.pickle_protocol)
            cache._expire_info[full_key] = cache.get_backend_timeout(timeout)
            return True


#: The pymemcache options :class:`MemcachedMedium` overrides in the cache's
#: ``OPTIONS``. ``HashClient``'s defaults (``retry_attempts=2``,
#: ``retry_timeout=1``, ``dead_timeout=60``) answer every call with a
#: default for a second after a failure (``incr()`` answers False, which
#: would be taken for generation 0: a lost bump), then give the server up
#: for a minute after it is back. Here every failure raises, into
#: :meth:`Medium.attempt`, and a server that is back is used at once.
STRICT_PYMEMCACHE_OPTIONS: Final = {
    "retry_attempts": 0,
    "retry_timeout": 0,
    "dead_timeout": 0,
    "ignore_exc": False,
    "default_noreply": False,
}


class _Stored(NamedTuple):
    """A memcached value as read, not decoded yet."""

    key: str
    value: bytes
    flags: int


class _Serde:
    """The cache's own pymemcache serde, whose reads can stay undecoded.

    Values are serialized by the cache's serde, so Django's API reads back
    what syncache writes, and the other way round. Reads decode as it does,
    except inside :meth:`undecoded`: then each value comes back as a
    :class:`_Stored`, for the medium to decode by what its key holds. One
    per client; clients are per thread.
    """

    def __init__(self, serde: Any) -> None:
        self.serde = serde
        self._undecoded = False

    def serialize(self, key: Any, value: Any) -> tuple[bytes, int]:
        return self.serde.serialize(key, value)  # type: ignore[no-any-return]

    def deserialize(self, key: Any, value: bytes, flags: int) -> Any:
        if self._undecoded:
            return _Stored(key, value, flags)
        return self.serde.deserialize(key, value, flags)

    @contextlib.contextmanager
    def undecoded(self) -> Iterator[None]:
        self._undecoded = True
        try:
            yield
        finally:
            self._undecoded = False


class MemcachedMedium(AtomicMedium):
    """``PyMemcacheCache``: atomic ``add``/``incr``, and ``gets``/``cas``.

    syncache talks to memcached through a copy of the alias's cache: the
    same class, servers, ``OPTIONS`` (timeouts included), key function,
    ``KEY_PREFIX`` and ``VERSION`` and serializer, so it shares every key and
    value with code that uses the alias, but with
    :data:`STRICT_PYMEMCACHE_OPTIONS`: every failure raises. Its client is
    not thread-safe, so there is one copy per thread, as Django keeps one
    cache object per thread.

    Generations, epochs, group versions and lock tokens are read without
    the serializer: integers, text and plain pickles are decoded, anything
    else is an :class:`Opaque`.
    """

    capabilities = Capabilities(
        atomic_add=True,
        atomic_incr=True,
        compare_and_delete=True,
        pubsub=False,
        cross_process=True,
        cross_host=True,
    )

    def __init__(self, alias: str) -> None:
        super().__init__(alias)
        self._local = threading.local()

    def _after_fork(self) -> None:
        super()._after_fork()
        # The parent's sockets: a child using them would read its replies.
        self._local = threading.local()

    @property
    def cache(self) -> BaseCache:
        """This thread's strict copy of the alias's cache (see the class)."""
        cache: BaseCache | None = getattr(self._local, "cache", None)
        if cache is None:
            from django.core.cache import caches
            from pymemcache.serde import LegacyWrappingSerde, pickle_serde

            params = dict(caches.settings[self.alias])
            del params["BACKEND"]
            location = params.pop("LOCATION", "")
            options = dict(params.get("OPTIONS") or {})
            # As Django's PyMemcacheCache and pymemcache's Client pick it.
            serde = options.get("serde", pickle_serde) or LegacyWrappingSerde(
                options.get("serializer"), options.get("deserializer")
            )
            self._local.serde = _Serde(serde)
            params["OPTIONS"] = {
                **options,
                **STRICT_PYMEMCACHE_OPTIONS,
                "serde": self._local.serde,
            }
            backend: Any = type(caches[self.alias])
            cache = self._local.cache = backend(location, params)
        return cache

    def _read(self, keys: Sequence[str]) -> list[_Stored | None]:
        """The values at ``keys``, undecoded (None where missing)."""
        cache: Any = self.cache
        full_keys = [cache.make_and_validate_key(key) for key in keys]
        with self._local.serde.undecoded():
            found = cache._cache.get_many(full_keys)
        return [found.get(full_key) for full_key in full_keys]

    def _decode(self, stored: _Stored | None, user_data: bool = False) -> Any:
        """User data as the cache's serde decodes it; anything else as a
        generation (or lock token): integers and text, plain pickles, or
        else an :class:`Opaque`."""
        from pymemcache.serde import FLAG_INTEGER, FLAG_LONG, FLAG_PICKLE, FLAG_TEXT

        if stored is None:
            return None
        if user_data:
            return self._local.serde.serde.deserialize(*stored)
        try:
            if stored.flags in (FLAG_INTEGER, FLAG_LONG):
                return int(stored.value)
            if stored.flags == FLAG_TEXT:
                return stored.value.decode()
        except ValueError:
            pass
        if stored.flags == FLAG_PICKLE:
            return _plain_or_opaque(stored.value)
        return Opaque(stored.value)

    def get(self, key: str) -> Generation | None:
        return self._decode(self._read([key])[0])

    def get_many(
        self, keys: Sequence[str], *, user_data: Collection[str] = ()
    ) -> list[Any]:
        if not keys:
            return []
        return [
            self._decode(stored, key in user_data)
            for key, stored in zip(keys, self._read(keys), strict=True)
        ]

    @staticmethod
    def _seconds(timeout: float) -> int:
        # Memcached expires on a one-second clock, possibly just after a
        # tick: one more second keeps the promised "at least timeout".
        return math.ceil(timeout) + 1

    def set_with_timeout(self, key: str, value: Any, timeout: float | None) -> None:
        # Django truncates to whole seconds, and 0 means "already expired".
        self.cache.set(
            key, value, timeout=None if timeout is None else math.ceil(timeout)
        )

    def lock_acquire(self, key: str, token: str, timeout: float) -> bool:
        return bool(self.cache.add(key, token, timeout=self._seconds(timeout)))

    def lock_value(self, key: str) -> Any:
        return self._decode(self._read([key])[0])

    def lock_held(self, key: str) -> bool:
        return self._read([key])[0] is not None

    def _compare_and_store(
        self, key: str, expected: str, value: str, expire: int
    ) -> bool:
        cache: Any = self.cache
        full_key = cache.make_and_validate_key(key)
        with self._local.serde.undecoded():
            found, cas = cache._cache.gets(full_key)
        if cas is None or self._decode(found) != expected:
            return False
        if expire > 0:
            # Django's conversion: above 30 days memcached wants a timestamp.
            expire = cache.get_backend_timeout(expire)
        # A negative expiry makes memcached drop the item at once: a delete
        # conditional on the cas value, which the protocol has no verb for.
        return bool(cache._cache.cas(full_key, value, cas, expire=expire))

    def lock_release(self, key: str, token: str) -> bool:
        return self._compare_and_store(key, token, token, -1)

    def lock_extend(self, key: str, token: str, timeout: float) -> bool:
        return self._compare_and_store(key, token, token, self._seconds(timeout))

    def lock_replace(
        self, key: str, expected: str, value: str, timeout: float, *, wake: bool = False
    ) -> bool:
        return self._compare_and_store(key, expected, value, self._seconds(timeout))


class FileMedium(Medium):
    """``FileBasedCache``: nothing atomic, shared by one host's processes.

    Generations are read from the cache's files as Django writes them (a
    pickled expiry, then the zlib-compressed pickle of the value), with the
    unpickler that loads plain data only.
    """

    capabilities = Capabilities(
        atomic_add=False,
        atomic_incr=False,
        compare_and_delete=False,
        pubsub=False,
        cross_process=True,
        cross_host=False,
    )

    def get(self, key: str) -> Generation | None:
        return self._read_generation(key)

    def _read_generation(self, key: str) -> Generation | None:
        cache: Any = self.cache
        try:
            with open(cache._key_to_file(key), "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return None
        stream = io.BytesIO(data)
        try:
            # The expiry is skipped, not compared with this process's clock:
            # syncache stores generations without one.
            _PlainUnpickler(stream).load()
            value = zlib.decompress(stream.read())
        except Exception:
            return Opaque(data)
        return _plain_or_opaque(value)

    def get_many(
        self, keys: Sequence[str], *, user_data: Collection[str] = ()
    ) -> list[Any]:
        # Django's FileBasedCache.get_many() reads the files one by one too.
        return [
            self.cache.get(key) if key in user_data else self._read_generation(key)
            for key in keys
        ]


class DatabaseMedium(Medium):
    """``DatabaseCache``: atomic ``add`` by primary key; writes confirmed.

    Django's ``DatabaseCache.set()`` swallows database errors (a busy
    SQLite file), so a write can be lost without a trace. Its internal
    ``_base_set`` reports whether the row was written; every write here
    goes through it and is retried with a short random back-off.
    """

    capabilities = Capabilities(
        atomic_add=True,
        atomic_incr=False,
        compare_and_delete=True,
        pubsub=False,
        cross_process=True,
        cross_host=True,
    )

    def _publish_when_visible(self, key: str) -> None:
        # Inside a transaction on the cache's database the new generation is
        # not visible to other connections yet: a message now would make
        # them read (and trust) the old one. Publish at commit.
        from django.db import router, transaction

        cache: Any = self.cache
        using = router.db_for_write(cache.cache_model_class)
        if transaction.get_connection(using).in_atomic_block:
            transaction.on_commit(
                lambda: super(DatabaseMedium, self)._publish_when_visible(key),
                using=using,
                robust=True,
            )
        else:
            super()._publish_when_visible(key)

    def _confirmed_write(
        self, mode: str, key: str, value: Generation, timeout: float | None = None
    ) -> bool:
        cache: Any = self.cache
        full_key = cache.make_and_validate_key(key)
        retries = get_config().write_retries
        for attempt in range(retries + 1):
            if cache._base_set(mode, full_key, value, timeout):
                return True
            if mode == "add" and cache.has_key(key):
                return False
            if attempt < retries:
                time.sleep(secrets.randbelow(20 * (attempt + 1)) / 1000)
        raise WriteNotConfirmed(
            f"The database behind cache {self.alias!r} refused the write of "
            f"{key!r} {retries + 1} times (is the database busy or locked?)."
        )

    def add(self, key: str, value: Generation) -> bool:
        return self._confirmed_write("add", key, value)

    def set(self, key: str, value: Generation) -> None:
        self._confirmed_write("set", key, value)

    def set_with_timeout(self, key: str, value: Any, timeout: float | None) -> None:
        self._confirmed_write("set", key, value, timeout)

    @staticmethod
    def _plain(raw: str) -> Any:
        """A value of the cache table, decoded as plain data only."""
        try:
            data = base64.b64decode(raw.encode())
        except ValueError:
            return Opaque(raw.encode())
        return _plain_or_opaque(data)

    def get(self, key: str) -> Generation | None:
        return self._select([key], ())[0]

    def get_many(
        self, keys: Sequence[str], *, user_data: Collection[str] = ()
    ) -> list[Any]:
        return self._select(keys, user_data)

    def _select(self, keys: Sequence[str], user_data: Collection[str]) -> list[Any]:
        """One ``SELECT``, as Django's, with expiry judged by the lock clock
        (below); generations are decoded as plain data."""
        if not keys:
            return []
        cache: Any = self.cache
        full_keys = [cache.make_and_validate_key(key) for key in keys]
        connection = self._lock_connection()
        quote = connection.ops.quote_name
        now, now_params, _, _ = self._lock_clock(connection, 0)
        placeholders = ", ".join(["%s"] * len(full_keys))
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {quote('cache_key')}, {quote('value')} "
                f"FROM {quote(cache._table)} WHERE {quote('cache_key')} "
                f"IN ({placeholders}) AND {quote('expires')} > {now}",
                [*full_keys, *now_params],
            )
            rows = dict(cursor.fetchall())
        values: list[Any] = []
        for key, full_key in zip(keys, full_keys, strict=True):
            raw = rows.get(full_key)
            if raw is not None:
                raw = connection.ops.process_clob(raw)
                if key in user_data:
                    raw = pickle.loads(base64.b64decode(raw.encode()))
                else:
                    raw = self._plain(raw)
            values.append(raw)
        return values

    # The lock operations write their own SQL: DatabaseCache.add() takes
    # over an expired row with a plain UPDATE, so two processes taking over
    # the same expired lock would both succeed. Here the expired row is
    # deleted first and the lock is an INSERT, atomic by primary key.
    #
    # Expiry is judged by the database server's clock on PostgreSQL and
    # SQLite: the statements compute "now" and "now + timeout" in SQL, so a
    # web server whose clock runs ahead cannot take a live lock, nor one
    # whose clock runs behind keep a dead one. The rows stay what Django
    # writes (a pickled value, an ``expires`` datetime), so Django's own
    # get() and has_key() still read them, by the reader's clock; no lock
    # decision depends on those. Other vendors use this process's clock, as
    # Django does (docs/spinlock.rst, "Database cache clocks").

    #: Parameter placeholders for the lock clock's "now" and "now + timeout".
    _NOW: Final = object()
    _EXPIRY: Final = object()

    def _lock_connection(self) -> Any:
        from django.db import connections, router

        cache: Any = self.cache
        return connections[router.db_for_write(cache.cache_model_class)]

    def _lock_clock(
        self, connection: Any, timeout: float
    ) -> tuple[str, list[Any], str, list[Any]]:
        """Return SQL for now and for now + ``timeout``, with their params."""
        milliseconds = max(1, math.ceil(timeout * 1000))
        if connection.vendor == "postgresql":
            # The statement's start, not the transaction's: a lock taken in
            # a long transaction must not get an expiry in the past.
            now = "statement_timestamp()"
            return now, [], f"{now} + %s * INTERVAL '1 millisecond'", [milliseconds]
        if connection.vendor == "sqlite" and connection.timezone_name == "UTC":
            # The text Django stores (UTC, "YYYY-MM-DD HH:MM:SS[.fff]"), so
            # the column compares as text in time order.
            stamp = "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'{})"
            return (
                stamp.format(""),
                [],
                stamp.format(", %s"),
                [f"+{milliseconds / 1000:.3f} seconds"],
            )
        return "%s", [self._db_now()], "%s", [self._db_expiry(timeout)]

    def _lock_sql(
        self,
        sql: str,
        params: Sequence[Any],
        *,
        timeout: float = 0.0,
        fetch: bool = False,
    ) -> tuple[int, Any]:
        """Run one statement on the cache table; return its row count and,
        with ``fetch``, its first row (None when there is none).

        ``{table}``, ``{key}``, ``{value}`` and ``{expires}`` in ``sql`` are
        replaced by the quoted names, ``{now}`` and ``{expiry}`` by the lock
        clock's now and now + ``timeout``; :attr:`_NOW` and :attr:`_EXPIRY`
        in ``params`` mark where their parameters go.
        """
        connection = self._lock_connection()
        cache: Any = self.cache
        quote = connection.ops.quote_name
        now_sql, now_params, expiry_sql, expiry_params = self._lock_clock(
            connection, timeout
        )
        expanded: list[Any] = []
        for param in params:
            if param is self._NOW:
                expanded.extend(now_params)
            elif param is self._EXPIRY:
                expanded.extend(expiry_params)
            else:
                expanded.append(param)
        with connection.cursor() as cursor:
            cursor.execute(
                sql.format(
                    table=quote(cache._table),
                    key=quote("cache_key"),
                    value=quote("value"),
                    expires=quote("expires"),
                    now=now_sql,
                    expiry=expiry_sql,
                ),
                expanded,
            )
            return int(cursor.rowcount), cursor.fetchone() if fetch else None

    def _db_now(self) -> Any:
        from django.utils import timezone

        connection = self._lock_connection()
        now = timezone.now().replace(microsecond=0)
        return connection.ops.adapt_datetimefield_value(now)

    def _db_expiry(self, timeout: float) -> Any:
        from django.conf import settings

        cache: Any = self.cache
        connection = self._lock_connection()
        # Django truncates deadlines to the second: one more keeps "at least".
        deadline = cache.get_backend_timeout(math.ceil(timeout) + 1)
        tz = dt.timezone.utc if settings.USE_TZ else None
        expiry = dt.datetime.fromtimestamp(deadline, tz=tz).replace(microsecond=0)
        return connection.ops.adapt_datetimefield_value(expiry)

    def _encoded(self, value: Any) -> str:
        """``value`` as Django's ``DatabaseCache`` stores it."""
        cache: Any = self.cache
        return base64.b64encode(pickle.dumps(value, cache.pickle_protocol)).decode(
            "latin1"
        )

    def lock_acquire(self, key: str, token: str, timeout: float) -> bool:
        from django.db import IntegrityError, router, transaction

        cache: Any = self.cache
        full_key = cache.make_and_validate_key(key)
        using = router.db_for_write(cache.cache_model_class)
        if transaction.get_connection(using).in_atomic_block:
            raise LockInTransaction(
                f"Lock {key!r} on cache {self.alias!r} (a DatabaseCache on "
                f"database {using!r}) was asked for inside a transaction on "
                f"that database: other processes would not see it before the "
                f"commit. Take the lock before transaction.atomic() (and "
                f"outside ATOMIC_REQUESTS views), give the cache table a "
                f"database alias of its own (a database router), or use "
                f"Redis or memcached for locks."
            )
        try:
            with transaction.atomic(using=using):
                self._lock_sql(
                    "DELETE FROM {table} WHERE {key} = %s AND {expires} <= {now}",
                    [full_key, self._NOW],
                )
                self._lock_sql(
                    "INSERT INTO {table} ({key}, {value}, {expires}) "
                    "VALUES (%s, %s, {expiry})",
                    [full_key, self._encoded(token), self._EXPIRY],
                    timeout=timeout,
                )
        except IntegrityError:
            return False
        return True

    def lock_release(self, key: str, token: str) -> bool:
        full_key = self.cache.make_and_validate_key(key)
        count, _ = self._lock_sql(
            "DELETE FROM {table} WHERE {key} = %s AND {value} = %s "
            "AND {expires} > {now}",
            [full_key, self._encoded(token), self._NOW],
        )
        return count == 1

    def lock_extend(self, key: str, token: str, timeout: float) -> bool:
        return self.lock_replace(key, token, token, timeout)

    def lock_replace(
        self, key: str, expected: str, value: str, timeout: float, *, wake: bool = False
    ) -> bool:
        full_key = self.cache.make_and_validate_key(key)
        count, _ = self._lock_sql(
            "UPDATE {table} SET {value} = %s, {expires} = {expiry} "
            "WHERE {key} = %s AND {value} = %s AND {expires} > {now}",
            [
                self._encoded(value),
                self._EXPIRY,
                full_key,
                self._encoded(expected),
                self._NOW,
            ],
            timeout=timeout,
        )
        return count == 1

    def lock_value(self, key: str) -> Any:
        full_key = self.cache.make_and_validate_key(key)
        _, row = self._lock_sql(
            "SELECT {value} FROM {table} WHERE {key} = %s AND {expires} > {now}",
            [full_key, self._NOW],
            fetch=True,
        )
        if row is None:
            return None
        raw = self._lock_connection().ops.process_clob(row[0])
        value = self._plain(raw)
        # Not a value a lock wrote: hand it over as it is, for the caller's
        # own "invalid value" error.
        return raw if isinstance(value, Opaque) else value

    def lock_fence(self, key: str) -> int:
        """Increment the counter in one conditional ``UPDATE`` (retried if
        another writer changed it in between); a missing counter is
        inserted at 1. The row never expires, as Django's ``timeout=None``."""
        from django.db import IntegrityError, transaction

        cache: Any = self.cache
        full_key = cache.make_and_validate_key(key)
        connection = self._lock_connection()
        forever = connection.ops.adapt_datetimefield_value(
            dt.datetime.max.replace(microsecond=0)
        )
        for _ in range(get_config().write_retries + 1):
            _, row = self._lock_sql(
                "SELECT {value} FROM {table} WHERE {key} = %s", [full_key], fetch=True
            )
            if row is None:
                try:
                    with transaction.atomic(using=connection.alias):
                        self._lock_sql(
                            "INSERT INTO {table} ({key}, {value}, {expires}) "
                            "VALUES (%s, %s, %s)",
                            [full_key, self._encoded(1), forever],
                        )
                except IntegrityError:
                    continue
                return 1
            raw = connection.ops.process_clob(row[0])
            current = self._plain(raw)
            value = (current if isinstance(current, int) else 0) + 1
            count, _ = self._lock_sql(
                "UPDATE {table} SET {value} = %s, {expires} = %s "
                "WHERE {key} = %s AND {value} = %s",
                [self._encoded(value), forever, full_key, raw],
            )
            if count == 1:
                return value
        raise WriteNotConfirmed(
            f"Could not increment the fencing counter {key!r} in cache "
            f"{self.alias!r}: other writers changed it every time."
        )

    def lock_held(self, key: str) -> bool:
        full_key = self.cache.make_and_validate_key(key)
        _, row = self._lock_sql(
            "SELECT 1 FROM {table} WHERE {key} = %s AND {expires} > {now}",
            [full_key, self._NOW],
            fetch=True,
        )
        return row is not None


#: How many syncache keys a Redis medium remembers the full key of.
_FULL_KEY_MEMO_SIZE = 4096


class RedisMedium(Medium):
    """Django's ``RedisCache``, through its raw redis-py client.

    Reads go to the primary (never a replica, which may lag behind a bump).
    Integers are stored unpickled by Django's serializer, so ``INCR`` works
    on them and Django's ``cache.get`` reads them back.
    """

    capabilities = Capabilities(
        atomic_add=True,
        atomic_incr=True,
        compare_and_delete=True,
        pubsub=True,
        cross_process=True,
        cross_host=True,
    )

    def __init__(self, alias: str) -> None:
        super().__init__(alias)
        self._full_keys: dict[str, str] = {}
        self._client: Any = None

    def full_key(self, key: str) -> str:
        """Return the key as Django stores it (prefix and version added)."""
        try:
            return self._full_keys[key]
        except KeyError:
            full = self.cache.make_and_validate_key(key)
            self._remember(key, full)
            return full

    def _remember(self, key: str, full: str) -> None:
        # Bounded: group keys (one per object) and page header keys (one per
        # URL) pass through here too; a long-lived process must not grow.
        if len(self._full_keys) >= _FULL_KEY_MEMO_SIZE:
            self._full_keys.clear()
        self._full_keys[key] = full

    def client(self) -> Any:
        """The redis-py client of the primary server.

        Built once per medium (a new medium is made when ``CACHES``
        changes): building one costs more than a round trip, and redis-py
        clients and their connection pools are thread-safe and fork-aware.
        """
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        return self.cache._cache.get_client(None, write=True)  # type: ignore[attr-defined]

    def decode(self, raw: bytes, *, user_data: bool = False) -> Any:
        """Decode a stored value: an integer as Django's serializer would;
        anything else is user data for the serializer (which unpickles it),
        or an :class:`Opaque` where a generation was expected."""
        try:
            return int(raw)
        except ValueError:
            return self._decode_pickled(raw) if user_data else Opaque(raw)

    def _decode_pickled(self, raw: bytes) -> Any:
        return self.cache._cache._serializer.loads(raw)  # type: ignore[attr-defined]

    def get(self, key: str) -> Generation | None:
        raw = self.client().get(self.full_key(key))
        return None if raw is None else self.decode(raw)

    def get_many(
        self, keys: Sequence[str], *, user_data: Collection[str] = ()
    ) -> list[Any]:
        if not keys:
            return []
        raws = self.client().mget([self.full_key(key) for key in keys])
        return [
            None if raw is None else self.decode(raw, user_data=key in user_data)
            for key, raw in zip(keys, raws, strict=True)
        ]

    def add(self, key: str, value: Generation) -> bool:
        return bool(self.client().set(self.full_key(key), int(value), nx=True))

    def set(self, key: str, value: Generation) -> None:
        self.client().set(self.full_key(key), int(value))

    def delete(self, key: str) -> None:
        self.client().delete(self.full_key(key))

    def _bump(self, key: str) -> Generation:
        """Seed-if-missing, increment, move the epoch (and in push mode
        publish the key): one ``MULTI``."""
        full = self.full_key(key)
        pipe = self.client().pipeline(transaction=True)
        pipe.set(full, new_generation(), nx=True)
        pipe.incr(full)
        pipe.set(self.full_key(self.epoch_key), new_generation())
        if self.push_mode == "inline":
            pipe.publish(self.push_channel, key)
        return int(pipe.execute()[1])

    def _invalidate(self, key: str) -> None:
        pipe = self.client().pipeline(transaction=True)
        pipe.delete(self.full_key(key))
        pipe.set(self.full_key(self.epoch_key), new_generation())
        if self.push_mode == "inline":
            pipe.publish(self.push_channel, key)
        pipe.execute()

    def touch_epoch(self) -> None:
        self.set(self.epoch_key, new_generation())

    def set_with_timeout(self, key: str, value: Any, timeout: float | None) -> None:
        # Through Django, so the value is serialized as Django reads it back.
        self.cache.set(key, value, timeout=timeout)

    lock_signals = True

    def lock_acquire(self, key: str, token: str, timeout: float) -> bool:
        milliseconds = max(1, math.ceil(timeout * 1000))
        return bool(
            self.client().set(self.full_key(key), token, nx=True, px=milliseconds)
        )

    def _signal_key(self, key: str) -> str:
        return self.full_key(key + LOCK_SIGNAL_SUFFIX)

    def lock_release(self, key: str, token: str) -> bool:
        return bool(
            self.client().eval(
                LOCK_RELEASE_SCRIPT,
                2,
                self.full_key(key),
                self._signal_key(key),
                token,
                LOCK_SIGNAL_TTL_MS,
            )
        )

    def lock_extend(self, key: str, token: str, timeout: float) -> bool:
        milliseconds = max(1, math.ceil(timeout * 1000))
        return bool(
            self.client().eval(
                LOCK_EXTEND_SCRIPT, 1, self.full_key(key), token, milliseconds
            )
        )

    def lock_replace(
        self, key: str, expected: str, value: str, timeout: float, *, wake: bool = False
    ) -> bool:
        milliseconds = max(1, math.ceil(timeout * 1000))
        return bool(
            self.client().eval(
                LOCK_REPLACE_SCRIPT,
                2,
                self.full_key(key),
                self._signal_key(key),
                expected,
                value,
                milliseconds,
                int(wake),
                LOCK_SIGNAL_TTL_MS,
            )
        )

    @staticmethod
    def _lock_text(raw: Any) -> Any:
        # Tokens are written as text; redis-py returns bytes unless the
        # client decodes responses.
        if isinstance(raw, bytes):
            try:
                return raw.decode()
            except UnicodeDecodeError:
                return raw
        return raw

    def lock_value(self, key: str) -> Any:
        return self._lock_text(self.client().get(self.full_key(key)))

    def lock_take(
        self,
        key: str,
        token: str,
        timeout: float,
        *,
        fence_key: str | None = None,
        over: str | None = None,
    ) -> LockTake:
        milliseconds = max(1, math.ceil(timeout * 1000))
        keys = [self.full_key(key)]
        if fence_key is not None:
            keys.append(self.full_key(fence_key))
        taken, result = self.client().eval(
            LOCK_TAKE_SCRIPT, len(keys), *keys, token, milliseconds, over or ""
        )
        if not taken:
            return LockTake(False, None, self._lock_text(result))
        return LockTake(True, None if fence_key is None else int(result), None)

    def lock_held(self, key: str) -> bool:
        return bool(self.client().exists(self.full_key(key)))

    def lock_fence(self, key: str) -> int:
        return int(self.client().incr(self.full_key(key)))

    def lock_wait(self, key: str, seconds: float) -> bool:
        """Block on the lock's signal list (``BLPOP``) for at most ``seconds``.

        Redis checks the timeouts of blocked commands only every
        :data:`LOCK_SIGNAL_RESOLUTION` seconds (10 times a second, its
        default ``hz``): a ``BLPOP`` asks for that much less than it may
        take, and a shorter wait is a plain sleep (a cheap poll).

        ``BLPOP`` holds a pooled connection while it blocks, so it is cut
        into pieces that end before half the client's socket timeout (the
        socket would time out first), and waiters never hold more than half
        of a pool's connections (the holder needs one to release); past
        that they sleep instead.
        """
        client = self.client()
        pool = client.connection_pool
        socket_timeout = pool.connection_kwargs.get("socket_timeout")
        piece = socket_timeout / 2 if socket_timeout else math.inf
        # Too short to block for at least 10 ms past Redis's resolution:
        # sleep instead (never a BLPOP timeout Redis could read as 0).
        long_enough = min(seconds, piece) >= LOCK_SIGNAL_RESOLUTION + 0.01
        if not (long_enough and _blocking_waiters.enter(pool)):
            return super().lock_wait(key, seconds)
        try:
            signal = self._signal_key(key)
            deadline = time.monotonic() + seconds
            while True:
                remaining = deadline - time.monotonic()
                # Whole milliseconds, at least 10: Redis before 7.0.8 reads a
                # timeout under 1 ms as 0, which blocks for ever.
                timeout = round(min(remaining, piece) - LOCK_SIGNAL_RESOLUTION, 3)
                if timeout < 0.01:
                    return False  # a try a little early rather than a late one
                if client.blpop([signal], timeout=timeout) is not None:
                    return True
        finally:
            _blocking_waiters.leave(pool)

    def lock_notify(self, key: str) -> None:
        self.client().eval(
            LOCK_NOTIFY_SCRIPT, 1, self._signal_key(key), LOCK_SIGNAL_TTL_MS
        )


class LockTake(NamedTuple):
    """What :meth:`Medium.lock_take` did."""

    #: The lock is now held with the caller's token.
    taken: bool
    #: The fencing token of this acquisition (taken, with a fence key).
    fence: int | None
    #: What the lock held when it was not taken (None: nothing any more).
    found: Any


class _BlockingWaiters:
    """How many connections of each redis-py pool waiters hold in BLPOP."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, int] = {}

    def enter(self, pool: Any) -> bool:
        """Count one more waiter on ``pool``, unless half its connections
        are already waiting; return whether it was counted."""
        limit = getattr(pool, "max_connections", None)
        with self._lock:
            count = self._counts.get(id(pool), 0)
            if isinstance(limit, int) and count >= limit // 2:
                return False
            self._counts[id(pool)] = count + 1
            return True

    def leave(self, pool: Any) -> None:
        """Count one waiter less on ``pool``."""
        with self._lock:
            count = self._counts.pop(id(pool)) - 1
            if count:
                self._counts[id(pool)] = count


_blocking_waiters = _BlockingWaiters()

#: Suffix of the signal list next to a Redis lock (see ``lock_wait``).
LOCK_SIGNAL_SUFFIX = "!signal"
#: Milliseconds a signal nobody popped is kept: long enough for a waiter
#: between two tries (a round trip) to still see it.
LOCK_SIGNAL_TTL_MS = 1000
#: Seconds between two checks of blocked commands' timeouts by Redis (at its
#: default ``hz`` of 10): the precision of a ``BLPOP`` timeout.
LOCK_SIGNAL_RESOLUTION = 0.1

#: Push one wake-up on the signal list ``KEYS[2]``: at most one is kept, and
#: the list expires after ``ARGV[n]`` ms. Shared by the scripts below.
_SIGNAL_LUA = """
redis.call('rpush', KEYS[2], 1)
redis.call('ltrim', KEYS[2], -1, -1)
redis.call('pexpire', KEYS[2], ARGV[{ttl}])
"""

#: Delete the lock ``KEYS[1]`` if it holds the token ``ARGV[1]``, and wake
#: one waiter (signal list ``KEYS[2]``, kept ``ARGV[2]`` ms).
LOCK_RELEASE_SCRIPT = f"""
if redis.call('get', KEYS[1]) == ARGV[1] then
    redis.call('del', KEYS[1])
    {_SIGNAL_LUA.format(ttl=2)}
    return 1
end
return 0
"""

#: Expire the lock ``KEYS[1]`` in ``ARGV[2]`` ms if it holds ``ARGV[1]``.
LOCK_EXTEND_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

#: Store ``ARGV[2]`` at the lock ``KEYS[1]`` for ``ARGV[3]`` ms if it holds
#: ``ARGV[1]``; when ``ARGV[4]`` is 1, wake one waiter (signal list
#: ``KEYS[2]``, kept ``ARGV[5]`` ms).
LOCK_REPLACE_SCRIPT = f"""
if redis.call('get', KEYS[1]) == ARGV[1] then
    redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
    if ARGV[4] == '1' then
        {_SIGNAL_LUA.format(ttl=5)}
    end
    return 1
end
return 0
"""

#: Take the lock ``KEYS[1]`` for the token ``ARGV[1]`` for ``ARGV[2]`` ms if
#: it is absent or holds a value starting with ``ARGV[3]`` (not empty), then
#: increment the fencing counter ``KEYS[2]`` if given. Returns ``{1, fence}``
#: (fence 0 without a counter), or ``{0, value held}``.
LOCK_TAKE_SCRIPT = """
local held = redis.call('get', KEYS[1])
if held and (ARGV[3] == '' or string.sub(held, 1, #ARGV[3]) ~= ARGV[3]) then
    return {0, held}
end
local fence = 0
if KEYS[2] then
    fence = redis.call('incr', KEYS[2])  -- first: a failing INCR sets nothing
end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, fence}
"""

#: Wake one waiter of a lock: push on its signal list ``KEYS[1]`` (at most
#: one item kept, expiring after ``ARGV[1]`` ms).
LOCK_NOTIFY_SCRIPT = """
redis.call('rpush', KEYS[1], 1)
redis.call('ltrim', KEYS[1], -1, -1)
redis.call('pexpire', KEYS[1], ARGV[1])
"""


class DjangoRedisMedium(RedisMedium):
    """django-redis's ``RedisCache`` with its default client."""

    def _make_client(self) -> Any:
        return self.cache.client.get_client(write=True)  # type: ignore[attr-defined]

    def full_key(self, key: str) -> str:
        try:
            return self._full_keys[key]
        except KeyError:
            full = str(self.cache.make_key(key))
            self._remember(key, full)
            return full

    def _decode_pickled(self, raw: bytes) -> Any:
        return self.cache.client.decode(raw)  # type: ignore[attr-defined]


def _medium_class(cache: BaseCache) -> type[Medium]:
    """Pick the medium for a cache object by its class."""
    from django.core.cache.backends.db import DatabaseCache
    from django.core.cache.backends.filebased import FileBasedCache
    from django.core.cache.backends.locmem import LocMemCache
    from django.core.cache.backends.memcached import BaseMemcachedCache

    if isinstance(cache, LocMemCache):
        return LocMemMedium
    if isinstance(cache, BaseMemcachedCache):
        from django.core.cache.backends.memcached import PyMemcacheCache

        # gets/cas as MemcachedMedium uses them are pymemcache's; pylibmc
        # needs a cas behaviour Django does not set: atomic add and incr
        # only (no locks, and system check E004 says so).
        if isinstance(cache, PyMemcacheCache):
            return MemcachedMedium
        return AtomicMedium
    if isinstance(cache, DatabaseCache):
        return DatabaseMedium
    if isinstance(cache, FileBasedCache):
        return FileMedium
    from django.core.cache.backends.redis import RedisCache

    if isinstance(cache, RedisCache):
        return RedisMedium
    module = type(cache).__module__
    if module.startswith("django_redis"):
        from django_redis.client import DefaultClient

        if type(cache.client) is DefaultClient:  # type: ignore[attr-defined]
            return DjangoRedisMedium
        return AtomicMedium
    return Medium


_media: dict[str, Medium] = {}
_media_lock = threading.Lock()


def get_medium(alias: str | None = None) -> Medium:
    """Return the medium for a cache alias (default: ``SYNCACHE`` alias).

    Raises:
        django.core.cache.InvalidCacheBackendError: the alias is not in
            ``CACHES``. System check ``syncache.E002`` reports it at startup.
    """
    if alias is None:
        alias = get_config().cache_alias
    try:
        return _media[alias]
    except KeyError:
        pass
    with _media_lock:
        if alias not in _media:
            _media[alias] = _medium_class(caches[alias])(alias)
        return _media[alias]


def _media_after_fork() -> None:
    # Another thread (the push listener) may have held the lock at fork: the
    # child's copy would stay locked for ever.
    global _media_lock
    _media_lock = threading.Lock()
    for medium in list(_media.values()):
        medium._after_fork()


os.register_at_fork(after_in_child=_media_after_fork)


@receiver(setting_changed)
def _reset_media(*, setting: str, **kwargs: object) -> None:
    if setting in ("CACHES", "SYNCACHE"):
        with _media_lock:
            _media.clear()
